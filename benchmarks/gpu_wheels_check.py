"""Does benchmarks/gpu_wheels.sh cover the project's requirement files? Every requirement must be either on
the GPU machine already (its PRESENT list) or downloaded (EXTRA / NO_DEPS). Prints what is missing; exit 1 if
anything is."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def names(requirements):
    out = set()
    for line in requirements.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            out |= names(requirements.parent / line[3:].strip())
        elif line and not line.startswith("-"):
            out.add(re.split(r"[<>=\[ ;]", line)[0].lower())
    return out


def covered(script):
    text = script.read_text()
    present = re.search(r'^PRESENT="([^"]*)"', text, re.M).group(1).split()
    lists = re.findall(r"^(?:EXTRA|NO_DEPS)=\(([^)]*)\)", text, re.M)
    return {n.lower() for n in present + " ".join(lists).split()}


def main():
    missing = sorted(names(ROOT / "requirements-dev.txt") - covered(ROOT / "benchmarks" / "gpu_wheels.sh"))
    if missing:
        print(f"gpu_wheels.sh does not cover: {', '.join(missing)}")
        return 1
    print("gpu_wheels.sh covers every requirement")
    return 0


if __name__ == "__main__":
    sys.exit(main())
