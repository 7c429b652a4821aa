"""Reading N2D2 INI files: lexing, sections, inheritance, templates and value substitution.

Lexical rules (N2D2's `IniParser`):

- line based; a UTF-8 BOM is skipped, CRLF and trailing blanks are stripped;
- a line ending with `\\` continues on the next one (the backslash is dropped, nothing is
  inserted: authors leave a space before it);
- `;` or `#` start a comment, except inside a double-quoted span; comments are removed from
  each physical line, so each line of a continued table may carry one (N2D2 removes them from
  the joined line, where a comment would swallow the rest of the table);
- `[name]` starts a section; text after `]` lists parent sections (defined earlier) whose
  keys are copied in first; `[name@file.ini.tpl]` includes a rendered template (see
  `render_template`); a duplicate section is an error;
- `key=value` (key right-trimmed, value left-trimmed, `"..."` unquoted); a line without `=`
  is an error; a duplicate key overrides the first one with a warning;
- keys starting with `$` are variables (`$SIZE=24`, usually in the global section).

Values are substituted lazily, each time they are read (`IniDocument.value`), in N2D2's order:

1. `[section]Key` cross references (the key ends at the first character that is not a word
   character or a dot; text in brackets that is not a section is left alone);
2. `${NAME}`: `$NAME` of the current section, then of the global section, then the built-ins
   `SECTION_NAME` and `PREV_SECTION_NAME`, then the environment; unknown names stay as they are;
3. `$( expression )`: a Python expression evaluated by a small safe evaluator (numbers,
   arithmetic, comparisons, `x if c else y`, `int float round abs min max`, `math` functions);
   the result is printed as Python's `print` would.

Generated keys (`_EpochSize`, `_NbOutputs`, `_OutputsWidth`, ...) are written into sections by
the builder while it builds (`IniDocument.set_generated`), so references resolve in build order.

Every error is an `IniError` (a `ValueError`) naming the file, the section, the line and what
was expected. The work and memory of reading a file are bounded (`limits`: expansion size and
steps, reference, template and expression depth, number sizes): a file that passes a bound gets
an `IniError` too, never a hang, a `MemoryError` or a `RecursionError`.
"""
import ast
import math
import operator
import os
import re
import warnings

from n2d2.error_handler import IniError, IniWarning
from n2d2.frontends.ini import limits
from n2d2.frontends.ini.limits import Budget

__all__ = ["IniError", "IniWarning", "Entry", "Section", "IniDocument", "parse_file", "parse_string",
           "render_template", "evaluate_expression", "Reader"]


def warn(message: str, file=None, line=None, section=None):
    """An `IniWarning` reported at the INI file and line (Python shows that line of the file)."""
    where = ""
    if section is not None:
        where = f"[{section}] " if section else "(global section) "
    warnings.warn_explicit(where + message, IniWarning, filename=file or "<ini>", lineno=line or 0)


class Entry:
    """One `key=value` line (value as written, before substitution)."""

    __slots__ = ("key", "value", "file", "line", "origin")

    def __init__(self, key, value, file, line, origin=None):
        self.key = key
        self.value = value
        self.file = file
        self.line = line
        self.origin = origin  # name of the parent section it was inherited from, if any

    def __repr__(self):
        return f"Entry({self.key!r}, {self.value!r}, {self.file}:{self.line})"


class Section:
    """An INI section: its entries in file order (inherited ones first) and where it was declared."""

    def __init__(self, name, file, line, parents=(), template=None):
        self.name = name
        self.file = file
        self.line = line
        self.parents = list(parents)
        self.template = template      # path of the rendered template for `[name@file]`
        self.entries = {}
        self.generated = {}           # builder-written keys (`_NbOutputs`...), plain strings

    def __contains__(self, key):
        return key in self.entries or key in self.generated

    def keys(self):
        return list(self.entries)

    def __repr__(self):
        return f"Section({self.name!r}, {len(self.entries)} keys, {self.file}:{self.line})"


# -- lexing --------------------------------------------------------------------------------------
def _strip_comment(line: str, file, line_no, section):
    """`line` without its `;`/`#` comment (quotes protect them)."""
    in_quote = False
    for i, ch in enumerate(line):
        if ch == '"':
            in_quote = not in_quote
        elif ch in ";#" and not in_quote:
            return line[:i]
    if in_quote:
        raise IniError("unterminated double quote", file, section, line_no, 'a closing "')
    return line


def _logical_lines(text: str, file: str):
    """(line number, text) of each non-empty logical line (continuations joined)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    out = []
    buffer, start = None, None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if line.endswith("\\"):  # continued (checked before comments are removed, as N2D2 does)
            if buffer is None:
                buffer, start = "", number
            buffer += _strip_comment(line[:-1], file, number, None)
            continue
        line = _strip_comment(line, file, number, None)
        if buffer is not None:
            line, number = buffer + line, start
            buffer, start = None, None
        line = line.strip()
        if line:
            out.append((number, line))
    if buffer is not None and buffer.strip():
        out.append((start, buffer.strip()))
    return out


_SECTION_NAME = re.compile(r"^[^\[\]=]+$")


class IniDocument:
    """A parsed INI file: ordered sections (the global one is named "") and value substitution."""

    MAX_TEMPLATE_DEPTH = limits.MAX_TEMPLATE_DEPTH

    def __init__(self, path: str = None):
        self.path = path
        self.sections = {"": Section("", path, None)}
        self.order = []             # section names in file order (global excluded)
        self.position = {}          # section name -> index in `order`
        self.template_parents = set()
        self.nb_entries = 0
        self.nb_templates = 0
        self.template_budget = Budget(limits.MAX_TEMPLATE_STEPS, limits.MAX_TEMPLATE_CHARS)
        self._expanding = []
        self._budget = None         # work spent reading the current value

    # -- structure -----------------------------------------------------------------------------
    def __contains__(self, name):
        return name in self.sections

    def section(self, name) -> Section:
        return self.sections[name]

    @property
    def global_section(self) -> Section:
        return self.sections[""]

    def set_generated(self, section: str, key: str, value):
        self.sections[section].generated[key] = str(value)

    def prev_section_name(self, name: str) -> str:
        """Previous section in file order, skipping template parents (N2D2's `${PREV_SECTION_NAME}`)."""
        if name not in self.position:
            return ""
        i = self.position[name] - 1
        while i >= 0 and self.order[i] in self.template_parents:
            i -= 1
        return self.order[i] if i >= 0 else ""

    # -- raw and substituted values -----------------------------------------------------------------
    def raw(self, section: str, key: str):
        """(raw value, Entry or None) of `key` in `section`; KeyError when absent."""
        sec = self.sections[section]
        if key in sec.entries:
            e = sec.entries[key]
            return e.value, e
        return sec.generated[key], None

    def value(self, section: str, key: str, entry_hint: Entry = None) -> str:
        """The value of `key` in `section`, with every substitution applied."""
        raw, entry = self.raw(section, key)
        return self.expand(raw, section, entry or entry_hint, key)

    def expand(self, text: str, section: str, entry: Entry = None, key: str = None) -> str:
        top = self._budget is None
        if top:
            self._budget = Budget(limits.MAX_EXPANSION_STEPS, limits.MAX_EXPANSION_CHARS)
        token = (section, key)
        if key is not None and token in self._expanding:
            chain = " -> ".join(f"[{s}]{k}" for s, k in self._expanding[self._expanding.index(token):] + [token])
            raise IniError(f"circular reference {chain}", *self._where(section, entry), expected="an acyclic reference")
        if len(self._expanding) >= limits.MAX_REFERENCE_DEPTH:
            first = self._expanding[0]
            raise IniError(f"references nested more than {limits.MAX_REFERENCE_DEPTH} levels deep (from "
                           f"[{first[0]}]{first[1]})", *self._where(section, entry),
                           expected=f"at most {limits.MAX_REFERENCE_DEPTH} nested ${{VAR}} / [section]Key references")
        if key is not None:
            self._expanding.append(token)
        try:
            text = self._cross_references(text, section, entry)
            text = self._variables(text, section, entry)
            return self._expressions(text, section, entry)
        finally:
            if key is not None:
                self._expanding.pop()
            if top:
                self._budget = None

    def _spend(self, produced: str, section, entry) -> str:
        """Count one substitution that produced `produced` against the budget of this read."""
        exceeded = self._budget.spend(1, len(produced))
        if exceeded:
            raise IniError(f"reading this value takes {exceeded} of substitutions (nested ${{VAR}} / [section]Key "
                           "expansion that grows without bound)", *self._where(section, entry),
                           expected=f"at most {limits.MAX_EXPANSION_STEPS} substitutions and "
                                    f"{limits.MAX_EXPANSION_CHARS} characters per value")
        return produced

    def _where(self, section, entry):
        if entry is not None:
            return entry.file, section, entry.line
        sec = self.sections.get(section)
        return (sec.file if sec else self.path), section, (sec.line if sec else None)

    _CROSS = re.compile(r"\[([^\[\]]+)\]((?:[\w.]*[\w])?)")

    def _cross_references(self, text, section, entry):
        def replace(m):
            name, key = m.group(1), m.group(2)
            if name not in self.sections or name == "":
                return m.group(0)
            if not key:
                raise IniError(f"reference [{name}] without a key name", *self._where(section, entry),
                               expected="[section]Key")
            if key not in self.sections[name]:
                available = ", ".join(sorted(self.sections[name].entries)) or "none"
                raise IniError(f"reference [{name}]{key}: section [{name}] has no key '{key}' (yet: generated keys "
                               f"such as _NbOutputs exist once that layer is built; keys: {available})",
                               *self._where(section, entry), expected=f"a key of [{name}]")
            raw, target_entry = self.raw(name, key)
            return self._spend(self.expand(raw, name, target_entry or entry, key), section, entry)

        if "[" not in text:
            return text
        return self._CROSS.sub(replace, text)

    _VAR = re.compile(r"\$\{(\w+)\}")

    def _variables(self, text, section, entry):
        def replace(m):
            name = m.group(1)
            for sec in (section, ""):
                if sec in self.sections and "$" + name in self.sections[sec].entries:
                    raw, e = self.raw(sec, "$" + name)
                    return self._spend(self.expand(raw, sec, e, "$" + name), section, entry)
            if name == "SECTION_NAME":
                return section
            if name == "PREV_SECTION_NAME":
                return self.prev_section_name(section)
            if name in os.environ:
                return os.environ[name]
            return m.group(0)

        if "${" not in text:
            return text
        return self._VAR.sub(replace, text)

    def _expressions(self, text, section, entry):
        out, i = [], 0
        while True:
            j = text.find("$(", i)
            if j < 0:
                out.append(text[i:])
                return "".join(out)
            out.append(text[i:j])
            depth, k = 0, j + 1
            while k < len(text):
                if text[k] == "(":
                    depth += 1
                elif text[k] == ")":
                    depth -= 1
                    if depth == 0:
                        break
                k += 1
            if depth != 0:
                shown = text[j:] if len(text) - j <= 200 else text[j:j + 200] + "..."
                raise IniError(f"unbalanced parentheses in expression {shown!r}", *self._where(section, entry),
                               expected="$( expression )")
            expression = text[j + 2:k]
            try:
                result = evaluate_expression(expression)
            except (ValueError, TypeError, ArithmeticError, SyntaxError, RecursionError, MemoryError) as e:
                shown = expression if len(expression) <= 200 else expression[:200] + "..."
                raise IniError(f"cannot evaluate $({shown}): {e}", *self._where(section, entry),
                               expected="a Python expression of numbers") from None
            out.append(self._spend(_print_form(result), section, entry))
            i = k + 1


def _print_form(value) -> str:
    return str(value)


# -- parsing -------------------------------------------------------------------------------------
def parse_file(path: str) -> IniDocument:
    """Parse the INI file at `path` (templates are resolved from its directory)."""
    path = os.fspath(path)
    try:
        text = read_text(path)
    except UnicodeDecodeError as e:
        raise IniError(f"not a UTF-8 text file ({e.reason} at byte {e.start})", path, expected="a text INI file") \
            from None
    except OSError as e:
        raise IniError(f"cannot read the INI file ({e.strerror or e})", path, expected="a readable file") from None
    return parse_string(text, path)


def read_text(path: str) -> str:
    """The UTF-8 text of an INI or template file, refused (IniError) above `limits.MAX_FILE_BYTES`
    before it is read."""
    with open(path, encoding="utf-8-sig", errors="strict") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limits.MAX_FILE_BYTES:
            raise IniError(f"the file has {size} bytes", path, expected=f"at most {limits.MAX_FILE_BYTES} bytes")
        return f.read(limits.MAX_FILE_BYTES + 1)


def parse_string(text: str, path: str = "<string>", document: IniDocument = None, _depth: int = 0) -> IniDocument:
    """Parse INI `text` (named `path` in messages) into a new document, or into `document`."""
    doc = document if document is not None else IniDocument(path)
    base_dir = os.path.dirname(os.path.abspath(path)) if path and not path.startswith("<") else os.getcwd()
    current = doc.global_section
    pending_template = None

    def flush_template():
        nonlocal pending_template
        if pending_template is not None:
            _include_template(doc, pending_template, _depth)
            pending_template = None

    for number, line in _logical_lines(text, path):
        if line.startswith("["):
            close = line.find("]")
            if close < 0:
                raise IniError(f"section header {line!r} has no closing ']'", path, None, number, "[name]")
            flush_template()
            name = line[1:close].strip()
            parents = line[close + 1:].split()
            template = None
            if "@" in name:
                name, _, tpl = name.partition("@")
                name, tpl = name.strip(), tpl.strip()
                if not tpl:
                    raise IniError(f"template section [{name}@] names no file", path, name, number,
                                   "[name@path/file.ini.tpl]")
                tpl = _expand_env(tpl)
                template = tpl if os.path.isabs(tpl) else os.path.join(base_dir, tpl)
            if not name or not _SECTION_NAME.match(name):
                raise IniError(f"invalid section name {name!r}", path, None, number, "[name] with a non-empty name")
            if name in doc.sections:
                first = doc.sections[name]
                raise IniError(f"duplicate section [{name}] (first declared at {first.file}:{first.line})", path,
                               name, number, "unique section names")
            section = Section(name, path, number, parents, template)
            for parent in parents:
                if parent not in doc.sections or parent == "":
                    raise IniError(f"parent section [{parent}] is not defined before [{name}]", path, name, number,
                                   "parents defined earlier in the file")
                for key, entry in doc.sections[parent].entries.items():
                    section.entries[key] = Entry(key, entry.value, entry.file, entry.line, entry.origin or parent)
            _count_entries(doc, len(section.entries), path, name, number)
            doc.sections[name] = section
            doc.position[name] = len(doc.order)
            doc.order.append(name)
            current = section
            if template is not None:
                doc.template_parents.add(name)
                pending_template = section
            continue
        if "=" not in line:
            raise IniError(f"line {line!r} is neither a section header nor key=value", path, current.name, number,
                           "key=value or [section]")
        key, _, value = line.partition("=")
        key, value = key.rstrip(), value.lstrip()
        if not key:
            raise IniError(f"empty key in {line!r}", path, current.name, number, "key=value")
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1]
        previous = current.entries.get(key)
        if previous is not None and previous.origin is None:
            warn(f"key '{key}' given twice (line {previous.line} and {number}): the last value is used",
                 path, number, current.name)
        current.entries[key] = Entry(key, value, path, number)
        _count_entries(doc, 1, path, current.name, number)
    flush_template()
    return doc


def _count_entries(doc, added, path, section, line):
    doc.nb_entries += added
    if doc.nb_entries > limits.MAX_ENTRIES:
        raise IniError(f"the document holds more than {limits.MAX_ENTRIES} key=value entries (inherited copies "
                       "included)", path, section, line, "a smaller file or shorter inheritance chains")


def _expand_env(text: str) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: os.environ.get(m.group(1), m.group(0)), text)


def _include_template(doc: IniDocument, section: Section, depth: int):
    if depth >= IniDocument.MAX_TEMPLATE_DEPTH:
        raise IniError(f"templates nested more than {IniDocument.MAX_TEMPLATE_DEPTH} levels", section.file,
                       section.name, section.line, "a finite template inclusion")
    doc.nb_templates += 1
    if doc.nb_templates > limits.MAX_TEMPLATES:
        raise IniError(f"more than {limits.MAX_TEMPLATES} template sections", section.file, section.name,
                       section.line, "fewer [name@file.ini.tpl] sections")
    path = section.template
    try:
        text = read_text(path)
    except (OSError, UnicodeDecodeError) as e:
        raise IniError(f"cannot read template '{path}' ({e})", section.file, section.name, section.line,
                       "an existing template file") from None
    # N2D2 substitutes the parameters first: `NB_FILTERS=$(int(64 * ${ALPHA}))` reaches the
    # template as `64`, so that `$({{NB_FILTERS}})` there is a plain expression.
    params = {k: doc.expand(e.value, section.name, e, k) for k, e in section.entries.items()}
    params["SECTION_NAME"] = section.name
    params["SECTION_FILE_NAME"] = section.file or ""
    rendered = render_template(text, params, path, _depth=depth, _budget=doc.template_budget)
    parse_string(rendered, path, document=doc, _depth=depth + 1)


# -- templates -------------------------------------------------------------------------------------
def _template_tokens(text: str) -> list:
    """`text` split into text and `{{...}}` / `{%...%}` tags, alternating (odd items are tags; a
    tag never closed stays text), as `re.split` with lazy `.*?` patterns gives, in linear time:
    that regex rescans the rest of the file for every unclosed `{{`."""
    out, pending = [], []
    i = scan = 0
    n = len(text)
    unclosed = {"{{": n + 1, "{%": n + 1}   # an opener from here on has no closer
    while True:
        j = text.find("{", scan)
        if j < 0 or j + 1 >= n:
            break
        opener = text[j:j + 2]
        if opener not in unclosed:
            scan = j + 1
            continue
        k = text.find("}}" if opener == "{{" else "%}", j + 2) if j < unclosed[opener] else -1
        if k < 0:
            unclosed[opener] = min(unclosed[opener], j)
            scan = j + 1
            continue
        pending.append(text[i:j])
        out.append("".join(pending))
        out.append(text[j:k + 2])
        pending = []
        i = scan = k + 2
    pending.append(text[i:])
    out.append("".join(pending))
    return out


def render_template(text: str, params: dict, path: str = "<template>", _depth: int = 0, _budget: Budget = None) -> str:
    """Render an N2D2 `.ini.tpl` template with `params` (strings).

    Supported: `{{VAR}}`; `{% if VAR exists|not_exists %}`, `{% if VAR ==|!= VALUE %}`,
    `{% else %}`, `{% endif %}`; `{% for V in range([start,] end) %}...{% endfor %}`;
    `{% block ARR %}...{% endblock %}` over `ARR=n` items (`{{.P}}` = `ARR[i].P`, `{{#}}` = i);
    `{% set VAR %}...{% endset %}`; `{% include FILE %}` (relative to the template).
    Bounded by `limits`: nesting, include depth, nodes rendered and characters produced.
    """
    budget = _budget if _budget is not None else Budget(limits.MAX_TEMPLATE_STEPS, limits.MAX_TEMPLATE_CHARS)
    tokens = _template_tokens(text)
    pos = [0]
    starts = []
    offset = 0
    for tok in tokens:
        starts.append(offset)
        offset += tok.count("\n")

    def line_of(index):
        return starts[index] + 1

    def parse_block(ends, depth=0):
        nodes = []
        while pos[0] < len(tokens):
            tok = tokens[pos[0]]
            index = pos[0]
            pos[0] += 1
            if index % 2 == 1:  # a tag
                if tok.startswith("{%"):
                    words = tok[2:-2].split()
                    if not words:
                        raise IniError("empty {% %} tag", path, None, line_of(index), "a template statement")
                    head = words[0]
                    if head in ends:
                        return nodes, head, words
                    if head in ("if", "for", "block", "set") and depth >= limits.MAX_TEMPLATE_NESTING:
                        raise IniError(f"template statements nested more than {limits.MAX_TEMPLATE_NESTING} levels",
                                       path, None, line_of(index), "less nesting")
                    if head == "if":
                        body, end, _ = parse_block(("else", "endif"), depth + 1)
                        other = []
                        if end == "else":
                            other, end, _ = parse_block(("endif",), depth + 1)
                        if end != "endif":
                            raise IniError("{% if %} without {% endif %}", path, None, line_of(index), "{% endif %}")
                        nodes.append(("if", words[1:], body, other, index))
                    elif head in ("for", "block", "set"):
                        closing = "end" + head
                        body, end, _ = parse_block((closing,), depth + 1)
                        if end != closing:
                            raise IniError(f"{{% {head} %}} without {{% {closing} %}}", path, None, line_of(index),
                                           f"{{% {closing} %}}")
                        nodes.append((head, words[1:], body, None, index))
                    elif head == "include":
                        nodes.append(("include", words[1:], None, None, index))
                    else:
                        raise IniError(f"unknown template statement {tok[:200]!r}", path, None, line_of(index),
                                       "if/else/endif, for/endfor, block/endblock, set/endset or include")
                else:
                    nodes.append(("var", tok[2:-2].strip(), None, None, index))
            elif tok:
                nodes.append(("text", tok, None, None, index))
        return nodes, None, None

    nodes, end, _ = parse_block(())
    if end is not None:
        raise IniError(f"unexpected {{% {end} %}}", path, None, None, "a matching opening statement")

    def spend(index, chars=0):
        exceeded = budget.spend(1, chars)
        if exceeded:
            raise IniError(f"rendering the templates takes {exceeded} (loops or includes that grow without bound)",
                           path, None, line_of(index), f"at most {limits.MAX_TEMPLATE_STEPS} template steps and "
                                                       f"{limits.MAX_TEMPLATE_CHARS} characters per file")

    def render(nodes, env, item=None):
        out = []
        for kind, arg, body, other, index in nodes:
            spend(index)
            if kind == "text":
                spend(index, len(arg))
                out.append(arg)
            elif kind == "var":
                if arg == "#" and item is not None:
                    out.append(str(item[1]))
                elif arg.startswith(".") and item is not None:
                    key = f"{item[0]}[{item[1]}]{arg}"
                    if key not in env:
                        raise IniError(f"template item field {key} is not defined", path, None, line_of(index),
                                       f"a key {key}=...")
                    spend(index, len(env[key]))
                    out.append(env[key])
                elif arg in env:
                    spend(index, len(env[arg]))
                    out.append(env[arg])
                else:
                    raise IniError(f"template variable {{{{{arg[:200]}}}}} is not defined", path, None,
                                   line_of(index), f"a key {arg[:200]}=... in the including section")
            elif kind == "if":
                out.append(render(body if _condition(arg, env, path, line_of(index)) else other, env, item))
            elif kind == "set":
                if len(arg) != 1:
                    raise IniError("{% set %} takes one variable name", path, None, line_of(index), "{% set VAR %}")
                env[arg[0]] = render(body, env, item).strip()
            elif kind == "for":
                var, values = _for_range(arg, env, path, line_of(index))
                for v in values:
                    spend(index)
                    env[var] = str(v)
                    out.append(render(body, env, item))
            elif kind == "block":
                if len(arg) != 1 or arg[0] not in env:
                    raise IniError(f"{{% block {' '.join(arg)[:200]} %}} needs a count key", path, None,
                                   line_of(index), "ARR=n in the including section")
                try:
                    count = int(env[arg[0]])
                except ValueError:
                    raise IniError(f"block count {arg[0]}={env[arg[0]][:200]!r} is not an integer", path, None,
                                   line_of(index), "an integer") from None
                for i in range(count):
                    spend(index)
                    out.append(render(body, env, (arg[0], i)))
            elif kind == "include":
                if len(arg) != 1:
                    raise IniError("{% include %} takes one file name", path, None, line_of(index),
                                   "{% include FILE %}")
                if _depth + 1 >= limits.MAX_TEMPLATE_DEPTH:
                    raise IniError(f"templates nested more than {limits.MAX_TEMPLATE_DEPTH} levels (a template "
                                   "including itself?)", path, None, line_of(index), "a finite template inclusion")
                name = _expand_env(arg[0])
                target = name if os.path.isabs(name) else os.path.join(os.path.dirname(path), name)
                try:
                    included = read_text(target)
                except (OSError, UnicodeDecodeError) as e:
                    raise IniError(f"cannot include '{target}' ({e})", path, None, line_of(index),
                                   "an existing file") from None
                out.append(render_template(included, env, target, _depth + 1, budget))
        return "".join(out)

    return render(nodes, dict(params))


def _condition(words, env, path, line):
    if len(words) == 2 and words[1] in ("exists", "not_exists"):
        present = words[0] in env
        return present if words[1] == "exists" else not present
    if len(words) == 3 and words[1] in ("==", "!="):
        value = env.get(words[0])
        equal = value is not None and value == words[2]
        return equal if words[1] == "==" else not equal
    raise IniError(f"unsupported condition {' '.join(words)!r}", path, None, line,
                   "VAR exists, VAR not_exists, VAR == VALUE or VAR != VALUE")


def _for_range(words, env, path, line):
    text = " ".join(words)
    m = re.match(r"^(\w+)\s+in\s+range\(\s*([^,()]+?)\s*(?:,\s*([^,()]+?)\s*)?\)$", text)
    if not m:
        raise IniError(f"unsupported for statement {text!r}", path, None, line, "V in range([start,] end)")

    def number(token):
        token = env.get(token, token)
        try:
            return int(token)
        except ValueError:
            raise IniError(f"range bound {token!r} is not an integer", path, None, line, "an integer") from None

    start, end = (number(m.group(2)), number(m.group(3))) if m.group(3) else (0, number(m.group(2)))
    return m.group(1), range(start, end)


# -- safe expressions --------------------------------------------------------------------------------
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg, ast.Not: operator.not_}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge}
_MATH = {"sqrt", "ceil", "floor", "log", "log2", "log10", "exp", "pi", "e"}
_MAX_MAGNITUDE = limits.MAX_MAGNITUDE


def evaluate_expression(text: str):
    """Evaluate an INI `$(...)` expression safely (no names, attributes or calls beyond a few
    numeric functions); raises ValueError for anything else. Bounded (`limits`): the text's
    length, the nesting of its syntax tree, integers up to 10**30 (checked before a power or a
    `round` computes a larger one), finite floats."""
    text = text.strip()
    if len(text) > limits.MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression of {len(text)} characters (at most {limits.MAX_EXPRESSION_CHARS})")
    try:
        tree = ast.parse(text, mode="eval")
    except (RecursionError, MemoryError):
        raise ValueError("expression nested too deeply") from None
    return _eval(tree.body)


def _number(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, complex):
        raise ValueError(f"complex result {value}")
    if not isinstance(value, (int, float)):
        return value
    if isinstance(value, int) and abs(value) > _MAX_MAGNITUDE:
        raise ValueError("integer result too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"non-finite result {value}")
    return value


def _power(left, right):
    """left ** right, refused before computing when the result would pass the magnitude bound."""
    if isinstance(left, (int, float)) and isinstance(right, (int, float)) and abs(left) > 1 and right > 0:
        if right * math.log10(abs(left)) > 30.5:
            raise ValueError("power too large")
    if isinstance(right, (int, float)) and abs(right) > 10 ** 6:
        raise ValueError("power too large")
    return left ** right


def _round(value, ndigits=None):
    if ndigits is not None and (not isinstance(ndigits, int) or abs(ndigits) > limits.MAX_ROUND_DIGITS):
        raise ValueError(f"round() takes at most {limits.MAX_ROUND_DIGITS} digits, got {ndigits!r}")
    return round(value) if ndigits is None else round(value, ndigits)


_FUNCTIONS = {"int": int, "float": float, "round": _round, "abs": abs, "min": min, "max": max, "bool": bool,
              "sqrt": math.sqrt, "ceil": math.ceil, "floor": math.floor, "log": math.log, "log2": math.log2,
              "log10": math.log10, "exp": math.exp}


def _eval(node, depth=0):
    if depth > limits.MAX_EXPRESSION_DEPTH:
        raise ValueError(f"expression nested more than {limits.MAX_EXPRESSION_DEPTH} levels")
    depth += 1
    if isinstance(node, ast.Constant):
        if isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return _number(node.value)
        if isinstance(node.value, str) or node.value is None or isinstance(node.value, bool):
            return node.value
        raise ValueError(f"unsupported constant {node.value!r}")
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left, depth), _eval(node.right, depth)
        if isinstance(left, str) or isinstance(right, str):
            if isinstance(node.op, ast.Add) and isinstance(left, str) and isinstance(right, str):
                return left + right
            raise ValueError("arithmetic on strings")
        if isinstance(node.op, ast.Pow):
            return _number(_power(left, right))
        return _number(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _number(_UNARY[type(node.op)](_eval(node.operand, depth)))
    if isinstance(node, ast.BoolOp):
        values = [_eval(v, depth) for v in node.values]
        result = values[0]
        for v in values[1:]:
            result = (result and v) if isinstance(node.op, ast.And) else (result or v)
        return result
    if isinstance(node, ast.Compare):
        left = _eval(node.left, depth)
        for op, comparator in zip(node.ops, node.comparators):
            if type(op) not in _COMPARE:
                raise ValueError("unsupported comparison")
            right = _eval(comparator, depth)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _eval(node.body, depth) if _eval(node.test, depth) else _eval(node.orelse, depth)
    if isinstance(node, ast.Call) and not node.keywords:
        func = node.func
        name = None
        if isinstance(func, ast.Name):
            name = func.id
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "math":
            name = func.attr if func.attr in _MATH else None
        if name not in _FUNCTIONS:
            raise ValueError(f"function {ast.unparse(func)!r} is not allowed")
        args = [_eval(a, depth) for a in node.args]
        if name in ("min", "max") and not args:
            raise ValueError(f"{name}() needs arguments")
        return _number(_FUNCTIONS[name](*args))
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "math" \
            and node.attr in ("pi", "e"):
        return getattr(math, node.attr)
    if isinstance(node, ast.Name) and node.id in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[node.id]
    if isinstance(node, ast.Tuple):
        raise ValueError("tuples are not allowed")
    raise ValueError(f"unsupported syntax {type(node).__name__}: {ast.unparse(node)!r}")


# -- typed access ------------------------------------------------------------------------------------
_REQUIRED = object()
_TRUE = ("1", "true", "True", "TRUE", "yes", "on")
_FALSE = ("0", "false", "False", "FALSE", "no", "off")


class Reader:
    """Typed, tracked reads of the keys of one or more sections (later sections override
    earlier ones, as `ConfigSection=a,b` does). The builder reads keys through a reader and
    asks at the end which were never read (`unused()`).

    Parameters
    ----------
    doc : IniDocument
    names : str or list of str
        Section(s) to read from.
    user : str, optional
        The layer on whose behalf config sections are read (named in error messages).
    """

    _current_entry = None     # the entry being converted (for warnings)
    _current_holder = None

    def __init__(self, doc: IniDocument, names, user: str = None):
        self.doc = doc
        self.names = [names] if isinstance(names, str) else list(names)
        self.name = self.names[0] if self.names else None
        self.user = user
        self.used = set()

    # -- where ---------------------------------------------------------------------------------
    def _holder(self, key):
        """Name of the section whose value of `key` wins, or None."""
        for name in reversed(self.names):
            if key in self.doc.section(name).entries:
                return name
        return None

    def entry(self, key):
        holder = self._holder(key)
        return self.doc.section(holder).entries[key] if holder is not None else None

    def error(self, message, key=None, expected=None) -> IniError:
        if self.user is not None:
            message += f" (read for [{self.user}])"
        holder = self._holder(key) if key is not None else None
        if holder is not None:
            entry = self.doc.section(holder).entries[key]
            if entry.origin:
                message += f" (inherited from [{entry.origin}])"
            return IniError(message, entry.file, holder, entry.line, expected)
        sec = self.doc.section(self.name) if self.name is not None else self.doc.global_section
        return IniError(message, sec.file or self.doc.path, self.name, sec.line, expected)

    # -- reads ---------------------------------------------------------------------------------
    def has(self, key) -> bool:
        return self._holder(key) is not None

    def keys(self) -> list:
        out = {}
        for name in self.names:
            out.update(dict.fromkeys(self.doc.section(name).entries))
        return list(out)

    def mark(self, *keys):
        self.used.update(keys)

    def unused(self) -> list:
        """Entries never read, as (key, Entry, section name)."""
        return [(k, self.entry(k), self._holder(k)) for k in self.keys() if k not in self.used]

    def text(self, key, default=_REQUIRED, expected="a value") -> str:
        holder = self._holder(key)
        if holder is None:
            if default is _REQUIRED:
                raise self.error(f"missing required key '{key}'", expected=f"{key}=<{expected}>")
            return default
        self.used.add(key)
        return self.doc.value(holder, key)

    def _convert(self, key, default, expected, convert):
        if not self.has(key):
            if default is _REQUIRED:
                raise self.error(f"missing required key '{key}'", expected=f"{key}=<{expected}>")
            return default
        value = self.text(key)
        holder = self._holder(key)
        self._current_entry, self._current_holder = self.doc.section(holder).entries[key], holder
        try:
            return convert(value)
        except (ValueError, TypeError, OverflowError):
            raise self.error(f"{key}={value!r} is not {expected}", key, expected) from None

    def int(self, key, default=_REQUIRED, minimum=None, maximum=None) -> int:
        value = self._convert(key, default, "an integer", self._integer_part)
        if self.has(key):
            self._check_range(key, value, minimum, maximum)
        return value

    def _integer_part(self, text):
        """N2D2 reads an integer key with C++ `>>`, which stops at the '.': a file whose own
        arithmetic is fractional (`$(_EpochSize*EPOCHS/BATCH)`) gets the integer part, with a
        warning saying how to write it exactly."""
        try:
            return parse_int(text)
        except ValueError:
            number = parse_float(text)
        truncated = int(number)  # toward zero, like the C++ extraction of "-2.5" -> -2
        entry = self._current_entry
        warn(f"'{entry.key if entry else 'value'}' = {text.strip()} is not an integer: N2D2 reads the integer "
             f"part {truncated} (write $(... // ...) or $(int(...)) in the file to say so)",
             entry.file if entry else self.doc.path, entry.line if entry else None, self._current_holder)
        return truncated

    def float(self, key, default=_REQUIRED, minimum=None, maximum=None) -> float:
        value = self._convert(key, default, "a number", parse_float)
        if self.has(key):
            self._check_range(key, value, minimum, maximum)
        return value

    def bool(self, key, default=_REQUIRED) -> bool:
        return self._convert(key, default, "a boolean (0 or 1)", parse_bool)

    def ints(self, key, default=_REQUIRED, count=None, minimum=None) -> list:
        values = self._convert(key, default, "a list of integers", lambda v: [parse_int(x) for x in _split(v)])
        if self.has(key):
            counts = (count,) if isinstance(count, int) else count
            if counts is not None and len(values) not in counts:
                raise self.error(f"{key} has {len(values)} value(s)", key,
                                 " or ".join(str(c) for c in counts) + " integer(s)")
            for v in values:
                self._check_range(key, v, minimum, None)
        return values

    def floats(self, key, default=_REQUIRED) -> list:
        return self._convert(key, default, "a list of numbers", lambda v: [parse_float(x) for x in _split(v)])

    def choice(self, key, choices, default=_REQUIRED) -> str:
        if not self.has(key):
            return self.text(key, default, expected="|".join(choices))
        value = self.text(key)
        if value not in choices:
            raise self.error(f"{key}={value!r} is not a valid value", key, "one of " + ", ".join(choices))
        return value

    def _check_range(self, key, value, minimum, maximum):
        if minimum is not None and value < minimum:
            raise self.error(f"{key}={value} is too small", key, f"a value >= {minimum}")
        if maximum is not None and value > maximum:
            raise self.error(f"{key}={value} is too large", key, f"a value <= {maximum}")


def _split(value: str) -> list:
    parts = value.replace(",", " ").split()
    if not parts:
        raise ValueError("empty list")
    return parts


def parse_int(value: str) -> int:
    """An INI integer; an integral float written by an expression (`3750.0`) is accepted."""
    v = value.strip()
    try:
        return int(v)
    except ValueError:
        f = float(v)
        if not math.isfinite(f) or f != int(f):
            raise ValueError(value) from None
        return int(f)


def parse_float(value: str) -> float:
    f = float(value.strip())
    if not math.isfinite(f):
        raise ValueError(value)
    return f


def parse_bool(value: str) -> bool:
    v = value.strip()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(value)
