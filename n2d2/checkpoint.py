"""Training checkpoints of `DeepNetCell.fit`: everything a run needs to continue as if it had
never stopped, in one file written atomically.

Format: one numpy `.npz` (read with `allow_pickle=False`: checkpoints may come from strangers,
like model files) holding every array (parameters, solver buffers, best weights) and a JSON
document under the key `meta` (epoch, solver counters, random generator states, best score).
Nothing is ever unpickled; arrays are checked against the network's shapes before use.
"""
import json
import os
import tempfile

import numpy as np

from n2d2.backend import array_module, to_host
from n2d2.settings import global_variables

FORMAT = "n2d2-checkpoint"
VERSION = 1
FILE_NAME = "checkpoint.npz"

_STATE_SCALARS = ("iteration", "nb_accumulated", "last_step")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the network."""


def resolve(path: str) -> str:
    """`path` itself, or `path/checkpoint.npz` when `path` is a folder (a run folder)."""
    return os.path.join(path, FILE_NAME) if os.path.isdir(path) else path


def _solver_state(param):
    return None if param.solver is None else param.solver._state(param.array)


def _rng_state(rng) -> dict:
    return rng.bit_generator.state


def _set_rng_state(rng, state: dict, what: str, path: str):
    if state.get("bit_generator") != type(rng.bit_generator).__name__:
        raise CheckpointError(f"checkpoint {path}: {what} generator is {state.get('bit_generator')}, "
                              f"expected {type(rng.bit_generator).__name__}")
    rng.bit_generator.state = state


def save(path: str, deepnet, epoch: int, best=None, extra: dict = None):
    """Write the state of `deepnet` after `epoch` completed epochs to `path` (temp file + rename).

    `best` is the `BestWeights` of the run (score, stale count, weights); `extra` JSON-able data
    of the caller (e.g. a report).
    """
    arrays, params, solvers = {}, {}, {}
    for k, (name, p) in enumerate(sorted(deepnet._graph.params.items())):
        arrays[f"param_{k}"] = to_host(p.array)
        params[name] = k
        state = _solver_state(p)
        if state is None:
            continue
        entry = {key: getattr(state, key) for key in _STATE_SCALARS}
        entry["buffers"] = sorted(state.buffers)
        for b in entry["buffers"]:
            arrays[f"solver_{k}_{b}"] = to_host(state.buffers[b])
        if state.accumulated is not None:
            arrays[f"accumulated_{k}"] = to_host(state.accumulated)
        entry["accumulated"] = state.accumulated is not None
        solvers[name] = entry
    meta = {"format": FORMAT, "version": VERSION, "epoch": int(epoch), "params": params, "solvers": solvers,
            "rng": _rng_state(global_variables.rng), "seed": global_variables.seed,
            "best": None, "extra": extra or {}}
    if best is not None:
        meta["best"] = {"score": None if best.score is None else float(best.score), "stale": best._stale,
                        "has_weights": best._params is not None}
        if best._params is not None:
            for name, values in best._params.items():
                arrays[f"best_{params[name]}"] = to_host(values)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str) -> tuple:
    """(meta, arrays) of the checkpoint at `path` (a file or a run folder), checked for format."""
    path = resolve(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: no such file") from None
    except (OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"checkpoint {path}: not a readable .npz ({e})") from None
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (KeyError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: missing or malformed 'meta' record ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path}: expected format {FORMAT} version {VERSION}")
    return meta, arrays


def _array(arrays, key, like, path, what):
    if key not in arrays:
        raise CheckpointError(f"checkpoint {path}: {what} is missing (array '{key}')")
    a = arrays[key]
    if a.shape != tuple(like.shape) or a.dtype != like.dtype:
        raise CheckpointError(f"checkpoint {path}: {what} has shape {a.shape} {a.dtype}, the network expects "
                              f"{tuple(like.shape)} {like.dtype}")
    return a


def restore(path: str, deepnet, best=None) -> dict:
    """Load the checkpoint at `path` into `deepnet` (parameters and solver states), the global
    generator and `best`; returns its meta (epoch, extra...). Nothing changes when it fails."""
    path = resolve(path)
    meta, arrays = load(path)
    graph_params = deepnet._graph.params
    names = meta.get("params", {})
    if set(names) != set(graph_params):
        missing, unknown = sorted(set(graph_params) - set(names)), sorted(set(names) - set(graph_params))
        raise CheckpointError(f"checkpoint {path}: parameters do not match the network "
                              f"(missing: {missing[:5]}, unknown: {unknown[:5]})")
    staged = {name: _array(arrays, f"param_{k}", graph_params[name].array, path, f"parameter '{name}'")
              for name, k in names.items()}
    solver_states, state_param = [], {}
    for name, entry in meta.get("solvers", {}).items():
        p = graph_params.get(name)
        state = None if p is None else _solver_state(p)
        if state is None:
            raise CheckpointError(f"checkpoint {path}: parameter '{name}' has solver state but no solver here")
        k = names[name]
        buffers = {b: _array(arrays, f"solver_{k}_{b}", p.array, path, f"solver buffer '{b}' of '{name}'")
                   for b in entry.get("buffers", [])}
        accumulated = (_array(arrays, f"accumulated_{k}", p.array, path, f"accumulated gradient of '{name}'")
                       if entry.get("accumulated") else None)
        solver_states.append((state, entry, buffers, accumulated))
        state_param[id(state)] = p.array
    best_weights = None
    if best is not None and (meta.get("best") or {}).get("has_weights"):
        best_weights = {name: _array(arrays, f"best_{k}", graph_params[name].array, path, f"best weights of '{name}'")
                        for name, k in names.items()}
    # everything checked: now change the network
    for name, values in staged.items():
        target = graph_params[name].array
        target[...] = array_module(target).asarray(values)
    for state, entry, buffers, accumulated in solver_states:
        for key in _STATE_SCALARS:
            setattr(state, key, entry.get(key))
        state.iteration = int(state.iteration or 0)
        state.nb_accumulated = int(state.nb_accumulated or 0)
        xp = array_module(state_param[id(state)])
        state.buffers = {b: xp.array(v) for b, v in buffers.items()}
        state.accumulated = None if accumulated is None else xp.array(accumulated)
    _set_rng_state(global_variables.rng, meta["rng"], "the global", path)
    if best is not None and meta.get("best") is not None:
        best.score = meta["best"]["score"]
        best._stale = int(meta["best"]["stale"])
        best._params = None if best_weights is None else {
            name: array_module(graph_params[name].array).asarray(v) for name, v in best_weights.items()}
    deepnet._invalidate()
    return meta
