"""Weight initialisers (`n2d2.filler`).

A filler draws a parameter tensor from `n2d2.global_variables.rng`, so one seed gives the
same weights. Fan-in/out: Fc `C_in`/`C_out`; Conv `kW*kH*C_in` / `kW*kH*C_out`.
"""
import numpy as np

from n2d2.configurable import Configurable, Spec, check_value
from n2d2.settings import global_variables

_VARIANCE_NORMS = ("FanIn", "Average", "FanOut")


class Filler(Configurable):
    """Abstract base: `fill(shape, fan_in, fan_out, dtype)` returns a new numpy array."""

    def __init__(self, datatype=None, **args):
        if type(self) is Filler:
            raise TypeError("Filler is abstract")
        for key, value in args.items():
            # Fillers' parameters are constructor arguments (printed before any '|').

            check_value(key, value, self._argument_specs[key])
        arguments = {k: spec.default for k, spec in self._argument_specs.items()}
        arguments.update(args)
        super().__init__(arguments)

    _argument_specs: dict = {}

    def fill(self, shape, fan_in=1, fan_out=1, dtype=np.float32):
        return np.asarray(self._draw(tuple(shape), fan_in, fan_out), dtype=dtype)

    def _draw(self, shape, fan_in, fan_out):
        raise NotImplementedError

    def _n(self, fan_in, fan_out):
        norm = self._args["variance_norm"]
        if norm == "FanIn":
            return fan_in
        if norm == "FanOut":
            return fan_out
        return (fan_in + fan_out) / 2.0


class Normal(Filler):
    """N(mean, std_dev)."""

    _arguments = ("mean", "std_dev")
    _argument_specs = {"mean": Spec(float, 0.0), "std_dev": Spec(float, 1.0)}

    def _draw(self, shape, fan_in, fan_out):
        return global_variables.rng.normal(self._args["mean"], self._args["std_dev"], size=shape)


class Constant(Filler):
    """Every value equal to `value`."""

    _arguments = ("value",)
    _argument_specs = {"value": Spec(float, 0.0)}

    def _draw(self, shape, fan_in, fan_out):
        return np.full(shape, self._args["value"])


class Uniform(Filler):
    """U(min, max)."""

    _arguments = ("min", "max")
    _argument_specs = {"min": Spec(float, 0.0), "max": Spec(float, 1.0)}

    def _draw(self, shape, fan_in, fan_out):
        return global_variables.rng.uniform(self._args["min"], self._args["max"], size=shape)


class He(Filler):
    """scaling * N(mean_norm / n, sqrt(2 / n)), n from `variance_norm`."""

    _arguments = ("variance_norm", "mean_norm", "scaling")
    _argument_specs = {
        "variance_norm": Spec(str, "FanIn", choices=_VARIANCE_NORMS),
        "mean_norm": Spec(float, 0.0),
        "scaling": Spec(float, 1.0),
    }

    def _draw(self, shape, fan_in, fan_out):
        n = self._n(fan_in, fan_out)
        a = self._args
        return a["scaling"] * global_variables.rng.normal(a["mean_norm"] / n, np.sqrt(2.0 / n), size=shape)


class Xavier(Filler):
    """Uniform: scaling * U(-sqrt(3/n), sqrt(3/n)); Normal: scaling * N(0, sqrt(1/n))."""

    _arguments = ("variance_norm", "distribution", "scaling")
    _argument_specs = {
        "variance_norm": Spec(str, "FanIn", choices=_VARIANCE_NORMS),
        "distribution": Spec(str, "Uniform", choices=("Uniform", "Normal")),
        "scaling": Spec(float, 1.0),
    }

    def _draw(self, shape, fan_in, fan_out):
        n = self._n(fan_in, fan_out)
        a = self._args
        if a["distribution"] == "Uniform":
            bound = np.sqrt(3.0 / n)
            return a["scaling"] * global_variables.rng.uniform(-bound, bound, size=shape)
        return a["scaling"] * global_variables.rng.normal(0.0, np.sqrt(1.0 / n), size=shape)
