"""Rendering for the CLI: display JSON for cached values, tables, CSV, and where data goes.

Data goes to stdout (or ``--output``), messages to stderr. Values are shown as *display JSON*: ISO
datetimes, Decimal and UUID as strings, sets and tuples as arrays, bytes as base64, dataclasses, named
tuples, pydantic models and ORM objects as maps of their fields.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import datetime as dt
import enum
import io
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import IO, Any
from uuid import UUID

import click


def display(value: Any) -> Any:
    """A JSON-serializable rendering of a cached value (cycles become ``"<cycle>"``)."""
    return _display(value, set())


def _display(value: Any, path: set[int]) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value.value if isinstance(value, enum.Enum) else value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return _display(value.value, path)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (Decimal, UUID)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if id(value) in path:
        return "<cycle>"
    path.add(id(value))
    try:
        return _display_container(value, path)
    finally:
        path.discard(id(value))


def _display_container(value: Any, path: set[int]) -> Any:
    if isinstance(value, Mapping):
        return {_display_key(k, path): _display(v, path) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):  # NamedTuple
        return _display(dict(value._asdict()), path)
    if isinstance(value, (list, tuple)):
        return [_display(v, path) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [_display(v, path) for v in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _display(getattr(value, f.name), path) for f in dataclasses.fields(value)}
    model_dump = getattr(value, "model_dump", None)  # pydantic v2
    if callable(model_dump):
        return _display(model_dump(), path)
    fields = getattr(value, "__dict__", None)
    if isinstance(fields, dict):  # plain objects, SQLAlchemy instances (loaded attributes only)
        return {k: _display(v, path) for k, v in fields.items() if not k.startswith("_")}
    return repr(value)


def _display_key(key: Any, path: set[int]) -> str:
    shown = _display(key, path)
    return shown if isinstance(shown, str) else json.dumps(shown, sort_keys=True)


def to_json(data: Any, *, compact: bool = False) -> str:
    if compact:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return json.dumps(data, ensure_ascii=False, indent=2)


def to_csv(header: Sequence[str], rows: Iterable[Sequence[Any]], *, with_header: bool = True) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if with_header:
        writer.writerow(header)
    for row in rows:
        writer.writerow(["" if cell is None else cell for cell in row])
    return buffer.getvalue()


def cell(value: Any) -> str:
    """A value as one table/CSV cell: strings as they are, anything else as compact display JSON."""
    shown = display(value)
    return shown if isinstance(shown, str) else to_json(shown, compact=True)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], out: IO[str]) -> None:
    """A borderless rich table; never wrapped to the terminal width when writing to a pipe or file."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    terminal = out.isatty()
    grid = Table(box=None, show_edge=False, pad_edge=False, header_style="bold" if terminal else "")
    for name in columns:
        grid.add_column(name, overflow="fold")
    for row in rows:
        grid.add_row(*(Text(str(v)) for v in row))
    if terminal:
        Console(file=out, markup=False, highlight=False).print(grid)
        return
    buffer = io.StringIO()
    Console(file=buffer, markup=False, highlight=False, width=100_000, color_system=None).print(grid)
    out.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))


def err(message: str) -> None:
    """A message (never data) on stderr."""
    click.echo(message, err=True)


class Sink:
    """Where data goes: stdout, or the ``--output`` file (created, then appended to by ``--watch``)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._file: IO[str] | None = None

    @property
    def stream(self) -> IO[str]:
        if self.path is None:
            return sys.stdout
        if self._file is None:
            self._file = open(self.path, "w", encoding="utf-8", newline="")  # noqa: SIM115
        return self._file

    def write(self, text: str) -> None:
        stream = self.stream
        stream.write(text if text.endswith("\n") else text + "\n")
        stream.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
