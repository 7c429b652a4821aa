"""n2d2.onnx_backend: the official ONNX node tests, and the gradients of n2d2.ops.tensor_ops.

ONNX node tests (onnx 1.23, generated in memory by `onnx.backend.test`), CPU device, for the
ops Conv, ConvTranspose, Gemm, MatMul, Add, Sub, Mul, Div, Sum, Max, Relu, LeakyRelu, Sigmoid,
Tanh, Softmax, LogSoftmax, Clip, MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool,
BatchNormalization, Concat, Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Pad, Dropout,
Identity, Resize, Upsample, Constant, Shape, Gather (with their `_expanded` function-body
variants, which also need Less, Where, CastLike, Exp, Log, ReduceMax, ReduceSum):

    selected 337, passed 331, excluded 6 (reasons next to each `exclude` below);

plus the node tests of the other ops the backend implements (Slice, Expand, ConstantOfShape,
Equal, Less, Where, Exp, Log, ReduceMax, ReduceSum, ReduceMean): selected 68, passed 68.
A torch-exported CNN runs and its converted graph trains (autodiff) with torch's gradients.

Gradients: every op of `n2d2.ops.tensor_ops`, through its IR op definition
(`n2d2.ir.tensor_ops`), against PyTorch CPU (float32, ||a-b||/||b|| < 1e-5, forward and every
input gradient) and against central finite differences in float64.
"""
import os
import re
import warnings

import numpy as np
import onnx.backend.test
import pytest
import torch
import torch.nn.functional as F

import n2d2.onnx_backend
from n2d2.ir import ops as op_registry
from n2d2.ops import tensor_ops as T
from tests.conftest import rel_err

# -- the ONNX node tests -------------------------------------------------------------------------------
OPS = ("Conv ConvTranspose Gemm MatMul Add Sub Mul Div Sum Max Relu LeakyRelu Sigmoid Tanh Softmax LogSoftmax "
       "Clip MaxPool AveragePool GlobalAveragePool GlobalMaxPool BatchNormalization Concat Flatten Reshape "
       "Transpose Squeeze Unsqueeze Pad Dropout Identity Resize Upsample Constant Shape Gather").split()

# Ops the backend also implements (torch exports use them in shape sub-graphs and channel splits;
# the `_expanded` variants above need some): their node tests run too, counted apart.
EXTRA_OPS = "Slice Expand ConstantOfShape Equal Less Where Exp Log ReduceMax ReduceSum ReduceMean".split()
INCLUDE_EXTRA = [
    r"^test_(slice|expand|constantofshape|equal|less(?!_equal)|where|exp|log|reduce_max|reduce_sum(?!_square)"
    r"|reduce_mean)(_.*)?_cpu$",
]

INCLUDE = [
    r"^test_(conv|convtranspose|gemm|matmul|add|sub|mul|div|sum|max|relu|leakyrelu|sigmoid|tanh|softmax|logsoftmax"
    r"|clip|maxpool|averagepool|globalaveragepool|globalmaxpool|batchnorm|concat|flatten|reshape|transpose|squeeze"
    r"|unsqueeze|dropout|identity|resize|upsample|constant|shape|gather(?!_elements))(_.*)?_cpu$",
    r"^test_basic_conv_.*_cpu$",                   # Conv
    r"^test_(reflect|edge|wrap)_pad_cpu$",         # Pad (test_constant_pad* match 'constant' above)
    r"^test_training_dropout.*_cpu$",              # Dropout in training mode
]
EXCLUDE = [
    # Identity on an optional / a sequence value: the IR holds tensors only.
    r"^test_identity_opt_cpu$",
    r"^test_identity_sequence_cpu$",
    # Training-mode Dropout with a random mask: the expected outputs come from numpy's generator.
    # (test_training_dropout_zero_ratio{,_mask} are deterministic and run.)
    r"^test_training_dropout_cpu$",
    r"^test_training_dropout_default_cpu$",
    r"^test_training_dropout_default_mask_cpu$",
    r"^test_training_dropout_mask_cpu$",
]

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)   # raised by onnx's own test-case generators
    backend_test = onnx.backend.test.BackendTest(n2d2.onnx_backend, __name__)
for _pattern in INCLUDE + INCLUDE_EXTRA:
    backend_test.include(_pattern)
for _pattern in EXCLUDE:
    backend_test.exclude(_pattern)


def _selected_node_tests(patterns):
    names = backend_test._test_items["NodeModel"]
    return sorted(n for n in names if any(re.search(p, n) for p in patterns))


SELECTED = _selected_node_tests(INCLUDE)
SELECTED_EXTRA = _selected_node_tests(INCLUDE_EXTRA)
EXCLUDED = [n for n in SELECTED if any(re.search(p, n) for p in EXCLUDE)]
print(f"ONNX node tests: {len(SELECTED)} selected, {len(EXCLUDED)} excluded; "
      f"{len(SELECTED_EXTRA)} more of the extra ops")

with warnings.catch_warnings():
    warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)   # the report's 'onnx_coverage' mark
    _cases = backend_test.enable_report().test_cases
# Only the selected node tests: the other categories and the unselected node tests (about 4000
# methods) would be collected just to be skipped.
_node_cases = _cases["OnnxBackendNodeModelTest"]
_keep = set(SELECTED) | set(SELECTED_EXTRA)
for _name in [n for n in vars(_node_cases) if n.startswith("test_") and n not in _keep]:
    delattr(_node_cases, _name)
globals().update({"OnnxBackendNodeModelTest": _node_cases})
del _node_cases, _cases   # a module-level TestCase class under another name would run twice


def test_node_test_selection():
    """The patterns select the node tests of the listed ops (and their expanded variants), all of them."""
    from onnx.backend.test.loader import load_model_tests

    by_name = {f"{c.name}_cpu": c for c in load_model_tests(kind="node")}
    assert (len(SELECTED), len(SELECTED_EXTRA), len(EXCLUDED)) == (337, 68, len(EXCLUDE)), \
        (len(SELECTED), len(SELECTED_EXTRA), len(EXCLUDED))
    for selected, ops in ((SELECTED, OPS), (SELECTED_EXTRA, EXTRA_OPS)):
        for name in selected:
            types = {n.op_type for n in by_name[name].model.graph.node}
            assert "_expanded" in name or (len(types) == 1 and types <= set(ops)), (name, types)
        for name, case in by_name.items():
            types = [n.op_type for n in case.model.graph.node]
            if len(types) == 1 and types[0] in ops:
                assert name in selected, name


# -- gradients of the reference ops, through their IR op definitions -----------------------------------
class Case:
    """One op call: IR op name, attrs, inputs (shapes of random normals, or callables of the rng),
    the torch equivalent, and which inputs are differentiated."""

    def __init__(self, ident, op, attrs, inputs, torch_fn=None, diff=None):
        self.id, self.op, self.attrs, self.inputs, self.torch_fn = ident, op, attrs, inputs, torch_fn
        self.diff = diff

    def arrays(self, dtype):
        rng = np.random.default_rng(1234)
        out = []
        for spec in self.inputs:
            a = spec(rng) if callable(spec) else rng.standard_normal(spec)
            out.append(a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a)
        return out

    def differentiated(self, xs):
        if self.diff is not None:
            return list(self.diff)
        return [np.issubdtype(x.dtype, np.floating) for x in xs]


def _positive(shape):
    return lambda rng: rng.uniform(0.5, 2.0, shape)


def _ints(low, high, shape):
    return lambda rng: rng.integers(low, high, shape).astype(np.int64)


def _bools(shape):
    return lambda rng: rng.random(shape) < 0.5


def _spread(shape):
    """Well-separated values (no near-ties for max/clip kinks in finite differences)."""
    return lambda rng: rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 + rng.uniform(-0.01, 0.01, shape)


def _tpad(pads, nd):
    """ONNX spatial pads [b..., e...] as F.pad's list (last dim first)."""
    out = []
    for i in reversed(range(nd)):
        out += [pads[i], pads[nd + i]]
    return out


def _conv_t(nd, strides, pads, dilations, group):
    def fn(x, w, b=None):
        x = F.pad(x, _tpad(pads, nd))
        return getattr(F, f"conv{nd}d")(x, w, b, tuple(strides), 0, tuple(dilations), group)
    return fn


def _conv_transpose_t(nd, strides, pads, dilations, group, output_padding):
    def fn(x, w, b=None):
        full = getattr(F, f"conv_transpose{nd}d")(x, w, None, tuple(strides), 0, 0, group, tuple(dilations))
        out = T.conv_transpose_output_shape(tuple(x.shape), tuple(w.shape), strides, pads, dilations, group,
                                            output_padding)[2:]
        ends = [o + p - s for o, p, s in zip(out, pads[:nd], full.shape[2:])]
        y = F.pad(full, _tpad([-p for p in pads[:nd]] + ends, nd))
        return y if b is None else y + b.reshape((1, -1) + (1,) * nd)
    return fn


def _max_pool_t(nd, kernel, strides, pads, dilations, ceil):
    def fn(x):
        x = F.pad(x, _tpad(pads, nd), value=-float("inf"))
        return getattr(F, f"max_pool{nd}d")(x, kernel, strides, 0, dilations, ceil_mode=ceil)
    return fn


def _softmax_t(axes, log=False):
    def fn(x):
        moved = x.movedim(axes, tuple(range(x.ndim - len(axes), x.ndim)))
        flat = moved.reshape(moved.shape[:x.ndim - len(axes)] + (-1,))
        y = (F.log_softmax if log else F.softmax)(flat, dim=-1).reshape(moved.shape)
        return y.movedim(tuple(range(x.ndim - len(axes), x.ndim)), axes)
    return fn


def _resize_attrs(x_shape, out_hw, mode, coordinate, nearest="round_prefer_floor", cubic_a=-0.75, exclude=False,
                  antialias=False, roi=None, extrapolation=0.0):
    axes = [None, None]
    for i, o in enumerate(out_hw):
        s = x_shape[2 + i]
        start, end = roi[i] if roi else (0.0, 1.0)
        axes.append((o, s, o / s, start, end))
    return {"shape": tuple(x_shape[:2]) + tuple(out_hw), "axes": tuple(axes), "mode": mode,
            "coordinate_mode": coordinate, "nearest_mode": nearest, "cubic_a": cubic_a, "exclude_outside": exclude,
            "antialias": antialias, "extrapolation_value": extrapolation}


def _gemm_t(alpha, beta, ta, tb):
    def fn(a, b, c=None):
        y = alpha * ((a.T if ta else a) @ (b.T if tb else b))
        return y if c is None else y + beta * c
    return fn


def _gather_t(axis):
    def fn(x, idx):
        n = x.shape[axis]
        flat = torch.where(idx < 0, idx + n, idx).reshape(-1)
        y = x.index_select(axis, flat)
        return y.reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1:])
    return fn


CASES = [
    Case("add_bcast", "OnnxAdd", {}, [(2, 3, 4), (3, 1)], torch.add),
    Case("add_scalar", "OnnxAdd", {}, [(3, 4), ()], torch.add),
    Case("sub_bcast", "OnnxSub", {}, [(4,), (2, 3, 1)], torch.sub),
    Case("mul_bcast", "OnnxMul", {}, [(2, 1, 4), (3, 4)], torch.mul),
    Case("div_bcast", "OnnxDiv", {}, [(2, 3, 4), _positive((1, 4))], torch.div),
    Case("sum3", "OnnxSum", {}, [(2, 3), (3,), (2, 1)], lambda a, b, c: a + b + c),
    Case("max3", "OnnxMax", {}, [(2, 3), (3,), (2, 1)], lambda a, b, c: torch.maximum(torch.maximum(a, b), c)),
    Case("min3", "OnnxMin", {}, [(2, 3), (3,), (2, 1)], lambda a, b, c: torch.minimum(torch.minimum(a, b), c)),
    Case("prelu_bcast", "OnnxPRelu", {}, [(2, 3, 4), (3, 1)], lambda x, s: torch.where(x < 0, x * s, x)),
    Case("abs", "OnnxAbs", {}, [(3, 5)], torch.abs),
    Case("where", "OnnxWhere", {}, [_bools((2, 3)), (2, 3), (3,)], torch.where),
    Case("exp", "OnnxExp", {}, [(2, 5)], torch.exp),
    Case("log", "OnnxLog", {}, [_positive((2, 5))], torch.log),
    Case("relu", "OnnxRelu", {}, [(3, 5)], torch.relu),
    Case("leaky_relu", "OnnxLeakyRelu", {"alpha": 0.2}, [(3, 5)], lambda x: F.leaky_relu(x, 0.2)),
    Case("sigmoid", "OnnxSigmoid", {}, [(3, 5)], torch.sigmoid),
    Case("tanh", "OnnxTanh", {}, [(3, 5)], torch.tanh),
    Case("clip", "OnnxClip", {"min": -0.5, "max": 0.7}, [(4, 6)], lambda x: torch.clamp(x, -0.5, 0.7)),
    Case("clip_min_only", "OnnxClip", {"min": 0.1, "max": None}, [(4, 6)], lambda x: torch.clamp(x, min=0.1)),
    Case("cast", "OnnxCast", {"dtype": "float64"}, [(3, 4)], lambda x: x.double()),
    Case("softmax_axis1", "OnnxSoftmax", {"axes": (1,)}, [(2, 4, 3)], _softmax_t((1,))),
    Case("softmax_coerced", "OnnxSoftmax", {"axes": (1, 2)}, [(2, 4, 3)], _softmax_t((1, 2))),
    Case("log_softmax_last", "OnnxLogSoftmax", {"axes": (2,)}, [(2, 4, 3)], _softmax_t((2,), log=True)),
    Case("reduce_sum", "OnnxReduceSum", {"axes": (0, 2), "keepdims": False}, [(2, 3, 4)],
         lambda x: x.sum(dim=(0, 2))),
    Case("reduce_mean_keep", "OnnxReduceMean", {"axes": (2, 3), "keepdims": True}, [(2, 3, 4, 5)],
         lambda x: x.mean(dim=(2, 3), keepdim=True)),
    Case("reduce_max", "OnnxReduceMax", {"axes": (1,), "keepdims": True}, [_spread((2, 5, 3))],
         lambda x: x.amax(dim=1, keepdim=True)),
    Case("matmul_2d", "OnnxMatMul", {}, [(3, 4), (4, 5)], torch.matmul),
    Case("matmul_bcast", "OnnxMatMul", {}, [(2, 1, 3, 4), (3, 4, 2)], torch.matmul),
    Case("matmul_1d_3d", "OnnxMatMul", {}, [(4,), (2, 4, 3)], torch.matmul),
    Case("matmul_3d_1d", "OnnxMatMul", {}, [(2, 3, 4), (4,)], torch.matmul),
    Case("gemm", "OnnxGemm", {"alpha": 0.5, "beta": 2.0, "trans_a": True, "trans_b": False},
         [(4, 3), (4, 5), (5,)], _gemm_t(0.5, 2.0, True, False)),
    Case("gemm_transb_matrix_c", "OnnxGemm", {"alpha": 1.0, "beta": 1.0, "trans_a": False, "trans_b": True},
         [(3, 4), (5, 4), (3, 5)], _gemm_t(1.0, 1.0, False, True)),
    Case("reshape", "OnnxReshape", {"shape": (6, 4)}, [(2, 3, 4)], lambda x: x.reshape(6, 4)),
    Case("transpose", "OnnxTranspose", {"perm": (2, 0, 3, 1)}, [(2, 3, 4, 5)], lambda x: x.permute(2, 0, 3, 1)),
    Case("concat_axis1", "OnnxConcat", {"axis": 1}, [(2, 3, 4), (2, 1, 4), (2, 2, 4)],
         lambda *xs: torch.cat(xs, dim=1)),
    Case("gather_axis1", "OnnxGather", {"axis": 1}, [(3, 5, 2), lambda rng: np.array([[0, -1], [2, 0]])],
         _gather_t(1)),
    Case("slice_steps", "OnnxSlice", {"starts": (-1, 1), "ends": (-10, 100), "axes": (2, 0), "steps": (-2, 1)},
         [(3, 2, 5)], lambda x: x[1:].flip(2)[:, :, ::2]),
    Case("expand", "OnnxExpand", {"shape": (2, 1, 1, 3)}, [(4, 1)], lambda x: x.expand(2, 1, 4, 3)),
    Case("pad_constant_crop", "OnnxPad", {"pads": (1, 0, -1, 2, 0, 1, 1, 0), "mode": "constant", "value": 0.5},
         [(2, 3, 4, 3)], lambda x: F.pad(x, [2, 0, -1, 1, 0, 1, 1, 0], value=0.5)),
    Case("pad_reflect", "OnnxPad", {"pads": (0, 0, 2, 1, 0, 0, 1, 2), "mode": "reflect"}, [(2, 3, 4, 5)],
         lambda x: F.pad(x, [1, 2, 2, 1], mode="reflect")),
    Case("pad_edge", "OnnxPad", {"pads": (0, 0, 3, 0, 0, 0, 1, 2), "mode": "edge"}, [(2, 3, 4, 5)],
         lambda x: F.pad(x, [0, 2, 3, 1], mode="replicate")),
    Case("pad_wrap", "OnnxPad", {"pads": (0, 0, 1, 2, 0, 0, 2, 1), "mode": "wrap"}, [(2, 3, 4, 5)],
         lambda x: F.pad(x, [2, 1, 1, 2], mode="circular")),
    Case("conv2d_asym_pads", "OnnxConv", {"strides": (2, 1), "pads": (1, 0, 0, 2), "dilations": (1, 2), "group": 1},
         [(2, 3, 7, 6), (4, 3, 3, 2), (4,)], _conv_t(2, (2, 1), (1, 0, 0, 2), (1, 2), 1)),
    Case("conv2d_grouped_sym", "OnnxConv", {"strides": (1, 1), "pads": (1, 1, 1, 1), "dilations": (1, 1),
                                            "group": 2},
         [(2, 4, 5, 5), (6, 2, 3, 3)], _conv_t(2, (1, 1), (1, 1, 1, 1), (1, 1), 2)),
    Case("conv1d", "OnnxConv", {"strides": (2,), "pads": (2, 1), "dilations": (1,), "group": 1},
         [(2, 3, 9), (4, 3, 3), (4,)], _conv_t(1, (2,), (2, 1), (1,), 1)),
    Case("conv3d", "OnnxConv", {"strides": (1, 2, 1), "pads": (1, 0, 1, 0, 1, 1), "dilations": (1, 1, 2),
                                "group": 2},
         [(1, 4, 4, 5, 5), (2, 2, 2, 3, 2), (2,)], _conv_t(3, (1, 2, 1), (1, 0, 1, 0, 1, 1), (1, 1, 2), 2)),
    Case("conv_transpose2d", "OnnxConvTranspose",
         {"strides": (2, 3), "pads": (1, 0, 0, 2), "dilations": (1, 1), "group": 1, "output_padding": (1, 1)},
         [(2, 3, 3, 3), (3, 2, 3, 3), (2,)], _conv_transpose_t(2, (2, 3), (1, 0, 0, 2), (1, 1), 1, (1, 1))),
    Case("conv_transpose2d_group", "OnnxConvTranspose",
         {"strides": (1, 1), "pads": (0, 0, 0, 0), "dilations": (2, 1), "group": 2, "output_padding": (0, 0)},
         [(1, 4, 3, 4), (4, 1, 2, 2)], _conv_transpose_t(2, (1, 1), (0, 0, 0, 0), (2, 1), 2, (0, 0))),
    Case("conv_transpose1d", "OnnxConvTranspose",
         {"strides": (2,), "pads": (1, 1), "dilations": (1,), "group": 1, "output_padding": (1,)},
         [(2, 3, 5), (3, 2, 3)], _conv_transpose_t(1, (2,), (1, 1), (1,), 1, (1,))),
    Case("conv_transpose3d", "OnnxConvTranspose",
         {"strides": (2, 1, 1), "pads": (0, 1, 0, 1, 0, 0), "dilations": (1, 1, 2), "group": 1,
          "output_padding": (1, 0, 0)},
         [(1, 2, 2, 3, 3), (2, 2, 2, 2, 2), (2,)],
         _conv_transpose_t(3, (2, 1, 1), (0, 1, 0, 1, 0, 0), (1, 1, 2), 1, (1, 0, 0))),
    Case("max_pool2d_ceil", "OnnxMaxPool", {"kernel": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1),
                                            "dilations": (1, 1), "ceil_mode": True},
         [_spread((2, 2, 6, 7))], lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True)),
    Case("max_pool2d_asym_dilated", "OnnxMaxPool", {"kernel": (2, 3), "strides": (1, 2), "pads": (0, 1, 1, 0),
                                                    "dilations": (2, 1), "ceil_mode": False},
         [_spread((1, 2, 6, 7))], _max_pool_t(2, (2, 3), (1, 2), (0, 1, 1, 0), (2, 1), False)),
    Case("max_pool1d", "OnnxMaxPool", {"kernel": (3,), "strides": (2,), "pads": (1, 1), "dilations": (1,),
                                       "ceil_mode": False},
         [_spread((2, 3, 8))], lambda x: F.max_pool1d(x, 3, 2, 1)),
    Case("max_pool3d", "OnnxMaxPool", {"kernel": (2, 2, 2), "strides": (1, 2, 2), "pads": (0, 0, 0, 0, 0, 0),
                                       "dilations": (1, 1, 1), "ceil_mode": True},
         [_spread((1, 2, 3, 5, 5))], lambda x: F.max_pool3d(x, 2, (1, 2, 2), 0, ceil_mode=True)),
    Case("avg_pool2d_ceil_include_pad", "OnnxAveragePool",
         {"kernel": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1), "dilations": (1, 1), "ceil_mode": True,
          "count_include_pad": True},
         [(2, 2, 6, 7)], lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=True)),
    Case("avg_pool2d_exclude_pad", "OnnxAveragePool",
         {"kernel": (2, 3), "strides": (1, 2), "pads": (1, 1, 1, 1), "dilations": (1, 1), "ceil_mode": False,
          "count_include_pad": False},
         [(2, 2, 5, 6)], lambda x: F.avg_pool2d(x, (2, 3), (1, 2), 1, count_include_pad=False)),
    Case("avg_pool1d", "OnnxAveragePool",
         {"kernel": (3,), "strides": (2,), "pads": (1, 1), "dilations": (1,), "ceil_mode": True,
          "count_include_pad": False},
         [(2, 3, 8)], lambda x: F.avg_pool1d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)),
    Case("avg_pool3d", "OnnxAveragePool",
         {"kernel": (2, 2, 3), "strides": (1, 2, 2), "pads": (1, 0, 1, 1, 0, 1), "dilations": (1, 1, 1),
          "ceil_mode": False, "count_include_pad": True},
         [(1, 2, 3, 4, 5)], lambda x: F.avg_pool3d(x, (2, 2, 3), (1, 2, 2), (1, 0, 1), count_include_pad=True)),
    Case("avg_pool2d_dilated_asym", "OnnxAveragePool",   # torch has no dilated average pooling
         {"kernel": (2, 2), "strides": (1, 1), "pads": (0, 1, 1, 0), "dilations": (2, 1), "ceil_mode": False,
          "count_include_pad": False},
         [(1, 2, 5, 5)], None),
    Case("batchnorm_3d", "OnnxBatchNormalization", {"epsilon": 1e-3, "momentum": 0.9, "training_mode": False},
         [(2, 3, 4, 5, 2), (3,), (3,), (3,), _positive((3,))], lambda x, s, b, m, v: F.batch_norm(
             x, m, v, s, b, training=False, eps=1e-3), diff=[True, True, True, False, False]),
    Case("batchnorm_train_2d", "OnnxBatchNormalization", {"epsilon": 1e-5, "momentum": 0.9, "training_mode": True},
         [(4, 3), (3,), (3,), (3,), _positive((3,))], lambda x, s, b, m, v: F.batch_norm(
             x, m.clone(), v.clone(), s, b, training=True, eps=1e-5), diff=[True, True, True, False, False]),
    Case("resize_nearest_asymmetric", "OnnxResize",
         _resize_attrs((2, 2, 3, 4), (6, 8), "nearest", "asymmetric", "floor"), [(2, 2, 3, 4)],
         lambda x: F.interpolate(x, size=(6, 8), mode="nearest")),
    Case("resize_nearest_half_pixel_ceil", "OnnxResize",
         _resize_attrs((1, 2, 4, 5), (7, 3), "nearest", "half_pixel", "round_prefer_ceil"), [(1, 2, 4, 5)],
         lambda x: F.interpolate(x, size=(7, 3), mode="nearest-exact")),
    Case("resize_linear_half_pixel", "OnnxResize",
         _resize_attrs((2, 2, 3, 4), (7, 9), "linear", "half_pixel"), [(2, 2, 3, 4)],
         lambda x: F.interpolate(x, size=(7, 9), mode="bilinear", align_corners=False)),
    Case("resize_linear_align_corners", "OnnxResize",
         _resize_attrs((2, 2, 4, 5), (3, 8), "linear", "align_corners"), [(2, 2, 4, 5)],
         lambda x: F.interpolate(x, size=(3, 8), mode="bilinear", align_corners=True)),
    Case("resize_cubic_half_pixel", "OnnxResize",
         _resize_attrs((1, 2, 4, 5), (8, 10), "cubic", "half_pixel"), [(1, 2, 4, 5)],
         lambda x: F.interpolate(x, size=(8, 10), mode="bicubic", align_corners=False)),
    Case("resize_cubic_antialias_exclude", "OnnxResize",   # no torch equivalent: finite differences only
         _resize_attrs((1, 1, 8, 7), (3, 4), "cubic", "half_pixel", cubic_a=-0.5, exclude=True, antialias=True),
         [(1, 1, 8, 7)], None),
    Case("resize_tf_crop_extrapolate", "OnnxResize",
         _resize_attrs((1, 1, 5, 6), (4, 5), "linear", "tf_crop_and_resize", roi=[(0.2, 1.3), (-0.1, 0.7)],
                       extrapolation=2.0),
         [(1, 1, 5, 6)], None),
]


def _run(case, xs, dy=None):
    opdef = op_registry.get(case.op)
    ys, saved = opdef.forward(case.attrs, xs, {}, False)
    if dy is None:
        return ys[0], None
    needs = case.differentiated(xs)
    dxs, _ = opdef.backward(case.attrs, saved, [dy], needs, {})
    return ys[0], dxs


@pytest.mark.parametrize("case", [c for c in CASES if c.torch_fn is not None], ids=lambda c: c.id)
def test_against_torch(case):
    xs = case.arrays(np.float32)
    needs = case.differentiated(xs)
    y, _ = _run(case, xs)
    dy = np.random.default_rng(7).standard_normal(y.shape).astype(y.dtype)
    y, dxs = _run(case, xs, dy)
    txs = [torch.tensor(x, requires_grad=bool(n)) for x, n in zip(xs, needs)]
    ty = case.torch_fn(*txs)
    assert tuple(y.shape) == tuple(ty.shape)
    assert rel_err(y, ty.detach().numpy()) < 1e-5
    (ty * torch.tensor(dy)).sum().backward()
    for i, (dx, tx, n) in enumerate(zip(dxs, txs, needs)):
        if n:
            assert dx.shape == xs[i].shape, (i, dx.shape)
            assert rel_err(dx, tx.grad.numpy()) < 1e-5, f"input {i}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_finite_differences(case):
    xs = case.arrays(np.float64)
    needs = case.differentiated(xs)
    y, _ = _run(case, xs)
    dy = np.random.default_rng(7).standard_normal(y.shape)
    _, dxs = _run(case, xs, dy)
    eps = 1e-6
    for i, need in enumerate(needs):
        if not need:
            continue
        num = np.zeros(xs[i].shape)
        flat = xs[i].reshape(-1)
        for k in range(flat.size):
            keep = flat[k]
            flat[k] = keep + eps
            plus = float((np.asarray(_run(case, xs)[0], dtype=np.float64) * dy).sum())
            flat[k] = keep - eps
            minus = float((np.asarray(_run(case, xs)[0], dtype=np.float64) * dy).sum())
            flat[k] = keep
            num.reshape(-1)[k] = (plus - minus) / (2 * eps)
        assert rel_err(dxs[i], num) < 1e-6, f"input {i}: {rel_err(dxs[i], num)}"


def test_integer_division_truncates():
    a = np.array([7, -7, 7, -7, 6], dtype=np.int32)
    b = np.array([2, 2, -2, -2, 3], dtype=np.int32)
    np.testing.assert_array_equal(T.div_forward(a, b), [3, -3, -3, 3, 2])


def test_dropout_training_gradient_uses_the_mask():
    opdef = op_registry.get("OnnxDropout")
    x = np.random.default_rng(0).uniform(0.5, 1.5, (4, 50)).astype(np.float32)
    attrs = {"ratio": 0.3, "training_mode": True, "mask": True}
    (y, mask), saved = opdef.forward(attrs, [x], {}, False)
    np.testing.assert_allclose(y, x * mask / 0.7, rtol=1e-6)
    assert 0.5 < mask.mean() < 0.9
    dy = np.ones_like(x)
    (dx,), _ = opdef.backward(attrs, saved, [dy], [True], {})
    np.testing.assert_allclose(dx, mask / 0.7, rtol=1e-6)


# -- torch-exported networks ---------------------------------------------------------------------------
class _SmallNet(torch.nn.Module):
    """The layers torch-exported CNNs are made of, plus a channel split and a dynamic batch."""

    def __init__(self, batchnorm=True):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8) if batchnorm else torch.nn.Identity()
        self.c2 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=(1, 0), groups=2)
        self.up = torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.ct = torch.nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.fc = torch.nn.Linear(10, 5)

    def forward(self, x):
        y = F.leaky_relu(self.bn(self.c1(x)), 0.1)
        z = F.max_pool2d(y, 3, 2, 1, ceil_mode=True)
        z = self.c2(torch.cat([z, torch.sigmoid(z)], 1)[:, 4:12])
        u = F.avg_pool2d(self.ct(self.up(z)), 2, ceil_mode=True, count_include_pad=False)
        w = torch.tanh(F.adaptive_avg_pool2d(u, 1).flatten(1))
        w = torch.cat([w, w.amax(1, keepdim=True).expand(-1, 6)], 1)
        return F.log_softmax(self.fc(w), 1)


def _export(net, x):
    import io

    import onnx

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), buf, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}})
    return onnx.load_from_string(buf.getvalue())


def test_torch_exported_cnn():
    torch.manual_seed(0)
    net = _SmallNet().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    model = _export(net, torch.randn(1, 3, 13, 14))
    rep = n2d2.onnx_backend.prepare(model)
    for n in (2, 3):   # the dynamic batch gives one graph per input shape
        x = torch.randn(n, 3, 13, 14)
        (y,) = rep.run([x.numpy()])
        assert rel_err(y, net(x).detach().numpy()) < 1e-5
        assert all(rep.graph.op(name).startswith("Onnx") or rep.graph.op(name) == "Input"
                   for name in rep.graph.nodes())


def test_imported_graph_trains_like_torch():
    """Autodiff of the converted graph gives torch's weight gradients (initializers are parameters)."""
    from n2d2.codegen.numpy_exec import Session
    from n2d2.ir.autodiff import build_training_graph

    class Record:
        def update(self, array, grad, batch_size):
            self.grad = grad

    torch.manual_seed(1)
    net = _SmallNet(batchnorm=False).eval()
    x = torch.randn(2, 3, 13, 14)
    model = _export(net, x)
    rep = n2d2.onnx_backend.prepare(model)
    graph = rep.build({"x": x.numpy()})
    solvers = {}
    for name, param in graph.params.items():
        if param.trainable:
            param.solver = solvers[name] = Record()
    train = build_training_graph(graph)
    dy = np.random.default_rng(3).standard_normal(graph.output_types(graph.outputs[0][0])[0].shape).astype(np.float32)
    session = Session(train.graph, training=True)
    session.feed({"x": x.numpy(), train.grad_inputs[graph.outputs[0]]: dy})
    session.run_nodes(train.graph.topological_order())
    (net(x) * torch.tensor(dy)).sum().backward()
    torch_grads = dict(net.named_parameters())
    assert set(solvers) == set(torch_grads)
    for name, rec in solvers.items():
        assert rel_err(rec.grad, torch_grads[name].grad.numpy()) < 1e-5, name


def test_run_node_matches_onnxruntime():
    import onnx
    import onnx.helper as h
    import onnxruntime

    rng = np.random.default_rng(5)
    node = h.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 1], pads=[1, 0, 0, 1],
                       output_padding=[1, 0], group=2)
    feeds = {"x": rng.standard_normal((2, 4, 3, 5)).astype(np.float32),
             "w": rng.standard_normal((4, 3, 3, 2)).astype(np.float32),
             "b": rng.standard_normal(6).astype(np.float32)}
    (y,) = n2d2.onnx_backend.run_node(node, list(feeds.values()))
    graph = h.make_graph([node], "g", [h.make_tensor_value_info(k, onnx.TensorProto.FLOAT, v.shape)
                                       for k, v in feeds.items()], [h.make_empty_tensor_value_info("y")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    (ref,) = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, feeds)
    assert y.shape == ref.shape
    assert rel_err(y, ref) < 1e-5


def test_constant_expressions_of_ops_without_a_rule_are_folded_as_the_importer_folds(tmp_path):
    """A shape computation through ops `n2d2.onnx_backend` has no rule for (ReduceProd, Sqrt of a
    Constant node; a float initializer stays a trainable parameter) is evaluated by the
    importer's constant folding (`onnx_limits.evaluate_constant_node`); the same op on an
    activation is still refused. Against onnxruntime, and load_from_ONNX agrees."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    import n2d2
    from n2d2.cells.deepnet_cell import DeepNetCell
    from tests.test_onnx_import import make_model, provider_for, run_cell

    node = helper.make_node
    nodes = [node("Shape", ["x"], ["s"]), node("Slice", ["s", "one", "four"], ["chw"]),
             node("ReduceProd", ["chw"], ["f"], keepdims=1), node("Concat", ["neg", "f"], ["t"], axis=0),
             node("Reshape", ["x", "t"], ["r"]),
             node("Constant", [], ["k"], value=helper.make_tensor("k", TensorProto.FLOAT, [], [2.25])),
             node("Sqrt", ["k"], ["sk"]), node("Mul", ["r", "sk"], ["m"]),
             node("Gemm", ["m", "w"], ["y"], transB=1)]
    rng = np.random.default_rng(8)
    inits = {"one": np.array([1], np.int64), "four": np.array([4], np.int64), "neg": np.array([-1], np.int64),
             "w": rng.standard_normal((5, 60)).astype(np.float32)}
    model = make_model(nodes, inits, [3, 4, 5], 13)
    path = str(tmp_path / "fold.onnx")
    onnx.save(model, path)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert rel_err(n2d2.onnx_backend.prepare(model).run([x])[0], ref) < 1e-5
    dn = DeepNetCell.load_from_ONNX(provider_for((3, 4, 5), 2), path, generic_ops=False)
    assert rel_err(run_cell(dn, x).reshape(ref.shape), ref) < 1e-5
    on_activation = helper.make_model(helper.make_graph(
        [node("Sqrt", ["x"], ["y"])], "act", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])]), opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(NotImplementedError, match="'Sqrt'"):
        n2d2.onnx_backend.prepare(on_activation).run([x[0, 0, :2, :3]])


def test_ir_nodes_are_named_by_onnx_output_in_file_order():
    """The IR node of an ONNX node carries its first output's name ('9', ..., '18' in LeNet, the
    names the ONNX importer gives its cells), and the nodes follow the file's order."""
    from tests.conftest import SHARED_MODELS

    model = onnx.load(os.path.join(SHARED_MODELS, "LeNet.onnx"))
    graph = n2d2.onnx_backend.prepare(model).build({"input.1": np.ones((2, 1, 28, 28), np.float32)})
    ops = [n for n in graph.nodes() if graph.op(n) not in ("Input", "OnnxConstant")]
    assert ops == [o for n in model.graph.node for o in n.output] == [str(k) for k in range(9, 19)]
    assert [graph.op(n) for n in ops[:3]] == ["OnnxConv", "OnnxRelu", "OnnxConv"]
