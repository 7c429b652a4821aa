"""N2D2 INI files: parsing (lexing, substitutions, templates), building (layers, mappings, config
sections, solvers, fillers, activations, targets), the shipped MNIST models, and errors that
name the file, section and line."""
import os
import re
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import n2d2
from n2d2.frontends.ini import IniError, IniWarning, load_ini, parse_string
from n2d2.frontends.ini.parser import evaluate_expression, render_template
from tests.conftest import SHARED_MODELS, rel_err

MODELS = SHARED_MODELS
LENET = os.path.join(MODELS, "LeNet.ini")
MNIST24 = os.path.join(MODELS, "mnist24_16c4s2_24c5s2_150_10.ini")
needs_models = pytest.mark.skipif(not os.path.isfile(LENET), reason="shared INI models not available")


def write(tmp_path, text, name="net.ini"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def build(tmp_path, text, name="net.ini"):
    """Build an INI network quietly (no database: an empty one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IniWarning)
        return load_ini(write(tmp_path, text, name), backend="numpy")


def error_of(tmp_path, text, name="net.ini") -> IniError:
    with pytest.raises(IniError) as info:
        build(tmp_path, text, name)
    return info.value


SP = "[sp]\nSizeX=8\nSizeY=8\nNbChannels={c}\nBatchSize=2\n"


# -- lexing ---------------------------------------------------------------------------------------------
def test_continuation_comments_quotes_crlf_and_bom():
    text = ("\ufeff; header comment\r\n$SIZE=24 # trailing\r\n[a]\r\nK=1 0 \\\r\n  0 1 ; row 1\\\r\n1 1\r\n"
            'Q="x;y#z"\r\nE=\r\n[b] \r\n  Key  =  value  \r\n')
    doc = parse_string(text, "mem.ini")
    assert doc.order == ["a", "b"]
    assert doc.value("a", "K").split() == ["1", "0", "0", "1", "1", "1"]
    assert doc.value("a", "Q") == "x;y#z"
    assert doc.value("a", "E") == ""
    assert doc.value("b", "Key") == "value"
    assert doc.value("", "$SIZE") == "24"
    assert doc.section("a").entries["K"].line == 4  # a continued value is reported at its first line


def test_continuation_without_space_joins_tokens():
    doc = parse_string("[a]\nK=1 0\\\n1\n", "mem.ini")
    assert doc.value("a", "K") == "1 01"  # as N2D2: nothing is inserted


def test_inheritance_and_override():
    doc = parse_string("[conv_def]\nType=Conv\nKernelDims=3 3\n[conv1] conv_def\nKernelDims=5 5\nInput=sp\n", "m.ini")
    assert doc.value("conv1", "Type") == "Conv"
    assert doc.value("conv1", "KernelDims") == "5 5"
    assert doc.section("conv1").entries["Type"].origin == "conv_def"


@pytest.mark.parametrize("text,line,fragment", [
    ("[a]\nX=1\n[a]\n", 3, "duplicate section"),
    ("[a]\nX=1\njust words\n", 3, "neither a section header nor key=value"),
    ("[a\nX=1\n", 1, "no closing"),
    ("[b] missing\n", 1, "parent section [missing]"),
    ("[a]\nX=\"unterminated\n", 2, "double quote"),
    ("[a]\n=3\n", 2, "empty key"),
])
def test_syntax_errors_name_file_and_line(text, line, fragment):
    with pytest.raises(IniError) as info:
        parse_string(text, "bad.ini")
    e = info.value
    assert isinstance(e, ValueError)
    assert e.file == "bad.ini" and e.line == line and fragment in str(e)
    assert f"bad.ini:{line}:" in str(e)


def test_duplicate_key_warns_and_overrides():
    with pytest.warns(IniWarning, match="given twice"):
        doc = parse_string("[a]\nX=1\nX=2\n", "m.ini")
    assert doc.value("a", "X") == "2"


# -- substitutions ------------------------------------------------------------------------------------------
def test_cross_references_variables_and_expressions(monkeypatch):
    monkeypatch.setenv("N2D2_INI_TEST_ROOT", "/data/root")
    text = ("$ALPHA=0.5\n$L=4\n[sp]\nSizeX=24\nSizeY=[sp]SizeX\n[conv]\n$LOCAL=3\n"
            "A=$(int(64 * ${ALPHA}))\nB=[sp]SizeX [sp]SizeY\nC=$(${L}**(-1.0/(2*2-2)) if ${L} > 0 else 1.0)\n"
            "D=${LOCAL}x${ALPHA}\nE=${N2D2_INI_TEST_ROOT}/mnist\nF=${UNKNOWN_VAR_XYZ}\nG=[0 360]\n"
            "H=${SECTION_NAME}/${PREV_SECTION_NAME}\nI=$([sp]SizeX // 5)\nJ=$(${L} / 2)\nK=$(max(3, [sp]SizeX))\n")
    doc = parse_string(text, "m.ini")
    v = lambda k: doc.value("conv", k)  # noqa: E731
    assert v("A") == "32"
    assert v("B") == "24 24"
    assert float(v("C")) == pytest.approx(0.5)
    assert v("D") == "3x0.5"
    assert v("E") == "/data/root/mnist"
    assert v("F") == "${UNKNOWN_VAR_XYZ}"
    assert v("G") == "[0 360]"
    assert v("H") == "conv/sp"
    assert v("I") == "4"
    assert v("J") == "2.0"
    assert v("K") == "24"


def test_generated_keys_are_read_lazily():
    doc = parse_string("[sp]\nSizeX=8\n[c]\nX=[sp]_EpochSize\n", "m.ini")
    with pytest.raises(IniError, match=r"no key '_EpochSize'"):
        doc.value("c", "X")
    doc.set_generated("sp", "_EpochSize", 48000)
    assert doc.value("c", "X") == "48000"


@pytest.mark.parametrize("value,fragment", [
    ("[a]Missing", "has no key 'Missing'"),
    ("[b]Y", "circular reference"),
    ("$(__import__('os').getcwd())", "cannot evaluate"),
    ("$(9**9**9)", "cannot evaluate"),
    ("$(open('x'))", "cannot evaluate"),
    ("$(1 +)", "cannot evaluate"),
    ("$((1 + 2)", "unbalanced"),
    ("$(1/0)", "cannot evaluate"),
])
def test_substitution_errors(value, fragment):
    doc = parse_string(f"[a]\nX=1\n[b]\nY={value}\nZ=[b]Y\n", "m.ini")
    with pytest.raises(IniError, match=re.escape(fragment)) as info:
        doc.value("b", "Y")
    assert info.value.line in (4, 5) and info.value.section == "b"


def test_expression_evaluator_is_restricted():
    assert evaluate_expression("int(48000 * 10 / 128)") == 3750
    assert evaluate_expression("2 if 3 > 1 and not False else 1") == 2
    assert evaluate_expression("math.sqrt(16) + abs(-1) + round(2.6)") == 8.0
    for bad in ("().__class__", "[1, 2]", "lambda: 1", "x", "'a' * 3", "print(1)"):
        with pytest.raises((ValueError, SyntaxError)):
            evaluate_expression(bad)


# -- templates ------------------------------------------------------------------------------------------------
BLOCK_TPL = """[{{SECTION_NAME}}_conv]
Input={{INPUT}}
Type=Conv
KernelDims=3 3
Padding=1
NbOutputs={{NB_FILTERS}}
{% if PROJECTION exists %}
[{{SECTION_NAME}}_proj]
Input={{INPUT}}
Type=Conv
KernelDims=1 1
NbOutputs={{NB_FILTERS}}
{% set INPUT %}{{SECTION_NAME}}_proj{% endset %}
{% endif %}
[{{SECTION_NAME}}_sum]
Input={{SECTION_NAME}}_conv,{{INPUT}}
Type=ElemWise
NbOutputs={{NB_FILTERS}}
Operation=Sum
ActivationFunction=Rectifier
"""


def test_template_rendering_features(tmp_path):
    (tmp_path / "inc.ini.tpl").write_text("[{{SECTION_NAME}}_inc]\nX={{V}}\n")
    text = ("{% for I in range(1, 3) %}[s{{I}}]\n{% endfor %}"
            "{% if MODE == fast %}F=1{% else %}F=0{% endif %}\n"
            "{% block ITEMS %}[item{{#}}]\nP={{.P}}\n{% endblock %}{% include inc.ini.tpl %}")
    out = render_template(text, {"MODE": "fast", "ITEMS": "2", "ITEMS[0].P": "a", "ITEMS[1].P": "b",
                                 "SECTION_NAME": "t", "V": "7"}, str(tmp_path / "main.tpl"))
    assert "[s1]" in out and "[s2]" in out and "[s3]" not in out
    assert "F=1" in out and "[item1]\nP=b" in out and "[t_inc]\nX=7" in out
    with pytest.raises(IniError, match="not defined"):
        render_template("{{MISSING}}", {}, "t.tpl")
    with pytest.raises(IniError, match="endif"):
        render_template("{% if A exists %}x", {}, "t.tpl")


def test_template_sections_build_a_residual_network(tmp_path):
    (tmp_path / "block.ini.tpl").write_text(BLOCK_TPL)
    text = (SP.format(c=4) + "[conv1]\nInput=sp\nType=Conv\nKernelDims=3 3\nPadding=1\nNbOutputs=4\n"
            "[b1@block.ini.tpl]\nINPUT=conv1\nNB_FILTERS=4\n"
            "[b2@block.ini.tpl]\nINPUT=b1_sum\nNB_FILTERS=6\nPROJECTION=1\n"
            "[pool]\nInput=b2_sum\nType=Pool\nPoolDims=[b2_sum]_OutputsWidth [b2_sum]_OutputsHeight\nNbOutputs=6\n"
            "Pooling=Average\nMapping.ChannelsPerGroup=1\n")
    dn = build(tmp_path, text)
    names = [c.get_name() for c in dn]
    assert names == ["conv1", "b1_conv", "b1_sum", "b2_conv", "b2_proj", "b2_sum", "pool"]
    assert dn["b2_sum"].get_type() == "ElemWise"
    assert tuple(dn.get_graph().output_types(dn.get_graph().outputs[0][0])[0].shape) == (2, 6, 1, 1)
    assert dn["pool"].get_type() == "Pool2d"


# -- building: layers, mappings, config -----------------------------------------------------------------------
def test_layer_types_shapes_and_generated_keys(tmp_path):
    text = SP.format(c=3) + """
[conv]
Input=sp
Type=Conv
KernelSize=3
Stride=2
Padding=1
NbOutputs=4
ActivationFunction=Rectifier
ActivationFunction.LeakSlope=0.1
[bn]
Input=conv
Type=BatchNorm
NbOutputs=[conv]NbOutputs
ActivationFunction=Tanh
ActivationFunction.Alpha=0.5
[pad]
Input=bn
Type=Padding
NbOutputs=4
TopPadding=1
BottomPadding=0
LeftPadding=2
RightPadding=-1
[deconv]
Input=pad
Type=Deconv
KernelWidth=2
KernelHeight=2
StrideX=2
StrideY=2
NbOutputs=3
[resize]
Input=deconv
Type=Resize
NbOutputs=3
OutputWidth=8
OutputHeight=6
Mode=NearestNeighbor
[sum]
Input=resize,resize
Type=ElemWise
NbOutputs=3
Operation=Sum
Weights=0.5 2.0
[act]
Input=sum
Type=Activation
NbOutputs=3
[scale]
Input=act
Type=Scaling
NbOutputs=3
Factor=0.25
[tr]
Input=scale
Type=Transpose
NbOutputs=3
Perm=1 0 2 3
[reshape]
Input=tr
Type=Reshape
NbOutputs=[tr]_OutputsHeight
Dims=6 3 8
[drop]
Input=reshape
Type=Dropout
NbOutputs=8
[fc]
Input=drop,reshape
Type=Fc
NbOutputs=5
ActivationFunction=Saturation
ActivationFunction.Threshold=2.0
[softmax]
Input=fc
Type=Softmax
NbOutputs=5
WithLoss=1
"""
    dn = build(tmp_path, text)
    g = dn.get_graph()
    shapes = {dn._cell_of[n].get_name(): tuple(g.output_types(n)[0].shape) for n in g.topological_order()
              if n in dn._cell_of}
    assert shapes == {"conv": (2, 4, 4, 4), "bn": (2, 4, 4, 4), "pad": (2, 4, 5, 5), "deconv": (2, 3, 10, 10),
                      "resize": (2, 3, 6, 8), "sum": (2, 3, 6, 8), "act": (2, 3, 6, 8), "scale": (2, 3, 6, 8),
                      "tr": (2, 3, 8, 6), "reshape": (2, 8, 3, 6), "drop": (2, 8, 3, 6), "fc": (2, 5, 1, 1),
                      "softmax": (2, 5, 1, 1)}
    assert dn["fc"].nb_inputs == 2 * 8 * 3 * 6
    assert dn["conv"].activation.leak_slope == 0.1
    assert dn["bn"].activation.get_type() == "Tanh" and dn["bn"].activation.alpha == 0.5
    assert dn["act"].activation.get_type() == "Tanh"  # N2D2's Activation layer default
    assert dn["fc"].activation.get_type() == "Saturation" and dn["fc"].activation.threshold == 2.0
    assert dn["sum"].weights == [0.5, 2.0] and dn["sum"].mode == "PerInput"
    assert dn["softmax"].with_loss is True
    assert dn._ini_document.value("reshape", "_OutputsWidth") == "6"
    assert dn._ini_document.value("fc", "_NbChannels") == "16"


def test_explicit_grouped_and_canvas_mappings(tmp_path):
    table = "\\\n".join(" ".join("1" if (c + o) % 3 == 0 else "0" for o in range(5)) + " " for c in range(4))
    text = SP.format(c=4) + f"""
[explicit]
Input=sp
Type=Conv
KernelDims=1 1
NbOutputs=5
Mapping(env)=\\
{table}
[grouped]
Input=sp
Type=Conv
KernelDims=1 1
NbOutputs=6
Mapping.NbGroups=2
[depthwise]
Input=sp
Type=Conv
KernelDims=3 3
Padding=1
NbOutputs=4
Mapping.ChannelsPerGroup=1
[maxout]
Input=grouped,grouped
Type=Conv
KernelDims=1 1
NbOutputs=4
Mapping.SizeY=2
Mapping.StrideY=2
Mapping(grouped).OffsetX=0
[out]
Input=explicit,depthwise,maxout
Type=Fc
NbOutputs=2
"""
    dn = build(tmp_path, text)
    expected = np.array([[(c + o) % 3 == 0 for o in range(5)] for c in range(4)])
    assert np.array_equal(dn["explicit"].mapping.to_numpy().astype(bool), expected)
    grouped = dn["grouped"].mapping.to_numpy().astype(bool)
    assert np.array_equal(grouped, np.kron(np.eye(2, dtype=bool), np.ones((2, 3), dtype=bool)))
    assert np.array_equal(dn["depthwise"].mapping.to_numpy().astype(bool), np.eye(4, dtype=bool))
    maxout = dn["maxout"].mapping.to_numpy().astype(bool)  # 12 channels (6 + 6), 4 outputs
    block = np.zeros((6, 4), dtype=bool)
    for i in range(6):
        block[(2 * i) % 6, i % 4] = block[(2 * i + 1) % 6, i % 4] = True
    assert np.array_equal(maxout, np.concatenate([block, block]))


@pytest.mark.parametrize("mapping,fragment,line", [
    ("Mapping(sp)=1 1 1", "Mapping(env)", 11),
    ("Mapping(env)=1 0 1", "3 values", 11),
    ("Mapping(env)=1 0 x 1 1 1 1 1 1 1 1 1", "'x' is not 0 or 1", 11),
    ("Mapping.NbGroups=2\nMapping.ChannelsPerGroup=1", "mutually exclusive", 12),
    ("Mapping.NbGroups=2", "does not split the 3 input channels", 11),
    ("Mapping.Sizes=1", "unknown mapping key", 11),
])
def test_mapping_errors(tmp_path, mapping, fragment, line):
    e = error_of(tmp_path, SP.format(c=3) + f"[c]\nInput=sp\nType=Conv\nKernelDims=1 1\nNbOutputs=4\n{mapping}\n")
    assert fragment in str(e) and e.line == line and e.section == "c"


def test_pool_mappings(tmp_path):
    text = SP.format(c=3) + ("[p1]\nInput=sp\nType=Pool\nPoolSize=2\nNbOutputs=3\nPooling=Max\nMapping.Size=1\n"
                             "[p2]\nInput=p1\nType=Pool\nPoolWidth=2\nPoolHeight=1\nNbOutputs=3\nPooling=Average\n")
    dn = build(tmp_path, text)
    assert dn["p1"].get_type() == "Pool2d"
    assert dn["p2"].get_type() == "Pool" and dn["p2"].mapping is None  # N2D2's default: all channels together
    e = error_of(tmp_path, SP.format(c=8) + "[p]\nInput=sp\nType=Pool\nPoolDims=1 1\nNbOutputs=4\nPooling=Max\n"
                                            "Mapping.SizeY=2\nMapping.StrideY=2\n")
    assert "not supported" in str(e) and e.line == 10


CONFIG_NET = SP.format(c=1) + """
[conv]
Input=sp
Type=Conv
KernelDims=3 3
NbOutputs=2
WeightsFiller=HeFiller
WeightsFiller.VarianceNorm=Average
WeightsFiller.Scaling=2.0
BiasFiller=ConstantFiller
BiasFiller.Value=0.5
ConfigSection=common.config
[fc]
Input=conv
Type=Fc
NbOutputs=3
WeightsFiller=XavierFiller
WeightsFiller.Distribution=Normal
ConfigSection=common.config,fc.config
WeightsSolver=Adam
WeightsSolver.Beta1=0.8
[common.config]
NoBias=1
Solvers.LearningRate=0.2
Solvers.LearningRatePolicy=StepDecay
Solvers.LearningRateStepSize=1000
WeightsSolver.Momentum=0.9
BiasSolver.LearningRate=0.3
[fc.config]
NoBias=0
DropConnect=1.0
"""


def test_config_sections_solvers_and_fillers(tmp_path):
    dn = build(tmp_path, CONFIG_NET.replace("WeightsSolver=Adam\nWeightsSolver.Beta1=0.8\n", ""))
    conv, fc = dn["conv"], dn["fc"]
    assert conv.no_bias is True and conv.has_bias() is False
    ws, bs = conv.weights_solver, conv.bias_solver
    assert ws.get_type() == "SGD" and ws.learning_rate == 0.2 and ws.momentum == 0.9
    assert ws.learning_rate_policy == "StepDecay" and ws.learning_rate_step_size == 1000
    assert bs.learning_rate == 0.3 and bs.momentum == 0.0 and bs.learning_rate_step_size == 1000
    assert ws is not fc.weights_solver
    assert conv.weights_filler.get_type() == "He" and conv.weights_filler.variance_norm == "Average"
    assert conv.weights_filler.scaling == 2.0
    assert conv.bias_filler.get_type() == "Constant" and conv.bias_filler.value == 0.5
    assert fc.no_bias is False  # fc.config comes after common.config
    assert fc.weights_filler.get_type() == "Xavier" and fc.weights_filler.distribution == "Normal"
    assert fc.bias_filler.get_type() == "Normal" and fc.bias_filler.std_dev == 0.05  # N2D2's default


def test_solver_type_in_the_layer_section(tmp_path):
    e = error_of(tmp_path, CONFIG_NET)  # Momentum and LearningRatePolicy are not Adam parameters
    assert "not a parameter of the Adam solver" in str(e) and e.section == "common.config"
    dn = build(tmp_path, CONFIG_NET.replace("Solvers.LearningRatePolicy=StepDecay\n", "")
               .replace("Solvers.LearningRateStepSize=1000\n", "").replace("WeightsSolver.Momentum=0.9\n", ""))
    ws = dn["fc"].weights_solver
    assert ws.get_type() == "Adam" and ws.beta1 == 0.8 and ws.learning_rate == 0.2
    assert dn["fc"].bias_solver.get_type() == "SGD" and dn["fc"].bias_solver.learning_rate == 0.3


def test_misplaced_config_key_warns_and_is_ignored(tmp_path):
    text = SP.format(c=1) + "[d]\nInput=sp\nType=Dropout\nNbOutputs=1\nDropout=0.2\n"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dn = load_ini(write(tmp_path, text), backend="numpy")
    assert any("only from a ConfigSection" in str(w.message) and w.lineno == 10 for w in caught)
    assert dn["d"].dropout == 0.5
    dn = build(tmp_path, text.replace("Dropout=0.2\n", "ConfigSection=d.cfg\n[d.cfg]\nDropout=0.2\n"))
    assert dn["d"].dropout == 0.2


@pytest.mark.parametrize("body,line,fragment", [
    ("[c]\nInput=sp\nType=Convolution\nNbOutputs=2\n", 9, "Type='Convolution' is not a valid value"),
    ("[c]\nInput=sp\nType=Conv\nKernelDims=3 3\nNbOutputs=2\nKernelSise=3\n", 12, "unknown key 'KernelSise'"),
    ("[c]\nInput=spp\nType=Conv\nKernelDims=3 3\nNbOutputs=2\n", 8, "Input 'spp' is not a section"),
    ("[c]\nInput=sp\nType=Conv\nNbOutputs=2\n", 7, "missing required key 'KernelWidth'"),
    ("[c]\nInput=sp\nType=Conv\nKernelDims=3 x\nNbOutputs=2\n", 10, "is not a list of integers"),
    ("[c]\nInput=sp\nType=Conv\nKernelDims=30 30\nNbOutputs=2\n", 7, "cannot take its input"),
    ("[c]\nInput=sp\nType=Pool\nPoolDims=2 2\nNbOutputs=1\n", 7, "missing required key 'Pooling'"),
    ("[c]\nInput=sp\nType=Softmax\nNbOutputs=3\n", 10, "NbOutputs=3 but"),
    ("[a]\nInput=b\nType=Dropout\nNbOutputs=1\n[b]\nInput=a\nType=Dropout\nNbOutputs=1\n", 8, "cycle"),
    ("[c]\nInput=sp\nType=Conv\nKernelDims=3 3\nNbOutputs=2\nConfigSection=nope\n", 12, "[nope] is not defined"),
    ("[c]\nInput=sp\nType=Conv\nKernelDims=3 3\nNbOutputs=2\nConfigSection=cfg\n[cfg]\nEpsilon=0.1\n", 14,
     "not a configuration parameter of a Conv"),
    ("[c]\nInput=sp\nType=Conv\nKernelDims=3 3\nNbOutputs=2\nActivationFunction=Relu\n", 12,
     "ActivationFunction='Relu'"),
    ("[c]\nInput=sp\nType=Conv\nKernelDims=3 3\nNbOutputs=2\nActivationFunction=Linear\n"
     "ActivationFunction.LeakSlope=0.1\n", 13, "not a parameter of the Linear activation"),
    ("[c]\nInput=sp\nType=Conv\nKernelDims=3 3\nNbOutputs=2\nWeightsFiller=HeFiller\nWeightsFiller.StdDev=1\n",
     13, "not a parameter of HeFiller"),
    ("[c]\nInput=sp\nType=Conv\nKernelDims=3 3\nNbOutputs=2\n[c.Target]\n[d]\nInput=c\nType=Dropout\n"
     "NbOutputs=2\n[d.Target]\n", 17, "several targets"),
    ("[c]\nType=Conv\nKernelDims=3 3\nNbOutputs=2\n[d]\nInput=sp\nType=Dropout\nNbOutputs=1\n", 7,
     "has no Input key"),
    ("[c]\nInput=sp\nType=Conv\nKernelDims=3 3\nNbOutputs=2\nInputOffsetX=1\n", 12, "input cropping"),
    ("DefaultModel=Spike\n[c]\nInput=sp\nType=Dropout\nNbOutputs=1\n", 1, "DefaultModel='Spike'"),
    ("Foo=1\n", 1, "unknown global key 'Foo'"),
])
def test_build_errors_name_section_and_line(tmp_path, body, line, fragment):
    text = body if body.startswith(("DefaultModel", "Foo")) else SP.format(c=1) + "\n" + body
    if body.startswith(("DefaultModel", "Foo")):
        text = body.split("\n", 1)[0] + "\n" + SP.format(c=1) + body.split("\n", 1)[1]
    e = error_of(tmp_path, text)
    assert fragment in str(e), str(e)
    assert e.line == line, str(e)
    assert e.file == str(tmp_path / "net.ini")
    assert f"net.ini:{line}:" in str(e)


@pytest.mark.parametrize("text,section", [
    (SP.format(c=1) + "[c]\nInput=sp\nType=Conv\nKernelDims=1 1\nNbOutputs=$(2**40)\n", "c"),
    (SP.format(c=1).replace("SizeX=8", "SizeX=$(2**40)") + "[d]\nInput=sp\nType=Dropout\nNbOutputs=1\n", "sp"),
])
def test_sizes_beyond_memory_are_ini_errors(tmp_path, text, section):
    e = error_of(tmp_path, text)
    assert e.section == section and ("memory" in str(e) or "allocate" in str(e))


def test_frame_cuda_falls_back_with_a_warning(tmp_path):
    if n2d2.global_variables.cuda_available:
        pytest.skip("CUDA is available: Frame_CUDA is used as is")
    text = "DefaultModel=Frame_CUDA\n" + SP.format(c=1) + "[d]\nInput=sp\nType=Dropout\nNbOutputs=1\n"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dn = load_ini(write(tmp_path, text), backend="numpy")
    assert any("CUDA is not available, using Frame" in str(w.message) and w.category is IniWarning for w in caught)
    assert dn["d"].get_model() == "Frame"


def test_target_section_keys(tmp_path):
    text = SP.format(c=1) + ("[fc]\nInput=sp\nType=Fc\nNbOutputs=4\n[fc.Target]\nTopN=3\nTargetValue=0.9\n"
                             "DefaultValue=-0.1\nNoDisplayLabel=0\n")
    dn = build(tmp_path, text)
    t = dn.get_target()
    assert t.get_name() == "fc.Target" and t.top_n == 3 and t.target_value == 0.9 and t.default_value == -0.1
    e = error_of(tmp_path, text + "Bogus=1\n")
    assert "unknown key 'Bogus'" in str(e) and e.line == 15


def test_cifar10_database_and_transformations(tmp_path):
    folder = tmp_path / "cifar"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]:
        records = np.concatenate([rng.integers(0, 10, (4, 1)), rng.integers(0, 256, (4, 3072))], axis=1)
        records.astype(np.uint8).tofile(folder / name)
    (folder / "batches.meta.txt").write_text("\n".join(f"class{k}" for k in range(10)) + "\n")
    text = ("[database]\nType=CIFAR10_Database\nDataPath=cifar\nValidation=0.25\n"
            "[sp]\nSizeX=24\nSizeY=24\nNbChannels=3\nBatchSize=4\n"
            "[sp.Transformation-1]\nType=PadCropTransformation\nWidth=24\nHeight=24\n"
            "[sp.OnTheFlyTransformation-2]\nType=FlipTransformation\nRandomHorizontalFlip=1\nApplyTo=LearnOnly\n"
            "[sp.Transformation-3]\nType=RangeAffineTransformation\nFirstOperator=Minus\nFirstValue=0.5 0.4 0.3\n"
            "[fc]\nInput=sp\nType=Fc\nNbOutputs=10\n[fc.Target]\n")
    dn = build(tmp_path, text)
    provider = dn.get_provider()
    db = provider.get_database()
    assert (db.get_nb_stimuli("Learn"), db.get_nb_stimuli("Validation"), db.get_nb_stimuli("Test")) == (15, 5, 4)
    assert dn._ini_document.value("sp", "_EpochSize") == "15"
    assert [t.get_type() for t in provider.get_transformations()] == ["PadCrop", "Flip", "RangeAffine"]
    assert [t.get_type() for t in provider.get_on_the_fly_transformations()] == ["Flip"]
    provider.set_partition("Learn")
    assert tuple(dn(provider.read_batch(0)).shape()) == (4, 10, 1, 1)
    e = error_of(tmp_path, text.replace("DataPath=cifar", "DataPath=nowhere"))
    assert "DataPath 'nowhere' does not exist" in str(e) and e.line == 3 and e.section == "database"
    e = error_of(tmp_path, text.replace("FirstOperator=Minus", "FirstOperator=Modulo"))
    assert "invalid RangeAffineTransformation" in str(e) and e.section == "sp.Transformation-3"


# -- the shipped MNIST models -------------------------------------------------------------------------------------
def _load(path, backend="numpy"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IniWarning)
        return load_ini(path, backend=backend)


def _shapes(dn):
    g = dn.get_graph()
    return {dn._cell_of[n].get_name(): tuple(g.output_types(n)[0].shape[1:]) for n in g.topological_order()
            if n in dn._cell_of}


@needs_models
def test_lenet_ini_structure(capsys):
    dn = _load(LENET)
    print(dn)
    text = capsys.readouterr().out
    assert "'conv2' Conv" in text and "mapping=n2d2.Tensor(dims=[16, 6])" in text
    assert _shapes(dn) == {"conv1": (6, 28, 28), "pool1": (6, 14, 14), "conv2": (16, 10, 10), "pool2": (16, 5, 5),
                           "conv3": (120, 1, 1), "fc1": (84, 1, 1), "fc1.drop": (84, 1, 1), "fc2": (10, 1, 1),
                           "softmax": (10, 1, 1)}
    from n2d2.models import count_parameters
    from n2d2.models.lenet import CONV2_TABLE

    conv2 = dn["conv2"]
    assert int(conv2.mapping.to_numpy().sum()) == 60
    assert np.array_equal(conv2.mapping.to_numpy().astype(bool), np.array(CONV2_TABLE, dtype=bool))
    assert count_parameters(conv2) == 60 * 25
    assert count_parameters(dn) == 150 + 1500 + 48000 + 10080 + 840
    assert all(c.no_bias for c in dn if hasattr(c, "no_bias"))
    ws = dn["conv1"].weights_solver
    assert (ws.learning_rate, ws.momentum, ws.decay, ws.clamping) == (0.05, 0.9, 0.0005, "-1.0:1.0")
    assert ws.learning_rate_policy == "StepDecay" and ws.learning_rate_decay == 0.993
    assert ws.learning_rate_step_size == 48000  # [sp]_EpochSize: 80 % of the 60000 MNIST training images
    assert dn["fc2"].weights_filler.get_type() == "Normal"
    assert dn["fc1.drop"].dropout == 0.5
    provider = dn.get_provider()
    assert provider.get_batch_size() == 128 and provider.get_size() == [32, 32, 1]
    db = provider.get_database()
    assert (db.get_nb_stimuli("Learn"), db.get_nb_stimuli("Validation"), db.get_nb_stimuli("Test")) == \
        (48000, 12000, 10000)
    assert dn.get_target().get_name() == "softmax.Target"


@needs_models
def test_mnist24_structure():
    dn = _load(MNIST24)
    assert _shapes(dn) == {"conv1": (16, 11, 11), "conv2": (24, 4, 4), "fc1": (150, 1, 1), "fc1.drop": (150, 1, 1),
                           "fc2": (10, 1, 1), "softmax": (10, 1, 1)}
    from n2d2.models import count_parameters

    links = int(dn["conv2"].mapping.to_numpy().sum())
    assert links == 90
    assert count_parameters(dn) == 16 * 16 + links * 25 + 384 * 150 + 1500
    assert dn["fc2"].weights_filler.get_type() == "Xavier"
    assert dn.get_provider().get_transformations()[0].get_type() == "PadCrop"
    from n2d2 import stats

    g = dn.get_graph()
    macs = sum(stats.call_macs(dn._cell_of[n], tuple(g.input_types(n)[0].shape), tuple(g.output_types(n)[0].shape))
               for n in g.topological_order() if n in dn._cell_of)
    assert round(macs / 1000) == 126  # "126kMAC/image" (the file's header comment)


@needs_models
def test_lenet_ini_trains_on_a_small_budget(tmp_path):
    text = open(LENET).read().replace("BatchSize=128", "BatchSize=32")
    dn = _load(write(tmp_path, text, "LeNet32.ini"))
    n2d2.global_variables.seed = 7
    dn._run_epoch("Learn", True, nb_max=2048)
    success = dn.run_test(nb_test=512)
    assert success > 0.5, success  # chance is 0.1; about 0.7 here, 0.99 after 10 epochs


@needs_models
def test_lenet_ini_equals_the_lenet_ini_model(tmp_path):
    """Reference 22 (integration.py): LeNet from the INI and `models.LeNetINI` with the same
    weights give the same outputs (and the same first training step)."""
    lenet = pytest.importorskip("n2d2.models.lenet")
    from n2d2.cells import Sequence, Softmax
    from n2d2.cells.deepnet_cell import DeepNetCell

    dn = _load(LENET)
    dn.export_free_parameters(str(tmp_path / "w"), verbose=False)
    model = Sequence([lenet.LeNetINI(), Softmax(with_loss=True, name="softmax")])
    twin = DeepNetCell.from_block(model, dn.get_provider(), backend="numpy")
    twin.import_free_parameters(str(tmp_path / "w"))
    provider = dn.get_provider()
    provider.set_partition("Test")
    x = provider.read_batch(0)
    for net in (dn, twin):
        net.test()
    y_ini, y_model = dn(x).to_numpy(), twin(x).to_numpy()
    assert rel_err(y_ini, y_model) < 1e-6
    ones = n2d2.Tensor([128, 1, 32, 32], value=1.0)
    n2d2.provider.TensorPlaceholder(ones)
    assert rel_err(dn(ones).to_numpy(), twin(ones).to_numpy()) < 1e-6
    # one learning step from the same state: the same weights after the update
    provider.set_partition("Learn")
    for net in (dn, twin):
        n2d2.global_variables.seed = 11
        net.learn()
        batch = provider.read_batch(0)
        loss = net.get_target()(net(batch))
        loss.back_propagate()
        loss.update()
    for name in ("conv1", "conv2", "conv3", "fc1", "fc2"):
        assert rel_err(dn[name]._weights, twin[name]._weights) < 1e-5, name


# -- robustness: mutated files raise IniError only ------------------------------------------------------------------
def _mutation_base():
    text = open(LENET).read()
    text = text.replace("BatchSize=128", "BatchSize=2").replace("[sp]_EpochSize", "1000")
    return [line for line in text.splitlines() if line.strip() and not line.startswith(";")]


_GARBAGE = st.sampled_from(["[", "]", "=", "[conv9]", "Input=conv9", "Type=Foo", "NbOutputs=-3", "KernelDims=0 0",
                            "Mapping(pool1)=1 0", "$(1/0)", "${X}", "[sp]Nope", "\\", "\"", "Stride=x",
                            "ActivationFunction=Bogus", "ConfigSection=zz", "Pooling=Min", "[conv1]Input",
                            "Padding=-9", "WithLoss=maybe", "NbOutputs=$(2**40)", "Solvers.Momentum=abc"])


@st.composite
def _mutations(draw):
    lines = list(_mutation_base())
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["delete", "swap", "garbage"]))
        i = draw(st.integers(0, len(lines) - 1))
        if kind == "delete":
            del lines[i]
        elif kind == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            if "=" in lines[i] and "=" in lines[j]:
                (ki, vi), (kj, vj) = lines[i].split("=", 1), lines[j].split("=", 1)
                lines[i], lines[j] = f"{ki}={vj}", f"{kj}={vi}"
        else:
            lines.insert(i, draw(_GARBAGE))
    return "\n".join(lines) + "\n"


@needs_models
@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=_mutations())
def test_mutated_lenet_raises_only_ini_errors(tmp_path, text):
    path = write(tmp_path, text, "mutated.ini")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IniWarning)
            dn = load_ini(path, backend="numpy")
    except IniError as e:
        assert e.file == path and str(e).startswith(path)
        return
    assert len(dn) >= 1


def test_deepnet_cell_load_from_ini(tmp_path):
    from n2d2.cells.deepnet_cell import DeepNetCell

    path = write(tmp_path, SP.format(c=1) + "[fc]\nInput=sp\nType=Fc\nNbOutputs=3\n[fc.Target]\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IniWarning)
        dn = DeepNetCell.load_from_INI(path, backend="numpy")
    assert isinstance(dn, DeepNetCell) and [c.get_name() for c in dn] == ["fc"]
    assert dn.get_target().get_name() == "fc.Target" and dn.get_provider().get_batch_size() == 2
