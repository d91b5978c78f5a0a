"""Data files as Tables of columns: GLUE's TSV (no quoting), csv, json / jsonl and parquet (run_glue.py's
tasks, run_qa.py's texts); what a text shows, and what a missing value is.

Every reader keeps each row's line number, so that a message about a bad row names the line the user sees in
the file; a file that is not UTF-8 names the line of its first bad byte.
"""

import csv
import io
import json
import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError, first_line

# ----------------------------------------------------------------------------------------------------------
# Tables: a file's columns, with each row's line number for messages


@dataclass
class Table:
    columns: dict  # name -> values, in file order
    source: str
    lines: list | None = None  # each row's line number in its file; None: rows numbered from 1 (parquet, hub)
    skipped: int = 0  # malformed rows the reader left out (a TSV line with the wrong number of fields)

    def where(self, rows):
        """'line 4' / 'lines 4, 9, 12 and 3 more' for row indexes (0-based), as the user finds them."""
        rows = list(rows)
        names = [str(self.lines[i] if self.lines else i + 1) for i in rows[:3]]
        more = f" and {len(rows) - 3:,} more" if len(rows) > 3 else ""
        kind = "line" if self.lines else "row"
        return f"{kind}{'s' * (len(rows) > 1)} {', '.join(names)}{more}"

    def names(self):
        return ", ".join(map(str, self.columns))


def visible(text):
    """`text` without whitespace, control and format characters (zero-width spaces, byte-order marks): what a
    reader would see of it (empty where the text shows nothing)."""
    return "".join(ch for ch in text if not ch.isspace() and unicodedata.category(ch) not in ("Cc", "Cf"))


def is_missing(v):
    """A JSON null, a pandas/pyarrow None or NaN: no value, never the text "None" or a class of its own."""
    return v is None or (isinstance(v, float) and math.isnan(v))


# ----------------------------------------------------------------------------------------------------------
# Files


def read_text(path):
    """A file's text; not UTF-8 is an InputError with the line of the first bad byte (not its offset)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(f"{path} is not UTF-8 text: line {line} holds the byte {data[e.start]:#04x} "
                         "(save the file as UTF-8)") from None


def read_tsv(path, header=True):
    """(Table, malformed rows left out) of a tab-separated file without quoting (GLUE's form: its sentences
    hold unbalanced quotes, so csv's quote handling would merge lines)."""
    rows = list(csv.reader(io.StringIO(read_text(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise InputError(f"{path} is empty")
    names = rows.pop(0) if header else [str(i) for i in range(len(rows[0]))]
    first = 2 if header else 1
    good = [(n, r) for n, r in enumerate(rows, first) if len(r) == len(names)]
    columns = {name: [r[i] for _, r in good] for i, name in enumerate(names)}
    return Table(columns, str(path), [n for n, _ in good]), len(rows) - len(good)


def read_csv(path):
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    names = next(reader, None)
    if not names:
        raise InputError(f"{path} is empty")
    columns, lines = {n: [] for n in names}, []
    for row in reader:
        if not row:  # a blank line
            continue
        if len(row) != len(names):
            raise InputError(f"{path}: line {reader.line_num} has {len(row)} fields, the header {len(names)}")
        lines.append(reader.line_num)
        for name, value in zip(names, row):
            columns[name].append(value)
    return Table(columns, str(path), lines)


def read_json(path, lines):
    """JSON lines (one object a line) or a JSON array of objects, with json's own line numbers in errors."""
    text = read_text(path)
    records, numbers = [], []
    try:
        if lines:
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    records.append(json.loads(line))
                    numbers.append(n)
        else:
            records = json.loads(text)
            numbers = None
    except json.JSONDecodeError as e:
        line = n if lines else e.lineno
        raise InputError(f"{path}: line {line} is not valid JSON ({e.msg})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise InputError(f"{path}: expected one JSON object per line, or a JSON array of objects")
    names = list(dict.fromkeys(k for r in records for k in r))
    return Table({k: [r.get(k) for r in records] for k in names}, str(path), numbers)


def read_table(path):
    """A csv, tsv, json or jsonl file (or parquet) as a Table."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    if suffix == ".tsv":
        table, table.skipped = read_tsv(path)
    elif suffix == ".csv":
        table = read_csv(path)
    elif suffix in (".json", ".jsonl"):
        table = read_json(path, lines=suffix == ".jsonl" or not read_text(path).lstrip().startswith("["))
    elif suffix == ".parquet":
        table = read_parquet([path], str(path))
    else:
        raise InputError(f"{path}: give a .csv, .tsv, .json, .jsonl or .parquet file")
    if not table.columns or not next(iter(table.columns.values())):
        raise InputError(f"{path} holds no rows (only a header?)")
    return table


def read_parquet(files, source):
    import pyarrow.parquet as pq

    columns = {}
    for path in files:
        try:
            part = pq.read_table(path).to_pydict()
        except Exception as e:  # pyarrow's errors share no base class beyond Exception
            raise InputError(f"cannot read {path}: {first_line(e)}") from None
        for k, v in part.items():
            columns.setdefault(k, []).extend(v)
    return Table(columns, source)
