"""The eager graph: the cells called since a provider produced a batch, in call order.

Calling a cell records (cell, inputs, output, saved context) here; a target seeds the
gradient of an output; `back_propagate()` walks the records backwards and `update()` applies
every cell's solvers. The record list is also what `n2d2.ir` traces into its graph.

A `Provider` produces input tensors: it is the root of the graph, and each batch it produces
starts a fresh `DeepNet` (`n2d2.provider` holds the providers themselves).
"""
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.plots import save_figure
from n2d2.utils import generate_name

PARTITIONS = ("Learn", "Validation", "Test", "Unpartitioned")


_EAGER_COMPILE = []


def eager_compile():
    """The module `n2d2.eager_compile`, imported at its first use (it imports the cells, which
    import this module) and kept: an import statement per cell call costs microseconds."""
    if not _EAGER_COMPILE:
        from n2d2 import eager_compile as module

        _EAGER_COMPILE.append(module)
    return _EAGER_COMPILE[0]


class CallRecord:
    """One cell call: what went in, what came out, and what the backward pass needs."""

    __slots__ = ("cell", "inputs", "output", "ctx", "needs_input_grad")

    def __init__(self, cell, inputs, output, ctx, needs_input_grad):
        self.cell = cell
        self.inputs = inputs
        self.output = output
        self.ctx = ctx
        self.needs_input_grad = needs_input_grad


class DeepNet:
    """A define-by-run graph rooted at a provider."""

    def __init__(self, provider=None, name=None):
        self._name = name or generate_name(self)
        self._provider = provider
        self._records = []
        self._seeds = []
        # n2d2.eager_compile: a step key per record, record index by output, inputs by first use
        self._eager_keys = []
        self._eager_index = {}
        self._eager_inputs = {}
        self._eager_next_key = None
        self._eager_step = None
        self._eager_trained = False

    def get_name(self) -> str:
        return self._name

    def get_provider(self):
        return self._provider

    def add(self, record: CallRecord):
        self._eager_index[id(record.output)] = len(self._records)
        pending = self._eager_next_key   # (cell, key) set by the call that records this
        self._eager_keys.append(pending[1] if pending is not None and pending[0] is record.cell else None)
        self._eager_next_key = None
        self._records.append(record)

    def records(self):
        return list(self._records)

    def get_cells(self) -> list:
        """Cells in first-call order, each once."""
        seen, cells = set(), []
        for r in self._records:
            if id(r.cell) not in seen:
                seen.add(id(r.cell))
                cells.append(r.cell)
        return cells

    def seed_gradient(self, tensor, grad):
        """Set d(loss)/d(tensor) (standard sign) for the next back_propagate()."""
        self._seeds.append((tensor, grad))

    def back_propagate(self):
        self._eager_trained = True
        step = self._eager_step
        if step is not None and step.back_propagate(self._seeds):
            return
        self._eager_back_propagate()

    def _eager_back_propagate(self):
        grads = {}
        for tensor, g in self._seeds:
            key = id(tensor)
            grads[key] = g if key not in grads else grads[key] + g
        if not grads:
            raise RuntimeError(f"{self._name}: nothing to back-propagate (no target seeded a gradient)")
        for cell in self.get_cells():
            cell._zero_param_grads()
        for record in reversed(self._records):
            dy = grads.get(id(record.output))
            if dy is None:
                continue
            dxs = record.cell._backward_record(record, dy)
            for tensor, dx in zip(record.inputs, dxs):
                if dx is None:
                    continue
                key = id(tensor)
                grads[key] = dx if key not in grads else grads[key] + dx

    def update(self):
        step = self._eager_step
        if step is not None and step.update():
            return
        for cell in self.get_cells():
            cell.update()
            update_quantizer = getattr(cell, "_update_activation_quantizer", None)
            if update_quantizer is not None:
                update_quantizer()

    def draw(self, path):
        """A simple picture of the call graph (cells as boxes, producers as arrows)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [self._provider.get_name() if self._provider is not None else "input"]
        names += [r.cell.get_name() for r in self._records]
        fig, ax = plt.subplots(figsize=(3, 0.6 * len(names) + 1))
        for i, n in enumerate(names):
            ax.text(0.5, -i, n, ha="center", va="center", bbox=dict(boxstyle="round", fc="w"))
            if i:
                ax.annotate("", xy=(0.5, -i + 0.25), xytext=(0.5, -i + 0.75), arrowprops=dict(arrowstyle="->"))
        ax.set_ylim(-len(names), 1)
        ax.axis("off")

        save_figure(fig, path)
        plt.close(fig)


def compiled_replays() -> int:
    """How many forward passes of eager loops ran as a compiled program (`n2d2.eager_compile`);
    `n2d2.eager_compile.stats` has the other counters."""
    from n2d2.eager_compile import stats

    return stats.forward_replays


class Provider:
    """Abstract base of everything that produces input tensors."""

    def __init__(self, name=None):
        if type(self) is Provider:
            raise TypeError("Provider is abstract: use DataProvider or TensorPlaceholder")
        self._name = name if name is not None else generate_name(self)
        self._deepnet = DeepNet(self)
        self._partition = "Test"

    def get_name(self) -> str:
        return self._name

    def get_deepnet(self):
        return self._deepnet

    def _new_graph(self):
        eager_compile().on_step_end(self, self._deepnet)
        self._deepnet = DeepNet(self)
        return self._deepnet

    def set_partition(self, partition: str):
        if not isinstance(partition, str):
            raise WrongInputType("partition", type(partition), ["str"])
        if partition not in PARTITIONS:
            raise WrongValue("partition", partition, PARTITIONS)
        self._partition = partition

    def get_partition(self) -> str:
        return self._partition

    def get_labels(self):
        """Labels of the current batch (an int Tensor); -1 marks an invalid slot."""
        raise NotImplementedError(f"{type(self).__name__} has no labels")

    def __str__(self):
        return f"'{self._name}' {type(self).__name__}"
