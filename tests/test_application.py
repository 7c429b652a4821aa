"""n2d2.application.CrossEntropyClassifier: Softmax(with_loss=True) + target.Score in one object.
It trains exactly as the explicit pair (same losses, same learned weights), its output is the
softmax of the logits (PyTorch), its success is the arg-max accuracy of the batch."""
import json

import numpy as np
import pytest
import torch

import n2d2
from n2d2.activation import Rectifier
from n2d2.application import CrossEntropyClassifier
from n2d2.cells import Conv, Fc, Pool2d, Sequence, Softmax
from n2d2.solver import SGD


def _provider():
    database = n2d2.database.MNIST(data_path=n2d2.datasets.mnist_path())
    provider = n2d2.provider.DataProvider(database, [16, 16, 1], batch_size=16)
    provider.add_transformation(n2d2.transform.Rescale(width=16, height=16))
    return provider


def _model():
    n2d2.global_variables.seed = 7
    model = Sequence([Conv(1, 4, [3, 3], activation=Rectifier()), Pool2d([2, 2], stride_dims=[2, 2]),
                      Fc(4 * 7 * 7, 10)])
    model.set_solver(SGD(learning_rate=0.05, momentum=0.9))
    return model


def _train(model, head, provider, steps=4):
    provider.set_partition("Learn")
    model.learn()
    losses = []
    for step in range(steps):
        loss = head(model(provider.read_batch(step * provider.get_batch_size())))
        loss.back_propagate()
        loss.update()
        losses.append(float(loss[0]))
    weights = [np.array(c.get_weights_array() if hasattr(c, "get_weights_array") else c._weights)
               for c in model if getattr(c, "_weights", None) is not None]
    return losses, weights


def test_trains_as_softmax_with_loss_and_score():
    provider = _provider()
    app = CrossEntropyClassifier(provider)
    losses_app, w_app = _train(_model(), app, provider)

    softmax, target = Softmax(with_loss=True), n2d2.target.Score(provider)
    losses_ref, w_ref = _train(_model(), lambda x: target(softmax(x)), provider)
    assert len(losses_app) == 4 and losses_app[0] != losses_app[-1]
    np.testing.assert_allclose(losses_app, losses_ref, rtol=1e-6, atol=1e-7)
    assert len(w_app) == len(w_ref) == 2
    for a, b in zip(w_app, w_ref):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert app.get_loss() == pytest.approx(losses_app, rel=1e-6)
    assert app.get_current_loss() == pytest.approx(losses_app[-1], rel=1e-6)
    assert app.get_deepnet() is not None


def test_output_is_softmax_and_success_is_argmax_accuracy(tmp_path):
    provider = _provider()
    model = _model()
    app = CrossEntropyClassifier(provider, name="ce_target")
    provider.set_partition("Test")
    model.test()
    logits = model(provider.read_batch(0))
    x = np.array(logits).reshape(provider.get_batch_size(), 10)
    assert np.std(x) > 0
    app.clear_success()
    loss = app(logits)
    probs = np.array(app.get_outputs()).reshape(x.shape)
    ref = torch.softmax(torch.from_numpy(x.astype(np.float64)), dim=1).numpy()
    np.testing.assert_allclose(probs, ref, rtol=1e-5, atol=1e-6)
    assert float(loss[0]) == pytest.approx(app.get_current_loss())
    labels = np.array(provider.get_labels()).reshape(-1)
    accuracy = float(np.mean(np.argmax(x, axis=1) == labels))
    assert app.recognition_rate() == pytest.approx(accuracy)
    assert app.get_average_success() == pytest.approx(accuracy)
    assert app.get_target().get_name() == "ce_target"
    app.get_loss(saveFile=str(tmp_path / "loss.txt"))
    assert float(open(tmp_path / "loss.txt").read().split()[-1]) == pytest.approx(float(loss[0]), rel=1e-6)
    app.log_estimated_labels_json(str(tmp_path / "est.json"))
    est = json.load(open(tmp_path / "est.json"))
    assert np.array(est["labels"])[:, 0, 0, 0].tolist() == np.argmax(x, axis=1).tolist()


def test_refuses_a_non_provider_and_a_non_tensor():
    with pytest.raises(n2d2.error_handler.WrongInputType):
        CrossEntropyClassifier("mnist")
    app = CrossEntropyClassifier(_provider())
    with pytest.raises(n2d2.error_handler.WrongInputType):
        app(np.zeros((2, 10)))
