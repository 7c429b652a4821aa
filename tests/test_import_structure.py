"""Import structure of the `n2d2` package: no cycles, and no hidden ones.

Every `n2d2/**/*.py` is parsed with `ast` (nothing is imported). Each import of an n2d2 module is classed
as *module-level* (runs when the module is imported: top level, `if`/`try` blocks, class bodies) or
*function-level* (inside a `def`, runs when called). `if TYPE_CHECKING:` blocks are skipped (never run).

(a) The module-level graph has no cycle.
(b) A function-level import of an n2d2 module hides a dependency from (a); each one must be listed in
    `ALLOWED_DEFERRED` with the reason it cannot be at module level (a lazy public attribute of the
    upstream API, or a module that pulls an optional heavy dependency: onnx, onnxruntime, cupy, matplotlib,
    torch, mpi4py, or the whole compiler, which `import n2d2` must not load).

An edge goes to the module an import names (`from n2d2.a import b`: to `n2d2.a.b` when `b` is a module, to
`n2d2.a` otherwise) and to the packages above it that Python runs on the way (`n2d2/a/__init__.py`), except
the root `n2d2` and the importer's own packages, which are already loading when the importer runs.

Run `python tests/test_import_structure.py` to print the graph's cycles and the deferred imports.
"""
import ast
import os
import sys
from collections import defaultdict

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "n2d2")

# (importing module, imported module): reason. Keep it short: every entry is a dependency the cycle check
# cannot see.
ALLOWED_DEFERRED = {
    # lazy public attributes of the upstream API (module __getattr__), so that `import n2d2` stays light
    ("n2d2", "n2d2.*"): "n2d2.database, n2d2.ir, ... load on first attribute access (`_LAZY` in __getattr__)",
    ("n2d2.cells", "<dynamic>"): "n2d2.cells.DeepNetCell and .Transformation load on first use (`_LAZY`)",
    ("n2d2.cells.nn", "n2d2.cells.nn.transformation"): "n2d2.cells.nn.Transformation loads on first use",
    ("n2d2.ir", "n2d2.ir.graph"): "n2d2.ir.Graph/Node/Param load networkx on first use; n2d2.ir.ops/types stay light",
    # the eager core (tensors, cells, providers) calls into the compiler only when a graph is compiled: `import n2d2`
    # must not load the compiler (networkx, jinja2, n2d2.ir, n2d2.codegen); test_upstream_api checks it
    ("n2d2.deepnet", "n2d2.eager_compile"): "compiler hooks: a provider's new batch ends the eager step (on_step_end), "
                                           "a cell call asks for a replay (on_call, through deepnet.eager_compile())",
    ("n2d2.cells.cell", "n2d2.cells.deepnet_cell"): "Cell.to_deepnet_cell / Sequence compile builds a DeepNetCell",
    # upstream hangs the loaders on the class (DeepNetCell.load_from_INI / load_from_ONNX); the frontends build
    # DeepNetCells, so they sit above deepnet_cell and the classmethods reach up to them when called
    ("n2d2.cells.deepnet_cell", "n2d2.frontends.ini.builder"): "DeepNetCell.load_from_INI (upstream API)",
    ("n2d2.quantizer", "n2d2.quantization.ptq"): "quantizer.PTQ runs the compiler (passes, networkx); every cell "
        "imports n2d2.quantizer, and `import n2d2` must not load the compiler",
    ("n2d2.quantizer", "n2d2.quantization.qat"): "quantizer.fuse_qat runs the compiler's passes, as PTQ (same "
        "reason)",
    ("n2d2.codegen.backends", "<dynamic>"): "the backend registry imports a backend module when it is asked for "
        "(BACKEND_MODULES: C loads the compiler driver, CUDA CuPy)",
    ("n2d2.cells.deepnet_cell", "n2d2.frontends.onnx_import"): "DeepNetCell.load_from_ONNX (upstream API; loads onnx)",
    # the INI builder imports onnx_import for its [onnx] sections (onnx_section), and INI networks must not need onnx
    ("n2d2.frontends.onnx_import", "n2d2.onnx_backend"): "a generic OnnxNode cell converts its node with "
        "onnx_backend, which imports onnx",
    ("n2d2.frontends.onnx_import", "n2d2.frontends.ini.parser"): "an INI embedding parses its file; the package "
        "n2d2.frontends.ini runs its builder, which imports onnx_import (onnx_section)",
    ("n2d2.ir.ops", "n2d2.ir.registry"): "the registry imports every op module, each of which imports n2d2.ir.ops "
        "(OpDef, register): load_all imports it on the first lookup",
}

def _module_name(path):
    rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].split(os.sep)
    if rel[-1] == "__init__":
        rel = rel[:-1]
    return ".".join(rel)


def _modules():
    found = {}
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for f in sorted(filenames):
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                found[_module_name(path)] = path
    return found


def _is_type_checking(test):
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Collector(ast.NodeVisitor):
    """Collects (target, deferred, lineno) for every import of an n2d2 module in one file."""

    def __init__(self, name, is_package, modules):
        self.name, self.is_package, self.modules = name, is_package, modules
        self.depth = 0  # > 0 inside a function body
        self.found = []

    def _resolve(self, target):
        # the longest prefix of `target` that is an n2d2 module
        parts = target.split(".")
        while parts:
            cand = ".".join(parts)
            if cand in self.modules:
                return cand
            parts.pop()
        return None

    def _add(self, target, lineno):
        mod = self._resolve(target)
        if mod is not None and mod != self.name:
            self.found.append((mod, self.depth > 0, lineno))

    def visit_FunctionDef(self, node):
        for d in node.decorator_list:
            self.visit(d)
        self.depth += 1
        for stmt in node.body:
            self.visit(stmt)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    def visit_If(self, node):
        if _is_type_checking(node.test):
            for stmt in node.orelse:
                self.visit(stmt)
            return
        self.generic_visit(node)

    def visit_Import(self, node):
        for alias in node.names:
            if alias.name == "n2d2" or alias.name.startswith("n2d2."):
                self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node):
        if node.level:
            base = self.name.split(".")
            if not self.is_package:
                base = base[:-1]
            base = base[:len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        if not (module == "n2d2" or module.startswith("n2d2.")):
            return
        for alias in node.names:
            sub = f"{module}.{alias.name}"
            self._add(sub if sub in self.modules else module, node.lineno)

    def visit_Call(self, node):
        # importlib.import_module("n2d2.x") / __import__("n2d2.x") with a literal or an f-string prefix
        func = node.func
        fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if fname in ("import_module", "__import__") and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                self._add(arg.value, node.lineno)
            elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                if str(arg.values[0].value).startswith("n2d2."):
                    self.found.append((f"{arg.values[0].value}*", self.depth > 0, node.lineno))
            else:  # a name computed at run time: listed as "<dynamic>", it must be justified like any other
                self.found.append(("<dynamic>", self.depth > 0, node.lineno))
        self.generic_visit(node)


def collect():
    """{module: [(imported module, deferred, lineno)]} for the whole package."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        c = _Collector(name, path.endswith("__init__.py"), modules)
        c.visit(tree)
        graph[name] = c.found
    return graph


def _with_packages(src, dst):
    """`dst` and the packages Python runs to import it from `src` (not the root, not src's own packages)."""
    parts = dst.split(".")
    out = [dst]
    for i in range(2, len(parts)):
        pkg = ".".join(parts[:i])
        if not (src == pkg or src.startswith(pkg + ".")):
            out.append(pkg)
    return out


def module_level_graph(graph, include=lambda src, dst, deferred: not deferred):
    edges = defaultdict(set)
    for src, imps in graph.items():
        edges[src]
        for dst, deferred, _ in imps:
            if include(src, dst, deferred) and not dst.endswith("*") and dst != "<dynamic>":
                edges[src].update(d for d in _with_packages(src, dst) if d != src)
    return edges


def strongly_connected(edges):
    """Tarjan's SCCs with more than one module (or a self-loop), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                out.append(sorted(comp))

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 10000))
    try:
        for v in sorted(edges):
            if v not in index:
                strong(v)
    finally:
        sys.setrecursionlimit(old)
    return sorted(out)


def _a_cycle(edges, comp):
    """One concrete cycle inside a strongly connected component, for the error message."""
    comp = set(comp)
    start = min(comp)
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v]):
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return list(reversed(path)) + [start]
                if w in comp and w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return [start]


def deferred_imports(graph):
    """[(importing module, imported module, lineno)] for every function-level import of an n2d2 module."""
    return sorted((src, dst, line) for src, imps in graph.items() for dst, deferred, line in imps if deferred)


def test_collector_sees_all_import_forms(tmp_path):
    src = (
        "import n2d2.tensor\n"
        "from n2d2 import solver\n"
        "from n2d2.filler import Normal\n"
        "from . import utils\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from n2d2 import cells\n"
        "try:\n    from n2d2 import mapping\nexcept ImportError:\n    pass\n"
        "class A:\n    from n2d2 import names\n"
        "def f():\n    from n2d2 import deepnet\n    import importlib\n"
        "    return importlib.import_module('n2d2.scaling')\n"
        "def g(name):\n    import importlib\n    return importlib.import_module(name)\n"
    )
    modules = _modules()
    c = _Collector("n2d2.fake", False, modules)
    c.visit(ast.parse(src))
    got = {(dst, deferred) for dst, deferred, _ in c.found}
    assert got == {("n2d2.tensor", False), ("n2d2.solver", False), ("n2d2.filler", False), ("n2d2.utils", False),
                   ("n2d2.mapping", False), ("n2d2.names", False), ("n2d2.deepnet", True), ("n2d2.scaling", True),
                   ("<dynamic>", True)}


def test_cycle_finder_finds_a_planted_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(edges) == [["a", "b", "c"]]
    assert _a_cycle(edges, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_no_import_cycles():
    edges = module_level_graph(collect())
    cycles = strongly_connected(edges)
    msg = "\n".join(" -> ".join(_a_cycle(edges, comp)) + f"   (component of {len(comp)})" for comp in cycles)
    assert not cycles, f"import cycles among module-level n2d2 imports:\n{msg}"


def test_function_level_imports_are_justified():
    unlisted = [(src, dst, line) for src, dst, line in deferred_imports(collect())
                if (src, dst) not in ALLOWED_DEFERRED]
    msg = "\n".join(f"{src.replace('.', '/')}.py:{line} imports {dst} inside a function" for src, dst, line in unlisted)
    assert not unlisted, ("function-level imports of n2d2 modules hide dependencies from the cycle check; move them "
                          f"to module level or justify them in ALLOWED_DEFERRED:\n{msg}")


def test_allow_list_has_no_stale_entries():
    present = {(src, dst) for src, dst, _ in deferred_imports(collect())}
    stale = sorted(set(ALLOWED_DEFERRED) - present)
    assert not stale, f"ALLOWED_DEFERRED lists imports that no longer exist: {stale}"


if __name__ == "__main__":  # pragma: no cover - a report for people
    g = collect()
    e = module_level_graph(g)
    for comp in strongly_connected(e):
        print(f"cycle ({len(comp)} modules):", " -> ".join(_a_cycle(e, comp)))
        print("   component:", " ".join(comp))
    for src, dst, line in deferred_imports(g):
        mark = "" if (src, dst) in ALLOWED_DEFERRED else "  <- not allowed"
        print(f"deferred: {src}:{line} -> {dst}{mark}")
    pytest  # keeps the import used for the report-only run
