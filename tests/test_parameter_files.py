"""Parameter files from untrusted names (issue 11, finding 3 and parts of 9; issue 10's log):
file names stay inside the folder the user named, sets are written with a manifest last so
that a torn set is detected, files honour the umask, and .syntxt parsing is strict."""
import os
import stat

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from n2d2.cells import BatchNorm2d, Conv, Fc, Sequence
from n2d2.cells.nn.base import format_rows
from n2d2.error_handler import ParameterFileError
from n2d2.names import MAX_STEM_LENGTH, file_stem, file_stems
from n2d2.parameter_files import MANIFEST_NAME, parse_syntxt
from n2d2.utils import atomic_write_text, write_inside

PYTORCH_NAMES = ["/conv/Conv_output_0", "/fc/Gemm", "onnx::Conv_12"]
ESCAPING_NAMES = ["../../x", "..", "a/../../../b", "./.hidden", "c:\\windows\\x", "nul\0byte", "line\nbreak"]


def _files_under(root):
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}


def _net(names):
    return Sequence([Fc(3, 2, name=name) for name in names], name="net")


def _weights(net):
    return [c._weights.copy() for c in net.get_cells().values()]


# -- n2d2.names.file_stem ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["conv1", "Conv_0", "fc.1", "BatchNorm2d_2", "softmax.Target", "a-b", "x" * 128])
def test_safe_names_map_to_themselves(name):
    assert file_stem(name) == name


@pytest.mark.parametrize("name", PYTORCH_NAMES + ESCAPING_NAMES + ["", ".", "-rf", "x" * 129, "\u00e9t\u00e9"])
def test_unsafe_names_are_mangled_with_a_hash(name):
    stem = file_stem(name)
    assert stem != name and "+" in stem and "/" not in stem and "\\" not in stem and ".." not in stem
    assert len(stem) <= MAX_STEM_LENGTH and not stem.startswith((".", "-")) and stem.isascii()
    assert file_stem(name) == stem  # deterministic: the import finds what the export wrote


@settings(derandomize=True, max_examples=500, deadline=None)
@given(st.lists(st.text(max_size=300), min_size=1, max_size=8, unique=True))
def test_file_stems_are_plain_bounded_and_distinct(names):
    try:
        stems = file_stems(names)
    except ValueError as e:  # names differing only in case: refused, never silently merged
        assert "same file name" in str(e)
        return
    assert len(set(stems.values())) == len(names)
    for stem in stems.values():
        assert 0 < len(stem) <= MAX_STEM_LENGTH and stem.isascii() and stem.isprintable()
        assert "/" not in stem and "\\" not in stem and ".." not in stem and stem[0] not in ".-"


def test_file_stems_refuse_two_cells_that_would_share_files():
    with pytest.raises(ValueError, match="'conv' and 'Conv'"):
        file_stems(["conv", "Conv"])
    with pytest.raises(ValueError, match="appears twice"):
        file_stems(["fc", "fc"])


# -- names stay inside the folder ----------------------------------------------------------------
def test_escaping_names_stay_inside_and_round_trip(tmp_path):
    folder = tmp_path / "a" / "b" / "params"
    net = _net(ESCAPING_NAMES)
    net.export_free_parameters(str(folder), verbose=False)  # old code: wrote tmp_path/a/x_weights.syntxt
    assert _files_under(tmp_path) == {os.path.join("a", "b", "params", f) for f in _files_under(folder)}
    assert all(os.path.dirname(f) == "" for f in _files_under(folder))
    other = _net(ESCAPING_NAMES)
    other.import_free_parameters(str(folder))
    assert all(np.array_equal(a, b) for a, b in zip(_weights(net), _weights(other)))


def test_pytorch_onnx_names_stay_inside_and_round_trip(tmp_path, capsys):
    net = Sequence([Conv(1, 2, [3, 3], name="/conv/Conv_output_0"), Fc(2, 2, name="/fc/Gemm"),
                    BatchNorm2d(2, name="onnx::BatchNormalization_3")], name="torch")
    net.export_free_parameters("params")  # old code: /conv/Conv_output_0_weights.syntxt at the root
    assert not os.path.exists("/conv/Conv_output_0_weights.syntxt")
    written = _files_under(tmp_path)
    assert all(f.startswith("params" + os.sep) for f in written) and len(written) == 2 + 2 + 4 + 1
    printed = capsys.readouterr().out
    for f in written:
        if f.endswith(".syntxt"):
            assert f"Export to {f}" in printed  # issue 10: the log names the real files
    other = Sequence([Conv(1, 2, [3, 3], name="/conv/Conv_output_0"), Fc(2, 2, name="/fc/Gemm"),
                      BatchNorm2d(2, name="onnx::BatchNormalization_3")], name="torch")
    other.import_free_parameters("params")
    assert f"Import params{os.sep}{file_stem('/fc/Gemm')}_weights.syntxt" in capsys.readouterr().out
    assert np.array_equal(net[0]._weights, other[0]._weights) and np.array_equal(net[1]._weights, other[1]._weights)


def test_import_logs_the_files_it_reads(tmp_path, capsys):
    Fc(3, 2, name="fc").export_free_parameters(str(tmp_path), verbose=False)
    Fc(3, 2, name="fc").import_free_parameters(str(tmp_path))
    out = capsys.readouterr().out  # old code: "Import <dir>/fc.syntxt", a file that does not exist
    assert f"Import {tmp_path}/fc_weights.syntxt" in out and f"Import {tmp_path}/fc_biases.syntxt" in out


def test_writer_refuses_names_and_links_that_leave_the_folder(tmp_path):
    folder, outside = tmp_path / "folder", tmp_path / "outside"
    folder.mkdir(), outside.mkdir()
    (folder / "link").symlink_to(outside)
    for relative in ("../x", "/etc/x", "link/x", "a/../../x", "", "a//b"):
        with pytest.raises(ValueError, match="folder"):
            write_inside(str(folder), relative, "data")
    assert not os.listdir(outside) and sorted(os.listdir(folder)) == ["link"]
    # a file name that is a symbolic link is replaced, not written through
    (outside / "victim").write_text("keep")
    (folder / "fc_weights.syntxt").symlink_to(outside / "victim")
    Fc(3, 2, name="fc").export_free_parameters(str(folder), verbose=False)
    assert (outside / "victim").read_text() == "keep" and not (folder / "fc_weights.syntxt").is_symlink()
    assert write_inside(str(folder), "sub/dir/f.txt", "ok") == os.path.join(str(folder), "sub", "dir", "f.txt")


def test_atomic_writer_renames_to_the_folder_it_created(tmp_path):
    # old code: created tmp_path/b but renamed to "missing/../b/f.txt", which does not resolve
    atomic_write_text("missing/../b/f.txt", "text")
    assert (tmp_path / "b" / "f.txt").read_text() == "text" and not (tmp_path / "missing").exists()


def test_ini_run_with_escaping_section_names_writes_nothing_outside(tmp_path, capsys):
    from n2d2.frontends.ini import runner
    from tests.test_ini_runner import tiny_model

    model = tiny_model(tmp_path, validation=0.2, per_class=6)
    text = open(model).read()
    for old, new in (("[fc]", "[../../fc]"), ("Input=fc", "Input=../../fc"), ("[fc]NbOutputs", "[../../fc]NbOutputs"),
                     ("[softmax]", "[../../softmax]"), ("[softmax.Target]", "[../../softmax.Target]")):
        text = text.replace(old, new)
    assert "[../../fc]" in text and "[../../softmax.Target]" in text
    open(model, "w").write(text)
    before = _files_under(tmp_path)
    out = tmp_path / "deep" / "er" / "out"
    runner.run(model, learn=16, log=8, test=True, output=str(out), seed=3, backend="numpy")
    new = _files_under(tmp_path) - before
    outside = [f for f in new if not f.startswith(os.path.join("deep", "er", "out") + os.sep)]
    assert not outside and new  # old code: weights_init/../../fc_weights.syntxt, ../../softmax.Target/...
    assert (out / "weights_init" / (file_stem("../../fc") + "_weights.syntxt")).is_file()


def test_parameter_file_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    import threading

    os.mkfifo(tmp_path / "fc_weights.syntxt")
    errors = []

    def load():
        try:
            Fc(2, 1, name="fc", no_bias=True).import_free_parameters(str(tmp_path))
        except Exception as e:  # noqa: BLE001 (the assertion below says which)
            errors.append(e)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(60)  # old code: blocked in open() until a writer came, i.e. forever
    assert not worker.is_alive() and len(errors) == 1 and isinstance(errors[0], ParameterFileError)
    assert "not a regular file" in str(errors[0])


def test_cells_without_parameters_write_nothing(tmp_path):
    from n2d2.cells import Pool2d, Softmax

    Sequence([Pool2d([2, 2]), Softmax()]).export_free_parameters(str(tmp_path / "p"))
    assert not (tmp_path / "p").exists()


# -- manifest and torn sets ----------------------------------------------------------------------
def test_upstream_folder_without_manifest_imports_by_plain_names(tmp_path):
    # as N2D2 writes them: %g values, one row per output, trailing spaces; no manifest
    (tmp_path / "fc1_weights.syntxt").write_text("0.1 -0.2 3e-05 \n4 5.5 -6 \n")
    (tmp_path / "fc1_biases.syntxt").write_text("1 \n-1 \n")
    cell = Fc(3, 2, name="fc1")
    cell.import_free_parameters(str(tmp_path))
    assert np.allclose(cell._weights.reshape(2, 3), [[0.1, -0.2, 3e-05], [4, 5.5, -6]])
    assert np.allclose(cell._biases.reshape(-1), [1, -1])
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_torn_set_from_another_export_is_detected_and_named(tmp_path):
    net = _net(["fc1", "fc2", "fc3"])
    net.export_free_parameters(str(tmp_path / "a"), verbose=False)
    _net(["fc1", "fc2", "fc3"]).export_free_parameters(str(tmp_path / "b"), verbose=False)
    os.replace(tmp_path / "b" / "fc2_weights.syntxt", tmp_path / "a" / "fc2_weights.syntxt")
    other = _net(["fc1", "fc2", "fc3"])
    before = _weights(other)
    with pytest.raises(ParameterFileError, match=r"torn: fc2_weights\.syntxt do not match"):
        other.import_free_parameters(str(tmp_path / "a"))  # old code: imported the mix silently
    assert all(np.array_equal(x, y) for x, y in zip(before, _weights(other)))  # all or nothing


def test_export_killed_midway_is_detected(tmp_path, monkeypatch):
    import n2d2.parameter_files as pf

    folder = str(tmp_path / "p")
    _net(["fc1", "fc2"]).export_free_parameters(folder, verbose=False)
    calls = []

    def dying_write(folder, name, data):
        calls.append(name)
        if len(calls) == 3:  # incomplete manifest, fc1_weights, then killed
            raise KeyboardInterrupt
        return write_inside(folder, name, data)

    monkeypatch.setattr(pf, "write_inside", dying_write)
    with pytest.raises(KeyboardInterrupt):
        _net(["fc1", "fc2"]).export_free_parameters(folder, verbose=False)
    monkeypatch.undo()
    with pytest.raises(ParameterFileError, match=r"interrupted.*fc1_weights\.syntxt"):
        _net(["fc1", "fc2"]).import_free_parameters(folder)
    # exporting again repairs the set; a single cell re-exported keeps the others' entries
    net = _net(["fc1", "fc2"])
    net.export_free_parameters(folder, verbose=False)
    net["fc1"].export_free_parameters(folder, verbose=False)
    _net(["fc1", "fc2"]).import_free_parameters(folder)


_ESCAPING_MANIFEST = ('{"format": "n2d2 parameter set", "version": 1, "complete": true, '
                      '"files": {"../x.syntxt": {"cell": "x", "bytes": 1, "sha256": "' + "0" * 64 + '"}}}')


@pytest.mark.parametrize("content", ["not json", _ESCAPING_MANIFEST, "[" * 100000],
                         ids=["not-json", "escaping-name", "deep-nesting"])
def test_malformed_manifest_is_a_clear_error(tmp_path, content):
    Fc(3, 2, name="fc").export_free_parameters(str(tmp_path), verbose=False)
    (tmp_path / MANIFEST_NAME).write_text(content)
    with pytest.raises(ParameterFileError, match=MANIFEST_NAME):
        Fc(3, 2, name="fc").import_free_parameters(str(tmp_path))


# -- file modes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        Fc(3, 2, name="fc").export_free_parameters(str(tmp_path / "p"), verbose=False)
        atomic_write_text(str(tmp_path / "log.txt"), "x")
    finally:
        os.umask(old)
    for path in [tmp_path / "p" / "fc_weights.syntxt", tmp_path / "p" / MANIFEST_NAME, tmp_path / "log.txt"]:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask, path  # old code: 0o600 always


# -- strict .syntxt ------------------------------------------------------------------------------
@pytest.mark.parametrize("token", ["nan", "NaN", "inf", "-inf", "Infinity", "1_000", "\uff11", "\u0663", "0x10",
                                   "1.5f", "--1", "1e", "+", ".", "1,5", "1e400", "-1e39", "1\x000", "\u00a01",
                                   "1.0.0", "e5", "\ufeff1"])
def test_strict_syntxt_rejects_each_bad_token(tmp_path, token):
    cell = Fc(2, 1, name="fc", no_bias=True)
    (tmp_path / "fc_weights.syntxt").write_bytes(b"0.5 " + token.encode("utf-8") + b" \n")
    with pytest.raises(ParameterFileError, match=r"'fc'.*fc_weights\.syntxt:1:5: .*(not a number|float32 range)"):
        cell.import_free_parameters(str(tmp_path))


@pytest.mark.parametrize("text", ["1 -2.5\n", "+.5\t5.\r\n", "1e-3 1E+3", "-0 0.000001\n\n", "  3.4028234e38 -1e-45 "])
def test_strict_syntxt_accepts_plain_decimals(text):
    values = parse_syntxt(text.encode(), "f.syntxt", "c", (2,))
    assert values.dtype == np.float32 and np.all(np.isfinite(values))


def test_size_is_checked_before_reading_or_allocating(tmp_path):
    cell = Fc(2, 1, name="fc", no_bias=True)
    (tmp_path / "fc_weights.syntxt").write_text("1 2\n" + "3 " * 1_000_000)
    with pytest.raises(ParameterFileError, match="too large for the 2 values"):
        cell.import_free_parameters(str(tmp_path))
    (tmp_path / "fc_weights.syntxt").write_text("1 2\n3 4\n")
    with pytest.raises(ParameterFileError, match=r"fc_weights\.syntxt:2 holds more than the 2 values"):
        cell.import_free_parameters(str(tmp_path))


_VALID = b"0.25 -1 3e-2\n4.5 \t 6\r\n"
_FUZZ_BYTES = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from([b"1", b"-", b"+", b".", b"e", b"E", b" ", b"\t", b"\n", b"\r", b"0", b"9", b"_",
                              b"nan", b"inf", b"\xef\xbc\x91", b"\x00", b"400", b"e400", b"\xff"]),
             max_size=60).map(b"".join),
    st.tuples(st.integers(0, len(_VALID)), st.binary(max_size=4)).map(lambda t: _VALID[:t[0]] + t[1] + _VALID[t[0]:]),
)


def _parse_only_raises_library_errors(data, shape):
    try:
        values = parse_syntxt(data, "fuzz.syntxt", "cell", shape)
    except ParameterFileError as e:
        assert "fuzz.syntxt" in str(e) and "'cell'" in str(e)
        return
    assert values.shape == shape and values.dtype == np.float32 and np.all(np.isfinite(values))


@settings(derandomize=True, max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_FUZZ_BYTES, st.sampled_from([(0,), (1,), (5,), (2, 3)]))
def test_fuzz_syntxt_parser_raises_only_library_errors(data, shape):
    _parse_only_raises_library_errors(data, shape)


@pytest.mark.slow
@settings(derandomize=True, max_examples=30000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_FUZZ_BYTES, st.sampled_from([(0,), (1,), (5,), (2, 3)]))
def test_fuzz_syntxt_parser_raises_only_library_errors_long(data, shape):
    _parse_only_raises_library_errors(data, shape)


@pytest.mark.parametrize("array", [
    np.random.default_rng(0).standard_normal((12, 75)).astype(np.float32),
    np.array([[np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, 3.4028235e38, 1.0 / 3.0]], dtype=np.float32),
    np.random.default_rng(1).standard_normal((7, 1)),
    np.arange(12, dtype=np.int64).reshape(3, 4),
    np.random.default_rng(2).standard_normal((5, 3, 2)).astype(np.float32)])
def test_format_rows_writes_each_value_as_9_significant_digits(array):
    """One line per row, every value `%.9g` followed by a space; float32 (and integer) values read
    back exactly (float64 ones to 9 digits)."""
    rows = np.asarray(array).reshape(len(array), -1)
    assert format_rows(array) == "".join("".join("%.9g " % v for v in row) + "\n" for row in rows)
    back = np.array([[float(v) for v in line.split()] for line in format_rows(array).splitlines()])
    exact = array.dtype != np.float64
    assert np.allclose(back.astype(array.dtype), rows, rtol=0 if exact else 1e-8, atol=0, equal_nan=True)
