"""Bounds of the INI parser (`n2d2.frontends.ini.limits`): files that would hang it, exhaust memory
or recurse without end get an `IniError` naming the file and line; upstream-sized files still
load; and a fuzz test over the parser and the builder lets only the library's errors escape."""
import re
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from n2d2 import error_handler
from n2d2.frontends.ini import IniError, IniWarning, limits, load_ini, parse_string
from n2d2.frontends.ini.parser import _template_tokens, evaluate_expression, parse_file, render_template


def read_all(doc):
    """Every value of every section, substituted (what the builder does, lazily)."""
    return {(name, key): doc.value(name, key) for name, sec in doc.sections.items() for key in sec.entries}


def ini_error(text, path="big.ini") -> IniError:
    with pytest.raises(IniError) as info:
        read_all(parse_string(text, path))
    return info.value


# -- expressions ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("expression, fragment", [
    ("round(1, -10**9)", "round() takes at most 64 digits"),     # hung: 10**(10**9) for an int
    ("(10**30 - 1) ** 256", "power too large"),                  # computed 7680 digits before refusing
    ("(-8) ** (1/3)", "complex result"),                         # a complex passed through as text
    ("-" * 5000 + "1", "nested too deeply"),                      # RecursionError from the evaluator
    ("not " * 100 + "1", "nested more than 64 levels"),
    ("1" * 20000, "characters"),
])
def test_expressions_are_bounded(expression, fragment):
    e = ini_error(f"[a]\nK=$({expression})\n", "expr.ini")
    assert fragment in str(e) and e.file == "expr.ini" and e.line == 2 and e.section == "a"


def test_legitimate_expressions_still_evaluate():
    assert evaluate_expression("int(64 * 0.75)") == 48
    assert evaluate_expression("8**(-1.0/(2*2-2)) if 8 > 0 else 1.0") == pytest.approx(8 ** -0.5)
    assert evaluate_expression("1281167 * 90 // 256") == 450410
    assert evaluate_expression("round(1234.5678, -2)") == 1200.0 and evaluate_expression("10**30") == 10 ** 30
    assert evaluate_expression("2 ** -2000") == 0.0


# -- substitutions ----------------------------------------------------------------------------------------
def test_billion_laughs_variables_are_refused():
    lines = ["$V0=laugh"] + [f"$V{i}=${{V{i - 1}}}${{V{i - 1}}}" for i in range(1, 40)]
    e = ini_error("\n".join(lines) + "\n[a]\nK=${V39}\n")
    assert "substitutions" in str(e) and e.line is not None


def test_billion_laughs_of_empty_values_are_refused_by_steps():
    """Empty values produce no characters: only the count of substitutions bounds the work."""
    lines = ["$V0="] + [f"$V{i}=${{V{i - 1}}}${{V{i - 1}}}${{V{i - 1}}}" for i in range(1, 40)]
    e = ini_error("\n".join(lines) + "\n[a]\nK=x${V39}\n")
    assert f"more than {limits.MAX_EXPANSION_STEPS} steps" in str(e)


def test_billion_laughs_cross_references_are_refused():
    text = "[s0]\nK=ha\n" + "".join(f"[s{i}]\nK=[s{i - 1}]K [s{i - 1}]K\n" for i in range(1, 40))
    e = ini_error(text)
    assert "substitutions" in str(e)


@pytest.mark.parametrize("kind", ["variables", "references"])
def test_deep_reference_chains_are_ini_errors(kind):
    """5000 nested references raised a bare RecursionError."""
    if kind == "variables":
        text = "$V0=1\n" + "".join(f"$V{i}=${{V{i - 1}}}\n" for i in range(1, 5000)) + "[a]\nK=${V4999}\n"
    else:
        text = "[s0]\nK=1\n" + "".join(f"[s{i}]\nK=[s{i - 1}]K\n" for i in range(1, 5000))
    e = ini_error(text)
    assert "nested more than 64 levels" in str(e)


def test_inheritance_that_copies_without_bound_is_refused():
    """Each section copies its parent's keys: a chain of n sections over 1000 keys is n * 1000
    entries from a file of a few kB (n = 100 000: 10**8 entries, tens of GB)."""
    text = "[s0]\n" + "".join(f"k{j}=1\n" for j in range(1000)) + "".join(f"[s{i}] s{i - 1}\n" for i in range(1, 300))
    with pytest.raises(IniError, match=f"more than {limits.MAX_ENTRIES} key=value entries") as info:
        parse_string(text, "inherit.ini")
    assert info.value.line is not None and info.value.section.startswith("s")


def test_oversized_files_are_refused_before_reading(tmp_path):
    path = tmp_path / "huge.ini"
    with open(path, "wb") as f:
        f.truncate(limits.MAX_FILE_BYTES + 1)   # sparse: no disk used
    with pytest.raises(IniError, match="bytes"):
        parse_file(str(path))


# -- templates --------------------------------------------------------------------------------------------
def test_self_including_template_is_an_ini_error(tmp_path):
    """`{% include %}` of itself raised a bare RecursionError."""
    (tmp_path / "self.ini.tpl").write_text("[{{SECTION_NAME}}_x]\nK=1\n{% include self.ini.tpl %}\n")
    (tmp_path / "net.ini").write_text("[a@self.ini.tpl]\nP=1\n")
    with pytest.raises(IniError, match="templates nested more than 16 levels") as info:
        parse_file(str(tmp_path / "net.ini"))
    assert info.value.file.endswith("self.ini.tpl") and info.value.line == 3


def test_self_including_template_sections_are_an_ini_error(tmp_path):
    (tmp_path / "rec.ini.tpl").write_text("[{{SECTION_NAME}}_a@rec.ini.tpl]\nP=1\n"
                                          "[{{SECTION_NAME}}_b@rec.ini.tpl]\nP=1\n")
    (tmp_path / "net.ini").write_text("[a@rec.ini.tpl]\nP=1\n")
    with pytest.raises(IniError, match="nested more than 16 levels"):
        parse_file(str(tmp_path / "net.ini"))


def test_nested_template_loops_are_bounded(tmp_path):
    """Three nested loops of 10**4 iterations: 10**12 steps with no output were a hang."""
    (tmp_path / "loops.ini.tpl").write_text("{% for i in range(10000) %}{% for j in range(10000) %}"
                                            "{% for k in range(10000) %}{% endfor %}{% endfor %}{% endfor %}\n")
    (tmp_path / "net.ini").write_text("[a@loops.ini.tpl]\nP=1\n")
    with pytest.raises(IniError, match=f"more than {limits.MAX_TEMPLATE_STEPS} steps") as info:
        parse_file(str(tmp_path / "net.ini"))
    assert info.value.file.endswith("loops.ini.tpl") and info.value.line == 1


def test_template_output_is_bounded():
    with pytest.raises(IniError, match="characters"):
        render_template("{% for i in range(100000) %}" + "x" * 1000 + "{% endfor %}", {}, "big.tpl")


def test_deeply_nested_template_statements_are_an_ini_error():
    with pytest.raises(IniError, match="nested more than 64 levels"):
        render_template("{% if A exists %}" * 5000 + "x" + "{% endif %}" * 5000, {"A": "1"}, "deep.tpl")


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(alphabet="{}%ab\n ", max_size=40))
def test_template_tokens_match_the_regex_split(text):
    """The linear tokenizer splits exactly as the lazy regex did (which was quadratic on `{{{{...`)."""
    assert _template_tokens(text) == re.split(r"(\{\{.*?\}\}|\{%.*?%\})", text, flags=re.S)


# -- builder ----------------------------------------------------------------------------------------------
def test_a_long_layer_chain_builds(tmp_path):
    """The builder levelled layers recursively: 1200 chained layers, the last one first in the
    file, raised RecursionError."""
    layers = "".join(f"[l{i}]\nInput={'sp' if i == 0 else f'l{i - 1}'}\nType=Activation\nActivationFunction=Rectifier\n"
                     f"NbOutputs=1\n" for i in reversed(range(1200)))
    path = tmp_path / "chain.ini"
    path.write_text("[sp]\nSizeX=2\nSizeY=2\nBatchSize=1\n" + layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IniWarning)
        dn = load_ini(str(path), backend="numpy")
    assert len(dn) == 1200


# -- upstream-sized files stay within the bounds ----------------------------------------------------------------
def test_resnet152_depth_template_file_reads_within_the_bounds(tmp_path, monkeypatch):
    """50 template blocks (ResNet-152's 3+8+36+3), every value read: the bounds leave room."""
    from tests.test_ini_upstream import MODELS, resnet_ini

    if MODELS is None:
        pytest.skip("shared INI models not available")
    monkeypatch.setenv("N2D2_MODELS", str(tmp_path))
    doc = parse_file(resnet_ini(tmp_path, blocks=(3, 8, 36, 3)))
    for name in doc.order:           # the keys the builder generates, so that references resolve
        for key in ("_OutputsWidth", "_OutputsHeight", "_EpochSize"):
            doc.set_generated(name, key, 7)
    values = read_all(doc)
    assert len([n for n in doc.order if n.endswith("_sum")]) == 50
    assert values[("conv5.3_3x3_2", "NbOutputs")] == "512"


# -- fuzzing: only the library's errors escape ----------------------------------------------------------------
LIBRARY_ERRORS = tuple(v for v in vars(error_handler).values() if isinstance(v, type) and issubclass(v, Exception))

_ATOMS = st.sampled_from(["sp", "l0", "l1", "cfg", "1", "2", "3", "0", "-1", "2.5", "1e9", "Conv", "Fc", "Pool",
                          "Rectifier", "Max", "Sum", "${V}", "${W}", "${SECTION_NAME}", "${PREV_SECTION_NAME}",
                          "[l0]NbOutputs", "[l0]_OutputsWidth", "[sp]SizeX", "[cfg]K", "$(", ")", "(", "**", "*",
                          "//", "/", "round(", "int(", ",", " ", "10**9", "-10**9", "[", "]", "\"", ";", "#",
                          "{{", "}}", "{%", "%}", "@", "=", "\x00", "é", "\t", "{{P}}", "{% if P exists %}",
                          "{% endif %}", "{% for i in range(3) %}", "{% endfor %}", "{% set P %}", "{% endset %}",
                          "$(round(1, -10**9))", "$(9**9**9)", "$(" + "-" * 3000 + "1)"])
_GARBAGE = st.lists(_ATOMS, min_size=1, max_size=6).map("".join)
_SMALL = st.sampled_from(["1", "2", "3", "4", "1", "2", "0", "$(1+1)", "${V}", "[l0]NbOutputs", "[sp]NbChannels",
                          "$(${V} * 2)", "[l0]_NbOutputs", "Pooling66_Output_0"])
_NUMBER = st.sampled_from(["1", "2", "3", "4"])
_VALUE = st.integers(0, 11).flatmap(lambda i: _GARBAGE if i == 0 else _SMALL if i < 4 else _NUMBER)
_SP_VALUE = st.integers(0, 19).flatmap(lambda i: _VALUE if i == 0 else _NUMBER)
_REQUIRED_KEYS = {"Conv": ["KernelDims=2 2"], "Deconv": ["KernelDims=2 2"], "Pool": ["PoolDims=2 2", "Pooling=Max"],
                  "ElemWise": ["Operation=Sum"], "Reshape": ["Dims=4"], "Scaling": ["Factor=0.5"],
                  "Padding": ["TopPadding=1", "BottomPadding=0", "LeftPadding=1", "RightPadding=0"]}
_LAYER_TYPES = st.sampled_from(["Conv", "Fc", "Pool", "Softmax", "Dropout", "BatchNorm", "ElemWise", "Padding",
                                "Activation", "Deconv", "Reshape", "Scaling", "ONNX", "Bogus"])
_LAYER_KEYS = st.sampled_from(["KernelDims", "KernelSize", "Stride", "Padding", "PoolDims", "Pooling", "Operation",
                               "ActivationFunction", "ConfigSection", "Mapping.Size", "Mapping.ChannelsPerGroup",
                               "Mapping(sp)", "Mapping.NbGroups", "WeightsFiller", "WeightsFiller.Value", "NoBias",
                               "Dims", "Factor", "TopPadding", "DilationDims", "Unknown", "IgnoreInputSize", "Ignore"])
_CFG_KEYS = st.sampled_from(["Solvers.LearningRate", "Solvers.Momentum", "Solvers.MaxIterations", "NoBias",
                             "WeightsSolver.LearningRate", "Solvers", "Dropout", "K"])


@st.composite
def _ini_texts(draw):
    """Mostly well-formed networks (so that the builder's layers are reached) with fuzzed values,
    optional templates, targets and config sections, then a few raw garbage lines."""
    lines = [f"$V={draw(_SP_VALUE)}", f"$W={draw(_VALUE)}"]
    if draw(st.integers(0, 9)) == 0:   # one of the inputs that hung or exhausted the old parser
        hazard = draw(st.sampled_from(["round", "power", "laughs", "empty laughs", "deep"]))
        if hazard in ("laughs", "empty laughs"):
            lines += ["$H0=" + ("" if hazard == "empty laughs" else "ha")]
            lines += [f"$H{i}=${{H{i - 1}}}${{H{i - 1}}}${{H{i - 1}}}" for i in range(1, 30)]
            lines[0] = "$V=1${H29}"
        elif hazard == "deep":
            lines += ["$H0=1"] + [f"$H{i}=${{H{i - 1}}}" for i in range(1, 3000)]
            lines[0] = "$V=${H2999}"
        else:
            lines[0] = "$V=" + ("$(round(1, -10**9))" if hazard == "round" else "$((10**30 - 1)**256)")
    lines += ["[sp]", f"SizeX={draw(_SP_VALUE)}", f"SizeY={draw(_SP_VALUE)}", f"NbChannels={draw(_SP_VALUE)}",
              f"BatchSize={draw(_SP_VALUE)}"]
    nb_layers = draw(st.integers(1, 4))
    for i in range(nb_layers):
        earlier = ["sp"] + [f"l{j}" for j in range(i)]
        anywhere = ["sp"] + [f"l{j}" for j in range(nb_layers)] + ["cfg", "nowhere"]
        inputs = draw(st.lists(st.sampled_from(earlier if draw(st.integers(0, 9)) else anywhere), min_size=1,
                               max_size=2))
        kind = draw(_LAYER_TYPES)
        lines += [f"[l{i}]", f"Input={','.join(inputs)}", f"Type={kind}", f"NbOutputs={draw(_VALUE)}"]
        lines += _REQUIRED_KEYS.get(kind, []) if draw(st.integers(0, 7)) else []
        if kind == "ONNX" and draw(st.integers(0, 3)):
            lines.append("File=model.onnx")
        lines += [f"{k}={draw(_VALUE)}" for k in draw(st.lists(_LAYER_KEYS, max_size=4, unique=True))]
    if draw(st.booleans()):
        lines += ["[cfg]"] + [f"{k}={draw(_VALUE)}" for k in draw(st.lists(_CFG_KEYS, max_size=3, unique=True))]
    if draw(st.booleans()):
        lines += [f"[l{draw(st.integers(0, nb_layers - 1))}.Target]", f"TopN={draw(_SMALL)}"]
    if draw(st.booleans()):
        lines += ["[t@t.ini.tpl]", f"P={draw(_VALUE)}", "INPUT=l0"]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        where = draw(st.integers(0, len(lines)))
        lines.insert(where, draw(st.one_of(_GARBAGE, _CFG_KEYS.map(lambda k: k + "=1"))))
    template = "[{{SECTION_NAME}}_c]\nInput={{INPUT}}\nType=Fc\nNbOutputs=$({{P}})\n"
    if draw(st.integers(0, 2)) == 0:
        template = draw(st.lists(st.one_of(_GARBAGE, st.sampled_from(
            ["[{{SECTION_NAME}}_c]", "Input={{INPUT}}", "Type=Fc", "NbOutputs={{P}}", "\n"])), max_size=8).map("".join))
    elif draw(st.booleans()):
        template = "{% if P exists %}" + template + "{% set Q %}{{P}}{% endset %}{% endif %}" \
                   "{% for i in range(2) %}[{{SECTION_NAME}}_{{i}}]\nInput={{INPUT}}\nType=Dropout\nNbOutputs=" \
                   "[{{INPUT}}]_NbOutputs\n{% endfor %}"
    return "\n".join(lines) + "\n", template


def _load(tmp_path, text, template):
    path = tmp_path / "fuzz.ini"
    path.write_text(text, encoding="utf-8")
    (tmp_path / "t.ini.tpl").write_text(template, encoding="utf-8")
    if not (tmp_path / "model.onnx").exists():
        try:
            from tests.test_ini_upstream import _write_cntk_like_onnx

            _write_cntk_like_onnx(tmp_path / "model.onnx")
        except ImportError:   # no onnx package: File=model.onnx is then a missing file (an IniError)
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            load_ini(str(path), backend="numpy")
        except LIBRARY_ERRORS:
            pass


_FUZZ = dict(deadline=None, derandomize=True, database=None,
             suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                    HealthCheck.filter_too_much])


@settings(max_examples=500, **_FUZZ)
@given(case=_ini_texts())
def test_fuzz_parser_and_builder_raise_only_library_errors(tmp_path, case):
    _load(tmp_path, *case)


@pytest.mark.slow
@settings(max_examples=5000, **_FUZZ)
@given(case=_ini_texts())
def test_fuzz_parser_and_builder_raise_only_library_errors_long(tmp_path, case):
    _load(tmp_path, *case)
