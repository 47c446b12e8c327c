"""Text from a device, made safe to print on the operator's terminal.

Why this exists: everything a device sends is untrusted — its probe facts (``arch``, CPU model, runtime
name and version), the runner's error text, the tail of a command's stderr, the labels a ``predict``
answer names.  Printed raw, a control sequence in any of them is obeyed by the terminal: ``ESC ] 52 ;
c ; … BEL`` writes the operator's clipboard in many terminals, other sequences retitle the window, move
the cursor to overwrite earlier lines, or (in some terminals) answer back with keystrokes.  A ``CR``
rewrites the start of a line ("FAIL" becomes "ok  "), and Unicode bidi overrides reorder what is shown.

So every character that is a control character — C0 (``U+0000``–``U+001F``: ESC, BEL, CR, backspace
…), DEL, C1 (``U+0080``–``U+009F``: CSI and OSC have single-character forms there), the bidi
embedding / override / isolate marks, the Unicode line and paragraph separators, and lone surrogates
(undecodable bytes) — is shown escaped (``\\x1b``, ``\\u202e``) instead: visible, unambiguous, inert.
Tabs and newlines are kept only in ``multiline`` text (a log line, an error message), never in a table
cell, where a newline would break the table and fake rows.

One function, :func:`printable`, used by every CLI printing path (``edgenas.cli.common``: tables,
``echo``, log lines, the ``error:`` line) and where device text goes into error messages.
"""

from __future__ import annotations

import re

# Control characters (C0, DEL, C1), Unicode line/paragraph separators, bidi marks, embeddings,
# overrides and isolates, and lone surrogates (what ``surrogateescape`` makes of undecodable bytes).
_OTHER_UNSAFE = "\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE = re.compile(f"[\x00-\x1f{_OTHER_UNSAFE}]")
_UNSAFE_KEEP_LINES = re.compile(f"[\x00-\x08\x0b-\x1f{_OTHER_UNSAFE}]")  # \t and \n kept


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, *, multiline: bool = False, limit: int | None = None) -> str:
    """``text`` (``str()`` of anything else) with every control character escaped, so that printing it
    can neither steer the terminal nor fake output.  ``multiline`` keeps ``\\n`` and ``\\t`` (messages,
    log lines); ``limit`` truncates the result to that many characters (``…`` marks the cut)."""
    s = text if isinstance(text, str) else str(text)
    s = (_UNSAFE_KEEP_LINES if multiline else _UNSAFE).sub(_escape, s)
    if limit is not None and len(s) > limit:
        s = s[: max(0, limit - 1)] + "…"
    return s


def is_printable(text: str) -> bool:
    """True when ``text`` has no character :func:`printable` would escape (single-line rules): the
    test for names and versions a device reports before they are stored."""
    return _UNSAFE.search(text) is None


__all__ = ["is_printable", "printable"]
