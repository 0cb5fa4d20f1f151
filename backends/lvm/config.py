"""A parser for LVM2's configuration syntax (the VG text metadata).

References: lvm2 ``libdm/libdm-config.c`` (``_tokenise``, ``_file``, ``_section``,
``_value``, ``_type``), ``lib/format_text/export.c`` (what the writer emits) and
``lib/format_text/import_vsn1.c`` (how the VG is read back).

Grammar::

    file    := item*
    item    := ident '=' value | ident '{' item* '}'
    value   := string | number | '[' (scalar (',' scalar)*)? ','? ']'
    string  := '"' (char | '\\' char)* '"'     (also single quotes)
    comment := '#' to end of line

Sections become :class:`dict` (order kept; a repeated key keeps the last value,
as ``dm_config_find_node`` does), numbers ``int`` or ``float``, arrays ``list``.
Nesting depth and input size are bounded: the input is untrusted.
"""

from __future__ import annotations

import re

from .errors import LvmError

MAX_DEPTH = 32
MAX_TEXT = 64 * 1024 * 1024
MAX_ARRAY = 1_000_000


class ConfigError(LvmError):
    """The text is not valid LVM config syntax."""


#: Whitespace and comments between tokens; a comment runs to the end of its line (the
#: lookahead keeps backtracking from ending one early and reading its tail as a token).
_SKIP = r"(?:[ \t\r\n\f\v]+|\#[^\n]*(?![^\n]))*"
#: One token and the whitespace and comments before it, in one match: a VG text of a
#: thousand LVs is ~45,000 tokens, parsed at every discovery.
_TOKEN = re.compile(
    _SKIP + r"""
    (?:
        (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<num>[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?(?![^\s=\[\]{},#"']))
      | (?P<punct>[={}\[\],])
      | (?P<ident>[^\s=\[\]{},#"']+)
    )
    """,
    re.VERBOSE | re.DOTALL,
)
_SKIP_RE = re.compile(_SKIP)

_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def _unquote(tok: str) -> str:
    return _ESCAPE.sub(r"\1", tok[1:-1])


def line_at(text: str, pos: int) -> int:
    """The line number of offset ``pos`` (for messages only: tokens carry offsets)."""
    return text.count("\n", 0, pos) + 1


def tokenize(text: str):
    """Yield ``(kind, value, offset)``; raise :class:`ConfigError` on a stray byte."""
    pos, n = 0, len(text)
    match = _TOKEN.match
    while True:
        m = match(text, pos)
        if m is None:
            pos = _SKIP_RE.match(text, pos).end()
            if pos >= n:
                break
            raise ConfigError(f"config line {line_at(text, pos)}: unexpected {text[pos]!r}")
        kind = m.lastgroup
        tok = m.group(kind)
        if kind == "str":
            yield "str", _unquote(tok), m.start(kind)
        elif kind == "num":
            yield "num", (float(tok) if any(c in tok for c in ".eE") else int(tok)), m.start(kind)
        else:
            yield kind, tok, m.start(kind)
        pos = m.end()
    yield "eof", None, n


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.tok = next(self.tokens)

    def advance(self):
        self.tok = next(self.tokens)

    def fail(self, what):
        kind, val, pos = self.tok
        got = "end of text" if kind == "eof" else repr(val)
        raise ConfigError(f"config line {line_at(self.text, pos)}: expected {what}, found {got}")

    def expect(self, punct):
        if self.tok[0] != "punct" or self.tok[1] != punct:
            self.fail(repr(punct))
        self.advance()

    def items(self, depth, closing):
        out: dict = {}
        while True:
            kind, val, _ = self.tok
            if kind == "eof":
                if closing:
                    self.fail("'}'")
                return out
            if kind == "punct" and val == "}" and closing:
                self.advance()
                return out
            if kind not in ("ident", "num", "str"):
                self.fail("a name")
            name = str(val)
            self.advance()
            if self.tok[0] == "punct" and self.tok[1] == "{":
                if depth >= MAX_DEPTH:
                    raise ConfigError(f"config line {line_at(self.text, self.tok[2])}: sections nested deeper "
                                      f"than {MAX_DEPTH}")
                self.advance()
                out[name] = self.items(depth + 1, True)
            elif self.tok[0] == "punct" and self.tok[1] == "=":
                self.advance()
                out[name] = self.value()
            else:
                self.fail("'=' or '{'")

    def scalar(self):
        kind, val, _ = self.tok
        if kind in ("str", "num"):
            self.advance()
            return val
        self.fail("a string or a number")

    def value(self):
        if self.tok[0] == "punct" and self.tok[1] == "[":
            self.advance()
            arr = []
            while not (self.tok[0] == "punct" and self.tok[1] == "]"):
                arr.append(self.scalar())
                if len(arr) > MAX_ARRAY:
                    raise ConfigError(f"config line {line_at(self.text, self.tok[2])}: array too long")
                if self.tok[0] == "punct" and self.tok[1] == ",":
                    self.advance()
                elif not (self.tok[0] == "punct" and self.tok[1] == "]"):
                    self.fail("',' or ']'")
            self.advance()
            return arr
        return self.scalar()


def parse_config(text) -> dict:
    """Parse LVM config text (``str`` or ``bytes``, stops at a NUL) into nested dicts."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        raw = bytes(text)
        nul = raw.find(b"\0")
        if nul >= 0:
            raw = raw[:nul]
        text = raw.decode("utf-8", "surrogateescape")
    if len(text) > MAX_TEXT:
        raise ConfigError(f"config text too large ({len(text)} bytes)")
    return _Parser(text).items(0, False)
