"""Task distillation from a teacher of another tokenizer (a byte-level BPE RoBERTa teaching a
WordPiece BERT student): the teacher reads each row's raw text with its own tokenizer, special tokens and
length limit; its cached logits equal the teacher run on that text row by row; single sentences and pairs,
labelled and unlabelled rows; the losses that compare positions are refused."""

import csv
import json

import numpy as np
import pytest
import torch

from conftest import input_error
from glue_helpers import FAST, distil, overwrite_logits
from scripts import run_glue
from tasks import glue_family, task_distill, teacher_pass

# The RoBERTa teacher of another tokenizer (`bpe_teacher`), the student (`teacher`, a tiny BERT) and `custom_task`:
# tests/fixtures_glue.py


@pytest.fixture(scope="module")
def pair_task(tmp_path_factory, custom_task):
    """A sentence-pair task from the custom task's rows: (sentence, the next one) -> the first one's label."""
    folder = tmp_path_factory.mktemp("pairs")
    for name in ("train.csv", "dev.csv"):
        with open(custom_task / name, newline="") as f:
            rows = list(csv.DictReader(f))
        with open(folder / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sentence1", "sentence2", "label"])
            w.writerows((a["text"], b["text"][:80], a["label"]) for a, b in zip(rows, rows[1:] + rows[:1]))
    return folder


@pytest.mark.parametrize("kind", ["single", "pair"])
def test_a_teacher_of_another_tokenizer_distils_end_to_end(tmp_path, teacher, bpe_teacher, custom_task, pair_task,
                                                           kind):
    task = custom_task if kind == "single" else pair_task
    proc = distil(teacher, task, bpe_teacher, tmp_path / "kd", "--seeds", 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the teacher reads its own tokenization of the 50 training rows (another vocabulary" in proc.stdout
    runs = sorted((tmp_path / "kd" / "custom").glob("lr*_seed*/results.json"))
    assert len(runs) == 2
    run = json.loads(runs[0].read_text())
    assert run["teacher"]["tokenization"].startswith("its own: another vocabulary")
    assert run["teacher"]["teacher_logits"] == "computed once" and run["steps"] == 3
    digest = run["hyper_parameters"]["distillation"]["teacher_tokenizer"]
    summary = json.loads((tmp_path / "kd" / "results.json").read_text())
    assert summary["teacher"]["teacher_tokenizer"] == digest != summary["model_identity"]["tokenizer"]  # both
    # a rerun keeps both runs: the same teacher, tokenizer and rows
    again = distil(teacher, task, bpe_teacher, tmp_path / "kd", "--seeds", 2)
    assert again.returncode == 0 and again.stdout.count(": kept ") == 2


def test_cached_logits_are_the_teacher_on_its_own_tokenization(tmp_path, teacher, bpe_teacher, pair_task):
    """The column every run trains on equals the teacher run on each row's text alone, in its own tokens."""
    from transformers import AutoConfig, AutoTokenizer, TrainingArguments

    model_args, data, _, distill_args, training_args, _ = run_glue.flags(
        ["--model_name_or_path", str(teacher), "--train_file", str(pair_task / "train.csv"), "--validation_file",
         str(pair_task / "dev.csv"), "--output_dir", str(tmp_path / "o"), "--teacher_name_or_path", str(bpe_teacher),
         "--max_train_samples", "20", "--unlabeled_samples", "7", "--per_device_eval_batch_size", "4"])
    assert isinstance(training_args, TrainingArguments)
    tokenizer = AutoTokenizer.from_pretrained(str(teacher))
    config = AutoConfig.from_pretrained(model_args.model_name_or_path)
    t = teacher_pass.load_teacher(glue_family.GlueFamily, distill_args, config)
    (task_data,) = glue_family.load_data(data, distill_args.unlabeled_samples)
    t.check_tokens(tokenizer, [text for column in task_data.train.texts for text in column])
    assert t.own_tokens.startswith("another vocabulary")
    train_set, _, _ = glue_family.tokenize(task_data, tokenizer, 64, False)
    texts = glue_family.training_texts(task_data)
    cached = t.with_logits(train_set, tokenizer, training_args, False, texts, 38)[teacher_pass.TEACHER_LOGITS]
    assert len(cached) == 27
    t_tok = AutoTokenizer.from_pretrained(str(bpe_teacher))
    with torch.no_grad():
        for i in range(27):
            ids = t_tok(texts[0][i], texts[1][i], truncation=True, max_length=38, return_tensors="pt")
            assert ids["input_ids"][0, 0] == t_tok.bos_token_id  # the teacher's own special tokens
            want = t.model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits[0]
            torch.testing.assert_close(torch.tensor(cached[i]), want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(torch.tensor(cached[0]), torch.tensor(cached[1]))


@pytest.mark.parametrize("flag", ["--alpha_cos", "--alpha_att", "--alpha_vv", "--alpha_hidden"])
def test_losses_that_compare_positions_need_one_tokenization(tmp_path, teacher, bpe_teacher, custom_task, flag):
    line = input_error(run_glue.main, ["--model_name_or_path", teacher, "--train_file", custom_task / "train.csv",
                                       "--validation_file", custom_task / "dev.csv", "--output_dir", tmp_path / "o",
                                       "--teacher_name_or_path", bpe_teacher, flag, 1, "--max_steps", 1,
                                       *FAST])
    assert f"{flag} compares the two models position by position, so it needs one tokenization" in line
    assert "another vocabulary" in line and not (tmp_path / "o").exists()


def test_teacher_logits_are_kept_on_disk_and_a_change_is_a_miss(tmp_path, teacher, bpe_teacher, custom_task):
    """The teacher's pass is kept in a file keyed by its weights, its tokenizer, the rows and the precision:
    a later run (another seed, another output folder) reads it; other rows or another teacher compute again;
    a damaged file is recomputed, never trusted."""
    cache = tmp_path / "cache"
    first = distil(teacher, custom_task, bpe_teacher, tmp_path / "a", "--teacher_logits_cache", cache)
    assert first.returncode == 0, first.stderr[-2000:]
    (kept,) = cache.glob("*.npz")
    assert np.load(kept)["logits"].shape == (50, 2) and f"kept in {kept}" in first.stdout
    second = distil(teacher, custom_task, bpe_teacher, tmp_path / "b", "--teacher_logits_cache", cache, "--seed", 3)
    assert f"read from {kept}" in second.stdout
    run = json.loads(next((tmp_path / "b" / "custom").glob("lr*/results.json")).read_text())
    assert run["teacher"]["logits_read_from"] == str(kept)
    fewer = distil(teacher, custom_task, bpe_teacher, tmp_path / "c", "--teacher_logits_cache", cache,
                   "--unlabeled_samples", 9)  # other rows: another key
    assert "read from" not in fewer.stdout and len(list(cache.glob("*.npz"))) == 2
    kept.write_bytes(kept.read_bytes()[:100])  # damaged: computed again and rewritten
    third = distil(teacher, custom_task, bpe_teacher, tmp_path / "d", "--teacher_logits_cache", cache)
    assert "read from" not in third.stdout and np.load(kept)["logits"].shape == (50, 2)
    assert f"the cached teacher logits at {kept} were not used (unreadable: " in third.stdout
    off = distil(teacher, custom_task, bpe_teacher, tmp_path / "e", "--teacher_logits_cache", "off")
    assert "kept in" not in off.stdout and len(list(cache.glob("*.npz"))) == 2


def test_the_logits_key_changes_with_the_teacher_the_rows_and_the_precision():
    import datasets

    rows = datasets.Dataset.from_dict({"input_ids": [[0, 5, 6, 2], [0, 7, 2]]})
    key = teacher_pass.logits_key({"model": "a", "tokenizer": "t"}, rows, "None", 2)
    assert key == teacher_pass.logits_key({"model": "a", "tokenizer": "t"}, rows, "None", 2)
    other_rows = datasets.Dataset.from_dict({"input_ids": [[0, 5, 6], [2, 0, 7, 2]]})  # same ids, other split
    for changed in (teacher_pass.logits_key({"model": "b", "tokenizer": "t"}, rows, "None", 2),
                    teacher_pass.logits_key({"model": "a", "tokenizer": "u"}, rows, "None", 2),
                    teacher_pass.logits_key({"model": "a", "tokenizer": "t"}, rows, "torch.bfloat16", 2),
                    teacher_pass.logits_key({"model": "a", "tokenizer": "t"}, other_rows, "None", 2)):
        assert changed != key


# -- transfer sets: text that only the teacher labels --------------------------------------------------------


def test_a_transfer_file_adds_rows_only_the_teacher_labels(tmp_path, teacher, bpe_teacher, custom_task, pair_task):
    lines = ["the river runs north of the city", "", "people were born in the year of the river", "a city"]
    (tmp_path / "more.txt").write_text("\n".join(lines) + "\n")
    proc = distil(teacher, custom_task, bpe_teacher, tmp_path / "txt", "--transfer_file", tmp_path / "more.txt")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(+ 13 without their labels)" in proc.stdout and "of the 53 training rows" in proc.stdout  # 10 + 3 lines
    run = json.loads(next((tmp_path / "txt" / "custom").glob("lr*/results.json")).read_text())
    assert run["teacher"]["transfer_file"] == str(tmp_path / "more.txt") and run["hyper_parameters"]["unlabeled_data"]
    # a pair task from a table with its two text columns (other columns, a label too, are not read)
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"sentence1": f"the city {i}", "sentence2": "a river",
                                                              "label": "born"}) + "\n" for i in range(6)))
    proc = distil(teacher, pair_task, bpe_teacher, tmp_path / "pairs", "--transfer_file", tmp_path / "pairs.jsonl",
                  "--unlabeled_samples", 2)
    assert proc.returncode == 0 and "(+ 8 without their labels)" in proc.stdout
    # another transfer file is another setting: the kept run is not reused for it
    (tmp_path / "other.txt").write_text("the north city\n")
    again = distil(teacher, custom_task, bpe_teacher, tmp_path / "txt", "--transfer_file", tmp_path / "other.txt")
    assert again.returncode == 2 and "unlabeled_data" in again.stderr
    (tmp_path / "blank.txt").write_text("\n   \n")
    blank = distil(teacher, custom_task, bpe_teacher, tmp_path / "blank", "--transfer_file", tmp_path / "blank.txt")
    assert blank.returncode == 2 and "holds no text" in blank.stderr and not (tmp_path / "blank").exists()


@pytest.mark.parametrize("case,words", [
    ("missing", "does not exist"),
    ("folder", "is a folder"),
    ("empty", "holds no rows (only a header?)"),
    ("pairs_from_lines", "reads pairs of texts (sentence1, sentence2); one text per line cannot give both"),
    ("no_column", "has no column 'sentence2', which custom reads"),
    ("null_text", "no text (null) in column 'sentence1'"),
    ("no_teacher", "--transfer_file needs --teacher_name_or_path"),
    ("no_kd", "--transfer_file needs --alpha_ce above 0"),
])
def test_a_bad_transfer_file_is_refused_before_training(tmp_path, teacher, bpe_teacher, pair_task, case, words):
    path = {"missing": tmp_path / "none.txt", "folder": tmp_path, "empty": tmp_path / "empty.csv",
            "pairs_from_lines": tmp_path / "lines.txt", "no_column": tmp_path / "one.csv",
            "null_text": tmp_path / "null.jsonl"}.get(case, tmp_path / "lines.txt")
    (tmp_path / "empty.csv").write_text("sentence1,sentence2\n")
    (tmp_path / "lines.txt").write_text("a city\n")
    (tmp_path / "one.csv").write_text("sentence1\na city\n")
    (tmp_path / "null.jsonl").write_text('{"sentence1": null, "sentence2": "x"}\n')
    argv = ["--model_name_or_path", teacher, "--train_file", pair_task / "train.csv", "--validation_file",
            pair_task / "dev.csv", "--output_dir", tmp_path / "out", "--max_steps", 1, "--transfer_file", path, *FAST]
    if case != "no_teacher":
        argv += ["--teacher_name_or_path", bpe_teacher]
    if case == "no_kd":
        argv += ["--alpha_ce", 0, "--alpha_cos", 1]
    line = input_error(run_glue.main, argv)
    assert words in line, line
    assert not (tmp_path / "out").exists()


def test_hard_targets_learn_the_teachers_top_class(tmp_path, teacher, bpe_teacher, custom_task):
    s = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.3, 0.2]])
    t = torch.tensor([[0.0, 5.0, 1.0], [3.0, 2.9, 0.0]])  # top classes 1 and 0
    log_p = s - torch.logsumexp(s, -1, keepdim=True)
    want = -(log_p[0, 1] + log_p[1, 0]).item() / 2
    assert task_distill.logit_kd(s, t, False, 2.0, hard=True).item() == pytest.approx(want, rel=1e-6)
    assert task_distill.logit_kd(s, t, False, 2.0).item() != pytest.approx(want, rel=1e-3)  # soft: another loss
    proc = distil(teacher, custom_task, bpe_teacher, tmp_path / "hard", "--hard_targets", "true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads(next((tmp_path / "hard" / "custom").glob("lr*/results.json")).read_text())
    assert run["hyper_parameters"]["distillation"]["hard_targets"] is True
    line = input_error(run_glue.main, ["--model_name_or_path", teacher, "--train_file", custom_task / "train.csv",
                                       "--validation_file", custom_task / "dev.csv", "--output_dir", tmp_path / "x",
                                       "--hard_targets", "true", *FAST])
    assert "--hard_targets needs --teacher_name_or_path" in line


def test_hard_targets_are_refused_for_a_regression():
    from types import SimpleNamespace

    regressor = SimpleNamespace(config=SimpleNamespace(num_labels=1, id2label={0: "score"}))
    task = SimpleNamespace(labels=None, title="STS-B")
    task_distill.check_teacher(regressor, task, 1, "t")  # soft: the squared error to its score
    with pytest.raises(task_distill.InputError, match="--hard_targets: STS-B is a regression"):
        task_distill.check_teacher(regressor, task, 1, "t", hard_targets=True)


def test_a_bad_teacher_logits_cache_costs_a_pass_not_the_run(tmp_path, teacher, bpe_teacher, custom_task):
    """A cache that cannot be written (a file where its folder goes) is said and the run goes on; the flag
    without a teacher is refused."""
    (tmp_path / "a_file").write_text("not a folder")
    proc = distil(teacher, custom_task, bpe_teacher, tmp_path / "kd", "--teacher_logits_cache", tmp_path / "a_file")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"the teacher's logits could not be kept in {tmp_path / 'a_file'}" in proc.stdout
    assert (tmp_path / "a_file").read_text() == "not a folder"
    line = input_error(run_glue.main, ["--model_name_or_path", teacher, "--train_file", custom_task / "train.csv",
                                       "--validation_file", custom_task / "dev.csv", "--output_dir", tmp_path / "o",
                                       "--teacher_logits_cache", tmp_path / "cache", *FAST])
    assert "--teacher_logits_cache needs --teacher_name_or_path" in line and not (tmp_path / "cache").exists()


def test_cached_logits_changed_in_place_are_a_miss_never_used(tmp_path, teacher, bpe_teacher, custom_task):
    """Finite numbers where the teacher's logits were: the digest catches them, the run says so, computes the
    logits again and trains as on a clean cache."""
    cache = tmp_path / "cache"
    clean = distil(teacher, custom_task, bpe_teacher, tmp_path / "a", "--teacher_logits_cache", cache)
    (kept,) = cache.glob("*.npz")
    overwrite_logits(kept, lambda a: a.__setitem__(slice(0, 10), 7.0))
    proc = distil(teacher, custom_task, bpe_teacher, tmp_path / "b", "--teacher_logits_cache", cache)
    assert f"the cached teacher logits at {kept} were not used (its contents do not match their digest)" in proc.stdout
    assert "read from" not in proc.stdout
    runs = [json.loads(next((tmp_path / d / "custom").glob("lr*/results.json")).read_text()) for d in "ab"]
    assert runs[0]["metrics"] == runs[1]["metrics"] and clean.returncode == 0
    assert runs[1]["teacher"]["logits_read_from"] is None
    with np.load(kept) as again:  # written again, whole
        assert teacher_pass.read_cached_logits(kept, str(again["key"]), (50, 2))[1] is None
