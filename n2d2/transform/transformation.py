"""`Transformation`: the base of every data transformation, and `Composite`.

A transformation maps images to images. Images are numpy arrays in channels-first order:
one stimulus is (C, H, W) (a 2-D (H, W) array is one channel), a batch is (N, C, H, W).
Integer images (uint8) stay integer through geometric transformations (rounded and saturated,
as OpenCV does in N2D2) so that the provider can scale 8-bit data to [0, 1] at the end.

Each transformation is applied to the partitions its `apply_to` selects; random ones draw from
the generator they are given (the provider seeds one per read from `global_variables.rng`).

Pixel-wise label maps (segmentation) go with their image through `apply_batch_with_labels`:
a transformation that moves pixels (`_forward_pair`) moves the labels with the same random
draw, by nearest neighbour, with label -1 where it pads; intensity transformations leave them.

Plain-data form (what an IR `Transformation` node stores): `t.ir_spec()` is (type name,
{parameter: value}), JSON-serialisable (constructor arguments, configuration, `apply_to`;
a Composite's members as their own specs); `from_ir_spec(spec)` builds the transformation back.
"""
import numbers

import numpy as np

from n2d2.configurable import Configurable, Spec
from n2d2.deepnet import PARTITIONS
from n2d2.error_handler import IsEmptyError, WrongInputType, WrongValue
from n2d2.settings import global_variables

APPLY_TO = {
    "LearnOnly": ("Learn",),
    "ValidationOnly": ("Validation",),
    "TestOnly": ("Test",),
    "NoLearn": ("Validation", "Test", "Unpartitioned"),
    "NoValidation": ("Learn", "Test", "Unpartitioned"),
    "NoTest": ("Learn", "Validation", "Unpartitioned"),
    "All": PARTITIONS,
}


def as_batch(stimulus: np.ndarray):
    """(C, H, W) or (H, W) array -> (1, C, H, W) batch and the function that undoes it."""
    a = np.asarray(stimulus)
    if a.ndim == 2:
        return a[None, None], lambda y: y[0, 0] if y.shape[1] == 1 else y[0]
    if a.ndim == 3:
        return a[None], lambda y: y[0]
    raise ValueError(f"A stimulus must be a (C, H, W) or (H, W) array, got shape {a.shape}")


class Transformation(Configurable):
    """Abstract base of the data transformations.

    Parameters
    ----------
    apply_to : str
        Partitions the transformation is applied to: ``LearnOnly``, ``ValidationOnly``,
        ``TestOnly``, ``NoLearn``, ``NoValidation``, ``NoTest`` or ``All`` (default).
    """

    _random = False  # True when the result depends on random draws
    _registry = {}   # ir_spec type name -> class (every subclass, see __init_subclass__)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Transformation._registry[cls.ir_type_name()] = cls

    @classmethod
    def ir_type_name(cls) -> str:
        """The type name of `ir_spec`: the class name for n2d2's transformations, the module and
        qualified name for others (a user's subclass)."""
        if cls.__module__.startswith("n2d2.transform."):
            return cls.__name__
        return f"{cls.__module__}.{cls.__qualname__}"

    def __init__(self, arguments: dict = None, apply_to: str = "All", **config):
        if type(self) is Transformation:
            raise TypeError("Transformation is abstract: use one of n2d2.transform's transformations")
        if not isinstance(apply_to, str):
            raise WrongInputType("apply_to", type(apply_to), ["str"])
        if apply_to not in APPLY_TO:
            raise WrongValue("apply_to", apply_to, list(APPLY_TO))
        object.__setattr__(self, "_apply_to", apply_to)
        super().__init__(arguments, **config)

    # -- parameters: numbers are accepted for float parameters, as the engine parses them -------
    def set_parameter(self, key: str, value):
        spec = self._parameters.get(key)
        if spec is not None:
            value = _coerce(value, spec)
        super().set_parameter(key, value)

    def get_apply_set(self) -> str:
        """The `apply_to` mask, e.g. ``"All"``."""
        return self._apply_to

    def applies_to(self, partition: str) -> bool:
        return partition in APPLY_TO[self._apply_to]

    def is_random(self) -> bool:
        return bool(self._random)

    # -- plain-data form --------------------------------------------------------------------------
    def ir_params(self) -> dict:
        """{name: plain value}: the constructor arguments, the configuration and `apply_to`."""
        params = {}
        for key, value in list(self._args.items()) + list(self._config.items()):
            params[key] = _plain(value, f"{self.get_type()} parameter '{key}'")
        params["apply_to"] = self._apply_to
        return params

    @classmethod
    def from_ir_params(cls, params: dict):
        """The transformation of `ir_params()`: the constructor called with them (a subclass whose
        constructor takes other arguments overrides this)."""
        return cls(**params)

    def ir_spec(self) -> tuple:
        """The plain-data form (type name, {parameter: value}), JSON-serialisable; `from_ir_spec`
        builds the transformation back."""
        return (type(self).ir_type_name(), self.ir_params())

    # -- application ----------------------------------------------------------------------------
    def apply(self, stimulus: np.ndarray, rng: np.random.Generator = None) -> np.ndarray:
        """Transform one (C, H, W) or (H, W) image; returns a new array in the same layout."""
        batch, unbatch = as_batch(stimulus)
        return unbatch(self.apply_batch(batch, rng))

    def apply_batch(self, batch: np.ndarray, rng: np.random.Generator = None) -> np.ndarray:
        """Transform a (N, C, H, W) batch of same-sized images, vectorised over the batch."""
        batch = np.asarray(batch)
        if batch.ndim != 4:
            raise ValueError(f"{self.get_type()}: a batch must be (N, C, H, W), got shape {batch.shape}")
        return self._forward(batch, rng if rng is not None else global_variables.rng)

    def apply_batch_with_labels(self, batch: np.ndarray, labels: np.ndarray, rng: np.random.Generator = None):
        """Transform a (N, C, H, W) batch and its (N, H, W) integer label maps together.

        Returns (batch, labels): the labels follow every pixel move of the images (same random
        draw, nearest neighbour, -1 where padded); intensity changes leave them as they are.
        """
        batch = np.asarray(batch)
        labels = np.asarray(labels)
        if batch.ndim != 4:
            raise ValueError(f"{self.get_type()}: a batch must be (N, C, H, W), got shape {batch.shape}")
        if labels.shape != (batch.shape[0],) + batch.shape[2:] or labels.dtype.kind not in "iu":
            raise ValueError(f"{self.get_type()}: label maps must be integers of shape (N, H, W) = "
                             f"{[batch.shape[0], batch.shape[2], batch.shape[3]]}, got {labels.dtype} "
                             f"of shape {list(labels.shape)}")
        x, lab = self._forward_pair(batch, labels[:, None], rng if rng is not None else global_variables.rng)
        return x, lab[:, 0]

    def _forward(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Images only; transformations that move pixels implement `_forward_pair` instead."""
        if type(self)._forward_pair is Transformation._forward_pair:
            raise NotImplementedError(f"{self.get_type()} implements neither _forward nor _forward_pair")
        return self._forward_pair(x, None, rng)[0]

    def _forward_pair(self, x: np.ndarray, labels, rng: np.random.Generator):
        """(images, labels (N, 1, H, W) or None): this default is an intensity transformation,
        which leaves the labels unchanged."""
        return self._forward(x, rng), labels

    # -- printing ---------------------------------------------------------------------------------
    def __str__(self):
        output = super().__str__()
        if self._apply_to != "All":
            output += f"[apply_to=StimuliSetMask.{self._apply_to}]"
        return output

    __repr__ = __str__


def _plain(value, where):
    """`value` as plain data (None, bool, int, float, str; lists and str-keyed dicts of them)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, where) for k, v in value.items()}
    raise TypeError(f"{where}: {type(value).__name__} {value!r} is not plain data (numbers, strings, lists): "
                    "the transformation cannot be stored in a graph")


def from_ir_spec(spec):
    """The transformation of a plain-data spec (`Transformation.ir_spec()`): (type name, params)."""
    if not isinstance(spec, (tuple, list)) or len(spec) != 2 or not isinstance(spec[0], str) \
            or not isinstance(spec[1], dict):
        raise ValueError(f"a transformation spec is (type name, {{parameter: value}}), got {spec!r}")
    name, params = spec
    cls = Transformation._registry.get(name)
    if cls is None:
        raise ValueError(f"unknown transformation type '{name}' (known: {', '.join(sorted(Transformation._registry))})")
    try:
        return cls.from_ir_params(dict(params))
    except TypeError as e:
        raise TypeError(f"transformation '{name}' cannot be built from {params!r}: {e} (a subclass whose "
                        "constructor takes other arguments overrides from_ir_params)") from None


def _coerce(value, spec: Spec):
    """int -> float for float parameters, and lists of numbers -> lists of floats."""
    if float in spec.types and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if list in spec.types and isinstance(value, (list, tuple)):
        out = []
        for v in value:
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise WrongInputType("value", type(v), ["float"])
            out.append(float(v))
        return out
    return value


def check_size_argument(name: str, value, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise WrongInputType(name, type(value), ["int"])
    value = int(value)
    if value < 0 or (value == 0 and not allow_zero):
        raise WrongValue(name, value, ["a positive int"])
    return value


class Composite(Transformation):
    """A sequence of transformations applied in order (a provider expands it into its members)."""

    def __init__(self, transformations: list, **config):
        if not isinstance(transformations, list):
            raise WrongInputType("transformations", type(transformations), ["list"])
        if not transformations:
            raise IsEmptyError("transformations")
        for t in transformations:
            if not isinstance(t, Transformation):
                raise WrongInputType("transformations", type(t), ["n2d2.transform.Transformation"])
        super().__init__(None, **config)
        object.__setattr__(self, "_transformations", list(transformations))

    def get_transformations(self) -> list:
        return self._transformations

    def append(self, transformation: Transformation):
        if not isinstance(transformation, Transformation):
            raise WrongInputType("transformation", type(transformation), ["n2d2.transform.Transformation"])
        self._transformations.append(transformation)

    def is_random(self) -> bool:
        return any(t.is_random() for t in self._transformations)

    def ir_params(self) -> dict:
        return dict(super().ir_params(), transformations=[list(t.ir_spec()) for t in self._transformations])

    @classmethod
    def from_ir_params(cls, params):
        params = dict(params)
        members = params.pop("transformations", None)
        if not isinstance(members, list):
            raise ValueError(f"a Composite spec lists its members under 'transformations', got {members!r}")
        return cls([from_ir_spec(m) for m in members], **params)

    def _forward(self, x, rng):
        for t in self._transformations:
            x = t._forward(x, rng)
        return x

    def _forward_pair(self, x, labels, rng):
        for t in self._transformations:
            x, labels = t._forward_pair(x, labels, rng)
        return x, labels

    def __str__(self):
        output = Transformation.__str__(self) + "(\n"
        for t in self._transformations:
            output += "\t" + str(t) + "\n"
        return output + ")"

    __repr__ = __str__
