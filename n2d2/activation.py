"""Activation functions (`n2d2.activation`), attached to cells through `activation=`.

Each object is a configuration (printed as upstream) plus `forward(z)` / `backward(dy, z)`
calls into `n2d2.ops.activation`, where the math lives once. The classes themselves are made
from that module's table (`ACTIVATIONS`): Linear(clipping), Rectifier(clipping, leak_slope),
Tanh(alpha), Logistic, LogisticWithLoss, Saturation(threshold), Softplus, Swish, TanhLeCun,
Gelu(approximate), Mish, HardSigmoid(alpha, beta), HardSwish; each also takes `quantizer`.
"""
from n2d2.configurable import Configurable, Spec
from n2d2.ops import activation as ops
from n2d2.quantizer import ActivationQuantizer
from n2d2.settings import global_variables

_QUANTIZER = Spec(ActivationQuantizer, None, allow_none=True)


class ActivationFunction(Configurable):
    """Abstract base of activation functions."""

    def __init__(self, model=None, datatype=None, quantizer=None, **config):
        if type(self) is ActivationFunction:
            raise TypeError("ActivationFunction is abstract")
        self._model = model or global_variables.default_model
        super().__init__(**config)
        if quantizer is not None:
            self.set_parameter("quantizer", quantizer)

    def has_quantizer(self) -> bool:
        return self._config["quantizer"] is not None

    def get_quantizer(self):
        """The activation quantizer; RuntimeError when there is none, as upstream."""
        if self._config["quantizer"] is None:
            raise RuntimeError("No Quantizer in activation")
        return self._config["quantizer"]

    def set_quantizer(self, quantizer):
        """Attach a quantizer; RuntimeError when one is attached already, as upstream."""
        if self._config["quantizer"] is not None:
            raise RuntimeError("Quantizer already exists in activation")
        self.set_parameter("quantizer", quantizer)

    def forward(self, z):
        d = ops.get(type(self).__name__)
        return d.forward(z, **{k: self._config[k] for k, _, _ in d.params})

    def backward(self, dy, z):
        d = ops.get(type(self).__name__)
        return d.backward(dy, z, **{k: self._config[k] for k, _, _ in d.params})


def _spec(default, choices):
    return Spec(type(default), default, choices=choices)


def _make_class(d):
    """The user class of table entry `d` (parameters in the table's order, then `quantizer`)."""
    params = {k: _spec(default, choices) for k, default, choices in d.params}
    params["quantizer"] = _QUANTIZER
    return type(d.name, (ActivationFunction,), {"__doc__": d.doc, "__module__": __name__, "__qualname__": d.name,
                                                "_parameters": params})


for _d in ops.ACTIVATIONS.values():
    globals()[_d.name] = _make_class(_d)
del _d

__all__ = ["ActivationFunction"] + list(ops.ACTIVATIONS)


