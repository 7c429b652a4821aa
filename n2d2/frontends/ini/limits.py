"""Explicit bounds on the work and memory that reading an INI file may cost.

INI files come from strangers: without bounds, `$(round(1, -10**9))`, a "billion laughs" chain of
`${A}` = `${B}${B}` variables, nested template loops or a section inheriting a long chain of
parents hang the parser or exhaust memory, and self-references end in a bare `RecursionError`.
Every bound counts work (steps, characters, depth), never wall-clock time, so an error is the
same on every machine. The values leave room for upstream's largest INI networks (ResNet-152-
like templates, MobileNet tables): they use a few hundred steps and kilobytes per value.
"""

MAX_FILE_BYTES = 16 * 2 ** 20          # an INI file or a template file
MAX_ENTRIES = 200_000                  # key=value entries in a document, inherited copies included
MAX_REFERENCE_DEPTH = 64               # nested ${VAR} / [section]Key substitutions
MAX_EXPANSION_STEPS = 100_000          # substitutions made to read one value
MAX_EXPANSION_CHARS = 2 ** 20          # characters produced to read one value
MAX_TEMPLATE_DEPTH = 16                # templates including templates (sections or {% include %})
MAX_TEMPLATE_NESTING = 64              # {% if/for/block/set %} nested in one template
MAX_TEMPLATE_STEPS = 200_000           # template nodes rendered (loop iterations) per document
MAX_TEMPLATE_CHARS = 16 * 2 ** 20      # characters rendered by templates per document
MAX_TEMPLATES = 4096                   # template sections included per document
MAX_EXPRESSION_CHARS = 10_000          # the text of one $( ... )
MAX_EXPRESSION_DEPTH = 64              # nesting of its syntax tree
MAX_MAGNITUDE = 10 ** 30               # largest integer an expression may compute
MAX_ROUND_DIGITS = 64                  # |ndigits| of round()


class Budget:
    """Counts steps and characters against two limits; `exceeded` says which was passed (None
    while within both)."""

    __slots__ = ("steps", "chars", "max_steps", "max_chars")

    def __init__(self, max_steps: int, max_chars: int):
        self.steps = 0
        self.chars = 0
        self.max_steps = max_steps
        self.max_chars = max_chars

    def spend(self, steps: int = 1, chars: int = 0):
        """Add work; returns a message naming the limit passed, or None."""
        self.steps += steps
        self.chars += chars
        if self.steps > self.max_steps:
            return f"more than {self.max_steps} steps"
        if self.chars > self.max_chars:
            return f"more than {self.max_chars} characters"
        return None
