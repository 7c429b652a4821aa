"""PNG plots of the logs that targets and statistics write (confusion matrix, success, loss, stats).

matplotlib is imported inside each function, never at module import, so that `import n2d2`
does not pull it in. Figures are drawn on an Agg canvas directly (no pyplot global state, no
backend switch in the user's process) and saved to a temporary name in the destination
directory, then renamed: a crash never leaves half a PNG behind.
"""
import os

import numpy as np

from n2d2.utils import write_inside


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str):
    """Render `fig` to `path` (format from the extension, default PNG) atomically, through the
    project's one writer (`utils.write_inside`)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format=os.path.splitext(path)[1][1:].lower() or "png")
    path = os.path.abspath(path)
    write_inside(os.path.dirname(path), os.path.basename(path), buffer.getvalue())


def confusion_matrix_png(path: str, matrix, labels=None):
    """Heat map of a confusion matrix (rows: target, columns: estimated) with counts and row ratios.

    The diagonal is coloured by its row ratio on a cyan scale, off-diagonal cells on a red
    scale (as upstream's gnuplot palette), so that errors stand out.
    """
    m = np.asarray(matrix, dtype=np.float64)
    k = m.shape[0]
    rows = m.sum(axis=1, keepdims=True)
    ratio = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    total, correct = m.sum(), np.trace(m)
    size = min(4.0 + 0.45 * k, 24.0)
    fig = _figure(size + 1.5, size)
    ax = fig.add_subplot(1, 1, 1)
    from matplotlib.colors import ListedColormap

    # Colour value: ratio on the diagonal (0..1), -ratio elsewhere (-1..0).
    signed = np.where(np.eye(k, dtype=bool), ratio, -ratio)
    colours = np.vstack([np.linspace([0.85, 0.0, 0.0], [1.0, 0.93, 0.93], 128),
                         np.linspace([1.0, 1.0, 1.0], [0.0, 0.8, 0.8], 128)])
    ax.imshow(signed, cmap=ListedColormap(colours), vmin=-1.0, vmax=1.0, interpolation="nearest")
    if k <= 50:
        for t in range(k):
            for e in range(k):
                if m[t, e] > 0:
                    text = f"{int(m[t, e])}" if k > 10 else f"{int(m[t, e])}\n{100.0 * ratio[t, e]:.2f}%"
                    ax.text(e, t, text, ha="center", va="center", fontsize=7 if k <= 10 else 5)
    names = [str(n) for n in (labels if labels is not None else range(k))]
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_yticklabels(names, fontsize=7)
    error = 100.0 * (1.0 - correct / total) if total > 0 else 0.0
    ax.set_xlabel(f"Estimated class (total correct: {int(correct)}, total misclassified: "
                  f"{int(total - correct)}, error rate: {error:.2f}%)", fontsize=8)
    ax.set_ylabel("Target (actual) class", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def success_png(path: str, success, averages, validation=None, best=None):
    """Success rate per step (light) with its running average; optional validation points.

    `validation` is a list of (step, score) drawn as markers; `best` the best validation score.
    """
    fig = _figure(8, 5)
    ax = fig.add_subplot(1, 1, 1)
    steps = np.arange(1, len(success) + 1)
    if len(success):
        ax.plot(steps, success, color="lightgray", linewidth=0.8, label="batch success")
        ax.plot(steps, averages, color="tab:blue", linewidth=1.2, label="average")
        ax.text(0.5, 0.1, f"Final: {100.0 * averages[-1]:.4g}%", transform=ax.transAxes, ha="center")
    if validation:
        vs, vv = zip(*validation)
        ax.plot(vs, vv, "o-", color="tab:red", label="Validation")
        if best is not None:
            ax.text(0.5, 0.15, f"Best validation: {100.0 * best:.4g}%", transform=ax.transAxes, ha="center")
    ax.set_xlabel("# Learn steps (batches)" if validation else "# steps (batches)")
    ax.set_ylabel("Success rate")
    ax.set_ylim(0.0, 1.02)
    ax.grid(True)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def loss_png(path: str, steps, losses, label: str = "Learn loss", learn=None):
    """A loss curve against the number of Learn steps (batches) done.

    `learn`: the Learn (step, loss) points, drawn lightly behind a Validation or Test curve
    so that both share the x-axis."""
    fig = _figure(8, 5)
    ax = fig.add_subplot(1, 1, 1)
    if learn:
        ax.plot([s for s, _ in learn], [v for _, v in learn], color="lightgray", linewidth=0.8,
                label="Learn loss")
    if len(losses):
        style = "-" if learn is None else "o-"
        ax.plot(steps, losses, style, color="tab:blue" if learn is None else "tab:red", linewidth=0.8, label=label)
    ax.set_xlabel("# Learn steps (batches)")
    ax.set_ylabel("Loss")
    ax.grid(True)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def stats_png(path: str, names, columns):
    """Bar charts of per-cell statistics: for each (title, values) a log-scale and a % panel."""
    n = len(columns)
    fig = _figure(max(8.0, 0.5 * len(names) * 2 + 4), 3.2 * n)
    x = np.arange(len(names))
    for i, (title, values) in enumerate(columns):
        values = np.asarray(values, dtype=np.float64)
        total = values.sum()
        for j, relative in enumerate((False, True)):
            ax = fig.add_subplot(n, 2, 2 * i + j + 1)
            shown = 100.0 * values / total if (relative and total > 0) else values
            ax.bar(x, shown, width=0.5, color="tab:blue")
            if not relative and np.any(values > 0):
                ax.set_yscale("log")
            ax.set_ylabel(f"{title} (%)" if relative else title, fontsize=8)
            ax.set_xticks(x)
            ax.set_xticklabels(names, rotation=90, fontsize=7)
            ax.grid(True, axis="y")
    fig.tight_layout()
    save_figure(fig, path)
