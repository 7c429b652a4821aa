"""Every torchvision classification architecture imports through `DeepNetCell.load_from_ONNX`
(generic_ops=True) and matches onnxruntime on the numpy and the C backends.

Models come from torchvision==0.28.0, installed without dependencies (`.ci/run`, the `test`
extra): the only build on the index is CUDA-linked, and its model code imports once its two
op-registration modules are stubbed. Random weights (torch's default initialisation, BatchNorm
statistics drawn away from the identity), eval mode, a 64x64 batch of 2; exported once per
session with the legacy exporter (opset 17) under the session's tmp dir.
"""
import sys
import types
import warnings

import numpy as np
import pytest

import n2d2
from n2d2.cells.deepnet_cell import DeepNetCell
from n2d2.provider import TensorPlaceholder

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

SIZE, BATCH, TOL = 64, 2, 1e-4


def _import_torchvision():
    """torchvision's model code without its compiled op registrations (a CUDA-linked build)."""
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules.setdefault(name, types.ModuleType(name))
    try:
        import torchvision.models as models
    except ImportError as e:
        return None, e
    return models, None


MODELS, IMPORT_ERROR = _import_torchvision()

ARCHITECTURES = {
    "resnet18": lambda m: m.resnet18(),
    "mobilenet_v2": lambda m: m.mobilenet_v2(),
    "mobilenet_v3_small": lambda m: m.mobilenet_v3_small(),
    "squeezenet1_1": lambda m: m.squeezenet1_1(),
    "shufflenet_v2_x0_5": lambda m: m.shufflenet_v2_x0_5(),
    "mnasnet0_5": lambda m: m.mnasnet0_5(),
    "efficientnet_b0": lambda m: m.efficientnet_b0(),
    "regnet_y_400mf": lambda m: m.regnet_y_400mf(),
    "densenet121": lambda m: m.densenet121(),
    "googlenet": lambda m: m.googlenet(aux_logits=False, init_weights=False),
    "convnext_tiny": lambda m: m.convnext_tiny(),
}


def _randomised(model):
    """Default initialisation everywhere (googlenet's own init makes the logits nearly equal),
    BatchNorm statistics and affine terms away from the identity."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.reset_parameters()
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
    return model.eval()


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """name -> path of the model exported to ONNX (once per session)."""
    if MODELS is None:
        pytest.fail(f"torchvision is not importable ({IMPORT_ERROR}); install it without its dependencies: "
                    "pip install --no-deps torchvision==0.28.0 (see .ci/run)")
    folder = tmp_path_factory.mktemp("torchvision_onnx")
    paths = {}

    def get(name):
        if name not in paths:
            model = _randomised(ARCHITECTURES[name](MODELS))
            path = str(folder / f"{name}.onnx")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (torch.randn(1, 3, SIZE, SIZE),), path, dynamo=False, opset_version=17)
            paths[name] = path
        return paths[name]
    return get


def _reference(path, x):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_torchvision_classifier_matches_onnxruntime(exported, name, backend):
    path = exported(name)
    provider = n2d2.provider.DataProvider(n2d2.database.Numpy(), [SIZE, SIZE, 3], batch_size=BATCH)
    dn = DeepNetCell.load_from_ONNX(provider, path, backend=backend, generic_ops=True)
    x = np.random.default_rng(1).standard_normal((BATCH, 3, SIZE, SIZE)).astype(np.float32)
    ref = _reference(path, x)
    assert ref.shape == (BATCH, 1000)
    assert np.ptp(ref, axis=1).min() > 1e-3 * np.abs(ref).max()   # logits that rank the classes
    dn.test()
    t = n2d2.Tensor.from_numpy(x)
    TensorPlaceholder(t)
    y = dn(t).to_numpy().reshape(ref.shape)
    err = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
    assert err < TOL, err
    assert (y.argmax(1) == ref.argmax(1)).all()
    node_outputs = {o for n in onnx.load(path, load_external_data=False).graph.node for o in n.output}
    assert set(dn.get_output_cells()) <= node_outputs   # cells keep the ONNX output names


@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_torchvision_classifier_through_the_onnx_backend(exported, name, backend):
    """`n2d2.onnx_backend` (exact ONNX semantics); on C the graph is legalized first: no Conv,
    BatchNormalization or pooling is left to the reference."""
    from n2d2 import onnx_backend

    path = exported(name)
    x = np.random.default_rng(2).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    rep = onnx_backend.prepare(onnx.load(path), backend=backend)
    y = rep.run([x])[0]
    ref = _reference(path, x)
    assert float(np.linalg.norm(y - ref) / np.linalg.norm(ref)) < TOL
    assert (y.argmax(1) == ref.argmax(1)).all()
    if backend == "c":
        graph = rep.program({rep.input_names[0]: x}).graph
        left = {graph.op(n) for n in graph.nodes()}
        assert not left & {"OnnxConv", "OnnxBatchNormalization", "OnnxAveragePool"}, left
