"""Gather run_glue.py results into one markdown table: a row per model, a column per task, the average of the
task scores, and published rows beside them for the same tasks (with their sources).

    python scripts/glue_table.py glue/bert-base-uncased glue/distilbert_small teacher=glue/teacher
    python scripts/glue_table.py demo_run/glue/* --output demo_run/glue.md

Each argument is a run_glue.py --output_dir (or its results.json), as NAME=PATH to name the row. A cell is
the median over seeds; MRPC and QQP show F1/accuracy, STS-B Pearson/Spearman, MNLI matched/mismatched, CoLA
Matthews correlation, the rest accuracy, all in points. The average is over the table's columns, for the rows
that have them all.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import glue  # noqa: E402
from data_io import DataFileError, atomic_write, check_writable  # noqa: E402


def read_results(spec):
    """(row name or None, results dict) for 'PATH' or 'NAME=PATH'."""
    name, path = (spec.split("=", 1) if "=" in spec and not Path(spec).exists() else (None, spec))
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise SystemExit(f"glue_table.py: error: {path} does not exist: give run_glue.py's --output_dir")
    try:
        results = json.loads(path.read_text())
        results["tasks"], results["model"]  # noqa: B018 (a KeyError for a file run_glue.py did not write)
    except (ValueError, KeyError, TypeError):
        raise SystemExit(f"glue_table.py: error: {path} is not a run_glue.py results.json") from None
    return name, results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="[NAME=]run_glue.py --output_dir or its results.json")
    p.add_argument("--no_published", action="store_true", help="leave out the published rows")
    p.add_argument("--output", default=None, help="also write the table to this markdown file")
    args = p.parse_args(argv)
    if args.output:
        try:
            check_writable(args.output, "--output")
        except DataFileError as e:
            sys.exit(f"glue_table.py: error: {e}")
    rows = [read_results(spec) for spec in args.results]
    table = glue.markdown_table([r for _, r in rows], published=not args.no_published, names=[n for n, _ in rows])
    print(table)
    if args.output:
        with atomic_write(args.output, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
