"""The backends behind one interface, in one explicit registry.

A backend makes a runnable program of (graph, phases, training) in two steps:

- `lower(graph, phases, training)` -> a module: pure (renders templates, plans the arena, calls
  no compiler and touches no device), plain data that tests can inspect: the source text (None
  on numpy), the kernel list, where each node runs (`where`), the arena layout (`plan`);
- `load(module, **options)` -> a program: builds and loads the module (gcc, NVRTC) and runs it:
  `feed({input: array})`, `run_phase(index, batch_size)`, `view(tensor)` (its live value or
  arena view), `fetch(tensor)` (a value safe to keep), `assign(tensor, array)`, `where`,
  `source`, `profile()`.

Nodes without a kernel run on the interpreter (`n2d2.codegen.interpreter`) over the program's
arena views. `programs.InferenceProgram` / `TrainingProgram` and `select` go through this
registry; nothing else switches on a backend's name.

Adding a backend: one module that defines a `Backend` subclass and an instance of it named
`BACKEND`, plus its line in `BACKEND_MODULES` (see docs/architecture.md).
"""
from __future__ import annotations

import importlib

from n2d2.error_handler import WrongValue
from n2d2.settings import global_variables

__all__ = ["BACKEND_MODULES", "NAMES", "Backend", "CompiledProgram", "availability", "get", "select"]

#: name -> module defining `BACKEND`, in the order they are listed to users. Imported on use, so
#: that `import n2d2` loads no backend.
BACKEND_MODULES = {
    "numpy": "n2d2.codegen.numpy_exec",
    "c": "n2d2.codegen.c_backend",
    "cuda": "n2d2.codegen.cuda_backend",
}
NAMES = tuple(BACKEND_MODULES)


class Backend:
    """What every backend declares and provides.

    Attributes
    ----------
    name : str
        Its registry name (`DeepNetCell(..., backend=name)`, `n2d2 train --backend name`).
    default_models : tuple of str
        The `global_variables.default_model` values it may serve when no backend is named.
    preference : int
        Among the available backends of a default model, the highest preference is taken.
    source_extension : str or None
        File extension of its generated source (`DeepNetCell.dump_sources`); None: none.
    requirement : str
        What it needs to run, for the error when it is not available.
    training_passes : tuple of str
        Passes (names in `n2d2.ir.passes.PASSES`) that `DeepNetCell` runs on the training graph
        after the live training pipeline, for this backend only: fusions into ops that it has
        kernels for and others would run on the reference.
    """

    name = ""
    default_models = ()
    preference = 0
    source_extension = None
    requirement = ""
    training_passes = ()

    def available(self) -> bool:
        """Whether this machine can run it (compiler, device); never raises."""
        raise NotImplementedError(f"backend '{self.name}' does not say whether it is available")

    def require(self, why: str):
        """A RuntimeError `"<why> needs <requirement>"` when it is not available."""
        if not self.available():
            raise RuntimeError(f"{why} needs {self.requirement}")

    def lower(self, graph, phases, training: bool = False, **options):
        """The module of `graph` run in `phases` (lists of node names): pure, no compiler call."""
        raise NotImplementedError(f"backend '{self.name}' has no lowering")

    def load(self, module, **options):
        """A runnable program of a module `lower` returned (builds and loads it)."""
        raise NotImplementedError(f"backend '{self.name}' cannot load a module")

    def program(self, graph, phases, training: bool = False, **options):
        """`load(lower(graph, phases, training))`: what `programs` runs."""
        return self.load(self.lower(graph, phases, training), **options)

    def __repr__(self):
        return f"<n2d2 backend '{self.name}'>"


class CompiledProgram:
    """What the compiled programs (C, CUDA) share: the lowered module's fields as attributes,
    every tensor as a view of one arena (`_views`), and an interpreter over those views
    (`_fallback`) that runs the nodes without a kernel."""

    MODULE_FIELDS = ("graph", "training", "phases", "plan", "where", "fallback_reasons", "kernels", "aux_specs",
                     "source")

    def _adopt(self, module):
        self.module = module
        for field in self.MODULE_FIELDS:
            setattr(self, field, getattr(module, field))

    def view(self, tensor):
        """The arena view of a tensor (node, output index)."""
        return self._views[tensor]

    def fetch(self, tensor):
        """A copy of the tensor's arena view (the arena is reused by the next run)."""
        return self._views[tensor].copy()

    @property
    def saved(self) -> dict:
        """Forward contexts of the nodes that ran on the interpreter (for their Grad nodes)."""
        return self._fallback.saved

    def _run_numpy(self, node, batch_size):
        """Run one node without a kernel on the interpreter, over the arena views."""
        self._fallback.batch_size = batch_size
        self._fallback.run_node(node)


def get(name: str) -> Backend:
    """The backend registered as `name` (WrongValue for an unknown name)."""
    if name not in BACKEND_MODULES:
        raise WrongValue("backend", name, NAMES)
    module = importlib.import_module(BACKEND_MODULES[name])
    backend = getattr(module, "BACKEND", None)
    if not isinstance(backend, Backend) or backend.name != name:
        raise RuntimeError(f"module {BACKEND_MODULES[name]} registered for backend '{name}' defines no BACKEND "
                           f"of that name (got {backend!r})")
    return backend


def availability() -> dict:
    """{name: available?} of every registered backend."""
    return {name: get(name).available() for name in NAMES}


def select(name: str = None) -> str:
    """The backend to run: `name` when given (an error when it cannot run here), else the most
    preferred available backend serving `n2d2.global_variables.default_model` ("Frame": C when
    a compiler is found, else numpy; "Frame_CUDA": CUDA, which needs CuPy and a device)."""
    if name is not None:
        get(name).require(f"backend '{name}'")
        return name
    model = global_variables.default_model
    candidates = sorted((b for b in map(get, NAMES) if model in b.default_models), key=lambda b: -b.preference)
    if not candidates:
        raise RuntimeError(f"no backend serves default_model '{model}' (backends: {', '.join(NAMES)})")
    for backend in candidates:
        if backend.available():
            return backend.name
    raise RuntimeError(f"default_model '{model}' needs {candidates[0].requirement}")
