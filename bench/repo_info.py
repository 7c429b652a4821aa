"""Which tree a benchmark measured: the short commit id of the repository (for RESULTS.md)."""
import os
import subprocess


def git_commit() -> str:
    """`git rev-parse --short HEAD` of this repository, or "?" when git is not there."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "?"
    except OSError:
        return "?"
