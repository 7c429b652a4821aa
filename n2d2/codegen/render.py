"""The Jinja environment over the packaged templates (`n2d2/templates/`).

Templates see only what the renderer hands them. Filters: `cfloat` (a float literal C reads
back exactly), `cident` (a C identifier from any node name).
"""
import re

import numpy as np

_env = None


def cfloat(value) -> str:
    """A C float literal that round-trips float32 (`1.5f`, `-inf` as -INFINITY)."""
    v = float(np.float32(value))
    if np.isinf(v):
        return "INFINITY" if v > 0 else "(-INFINITY)"
    if np.isnan(v):
        return "NAN"
    return f"{v!r}f" if "e" in repr(v) or "." in repr(v) else f"{v!r}.0f"


def cident(name: str) -> str:
    """A valid C identifier derived from `name` (node names may hold any character)."""
    ident = re.sub(r"[^0-9A-Za-z_]", "_", str(name))
    return ident if ident and not ident[0].isdigit() else "n_" + ident


def environment():
    global _env
    if _env is None:
        import jinja2

        _env = jinja2.Environment(loader=jinja2.PackageLoader("n2d2", "templates"), undefined=jinja2.StrictUndefined,
                                  trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
        _env.filters["cfloat"] = cfloat
        _env.filters["cident"] = cident
    return _env


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)


def template_exists(template: str) -> bool:
    import jinja2

    try:
        environment().get_template(template)
        return True
    except jinja2.TemplateNotFound:
        return False
