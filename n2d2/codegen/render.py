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
import select
import sys
import threading
import time

import numpy as np

from n2d2.codegen import artifact_cache
from n2d2.names import c_comment, c_identifier, c_string_literal, markdown_code
from n2d2.ops import activation as act_table

_env = None
_recorders = []      # sets receiving the names of the templates loaded (record_renders)
_prefetch = None     # the child compiling templates for this process (prefetch_templates), once
_PREFETCH_PATIENCE_S = 10.0   # the longest wait for one report of that child


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
            return self._file_of_key(bucket.key)

        def _file_of_key(self, key):
            folder = os.path.join(artifact_cache.cache_dir(), "templates")
            os.makedirs(folder, mode=0o700, exist_ok=True)
            return os.path.join(folder, self.pattern % (key,))

        def cached_file(self, name, filename):
            """Where template `name` (at `filename`) is cached (present or not)."""
            return self._file_of_key(self.get_cache_key(name, filename))

        def get_bucket(self, environment, name, filename, source):
            if _prefetch is not None:
                _prefetch.wait_for(name)
            return super().get_bucket(environment, name, filename, source)

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


class _Prefetch:
    """The forked child of `prefetch_templates`, as its reports on a pipe tell: `+name` when it
    starts compiling a template, `-name` once that template is in the bytecode cache."""

    def __init__(self, pid, fd):
        os.set_blocking(fd, False)
        self.fd = fd
        self.buffer = b""
        self.current = None      # the template the child is compiling
        self.done = set()
        self.waited_s = 0.0      # wall time this process spent waiting for it
        self.cpu_s = None        # its CPU time (user + system), once it has exited
        self.reaper = threading.Thread(target=self._reap, args=(pid,), daemon=True)
        self.reaper.start()

    def _reap(self, pid):
        _, _, usage = os.wait4(pid, 0)
        self.cpu_s = usage.ru_utime + usage.ru_stime

    def _read(self, block):
        """Take in the reports written so far (with `block`, wait for at least one more)."""
        if self.fd is None:
            return
        if block and not select.select([self.fd], [], [], _PREFETCH_PATIENCE_S)[0]:
            self.stop()  # a stuck child: compile here
            return
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        if not data:  # the child has left
            self.stop()
            return
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        for line in lines:
            name = line[1:].decode()
            if line[:1] == b"+":
                self.current = name
            else:
                self.done.add(name)
                self.current = None

    def wait_for(self, name):
        """Return once the child has cached `name`, when it is compiling it; else at once (this
        process compiles a template the child has not started rather than wait for it)."""
        self._read(block=False)
        t0 = time.perf_counter()
        while self.current == name and self.fd is not None:
            self._read(block=True)
        self.waited_s += time.perf_counter() - t0

    def stop(self):
        """Stop reading: the child leaves at its next report (after the template it is on)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self.current = None


def stop_prefetch():
    """The templates are rendered (a backend's lowering is done): the prefetch child, if any,
    stops instead of taking a core from the compiler."""
    if _prefetch is not None:
        _prefetch.stop()


def prefetch_templates(prefix: str):
    """Compile the templates named `prefix...` (largest first) into the bytecode cache in a forked
    child while this process goes on (a backend calls it before tracing a network): on an empty
    cache Jinja's compile of a C program's templates (~0.45 s, Conv.c.j2 0.3 s) would otherwise
    follow the trace on the same core. A template this process needs meanwhile is waited for
    when the child is compiling it (`get_bucket`), else compiled here (the child then finds it
    cached and goes on). Once per process; only where there is
    a second CPU, a template is missing from the cache, and forking is safe: no other Python
    thread (one could hold a lock the child needs) and no MPI (`mpi4py` imported).
    `$N2D2_TEMPLATE_PREFETCH=0` turns it off."""
    global _prefetch
    if _prefetch is not None or os.environ.get("N2D2_TEMPLATE_PREFETCH", "1") == "0" or not hasattr(os, "fork") \
            or threading.active_count() > 1 or "mpi4py" in sys.modules:
        return
    try:
        if len(os.sched_getaffinity(0)) < 2:
            return
    except (AttributeError, OSError):
        return
    env = environment()
    cache = env.bytecode_cache
    sources = {}
    for name in env.list_templates(filter_func=lambda n: n.startswith(prefix) and n.endswith(".j2")):
        source, filename, _ = env.loader.get_source(env, name)
        if not os.path.exists(cache.cached_file(name, filename)):
            sources[name] = (source, filename)
    if not sources:
        return
    names = sorted(sources, key=lambda n: -len(sources[n][0]))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: compile, report, leave without running the parent's exit handlers
        try:
            os.close(read)
            for name in names:
                source, filename = sources[name]
                os.write(write, f"+{name}\n".encode())
                bucket = cache.get_bucket(env, name, filename, source)
                if bucket.code is None:  # else this process has compiled it meanwhile
                    bucket.code = env.compile(source, name, filename)
                    cache.set_bucket(bucket)
                os.write(write, f"-{name}\n".encode())
        finally:
            os._exit(0)
    os.close(write)
    _prefetch = _Prefetch(pid, read)


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
