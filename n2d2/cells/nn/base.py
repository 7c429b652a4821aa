"""`NeuralNetworkCell`: what every layer shares (calling, graph recording, modes, printing).

A call takes a Tensor or an Interface, joins the input's graph, runs the cell's reference
forward (numpy or CuPy by the cell's model), records the call for back-propagation and
returns a new output Tensor whose producer is the cell. Subclasses implement:

- `_forward(xs) -> (y, ctx)`: arrays in, array out, `ctx` what backward needs;
- `_backward(ctx, dy, needs) -> list of dx` (None where `needs[i]` is False), accumulating
  parameter gradients with `_accumulate_grad`;
- `_check_input(tensors)` for the frozen-geometry checks (called before each forward).
"""

import contextlib
import threading

import numpy as np

from n2d2 import backend
from n2d2.activation import ActivationFunction
from n2d2.configurable import Configurable, Spec
from n2d2.deepnet import CallRecord, eager_compile
from n2d2.error_handler import UndefinedModelError, WrongInputType, WrongValue
from n2d2.ir import ops as ir_ops
from n2d2.ir.types import TensorType
from n2d2.parameter_files import export_set, import_set
from n2d2.provider.base import Provider
from n2d2.settings import global_variables
from n2d2.solver import Solver
from n2d2.tensor import Interface, Tensor
from n2d2.utils import generate_name, thread_flag

ACTIVATION_SPEC = Spec(ActivationFunction, None, allow_none=True)


_DEFER = threading.local()


@contextlib.contextmanager
def deferred_values():
    """Cells called inside (in test mode, on the CPU, when the call is exactly their IR node)
    return outputs whose shape comes from the op's shape rule and whose value is computed only
    when read: an importer that only traces the graph skips a numpy forward of the whole network
    (seconds for VGG-11 at 224x224, times the batch size)."""
    with thread_flag(_DEFER, "on"):
        yield


class _DeferredValue:
    """The pending step of one deferred call: runs the op in test mode on first read."""

    __slots__ = ("record",)

    def __init__(self, record):
        self.record = record

    def materialise(self, tensor):
        record = self.record
        cell = record.cell
        xs = [t._data if t._data.dtype == np.float32 else t._data.astype(np.float32) for t in record.inputs]
        op, attrs, params = cell._ir_node()
        opdef = ir_ops.get(op)
        arrays = {role: array for role, (array, _) in params.items() if array is not None}
        ys, saved = opdef.forward(attrs, xs, arrays, training=False)
        record.ctx = (opdef, attrs, arrays, saved)
        tensor._pending = None
        tensor._host = ys[0]


class NeuralNetworkCell(Configurable):
    """Abstract base of all layers.

    Parameters common to every cell: `name`, `activation`, `model` ("Frame"/"Frame_CUDA"),
    `datatype` ("float").
    """

    _templated = True  # prints Frame<float> (False: plain Frame)
    _lazy_gradients = None  # the compiled step (n2d2.eager_compile) whose gradients are not read yet

    def __init__(self, arguments=None, name=None, model=None, datatype=None, **config):
        if type(self) is NeuralNetworkCell:
            raise TypeError("NeuralNetworkCell is abstract")
        if name is not None and not isinstance(name, str):
            raise WrongInputType("name", type(name), ["str"])
        model = model if model is not None else global_variables.default_model
        if model not in ("Frame", "Frame_CUDA"):
            raise UndefinedModelError(model)
        datatype = datatype if datatype is not None else global_variables.default_datatype
        if datatype != "float":
            raise WrongValue("datatype", datatype, ["float"])
        object.__setattr__(self, "_name", name if name is not None else generate_name(self))
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_datatype_name", datatype)
        self._inference = False
        self._deepnet = None
        self._inputs = []
        self._output = None
        self._diff_inputs = None
        self._diff_outputs = []
        self._input_cells = []
        self._param_grads = {}
        self._batch_size = 1
        super().__init__(arguments, **config)

    # -- identity -----------------------------------------------------------------------------
    @property
    def name(self):
        return self._name

    def get_name(self) -> str:
        return self._name

    def get_model(self) -> str:
        return self._model

    @property
    def _on_gpu(self) -> bool:
        return self._model == "Frame_CUDA"

    def _xp(self):
        return backend.require_cupy() if self._on_gpu else np

    def _to_model_device(self, array):
        return backend.to_device(array, self._on_gpu)

    # -- modes --------------------------------------------------------------------------------
    def learn(self):
        self._inference = False
        return self

    def test(self):
        self._inference = True
        return self

    def is_learning(self) -> bool:
        return not self._inference

    # -- calling ------------------------------------------------------------------------------
    def __call__(self, inputs):
        if isinstance(inputs, Tensor):
            tensors = [inputs]
        elif isinstance(inputs, Interface):
            tensors = inputs.get_tensors()
        else:
            raise WrongInputType("inputs", type(inputs), ["Tensor", "Interface"])
        deepnet = tensors[0].get_deepnet()
        for t in tensors[1:]:
            if t.get_deepnet() is not deepnet:
                raise ValueError(f"Cell '{self._name}': its inputs belong to different graphs")
        for t in tensors:
            shape = t.shape()   # not `_data`: that would compute a pending (compiled) output now
            if shape and shape[0] == 0:
                raise ValueError(f"Cell '{self._name}' ({self.get_type()}): input of shape {shape} has "
                                 "a batch of 0; expected at least 1")
        if getattr(_DEFER, "on", False) and self._inference and not self._on_gpu and self._compilable() \
                and self.activation_quantizer() is None:   # a deferred value is the op alone
            return self._deferred_call(tensors, deepnet)
        if global_variables.eager_compile:
            # a call that matches the compiled plan was checked when the plan was recorded
            pending = eager_compile().on_call(self, tensors, deepnet)
            if pending is not None:
                return pending
        self._check_input(tensors)
        xs = []
        for t in tensors:
            if t.is_cuda != self._on_gpu:
                t.cuda() if self._on_gpu else t.cpu()
            x = t._data
            if x.dtype != np.float32:
                x = x.astype(np.float32)
            xs.append(x)
        y, ctx = self._forward(xs)
        y, ctx = self._quantize_activation(y, ctx)
        out = Tensor._wrap(y, cell=self)

        needs = [t.cell is not None and not isinstance(t.cell, Provider) for t in tensors]
        deepnet.add(CallRecord(self, tensors, out, ctx, needs))
        self._deepnet = deepnet
        self._inputs = tensors
        self._output = out
        self._input_cells = [t.cell.get_name() for t in tensors if t.cell is not None]
        return out

    def _deferred_call(self, tensors, deepnet):
        """`__call__` under `deferred_values`: the output's shape from the op's shape rule, its
        value computed (test mode, as called) only if something reads it."""
        self._check_input(tensors)
        op, attrs, params = self._ir_node()
        opdef = ir_ops.get(op)

        in_types = [TensorType(tuple(t.shape()), "float32") for t in tensors]
        shapes = {role: tuple(a.shape) for role, (a, _) in params.items() if a is not None}
        (out_type,) = opdef.infer_types(attrs, in_types, shapes, self._name)[:1]
        record = CallRecord(self, tensors, None, None, [False] * len(tensors))
        out = Tensor._pending_output(out_type.shape, self, _DeferredValue(record))
        record.output = out

        record.needs_input_grad = [t.cell is not None and not isinstance(t.cell, Provider) for t in tensors]
        deepnet.add(record)
        self._deepnet = deepnet
        self._inputs = tensors
        self._output = out
        self._input_cells = [t.cell.get_name() for t in tensors if t.cell is not None]
        return out

    def _check_input(self, tensors):
        """Validate input geometry (subclasses freeze it at the first call)."""

    def _ir_node(self):
        """(op, attrs, params) describing this cell as an IR node of `n2d2.ir.ops`.

        `params` maps a role to `(array, solver)`; the solver is None for arrays that are not
        trained (e.g. BatchNorm moving statistics). The tracer and the eager path both use it.
        """
        raise NotImplementedError(f"{self.get_type()} has no IR description")

    def _ir_params(self):
        """(params of `_ir_node()`, its `weight_quantizer` attribute or None): what `DeepNetCell`
        re-reads from its cells at each training call. Cells whose IR attributes cost more to
        build than this pair override it with the same answer."""
        _, attrs, params = self._ir_node()
        return params, attrs.get("weight_quantizer")

    def _compilable(self) -> bool:
        """Whether this call is exactly its IR node (`_ir_node`), so that `n2d2.eager_compile` may
        run it compiled; cells whose `_forward` adds behaviour in some configuration say False.
        Quantized cells compile too: their IR is the node with its weight quantizer and the
        FakeQuantize node the trace adds after it, whose learned scalars the program's update
        phase steps with the quantizers' solvers (`eager_compile.step_key` keys them)."""
        return True

    # -- activation quantizer --------------------------------------------------------------------
    def activation_quantizer(self):
        """The quantizer of this cell's activation, or None."""
        act = self._config.get("activation")
        return act._config["quantizer"] if act is not None else None

    def _quantize_activation(self, y, ctx):
        """Fake-quantize the cell's output (IR op FakeQuantize, after the activation)."""
        q = self.activation_quantizer()
        if q is None:
            return y, ctx
        scalar, _ = q.learnable()
        attrs = {"quantizer": q.ir_spec()}
        if not self._inference:
            q._full_precision = y
        ys, saved = ir_ops.get("FakeQuantize").forward(attrs, [y], {"quant_param": scalar},
                                                       training=not self._inference)
        return ys[0], _ActivationQuantized(ctx, attrs, saved, scalar)

    def _update_activation_quantizer(self):
        grad = self._param_grads.get("activation_quantizer")
        q = self.activation_quantizer()
        if grad is not None and q is not None:
            scalar, solver = q.learnable()
            solver.update(scalar, _like(grad, scalar), self._batch_size)

    def _forward(self, xs):
        """Run the cell's op definition (`n2d2.ir.ops`) on the input arrays."""
        op, attrs, params = self._ir_node()
        opdef = ir_ops.get(op)
        arrays = {role: array for role, (array, _) in params.items() if array is not None}
        ys, saved = opdef.forward(attrs, xs, arrays, training=not self._inference)
        return ys[0], (opdef, attrs, arrays, saved)

    def _backward(self, ctx, dy, needs):
        opdef, attrs, arrays, saved = ctx
        if not self._config.get("back_propagate", True):
            needs = [False] * len(needs)
        dxs, grads = opdef.backward(attrs, saved, [dy], needs, arrays)
        for role, grad in grads.items():
            self._accumulate_grad(role, grad)
        return dxs

    def _backward_record(self, record, dy):
        self._lazy_gradients = None
        self._diff_inputs = dy
        self._batch_size = int(dy.shape[0]) if dy.ndim else 1
        ctx = record.ctx
        if isinstance(ctx, _ActivationQuantized):
            (dy,), grads = ir_ops.get("FakeQuantize").backward(ctx.attrs, ctx.saved, [dy], [True],
                                                               {"quant_param": ctx.scalar})
            self._accumulate_grad("activation_quantizer", grads["quant_param"])
            ctx = ctx.inner
        dxs = self._backward(ctx, dy, record.needs_input_grad)
        self._diff_outputs = dxs
        return dxs

    # -- parameter gradients and update ----------------------------------------------------------
    def _zero_param_grads(self):
        self._param_grads = {}

    def _accumulate_grad(self, name, grad):
        g = self._param_grads.get(name)
        self._param_grads[name] = grad if g is None else g + grad

    def update(self):
        """Apply this cell's solvers to its parameters (no-op for parameter-free cells)."""

    # -- graph accessors ----------------------------------------------------------------------
    def get_deepnet(self):
        return self._deepnet

    def get_inputs(self):
        return self._inputs[0] if len(self._inputs) == 1 else Interface(self._inputs) if self._inputs else None

    def get_outputs(self) -> Tensor:
        if self._output is None:
            return Tensor([0])
        return self._output

    def _as_n2d2_gradient(self, array):
        # N2D2 propagates (target - output): the negative of d(loss)/d(x).
        return Tensor._wrap(-array, cell=self)

    def get_diffinputs(self) -> Tensor:
        """Gradient received from the next cells (N2D2 sign convention)."""
        if self._lazy_gradients is not None:
            self._lazy_gradients.resolve_gradients()
        if self._diff_inputs is None:
            raise RuntimeError(f"Cell '{self._name}': no gradient yet (call back_propagate() first)")
        return self._as_n2d2_gradient(self._diff_inputs)

    def get_diffoutputs(self, index=0) -> Tensor:
        """Gradient sent to input `index` (N2D2 sign convention)."""
        if self._lazy_gradients is not None:
            self._lazy_gradients.resolve_gradients()
        if not self._diff_outputs or index >= len(self._diff_outputs) or self._diff_outputs[index] is None:
            raise RuntimeError(f"Cell '{self._name}': no gradient for input {index} "
                               "(back_propagate() not called, or that input does not need one)")
        return self._as_n2d2_gradient(self._diff_outputs[index])

    def dims(self):
        return self._output.dims() if self._output is not None else []

    def get_nb_outputs(self) -> int:
        return self._args.get("nb_outputs", self._output.dimZ() if self._output is not None else 0)

    def get_nb_channels(self) -> int:
        return self._args.get("nb_inputs", sum(t.dimZ() for t in self._inputs))

    def get_input_cells(self):
        return list(self._input_cells)

    def get_type(self) -> str:
        return self._type_name or type(self).__name__

    # -- activation attribute -------------------------------------------------------------------
    def get_activation(self):
        return self._config.get("activation")

    def set_activation(self, activation):
        self.set_parameter("activation", activation)

    # -- free parameters ------------------------------------------------------------------------
    def _parameter_files(self) -> dict:
        """suffix -> text of the parameter files this cell writes (empty: none)."""
        return {}

    def _parameter_shapes(self) -> dict:
        """suffix -> shape of the values `_parameter_files` writes (what an import expects)."""
        return {}

    def _set_parameter_values(self, values: dict):
        """Take {suffix: float32 array of `_parameter_shapes()[suffix]`} read back from files."""

    def _quantizer_scalars(self) -> dict:
        """suffix -> learned scalar (1-element array) of this cell's quantizers, upstream's file
        suffixes: `_QAct_SAT_Alpha`, `_QAct_LSQ_StepSize` (activation), `_alphaW_LSQ` (weights)."""
        out = {}
        q = self.activation_quantizer()
        if q is not None and q.learnable() is not None:
            out["_QAct_SAT_Alpha" if q._kind == "SAT" else "_QAct_LSQ_StepSize"] = q.learnable()[0]
        wq = self.get_quantizer() if hasattr(self, "get_quantizer") else None   # weighted cells
        if wq is not None and wq.learnable() is not None:
            out["_alphaW_LSQ"] = wq.learnable()[0]
        return out

    def _quantizer_files(self) -> dict:
        """suffix -> text of the quantizer scalars learned so far (an LSQ step not yet initialised,
        NaN, is not written)."""
        out = {}
        for suffix, scalar in self._quantizer_scalars().items():
            value = backend.to_host(scalar)
            if np.isfinite(value).all():
                out[suffix] = format_rows(value.reshape(1, 1))
        return out

    def _set_quantizer_values(self, values: dict):
        scalars = self._quantizer_scalars()
        for suffix, value in values.items():
            scalars[suffix][...] = _like(value.reshape(1), scalars[suffix])

    def export_free_parameters(self, dir_name: str, verbose=True):
        """Write this cell's parameters as N2D2 .syntxt files under `dir_name`."""
        export_set(dir_name, [self], verbose=verbose)

    def import_free_parameters(self, dir_name: str, ignore_not_exists=False):
        """Read this cell's parameters from N2D2 .syntxt files under `dir_name`."""
        import_set(dir_name, [self], ignore_not_exists=ignore_not_exists)

    # -- printing -----------------------------------------------------------------------------
    def _model_key(self) -> str:
        return f"{self._model}<{self._datatype_name}>" if self._templated else self._model

    def __str__(self):
        verbosity = global_variables.verbosity
        text = f"'{self._name}' {self.get_type()}({self._model_key()})" + self._params_str(verbosity)
        if self._input_cells:
            text += "(" + str(self._input_cells) + ")"
        return text

    __repr__ = __str__


def _like(array, reference):
    """`array` on the device of `reference` (a quantizer's scalar may live apart from the cell)."""
    return backend.to_device(backend.to_host(array), not isinstance(reference, np.ndarray))


class _ActivationQuantized:
    """Call context of a cell whose output went through its activation quantizer."""

    __slots__ = ("inner", "attrs", "saved", "scalar")

    def __init__(self, inner, attrs, saved, scalar):
        self.inner, self.attrs, self.saved, self.scalar = inner, attrs, saved, scalar


def format_rows(array2d) -> str:
    """One line per row, each value followed by a space (float32 round-trips exactly)."""
    rows = np.asarray(array2d).reshape(len(array2d), -1)
    line = "%.9g " * rows.shape[1] + "\n"    # one % per row, on Python floats (numpy scalars format slowly)
    return "".join(line % tuple(row) for row in rows.tolist())


class SolverPair:
    """Mixin of the cells with two solvers, the config keys `_solver_keys`: `set_solver`,
    `set_solver_parameter` and the write-only `solver` act on both."""

    _solver_keys = ()

    def set_solver(self, solver):
        """Independent copies of `solver`, one per key of `_solver_keys`."""
        if not isinstance(solver, Solver):
            raise WrongInputType("solver", type(solver), ["Solver"])
        for key in self._solver_keys:
            self._config[key] = solver.copy()

    @property
    def solver(self):
        raise AttributeError(f"'solver' is write-only: read {' or '.join(self._solver_keys)}")

    @solver.setter
    def solver(self, value):
        self.set_solver(value)

    def set_solver_parameter(self, key, value):
        for solver_key in self._solver_keys:
            self._config[solver_key].set_parameter(key, value)
