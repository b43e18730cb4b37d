"""What the commands print, for people and scripts alike.

User data (subscriber ids, reasons, paths) is printed literally: never read as Rich markup, and with
control and format characters (escape, newline, NUL, bidi marks) shown as escapes such as ``\\x1b``
so they cannot act on the terminal. A listing is a Rich table in a terminal (cells fold, values are
never cut) and tab-separated lines with a header when stdout is a pipe or a file; ``--json`` prints
one JSON document instead. No ``None`` is ever printed: an absent value shows as ``-``.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

ABSENT = "-"


def _console(*, stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Outside a terminal Rich would cut lines at 80 columns; user data must come out whole.
    width = None if stream.isatty() else 100_000
    return Console(file=stream, markup=False, highlight=False, emoji=False, soft_wrap=True, width=width)


def out() -> Console:
    """The console for results (stdout), created per call so a test's captured stream is used."""
    return _console(stderr=False)


def err() -> Console:
    return _console(stderr=True)


def literal(value: object) -> str:
    """``value`` as text with every control or format character escaped (``\\n``, ``\\x1b``, ``\\u202e``)."""
    if value is None:
        return ABSENT
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    escaped = []
    for char in text:
        if not char.isprintable():  # Cc, Cf, line and paragraph separators, unassigned; not a plain space
            code = ord(char)
            if char == "\n":
                escaped.append("\\n")
            elif char == "\t":
                escaped.append("\\t")
            elif char == "\r":
                escaped.append("\\r")
            elif code <= 0xFF:
                escaped.append(f"\\x{code:02x}")
            elif code <= 0xFFFF:
                escaped.append(f"\\u{code:04x}")
            else:
                escaped.append(f"\\U{code:08x}")
        else:
            escaped.append(char)
    return "".join(escaped)


def line(text: str, *, stderr: bool = False) -> None:
    """Print one line exactly as given (callers pass user data through :func:`literal`)."""
    stream = sys.stderr if stderr else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def error(message: str) -> None:
    """The one line a refusal or failure prints on stderr (control characters in it escaped)."""
    line(f"error: {literal(message)}", stderr=True)


def jsonable(value: Any) -> Any:
    """Dates as ISO text, decimals as text (exact), everything else as JSON has it."""
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(jsonable(document), indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A listing: a Rich table in a terminal, a title line, a header and tab-separated rows otherwise."""
    cells = [[literal(value) for value in row] for row in rows]
    if sys.stdout.isatty():
        shown = Table(title=Text(title))
        for column in columns:
            shown.add_column(Text(column), overflow="fold")
        for row in cells:
            shown.add_row(*[Text(value) for value in row])
        out().print(shown)
        return
    line(f"# {literal(title)}")
    line("\t".join(columns))
    for row in cells:
        line("\t".join(row))
