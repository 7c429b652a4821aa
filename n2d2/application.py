"""`n2d2.application`: N2D2's historical high-level wrappers (upstream removed the module; its
quantization examples `quantizer_handmade_part{1,2}.py` still use it).

`CrossEntropyClassifier(provider, **target_config)`: a `Softmax(with_loss=True)` cell followed by
a `n2d2.target.Score(provider, **target_config)`. Calling it on the logits of a batch returns the
Score's loss tensor (a 1-element leaf: `back_propagate()` / `update()` train the graph behind it),
exactly as the explicit pair would; the methods give the target's success, scores, losses and
logs.
"""
from __future__ import annotations

import json

import numpy as np

from n2d2.cells import Softmax
from n2d2.error_handler import WrongInputType
from n2d2.provider import DataProvider
from n2d2.target import Score
from n2d2.tensor import Tensor


class Application:
    """Base of the applications (a cell graph head plus its target)."""


class CrossEntropyClassifier(Application):
    """Softmax with loss + Score target.

    Parameters
    ----------
    provider : DataProvider
        The provider whose labels the Score target reads.
    **target_config
        Keywords of `n2d2.target.Score` (name, target_value, default_value, top_n,
        labels_mapping, ...).
    """

    def __init__(self, provider, **target_config):
        if not isinstance(provider, DataProvider):
            raise WrongInputType("provider", type(provider), ["n2d2.provider.DataProvider"])
        self._provider = provider
        self._softmax = Softmax(with_loss=True)
        self._target = Score(provider, **target_config)

    def __call__(self, x):
        """Softmax of `x` (the logits of a batch), scored by the target: the loss tensor."""
        if not isinstance(x, Tensor):
            raise WrongInputType("x", type(x), ["n2d2.Tensor"])
        self._outputs = self._softmax(x)
        return self._target(self._outputs)

    # -- parts ---------------------------------------------------------------------------------
    def get_softmax(self):
        return self._softmax

    def get_target(self):
        return self._target

    def get_provider(self):
        return self._provider

    def get_outputs(self):
        """The Softmax output of the last call (None before the first)."""
        return getattr(self, "_outputs", None)

    def get_deepnet(self):
        """The graph of the last batch scored (None before the first call)."""
        return self._target.get_deepnet()

    # -- success and losses --------------------------------------------------------------------
    def get_average_success(self, window: int = 0) -> float:
        return self._target.get_average_success(window)

    def recognition_rate(self) -> float:
        """Average success over every batch of the current partition."""
        return self._target.get_average_success()

    def clear_success(self):
        self._target.clear_success()

    def get_average_score(self, metric: str) -> float:
        return self._target.get_average_score(metric)

    def get_current_loss(self) -> float:
        return self._target.get_current_loss()

    def get_loss(self, saveFile: str = "") -> list:  # noqa: N803 (upstream's keyword)
        """Loss of every batch scored so far; with `saveFile`, also written there, one per line."""
        losses = self._target.get_loss()
        if saveFile:
            with open(saveFile, "w") as f:
                f.write("".join(f"{float(v):.9g}\n" for v in losses))
        return losses

    # -- logs ----------------------------------------------------------------------------------
    def log_success(self, path: str):
        self._target.log_success(path)

    def log_stats(self, path: str):
        return self._target.log_stats(path)

    def log_estimated_labels(self, path: str):
        self._target.log_estimated_labels(path)

    def log_estimated_labels_json(self, path: str):
        """The last batch's estimated labels ([N, top_n, H, W]) and their output values, as JSON
        {"labels": ..., "values": ...}."""
        data = {"labels": np.asarray(self._target.get_estimated_labels()).tolist(),
                "values": np.asarray(self._target.get_estimated_labels_value(), dtype=np.float64).tolist()}
        with open(path, "w") as f:
            json.dump(data, f)

    def log_confusion_matrix(self, path: str):
        self._target.log_confusion_matrix(path)
