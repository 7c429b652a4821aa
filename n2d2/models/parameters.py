"""Counting a model's trainable parameters (as torch's `sum(p.numel())` would)."""
from n2d2.cells.cell import Block


def _cell_parameters(cell) -> int:
    count = 0
    if hasattr(cell, "_nb_weight_values"):      # Conv/Deconv: connected kernels only
        count += cell._nb_weight_values()
    elif getattr(cell, "_weights", None) is not None:
        count += int(cell._weights.size)
    if hasattr(cell, "_scales"):                 # BatchNorm2d: scales and biases (not the statistics)
        count += int(cell._scales.size)
    if getattr(cell, "_biases", None) is not None:
        count += int(cell._biases.size)
    return count


def count_parameters(model) -> int:
    """Trainable values of a cell or container: weights of connected kernels, biases, BatchNorm
    scales and biases (moving statistics excluded)."""
    cells = model.get_cells().values() if isinstance(model, Block) else [model]
    return sum(_cell_parameters(c) for c in cells)
