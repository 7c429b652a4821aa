"""Objects with N2D2-style parameters: constructor arguments, typed configuration, printing.

Cells, solvers, fillers and activations all declare their parameters once, in print order,
and get strict type checks (no int->float coercion, as upstream), read-only constructor
arguments, `get_parameter`/`set_parameter`, attribute access and the printed form of the
reference (section 5) from this base.
"""
from enum import Enum

from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.settings import Verbosity, global_variables
from n2d2.tensor import Tensor


class Spec:
    """Declaration of one parameter: accepted types, default, allowed values.

    `default` may be a zero-argument callable (a factory) so that each object gets its own
    instance (solvers, fillers, activations). `parse` validates a formatted value (raising
    WrongValue); like `choices`, it makes the parameter enum-like.
    """

    __slots__ = ("types", "default", "choices", "allow_none", "parse")

    def __init__(self, types, default=None, choices=None, allow_none=False, parse=None):
        self.types = types if isinstance(types, tuple) else (types,)
        self.default = default
        self.choices = choices
        self.allow_none = allow_none
        self.parse = parse

    def make_default(self):
        return self.default() if callable(self.default) else self.default


def check_value(name, value, spec: Spec):
    """Raise WrongInputType / WrongValue unless `value` fits `spec` (strictly: an int is not a float).

    Enum-like parameters (`choices` or `parse`) raise WrongValue for any value outside their set,
    a non-string included, as upstream (`He(variance_norm=1)`, `SGD(clamping=1)`).
    """
    if value is None and spec.allow_none:
        return value
    if spec.parse is not None:
        spec.parse(value)
        return value
    if spec.choices is not None and not (_matches(value, spec.types) and value in spec.choices):
        raise WrongValue(name, value, spec.choices)
    if not _matches(value, spec.types):
        raise WrongInputType(name, type(value), [t.__name__ for t in spec.types])
    return value


def check_choice(name, value, choices):
    """An enum-like argument: any value outside `choices` (a non-string too) is a WrongValue."""
    if not isinstance(value, str) or value not in choices:
        raise WrongValue(name, value, choices)
    return value


def _matches(value, types):
    for t in types:
        if t is float and isinstance(value, float):
            return True
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t not in (float, int) and isinstance(value, t):
            return True
    return False


def format_value(value) -> str:
    """A parameter value as N2D2 prints it (nested objects in their short form)."""
    if isinstance(value, Configurable):
        return value.nested_str()
    if isinstance(value, Enum):
        return f"{type(value).__name__}.{value.name}"
    if value is None:
        return "None"
    if isinstance(value, Tensor):
        return f"n2d2.Tensor(dims={value.dims()})"
    return str(value)


class Configurable:
    """Base of every object that has N2D2 parameters.

    Subclasses set:
    - `_arguments`: constructor argument names in print order (read-only once built);
    - `_parameters`: dict name -> Spec of configuration parameters, in print order;
    - `_type_name`: printed type name (defaults to the class name).
    """

    _arguments: tuple = ()
    _parameters: dict = {}
    _type_name = None

    def __init__(self, arguments: dict = None, **config):
        object.__setattr__(self, "_args", dict(arguments or {}))
        object.__setattr__(self, "_config", {})
        for key, spec in self._parameters.items():
            self._config[key] = spec.make_default()
        for key, value in config.items():
            self.set_parameter(key, value)

    # -- parameters ---------------------------------------------------------------------------
    def get_type(self) -> str:
        return self._type_name or type(self).__name__

    def get_parameter(self, key: str):
        if key in self._args:
            return self._args[key]
        if key in self._parameters:
            return self._config[key]
        raise ValueError(f"{self.get_type()}: unknown parameter '{key}' "
                         f"(known: {', '.join(list(self._args) + list(self._parameters))})")

    def set_parameter(self, key: str, value):
        if key in self._args or key in self._arguments:
            raise RuntimeError(f"{self.get_type()}: '{key}' is a constructor argument and cannot be changed")
        if key not in self._parameters:
            raise ValueError(f"{self.get_type()}: unknown parameter '{key}' "
                             f"(known: {', '.join(self._parameters)})")
        value = check_value(key, value, self._parameters[key])
        self._config[key] = value
        self._on_parameter_change(key, value)

    def _on_parameter_change(self, key, value):
        """Hook for subclasses that must react to a parameter change."""

    def __getattr__(self, name):
        # Only called when normal lookup fails: parameters read as attributes.
        d = self.__dict__
        if "_args" in d and name in d["_args"]:
            return d["_args"][name]
        if "_config" in d and name in d["_config"]:
            return d["_config"][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __setattr__(self, name, value):
        if name.startswith("_") or isinstance(getattr(type(self), name, None), property):
            object.__setattr__(self, name, value)
        elif name in self._arguments or name in self._parameters:
            self.set_parameter(name, value)
        else:
            object.__setattr__(self, name, value)

    # -- printing -----------------------------------------------------------------------------
    def _arguments_str(self) -> str:
        return ", ".join(f"{k}={format_value(self._args[k])}" for k in self._arguments if k in self._args)

    def _config_str(self) -> str:
        return ", ".join(f"{k}={format_value(self._config[k])}" for k in self._parameters)

    def _params_str(self, verbosity: Verbosity) -> str:
        if verbosity == Verbosity.graph_only:
            return ""
        args = self._arguments_str()
        if verbosity == Verbosity.short:
            return f"({args})" if args else ""
        config = self._config_str()
        if args and config:
            return f"({args} | {config})"
        if args or config:
            return f"({args or config})"
        return ""

    def nested_str(self) -> str:
        """The form used when this object is a parameter of another one."""
        return self.get_type() + (self._params_str(Verbosity.detailed) or "()")

    def __str__(self):
        return self.get_type() + self._params_str(global_variables.verbosity)

    __repr__ = __str__
