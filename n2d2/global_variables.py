"""`import n2d2.global_variables` (upstream has a module of that name).

`n2d2.global_variables` is the settings object of `n2d2.settings`; this module lets scripts
import it by its module path. Reads and writes of attributes on the module object itself
(`importlib.import_module("n2d2.global_variables").seed = 3`) go to that same object, setters
included, through the module's class below: a module-level `__setattr__` would never be called.
"""
import sys
import types

from n2d2.settings import GlobalVariables, Verbosity
from n2d2.settings import global_variables as _settings

_OWN = frozenset(("GlobalVariables", "Verbosity"))


class _SettingsModule(types.ModuleType):
    """A module whose public attributes are those of the one `GlobalVariables` instance."""

    def __getattr__(self, name):
        return getattr(_settings, name)

    def __setattr__(self, name, value):
        if name.startswith("__") or name in _OWN:
            super().__setattr__(name, value)
        else:
            setattr(_settings, name, value)

    def __dir__(self):
        return sorted(set(super().__dir__()) | {n for n in dir(_settings) if not n.startswith("_")})

    def __str__(self):
        return str(_settings)


__all__ = ["GlobalVariables", "Verbosity"]
sys.modules[__name__].__class__ = _SettingsModule
