"""`n2d2.Tensor`: an N-d array with N2D2's two dimension orders, a device, and a producer.

Storage is a numpy array (CPU) or, for CUDA tensors, a CuPy array plus a host mirror that
`htod()` / `dtoh()` synchronise explicitly, as upstream. Numpy order (N, C, H, W) is used by
the constructor, `shape()`, indexing and numpy interop; N2D2 order (X, Y, Z, B) by `dims()`.
"""
import numbers

import numpy as np

from n2d2 import backend
from n2d2.deepnet import Provider
from n2d2.error_handler import WrongInputType, WrongValue

# datatype name -> numpy dtype; aliases resolve to the long name.
_DTYPES = {
    "float": np.float32, "double": np.float64, "int": np.int32, "uint": np.uint32,
    "short": np.int16, "long": np.int64, "bool": np.bool_, "char": np.int8, "uchar": np.uint8,
}
_ALIASES = {"f": "float", "d": "double", "i": "int", "j": "uint", "s": "short", "l": "long", "b": "bool"}
_FROM_NUMPY = {
    np.dtype(np.int8): "char", np.dtype(np.uint8): "uchar", np.dtype(np.int16): "short",
    np.dtype(np.int32): "int", np.dtype(np.uint32): "uint", np.dtype(np.float32): "float",
    np.dtype(np.float64): "double", np.dtype(np.bool_): "bool",
}
_PY_TYPE = {"float": float, "double": float, "bool": bool}


def _canonical_datatype(datatype: str) -> str:
    if not isinstance(datatype, str):
        raise TypeError(f"datatype must be a str, got {type(datatype).__name__}")
    name = _ALIASES.get(datatype, datatype)
    if name not in _DTYPES:
        raise TypeError(f"Unknown datatype '{datatype}': expected one of {', '.join(list(_DTYPES) + list(_ALIASES))}")
    return name


def _format_scalar(v) -> str:
    """A value as C++'s default stream prints it (6 significant digits)."""
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (numbers.Integral, np.integer)):
        return str(int(v))
    return "%g" % float(v)


def _render_2d(a) -> str:
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim == 1:
        a = a.reshape(1, -1)
    return "".join("".join(_format_scalar(v) + " " for v in row) + "\n" for row in a)


def _render(a) -> str:
    if a.ndim <= 2:
        return _render_2d(a)
    if a.ndim == 3:
        return "".join(f"[{z}]:\n" + _render_2d(a[z]) for z in range(a.shape[0]))
    return "".join(f"[{i}]" + _render(a[i]) for i in range(a.shape[0]))


class Tensor:
    """N-d array in N2D2's API.

    Parameters
    ----------
    dims : list or tuple
        Dimensions, in numpy order unless `dim_format="N2D2"`.
    value : optional
        Fill value, of the Python type of `datatype` (`1.0` for float, `1` for int).
    cuda : bool
        Allocate on the GPU; without CuPy and a device, a warning and a host tensor (as
        upstream scripts that hard-code it expect to run anywhere).
    datatype : str
        "float", "double", "int", "uint", "short", "long", "bool", "char", "uchar" (or aliases).
    cell : optional
        The producer of this tensor in a graph.
    dim_format : str
        "Numpy" (default) or "N2D2".
    """

    def __init__(self, dims, value=None, cuda=False, datatype="float", cell=None, dim_format="Numpy"):
        if not isinstance(dims, (list, tuple)):
            raise TypeError(f"Tensor dims must be a list or a tuple, got {type(dims).__name__}")
        if not isinstance(cuda, bool):
            raise WrongInputType("cuda", type(cuda), ["bool"])
        if dim_format not in ("Numpy", "N2D2"):
            raise WrongValue("dim_format", dim_format, ["Numpy", "N2D2"])
        datatype_name = _canonical_datatype(datatype)
        shape = [int(d) for d in dims]
        if dim_format == "N2D2":
            shape = shape[::-1]
        if value:  # upstream type-checks truthy values only: a falsy one means "zero-filled"
            expected = _PY_TYPE.get(datatype_name, int)
            ok = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
            if not ok:
                raise TypeError(f"Tensor value {value!r} is a {type(value).__name__}, "
                                f"expected {expected.__name__} for datatype '{datatype}'")
        if cuda and not backend.cuda_available():
            backend.warn_cpu_fallback("Tensor(..., cuda=True)")
            cuda = False
        if cuda:
            if datatype_name in ("bool", "char", "uchar"):
                raise TypeError(f"CUDA tensors do not support datatype '{datatype}'")
        host = np.zeros(shape, dtype=_DTYPES[datatype_name])
        if value:
            host.fill(value)
        self._datatype = datatype
        self._host = host
        self._device = backend.to_device(host, True) if cuda else None
        self.cell = cell
        self._leaf = False

    # -- construction helpers used inside n2d2 ----------------------------------------------------
    @classmethod
    def _wrap(cls, array, cell=None, datatype=None):
        """A tensor over `array` without a copy (numpy: host storage; cupy: device storage)."""
        t = cls.__new__(cls)
        t.cell = cell
        t._leaf = False
        t._datatype = datatype or _FROM_NUMPY.get(np.dtype(array.dtype), "float")
        if isinstance(array, np.ndarray):
            t._host, t._device = array, None
        else:
            t._device = array
            t._host = None  # filled lazily by dtoh()
        return t

    # -- lazy values (n2d2.eager_compile): a pending tensor gets its array when first read -------
    _pending = None
    _pending_shape = None
    _h = None

    @classmethod
    def _pending_output(cls, shape, cell, step):
        """A float tensor of `shape` whose value `step.materialise(tensor)` computes on first read."""
        t = cls.__new__(cls)
        t.cell = cell
        t._leaf = False
        t._datatype = "float"
        t._device = None
        t._pending = step
        t._pending_shape = tuple(shape)
        return t

    @property
    def _host(self):
        h = self._h
        if h is None and self._pending is not None:
            self._pending.materialise(self)
            h = self._h
        return h

    @_host.setter
    def _host(self, value):
        self._h = value

    def __getstate__(self):
        """Copies and pickles carry values: a pending tensor is computed first."""
        if self._pending is not None:
            _ = self._host
        state = dict(self.__dict__)
        state.pop("_pending", None)
        state.pop("_pending_shape", None)
        return state

    @property
    def _data(self):
        """The array computations use: device array for CUDA tensors, else host."""
        return self._device if self._device is not None else self._host

    def _host_view(self):
        if self._host is None:
            self._host = backend.to_host(self._device).copy()
        return self._host

    # -- shape --------------------------------------------------------------------------------
    def nb_dims(self) -> int:
        return len(self.shape())

    def shape(self) -> list:
        if self._h is None and self._pending is not None:
            return list(self._pending_shape)
        return list(self._data.shape)

    def dims(self) -> list:
        return self.shape()[::-1]

    def _dim(self, k):
        d = self.dims()
        return d[k] if k < len(d) else 1

    def dimX(self):
        return self._dim(0)

    def dimY(self):
        return self._dim(1)

    def dimZ(self):
        return self._dim(2)

    def dimB(self):
        return self._dim(3)

    def data_type(self) -> str:
        return self._datatype

    @property
    def is_cuda(self) -> bool:
        return self._device is not None

    def reshape(self, new_dims):
        """Reshape in place (numpy order); the number of elements must not change."""
        new_dims = [int(d) for d in new_dims]
        if int(np.prod(new_dims)) != self._data.size:
            raise ValueError(f"Cannot reshape a tensor of {self._data.size} elements to {new_dims}")
        if self._host is not None:
            self._host = self._host.reshape(new_dims)
        if self._device is not None:
            self._device = self._device.reshape(new_dims)
        return self

    def resize(self, new_dims):
        """Change the shape (numpy order), possibly the size; contents are zeroed when it changes."""
        new_dims = [int(d) for d in new_dims]
        if int(np.prod(new_dims)) == self._data.size:
            return self.reshape(new_dims)
        dtype = self._data.dtype
        self._host = np.zeros(new_dims, dtype=dtype)
        if self._device is not None:
            self._device = backend.to_device(self._host, True)
        return self

    def mean(self) -> float:
        return float(self._data.mean())

    # -- element access -----------------------------------------------------------------------
    def __len__(self):
        return int(self._data.size)

    def _flat_host(self):
        h = self._host_view()
        if not h.flags.c_contiguous:
            self._host = h = np.ascontiguousarray(h)
        return h.reshape(-1)

    def _coords(self, key):
        coords = [int(k) for k in key]
        shape = self.shape()
        if len(coords) != len(shape):
            raise ValueError(f"Tensor has {len(shape)} dims, {len(coords)} coordinates given")
        for c, s in zip(coords, shape):
            if c < 0 or c >= s:
                raise ValueError(f"Coordinate {coords} is out of the tensor's shape {shape}")
        return tuple(coords)

    def __getitem__(self, key):
        h = self._host_view()
        if isinstance(key, slice):
            return NotImplemented  # upstream: slices are set-only
        if isinstance(key, (list, tuple)):
            return h[self._coords(key)].item()
        index = int(key)
        if index < 0 or index >= h.size:
            raise IndexError(f"Flat index {index} out of range for a tensor of {h.size} elements")
        return self._flat_host()[index].item()

    def _cast(self, value):
        dtype = self._host_view().dtype
        try:
            if dtype == np.bool_:
                return bool(value)
            if np.issubdtype(dtype, np.integer):
                if isinstance(value, float) and not float(value).is_integer():
                    raise ValueError
                return int(value)
            return float(value)
        except (TypeError, ValueError):
            raise RuntimeError(f"Autocast failed: cannot store {value!r} in a '{self._datatype}' tensor") from None

    def __setitem__(self, key, value):
        h = self._host_view()
        value = self._cast(value)
        if isinstance(key, slice):
            self._flat_host()[key] = value
        elif isinstance(key, (list, tuple)):
            h[self._coords(key)] = value
        else:
            index = int(key)
            if index < 0 or index >= h.size:
                raise IndexError(f"Flat index {index} out of range for a tensor of {h.size} elements")
            self._flat_host()[index] = value
        self._sync_after_host_write()

    def _sync_after_host_write(self):
        """Host writes stay on the host for CUDA tensors until htod(), as upstream."""

    def __iter__(self):
        return iter(self._flat_host().tolist())

    def __contains__(self, value):
        return bool((self._host_view() == value).any())

    def set_values(self, values):
        """Fill from a nested list whose nesting is exactly `shape()`."""
        if not isinstance(values, list):
            raise WrongInputType("values", type(values), ["list"])
        shape = self.shape()
        depth, probe = 0, values
        while isinstance(probe, list):
            depth += 1
            probe = probe[0] if probe else None
        if depth != len(shape):
            raise ValueError(f"The number of dims should be {len(shape)}, got {depth}")
        arr = np.array(values, dtype=object)
        if list(arr.shape) != shape:
            raise ValueError(f"Dimension are {list(arr.shape)} should be {shape}")
        flat = self._flat_host()
        for i, v in enumerate(arr.reshape(-1)):
            flat[i] = self._cast(v)

    # -- numpy interop ------------------------------------------------------------------------
    def to_numpy(self, copy=False) -> np.ndarray:
        """The values as a numpy array of `shape()`; shares memory unless `copy=True`."""
        if self._device is not None:
            self.dtoh()
        h = self._host_view()
        return h.copy() if copy else h

    def __array__(self, dtype=None, copy=None):
        a = self.to_numpy()
        return a.astype(dtype) if dtype is not None else a

    @classmethod
    def from_numpy(cls, array):
        """A new tensor holding a copy of `array` (int64 is refused, as upstream)."""
        if not isinstance(array, np.ndarray):
            raise WrongInputType("array", type(array), ["numpy.ndarray"])
        datatype = _FROM_NUMPY.get(array.dtype)
        if datatype is None:
            raise TypeError(f"numpy dtype {array.dtype} is not supported: use one of "
                            f"{', '.join(str(d) for d in _FROM_NUMPY)}")
        return cls._wrap(np.array(array, copy=True, order="C"), datatype=datatype)

    # -- equality / copy ------------------------------------------------------------------------
    def __eq__(self, other):
        if not isinstance(other, Tensor):
            raise TypeError(f"Cannot compare a Tensor with a {type(other).__name__}")
        a, b = self._host_or_sync(), other._host_or_sync()
        return a.shape == b.shape and bool(np.array_equal(a, b))

    def __ne__(self, other):
        return not self.__eq__(other)

    __hash__ = object.__hash__

    def _host_or_sync(self):
        if self._device is not None and self._host is None:
            self.dtoh()
        return self._host_view()

    def copy(self):
        t = Tensor._wrap(self._host_view().copy(), cell=self.cell, datatype=self._datatype)
        if self._device is not None:
            t._device = self._device.copy()
        return t

    # -- devices ------------------------------------------------------------------------------
    def cuda(self):
        """Move to the GPU in place; returns self."""
        if self._device is None:
            self._device = backend.to_device(self._host_view(), True)
        return self

    def cpu(self):
        """Move to the host in place; returns self."""
        if self._device is not None:
            self._host = backend.to_host(self._device).copy()
            self._device = None
        return self

    def htod(self):
        """Copy the host mirror to the device."""
        if self._device is None:
            raise RuntimeError("htod(): this tensor is not a CUDA tensor")
        cp = backend.require_cupy()
        self._device = cp.asarray(self._host_view())
        return self

    def dtoh(self):
        """Copy the device values to the host mirror."""
        if self._device is None:
            raise RuntimeError("dtoh(): this tensor is not a CUDA tensor")
        host = backend.to_host(self._device)
        if self._host is None or self._host.shape != host.shape:
            self._host = host.copy()
        else:
            self._host[...] = host
        return self

    # -- graph --------------------------------------------------------------------------------
    def get_deepnet(self):
        """The graph this tensor belongs to; a raw tensor first gets a TensorPlaceholder producer."""
        if self.cell is None:
            TensorPlaceholder(self)
        return self.cell.get_deepnet()

    def is_leaf(self) -> bool:
        return self._leaf

    def detach(self):
        self.cell = None
        return self

    def _check_leaf(self):
        if self.cell is None:
            raise RuntimeError("This tensor is not part of a graph")
        if not self._leaf:
            raise RuntimeError("This tensor is not the leaf of a graph")

    def back_propagate(self):
        """Back-propagate through every cell of the graph that produced this loss tensor."""
        self._check_leaf()
        self.cell.get_deepnet().back_propagate()

    def update(self):
        """Apply the solvers of every cell of the graph that produced this loss tensor."""
        self._check_leaf()
        self.cell.get_deepnet().update()

    def draw_associated_graph(self, path):
        """Draw the graph that produced this tensor to `path` (PNG through matplotlib)."""
        self.get_deepnet().draw(path)

    # -- printing -----------------------------------------------------------------------------
    def __repr__(self):
        if self._device is not None:
            self.dtoh()
        return _render(self._host_view())

    def __str__(self):
        device = "cuda" if self.is_cuda else "cpu"
        cell = f", cell='{self.cell.get_name()}'" if self.cell is not None else ""
        return f"n2d2.Tensor([\n{self.__repr__()}], device={device}, datatype={self._datatype}{cell})"


class Interface:
    """Several tensors fed together to a cell (concatenated along channels).

    All tensors must share X, Y and batch dims and belong to the same graph (or to none).
    """

    def __init__(self, tensors):
        if not isinstance(tensors, (list, tuple)) or not tensors:
            raise WrongInputType("tensors", type(tensors), ["non-empty list of Tensor"])
        for t in tensors:
            if not isinstance(t, Tensor):
                raise WrongInputType("tensors", type(t), ["Tensor"])
        ref = tensors[0]
        for t in tensors[1:]:
            if (t.dimX(), t.dimY(), t.dimB()) != (ref.dimX(), ref.dimY(), ref.dimB()):
                raise ValueError(f"Interface: tensor dims {t.dims()} do not match {ref.dims()} "
                                 "on X, Y and batch")
        with_graph = [t for t in tensors if t.cell is not None]
        if with_graph and len(with_graph) != len(tensors):
            raise ValueError("Interface: every tensor must belong to the same graph (or none)")
        if len({id(t.cell.get_deepnet()) for t in with_graph}) > 1:
            raise ValueError("Interface: the tensors belong to different graphs")
        self._tensors = list(tensors)
        if not with_graph:
            MultipleOutputsProvider(self._tensors)

    def get_tensors(self):
        return list(self._tensors)

    def __len__(self):
        return len(self._tensors)

    def __getitem__(self, i):
        return self._tensors[i]

    def __iter__(self):
        return iter(self._tensors)

    def dimX(self):
        return self._tensors[0].dimX()

    def dimY(self):
        return self._tensors[0].dimY()

    def dimZ(self):
        return sum(t.dimZ() for t in self._tensors)

    def dimB(self):
        return self._tensors[0].dimB()

    def dims(self):
        return [self.dimX(), self.dimY(), self.dimZ(), self.dimB()]

    def get_deepnet(self):
        return self._tensors[0].get_deepnet()


# -- the roots of raw tensors' graphs (`n2d2.provider.TensorPlaceholder`, ...) ------------------
class TensorPlaceholder(Provider):
    """Streams one given float tensor (and optional int labels) as a graph input."""

    def __init__(self, inputs, labels=None, name=None):
        if not isinstance(inputs, Tensor):
            raise WrongInputType("inputs", type(inputs), ["Tensor"])
        if np.dtype(inputs._data.dtype).kind != "f":
            raise TypeError(f"TensorPlaceholder: the input tensor must be float, got '{inputs.data_type()}'")
        if labels is not None:
            if not isinstance(labels, Tensor):
                raise WrongInputType("labels", type(labels), ["Tensor"])
            if np.dtype(labels._data.dtype).kind not in "iu":
                raise TypeError("TensorPlaceholder: labels must be an int tensor")
        super().__init__(name)
        self._partition = "Learn"
        self._tensor = inputs
        self._labels = labels
        inputs.cell = self

    def get_data(self):
        return self._tensor

    def get_labels(self):
        if self._labels is None:
            raise RuntimeError(f"{self._name}: no labels were given to this TensorPlaceholder")
        return self._labels

    def get_batch_size(self) -> int:
        return self._tensor.dimB()

    def dims(self):
        return self._tensor.dims()

    def shape(self):
        return self._tensor.shape()


class MultipleOutputsProvider(Provider):
    """The common root of several raw tensors used together (an Interface)."""

    def __init__(self, tensors, name=None):
        super().__init__(name)
        self._partition = "Learn"
        self._tensors = list(tensors)
        for t in self._tensors:
            t.cell = self

    def get_data(self):
        return list(self._tensors)
