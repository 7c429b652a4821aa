"""The op registry: every op is defined once (n2d2/ir/registry.py lists the modules), declares
what passes and backends ask about, and lowers to C / CUDA or says why not; module-level
imports of n2d2.ir, n2d2.ops and n2d2.codegen have no cycle; Scaling attributes are plain data."""
import ast
import inspect
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from n2d2.codegen import c_backend, numpy_exec
from n2d2.codegen.render import template_exists
from n2d2.ir import ops as op_registry
from n2d2.ir.graph import Graph
from n2d2.ir.lowering import Unsupported
from n2d2.ir.passes import fuse_elementwise_chains
from n2d2.ops import scaling as scaling_ops
from n2d2.scaling import DoubleShiftScaling, FixedPointScaling, FloatingPointScaling, SingleShiftScaling
from tests.conftest import rel_err

ROOT = pathlib.Path(__file__).resolve().parent.parent
OpDef = op_registry.OpDef
#: ops whose template exists but whose node the backend handles itself (the fused SGD update)
BACKEND_HANDLED = {"Update"}


def _defs():
    return op_registry.definitions()


def _overrides(op, method):
    return getattr(type(op), method) is not getattr(OpDef, method)


# -- the registry ------------------------------------------------------------------------------------
def test_every_op_is_described():
    defs = _defs()
    assert len(defs) > 50
    for name, op in defs.items():
        cls = type(op)
        assert op.name == name
        # Onnx* ops are documented as a family by their module and base (n2d2.ir.tensor_ops)
        doc = cls.__dict__.get("__doc__") if not name.startswith("Onnx") else inspect.getdoc(cls)
        assert doc and doc.strip(), f"op {name} ({cls.__module__}) has no docstring"
        shape_rule = any(_overrides(op, m) for m in ("_infer", "infer", "infer_types")) or op.elementwise
        assert shape_rule, f"op {name} has no shape rule"
        for prop in OpDef.PROPERTIES:
            value = getattr(op, prop)
            assert value is None or isinstance(value, (bool, str, tuple)), f"{name}.{prop} = {value!r}"
        assert op.passthrough in (None, "always", "inference")


def test_lowering_is_declared_or_refused_with_a_reason():
    defs = _defs()
    for name, op in defs.items():
        for backend, method, template in (("C", "lower_c", f"c/ops/{name}.c.j2"),
                                          ("CUDA", "lower_cuda", f"cuda/ops/{name}.cu.j2")):
            if _overrides(op, method):
                assert template_exists(template), f"{name}.{method} without its template {template}"
            else:
                answer = getattr(op, method)(None, None, False)
                assert isinstance(answer, Unsupported) and name in answer.reason
                assert name in BACKEND_HANDLED or not template_exists(template), \
                    f"template {template} exists but op {name} has no {method}"
        if _overrides(op, "lower_cuda"):
            assert _overrides(op, "plan_cuda_forward"), f"{name} lowers to CUDA without a launch plan"
        else:
            assert not op.cuda_backward


def test_properties_replace_the_old_op_lists():
    defs = _defs()

    def having(prop):
        return {n for n, op in defs.items() if getattr(op, prop)}

    assert having("carries_activation") == {"Conv", "Fc", "Deconv", "ElemWise", "BatchNorm", "Pool"}
    assert having("epilogue_anchor") == {"Conv", "Fc", "Deconv", "BatchNorm"}
    assert having("keeps_sign") == {"Identity", "Dropout", "Concat", "Padding", "Reshape", "Transpose",
                                    "Activation"}
    assert having("folds_batchnorm") == {"Conv", "Fc", "Deconv"}
    assert having("aliases_inputs") == {"Concat"}
    assert {n for n, op in defs.items() if op.passthrough} == {"Identity", "Activation", "Dropout"}
    assert {n for n, op in defs.items() if op.cuda_backward} == {
        "Conv", "Fc", "Pool", "Activation", "Dropout", "Reshape", "Concat", "ElemWise", "Epilogue", "Softmax",
        "BatchNorm", "Padding",
        # issue 12, onnxk: the Onnx* kernels of templates/cuda/onnx.cu.j2
        "OnnxAdd", "OnnxSub", "OnnxMul", "OnnxDiv", "OnnxLayerNormalization", "OnnxSlice", "OnnxTranspose",
        "OnnxReshape", "OnnxNode",
        # issue 12, matmul: MatMul and Erf
        "OnnxMatMul", "OnnxErf",
        # issue 12, cudaloose: LRN (templates/cuda/ops/LRN.cu.j2)
        "LRN",
        # issue 13, qat: the fake-quantizers (templates/cuda/ops/FakeQuantize.cu.j2)
        "FakeQuantize"}
    assert defs["Pool"].preserves_sign({"mapping": None}) and not defs["Pool"].preserves_sign({"mapping": 1})
    assert not defs["Conv"].batchnorm_fold_ok({"sub_sample": (2, 1)}) and defs["Conv"].batchnorm_fold_ok({})


@pytest.mark.parametrize("name", ["Epilogue", "OnnxAdd", "AddN", "Grad", "Update", "Conv", "Transformation"])
def test_get_works_in_a_fresh_interpreter(name):
    code = ("import sys\nfrom n2d2.ir import ops\nop = ops.get(%r)\n"
            "print(type(op).__name__, 'onnx' in sys.modules, 'networkx' in sys.modules)" % name)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [name, "False", "False"]   # found, without the onnx package nor networkx


def test_unknown_op_names_the_node_and_the_known_ops():
    with pytest.raises(Exception, match=r"node 'n1': unknown op 'Nope' \(known: .*Conv"):
        op_registry.get("Nope", node="n1")


# -- no import cycle -----------------------------------------------------------------------------------
def _module_name(path):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _module_level_imports(tree, module, is_package, known):
    """Modules imported by statements executed at import time (not inside def / class bodies)."""
    out = set()

    def visit(stmts):
        for st in stmts:
            if isinstance(st, ast.Import):
                out.update(a.name for a in st.names)
            elif isinstance(st, ast.ImportFrom):
                base = st.module or ""
                if st.level:
                    pkg = module.split(".") if is_package else module.split(".")[:-1]
                    pkg = pkg[:len(pkg) - st.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                out.add(base)
                out.update(f"{base}.{a.name}" for a in st.names if f"{base}.{a.name}" in known)
            elif isinstance(st, (ast.If, ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for sub in getattr(st, field, []) or []:
                        visit(sub.body if isinstance(sub, ast.ExceptHandler) else [sub])
    visit(tree.body)
    # importing a.b.c runs a/__init__ and a/b/__init__ too, except the packages that contain
    # this module (they are being imported already: the usual package pattern, not a cycle)
    for name in list(out):
        parts = name.split(".")
        out.update(".".join(parts[:k]) for k in range(1, len(parts)))
    own = module.split(".")
    ancestors = {".".join(own[:k]) for k in range(1, len(own) + (1 if is_package else 0))}
    return {m for m in out if m in known and m != module and m not in ancestors}


def test_no_module_level_import_cycle():
    files = sorted((ROOT / "n2d2").rglob("*.py"))
    known = {_module_name(p): p for p in files}
    edges = {m: _module_level_imports(ast.parse(p.read_text()), m, p.name == "__init__.py", known)
             for m, p in known.items()}
    scope = ("n2d2.ir", "n2d2.ops", "n2d2.codegen")
    state, cycles = {}, []

    def dfs(m, stack):
        state[m] = 1
        stack.append(m)
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                if any(c.startswith(scope) for c in cycle):
                    cycles.append(" -> ".join(cycle))
            elif d not in state:
                dfs(d, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(known):
        if m not in state:
            dfs(m, [])
    assert not cycles, "module-level import cycles:\n" + "\n".join(cycles)
    # and the op modules never import a backend
    for m, deps in edges.items():
        if m.startswith(("n2d2.ops", "n2d2.ir")):
            assert not any(d.startswith("n2d2.codegen") for d in deps), (m, deps)


# -- Scaling: plain-data attributes -----------------------------------------------------------------------
SCALINGS = {
    "float": FloatingPointScaling([0.5, -1.5, 2.0]),
    "float_clipped": FloatingPointScaling([0.5, -1.5, 2.0], True, [0.8, 1.2, 0.3]),
    "fixed": FixedPointScaling(4, [3, -5, 7], True, [2.0, 1.0, 3.0]),
    "single_shift": SingleShiftScaling([1, 2, 0]),
    "double_shift": DoubleShiftScaling([(1, 2), (0, 1), (2, 3)]),
}


def _scaling_graph(scaling, rng):
    g = Graph("s")
    g.add_input("x", (2, 3, 4, 5), "float32")
    g.add_op("sc", "Scaling", ["x"], {"scaling": scaling, "activation": None})
    g.set_outputs(["sc"])
    return g, {"x": (rng.standard_normal((2, 3, 4, 5)) * 3).astype(np.float32)}


@pytest.mark.parametrize("kind", sorted(SCALINGS))
def test_scaling_attribute_is_plain_data_and_runs_the_reference(kind):
    rng = np.random.default_rng(3)
    scaling = SCALINGS[kind]
    g, feeds = _scaling_graph(scaling, rng)
    spec = g.attrs("sc")["scaling"]
    assert isinstance(spec, tuple) and spec == scaling.ir_spec()
    assert spec == eval(repr(spec))    # plain data: survives a repr round trip
    (y,) = numpy_exec.run(g, feeds)
    np.testing.assert_array_equal(y, scaling.forward(feeds["x"]))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_array_equal(scaling_ops.scaling_backward(spec, dy, feeds["x"]), scaling.backward(dy, feeds["x"]))


def test_scaling_c_kernel_reads_the_spec_and_integer_modes_say_why_not():
    rng = np.random.default_rng(4)
    for kind in ("float", "float_clipped", "fixed"):
        g, feeds = _scaling_graph(SCALINGS[kind], rng)
        ref = numpy_exec.run(g, feeds)[0]
        p = c_backend.CProgram(g, [g.topological_order()])
        p.feed(feeds)
        p.run_phase(0)
        assert rel_err(p.view(("sc", 0)), ref) < 1e-6
        if kind == "fixed":
            assert p.where["sc"] == "numpy" and "FixedPoint" in p.fallback_reasons["sc"]
        else:
            assert p.where["sc"] == "c" and "sc" not in p.fallback_reasons


def test_epilogue_chain_takes_an_unclipped_floating_point_scaling_only():
    for kind, joins in (("float", True), ("float_clipped", False), ("single_shift", False)):
        g = Graph("e")
        g.add_input("x", (2, 3, 4, 4), "float64")
        g.add_param("w", np.random.default_rng(0).standard_normal((3, 3, 1, 1)))
        g.add_op("conv", "Conv", ["x"], {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1,
                                         "mapping": None, "activation": None}, {"weights": "w"})
        g.add_op("sc", "Scaling", ["conv"], {"scaling": SCALINGS[kind], "activation": None})
        g.set_outputs(["sc"])
        out = fuse_elementwise_chains(g)
        assert (out.op("sc") == "Epilogue") == joins
        if joins:
            assert out.attrs("sc")["steps"] == (("scale", (0.5, -1.5, 2.0)),)


def test_c_fallback_reason_is_recorded_for_an_unsupported_conv():
    rng = np.random.default_rng(5)
    g = Graph("f")
    g.add_input("x", (1, 2, 6, 6), "float32")
    g.add_param("w", rng.standard_normal((3, 2, 3, 3)).astype(np.float32))
    g.add_op("conv", "Conv", ["x"], {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 1,
                                     "mapping": None, "activation": None, "sub_sample": (2, 2)}, {"weights": "w"})
    g.set_outputs(["conv"])
    assert c_backend._geometry(g, "conv", False) is None
    reason = c_backend._lower(g, "conv", False)
    assert isinstance(reason, Unsupported) and "sub-sampling" in reason.reason


def test_ini_and_onnx_names_match_the_frontends():
    from n2d2.frontends.ini.builder import LAYER_TYPES
    from n2d2.frontends.onnx_import import SUPPORTED_OPS
    from n2d2.onnx_backend import HANDLERS

    defs = _defs()
    ini = {n: op for op in defs.values() for n in op.ini_names}
    assert set(ini) == set(LAYER_TYPES)   # every INI layer type is one op's, and only those
    for op in defs.values():
        for n in op.onnx_names:   # the one ONNX path: converted, then legalized into the op
            assert n in HANDLERS, f"{op.name}.onnx_names: the ONNX converter has no {n}"
            assert n in SUPPORTED_OPS, f"{op.name}.onnx_names: the ONNX importer does not list {n}"


def test_every_lowering_answers_a_geometry_or_a_reason():
    """Over a graph holding every op with a kernel, both backends get a dict (C: always, all
    are supported there) or an Unsupported, never None."""
    from n2d2.codegen import cuda_backend
    from tests.test_hostile_names import zoo

    g = zoo("z").g
    seen = set()
    for node in g.topological_order():
        op = g.op(node)
        if op == "Input":
            continue
        seen.add(op)
        c = c_backend._lower(g, node, True)
        assert isinstance(c, dict), (node, op, c)
        cuda = cuda_backend._lower(g, node, True, lambda a: True)
        assert isinstance(cuda, (dict, Unsupported)), (node, op, cuda)
    lowered = {n for n, op in _defs().items() if _overrides(op, "lower_c")}
    assert lowered - seen <= {"AddN"}   # AddN only appears in training graphs (test_c_backend runs it)


def _one_node(op, in_shapes, attrs, params=None):
    rng = np.random.default_rng(6)
    g = Graph("u")
    ins = []
    for k, s in enumerate(in_shapes):
        ins.append(g.add_input(f"x{k}", s, "float32"))
    roles = {}
    for role, shape in (params or {}).items():
        roles[role] = g.add_param(f"p.{role}", rng.standard_normal(shape).astype(np.float32))
    g.add_op("n", op, ins, attrs, roles)
    g.set_outputs(["n"])
    return g


@pytest.mark.parametrize("op,in_shapes,attrs,params,reason", [
    ("Pool", [(1, 2, 4, 4), (1, 3, 4, 4)], {"pooling": "Max", "pool": (2, 2), "stride": (2, 2), "padding": (0, 0),
                                             "mapping": None}, None, "one NCHW input"),
    ("Transpose", [(1, 2, 3, 4), (1, 1, 3, 4)], {"perm": (1, 0, 2, 3)}, None, "one 4-d input"),
    ("Deconv", [(1, 2, 5, 5)], {"stride": (1, 1), "padding": (-1, 0), "dilation": (1, 1), "groups": 1,
                                "mapping": None}, {"weights": (2, 3, 3, 3)}, "negative padding"),
    ("Softmax", [(1, 2, 1, 1), (1, 3, 1, 1)], {"group_size": 0}, None, "take one input"),
    # (BatchNorm of two inputs left this list in issue 15: its C kernel concatenates them,
    # tests/test_c_inference_kernels.py::test_batchnorm_of_concatenated_inputs)
    ("Scaling", [(1, 1, 2, 2), (1, 2, 2, 2)], {"scaling": FloatingPointScaling([0.5, 1.0, 2.0])}, None,
     "take one input"),
    ("Conv", [(1, 2, 6, 6)], {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 2,
                              "mapping": np.ones((2, 2), dtype=bool)}, {"weights": (2, 1, 3, 3)}, "connection table"),
])
def test_unsupported_cases_say_why(op, in_shapes, attrs, params, reason):
    g = _one_node(op, in_shapes, attrs, params)
    answer = c_backend._lower(g, "n", False)
    assert isinstance(answer, Unsupported) and reason in answer.reason, answer
