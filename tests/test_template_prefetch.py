"""The template prefetch (n2d2.codegen.render.prefetch_templates): a forked child compiles the C
templates into the bytecode cache while the parent traces; what the parent renders is the same,
the cache ends up holding every template, and the parent waits only for a template the child is
compiling."""
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from n2d2.codegen import render

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a training program of tests.test_backend_interface's small network lowered (rendered, not
# compiled) in a fresh process whose cache is $N2D2_CACHE
LOWER = textwrap.dedent("""\
    import json, os, sys
    from n2d2.codegen import backends, render
    from n2d2.ir.autodiff import build_training_graph
    from tests.test_backend_interface import _phases, small_net

    backend = backends.get("c")
    backend.prepare()
    started = render._prefetch is not None
    tg = build_training_graph(small_net().g)
    source = backend.lower(tg.graph, _phases(tg), training=True).source
    if started:
        render._prefetch.reaper.join(60)
    print(json.dumps({"started": started, "source": source,
                      "child_cpu": render._prefetch.cpu_s if started else None}))
    """)


def _lower(cache, prefetch):
    env = dict(os.environ, N2D2_CACHE=str(cache), N2D2_TEMPLATE_PREFETCH="1" if prefetch else "0",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", LOWER], env=env, capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _c_templates():
    env = render.environment()
    return env.list_templates(filter_func=lambda n: n.startswith("c/") and n.endswith(".j2"))


@pytest.mark.skipif(not hasattr(os, "fork") or len(os.sched_getaffinity(0)) < 2, reason="needs fork and 2 CPUs")
def test_prefetch_renders_the_same_program_and_leaves_every_template_cached(tmp_path):
    plain = _lower(tmp_path / "plain", prefetch=False)
    assert not plain["started"]
    assert not os.path.exists(tmp_path / "plain" / "templates") or \
        len(os.listdir(tmp_path / "plain" / "templates")) < len(_c_templates())  # only what it rendered
    fetched = _lower(tmp_path / "fetched", prefetch=True)
    assert fetched["started"] and fetched["child_cpu"] > 0
    assert fetched["source"] == plain["source"] and "void n2d2_segment_0" in fetched["source"]
    entries = os.listdir(tmp_path / "fetched" / "templates")
    assert not [e for e in entries if not e.endswith(".cache")]  # no temporary file left behind
    # the child went on after the lowering (nothing stopped it): it cached the templates the
    # lowering did not need too
    assert len(entries) == len(_c_templates())
    # a process on that cache starts no child and renders the same
    again = _lower(tmp_path / "fetched", prefetch=True)
    assert not again["started"] and again["source"] == plain["source"]


def _prefetch_on_pipe():
    """A _Prefetch reading a pipe this test writes (its 'child' is a process that exits at once)."""
    read, write = os.pipe()
    pid = os.posix_spawn("/bin/true", ["true"], os.environ)
    return render._Prefetch(pid, read), write


def test_the_parent_waits_only_for_the_template_the_child_is_compiling():
    prefetch, write = _prefetch_on_pipe()
    os.write(write, b"-c/done.j2\n+c/busy.j2\n")
    t0 = time.perf_counter()
    prefetch.wait_for("c/other.j2")   # not started by the child: the parent compiles it, no wait
    prefetch.wait_for("c/done.j2")
    assert time.perf_counter() - t0 < 0.15
    assert prefetch.current == "c/busy.j2" and "c/done.j2" in prefetch.done
    finish = threading.Timer(0.3, os.write, (write, b"-c/busy.j2\n+c/next"))   # a report split over writes
    finish.start()
    t0 = time.perf_counter()
    prefetch.wait_for("c/busy.j2")
    assert time.perf_counter() - t0 >= 0.25 and "c/busy.j2" in prefetch.done
    os.write(write, b".j2\n")
    prefetch.wait_for("c/x.j2")
    assert prefetch.current == "c/next.j2"
    os.close(write)   # the child leaves while compiling c/next.j2: the parent stops waiting
    prefetch.wait_for("c/next.j2")
    assert prefetch.fd is None and prefetch.current is None
    prefetch.reaper.join(10)
    assert prefetch.cpu_s is not None


def test_a_stuck_child_is_given_up(monkeypatch):
    monkeypatch.setattr(render, "_PREFETCH_PATIENCE_S", 0.2)
    prefetch, write = _prefetch_on_pipe()
    os.write(write, b"+c/stuck.j2\n")
    t0 = time.perf_counter()
    prefetch.wait_for("c/stuck.j2")
    assert 0.15 < time.perf_counter() - t0 < 5 and prefetch.fd is None
    os.close(write)


def test_no_prefetch_with_another_thread_running_or_when_turned_off(monkeypatch):
    monkeypatch.setattr(render, "_prefetch", None)
    monkeypatch.setattr(os, "fork", lambda: pytest.fail("forked"))
    monkeypatch.setenv("N2D2_TEMPLATE_PREFETCH", "0")
    render.prefetch_templates("c/")
    monkeypatch.setenv("N2D2_TEMPLATE_PREFETCH", "1")
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        render.prefetch_templates("c/")
    finally:
        stop.set()
        other.join()
    assert render._prefetch is None
