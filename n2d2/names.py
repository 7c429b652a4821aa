"""Names from model files turned into generated text and file names: the one sanitiser.

ONNX node, tensor, initializer and graph names and INI section names come from strangers and
reach generated C, CUDA, Makefile and README text, and file names (parameter files). Every
such name goes through one of these functions (templates: the `cident`, `c_comment`, `c_string` and `md_code` filters of
`n2d2.codegen.render`), which guarantee that no input can leave the comment, string literal or
identifier it is written into. Identifiers are deterministic: the same name gives the same
source, so compiled artefacts stay cached.
"""
from __future__ import annotations

import hashlib
import re

from n2d2.error_handler import WrongInputType

IDENTIFIER_LIMIT = 63        # C99's guaranteed significant characters of an internal identifier
COMMENT_LIMIT = 160
STRING_LIMIT = 160

_SAFE_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_KEYWORDS = frozenset("""
    auto break case char const continue default do double else enum extern float for goto if inline
    int long register restrict return short signed sizeof static struct switch typedef union unsigned
    void volatile while asm bool catch class const_cast delete dynamic_cast explicit export false friend
    mutable namespace new operator private protected public reinterpret_cast static_cast template this
    throw true try typeid typename using virtual wchar_t alignas alignof char16_t char32_t constexpr
    decltype noexcept nullptr static_assert thread_local and and_eq bitand bitor compl not not_eq or
    or_eq xor xor_eq main""".split())


def _digest(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def c_identifier(name, taken: set | None = None, limit: int = IDENTIFIER_LIMIT) -> str:
    """A C/C++ identifier for `name`: `[A-Za-z_][A-Za-z0-9_]*`, at most `limit` characters.

    A name that already is one (and is not a keyword or a reserved `__x` / `_X` name) maps to
    itself; any other gets its unsafe runs replaced by `_` and a hash of the whole name appended,
    so distinct names stay distinct. With `taken` (a set), a name already in it gets a `_2`,
    `_3`... suffix, and the result is added to it.
    """
    if limit < 16:
        raise ValueError(f"c_identifier: limit {limit} is too small (16 at least)")
    text = str(name)
    ident = text
    reserved = text.startswith("__") or (len(text) > 1 and text[0] == "_" and text[1].isupper())
    if not (_SAFE_IDENT.match(text) and len(text) <= limit) or text in _KEYWORDS or reserved:
        body = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")
        tag = _digest(text)
        ident = f"n_{body[:limit - len(tag) - 3]}_{tag}" if body else f"n_{tag}"
    if taken is not None:
        base, k = ident, 2
        while ident in taken:
            suffix = f"_{k}"
            ident = base[:limit - len(suffix)] + suffix
            k += 1
        taken.add(ident)
    return ident


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if ch == "\n":
        return "\\n"
    if ch == "\r":
        return "\\r"
    if ch == "\t":
        return "\\t"
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _bounded(tokens: list, limit: int) -> str:
    """Tokens joined, cut at a token boundary to at most `limit` characters (marked `...`)."""
    total = sum(len(t) for t in tokens)
    if total <= limit:
        return "".join(tokens)
    out, size = [], 0
    for t in tokens:
        if size + len(t) > limit - 3:
            break
        out.append(t)
        size += len(t)
    return "".join(out) + "..."


def c_comment(text, limit: int = COMMENT_LIMIT, _also: str = "") -> str:
    """`text` made safe inside a C/C++ `/* */` or `//` comment, a Makefile `#` comment or any
    single line of prose: printable ASCII only, on one line, without `*/`, `/*` or `??`
    (trigraphs), never ending with a backslash or starting/ending with `*` or `/` (so it may sit
    right next to the comment's delimiters). Everything else is escaped as `\\n`, `\\xHH`,
    `\\uHHHH`, `*\\/`...; at most `limit` characters (cut text ends with `...`)."""
    tokens, prev = [], ""
    for ch in str(text):
        if ch == "\\" or not (" " <= ch <= "~") or ch in _also:
            tok = _escape_char(ch)
        elif ch in "*/" and prev == "":
            tok = _escape_char(ch)                 # may follow the comment's opening `/*`
        elif (ch == "/" and prev == "*") or (ch == "*" and prev == "/"):
            tok = "\\" + ch
        elif ch == "?" and prev == "?":
            tok = "\\?"
        else:
            tok = ch
        tokens.append(tok)
        prev = tok[-1]
    if tokens and tokens[-1] in ("*", "/", "\\*", "\\/"):
        tokens[-1] = _escape_char(tokens[-1][-1])   # may precede the comment's closing `*/`
    return _bounded(tokens, limit)


def c_string_literal(text, limit: int = STRING_LIMIT) -> str:
    """The contents of a C/C++ string literal (without the quotes) whose value is `text` in
    UTF-8: every byte but printable ASCII is an octal escape, `"`, `\\` and `?` (trigraphs) are
    escaped, so no input can end the literal. At most `limit` characters (cut at an escape
    boundary, marked `...`)."""
    tokens = []
    for byte in str(text).encode("utf-8", "backslashreplace"):
        ch = chr(byte)
        if ch in '"\\?':
            tokens.append("\\" + ch)
        elif 0x20 <= byte <= 0x7E:
            tokens.append(ch)
        else:
            tokens.append(f"\\{byte:03o}")
    return _bounded(tokens, limit)


def markdown_code(text, limit: int = COMMENT_LIMIT) -> str:
    """`text` for a Markdown code span in a table cell: `c_comment`'s one line of escaped ASCII,
    with backticks and `|` escaped too (they would end the span or the cell)."""
    return c_comment(text, limit, _also="`|")


# -- file names ------------------------------------------------------------------------------------
# A cell named `/conv/Conv_output_0` (every PyTorch ONNX export) or `../../x` must not become a
# path. `file_stem` is the one place where a name becomes a file name; names that are already safe
# map to themselves, so parameter folders written by upstream N2D2 or earlier versions keep theirs.
#: Longest stem: leaves room for suffixes (`_variances.syntxt`) and temp-file prefixes under the
#: 255-byte NAME_MAX of common file systems.
MAX_STEM_LENGTH = 128

_SAFE_STEM = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*\Z")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_.\-]+")
#: Separates a mangled stem from its hash; not in the safe alphabet, so a mangled stem never
#: equals a name that maps to itself.
MANGLE_MARK = "+"
_HASH_LENGTH = 12


def is_safe_stem(name: str) -> bool:
    """True when `name` can be used as a file name as it is (ASCII letters, digits, `_`, `.`,
    `-`; not starting with `.` or `-`; no `..`; at most MAX_STEM_LENGTH characters)."""
    return (isinstance(name, str) and len(name) <= MAX_STEM_LENGTH and _SAFE_STEM.match(name) is not None
            and ".." not in name)


def file_stem(name: str) -> str:
    """A file name (without extension) for the cell/section name `name`.

    Safe names (see `is_safe_stem`) are returned unchanged; any other name becomes its safe
    characters (runs of others replaced by `_`, leading `.`/`-`/`_` dropped, `..` collapsed,
    bounded length; `cell` when nothing is left) followed by `+` and 12 hex digits of the
    SHA-256 of the full name, so two different names never share a stem (short of a hash
    collision) and no stem holds a path separator, `..`, NUL or control characters.
    """
    if not isinstance(name, str):
        raise WrongInputType("name", type(name), ["str"])
    if is_safe_stem(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LENGTH]
    readable = _UNSAFE_RUN.sub("_", name)
    readable = re.sub(r"\.{2,}", ".", readable).lstrip("._-")
    readable = readable[:MAX_STEM_LENGTH - _HASH_LENGTH - len(MANGLE_MARK)] or "cell"
    return f"{readable}{MANGLE_MARK}{digest}"


def file_stems(names) -> dict:
    """{name: file_stem(name)} for a set of names, checking that no two names share a stem.

    Raises ValueError naming both names when they do (the same name given twice, or two names
    that differ only in case, which would overwrite each other on a case-insensitive disk).
    """
    stems, owner = {}, {}
    for name in names:
        stem = file_stem(name)
        key = stem.casefold()
        if key in owner and owner[key] != name:
            raise ValueError(f"Names '{owner[key]}' and '{name}' map to the same file name '{stem}' "
                             "(on a case-insensitive file system); rename one of the cells")
        if name in stems:
            raise ValueError(f"Name '{name}' appears twice: both cells would write the same files")
        owner[key] = name
        stems[name] = stem
    return stems


__all__ = ["c_identifier", "c_comment", "c_string_literal", "markdown_code", "file_stem", "file_stems",
           "is_safe_stem", "MAX_STEM_LENGTH"]
