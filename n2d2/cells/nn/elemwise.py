"""`ElemWise`: element-wise combination of several same-shape inputs (N2D2 ElemWiseCell)."""
from n2d2.cells.nn.base import ACTIVATION_SPEC
from n2d2.cells.nn.lazy import LazyCell
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.ir.ops import activation_spec
from n2d2.ops import elemwise as ops

MODES = ("PerLayer", "PerInput", "PerChannel")


class ElemWise(LazyCell):
    """Sum, AbsSum, EuclideanSum, Prod or Max of the inputs of an Interface (or one Tensor).

    Coefficients (`weights`, `shifts`; empty = 1.0 and 0.0):
    - PerLayer: one value for every input (a list of one value; a list of one value per
      input is also accepted, as older N2D2 did);
    - PerInput: one value per input;
    - PerChannel: one value per channel of each input, inputs after one another
      (input k, channel c -> index k * C + c).
    """

    _templated = False
    _arguments = ("operation", "mode", "weights", "shifts")
    _parameters = {"activation": ACTIVATION_SPEC}

    def __init__(self, operation="Sum", mode="PerLayer", weights=None, shifts=None, **config):
        weights = [] if weights is None else weights
        shifts = [] if shifts is None else shifts
        for key, value, choices in (("operation", operation, ops.OPERATIONS), ("mode", mode, MODES)):
            if not isinstance(value, str):
                raise WrongInputType(key, type(value), ["str"])
            if value not in choices:
                raise WrongValue(key, value, choices)
        for key, value in (("weights", weights), ("shifts", shifts)):
            if not isinstance(value, list):
                raise WrongInputType(key, type(value), ["list of float"])
            for v in value:
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    raise WrongInputType(f"{key} element", type(v), ["float"])
        super().__init__({"operation": operation, "mode": mode, "weights": list(weights),
                          "shifts": list(shifts)}, **config)
        self._nb_inputs = None
        self._coefficients = None

    # -- geometry -------------------------------------------------------------------------------
    def _check_input(self, tensors):
        ref = tensors[0]
        for t in tensors:
            if t.nb_dims() != 4:
                raise ValueError(f"Cell '{self._name}' (ElemWise): input tensors must have 4 dims, got {t.shape()}")
            if t.shape() != ref.shape():
                raise ValueError(f"Cell '{self._name}' (ElemWise): every input must have the same shape, got "
                                 f"{[x.shape() for x in tensors]}")
        if self._nb_inputs is None:
            self._coefficients = self._resolve(len(tensors), ref.dimZ())
            self._nb_inputs = len(tensors)
            self._input_geometry = (ref.dimZ(), ref.dimY(), ref.dimX())
            return
        if len(tensors) != self._nb_inputs:
            raise RuntimeError(f"Cell '{self._name}' (ElemWise): called with {len(tensors)} inputs, the first "
                               f"call had {self._nb_inputs}")
        if (ref.dimZ(), ref.dimY(), ref.dimX()) != self._input_geometry:
            raise RuntimeError(f"Cell '{self._name}' (ElemWise): Unmatching dims: input shape {ref.shape()}, the "
                               f"first call had [C, H, W] = {list(self._input_geometry)}")

    def _resolve(self, k, c):
        """Per-input coefficients (scalars, or [C] lists in PerChannel mode) for weights and shifts."""
        mode = self._args["mode"]
        out = []
        for key, default in (("weights", 1.0), ("shifts", 0.0)):
            values = [float(v) for v in self._args[key]]
            if mode == "PerChannel":
                if not values:
                    values = [default] * (k * c)
                if len(values) != k * c:
                    raise ValueError(f"Cell '{self._name}' (ElemWise): PerChannel {key} needs {k} inputs x {c} "
                                     f"channels = {k * c} values, got {len(values)}")
                out.append([values[i * c:(i + 1) * c] for i in range(k)])
                continue
            if not values:
                values = [default] * k
            if len(values) == 1 and (mode == "PerLayer" or k == 1):
                values = values * k
            if len(values) != k:
                expected = "1 value" if mode == "PerLayer" else f"{k} values (one per input)"
                raise ValueError(f"Cell '{self._name}' (ElemWise): {mode} {key} needs {expected}, got {len(values)}")
            out.append(values)
        return tuple(out)

    # -- computation ----------------------------------------------------------------------------
    def _ir_node(self):
        weights, shifts = self._coefficients
        return "ElemWise", {"operation": self._args["operation"], "weights": weights, "shifts": shifts,
                            "activation": activation_spec(self._config["activation"])}, {}
