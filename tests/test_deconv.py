"""Deconv and the conv_transpose2d op: forward and gradients vs PyTorch and finite differences,
mappings, output size, weight API, free parameters, printing and argument checks."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import n2d2
from n2d2.activation import Rectifier
from n2d2.cells import Conv, Deconv
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.mapping import Mapping
from n2d2.ops import deconv as ops
from n2d2.settings import Verbosity
from tests.conftest import numeric_grad, rel_err, requires_cuda, run_weighted_cell

IRREGULAR = np.array([[1, 0, 1, 1, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 1], [0, 0, 0, 1, 1]], dtype=bool)  # [C=4, O=5]


# (input NCHW, nb_outputs, kernel [X, Y], stride [X, Y], padding [X, Y], dilation [X, Y], mapping, no_bias, act)
CASES = [
    ((2, 3, 5, 4), 4, [3, 3], [1, 1], [0, 0], [1, 1], None, False, None),
    ((2, 3, 5, 6), 2, [2, 3], [2, 3], [1, 0], [1, 1], None, True, Rectifier()),
    ((2, 4, 6, 5), 6, [3, 3], [2, 1], [1, 1], [1, 2], "grouped", False, None),
    ((2, 4, 5, 5), 4, [4, 4], [2, 2], [1, 1], [1, 1], "depthwise", False, None),
    ((2, 4, 5, 6), 5, [3, 2], [1, 2], [0, 1], [2, 1], "irregular", False, Rectifier()),
    ((2, 3, 5, 5), 2, [3, 3], [2, 2], [-1, -2], [1, 1], None, False, None),
    ((16, 2, 10, 10), 3, [4, 4], [2, 2], [1, 1], [1, 1], None, False, None),
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_deconv_cell_matches_torch(case):
    shape, nb_out, kernel, stride, padding, dilation, kind, no_bias, act = case
    rng = np.random.default_rng(4)
    c = shape[1]
    mapping = {None: None, "grouped": lambda: Mapping(nb_groups=2).create_mapping(c, nb_out),
               "depthwise": lambda: Mapping(nb_channels_per_group=1).create_mapping(c, nb_out),
               "irregular": lambda: n2d2.Tensor.from_numpy(IRREGULAR)}[kind]
    cell = Deconv(c, nb_out, kernel, stride_dims=stride, padding_dims=padding, dilation_dims=dilation,
                  mapping=mapping() if mapping else None, no_bias=no_bias, activation=act)
    cell._weights[...] = rng.standard_normal(cell._weights.shape).astype(np.float32)
    cell._mask_weights()
    x = rng.standard_normal(shape).astype(np.float32)

    groups = cell._groups or 1
    # torch's conv_transpose2d weight is [C_in, C_out/groups, kH, kW], the cell's storage layout
    w_ref = cell._weights.copy() if groups > 1 else cell._dense_weights().transpose(1, 0, 2, 3).copy()
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w_ref, requires_grad=True)
    bt = None if no_bias else torch.tensor(cell._biases.copy(), requires_grad=True)
    px, py = padding
    zt = F.conv_transpose2d(xt, wt, None, stride=(stride[1], stride[0]), padding=(max(py, 0), max(px, 0)),
                            dilation=(dilation[1], dilation[0]), groups=groups)
    if px < 0 or py < 0:  # negative padding enlarges the output with a zero border
        zt = F.pad(zt, (max(-px, 0), max(-px, 0), max(-py, 0), max(-py, 0)))
    if bt is not None:
        zt = zt + bt.reshape(1, -1, 1, 1)
    yt = torch.relu(zt) if act is not None else zt
    dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(dy))

    y, dx, dw, db = run_weighted_cell(cell, x, dy)
    out_h = (shape[2] - 1) * stride[1] - 2 * py + dilation[1] * (kernel[1] - 1) + 1
    out_w = (shape[3] - 1) * stride[0] - 2 * px + dilation[0] * (kernel[0] - 1) + 1
    assert list(y.shape) == [shape[0], nb_out, out_h, out_w] == list(yt.shape)
    assert rel_err(y, yt.detach().numpy()) < 1e-5
    assert rel_err(dx, xt.grad.numpy()) < 1e-5
    ref = wt.grad.numpy()
    if cell._groups == 0:
        mask = IRREGULAR[:, :, None, None] * np.ones_like(ref, dtype=bool)
        ref = ref * mask
        assert not dw[~mask].any()
    assert dw.shape == cell._weights.shape and rel_err(dw, ref) < 1e-5
    if no_bias:
        assert db is None
    else:
        assert rel_err(db, bt.grad.numpy()) < 1e-5


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,dilation,groups,table", [
    ((2, 2, 3, 4), (2, 3, 3, 2), (1, 1), (0, 1), (1, 1), 1, None),
    ((1, 2, 3, 3), (2, 2, 3, 3), (2, 3), (1, -1), (1, 2), 1, None),
    ((1, 4, 3, 3), (4, 1, 2, 2), (2, 2), (0, 0), (1, 1), 2, None),
    ((1, 3, 3, 3), (3, 2, 2, 2), (1, 2), (0, 0), (2, 1), 1, np.array([[1, 0], [1, 1], [0, 1]], bool)),
])
def test_deconv_op_finite_differences(x_shape, w_shape, stride, padding, dilation, groups, table):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[1] * groups)
    y, ctx = ops.conv_transpose2d_forward(x, w, b, stride, padding, dilation, groups, table)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = ops.conv_transpose2d_backward(dy, ctx)
    assert rel_err(ops.conv_transpose2d_backward_data(dy, ctx), dx) < 1e-12
    _, dw_only, _ = ops.conv_transpose2d_backward(dy, ctx, need_dx=False)
    assert rel_err(dw_only, dw) < 1e-12

    def loss():
        return float((ops.conv_transpose2d_forward(x, w, b, stride, padding, dilation, groups, table)[0] * dy).sum())

    for arr, grad in ((x, dx), (w, dw), (b, db)):
        assert rel_err(grad, numeric_grad(loss, arr)) < 1e-7


def test_output_size_formula():
    assert ops.deconv_output_size(5, 3) == 7
    assert ops.deconv_output_size(5, 4, stride=2, padding=1) == 10
    assert ops.deconv_output_size(4, 3, stride=2, padding=0, dilation=2) == 11
    y = Deconv(1, 1, [3, 2], stride_dims=[2, 3], padding_dims=[1, 0])(n2d2.Tensor([1, 1, 4, 5]))
    assert y.shape() == [1, 1, (4 - 1) * 3 + 2, (5 - 1) * 2 - 2 + 3]


def test_weight_api_is_output_channel_kernel():
    cell = Deconv(2, 3, [2, 2], no_bias=True)
    cell._weights[...] = 0
    k = n2d2.Tensor([2, 2])
    k.set_values([[1.0, 2.0], [3.0, 4.0]])
    cell.set_weight(2, 1, k)  # output 2 applies k to input channel 1
    assert cell.get_weight(2, 1) == k and cell._weights[1, 2, 0, 1] == 2.0
    x = np.zeros((1, 2, 1, 1), np.float32)
    x[0, 1, 0, 0] = 1.0
    y = cell(n2d2.Tensor.from_numpy(x)).to_numpy()
    assert np.array_equal(y[0, 2], [[1.0, 2.0], [3.0, 4.0]]) and not y[0, :2].any()
    grouped = Deconv(4, 2, [1, 1], mapping=Mapping(nb_groups=2).create_mapping(4, 2))
    assert grouped._weights.shape == (4, 1, 1, 1) and not any(grouped.get_weight(0, 3))
    with pytest.raises(RuntimeError, match="not connected"):
        grouped.set_weight(0, 3, n2d2.Tensor([1, 1], value=1.0))
    with pytest.raises(ValueError):
        grouped.get_weight(2, 0)


@pytest.mark.parametrize("fmt,flip", [("OCHW", False), ("HWCO", True)])
def test_free_parameters_round_trip(tmp_path, fmt, flip):
    table = n2d2.Tensor.from_numpy(IRREGULAR)
    cell = Deconv(4, 5, [2, 3], name="dc", mapping=table, weights_export_format=fmt, weights_export_flip=flip)
    cell.export_free_parameters(str(tmp_path), verbose=False)
    other = Deconv(4, 5, [2, 3], name="dc", mapping=table, weights_export_format=fmt, weights_export_flip=flip)
    other.import_free_parameters(str(tmp_path))
    assert np.array_equal(other._weights, cell._weights) and np.array_equal(other._biases, cell._biases)
    lines = (tmp_path / "dc_weights.syntxt").read_text().splitlines()
    if fmt == "OCHW":
        first = np.concatenate([cell.get_weight(0, c).to_numpy().reshape(-1) for c in range(4) if IRREGULAR[c, 0]])
        assert len(lines) == 5 and np.array_equal(np.array(lines[0].split(), np.float32), first)
    else:
        assert len(lines) == 6
    (tmp_path / "dc_weights.syntxt").write_text("0.5\n")
    with pytest.raises(ValueError, match=r"'dc'.*dc_weights\.syntxt.*expected 60"):
        other.import_free_parameters(str(tmp_path))


def test_print_and_argument_checks():
    n2d2.global_variables.verbosity = Verbosity.short
    assert str(Deconv(2, 3, [3, 3], name="d")) == ("'d' Deconv(Frame<float>)(nb_inputs=2, nb_outputs=3, "
                                                   "kernel_dims=[3, 3], stride_dims=[1, 1], padding_dims=[0, 0], "
                                                   "dilation_dims=[1, 1])")
    n2d2.global_variables.verbosity = Verbosity.detailed
    text = str(Deconv(2, 3, [3, 3], name="d2"))
    assert "| back_propagate=True, no_bias=False, outputs_remap=, weights_export_flip=False, " \
           "weights_export_format=OCHW, activation=None, weights_solver=SGD(" in text
    assert text.endswith("bias_filler=Normal(mean=0.0, std_dev=0.05))")
    for bad in ((2.0, 3, [3, 3]), (2, None, [3, 3]), (2, 3, 3), (2, 3, [3.0, 3])):
        with pytest.raises(WrongInputType):
            Deconv(*bad)
    with pytest.raises(WrongInputType):
        Deconv(2, 3, [3, 3], quantizer=object())
    with pytest.raises(WrongValue):
        Deconv(2, 3, [3, 3], stride_dims=[0, 1])
    cell = Deconv(2, 3, [3], padding_dims=[2])
    assert cell.kernel_dims == [3, 1] and cell.padding_dims == [2, 0]
    with pytest.raises(ValueError, match="empty"):
        cell(n2d2.Tensor([1, 2, 1, 1]))


def test_frozen_geometry_and_conv_roundtrip_shapes():
    conv = Conv(3, 4, [4, 4], stride_dims=[2, 2], padding_dims=[1, 1])
    deconv = Deconv(4, 3, [4, 4], stride_dims=[2, 2], padding_dims=[1, 1], name="up")
    y = deconv(conv(n2d2.Tensor([2, 3, 8, 8], value=1.0)))
    assert y.shape() == [2, 3, 8, 8]
    with pytest.raises(RuntimeError, match="up.*Unmatching dims"):
        deconv(n2d2.Tensor([2, 4, 5, 4]))
    with pytest.raises(RuntimeError, match="up.*dimZ"):
        deconv(n2d2.Tensor([2, 3, 4, 4]))


@requires_cuda
def test_deconv_cuda_matches_cpu():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 5, 6)).astype(np.float32)
    cpu = Deconv(4, 5, [3, 3], stride_dims=[2, 2], padding_dims=[1, 1], mapping=n2d2.Tensor.from_numpy(IRREGULAR))
    gpu = Deconv(4, 5, [3, 3], stride_dims=[2, 2], padding_dims=[1, 1], mapping=n2d2.Tensor.from_numpy(IRREGULAR),
                 model="Frame_CUDA")
    gpu._weights[...] = gpu._to_model_device(cpu._weights)
    gpu._biases[...] = gpu._to_model_device(cpu._biases)
    y_cpu = cpu(n2d2.Tensor.from_numpy(x)).to_numpy()
    assert rel_err(gpu(n2d2.Tensor.from_numpy(x)).to_numpy(), y_cpu) < 1e-5


def test_traced_graph_runs_like_eager():
    pytest.importorskip("networkx")
    from n2d2.codegen import numpy_exec
    from n2d2.ir.trace import trace

    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 4, 5, 6)).astype(np.float32)
    conv = Conv(4, 4, [3, 3], padding_dims=[1, 1], activation=Rectifier())
    up = Deconv(4, 5, [4, 4], stride_dims=[2, 2], padding_dims=[1, 1], mapping=n2d2.Tensor.from_numpy(IRREGULAR))
    out = up(conv(n2d2.Tensor.from_numpy(x)))
    traced = trace(out.get_deepnet())
    (y,) = numpy_exec.run(traced.graph, {traced.graph.inputs[0]: x})
    assert y.shape == (2, 5, 10, 12) and rel_err(y, out.to_numpy()) < 1e-6
