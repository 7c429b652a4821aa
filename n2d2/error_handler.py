"""Exceptions raised by n2d2, with the names and bases of N2D2's Python package.

Scripts written for N2D2 catch these by name, so the hierarchy is kept exactly.
"""
import functools
import warnings


class WrongInputType(TypeError):
    """An argument has the wrong Python type.

    Parameters
    ----------
    input_name : str
        Name of the argument.
    input_type : type or str
        Type that was given.
    expected_types : list of str
        Type names that would have been accepted.
    """

    def __init__(self, input_name, input_type, expected_types):
        if isinstance(input_type, type):
            input_type = input_type.__name__
        expected = ", ".join(str(t.__name__ if isinstance(t, type) else t) for t in expected_types)
        super().__init__(f"Wrong type for '{input_name}': got {input_type}, expected {expected}")


class WrongValue(ValueError):
    """An argument's value is outside the allowed set (for enum-like parameters, whatever its type).

    `expected`, when given, replaces the "one of: ..." list with words (a format, a range).
    """

    def __init__(self, input_name, input_value, expected_values, expected=None):
        if expected is None:
            expected = "one of: " + ", ".join(str(v) for v in expected_values)
        got = f"'{input_value}'" if isinstance(input_value, str) else f"{input_value!r} ({type(input_value).__name__})"
        super().__init__(f"Wrong value for '{input_name}': got {got}, expected {expected}")


class IsEmptyError(ValueError):
    """A container or list that must not be empty is empty."""

    def __init__(self, name="value"):
        super().__init__(f"'{name}' is empty")


class NotInitialized(RuntimeError):
    """An object is used before what it needs was set up."""


class ImplementationError(RuntimeError):
    """Something that should be impossible happened inside n2d2 (a bug)."""


class UndefinedModelError(RuntimeError):
    """A model key other than "Frame" / "Frame_CUDA" was requested."""

    def __init__(self, model):
        super().__init__(f"Undefined model '{model}': expected 'Frame' or 'Frame_CUDA'")


class ModelFileError(ValueError):
    """A model file (ONNX, ...) is malformed or exceeds a parser limit; the message names the file
    and what was expected. Model files may come from strangers: sizes are checked before allocation."""


class ParameterFileError(ModelFileError):
    """A parameter file (.syntxt) or parameter set is malformed, the wrong size, or torn (its
    files come from different exports); the message names the file, line and what was expected."""


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or an infinity; `cell` names the first cell (in execution order)
    whose output is not finite, or "input" when the stimuli themselves are not."""

    def __init__(self, message, cell=None):
        super().__init__(message)
        self.cell = cell


class DataFileError(ValueError):
    """A data file (IDX, CIFAR batch, label list) is malformed, truncated, too large or a
    decompression bomb; the message names the file and what was expected."""


class IniError(ModelFileError):
    """A malformed or unsupported N2D2 INI file (`n2d2.frontends.ini`), or one that passes the
    parser's bounds; the message names the file, section and line.

    Attributes
    ----------
    file, section, line : where the problem is (any may be None);
    expected : what would have been accepted (None when not applicable).
    """

    def __init__(self, message: str, file: str = None, section: str = None, line: int = None, expected: str = None):
        self.file = file
        self.section = section
        self.line = line
        self.expected = expected
        self.reason = message
        where = file or "<ini>"
        if line is not None:
            where += f":{line}"
        text = f"{where}: "
        if section is not None:
            text += f"[{section}] " if section else "(global section) "
        text += message
        if expected:
            text += f"; expected {expected}"
        super().__init__(text)


class IniWarning(UserWarning):
    """Something N2D2 accepts or ignores that may not be what the author meant."""


def deprecated(reason=""):
    """Mark a function as deprecated: it still works and warns once per call."""

    def decorator(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            warnings.warn(f"{func.__name__} is deprecated. {reason}", DeprecationWarning, stacklevel=2)
            return func(*args, **kwargs)

        return wrapper

    return decorator
