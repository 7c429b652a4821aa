"""`OnnxNode`: a cell running one `Onnx*` op (ONNX semantics) that no N2D2 cell represents.

The ONNX importer (`n2d2.frontends.onnx_import`) makes one for a node it cannot express with
N2D2 cells (a broadcasting Mul, HardSwish, LayerNormalization, a rank-5 Transpose...): the op
is the IR op `OnnxNode` (`n2d2.ir.tensor_ops`), which views each input in its ONNX shape, runs
the inner `Onnx*` op on its reference (numpy or CuPy; the C and CUDA backends run such a node
on that reference too) and returns its output in the carried N2D2 shape (ranks below 4 padded
with trailing 1s). Constant operands (weights, a LayerNorm scale) are parameters of the cell,
trained by its `solver` when they are float.
"""
import numpy as np

from n2d2.backend import to_host
from n2d2.cells.nn.base import NeuralNetworkCell, format_rows
from n2d2.configurable import Spec
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.ir import ops as ir_ops
from n2d2.ir.tensor_ops import PARAM_ROLES
from n2d2.solver import SGD, Solver
from n2d2.tensor import Interface, Tensor


class OnnxNode(NeuralNetworkCell):
    """One ONNX op on tensors held in the N2D2 convention.

    Parameters
    ----------
    op_type : str
        The ONNX op type (printed; e.g. "HardSwish").
    op : str
        The IR op of ONNX semantics (`n2d2.ir.tensor_ops`, e.g. "OnnxHardSwish").
    attrs : dict
        Its resolved attributes.
    slots : list
        Per inner input: `("x", k)` (this cell's input k) or `("p", role)` (the constant
        `constants[role]`).
    shapes : list of tuple
        Per input, its ONNX shape without the batch axis.
    constants : dict
        role (`in0`, `in1`...) -> array.
    batch_keys : tuple of str
        Attributes whose first element is the batch size (set from the running batch).
    """

    _templated = False
    _arguments = ("op_type",)
    _parameters = {"solver": Spec(Solver, SGD), "back_propagate": Spec(bool, True)}

    def __init__(self, op_type, op, attrs, slots, shapes, constants=None, batch_keys=(), **config):
        if not isinstance(op_type, str):
            raise WrongInputType("op_type", type(op_type), ["str"])
        if not isinstance(op, str) or not op.startswith("Onnx") or op == "OnnxNode":
            raise WrongValue("op", op, ["an Onnx* IR op of n2d2.ir.tensor_ops"])
        ir_ops.get(op)   # names an unknown op now, not at the first call
        constants = dict(constants or {})
        for role in constants:
            if role not in PARAM_ROLES:
                raise WrongValue("constants", role, list(PARAM_ROLES))
        typed = []
        for s in slots:
            if s[0] == "x":
                typed.append(("x", int(s[1])))
            elif s[0] == "p" and s[1] in constants:
                typed.append(("p", s[1], str(np.asarray(constants[s[1]]).dtype)))
            else:
                raise WrongValue("slots", s, ["('x', input index)", "('p', a role of constants)"])
        super().__init__({"op_type": op_type}, **config)
        self._op = op
        self._attrs = dict(attrs)
        self._slots = tuple(typed)
        self._shapes = tuple(tuple(int(d) for d in s) for s in shapes)
        self._batch_keys = tuple(batch_keys)
        self._constants = {r: self._to_model_device(np.array(a, order="C")) for r, a in constants.items()}

    def __call__(self, inputs):
        """`inputs`: a Tensor, an Interface, or a list of Tensors of any shapes (an ONNX op
        broadcasts: [N, C, 1, 1] by [N, C, H, W]), all in one graph."""
        if isinstance(inputs, (list, tuple)):
            for t in inputs:
                if not isinstance(t, Tensor):
                    raise WrongInputType("inputs", type(t), ["Tensor"])
            if len(inputs) == 1:
                inputs = inputs[0]
            else:
                if len({id(t.get_deepnet()) for t in inputs}) > 1:
                    raise ValueError(f"Cell '{self._name}': its inputs belong to different graphs")
                group = Interface.__new__(Interface)   # no X/Y check: the op broadcasts
                group._tensors = list(inputs)
                inputs = group
        return super().__call__(inputs)

    def _check_input(self, tensors):
        if len(tensors) != len(self._shapes):
            raise ValueError(f"Cell '{self._name}' (OnnxNode {self._args['op_type']}): {len(tensors)} inputs, "
                             f"expected {len(self._shapes)}")
        for k, (t, shape) in enumerate(zip(tensors, self._shapes)):
            dims = t.shape()
            if int(np.prod(dims[1:])) != int(np.prod(shape)):
                raise ValueError(f"Cell '{self._name}' (OnnxNode {self._args['op_type']}): input {k} of shape "
                                 f"{dims} cannot be viewed as [N] + {list(shape)}")

    def _ir_node(self):
        attrs = {"op": self._op, "attrs": self._attrs, "slots": self._slots, "shapes": self._shapes,
                 "batch_keys": self._batch_keys}
        solver = self._config["solver"]
        params = {r: (a, solver if np.issubdtype(np.dtype(a.dtype), np.floating) else None)
                  for r, a in self._constants.items()}
        return "OnnxNode", attrs, params

    def get_constants(self) -> dict:
        """role -> the constant operands (parameters) of this cell."""
        return dict(self._constants)

    # -- parameter files (`<cell>_<role>.syntxt`, float constants, one row per first-axis entry) --
    def _float_constants(self):
        return {r: a for r, a in self._constants.items() if np.issubdtype(np.dtype(a.dtype), np.floating)}

    def _parameter_files(self):
        return {f"_{r}": format_rows(to_host(a).reshape(a.shape[0] if a.ndim else 1, -1))
                for r, a in self._float_constants().items()}

    def _parameter_shapes(self):
        return {f"_{r}": tuple(a.shape) for r, a in self._float_constants().items()}

    def _set_parameter_values(self, values):
        for r, a in self._float_constants().items():
            if f"_{r}" in values:
                a[...] = self._to_model_device(values[f"_{r}"].reshape(a.shape))

    def update(self):
        for role, array in self._constants.items():
            grad = self._param_grads.get(role)
            if grad is not None:
                self._config["solver"].update(array, grad, self._batch_size)
