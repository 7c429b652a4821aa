"""ONNX import: LeNet.onnx (printing, outputs, training), PyTorch exports (LeNet, ResNet-18,
MobileNetV2), a zoo of hand-built graphs covering each supported op against onnxruntime, INI
embedding, refusals that name the node/file, and mutated models (hypothesis)."""
import os
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import n2d2  # noqa: E402
from n2d2.cells.deepnet_cell import DeepNetCell  # noqa: E402
from n2d2.frontends.onnx_import import ONNXError, ONNXFormatError, ONNXUnsupportedError  # noqa: E402
from n2d2.provider import TensorPlaceholder  # noqa: E402
from tests.conftest import SHARED_MODELS, rel_err  # noqa: E402

LENET = os.path.join(SHARED_MODELS, "LeNet.onnx")
if not os.path.exists(LENET):
    LENET = os.path.join(os.path.dirname(__file__), "..", "data", "models", "LeNet.onnx")
needs_lenet = pytest.mark.skipif(not os.path.exists(LENET), reason="LeNet.onnx not available")
TOL = 1e-4


# -- helpers -------------------------------------------------------------------------------------
def provider_for(shape, batch=2, database=None):
    """A DataProvider whose batches are [batch] + shape (C, H, W)."""
    c, h, w = shape
    return n2d2.provider.DataProvider(database or n2d2.database.Numpy(), [w, h, c], batch_size=batch)


def run_cell(dn, x):
    """DeepNetCell output (numpy) for the array x, in test mode."""
    dn.test()
    t = n2d2.Tensor.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    TensorPlaceholder(t)
    return dn(t).to_numpy()


def run_ort(path, x, per_sample=False, output=0):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    if per_sample:
        return np.concatenate([session.run(None, {name: x[i:i + 1]})[output] for i in range(len(x))])
    return session.run(None, {name: x})[output]


def make_model(nodes, inits, in_shape, opset, outputs=("y",), in_name="x", extra_inputs=()):
    x = helper.make_tensor_value_info(in_name, TensorProto.FLOAT, ["N"] + list(in_shape))
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) if isinstance(o, str) else
            helper.make_tensor_value_info(o[0], TensorProto.FLOAT, o[1]) for o in outputs]
    tensors = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    graph = helper.make_graph(nodes, "zoo", [x] + list(extra_inputs), outs, tensors)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return onnx.shape_inference.infer_shapes(model, data_prop=True)  # outputs get the shape the checker wants


def compare(model, in_shape, tmp_path, tol=TOL, batch=2, post=None, seed=0, **kwargs):
    """Import `model`, run it and onnxruntime on the same random batch; returns the DeepNetCell.

    `in_shape` is the provider's (C, H, W); the ONNX input may have a lower rank (trailing 1s)."""
    path = str(tmp_path / f"model_{seed}.onnx")
    onnx.save(model, path)
    dn = DeepNetCell.load_from_ONNX(provider_for(in_shape, batch), path, backend="numpy", **kwargs)
    x = np.random.default_rng(seed).standard_normal((batch,) + tuple(in_shape)).astype(np.float32)
    y = run_cell(dn, x)
    rank = len(model.graph.input[0].type.tensor_type.shape.dim)
    ref = run_ort(path, x.reshape(x.shape[:rank]))
    if post is not None:
        ref = post(ref)
    assert y.size == ref.size, (y.shape, ref.shape)
    assert rel_err(y.reshape(ref.shape), ref) < tol
    return dn


def W(*shape, seed=0, scale=0.5):
    return (np.random.default_rng(seed + sum(shape)).standard_normal(shape) * scale).astype(np.float32)


def types(dn):
    return [c.get_type() for c in dn]


def names(dn):
    return [c.get_name() for c in dn]


# -- LeNet.onnx ----------------------------------------------------------------------------------
@needs_lenet
def test_lenet_prints_as_upstream_and_matches_onnxruntime(capsys):
    from n2d2.utils import reset_name_counters

    reset_name_counters()
    dn = DeepNetCell.load_from_ONNX(provider_for((1, 28, 28), batch=3), LENET)
    text = str(dn)
    assert text.startswith("'DeepNetCell_0' DeepNetCell(\n")
    assert names(dn) == ["9", "11", "13", "15", "17", "18"]
    assert types(dn) == ["Conv", "Conv", "Pool", "Fc", "Fc", "Softmax"]
    lines = text.splitlines()
    assert lines[2].startswith("\t(1): '11' Conv(Frame<float>)(nb_inputs=4, nb_outputs=4, kernel_dims=[3, 3]")
    assert lines[2].endswith("(['9'])")
    assert "(pool_dims=[2, 2], stride_dims=[2, 2], padding_dims=[0, 0], pooling=Pooling.Max" in lines[3]
    assert "(nb_inputs=576, nb_outputs=128" in lines[4] and "activation=Rectifier(" in lines[4]
    assert "(nb_inputs=128, nb_outputs=10" in lines[5] and "activation=None" in lines[5]
    assert lines[6] == "\t(5): '18' Softmax(Frame<float>)(with_loss=True, group_size=0 | activation=None)(['17'])"
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    assert rel_err(run_cell(dn, x).reshape(3, 10), run_ort(LENET, x, per_sample=True)) < TOL


@needs_lenet
def test_lenet_on_the_default_backend():
    dn = DeepNetCell.load_from_ONNX(provider_for((1, 28, 28), batch=2), LENET)
    x = np.random.default_rng(1).random((2, 1, 28, 28), dtype=np.float32)
    assert rel_err(run_cell(dn, x).reshape(2, 10), run_ort(LENET, x, per_sample=True)) < TOL


@needs_lenet
def test_lenet_fits_mnist_with_ini_solvers(tmp_path, capsys):
    from n2d2.database.mnist import load_mnist_arrays
    from n2d2.datasets import mnist_path

    data, labels, n_train = load_mnist_arrays(mnist_path())
    db = n2d2.database.Numpy()
    db.load(data[:1000], labels[:1000], partition="Learn")
    db.load(data[1000:1200], labels[1000:1200], partition="Validation")
    db.load(data[n_train:n_train + 300], labels[n_train:n_train + 300], partition="Test")
    ini = tmp_path / "lenet.ini"
    ini.write_text("[onnx:Conv_def]\nConfigSection=common.config\n[onnx:Fc_def]\nConfigSection=common.config\n"
                   "[common.config]\nSolvers.LearningRate=0.05\nSolvers.Momentum=0.9\n")
    provider = n2d2.provider.DataProvider(db, [28, 28, 1], batch_size=32)
    dn = DeepNetCell.load_from_ONNX(provider, LENET, ini_file=str(ini), backend="numpy")
    assert dn["9"].weights_solver.learning_rate == 0.05 and dn["17"].bias_solver.momentum == 0.9
    before = dn.run_test()
    dn.fit(1, valid_metric="Accuracy")
    after = dn.run_test()
    assert after > before + 0.15, (before, after)
    assert "Test: 300 stimuli" in capsys.readouterr().out


@needs_lenet
def test_ignore_cells_drops_the_softmax(tmp_path):
    model = onnx.load(LENET)
    model.graph.output.append(helper.make_tensor_value_info("17", TensorProto.FLOAT, None))
    path = str(tmp_path / "lenet17.onnx")
    onnx.save(model, path)
    dn = DeepNetCell.load_from_ONNX(provider_for((1, 28, 28)), LENET, ignore_cells=["18"], backend="numpy")
    assert names(dn) == ["9", "11", "13", "15", "17"]
    x = np.random.default_rng(2).random((2, 1, 28, 28), dtype=np.float32)
    assert rel_err(run_cell(dn, x).reshape(2, 10), run_ort(path, x, per_sample=True, output=1)) < TOL
    with pytest.raises(ONNXUnsupportedError, match="ignore_cells names \\['nope'\\]"):
        DeepNetCell.load_from_ONNX(provider_for((1, 28, 28)), LENET, ignore_cells=["nope"])


@needs_lenet
def test_input_size_mismatch_names_the_file_and_sizes():
    with pytest.raises(ONNXUnsupportedError, match=r"LeNet.onnx: unexpected size for ONNX input 'input.1'.*"
                                                   r"\[1, 1, 28, 28\].*\[2, 1, 32, 32\].*ignore_input_size"):
        DeepNetCell.load_from_ONNX(provider_for((1, 32, 32)), LENET)
    # Accepted on request; the Fc then cannot take the larger maps and says so, naming the node.
    with pytest.raises(ONNXError, match="node .*Gemm, output '15'"):
        DeepNetCell.load_from_ONNX(provider_for((1, 32, 32)), LENET, ignore_input_size=True)


def test_ignore_input_size_on_a_fully_convolutional_model(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    model = make_model(nodes, {"w": W(3, 2, 3, 3)}, [2, 8, 8], 13)
    path = str(tmp_path / "fcn.onnx")
    onnx.save(model, path)
    dn = DeepNetCell.load_from_ONNX(provider_for((2, 12, 10)), path, ignore_input_size=True, backend="numpy")
    x = np.random.default_rng(0).standard_normal((2, 2, 12, 10)).astype(np.float32)
    free = str(tmp_path / "free.onnx")
    onnx.save(make_model(nodes, {"w": W(3, 2, 3, 3)}, [2, "H", "W"], 13), free)
    assert rel_err(run_cell(dn, x), run_ort(free, x)) < TOL


# -- PyTorch exports -------------------------------------------------------------------------------
torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


class TorchLeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5, padding=2)
        self.c2 = nn.Conv2d(6, 16, 5)
        self.f1 = nn.Linear(16 * 5 * 5, 120)
        self.f2 = nn.Linear(120, 84)
        self.f3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        x = x.view(x.size(0), -1)  # Shape/Gather/Unsqueeze/Concat/Reshape in the ONNX graph
        x = F.relu(self.f1(x))
        x = F.relu(self.f2(x))
        return F.softmax(self.f3(x), dim=1)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """torchvision's resnet18 layout (written here: torchvision is not a dependency)."""

    def __init__(self, classes=10, width=64):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        layers, cin = [], w
        for cout, stride in ((w, 1), (2 * w, 2), (4 * w, 2), (8 * w, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's mobilenet_v2 layout (inverted residuals, depthwise 3x3, ReLU6)."""

    CONFIG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))

    def __init__(self, classes=10, width=1.0):
        super().__init__()

        def channels(v):
            return max(8, int(v * width + 4) // 8 * 8)

        cin = channels(32)
        layers = [nn.Conv2d(3, cin, 3, 2, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU6()]
        for t, ch, n, s in self.CONFIG:
            for i in range(n):
                layers.append(InvertedResidual(cin, channels(ch), s if i == 0 else 1, t))
                cin = channels(ch)
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x):
        return self.classifier(self.features(x).mean([2, 3]))


def torch_export(model, shape, path, opset, fold=True):
    """Export in eval mode, with BatchNorm statistics that are not the identity."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.5, 0.5, generator=gen)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, *shape),), path, dynamo=False, opset_version=opset,
                          do_constant_folding=fold)
    return path


def check_torch(model, shape, tmp_path, opset, fold=True, batch=2):
    path = torch_export(model, shape, str(tmp_path / f"{type(model).__name__}_{opset}.onnx"), opset, fold)
    dn = DeepNetCell.load_from_ONNX(provider_for(shape, batch), path, backend="numpy")
    x = np.random.default_rng(opset).standard_normal((batch,) + shape).astype(np.float32)
    ref = run_ort(path, x, per_sample=True)
    assert rel_err(run_cell(dn, x).reshape(ref.shape), ref) < TOL
    return dn, path


@pytest.mark.parametrize("opset", [9, 13])
def test_torch_lenet(tmp_path, opset):
    dn, _ = check_torch(TorchLeNet(), (1, 28, 28), tmp_path, opset)
    assert types(dn) == ["Conv", "Pool", "Conv", "Pool", "Fc", "Fc", "Fc", "Softmax"]


def test_torch_resnet18_opset13(tmp_path):
    dn, _ = check_torch(ResNet18(), (3, 64, 64), tmp_path, 13)
    # BatchNorm folded by the exporter; every residual Add + Relu is one ElemWise cell.
    assert types(dn).count("ElemWise") == 8 and types(dn).count("Conv") == 20
    assert all(c.get_activation() is not None for c in dn if c.get_type() == "ElemWise")


def test_torch_resnet18_narrow_opset11(tmp_path):
    check_torch(ResNet18(width=16), (3, 32, 32), tmp_path, 11)


def test_torch_mobilenet_v2_opset13(tmp_path):
    dn, _ = check_torch(MobileNetV2(), (3, 64, 64), tmp_path, 13)
    assert types(dn).count("ConvDepthWise") == 17
    assert types(dn)[-2:] == ["GlobalPool2d", "Fc"]


def test_torch_mobilenet_v2_opset11_with_batchnorm(tmp_path):
    """Without constant folding the exporter keeps BatchNormalization nodes (and Identity)."""
    dn, _ = check_torch(MobileNetV2(width=0.5), (3, 32, 32), tmp_path, 11, fold=False)
    assert types(dn).count("BatchNorm2d") == 52
    assert dn[1].get_type() == "BatchNorm2d" and dn[1].get_activation().clipping == 6.0


# -- the op zoo ----------------------------------------------------------------------------------
def node(op, ins, outs, **attrs):
    return helper.make_node(op, ins, outs if isinstance(outs, list) else [outs], **attrs)


def test_grouped_conv_asymmetric_pads_leaky_relu(tmp_path):
    model = make_model([node("Conv", ["x", "w", "b"], "c", group=2, pads=[0, 1, 1, 0], strides=[2, 1]),
                        node("LeakyRelu", ["c"], "y", alpha=0.1)],
                       {"w": W(6, 2, 3, 3), "b": W(6)}, [4, 9, 8], 13)
    dn = compare(model, (4, 9, 8), tmp_path)
    assert types(dn) == ["Padding", "Conv"] and names(dn) == ["c_padding", "c"]
    assert dn["c"].get_activation().leak_slope == 0.1
    assert dn["c"].mapping.dims() == [6, 4]


@pytest.mark.parametrize("opset", [9, 11, 13])
def test_depthwise_relu6(tmp_path, opset):
    clip = node("Clip", ["c"], "y", min=0.0, max=6.0) if opset < 11 else node("Clip", ["c", "lo", "hi"], "y")
    inits = {"w": W(4, 1, 3, 3, scale=3.0)}
    if opset >= 11:
        inits.update(lo=np.array(0.0, np.float32), hi=np.array(6.0, np.float32))
    model = make_model([node("Conv", ["x", "w"], "c", group=4, pads=[1, 1, 1, 1]), clip], inits, [4, 6, 6], opset)
    dn = compare(model, (4, 6, 6), tmp_path)
    assert types(dn) == ["ConvDepthWise"] and dn["c"].get_activation().clipping == 6.0


def test_clips(tmp_path):
    f = np.float32
    model = make_model([node("Conv", ["x", "w"], "c"),
                        node("Clip", ["c", "lo", "hi"], "c1"),         # general: two ElemWise around a Rectifier
                        node("Clip", ["c1", "", "half"], "c2"),        # max only
                        node("Clip", ["c2", "m3", "p3"], "y")],        # symmetric: Saturation, fused
                       {"w": W(3, 4, 3, 3, scale=2.0), "lo": f(-1.0), "hi": f(2.0), "half": f(0.5), "m3": f(-0.7),
                        "p3": f(0.7)}, [4, 7, 7], 13)
    dn = compare(model, (4, 7, 7), tmp_path)
    assert names(dn) == ["c", "c1_shift", "c1", "c2_shift", "c2"]
    assert types(dn) == ["Conv"] + ["ElemWise"] * 4
    assert dn["c1_shift"].get_activation().clipping == 3.0
    assert dn["c2"].get_activation().threshold == 0.7  # the symmetric Clip, fused


def test_elementwise_between_activations_and_concat_into_conv(tmp_path):
    nodes = [node("Conv", ["x", "wa"], "a", pads=[1, 1, 1, 1]), node("Conv", ["x", "wb"], "b", pads=[1, 1, 1, 1]),
             node("Conv", ["x", "wc"], "c", pads=[1, 1, 1, 1]),
             node("Add", ["a", "b"], "s"), node("Sigmoid", ["s"], "s1"),
             node("Sub", ["a", "b"], "d"), node("Tanh", ["d"], "d1"),
             node("Mul", ["a", "c"], "p"), node("Max", ["a", "b", "c"], "m"), node("Sum", ["a", "b", "c"], "t"),
             node("Softplus", ["t"], "t1"),
             node("Concat", ["s1", "d1", "p", "m", "t1"], "cat", axis=1),
             node("Conv", ["cat", "wo", "bo"], "y")]
    inits = {"wa": W(3, 2, 3, 3), "wb": W(3, 2, 3, 3, seed=1), "wc": W(3, 2, 3, 3, seed=2), "wo": W(4, 15, 1, 1),
             "bo": W(4)}
    dn = compare(make_model(nodes, inits, [2, 5, 5], 13), (2, 5, 5), tmp_path)
    assert types(dn) == ["Conv", "Conv", "Conv"] + ["ElemWise"] * 5 + ["Conv"]
    assert dn["y"].get_input_cells() == ["s", "d", "p", "m", "t"]
    assert dn["d"].weights == [1.0, -1.0] and dn["p"].operation == "Prod"


def test_constant_arithmetic_folds_and_cells(tmp_path):
    f = np.float32
    nodes = [node("Conv", ["x", "w"], "c"),
             node("Add", ["c", "bias"], "c1"),          # folded into the conv bias
             node("Mul", ["scale", "c1"], "c2"),        # folded into the weights
             node("Div", ["c2", "two"], "c3"),          # folded too
             node("Relu", ["c3"], "r"),                 # fused
             node("Mul", ["r", "chan"], "s"),           # Scaling cell
             node("Add", ["s", "one"], "e"),            # ElemWise shift
             node("Sub", ["e", "chan4"], "e2"),         # per-channel shift, fused into nothing: new ElemWise
             node("Sub", ["one", "e2"], "e3"),          # 1 - x
             node("Softplus", ["e3"], "y")]
    inits = {"w": W(3, 4, 3, 3), "bias": W(1, 3, 1, 1), "scale": W(3, 1, 1), "two": f(2.0),
             "chan": W(1, 3, 1, 1, seed=5), "one": f(1.0), "chan4": W(3, 1, 1, seed=7)}
    dn = compare(make_model(nodes, inits, [4, 6, 6], 13), (4, 6, 6), tmp_path)
    assert types(dn) == ["Conv", "Scaling", "ElemWise", "ElemWise", "ElemWise"]
    assert dn["c"].has_bias() and type(dn["c"].get_activation()).__name__ == "Rectifier"


def test_max_min_with_constants_neg_abs(tmp_path):
    f = np.float32
    nodes = [node("Conv", ["x", "w"], "c"), node("Max", ["c", "zero"], "r"),        # a Relu, fused
             node("Min", ["r", "six"], "r6"),                                       # then a clipped one
             node("Neg", ["r6"], "n"), node("Max", ["n", "m1", "m2"], "lo"),       # clip from below at -1
             node("Abs", ["lo"], "y")]
    inits = {"w": W(3, 2, 3, 3, scale=3.0), "zero": f(0.0), "six": f(2.0), "m1": f(-1.0), "m2": f(-3.0)}
    dn = compare(make_model(nodes, inits, [2, 6, 6], 13), (2, 6, 6), tmp_path)
    assert types(dn) == ["Conv", "Scaling", "ElemWise", "ElemWise", "ElemWise"]
    assert dn["c"].get_activation().clipping == 2.0


def test_batchnorm_and_pools(tmp_path):
    f = np.float32
    c = 4
    nodes = [node("Relu", ["x"], "r"),
             node("BatchNormalization", ["r", "g", "b", "m", "v"], "bn", epsilon=1e-3, momentum=0.8),
             node("AveragePool", ["bn"], "ap", kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1],
                  count_include_pad=1),
             node("MaxPool", ["ap"], "mp", kernel_shape=[2, 2], pads=[1, 1, 1, 1]),
             node("MaxPool", ["mp"], "mc", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
             node("AveragePool", ["mc"], "av", kernel_shape=[1, 2]),
             node("GlobalMaxPool", ["av"], "g1"),
             node("Flatten", ["g1"], "fl"),
             node("Gemm", ["fl", "wg", "bg"], "gm", alpha=0.5, beta=2.0),
             node("Softmax", ["gm"], "y")]
    inits = {"g": W(c, seed=1) + f(1.0), "b": W(c, seed=2), "m": W(c, seed=3), "v": np.abs(W(c, seed=4)) + f(0.5),
             "wg": W(c, 5), "bg": W(5)}
    dn = compare(make_model(nodes, inits, [c, 8, 8], 13), (c, 8, 8), tmp_path)
    assert types(dn) == ["Activation", "BatchNorm2d", "Padding", "Pool", "Pool", "Pool", "Pool", "GlobalPool2d",
                         "Fc", "Softmax"]
    assert dn["bn"].epsilon == 1e-3 and abs(dn["bn"].moving_average_momentum - 0.2) < 1e-9
    assert dn["y"].with_loss


def test_concat_before_fc_and_reduce_mean(tmp_path):
    nodes = [node("Conv", ["x", "wa"], "a"), node("Conv", ["x", "wb"], "b"),
             node("Concat", ["a", "b"], "cat", axis=-3), node("Flatten", ["cat"], "fl"),
             node("Gemm", ["fl", "wf"], "f1", transB=1),
             node("ReduceMean", ["cat"], "rm", axes=[2, 3], keepdims=0),
             node("Gemm", ["rm", "wr"], "f2", transB=1),
             node("Add", ["f1", "f2"], "y")]
    inits = {"wa": W(2, 3, 3, 3), "wb": W(3, 3, 3, 3, seed=1), "wf": W(6, 5 * 4 * 4), "wr": W(6, 5, seed=2)}
    dn = compare(make_model(nodes, inits, [3, 6, 6], 13), (3, 6, 6), tmp_path)
    assert types(dn) == ["Conv", "Conv", "Activation", "Fc", "GlobalPool2d", "Fc", "ElemWise"]


@pytest.mark.parametrize("opset", [9, 13])
def test_pad_transpose_reshape(tmp_path, opset):
    def pad(src, dst, pads, name):
        if opset < 11:
            return [node("Pad", [src], dst, pads=pads)], {}
        return [node("Pad", [src, name], dst)], {name: np.array(pads, np.int64)}

    n1, i1 = pad("x", "p", [0, 0, 1, 2, 0, 0, 2, 1], "pads1")
    n2, i2 = pad("t", "q", [0, 0, -1, 0, 0, 0, 0, -2], "pads2")
    nodes = n1 + [node("Transpose", ["p"], "t", perm=[0, 1, 3, 2])] + n2 + [
        node("Transpose", ["q"], "u", perm=[0, 2, 3, 1]),
        node("Reshape", ["u", "shape"], "v"),
        node("Gemm", ["v", "w", "b"], "y")]
    inits = dict(i1, **i2, shape=np.array([0, -1], np.int64), w=W(2 * 6 * 6, 3), b=W(3))
    dn = compare(make_model(nodes, inits, [2, 5, 4], opset), (2, 5, 4), tmp_path)
    assert types(dn) == ["Padding", "Transpose", "Padding", "Transpose", "Fc"]


@pytest.mark.parametrize("mode,ctm,use_sizes", [("nearest", "asymmetric", False),
                                                ("linear", "pytorch_half_pixel", True),
                                                ("linear", "half_pixel", False), ("linear", "align_corners", True),
                                                ("linear", "asymmetric", False)])
def test_resize(tmp_path, mode, ctm, use_sizes):
    attrs = dict(mode=mode, coordinate_transformation_mode=ctm)
    if mode == "nearest":
        attrs["nearest_mode"] = "floor"
    if use_sizes:
        nodes = [node("Resize", ["x", "", "", "sizes"], "y", **attrs)]
        inits = {"sizes": np.array([2, 3, 9, 7], np.int64)}
    else:
        nodes = [node("Resize", ["x", "", "scales"], "y", **attrs)]
        inits = {"scales": np.array([1, 1, 2, 2], np.float32)}
    dn = compare(make_model(nodes, inits, [3, 4, 5], 13), (3, 4, 5), tmp_path)
    assert types(dn) == ["Resize"]


def test_upsample_opset9(tmp_path):
    nodes = [node("Upsample", ["x", "scales"], "y", mode="nearest")]
    dn = compare(make_model(nodes, {"scales": np.array([1, 1, 2, 3], np.float32)}, [2, 3, 3], 9), (2, 3, 3),
                 tmp_path)
    assert dn[0].outputs_width == 9 and dn[0].outputs_height == 6


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze_matmul(tmp_path, opset):
    def axes_node(op, src, dst, axes, name):
        if opset < 13:
            return [node(op, [src], dst, axes=axes)], {}
        return [node(op, [src, name], dst)], {name: np.array(axes, np.int64)}

    n1, i1 = axes_node("Squeeze", "g", "s", [2, 3], "ax1")
    n2, i2 = axes_node("Unsqueeze", "f", "u", [-1, 2], "ax2")
    n3, i3 = axes_node("Squeeze", "c", "s2", [3, 2], "ax3")
    nodes = [node("GlobalAveragePool", ["x"], "g")] + n1 + [node("MatMul", ["s", "wm"], "mm"),
                                                            node("Add", ["mm", "bm"], "f")] + n2 + [
        node("Conv", ["u", "wc", "bc"], "c")] + n3 + [node("LogSoftmax", ["s2"], "y", axis=1)]
    inits = dict(i1, **i2, **i3, wm=W(4, 6), bm=W(6), wc=W(5, 6, 1, 1), bc=W(5))
    with pytest.warns(UserWarning, match="LogSoftmax imported as a Softmax"):
        dn = compare(make_model(nodes, inits, [4, 5, 5], opset), (4, 5, 5), tmp_path, post=np.exp)
    assert types(dn) == ["GlobalPool2d", "Fc", "Conv", "Softmax"]
    assert dn["mm"].has_bias()  # the Add after MatMul is its bias


def test_softmax_over_channels_per_pixel(tmp_path):
    nodes = [node("Conv", ["x", "w"], "c"), node("Softmax", ["c"], "y", axis=1)]
    dn = compare(make_model(nodes, {"w": W(5, 2, 1, 1)}, [2, 3, 4], 13), (2, 3, 4), tmp_path)
    assert types(dn) == ["Conv", "Softmax"]


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose(tmp_path, group):
    nodes = [node("ConvTranspose", ["x", "w", "b"], "d", strides=[2, 2], pads=[1, 0, 1, 1], output_padding=[1, 0],
                  group=group),
             node("Relu", ["d"], "y")]
    dn = compare(make_model(nodes, {"w": W(4, 3, 3, 3), "b": W(3 * group)}, [4, 5, 4], 13), (4, 5, 4), tmp_path)
    assert types(dn)[0] == "Deconv"


def test_dropout_identity_cast_removed_prelu(tmp_path):
    nodes = [node("Conv", ["x", "w"], "c"), node("Dropout", ["c", "ratio"], ["dr", "mask"]),
             node("Identity", ["dr"], "id"), node("Cast", ["id"], "ca", to=TensorProto.FLOAT),
             node("PRelu", ["ca", "slope"], "y")]
    inits = {"w": W(3, 2, 3, 3), "ratio": np.array(0.3, np.float32), "slope": np.array([0.2], np.float32)}
    dn = compare(make_model(nodes, inits, [2, 5, 5], 13), (2, 5, 5), tmp_path)
    assert names(dn) == ["c"] and dn["c"].get_activation().leak_slope == pytest.approx(0.2)


def test_conv1d(tmp_path):
    nodes = [node("Conv", ["x", "w", "b"], "c", pads=[2, 1], strides=[2]), node("Relu", ["c"], "r"),
             node("MaxPool", ["r"], "m", kernel_shape=[2], strides=[2]), node("Flatten", ["m"], "f"),
             node("Gemm", ["f", "wf"], "y", transB=1)]
    inits = {"w": W(3, 4, 3), "b": W(3), "wf": W(2, 3 * 4)}
    dn = compare(make_model(nodes, inits, [4, 15], 13), (4, 15, 1), tmp_path)
    assert types(dn) == ["Padding", "Conv", "Pool", "Fc"]


def test_constant_subgraph_is_folded(tmp_path):
    nodes = [node("Constant", [], "k", value=numpy_helper.from_array(np.array([2, -1], np.int64))),
             node("Shape", ["x"], "sh"), node("Gather", ["sh", "zero"], "n", axis=0),
             node("Unsqueeze", ["n", "ax0"], "n1"), node("Slice", ["k", "one", "two"], "rest"),
             node("Concat", ["n1", "rest"], "target", axis=0), node("Cast", ["target"], "t64", to=TensorProto.INT64),
             node("Reshape", ["x", "t64"], "y")]
    inits = {"zero": np.array(0, np.int64), "ax0": np.array([0], np.int64), "one": np.array([1], np.int64),
             "two": np.array([2], np.int64)}
    dn = compare(make_model(nodes, inits, [2, 3, 4], 13, outputs=[("y", ["N", 24])]), (2, 3, 4), tmp_path)
    assert types(dn) == ["Reshape"]  # the output must have the ONNX layout [N, 24] -> [N, 24, 1, 1]


# -- refusals ------------------------------------------------------------------------------------
REFUSED = {
    "softmax_axis": ([node("Softmax", ["x"], "y", axis=2)], {}, "node .*Softmax, output 'y'.*channel axis"),
    "maxpool_asym": ([node("MaxPool", ["x"], "y", kernel_shape=[2, 2], pads=[0, 0, 1, 1])], {},
                     "MaxPool, output 'y'.*asymmetric pads"),
    "avg_exclude_pad": ([node("AveragePool", ["x"], "y", kernel_shape=[3, 3], pads=[1, 1, 1, 1])], {},
                        "count_include_pad=0"),
    "ceil_mode": ([node("MaxPool", ["x"], "y", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)], {},
                  "ceil_mode=1 gives 3 outputs"),
    "unknown_op": ([node("Erf", ["x"], "y")], {}, "Erf, output 'y'.*op type 'Erf' is not supported.*Conv"),
    "pad_reflect": ([node("Pad", ["x", "pads"], "y", mode="reflect")], {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1])},
                    "Pad mode 'reflect'"),
    "div_by_activation": ([node("Div", ["one", "x"], "y")], {"one": np.float32(1.0)}, "constant divisor"),
    "matmul_activations": ([node("Transpose", ["x"], "t", perm=[0, 1, 3, 2]), node("MatMul", ["x", "t"], "y")], {},
                           "MatMul, output 'y'.*two activations"),
    "broadcast": ([node("GlobalAveragePool", ["x"], "g"), node("Add", ["x", "g"], "y")], {},
                  "Add, output 'y'.*equal shapes"),
    "batch_axis": ([node("Flatten", ["x"], "y", axis=0)], {}, "Flatten, output 'y'.*batch axis"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsupported_nodes_are_refused_by_name(tmp_path, case):
    """With generic_ops=False (the cells-only import; the default runs such nodes as OnnxNode
    cells, tests/test_onnx_generic.py)."""
    nodes, inits, message = REFUSED[case]
    path = str(tmp_path / f"{case}.onnx")
    onnx.save(make_model(nodes, inits, [3, 5, 5], 13), path)
    with pytest.raises(ONNXUnsupportedError, match=f"{case}.onnx: .*{message}"):
        DeepNetCell.load_from_ONNX(provider_for((3, 5, 5)), path, backend="numpy", generic_ops=False)


def test_a_node_legalize_leaves_is_a_generic_cell_or_refused_with_the_rules_reason(tmp_path):
    """PRelu by a per-channel slope (no N2D2 cell): with generic_ops, an OnnxNode cell named after
    the node, holding the slope as its parameter, matching onnxruntime; without, refused naming
    the file, the node and the legalize rule's reason."""
    nodes = [node("Conv", ["x", "w"], "c"), node("PRelu", ["c", "slopes"], "y")]
    model = make_model(nodes, {"w": W(3, 2, 3, 3), "slopes": W(3, 1, 1, seed=4)}, [2, 5, 5], 13)
    dn = compare(model, (2, 5, 5), tmp_path)
    assert names(dn) == ["c", "y"] and type(dn["y"]).__name__ == "OnnxNode"
    np.testing.assert_array_equal(np.asarray(dn["y"]._constants["in1"]), W(3, 1, 1, seed=4))
    path = str(tmp_path / "prelu.onnx")
    onnx.save(model, path)
    with pytest.raises(ONNXUnsupportedError, match="prelu.onnx: node .*PRelu, output 'y'.*one leak slope"):
        DeepNetCell.load_from_ONNX(provider_for((2, 5, 5)), path, backend="numpy", generic_ops=False)


def test_two_data_inputs_are_refused(tmp_path):
    extra = helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", 3, 5, 5])
    path = str(tmp_path / "two.onnx")
    onnx.save(make_model([node("Add", ["x", "x2"], "y")], {}, [3, 5, 5], 13, extra_inputs=[extra]), path)
    with pytest.raises(ONNXUnsupportedError, match="two.onnx: the model has 2 data inputs"):
        DeepNetCell.load_from_ONNX(provider_for((3, 5, 5)), path)


@needs_lenet
def test_malformed_files_name_the_file(tmp_path):
    raw = open(LENET, "rb").read()
    cases = {"truncated.onnx": raw[:len(raw) // 2], "garbage.onnx": bytes(range(256)) * 8, "empty.onnx": b""}
    model = onnx.load(LENET)
    del model.graph.initializer[0]
    cases["no_init.onnx"] = model.SerializeToString()
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ONNXFormatError, match=name):
            DeepNetCell.load_from_ONNX(provider_for((1, 28, 28)), str(path))
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        DeepNetCell.load_from_ONNX(provider_for((1, 28, 28)), str(tmp_path / "missing.onnx"))


@needs_lenet
def test_ini_embedding_keys_and_refusals(tmp_path):
    ini = tmp_path / "import.ini"
    ini.write_text("[onnx]\nIgnore=18\nCNTK=1\n[onnx:Conv_def]\nWeightsSolver=Adam\nWeightsSolver.LearningRate=0.002\n"
                   "BiasSolver.Momentum=0.5\nBackPropagate=0\n[15]\nConfigSection=slow\n[slow]\n"
                   "Solvers.LearningRate=0.001\nWeightsFiller=XavierFiller\nWeightsFiller.Scaling=2.0\n")
    dn = DeepNetCell.load_from_ONNX(provider_for((1, 28, 28)), LENET, ini_file=str(ini), backend="numpy")
    assert names(dn)[-1] == "17"
    conv = dn["11"]
    assert conv.weights_solver.get_type() == "Adam" and conv.weights_solver.learning_rate == 0.002
    assert conv.bias_solver.momentum == 0.5 and conv.back_propagate is False
    assert dn["15"].weights_solver.learning_rate == 0.001 and dn["15"].weights_filler.scaling == 2.0
    assert dn["17"].weights_solver.learning_rate == 0.01
    # ONNX_init=0 keeps the fillers' weights.
    ini.write_text("[onnx]\nONNX_init=0\n[onnx:Fc_def]\nWeightsFiller=ConstantFiller\nWeightsFiller.Value=0.25\n")
    dn = DeepNetCell.load_from_ONNX(provider_for((1, 28, 28)), LENET, ini_file=str(ini), backend="numpy")
    assert np.all(dn["17"]._weights == 0.25)
    for text, message in (("[onnx:Conv_def]\nQWeight=SAT\n", r"import.ini:2: \[onnx:Conv_def\] QWeight is not "
                                                            "supported"),
                          ("[10]\nBackPropagate=0\n", r"section \[10\] names an ONNX node that made no cell"),
                          ("[onnx]\nTranspose=1\n", "Transpose =1 is not supported"),
                          ("[onnx:Fc_def]\nSolvers.LearningRate=fast\n", "LearningRate ='fast' is not a float")):
        ini.write_text(text)
        with pytest.raises(ONNXError, match=message):
            DeepNetCell.load_from_ONNX(provider_for((1, 28, 28)), LENET, ini_file=str(ini))


# -- mutated models (hypothesis) -------------------------------------------------------------------
def _zoo_bytes():
    nodes = [node("Conv", ["x", "w", "b"], "c", pads=[1, 1, 1, 1], group=1), node("Relu", ["c"], "r"),
             node("MaxPool", ["r"], "m", kernel_shape=[2, 2], strides=[2, 2]),
             node("Reshape", ["m", "shape"], "f"), node("Gemm", ["f", "wf", "bf"], "g", transB=1),
             node("Softmax", ["g"], "y", axis=1)]
    inits = {"w": W(4, 3, 3, 3), "b": W(4), "shape": np.array([0, -1], np.int64), "wf": W(5, 4 * 3 * 3),
             "bf": W(5)}
    return make_model(nodes, inits, [3, 6, 6], 13).SerializeToString()


def _mutate(data, choice, index, value, cut):
    """One mutation of a serialized model (see the test's docstring)."""
    if choice == "bytes":
        return value
    if choice == "truncate":
        return data[:cut % max(len(data), 1)]
    model = onnx.load_from_string(data)
    g = model.graph
    if choice == "drop_initializer":
        del g.initializer[index % len(g.initializer)]
    elif choice == "corrupt_attribute":
        attrs = [(n, a) for n in g.node for a in n.attribute]
        n, a = attrs[index % len(attrs)]
        small = int.from_bytes(value[:1] or b"\0", "little") % 9 - 3
        if a.type == onnx.AttributeProto.INTS:
            del a.ints[:]
            a.ints.extend([small] * (1 + index % 5))
        elif a.type == onnx.AttributeProto.INT:
            a.i = small
        elif a.type == onnx.AttributeProto.FLOAT:
            a.f = float(small) / 2
        else:
            a.name = "bogus"
    elif choice == "drop_input":
        n = g.node[index % len(g.node)]
        if len(n.input):
            del n.input[len(n.input) - 1]
    elif choice == "extra_input":
        n = g.node[index % len(g.node)]
        n.input.append(["x", "w", "nope", ""][index % 4])
    elif choice == "op_type":
        n = g.node[index % len(g.node)]
        n.op_type = ["Relu", "Add", "Conv", "Gemm", "Flatten", "Softmax", "Sum", "LRN"][index % 8]
    return model.SerializeToString()


@needs_lenet
def test_mutated_models_fail_only_with_documented_errors(tmp_path):
    """Dropped initializers, corrupted attributes, wrong input counts, changed op types, random
    bytes, truncated files: the import succeeds or raises a ValueError/RuntimeError/TypeError
    subclass naming the file (never a bare KeyError, IndexError or AttributeError)."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    bases = {"lenet": (open(LENET, "rb").read(), (1, 28, 28)), "zoo": (_zoo_bytes(), (3, 6, 6))}
    counter = iter(range(10 ** 6))

    @hypothesis.settings(max_examples=30, deadline=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(base=st.sampled_from(sorted(bases)),
                      choice=st.sampled_from(["drop_initializer", "corrupt_attribute", "drop_input", "extra_input",
                                              "op_type", "bytes", "truncate"]),
                      index=st.integers(0, 1000), value=st.binary(min_size=0, max_size=64),
                      cut=st.integers(0, 10 ** 6))
    def check(base, choice, index, value, cut):
        data, shape = bases[base]
        path = tmp_path / f"mutant_{next(counter)}.onnx"
        path.write_bytes(_mutate(data, choice, index, value, cut))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                DeepNetCell.load_from_ONNX(provider_for(shape), str(path), backend="numpy")
        except (KeyError, IndexError, AttributeError) as e:
            raise AssertionError(f"{choice}: bare {type(e).__name__}: {e}") from e
        except (ValueError, RuntimeError, TypeError) as e:
            assert path.name in str(e), f"{choice}: {type(e).__name__} without the file name: {e}"

    check()


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_auto_pad_is_resolved_as_onnx_backend_does(tmp_path, auto_pad):
    """Conv and MaxPool with `auto_pad` (odd totals: asymmetric pads, a Padding cell) resolve their
    pads with the same function on both ONNX paths (`tensor_ops.resolve_pads`): load_from_ONNX and
    `n2d2.onnx_backend` against onnxruntime."""
    from n2d2 import onnx_backend

    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[4, 3], strides=[2, 2],
                              auto_pad=auto_pad),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 3], strides=[1, 2], auto_pad=auto_pad)]
    model = make_model(nodes, {"w": W(4, 3, 4, 3), "b": W(4)}, [3, 9, 8], 13)
    path = str(tmp_path / f"{auto_pad}.onnx")
    onnx.save(model, path)
    x = np.random.default_rng(7).standard_normal((2, 3, 9, 8)).astype(np.float32)
    ref = run_ort(path, x)
    dn = DeepNetCell.load_from_ONNX(provider_for((3, 9, 8), 2), path, generic_ops=False)
    names = [c.get_name() for c in dn]
    assert ("c_padding" in names) == (auto_pad != "VALID") and ("y_padding" in names) == (auto_pad != "VALID"), names
    assert rel_err(run_cell(dn, x).reshape(ref.shape), ref) < TOL
    assert rel_err(onnx_backend.prepare(model).run([x])[0], ref) < TOL
