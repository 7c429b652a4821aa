"""n2d2.names: the sanitiser of names reaching generated code. Properties on random and hostile
text (no output can leave its comment, literal or identifier), then gcc itself as the judge:
hundreds of escaped comments and literals in one C file that must build under -Werror with
trigraphs on, and literals that must read back as the original UTF-8 bytes."""
import re
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from n2d2.codegen.compiler import find_compiler
from n2d2.names import _KEYWORDS, c_comment, c_identifier, c_string_literal, markdown_code

HOSTILE = ["*/", "/*", "//", "\n", "\r", "\r\n", "\\", "\\\n", "??/", "??=", "?", "*", "/", '"', "'", "$(id)",
           "`", "|", "#", "\x00", "\x1b", "\x7f", "é", "\u2028", "\ufeff", "\U0001f600",
           "x */ int N2D2_PWNED = 1; /* y"]
hostile_text = st.one_of(st.text(), st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=3)),
                                             max_size=12).map("".join))
PROPS = settings(max_examples=500, derandomize=True, deadline=None)
needs_cc = pytest.mark.skipif(find_compiler() is None, reason="needs a C compiler")
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _comment_ok(out: str, limit: int):
    assert len(out) <= limit
    assert all(" " <= ch <= "~" for ch in out), out
    for bad in ("*/", "/*", "??"):
        assert bad not in out, out
    assert not out.endswith("\\") and out[:1] not in ("*", "/") and out[-1:] not in ("*", "/"), out


@PROPS
@given(hostile_text)
def test_c_comment_cannot_end_a_comment(text):
    _comment_ok(c_comment(text), 160)
    _comment_ok(c_comment(text, limit=20), 20)
    md = markdown_code(text)
    _comment_ok(md, 160)
    assert "`" not in md and "|" not in md


@PROPS
@given(st.text(alphabet="abcXYZ019_ .,:-()'[]=+", max_size=60))
def test_c_comment_keeps_plain_text(text):
    assert c_comment(text) == text


@PROPS
@given(hostile_text)
def test_c_string_literal_cannot_end_a_literal(text):
    out = c_string_literal(text)
    assert len(out) <= 160 and all(" " <= ch <= "~" for ch in out) and "??" not in out
    # every backslash starts one escape; every quote is escaped
    assert re.fullmatch(r'(?:[^"\\?]|\\[0-7]{3}|\\["\\?])*(?:\.\.\.)?', out), out


@PROPS
@given(hostile_text, hostile_text)
def test_c_identifier_is_a_bounded_deterministic_identifier(a, b):
    ia = c_identifier(a)
    assert IDENT.match(ia) and len(ia) <= 63 and ia == c_identifier(a)
    assert not ia.startswith("__") and not re.match(r"_[A-Z]", ia)
    assert len(c_identifier(a, limit=20)) <= 20
    if a != b:
        assert ia != c_identifier(b)
    taken = set()
    ids = [c_identifier(x, taken) for x in (a, b, a, a)]
    assert len(set(ids)) == 4 and set(ids) == taken and all(IDENT.match(i) and len(i) <= 63 for i in ids)


@PROPS
@given(st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,40}", fullmatch=True))
def test_c_identifier_keeps_safe_names(name):
    if name not in _KEYWORDS:
        assert c_identifier(name) == name
    assert c_identifier(name, set()) == c_identifier(name)


def test_c_identifier_examples():
    assert c_identifier("conv1") == "conv1"
    assert c_identifier("int").startswith("n_int_")
    assert c_identifier("__asm__").startswith("n_asm_")
    assert c_identifier("9lives").startswith("n_9lives_")
    assert len(c_identifier("g" * 300)) <= 63
    assert c_identifier("a.b") != c_identifier("a_b") == "a_b"
    taken = {"a", "a_2"}
    assert c_identifier("a", taken) == "a_3" and "a_3" in taken


def _cases():
    import random

    rng = random.Random(11)
    pool = HOSTILE + ["".join(rng.choice(HOSTILE) for _ in range(rng.randint(1, 8))) for _ in range(300)]
    pool += ["".join(chr(rng.choice([rng.randint(0, 0x7f), rng.randint(0x80, 0x10ffff)])) for _ in range(12))
             for _ in range(200)]
    return [s for s in pool if not any(0xD800 <= ord(c) <= 0xDFFF for c in s)]


@needs_cc
def test_gcc_reads_escaped_comments_and_literals_back(tmp_path):
    """Every case sits in a `/* */` comment, a `//` comment and a string literal of one C file
    compiled with -std=c11 (trigraphs on) -Wall -Wextra -Werror -pedantic; the program counts the
    array items the comments sit between and prints every literal's bytes, which must be the
    case's UTF-8."""
    cases = _cases()
    lines = ["#include <stdio.h>", "static const int items[] = {"]
    for i, text in enumerate(cases):
        lines.append(f"    {i}, /* {c_comment(text, limit=10000)} */")
        lines.append(f"    // {c_comment(text, limit=10000)}")
    lines.append("};")
    lines.append("static const char *const texts[] = {")
    lines += [f'    "{c_string_literal(text, limit=10000)}",' for text in cases]
    lines += ["};", "int main(void)", "{",
              f"    if (sizeof items / sizeof items[0] != {len(cases)}) return 3;",
              f"    for (int i = 0; i < {len(cases)}; ++i) {{ if (items[i] != i) return 4; "
              "for (const char *p = texts[i]; *p; ++p) printf(\"%02x\", (unsigned char)*p); printf(\"\\n\"); }",
              "    return 0;", "}"]
    src, exe = tmp_path / "names.c", tmp_path / "names"
    src.write_text("\n".join(lines) + "\n", encoding="ascii")
    build = subprocess.run([find_compiler(), "-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-trigraphs",
                            str(src), "-o", str(exe)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True)
    assert run.returncode == 0, run.returncode
    expected = [text.encode("utf-8").split(b"\x00")[0].hex() for text in cases]   # C strings end at NUL
    assert run.stdout.splitlines() == expected
