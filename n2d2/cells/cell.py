"""Containers of cells: `Block` (named set), `Iterable`, `Sequence` (chain), `Layer` (branches).

Containers hold cells and other containers; `learn()`/`test()`, `set_solver`, parameter
export/import and printing recurse through them.
"""
from n2d2.cells.nn.base import NeuralNetworkCell
from n2d2.error_handler import WrongInputType
from n2d2.parameter_files import export_set, import_set
from n2d2.solver import Solver
from n2d2.tensor import Interface, Tensor
from n2d2.utils import generate_name


class Cell:
    """Abstract base of everything that can be called on tensors (cells and containers)."""

    def __init__(self, name=None):
        if type(self) is Cell:
            raise TypeError("Cell is abstract")
        if name is not None and not isinstance(name, str):
            raise WrongInputType("name", type(name), ["str"])
        self._name = name if name is not None else generate_name(self)

    @property
    def name(self):
        return self._name

    def get_name(self) -> str:
        return self._name

    def get_type(self) -> str:
        return type(self).__name__


class Block(Cell):
    """A named collection of cells; `block["name"]` searches nested blocks too.

    Parameters
    ----------
    cells : list
        Cells and containers, in order.
    name : str, optional
    """

    def __init__(self, cells, name=None):
        super().__init__(name)
        if not isinstance(cells, list):
            raise WrongInputType("cells", type(cells), ["list"])
        for c in cells:
            self._check_child(c)
        self._cells = list(cells)

    @staticmethod
    def _check_child(cell):
        if not isinstance(cell, (Cell, NeuralNetworkCell)):
            raise WrongInputType("cells", type(cell), ["Cell", "NeuralNetworkCell"])

    # -- access -------------------------------------------------------------------------------
    def __getitem__(self, item):
        if isinstance(item, int):
            return self._cells[item]
        if isinstance(item, str):
            found = self._find(item)
            if found is None:
                raise KeyError(f"{self.get_type()} '{self._name}' has no cell named '{item}'")
            return found
        raise WrongInputType("item", type(item), ["int", "str"])

    def _find(self, name):
        for c in self._cells:
            if c.get_name() == name:
                return c
            if isinstance(c, Block):
                found = c._find(name)
                if found is not None:
                    return found
        return None

    def get_cell(self, name):
        return self[name]

    def get_cells(self) -> dict:
        """Every descendant cell (not container) by name, depth first."""
        cells = {}
        for c in self._cells:
            if isinstance(c, Block):
                cells.update(c.get_cells())
            else:
                cells[c.get_name()] = c
        return cells

    def items(self):
        return [(c.get_name(), c) for c in self._cells]

    def _leaf_cells(self):
        return list(self.get_cells().values())

    # -- modes, solvers -----------------------------------------------------------------------
    def learn(self):
        for c in self._cells:
            c.learn()
        return self

    def test(self):
        for c in self._cells:
            c.test()
        return self

    def set_solver(self, solver):
        """Give every trainable descendant its own copies of `solver`."""
        if not isinstance(solver, Solver):
            raise WrongInputType("solver", type(solver), ["Solver"])
        for c in self._cells:
            if isinstance(c, Block) or hasattr(c, "set_solver"):
                c.set_solver(solver)

    def set_back_propagate(self, value: bool):
        if not isinstance(value, bool):
            raise WrongInputType("value", type(value), ["bool"])
        for c in self._leaf_cells():
            if "back_propagate" in c._parameters:
                c.back_propagate = value

    def update(self):
        for c in self._cells:
            c.update()
            update_quantizer = getattr(c, "_update_activation_quantizer", None)
            if update_quantizer is not None:   # activation quantizers are not parameters of the cell
                update_quantizer()

    # -- parameters on disk ---------------------------------------------------------------------
    def export_free_parameters(self, dir_name: str, verbose=True):
        """Write the parameters of every descendant into `dir_name` as one set (see n2d2.parameter_files)."""
        export_set(dir_name, self._leaf_cells(), verbose=verbose)

    def import_free_parameters(self, dir_name: str, ignore_not_exists=False):
        """Read the set written by `export_free_parameters` (or by N2D2) back: all or nothing."""
        import_set(dir_name, self._leaf_cells(), ignore_not_exists=ignore_not_exists)

    def is_integral(self) -> bool:
        """True when every quantized cell has an integer bit-width (no quantizers yet: True)."""
        return True

    def to_deepnet_cell(self, provider, target=None, backend=None):
        """A compiled `DeepNetCell` of this block traced on a dummy batch of `provider.shape()`.

        `backend` ("numpy" or "c") overrides the choice made from `global_variables.default_model`.
        """
        from n2d2.cells.deepnet_cell import DeepNetCell

        return DeepNetCell.from_block(self, provider, target, backend=backend)

    # -- printing -----------------------------------------------------------------------------
    def _str_at(self, depth: int) -> str:
        text = f"'{self._name}' {self.get_type()}(\n"
        for i, c in enumerate(self._cells):
            child = c._str_at(depth + 1) if isinstance(c, Block) else str(c)
            text += "\t" * (depth + 1) + f"({i}): {child}\n"
        return text + "\t" * depth + ")"

    def __str__(self):
        return self._str_at(0)

    __repr__ = __str__


class Iterable(Block):
    """An ordered Block: `len`, iteration, positional indexing, insertion."""

    def __init__(self, cells, name=None):
        if type(self) is Iterable:
            raise TypeError("Iterable is abstract: use Sequence or Layer")
        super().__init__(cells, name)

    def __len__(self):
        return len(self._cells)

    def __iter__(self):
        return iter(self._cells)

    def insert(self, index: int, cell):
        if not isinstance(index, int):
            raise WrongInputType("index", type(index), ["int"])
        if index < 0:
            raise ValueError(f"Negative index {index} cannot be used to insert in '{self._name}'")
        self._check_child(cell)
        self._cells.insert(index, cell)

    def append(self, cell):
        self._check_child(cell)
        self._cells.append(cell)

    def remove(self, cell):
        self._cells.remove(cell)

    def index(self, cell) -> int:
        return self._cells.index(cell)


class Sequence(Iterable):
    """Calls its cells one after the other; an empty Sequence is the identity."""

    def __call__(self, x):
        for c in self._cells:
            x = c(x)
        return x


class Layer(Iterable):
    """Parallel branches: input `i` goes to branch `j` when `mapping[i][j]` is truthy.

    Returns an Interface of the branch outputs (feed it to ElemWise or a multi-input cell).
    """

    def __init__(self, cells, mapping=None, name=None):
        super().__init__(cells, name)
        if mapping is not None and not isinstance(mapping, list):
            raise WrongInputType("mapping", type(mapping), ["list"])
        self._mapping = mapping

    def __call__(self, x):
        inputs = x.get_tensors() if isinstance(x, Interface) else [x]
        if not isinstance(x, (Tensor, Interface)):
            raise WrongInputType("x", type(x), ["Tensor", "Interface"])
        mapping = self._mapping
        if mapping is None:
            mapping = [[1] * len(self._cells) for _ in inputs]
        if len(mapping) != len(inputs) or any(len(row) != len(self._cells) for row in mapping):
            raise ValueError(f"Layer '{self._name}': mapping must be {len(inputs)} x {len(self._cells)} "
                             "(inputs x branches)")
        outputs = []
        for j, branch in enumerate(self._cells):
            selected = [t for i, t in enumerate(inputs) if mapping[i][j]]
            if not selected:
                raise ValueError(f"Layer '{self._name}': branch {j} receives no input")
            arg = selected[0] if len(selected) == 1 else Interface(selected)
            out = branch(arg)
            outputs.extend(out.get_tensors() if isinstance(out, Interface) else [out])
        return Interface(outputs)
