"""The pass manager: runs an ordered, configurable pipeline of graph passes."""
import inspect
import time
from typing import Callable

from n2d2.ir.graph import Graph, GraphError
from n2d2.ir.passes._common import check_mode
from n2d2.ir.passes.dead_node_elimination import dead_node_elimination
from n2d2.ir.passes.fold_batchnorm import fold_batchnorm
from n2d2.ir.passes.fold_padding import fold_padding
from n2d2.ir.passes.fuse_activation import fuse_activation
from n2d2.ir.passes.fuse_batchnorm_epilogue import fuse_batchnorm_epilogue
from n2d2.ir.passes.fuse_elementwise_chains import fuse_elementwise_chains
from n2d2.ir.passes.legalize_onnx import legalize_onnx
from n2d2.ir.passes.remove_dropout import remove_dropout
from n2d2.ir.passes.remove_identities import remove_identities
from n2d2.ir.passes.shape_inference import shape_inference

#: Every pass known by name.
PASSES = {
    "shape_inference": shape_inference,
    "remove_identities": remove_identities,
    "remove_dropout": remove_dropout,
    "fold_padding": fold_padding,
    "fold_batchnorm": fold_batchnorm,
    "fuse_activation": fuse_activation,
    "fuse_elementwise_chains": fuse_elementwise_chains,
    "fuse_batchnorm_epilogue": fuse_batchnorm_epilogue,
    "dead_node_elimination": dead_node_elimination,
    "legalize_onnx": legalize_onnx,
}

#: Every pipeline, defined here once. "inference" and "training" are the defaults of the modes:
#: training keeps only the passes that are exact for the training forward and its gradients
#: (no BN folding, no dropout removal). The "live_" pipelines are what `DeepNetCell` runs on the
#: graph of a model whose weights keep changing (between training steps, or set by the user):
#: none of their passes copies or rewrites a parameter array, so the program keeps reading the
#: cells' own arrays. "live_inference" is therefore "inference" without `fold_batchnorm` (it
#: bakes BN into new weights); it also lacks `fuse_elementwise_chains`, which is
#: parameter-preserving (live_training runs it) but was never added to the live inference graph
#: (adding it changes the graph DeepNetCell's inference runs: to be measured first).
#: "live_training" is "training" (already parameter-preserving). Run one with
#: `PassManager(pipeline=PIPELINES[name], mode=...)` (mode "inference" for "live_inference",
#: "training" for "live_training").
PIPELINES = {
    "inference": ("shape_inference", "remove_identities", "remove_dropout", "fold_padding", "fold_batchnorm",
                  "fuse_activation", "fuse_elementwise_chains", "dead_node_elimination", "shape_inference"),
    "training": ("shape_inference", "remove_identities", "fold_padding", "fuse_activation",
                 "fuse_elementwise_chains", "dead_node_elimination", "shape_inference"),
    "live_inference": ("shape_inference", "remove_identities", "remove_dropout", "fold_padding",
                       "fuse_activation", "dead_node_elimination", "shape_inference"),
}
PIPELINES["live_training"] = PIPELINES["training"]


def register_pass(name: str, fn: Callable) -> Callable:
    """Make `fn` (Graph -> Graph) usable by name in pipelines."""
    PASSES[name] = fn
    return fn


def _entry(item):
    """(name, function) of a pipeline item: a registered name, a callable, or a (name, callable)."""
    if isinstance(item, str):
        if item not in PASSES:
            raise ValueError(f"unknown pass '{item}' (known: {', '.join(sorted(PASSES))})")
        return item, PASSES[item]
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and callable(item[1]):
        return item
    if callable(item):
        return getattr(item, "__name__", type(item).__name__), item
    raise TypeError(f"a pipeline item must be a pass name, a callable or a (name, callable) pair, got {item!r}")


def _call(fn, graph, options):
    """Call a pass with the options its signature accepts (a plain `f(graph)` gets none)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return fn(graph)
    params = list(sig.parameters.values())[1:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return fn(graph, **options)
    accepted = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return fn(graph, **{k: v for k, v in options.items() if k in accepted})


class PassManager:
    """Runs graph passes in order.

    Parameters
    ----------
    pipeline : list of pass names, callables (Graph -> Graph) or (name, callable) pairs;
        None takes the default pipeline of `mode`.
    mode : "inference" or "training"; handed to every pass that takes a `mode` argument
        (those that are only exact in inference leave the graph alone in training).
    debug : verify the graph (`Graph.verify`) before the first pass and after each one; a
        failure names the pass that broke it.
    log : print-like callable receiving one line per pass
        (`pass <name>: <nodes before> -> <nodes after> nodes, <ms> ms`); None is silent.
    disable : names of passes to skip.
    options : further keyword options handed to the passes that accept them.
    """

    def __init__(self, pipeline=None, mode: str = "inference", debug: bool = False, log=None,
                 disable=(), **options):
        self.mode = check_mode(mode)
        self.pipeline = [_entry(p) for p in (PIPELINES[mode] if pipeline is None else pipeline)]
        self.debug = debug
        self.log = log
        self.disabled = set()
        for name in disable:
            self.disable(name)
        self.options = dict(options)
        self.history = []   # (name, nodes before, nodes after, milliseconds) of the last run

    @property
    def names(self) -> list:
        """The names of the passes that will run, in order."""
        return [name for name, _ in self.pipeline if name not in self.disabled]

    def disable(self, name: str) -> "PassManager":
        if name not in {n for n, _ in self.pipeline}:
            raise ValueError(f"pass '{name}' is not in the pipeline ({', '.join(n for n, _ in self.pipeline)})")
        self.disabled.add(name)
        return self

    def enable(self, name: str, index: int = None) -> "PassManager":
        """Re-enable a disabled pass, or add a registered pass (at `index`, default: the end)."""
        if name in {n for n, _ in self.pipeline}:
            self.disabled.discard(name)
        else:
            entry = _entry(name)
            self.pipeline.insert(len(self.pipeline) if index is None else index, entry)
        return self

    def add(self, item, index: int = None) -> "PassManager":
        """Insert a pass (name, callable or (name, callable)) at `index` (default: the end)."""
        self.pipeline.insert(len(self.pipeline) if index is None else index, _entry(item))
        return self

    def run(self, graph: Graph) -> Graph:
        """The optimised graph (the passes copy: `graph` itself is not modified)."""
        options = dict(self.options, mode=self.mode)
        self.history = []
        if self.debug:
            self._verify(graph, "before the first pass")
        for name, fn in self.pipeline:
            if name in self.disabled:
                continue
            before = len(graph.nx)
            start = time.perf_counter()
            result = _call(fn, graph, options)
            ms = (time.perf_counter() - start) * 1e3
            if not isinstance(result, Graph):
                raise TypeError(f"pass '{name}' returned {type(result).__name__}, not a Graph")
            graph = result
            self.history.append((name, before, len(graph.nx), ms))
            if self.log is not None:
                self.log(f"pass {name}: {before} -> {len(graph.nx)} nodes, {ms:.2f} ms")
            if self.debug:
                self._verify(graph, f"after pass '{name}'")
        return graph

    __call__ = run

    @staticmethod
    def _verify(graph, when):
        try:
            graph.verify()
        except GraphError as e:
            raise GraphError(f"{when}: {e}") from e

    def __repr__(self):
        return f"PassManager(mode={self.mode!r}, passes={self.names})"


def optimize(graph: Graph, mode: str = "inference", **kw) -> Graph:
    """`graph` rewritten by the default pipeline of `mode` (see PassManager for `kw`)."""
    return PassManager(mode=mode, **kw).run(graph)
