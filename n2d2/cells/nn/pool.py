"""Pooling cells: `Pool` (N2D2 PoolCell with a channel mapping), `Pool2d`, `GlobalPool2d`.

Sizes are `[X, Y]` = `[width, height]` as in N2D2. A `Pool` without mapping uses N2D2's
default, the full mapping: every output channel pools over all input channels together.
`Pool2d` pools each channel on its own (the usual pooling).
"""
from enum import Enum

from n2d2.backend import to_host
from n2d2.cells.nn.base import ACTIVATION_SPEC
from n2d2.cells.nn.lazy import LazyCell
from n2d2.configurable import Spec, format_value
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.ir.ops import activation_spec
from n2d2.ops import pool as ops
from n2d2.tensor import Tensor


class Pooling(str, Enum):
    """Pooling kind; prints as `Pooling.Max` and compares equal to its name."""

    Max = "Max"
    Average = "Average"

    def __str__(self):
        return f"Pooling.{self.name}"


def _dims(name, value, allow_empty=False):
    if not isinstance(value, list):
        raise WrongInputType(name, type(value), ["list"])
    for v in value:
        if not isinstance(v, int) or isinstance(v, bool):
            raise WrongInputType(f"{name} element", type(v), ["int"])
    if allow_empty and not value:
        return []
    if len(value) == 1:  # as N2D2: [k] -> [k, 1], padding [p] -> [p, 0]
        value = [value[0], 0 if name == "padding_dims" else 1]
    if len(value) != 2:
        raise WrongValue(name, value, ["[X, Y] (2-D pooling only)"])
    return list(value)


class Pool(LazyCell):
    """Max or average pooling over `pool_dims` = [X, Y] windows.

    Parameters
    ----------
    pool_dims : list
        Window size [X, Y].
    stride_dims : list, optional
        [X, Y], default [1, 1].
    padding_dims : list, optional
        Symmetric padding [X, Y], default [0, 0].
    pooling : str, optional
        "Max" (default) or "Average" (the window average counts padded positions).
    mapping : Tensor, optional
        Bool [C, C] (rows = input channels, columns = outputs); default all True (N2D2).
    """

    _arguments = ("pool_dims", "stride_dims", "padding_dims", "pooling")
    _parameters = {
        "activation": ACTIVATION_SPEC,
        "mapping": Spec(Tensor, None, allow_none=True),
    }

    def __init__(self, pool_dims, stride_dims=None, padding_dims=None, pooling="Max", mapping=None, **config):
        pool_dims = _dims("pool_dims", pool_dims, allow_empty=self._pool_dims_may_be_empty())
        stride_dims = _dims("stride_dims", stride_dims if stride_dims is not None else [1, 1])
        padding_dims = _dims("padding_dims", padding_dims if padding_dims is not None else [0, 0])
        if not isinstance(pooling, str):
            raise WrongInputType("pooling", type(pooling), ["str"])
        if pooling not in Pooling.__members__:
            raise WrongValue("pooling", pooling, list(Pooling.__members__))
        if any(s < 1 for s in stride_dims) or any(p < 1 for p in pool_dims):
            raise WrongValue("pool_dims/stride_dims", [pool_dims, stride_dims], ["positive sizes"])
        if any(p < 0 for p in padding_dims):
            raise WrongValue("padding_dims", padding_dims, ["non-negative sizes"])
        super().__init__({"pool_dims": pool_dims, "stride_dims": stride_dims, "padding_dims": padding_dims,
                          "pooling": Pooling[pooling]}, **config)
        if mapping is not None:
            self.set_parameter("mapping", mapping)

    @staticmethod
    def _pool_dims_may_be_empty():
        return False

    # -- mapping --------------------------------------------------------------------------------
    def _on_parameter_change(self, key, value):
        if key == "mapping" and value is not None:
            shape = value.shape()
            if len(shape) != 2 or shape[0] != shape[1]:
                raise ValueError(f"Cell '{self._name}': a Pool mapping must be a square [C, C] tensor, "
                                 f"got shape {shape}")
            if self.is_built() and shape[0] != self._input_geometry[0]:
                raise ValueError(f"Cell '{self._name}': mapping shape {shape} does not match the "
                                 f"{self._input_geometry[0]} input channels")

    def _config_str(self):
        # The mapping prints only when one was given (Pool2d's implicit identity does not).
        keys = [k for k in self._parameters if k != "mapping" or self._config["mapping"] is not None]
        return ", ".join(f"{k}={format_value(self._config[k])}" for k in keys)

    def _mapping_array(self, channels):
        """None for per-channel pooling, else the bool [C, C] array on the cell's device."""
        mapping = self._config["mapping"]
        if mapping is None:
            m = self._xp().ones((channels, channels), dtype=bool)
        else:
            m = self._to_model_device(mapping.to_numpy().astype(bool))
        return None if ops.is_identity_mapping(m) else m

    # -- geometry -------------------------------------------------------------------------------
    def _build(self, tensors, channels):
        mapping = self._config["mapping"]
        if mapping is not None and mapping.shape()[0] != channels:
            raise ValueError(f"Cell '{self._name}': mapping shape {mapping.shape()} does not match the "
                             f"{channels} input channels")
        kx, ky = self._args["pool_dims"]
        px, py = self._args["padding_dims"]
        h, w = tensors[0].dimY(), tensors[0].dimX()
        if h + 2 * py < ky or w + 2 * px < kx:
            raise ValueError(f"Cell '{self._name}': pool_dims {self._args['pool_dims']} (padding "
                             f"{self._args['padding_dims']}) larger than the input [X, Y] = [{w}, {h}]")

    def _geometry(self):
        """(pool, stride, pad) in numpy (H, W) order."""
        kx, ky = self._args["pool_dims"]
        sx, sy = self._args["stride_dims"]
        px, py = self._args["padding_dims"]
        return (ky, kx), (sy, sx), (py, px)

    # -- computation ----------------------------------------------------------------------------
    def _ir_node(self):
        pool, stride, pad = self._geometry()
        mapping = None
        if not self._per_channel():
            m = self._mapping_array(self._input_geometry[0])
            mapping = None if m is None else to_host(m)
        return "Pool", {"pooling": self._args["pooling"].value, "pool": pool, "stride": stride, "padding": pad,
                        "mapping": mapping, "activation": activation_spec(self._config["activation"])}, {}

    def _ir_params(self):
        return {}, None   # (`_ir_node` has no parameter nor weight quantizer)

    def _per_channel(self) -> bool:
        return False


class Pool2d(Pool):
    """Pooling of each channel on its own (identity mapping); a custom mapping is refused."""

    def __init__(self, pool_dims, **config):
        if "mapping" in config:
            raise RuntimeError("Pool2d does not support custom mappings")
        super().__init__(pool_dims, **config)

    def _on_parameter_change(self, key, value):
        if key == "mapping" and value is not None:
            raise RuntimeError(f"Cell '{self._name}': Pool2d does not support custom mappings")

    def _per_channel(self) -> bool:
        return True


class GlobalPool2d(Pool2d):
    """Pooling over the whole X x Y plane of each channel; pool_dims is [] until the first call."""

    def __init__(self, pooling="Max", **config):
        for key in ("pool_dims", "stride_dims", "padding_dims"):
            if key in config:
                raise RuntimeError(f"GlobalPool2d does not support custom {key}")
        super().__init__([], pooling=pooling, **config)

    @staticmethod
    def _pool_dims_may_be_empty():
        return True

    def _build(self, tensors, channels):
        self._args["pool_dims"] = [tensors[0].dimX(), tensors[0].dimY()]
