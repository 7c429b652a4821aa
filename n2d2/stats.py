"""Per-cell statistics of an eager graph: parameters, MACs per image, data memory.

Computed from the graph's call records (`DeepNet.records()`), so they describe the cells as
they were actually called (real input and output shapes). Counting rules (per image, i.e.
divided by the batch):

- parameters: sizes of the cell's weights and biases (`_weights`, `_biases`, and for cells
  such as BatchNorm `_scales`/`_scale`/`_bias`/`_shifts`; a cell may instead define
  `_stats_parameter_arrays()` returning its list of parameter arrays). When the cell exposes a
  connection mask (`_weights_mask` / `_mapping_mask` array broadcastable to the weights, or a
  `mapping` parameter, a bool Tensor [nb_channels, nb_outputs]), only connected weights count.
  Parameters are counted once per cell, even when the cell is called several times.
- MACs (one multiply-accumulate per connection):
  Fc: connected weights; Conv: connected weights * Ho * Wo; Deconv: weights * Hin * Win;
  Pool: output size * pooling window (global pooling: window = Hin * Win);
  every other cell (BatchNorm, ElemWise, activations, Softmax, Dropout, ...): output size.
  A cell called several times in the graph counts each call.
- data memory: output elements * 4 bytes (float32), every call counted.

`stats.dat` also shows the parameter memory in float32 bytes (4 * parameters).
"""
import os

import numpy as np

from n2d2 import plots
from n2d2.backend import to_host
from n2d2.provider.base import Provider
from n2d2.utils import atomic_write_text

BYTES_PER_VALUE = 4  # float32

_PARAMETER_ATTRIBUTES = ("_weights", "_biases", "_scales", "_scale", "_bias", "_shifts")
_MASK_ATTRIBUTES = ("_weights_mask", "_mapping_mask")


class CellStats:
    """Statistics of one cell (per image)."""

    __slots__ = ("name", "type", "nb_parameters", "macs", "nb_outputs")

    def __init__(self, name, type_name, nb_parameters=0, macs=0, nb_outputs=0):
        self.name = name
        self.type = type_name
        self.nb_parameters = int(nb_parameters)
        self.macs = int(macs)
        self.nb_outputs = int(nb_outputs)

    @property
    def param_memory(self) -> int:
        return BYTES_PER_VALUE * self.nb_parameters

    @property
    def data_memory(self) -> int:
        return BYTES_PER_VALUE * self.nb_outputs

    def __repr__(self):
        return (f"CellStats({self.name!r}, {self.type}, parameters={self.nb_parameters}, "
                f"macs={self.macs}, outputs={self.nb_outputs})")


def _type_names(cell) -> list:
    return [k.__name__ for k in type(cell).__mro__]


def _is(cell, *names) -> bool:
    return any(n in names for n in _type_names(cell))


def _connection_mask(cell, weights):
    """Bool array broadcast to `weights`' shape marking connected weights, or None (all connected)."""
    for attr in _MASK_ATTRIBUTES:
        mask = getattr(cell, attr, None)
        if mask is not None:
            return np.broadcast_to(np.asarray(to_host(mask)).astype(bool), weights.shape)
    config = getattr(cell, "_config", None) or {}
    mapping = config.get("mapping") if isinstance(config, dict) else None
    if mapping is not None and weights.ndim >= 2:
        table = np.asarray(mapping.to_numpy() if hasattr(mapping, "to_numpy") else mapping).astype(bool)
        nb_out, nb_ch = weights.shape[0], weights.shape[1]
        if table.shape == (nb_ch, nb_out):
            mask = table.T.reshape((nb_out, nb_ch) + (1,) * (weights.ndim - 2))
            return np.broadcast_to(mask, weights.shape)
    return None


def connected_weights(cell) -> int:
    """Number of weights of `cell` that are real connections (see the module docstring)."""
    weights = getattr(cell, "_weights", None)
    if weights is None:
        return 0
    mask = _connection_mask(cell, weights)
    return int(weights.size) if mask is None else int(np.count_nonzero(mask))


def nb_parameters(cell) -> int:
    """Trainable parameters of `cell`: connected weights plus biases (and scales/shifts)."""
    hook = getattr(cell, "_stats_parameter_arrays", None)
    if callable(hook):
        return int(sum(int(a.size) for a in hook() if a is not None))
    total = connected_weights(cell)
    for attr in _PARAMETER_ATTRIBUTES[1:]:
        array = getattr(cell, attr, None)
        if array is not None and hasattr(array, "size") and hasattr(array, "shape"):
            total += int(array.size)
    return total


def _pool_window(cell, in_shape, out_shape) -> int:
    args = getattr(cell, "_args", None) or {}
    dims = args.get("pool_dims") if isinstance(args, dict) else None
    if dims is None:
        config = getattr(cell, "_config", None) or {}
        dims = config.get("pool_dims") if isinstance(config, dict) else None
    if dims:
        return int(np.prod([int(d) for d in dims]))
    # Global pooling (or no pool_dims known): the whole input plane per output value.
    hin = int(np.prod(in_shape[2:])) if len(in_shape) > 2 else 1
    hout = int(np.prod(out_shape[2:])) if len(out_shape) > 2 else 1
    return max(1, hin // max(1, hout))


def call_macs(cell, in_shape, out_shape) -> int:
    """MACs per image of one call of `cell` with these (numpy-order) input/output shapes."""
    out_size = int(np.prod(out_shape[1:])) if len(out_shape) > 1 else 1
    if _is(cell, "Fc"):
        return connected_weights(cell)
    if _is(cell, "Deconv"):
        hin = int(np.prod(in_shape[2:])) if len(in_shape) > 2 else 1
        weights = getattr(cell, "_weights", None)
        return (int(weights.size) if weights is not None else 0) * hin
    if any(n.startswith("Conv") for n in _type_names(cell)):
        hout = int(np.prod(out_shape[2:])) if len(out_shape) > 2 else 1
        return connected_weights(cell) * hout
    if any("Pool" in n for n in _type_names(cell)):
        return out_size * _pool_window(cell, in_shape, out_shape)
    return out_size


def compute_stats(deepnet) -> list:
    """One CellStats per cell of `deepnet`, in first-call order."""
    by_cell, order = {}, []
    for record in deepnet.records():
        cell = record.cell
        key = id(cell)
        inner = getattr(cell, "cell_stats", None)
        if callable(inner):   # a DeepNetCell: its own cells, once
            if key not in by_cell:
                by_cell[key] = inner()
                order.append(key)
            continue
        if key not in by_cell:
            name = cell.get_name() if hasattr(cell, "get_name") else type(cell).__name__
            by_cell[key] = CellStats(name, type(cell).__name__, nb_parameters(cell))
            order.append(key)
        stats = by_cell[key]
        out_shape = list(record.output._data.shape)
        in_shape = list(record.inputs[0]._data.shape) if record.inputs else out_shape
        stats.macs += call_macs(cell, in_shape, out_shape)
        stats.nb_outputs += int(np.prod(out_shape[1:])) if len(out_shape) > 1 else 1
    result = []
    for k in order:
        entry = by_cell[k]
        result.extend(entry if isinstance(entry, list) else [entry])
    return result


def _input_size(deepnet) -> int:
    """Values per image fed to the graph by its provider (first recorded input)."""
    for record in deepnet.records():
        for t in record.inputs:
            if isinstance(t.cell, Provider) or t.cell is None:
                shape = t._data.shape
                return int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return 0


def _kb(nb_bytes: float) -> str:
    return f"{nb_bytes / 1000.0:g} kB   ({nb_bytes / 1024.0:g} KiB)"


def format_stats_log(stats: list, input_size: int) -> str:
    """The text of `stats.log`: global counts, memory at 8/16/32 bits, computing."""
    params = sum(s.nb_parameters for s in stats)
    macs = sum(s.macs for s in stats)
    data = sum(s.nb_outputs for s in stats)
    lines = ["[Global stats]",
             f"Total number of cells: {len(stats)}",
             f"Total number of parameters: {params}",
             f"Total number of output values per image: {data}",
             f"Total number of connections (MACs per image): {macs}",
             "",
             "[Memory]"]
    for label, count in (("Input data", input_size), ("Free parameters", params), ("Layers data", data)):
        for bits in (8, 16, 32):
            kind = "int" if bits == 8 else "float"
            lines.append(f"{label} ({kind}-{bits} bits): {_kb(count * bits / 8)}")
    lines += ["", "[Computing]", f"MACS / input data: {macs / 1.0e6:g}M", ""]
    return "\n".join(lines)


def _percent(value, total) -> str:
    return "%.2f" % (100.0 * value / total if total > 0 else 0.0)


def log_stats(deepnet, dir_name: str) -> list:
    """Write `stats.log`, `stats.dat`, `stats_relative.dat` and `stats.png` under `dir_name`.

    `stats.dat`: `Cell ParamMemory Computing DataMemory` (float32 bytes, MACs, float32 bytes
    per image); `stats_relative.dat`: the same columns as percentages of the totals.
    Returns the list of CellStats.
    """
    stats = compute_stats(deepnet)
    os.makedirs(dir_name, exist_ok=True)
    atomic_write_text(os.path.join(dir_name, "stats.log"), format_stats_log(stats, _input_size(deepnet)))
    rows = ["Cell ParamMemory Computing DataMemory"]
    rows += [f"{s.name} {s.param_memory} {s.macs} {s.data_memory}" for s in stats]
    atomic_write_text(os.path.join(dir_name, "stats.dat"), "\n".join(rows) + "\n")
    tp = sum(s.param_memory for s in stats)
    tm = sum(s.macs for s in stats)
    td = sum(s.data_memory for s in stats)
    rel = ["Cell ParamMemory(%) Computing(%) DataMemory(%)"]
    rel += [f"{s.name} {_percent(s.param_memory, tp)} {_percent(s.macs, tm)} {_percent(s.data_memory, td)}"
            for s in stats]
    atomic_write_text(os.path.join(dir_name, "stats_relative.dat"), "\n".join(rel) + "\n")

    plots.stats_png(os.path.join(dir_name, "stats.png"), [s.name for s in stats],
                    [("Param Memory (bytes)", [s.param_memory for s in stats]),
                     ("Data Memory (bytes)", [s.data_memory for s in stats]),
                     ("Computing (MACs)", [s.macs for s in stats])])
    return stats
