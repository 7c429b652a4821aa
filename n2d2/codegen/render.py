"""The Jinja environment over the packaged templates (`n2d2/templates/`).

Templates see only what the renderer hands them. Filters: `cfloat` (a float literal C reads
back exactly) and, for every name that comes from a model file (graph, node, tensor, parameter,
network names), the sanitiser of `n2d2.names`: `cident` (an identifier), `c_comment` (text inside
a C/C++/Makefile comment), `c_string` (the contents of a C string literal), `md_code` (a
Markdown code span). A template never prints such a name without one of them; the hostile-names
test renders every template with names built to break out and checks it.
"""
import contextlib
import functools
import os

import numpy as np

from n2d2.codegen import artifact_cache
from n2d2.names import c_comment, c_identifier, c_string_literal, markdown_code
from n2d2.ops import activation as act_table

_env = None
_recorders = []      # sets receiving the names of the templates loaded (record_renders)


def cfloat(value) -> str:
    """A C float literal that round-trips float32 (`1.5f`, `-inf` as -INFINITY)."""
    v = float(np.float32(value))
    if np.isinf(v):
        return "INFINITY" if v > 0 else "(-INFINITY)"
    if np.isnan(v):
        return "NAN"
    return f"{v!r}f" if "e" in repr(v) or "." in repr(v) else f"{v!r}.0f"


cident = c_identifier      # the name templates and older callers use


def environment():
    global _env
    if _env is None:
        import jinja2

        class _Recording(jinja2.Environment):
            """Notes every template loaded (rendered, included, imported) for `record_renders`."""

            def get_template(self, name, *args, **kwargs):
                if _recorders:
                    # with the templates it imports or includes: a compiled template keeps its
                    # imports, so the second render of a kernel loads nothing new
                    used = _template_closure(str(name))
                    for seen in _recorders:
                        seen.update(used)
                return super().get_template(name, *args, **kwargs)

        _env = _Recording(loader=jinja2.PackageLoader("n2d2", "templates"), undefined=jinja2.StrictUndefined,
                          trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                          bytecode_cache=_bytecode_cache(jinja2))
        _env.filters.update(cfloat=cfloat, cident=c_identifier, c_comment=c_comment, c_string=c_string_literal,
                            md_code=markdown_code)
        # the `act` / `dact` macros (c/activation.c.j2): C expressions from the activation table
        _env.globals.update(act_c=functools.partial(act_table.c_forward, lit=cfloat),
                            dact_c=functools.partial(act_table.c_derivative, lit=cfloat),
                            act_clamp=functools.partial(act_table.c_clamp, lit=cfloat),
                            act_needs_input=act_table.needs_input_data)
    return _env


def _bytecode_cache(jinja2):
    """Compiled templates kept in the private compile cache (`templates/` in `$N2D2_CACHE`, read
    when used: tests move the cache): compiling the ~30 templates of a program took 0.6 s of
    every new process. Jinja checks each entry against its template's source; a folder that
    cannot be written only loses the saving."""
    class _InCompileCache(jinja2.FileSystemBytecodeCache):
        def _get_cache_filename(self, bucket):
            folder = os.path.join(artifact_cache.cache_dir(), "templates")
            os.makedirs(folder, mode=0o700, exist_ok=True)
            return os.path.join(folder, self.pattern % (bucket.key,))

        def load_bytecode(self, bucket):
            try:
                super().load_bytecode(bucket)
            except Exception:  # a damaged entry: compile the template again
                bucket.reset()

        def dump_bytecode(self, bucket):
            try:
                super().dump_bytecode(bucket)
            except OSError:
                pass

    return _InCompileCache(directory=".")


@functools.lru_cache(maxsize=None)
def _template_closure(name: str) -> frozenset:
    """`name` and every template it imports, includes or extends, recursively (static names)."""
    from jinja2 import meta

    env = environment()
    found, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in found:
            continue
        found.add(current)
        source = env.loader.get_source(env, current)[0]
        todo.extend(ref for ref in meta.find_referenced_templates(env.parse(source)) if ref)
    return frozenset(found)


def template_source(name: str) -> str:
    """The raw text of a packaged template file (a prelude pasted as is, a feature probe)."""
    env = environment()
    for seen in _recorders:
        seen.add(name)
    return env.loader.get_source(env, name)[0]


@contextlib.contextmanager
def record_renders():
    """Collect (into the yielded set) the names of the templates loaded meanwhile: lets a test
    check that a run went through every template."""
    seen = set()
    _recorders.append(seen)
    try:
        yield seen
    finally:
        _recorders.remove(seen)


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)


def template_exists(template: str) -> bool:
    import jinja2

    try:
        environment().get_template(template)
        return True
    except jinja2.TemplateNotFound:
        return False
