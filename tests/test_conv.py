"""Conv, ConvDepthWise, ConvPointWise and the conv2d op.

Forward, input/weight/bias gradients vs PyTorch (float32 cells) and float64 finite differences
(op), over strides, paddings (a negative one vs a cropped input), dilations, sub-sampling,
grouped/depthwise/irregular mappings, no_bias and activations; weight API, free parameters,
printing, argument checks, frozen geometry and a tiny training run.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import n2d2
from n2d2.activation import Rectifier
from n2d2.cells import Conv, ConvDepthWise, ConvPointWise, Fc
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.filler import Constant, Filler, Normal
from n2d2.mapping import Mapping
from n2d2.ops import conv as ops
from n2d2.settings import Verbosity
from n2d2.solver import SGD
from tests.conftest import numeric_grad, rel_err, requires_cuda, run_weighted_cell

IRREGULAR = np.array([[1, 0, 1, 1, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 1], [0, 0, 0, 1, 1]], dtype=bool)  # [C=4, O=5]


def _mapping(kind, c, o):
    if kind is None:
        return None
    if kind == "grouped":
        return Mapping(nb_groups=2).create_mapping(c, o)
    if kind == "depthwise":
        return Mapping(nb_channels_per_group=1).create_mapping(c, o)
    assert (c, o) == IRREGULAR.shape
    return n2d2.Tensor.from_numpy(IRREGULAR)


def _torch_sub_sample(y, sy, sx):
    """N2D2 sub-sampling reference: sums over sy x sx blocks, the last ones partial."""
    n, o, h, w = y.shape
    hs, ws = -(-h // sy), -(-w // sx)
    y = F.pad(y, (0, ws * sx - w, 0, hs * sy - h))
    return y.reshape(n, o, hs, sy, ws, sx).sum(dim=(3, 5))


# (input NCHW, nb_outputs, kernel [X,Y], stride [X,Y], padding [X,Y], dilation [X,Y], sub_sample [X,Y],
#  mapping kind, no_bias, activation)
CASES = [
    ((2, 3, 9, 8), 4, [3, 3], [1, 1], [0, 0], [1, 1], [1, 1], None, False, None),
    ((2, 3, 9, 11), 5, [2, 3], [2, 1], [1, 2], [1, 1], [1, 1], None, True, Rectifier()),
    ((3, 4, 10, 9), 6, [3, 3], [1, 2], [2, 1], [2, 1], [1, 1], "grouped", False, None),
    ((2, 4, 8, 8), 4, [3, 3], [1, 1], [1, 1], [1, 1], [1, 1], "depthwise", False, Rectifier()),
    ((2, 4, 9, 10), 5, [3, 2], [1, 1], [0, 1], [1, 2], [1, 1], "irregular", False, None),
    ((2, 3, 11, 12), 4, [3, 3], [1, 1], [-1, -2], [1, 1], [1, 1], None, False, None),
    ((2, 3, 11, 10), 4, [3, 3], [1, 1], [1, 0], [1, 1], [2, 3], None, False, Rectifier()),
    ((2, 2, 13, 12), 3, [3, 2], [2, 2], [0, 1], [1, 1], [2, 2], "irregular_small", True, None),
    ((2, 5, 7, 6), 3, [1, 1], [1, 1], [0, 0], [1, 1], [1, 1], None, False, None),
    # large enough for the banded few-output-channel GEMMs and the split weight-gradient GEMM
    ((32, 1, 34, 34), 4, [3, 3], [1, 1], [0, 0], [1, 1], [1, 1], None, False, Rectifier()),
    ((8, 2, 40, 36), 3, [5, 3], [1, 2], [1, 2], [1, 1], [1, 1], None, False, None),
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_conv_cell_matches_torch(case):
    shape, nb_out, kernel, stride, padding, dilation, sub, kind, no_bias, act = case
    rng = np.random.default_rng(3)
    c = shape[1]
    mapping = None
    if kind == "irregular_small":
        table = np.array([[1, 0, 1], [1, 1, 0]], dtype=bool)
        mapping = n2d2.Tensor.from_numpy(table)
    else:
        mapping = _mapping(kind, c, nb_out)
    cell = Conv(c, nb_out, kernel, stride_dims=stride, padding_dims=padding, dilation_dims=dilation,
                sub_sample_dims=sub, mapping=mapping, no_bias=no_bias, activation=act)
    cell._weights[...] = rng.standard_normal(cell._weights.shape).astype(np.float32)
    cell._mask_weights()
    x = rng.standard_normal(shape).astype(np.float32)

    # torch reference
    xt = torch.tensor(x, requires_grad=True)
    groups = cell._groups or 1
    w_ref = cell._weights.copy() if groups > 1 else cell._dense_weights()
    wt = torch.tensor(w_ref, requires_grad=True)
    bt = None if no_bias else torch.tensor(cell._biases.copy(), requires_grad=True)
    px, py = padding
    xin = xt
    if px < 0 or py < 0:
        xin = xt[:, :, max(-py, 0):shape[2] - max(-py, 0), max(-px, 0):shape[3] - max(-px, 0)]
    zt = F.conv2d(xin, wt, None, stride=(stride[1], stride[0]), padding=(max(py, 0), max(px, 0)),
                  dilation=(dilation[1], dilation[0]), groups=groups)
    if sub != [1, 1]:
        zt = _torch_sub_sample(zt, sub[1], sub[0])
    if bt is not None:  # added after sub-sampling, as N2D2 does
        zt = zt + bt.reshape(1, -1, 1, 1)
    yt = torch.relu(zt) if act is not None else zt
    dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(dy))

    y, (dx,), dw, db = run_weighted_cell(cell, [x], dy)
    assert list(y.shape) == list(yt.shape)
    assert rel_err(y, yt.detach().numpy()) < 1e-5
    assert rel_err(dx, xt.grad.numpy()) < 1e-5
    if groups > 1:
        assert dw.shape == cell._weights.shape and rel_err(dw, wt.grad.numpy()) < 1e-5
    else:
        mask = cell._dense_weights() != 0 if cell._groups == 0 else np.ones(dw.shape, bool)
        ref = wt.grad.numpy() * mask
        assert rel_err(dw, ref) < 1e-5
        if cell._groups == 0:
            assert not dw[~mask].any()  # unconnected kernels get no gradient
    if no_bias:
        assert db is None and cell._biases is None
    else:
        assert rel_err(db, bt.grad.numpy()) < 1e-5


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,dilation,sub,groups,table", [
    ((2, 2, 6, 5), (3, 2, 3, 2), (1, 1), (1, 0), (1, 1), (1, 1), 1, None),
    ((1, 2, 7, 7), (2, 2, 2, 3), (2, 1), (-1, 1), (1, 2), (1, 1), 1, None),
    ((1, 4, 6, 6), (4, 2, 3, 3), (1, 2), (1, 1), (1, 1), (2, 1), 2, None),
    ((1, 3, 5, 6), (2, 3, 2, 2), (1, 1), (0, 0), (2, 1), (2, 2), 1, np.array([[1, 0], [1, 1], [0, 1]], bool)),
    ((2, 3, 7, 6), (3, 1, 3, 2), (2, 1), (1, -1), (1, 2), (1, 1), 3, None),   # depthwise
    ((1, 2, 8, 7), (2, 1, 1, 2), (3, 2), (2, 1), (1, 1), (2, 1), 2, None),    # depthwise, sub-sampled
])
def test_conv_op_finite_differences(x_shape, w_shape, stride, padding, dilation, sub, groups, table):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    y, ctx = ops.conv2d_forward(x, w, b, stride, padding, dilation, sub, groups, table)
    assert y.dtype == np.float64
    dy = rng.standard_normal(y.shape)
    dx, dw, db = ops.conv2d_backward(dy, ctx)

    def loss():
        return float((ops.conv2d_forward(x, w, b, stride, padding, dilation, sub, groups, table)[0] * dy).sum())

    for arr, grad in ((x, dx), (w, dw), (b, db)):
        assert rel_err(grad, numeric_grad(loss, arr)) < 1e-7
    assert rel_err(ops.conv2d_backward_bias(dy), db) < 1e-12


@pytest.mark.parametrize("block", [20, 1 << 20])
@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), ((2, 3), (3, 0), (1, 2)), (1, -1, 2)])
def test_depthwise_path_matches_torch(monkeypatch, block, stride, padding, dilation):
    """The depthwise path (blocked columns, rotated-kernel input gradient) on several geometries."""
    monkeypatch.setattr(ops, "_DEPTHWISE_BLOCK", block)  # 20: one channel per block
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 5, 11, 10)).astype(np.float32)
    w = rng.standard_normal((5, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    y, ctx = ops.conv2d_forward(x, w, b, stride, padding, dilation, 1, 5)
    assert ctx.depthwise and ctx.cols is None
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = ops.conv2d_backward(dy, ctx)
    p = ops._pair(padding, "padding")
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    xin = xt[:, :, max(-p[0], 0):11 - max(-p[0], 0), max(-p[1], 0):10 - max(-p[1], 0)]
    yt = F.conv2d(xin, wt, torch.tensor(b), stride=stride, padding=tuple(max(v, 0) for v in p), dilation=dilation,
                  groups=5)
    yt.backward(torch.tensor(dy))
    assert rel_err(y, yt.detach().numpy()) < 1e-5
    assert rel_err(dx, xt.grad.numpy()) < 1e-5 and rel_err(dw, wt.grad.numpy()) < 1e-5


@pytest.mark.parametrize("stride,padding,dilation,table", [
    (1, 0, 1, None), ((2, 1), (1, 2), (1, 2), None), (1, -1, 1, np.array([[1, 0, 1], [0, 1, 1]], bool))])
def test_banded_path_matches_whole_gemm(monkeypatch, stride, padding, dilation, table):
    """Few output channels: forward and gradients computed over bands of output rows (the
    last one partial) equal the whole-GEMM results."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3, 2, 13, 11))
    w = rng.standard_normal((3, 2, 3, 2))
    b = rng.standard_normal(3)
    monkeypatch.setattr(ops, "_BAND_ELEMENTS", 1 << 40)  # never banded
    y0, ctx0 = ops.conv2d_forward(x, w, b, stride, padding, dilation, 1, 1, table)
    dy = rng.standard_normal(y0.shape)
    ref = ops.conv2d_backward(dy, ctx0)
    assert ctx0.bands is None and ctx0.cols is not None
    monkeypatch.setattr(ops, "_BAND_ELEMENTS", 40)  # tiny bands: ~2 rows each
    monkeypatch.setattr(ops, "_BAND_MIN_POSITIONS", 1)
    y1, ctx1 = ops.conv2d_forward(x, w, b, stride, padding, dilation, 1, 1, table)
    assert ctx1.bands is not None and len(ctx1.bands) > 2 and ctx1.cols is None
    got = ops.conv2d_backward(dy, ctx1)
    assert rel_err(y1, y0) < 1e-13
    for g, r in zip(got, ref):
        assert rel_err(g, r) < 1e-13
    prepared = ops.conv2d_prepare(x, w, stride, padding, dilation, 1, 1, table)
    assert prepared.bands is not None
    assert rel_err(ops.conv2d_backward(dy, prepared, need_dx=False)[1], ref[1]) < 1e-13


@pytest.mark.parametrize("groups,band_elements", [(1, 40), (4, 1 << 40)])
def test_context_owns_its_data(monkeypatch, groups, band_elements):
    """Banded and depthwise contexts keep the input, not a view of it: overwriting the input
    buffer after the forward pass (as a buffer planner may) leaves the gradients unchanged."""
    monkeypatch.setattr(ops, "_BAND_ELEMENTS", band_elements)
    monkeypatch.setattr(ops, "_BAND_MIN_POSITIONS", 1)
    rng = np.random.default_rng(13)
    x = ops.to_batch_innermost(rng.standard_normal((3, 4, 9, 8))).transpose(3, 0, 1, 2)  # [C, H, W, N] memory
    w = rng.standard_normal((4, 4 // groups, 3, 3))
    y, ctx = ops.conv2d_forward(x, w, None, 1, 0, 1, 1, groups)
    assert ctx.cols is None  # the banded or the depthwise path
    dy = rng.standard_normal(y.shape)
    expected = ops.conv2d_backward(dy, ops.conv2d_forward(x.copy(), w, None, 1, 0, 1, 1, groups)[1])
    x[...] = 0.0
    for got, ref in zip(ops.conv2d_backward(dy, ctx)[:2], expected[:2]):
        assert rel_err(got, ref) < 1e-13


def test_op_output_size_formula():
    # ceil(floor((in + 2*pad - ((k-1)*dil+1) + stride) / stride) / subsample)
    assert ops.conv_output_size(28, 5) == 24
    assert ops.conv_output_size(10, 3, stride=2, padding=1) == 5
    assert ops.conv_output_size(11, 3, padding=1, sub_sample=2) == 6
    assert ops.conv_output_size(11, 3, dilation=2, padding=-1) == 5
    g = ops.ConvGeometry((1, 1, 11, 10), 2, (3, 3), 1, (1, 0), 1, (2, 3))
    assert g.out == (6, 3) and g.conv == (11, 8)
    with pytest.raises(ValueError, match="too small"):
        ops.ConvGeometry((1, 1, 2, 2), 1, (3, 3))


def test_mapping_groups_detection():
    assert ops.mapping_groups(np.ones((4, 6), bool)) == 1
    assert ops.mapping_groups(Mapping(nb_groups=2).create_mapping(4, 6).to_numpy()) == 2
    assert ops.mapping_groups(np.eye(5, dtype=bool)) == 5
    assert ops.mapping_groups(IRREGULAR) == 0
    assert ops.mapping_groups(np.eye(4, dtype=bool)[::-1]) == 0
    # unequal output groups (a valid N2D2 table) are not a grouped convolution
    assert ops.mapping_groups(Mapping(nb_groups=2).create_mapping(4, 5).to_numpy()) == 0


def test_depthwise_and_grouped_store_only_connected_kernels():
    dw = ConvDepthWise(16, [3, 3])
    assert dw._weights.shape == (16, 1, 3, 3) and dw._groups == 16
    g = Conv(8, 6, [3, 3], mapping=Mapping(nb_groups=2).create_mapping(8, 6))
    assert g._weights.shape == (6, 4, 3, 3)
    irr = Conv(4, 5, [1, 1], mapping=n2d2.Tensor.from_numpy(IRREGULAR))
    assert irr._weights.shape == (5, 4, 1, 1) and not irr._weights[~IRREGULAR.T].any()
    with pytest.raises(RuntimeError, match="mapping"):
        ConvDepthWise(4, [3, 3], mapping=n2d2.Tensor([4, 4], datatype="bool"))


def test_interface_inputs_are_concatenated_and_gradients_split():
    rng = np.random.default_rng(7)
    cell = Conv(5, 3, [3, 3], padding_dims=[1, 1])
    a = rng.standard_normal((2, 2, 6, 5)).astype(np.float32)
    b = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    dy = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    y, (da, db_), _, _ = run_weighted_cell(cell, [a, b], dy)
    xt = torch.tensor(np.concatenate([a, b], axis=1), requires_grad=True)
    yt = F.conv2d(xt, torch.tensor(cell._weights), torch.tensor(cell._biases), padding=1)
    yt.backward(torch.tensor(dy))
    assert rel_err(y, yt.detach().numpy()) < 1e-5
    assert rel_err(da, xt.grad.numpy()[:, :2]) < 1e-5 and rel_err(db_, xt.grad.numpy()[:, 2:]) < 1e-5


def test_input_geometry_is_frozen_at_first_call():
    cell = Conv(2, 3, [3, 3], name="frozen")
    cell(n2d2.Tensor([1, 2, 8, 8]))
    cell(n2d2.Tensor([4, 2, 8, 8]))  # another batch size is fine
    with pytest.raises(RuntimeError, match="frozen.*Unmatching dims"):
        cell(n2d2.Tensor([1, 2, 9, 8]))
    with pytest.raises(RuntimeError, match="frozen.*dimZ"):
        cell(n2d2.Tensor([1, 3, 8, 8]))
    with pytest.raises(ValueError, match="small"):
        Conv(1, 1, [5, 5], name="tiny")(n2d2.Tensor([1, 1, 3, 3]))


def test_argument_checks_and_dims_padding():
    with pytest.raises(TypeError):
        Conv(1.0, 2, [3, 3])
    with pytest.raises(TypeError):
        Conv(1, "2", [3, 3])
    with pytest.raises(TypeError):
        Conv(1, 2, 3)
    with pytest.raises(WrongInputType):
        Conv(1, 2, [3, 3], stride_dims=(1, 1))
    with pytest.raises(WrongInputType):
        Conv(1, 2, [3, 3], activation="relu")
    with pytest.raises(WrongInputType):
        Conv(1, 2, [3, 3], weights_filler=1)
    with pytest.raises(WrongValue):
        Conv(1, 2, [3, 3], weights_export_format="CO")
    with pytest.raises(WrongValue):
        Conv(1, 2, [0, 3])
    with pytest.raises(WrongInputType):
        Conv(1, 2, [3, 3], mapping=np.ones((1, 2), bool))
    with pytest.raises(ValueError, match="mapping"):
        Conv(2, 3, [3, 3], mapping=n2d2.Tensor([3, 2], datatype="bool"))
    table = n2d2.Tensor.from_numpy(IRREGULAR.astype(np.int32))  # int tables are accepted too
    cell = Conv(4, 5, [3, 3], mapping=table)
    assert cell.mapping is table and cell.get_parameter("mapping") is table and cell._groups == 0
    cell = Conv(2, 3, [3], stride_dims=[2], padding_dims=[1], dilation_dims=[2], sub_sample_dims=[3])
    assert cell.kernel_dims == [3, 1] and cell.stride_dims == [2, 1] and cell.padding_dims == [1, 0]
    assert cell.dilation_dims == [2, 1] and cell.sub_sample_dims == [3, 1]
    assert cell.get_weight(0, 0).shape() == [1, 3]  # [kH, kW]
    with pytest.raises(RuntimeError):
        cell.kernel_dims = [5, 5]
    assert ConvPointWise(3, 4).kernel_dims == [1, 1]


def test_print_fresh_conv_detailed_short_graph_only():
    n2d2.global_variables.verbosity = Verbosity.detailed
    sgd = ("SGD(clamping=, decay=0.0, iteration_size=1, learning_rate=0.01, learning_rate_decay=0.1, "
           "learning_rate_policy=None, learning_rate_step_size=1, max_iterations=0, min_decay=0.0, momentum=0.0, "
           "polyak_momentum=True, power=0.0, warm_up_duration=0, warm_up_lr_frac=0.25)")
    cell = Conv(1, 6, [5, 5], name="c1", activation=Rectifier())
    args = ("nb_inputs=1, nb_outputs=6, kernel_dims=[5, 5], sub_sample_dims=[1, 1], stride_dims=[1, 1], "
            "padding_dims=[0, 0], dilation_dims=[1, 1]")
    assert str(cell) == (
        f"'c1' Conv(Frame<float>)({args} | back_propagate=True, no_bias=False, outputs_remap=, "
        "weights_export_flip=False, weights_export_format=OCHW, "
        "activation=Rectifier(clipping=0.0, leak_slope=0.0, quantizer=None), "
        f"weights_solver={sgd}, bias_solver={sgd}, weights_filler=Normal(mean=0.0, std_dev=0.05), "
        "bias_filler=Normal(mean=0.0, std_dev=0.05), quantizer=None)")
    n2d2.global_variables.verbosity = Verbosity.short
    assert str(cell) == f"'c1' Conv(Frame<float>)({args})"
    n2d2.global_variables.verbosity = Verbosity.graph_only
    assert str(cell) == "'c1' Conv(Frame<float>)"
    cell(n2d2.Tensor([1, 1, 8, 8]))
    assert str(cell).startswith("'c1' Conv(Frame<float>)(['TensorPlaceholder_")
    n2d2.global_variables.verbosity = Verbosity.detailed
    assert str(ConvDepthWise(3, [3, 3], name="dw")).endswith("quantizer=None, mapping=n2d2.Tensor(dims=[3, 3]))")
    assert str(Conv(1, 1, [1, 1])).startswith("'Conv_")


def test_weight_api_round_trips():
    cell = Conv(4, 5, [3, 2], mapping=n2d2.Tensor.from_numpy(IRREGULAR))
    k = n2d2.Tensor([2, 3])
    k.set_values([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    cell.set_weight(2, 0, k)
    assert cell.get_weight(2, 0) == k and cell.get_weight(2, 0).shape() == [2, 3]
    assert cell.get_weights()[2][0][4] == 5.0 and len(cell.get_weights()) == 5 and len(cell.get_weights()[0]) == 4
    # unconnected pair (output 0, channel 2): reads zeros, accepts only zeros
    assert not IRREGULAR[2, 0] and not any(cell.get_weight(0, 2))
    cell.set_weight(0, 2, n2d2.Tensor([2, 3]))
    with pytest.raises(RuntimeError, match="not connected"):
        cell.set_weight(0, 2, k)
    with pytest.raises(ValueError):
        cell.get_weight(5, 0)
    with pytest.raises(ValueError):
        cell.get_weight(0, 4)
    with pytest.raises(ValueError):
        cell.set_weight(2, 0, n2d2.Tensor([3, 3]))
    cell.set_bias(4, n2d2.Tensor([1], value=0.5))
    assert cell.get_bias(4)[0] == 0.5 and len(cell.get_biases()) == 5
    dw = ConvDepthWise(3, [3, 3])
    dw.set_weight(1, 1, n2d2.Tensor([3, 3], value=2.0))
    assert dw.get_weight(1, 1)[8] == 2.0 and dw._weights[1, 0, 2, 2] == 2.0 and not any(dw.get_weight(1, 0))
    grouped = Conv(4, 4, [1, 1], mapping=Mapping(nb_groups=2).create_mapping(4, 4))
    grouped.set_weight(3, 2, n2d2.Tensor([1, 1], value=7.0))
    assert grouped._weights[3, 0, 0, 0] == 7.0 and grouped.get_weight(3, 2)[0] == 7.0


def test_fillers_fans_and_refill():
    seen = []

    class Spy(Normal):
        def _draw(self, shape, fan_in, fan_out):
            seen.append((tuple(shape), fan_in, fan_out))
            return super()._draw(shape, fan_in, fan_out)

    Conv(3, 4, [5, 2], weights_filler=Spy(), bias_filler=Spy())
    assert seen[0] == ((4, 3, 2, 5), 2 * 5 * 3, 2 * 5 * 4) and seen[1] == ((4,), 30, 40)
    cell = Conv(2, 2, [3, 3])
    cell.set_filler(Constant(value=6.0))
    cell.refill_bias()
    cell.refill_weights()
    assert cell.get_biases()[0][0] == 6.0 and cell.get_weights()[0][0][0] == 6.0
    assert issubclass(Spy, Filler)


def _write_and_read(cell, other, tmp_path):
    cell.export_free_parameters(str(tmp_path), verbose=False)
    other.import_free_parameters(str(tmp_path))
    assert np.array_equal(other._weights, cell._weights)
    if cell.has_bias():
        assert np.array_equal(other._biases, cell._biases)


@pytest.mark.parametrize("fmt,flip", [("OCHW", False), ("OCHW", True), ("HWCO", False), ("HWCO", True)])
def test_free_parameters_round_trip_and_layout(tmp_path, fmt, flip):
    table = n2d2.Tensor.from_numpy(IRREGULAR)
    cell = Conv(4, 5, [3, 2], name="cv", mapping=table, weights_export_format=fmt, weights_export_flip=flip)
    _write_and_read(cell, Conv(4, 5, [3, 2], name="cv", mapping=table, weights_export_format=fmt,
                               weights_export_flip=flip), tmp_path)
    lines = (tmp_path / "cv_weights.syntxt").read_text().splitlines()
    kernels = {(o, c): cell.get_weight(o, c).to_numpy().reshape(-1) for o in range(5) for c in range(4)
               if IRREGULAR[c, o]}
    if fmt == "OCHW":
        assert len(lines) == 5
        for o, line in enumerate(lines):
            expected = np.concatenate([kernels[(o, c)][::-1] if flip else kernels[(o, c)]
                                       for c in range(4) if IRREGULAR[c, o]])
            assert np.array_equal(np.array(line.split(), dtype=np.float32), expected)
    else:
        assert len(lines) == 6  # one line per kernel position
        for k, line in enumerate(lines):
            expected = [kernels[(o, c)][5 - k if flip else k] for c in range(4) for o in range(5) if IRREGULAR[c, o]]
            assert np.array_equal(np.array(line.split(), dtype=np.float32), np.array(expected, np.float32))
    assert all(line.endswith(" ") for line in lines)
    assert len((tmp_path / "cv_biases.syntxt").read_text().splitlines()) == 5


def test_free_parameters_depthwise_dense_no_bias(tmp_path):
    dw = ConvDepthWise(6, [3, 3], name="dw")
    _write_and_read(dw, ConvDepthWise(6, [3, 3], name="dw"), tmp_path)
    assert [len(line.split()) for line in (tmp_path / "dw_weights.syntxt").read_text().splitlines()] == [9] * 6
    nb = Conv(2, 3, [2, 2], name="nb", no_bias=True)
    _write_and_read(nb, Conv(2, 3, [2, 2], name="nb", no_bias=True), tmp_path)
    assert not (tmp_path / "nb_biases.syntxt").exists()


def test_free_parameters_errors_name_cell_and_file(tmp_path):
    cell = Conv(4, 5, [3, 2], name="cv", mapping=n2d2.Tensor.from_numpy(IRREGULAR))
    cell.export_free_parameters(str(tmp_path), verbose=False)
    path = tmp_path / "cv_weights.syntxt"
    values = path.read_text().split()
    assert len(values) == IRREGULAR.sum() * 6
    path.write_text(" ".join(values[:-1]) + "\n")  # one value short
    with pytest.raises(ValueError, match=r"'cv'.*cv_weights\.syntxt.*expected 60"):
        cell.import_free_parameters(str(tmp_path))
    path.write_text(" ".join(values + ["1.0"]) + "\n")  # one value too many
    with pytest.raises(ValueError, match=r"'cv'.*cv_weights\.syntxt"):
        cell.import_free_parameters(str(tmp_path))
    path.write_text(" ".join(values[:-1] + ["oops"]) + "\n")
    with pytest.raises(ValueError, match=r"'cv'.*not a number"):
        cell.import_free_parameters(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="'other'"):
        Conv(4, 5, [3, 2], name="other").import_free_parameters(str(tmp_path))
    Conv(4, 5, [3, 2], name="other").import_free_parameters(str(tmp_path), ignore_not_exists=True)
    with pytest.raises(NotImplementedError, match="outputs_remap"):
        Conv(1, 2, [1, 1], outputs_remap="0:1").export_free_parameters(str(tmp_path))


def test_mapping_change_after_construction_keeps_connected_kernels():
    cell = Conv(4, 4, [1, 1])
    before = cell._dense_weights()
    cell.mapping = n2d2.Tensor.from_numpy(np.eye(4, dtype=bool))
    assert cell._groups == 4 and cell._weights.shape == (4, 1, 1, 1)
    assert np.array_equal(cell._dense_weights(), before * np.eye(4)[:, :, None, None])


def test_tiny_training_conv_fc_loss_decreases():
    rng = np.random.default_rng(11)
    n = 16
    labels = np.arange(n) % 2
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32) * 0.3
    x[labels == 1, :, 2:6, 2:6] += 1.0  # class 1 has a bright square
    conv = Conv(1, 4, [3, 3], activation=Rectifier(), padding_dims=[1, 1], name="tc",
                solver=SGD(learning_rate=0.1, momentum=0.9))
    fc = Fc(4 * 8 * 8, 2, name="tf", solver=SGD(learning_rate=0.1, momentum=0.9))
    onehot = np.eye(2, dtype=np.float32)[labels]
    losses = []
    for _ in range(30):
        out = fc(conv(n2d2.Tensor.from_numpy(x)))
        z = out.to_numpy().reshape(n, 2)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        losses.append(float(-np.log(p[np.arange(n), labels]).mean()))
        net = out.get_deepnet()
        net.seed_gradient(out, (p - onehot).reshape(n, 2, 1, 1))
        net.back_propagate()
        net.update()
    assert losses[-1] < 0.2 * losses[0]
    assert conv._param_grads["weights"].shape == conv._weights.shape


def test_back_propagate_false_gives_no_input_gradient():
    cell = Conv(2, 2, [3, 3], back_propagate=False)
    y = cell(n2d2.Tensor([1, 2, 5, 5], value=1.0))
    record = y.get_deepnet().records()[-1]
    assert cell._backward(record.ctx, np.ones((1, 2, 3, 3), np.float32), [True]) == [None]
    assert cell._param_grads["weights"].shape == (2, 2, 3, 3)


@requires_cuda
def test_conv_cuda_matches_cpu():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 4, 12, 11)).astype(np.float32)
    for mapping in (None, Mapping(nb_channels_per_group=1).create_mapping(4, 4), n2d2.Tensor.from_numpy(IRREGULAR)):
        nb_out = 5 if mapping is not None and mapping.shape() == [4, 5] else 4
        cpu = Conv(4, nb_out, [3, 3], stride_dims=[2, 1], padding_dims=[1, 1], mapping=mapping)
        gpu = Conv(4, nb_out, [3, 3], stride_dims=[2, 1], padding_dims=[1, 1], mapping=mapping, model="Frame_CUDA")
        gpu._weights[...] = gpu._to_model_device(cpu._weights)
        gpu._biases[...] = gpu._to_model_device(cpu._biases)
        y_cpu = cpu(n2d2.Tensor.from_numpy(x)).to_numpy()
        y_gpu = gpu(n2d2.Tensor.from_numpy(x)).to_numpy()
        assert rel_err(y_gpu, y_cpu) < 1e-5
        dy = rng.standard_normal(y_cpu.shape).astype(np.float32)
        for cell in (cpu, gpu):
            rec = cell.get_outputs().get_deepnet().records()[-1]
            cell._zero_param_grads()
            cell._dx = cell._backward(rec.ctx, cell._to_model_device(dy), [True])[0]
        assert rel_err(n2d2.backend.to_host(gpu._dx), cpu._dx) < 1e-5
        assert rel_err(n2d2.backend.to_host(gpu._param_grads["weights"]), cpu._param_grads["weights"]) < 1e-5


def test_traced_graph_runs_like_eager():
    pytest.importorskip("networkx")
    from n2d2.codegen import numpy_exec
    from n2d2.ir.trace import trace

    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
    c1 = Conv(4, 5, [3, 3], mapping=n2d2.Tensor.from_numpy(IRREGULAR), activation=Rectifier(), sub_sample_dims=[2, 2])
    c2 = ConvDepthWise(5, [2, 2], stride_dims=[2, 1], padding_dims=[1, 0], no_bias=True)
    out = c2(c1(n2d2.Tensor.from_numpy(x)))
    traced = trace(out.get_deepnet())
    (y,) = numpy_exec.run(traced.graph, {traced.graph.inputs[0]: x})
    assert rel_err(y, out.to_numpy()) < 1e-6
