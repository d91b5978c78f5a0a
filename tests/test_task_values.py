"""Task data whose values are of the wrong type or show nothing: a number where a
text goes is refused in one line; rows without text are left out and counted the same way in every file kind
(the task's own files, a transfer .txt, .jsonl or .tsv); and what a run records is the rows it used."""

import json

from conftest import input_error
from glue_helpers import FAST, distil
from scripts import run_glue
from tasks import glue


def run_of(out):
    return json.loads(next((out / "custom").glob("lr*/results.json")).read_text())


def test_transfer_rows_without_text_are_left_out_and_counted_in_every_file_kind(tmp_path, teacher, bpe_teacher,
                                                                                  custom_task):
    good = ["the river runs north of the city", "people were born in the year of the river"]
    blank = ["", "   ", "\u200b", "\ufeff\u200b "]
    (tmp_path / "more.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in good + blank))
    (tmp_path / "more.txt").write_text("\n".join(good + ["\u200b\u200d", "\ufeff"]) + "\n")
    (tmp_path / "more.tsv").write_text("text\tlabel\n" + "".join(f"{t}\tx\n" for t in good) + "a\tb\tc\n \tx\n")
    for name, left_out in (("more.jsonl", 4), ("more.txt", 2), ("more.tsv", 2)):
        out = tmp_path / name.replace(".", "_")
        proc = distil(teacher, custom_task, bpe_teacher, out, "--transfer_file", tmp_path / name)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"{left_out} rows left out (malformed, or without text)" in proc.stdout, (name, proc.stdout[-1500:])
        assert "(+ 12 without their labels)" in proc.stdout  # 10 of the task's + the 2 good lines
        assert run_of(out)["teacher"]["unlabeled_rows_used"] == {"task": 10, "transfer_file": 2}


def test_a_number_where_a_text_goes_is_refused(tmp_path, teacher, bpe_teacher, custom_task):
    (tmp_path / "numbers.jsonl").write_text(json.dumps({"text": "a city"}) + "\n" + json.dumps({"text": 5}) + "\n")
    line = input_error(run_glue.main, ["--model_name_or_path", teacher, "--train_file", custom_task / "train.csv",
                                       "--validation_file", custom_task / "dev.csv", "--output_dir", tmp_path / "o",
                                       "--teacher_name_or_path", bpe_teacher, "--transfer_file",
                                       tmp_path / "numbers.jsonl", *FAST])
    assert line.endswith("numbers.jsonl: column 'text' holds a int, not a text, at line 2 (write texts as strings)")
    # the task's own files too (another file kind: a JSON array)
    rows = [{"sentence": "a good film", "label": 1}, {"sentence": 3.5, "label": 0}]
    (tmp_path / "train.json").write_text(json.dumps(rows))
    (tmp_path / "dev.json").write_text(json.dumps(rows[:1]))
    line = input_error(run_glue.main, ["--model_name_or_path", teacher, "--train_file", tmp_path / "train.json",
                                       "--validation_file", tmp_path / "dev.json", "--output_dir", tmp_path / "o",
                                       *FAST])
    assert "train.json: column 'sentence' holds a float, not a text, at row 2" in line
    assert not (tmp_path / "o").exists()


def test_the_task_files_rows_without_text_are_left_out_and_counted(tmp_path):
    (tmp_path / "train.csv").write_text("sentence,label\na good film,1\n\u200b,0\n ,1\na dull film,0\n")
    (tmp_path / "dev.csv").write_text("sentence,label\nfine,1\nbad,0\n")
    data = glue.load_task(None, train_file=tmp_path / "train.csv", validation_file=tmp_path / "dev.csv")
    assert data.train.texts == [["a good film", "a dull film"]] and data.train.labels == [1, 0]
    assert data.train.skipped == 2


def test_unlabeled_samples_are_recorded_as_used_not_as_asked(tmp_path, teacher, bpe_teacher, custom_task):
    proc = distil(teacher, custom_task, bpe_teacher, tmp_path / "out", "--unlabeled_samples", 5000)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # 200 training rows, 40 labelled: 160 left
    assert "--unlabeled_samples 5,000: custom has 160 training examples after the 40 labelled ones: using 160" in (
        proc.stdout)
    assert run_of(tmp_path / "out")["teacher"]["unlabeled_rows_used"] == {"task": 160, "transfer_file": 0}
