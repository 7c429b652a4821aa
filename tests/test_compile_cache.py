"""The compile cache cannot be used to run someone else's code (issue 11, findings 4, 5, 9).

A library planted in the cache under the name of an entry (the key is computable by anyone) must
not be loaded unless it is ours and matches its record; a truncated entry is rebuilt; the cache
folder is made private, and a foreign or unwritable one is replaced by a private temporary folder
with a warning; a very long graph name still compiles, leaving only the library and its record.
"""
import ctypes
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from n2d2.codegen import compiler
from n2d2.codegen.numpy_exec import Session

c_backend = pytest.importorskip("n2d2.codegen.c_backend")
pytestmark = pytest.mark.skipif(not c_backend.available(), reason="needs a C compiler")

SOURCE = "int n2d2_answer(void) { return 42; }\n"
OTHER_UID = 12345
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _use_cache(monkeypatch, path):
    monkeypatch.setenv("N2D2_CACHE", str(path))
    return str(path)


def _key(source=SOURCE):
    """The cache key, computed as anyone could from the public source and compiler flags."""
    cc = compiler.find_compiler()
    code = re.sub(r"/\*.*?\*/", "", source, flags=re.S)
    inputs = "\0".join([code, " ".join(compiler.default_flags()), compiler._compiler_version(cc), compiler._host_id()])
    return hashlib.sha256(inputs.encode()).hexdigest()


def _answer(path):
    lib = ctypes.CDLL(path)
    lib.n2d2_answer.restype = ctypes.c_int
    return lib.n2d2_answer()


def _plant(path, marker):
    """A library at `path` whose constructor writes `marker` (what an attacker's code would run)."""
    src = path + ".plant.c"
    with open(src, "w") as f:
        f.write(textwrap.dedent(f"""\
            #include <stdio.h>
            __attribute__((constructor)) static void planted(void) {{
                FILE *f = fopen("{marker}", "w");
                if (f) fclose(f);
            }}
            int n2d2_answer(void) {{ return 7; }}
            """))
    subprocess.run([compiler.find_compiler(), "-shared", "-fPIC", src, "-o", path], check=True)
    os.unlink(src)


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize("forgery", ["no record", "wrong hash", "foreign owner", "group writable"])
def test_planted_library_is_not_loaded(tmp_path, monkeypatch, forgery):
    cache = _use_cache(monkeypatch, tmp_path / "cache")
    os.makedirs(cache, mode=0o700)
    marker = str(tmp_path / "planted-code-ran")
    full = _key()
    key = full[:24]
    old_name = os.path.join(cache, f"n2d2_graph_{key}.so")           # the name an entry had before records
    _plant(old_name, marker)
    digest = _sha256(old_name)
    new_name = os.path.join(cache, f"n2d2_graph_{key}_{digest[:16]}.so")
    os.link(old_name, new_name)
    if forgery != "no record":
        record = {"format": 1, "key": key, "inputs_sha256": full, "library": os.path.basename(new_name),
                  "size": os.path.getsize(new_name), "sha256": "0" * 64 if forgery == "wrong hash" else digest}
        with open(os.path.join(cache, f"{key}.json"), "w") as f:
            json.dump(record, f)
        if forgery == "foreign owner":
            if os.geteuid() != 0:
                pytest.skip("needs root to give a file to another user")
            for path in (new_name, os.path.join(cache, f"{key}.json")):
                os.chown(path, OTHER_UID, OTHER_UID)
        if forgery == "group writable":
            os.chmod(new_name, 0o775)
    path = compiler.build_shared_library(SOURCE)
    answer = _answer(path)
    assert not os.path.exists(marker), "the planted library's constructor ran"
    assert answer == 42 and os.path.realpath(path) not in (os.path.realpath(old_name), os.path.realpath(new_name))


def test_truncated_library_is_rebuilt(tmp_path, monkeypatch):
    cache = _use_cache(monkeypatch, tmp_path / "cache")
    source = SOURCE + "".join(f"float n2d2_table_{i}[4096] = {{{i}}};\n" for i in range(16))  # a library of ~256 KB
    path = compiler.build_shared_library(source)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:                      # never loaded by this process: safe to truncate
        f.truncate(size // 2)
    script = textwrap.dedent(f"""\
        import ctypes, os
        from n2d2.codegen import compiler
        path = compiler.build_shared_library({source!r})
        lib = ctypes.CDLL(path)
        print(lib.n2d2_answer(), os.path.getsize(path))
        """)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), N2D2_CACHE=cache)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, f"exit {r.returncode} (-7 is SIGBUS): {r.stderr[-2000:]}"
    answer, rebuilt_size = r.stdout.split()
    assert answer == "42" and int(rebuilt_size) == size


def test_new_cache_is_private_and_open_cache_is_tightened(tmp_path, monkeypatch):
    fresh = _use_cache(monkeypatch, tmp_path / "fresh")
    compiler.build_shared_library(SOURCE)
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o700
    open_cache = _use_cache(monkeypatch, tmp_path / "open")
    os.makedirs(open_cache)
    os.chmod(open_cache, 0o777)
    path = compiler.build_shared_library(SOURCE)
    assert os.path.dirname(path) == os.path.realpath(open_cache)
    assert stat.S_IMODE(os.stat(open_cache).st_mode) == 0o700


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown to another user")
@pytest.mark.parametrize("through_link", [False, True])
def test_foreign_cache_is_refused(tmp_path, monkeypatch, through_link):
    foreign = tmp_path / "foreign"
    os.makedirs(foreign, mode=0o700)
    os.chown(foreign, OTHER_UID, OTHER_UID)
    configured = foreign
    if through_link:
        configured = tmp_path / "link"
        os.symlink(foreign, configured)
    _use_cache(monkeypatch, configured)
    with pytest.warns(UserWarning, match=f"owned by uid {OTHER_UID}"):
        path = compiler.build_shared_library(SOURCE)
    assert not os.path.realpath(path).startswith(str(foreign)) and os.listdir(foreign) == []
    folder = os.stat(os.path.dirname(path))
    assert folder.st_uid == os.geteuid() and stat.S_IMODE(folder.st_mode) == 0o700
    assert _answer(path) == 42


def test_unwritable_cache_falls_back_with_a_warning(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    _use_cache(monkeypatch, tmp_path / "file" / "sub")
    with pytest.warns(UserWarning, match="cannot be created"):
        path = compiler.build_shared_library(SOURCE)
    assert _answer(path) == 42
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700


def test_300_character_graph_name_compiles_and_leaves_only_library_and_record(tmp_path, monkeypatch):
    from tests.test_c_backend import _tiny_net

    cache = _use_cache(monkeypatch, tmp_path / "cache")
    net = _tiny_net()
    net.g.name = "a/b*/é " + "n" * 293
    prog = c_backend.CProgram(net.g, [net.g.topological_order()])
    assert set(prog.where.values()) == {"c"}
    prog.feed(net.feeds)
    prog.run_phase(0)
    session = Session(net.g)
    session.feed(net.feeds)
    session.run_nodes(net.g.topological_order())
    out = net.g.outputs[0]
    np.testing.assert_allclose(prog.view(out), session.values[out[0]][out[1]], rtol=1e-5, atol=1e-6)
    # besides compiled Jinja templates (render.py) and build locks (one empty file per key)
    entries = sorted(e for e in os.listdir(cache) if e not in ("templates", ".locks"))
    assert len(entries) == 2 and entries[0].endswith(".json") and entries[1].endswith(".so"), entries
    assert max(len(e) for e in entries) <= 80


def test_compiler_failure_leaves_no_temporary_file(tmp_path, monkeypatch):
    cache = _use_cache(monkeypatch, tmp_path / "cache")
    with pytest.raises(compiler.CompilerError, match="broken"):
        compiler.build_shared_library("this is not C;\n", name="broken" + "x" * 300)
    entries = [e for e in os.listdir(cache) if e != ".locks"]  # build locks stay (one empty file per key)
    assert len(entries) == 1 and entries[0].endswith(".failed.c") and len(entries[0]) <= 80, entries


def test_a_second_load_does_not_hash_the_library_again(tmp_path, monkeypatch):
    _use_cache(monkeypatch, tmp_path / "cache")
    first = compiler.build_shared_library(SOURCE)
    hashed = []
    real = compiler.artifact_cache._sha256_file
    monkeypatch.setattr(compiler.artifact_cache, "_sha256_file", lambda p: hashed.append(p) or real(p))
    assert compiler.build_shared_library(SOURCE) == first and hashed == []


def test_concurrent_builds_of_one_key_all_load(tmp_path):
    cache = str(tmp_path / "cache")
    source = SOURCE + "/* concurrent */ int n2d2_other(void) { return 1; }\n"
    script = textwrap.dedent(f"""\
        import ctypes
        from n2d2.codegen import compiler
        print(ctypes.CDLL(compiler.build_shared_library({source!r})).n2d2_answer())
        """)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), N2D2_CACHE=cache)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(4)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert all(rc == 0 and out.strip() == "42" for out, err, rc in results), results
    assert not [e for e in os.listdir(cache) if e.startswith(".build-")]


def test_compiled_templates_are_cached_privately_and_damaged_entries_are_recompiled(tmp_path, monkeypatch):
    from n2d2.codegen import render

    cache = _use_cache(monkeypatch, tmp_path / "cache")
    monkeypatch.setattr(render, "_env", None)  # a new process: nothing compiled in memory
    first = render.render("c/program.c.j2", graph_name="g", nodes=[], arena_bytes=0, kernels=[], segments=[],
                          functions=[], parts=1)
    folder = tmp_path / "cache" / "templates"
    assert os.path.realpath(folder).startswith(os.path.realpath(cache))
    entries = os.listdir(folder)
    assert entries and stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(folder / e).st_mode) & 0o077 == 0 for e in entries)
    compiled = []
    monkeypatch.setattr(render, "_env", None)
    env = render.environment()
    original = env.compile
    monkeypatch.setattr(env, "compile", lambda *a, **k: compiled.append(a) or original(*a, **k))
    assert render.render("c/program.c.j2", graph_name="g", nodes=[], arena_bytes=0, kernels=[], segments=[],
                         functions=[], parts=1) == first
    assert compiled == []  # read from the cache, not compiled again
    for e in entries:
        (folder / e).write_bytes((folder / e).read_bytes()[:40] + b"damaged")
    monkeypatch.setattr(render, "_env", None)
    assert render.render("c/program.c.j2", graph_name="g", nodes=[], arena_bytes=0, kernels=[], segments=[],
                         functions=[], parts=1) == first


def _counting_compiler(folder):
    """A C compiler that logs every build (an `-o` in its arguments) to `folder/builds`, then runs gcc."""
    log = os.path.join(folder, "builds")
    cc = os.path.join(folder, "cc")
    with open(cc, "w") as f:
        f.write(f'#!/bin/sh\ncase " $* " in *" -o "*) echo "$$" >> "{log}";; esac\n'
                f'exec "{compiler.find_compiler()}" "$@"\n')
    os.chmod(cc, 0o755)
    return cc, log


def test_racing_processes_and_threads_build_each_entry_once_and_never_see_a_partial_library(tmp_path):
    """4 processes x 2 threads start at the same instant on one fresh cache: all build the same new
    program and each process one of its own, while a reader loads every library that appears.
    Every entry is compiled once (the others wait on its lock and load it), every load answers."""
    cache = str(tmp_path / "cache")
    cc, log = _counting_compiler(str(tmp_path))
    tables = "".join(f"float n2d2_table_{i}[4096] = {{{i}}};\n" for i in range(16))  # ~256 KB: a slow write
    shared = "int n2d2_answer(void) { return 42; }\n" + tables
    start = time.time() + 8  # after every interpreter has started
    builder = textwrap.dedent(f"""\
        import ctypes, sys, threading, time
        from n2d2.codegen import compiler
        own = {shared!r}.replace("42", sys.argv[1])
        answers = []
        def build(source):
            answers.append(ctypes.CDLL(compiler.build_shared_library(source)).n2d2_answer())
        threads = [threading.Thread(target=build, args=(s,)) for s in ({shared!r}, {shared!r}, own)]
        while time.time() < {start}:
            time.sleep(0.001)
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(sorted(answers))
        """)
    reader = textwrap.dedent(f"""\
        import ctypes, os, time
        loaded = set()
        while time.time() < {start} + 240 and len(loaded) < 5:
            for name in os.listdir({cache!r}) if os.path.isdir({cache!r}) else []:
                if name.endswith(".so") and name not in loaded:
                    ctypes.CDLL(os.path.join({cache!r}, name)).n2d2_answer()  # a partial file fails here
                    loaded.add(name)
        print(len(loaded))
        """)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), N2D2_CACHE=cache, CC=cc,
               OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", builder, str(43 + k)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for k in range(4)]
    procs.append(subprocess.Popen([sys.executable, "-c", reader], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env))
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert all(rc == 0 for _, _, rc in results), results
    assert [out.strip() for out, _, _ in results] == [f"[42, 42, {43 + k}]" for k in range(4)] + ["5"], results
    with open(log) as f:
        assert len(f.read().split()) == 5, "an entry was compiled more than once"
    assert len([e for e in os.listdir(cache) if e.endswith(".so")]) == 5
    assert not [e for e in os.listdir(cache) if e.startswith(".build-")]


def test_racing_cuda_compile_checks_of_one_source_all_pass(tmp_path, monkeypatch):
    """`compile_check` writes the source it checks into the cache: 8 threads checking the same
    sources at once each write under a name of their own (a shared temporary name made one
    thread's rename fail with FileNotFoundError)."""
    from concurrent.futures import ThreadPoolExecutor

    from n2d2.codegen import cuda_backend

    _use_cache(monkeypatch, tmp_path / "cache")
    nvcc = tmp_path / "nvcc"
    nvcc.write_text("#!/bin/sh\nexit 0\n")  # accepts everything: this is about the files, not the compiler
    nvcc.chmod(0o755)
    monkeypatch.setenv("NVCC", str(nvcc))
    sources = [f'extern "C" __global__ void k{i}(float *a) {{ a[0] = {i}; }}\n' * 200 for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(cuda_backend.compile_check, [s for s in sources for _ in range(8)]))
    for source, path in zip(sources, paths[::8]):
        with open(path) as f:
            assert f.read() == source
    assert not [e for e in os.listdir(tmp_path / "cache") if e.endswith(".tmp") or e.startswith(".tmp")]
