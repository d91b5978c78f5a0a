"""The one task runner (tasks/runner.py) with a third task family written the way docs/glue.md shows it: token
classification in a few lines, trained, scored, kept on a rerun and resumed from nothing else than what
run_glue.py and run_qa.py use."""

import json
import random
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
from transformers import BertTokenizer, DataCollatorForTokenClassification, TrainingArguments

from core.errors import InputError
from tasks import runner
from tasks.runs import model_identity, training_settings


class WordTags(runner.TaskFamily):
    """Tag each word: a number or not. job.task: (training rows, dev rows), each row (words, tags)."""

    script = "tag_words.py"
    pipeline_tag = "token-classification"
    model_class = "AutoModelForTokenClassification"
    teacher_needs = ("a token classifier", "fine-tune one first")

    def model_kwargs(self, job):
        return dict(num_labels=2, id2label={0: "word", 1: "number"}, label2id={"word": 0, "number": 1})

    def prepare(self, job, cmd):
        def encode(rows):
            enc = cmd.tokenizer([words for words, _ in rows], is_split_into_words=True, truncation=True)
            labels = [[-100 if w is None or (k and enc.word_ids(i)[k - 1] == w) else tags[w]  # first pieces only
                       for k, w in enumerate(enc.word_ids(i))] for i, (_, tags) in enumerate(rows)]
            return datasets.Dataset.from_dict({**enc, "labels": labels})

        job.train_set, job.dev = encode(job.task[0]), encode(job.task[1])

    def collator(self, tokenizer, args):  # the default pads input ids and masks; labels need their own padding
        return DataCollatorForTokenClassification(tokenizer)

    def evaluate(self, trainer, job, args, collator):
        out = trainer.predict(job.dev)
        known = out.label_ids != -100
        accuracy = float((out.predictions.argmax(-1)[known] == out.label_ids[known]).mean())
        return {"dev": {"accuracy": accuracy}}, {}

    def dev_score(self, metrics):
        return 100 * metrics["accuracy"]


def word_rows(n, seed, vocabulary):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tags = [int(rng.random() < 0.3) for _ in range(rng.randint(4, 9))]
        rows.append(([str(rng.randint(10, 999)) if t else rng.choice(vocabulary) for t in tags], tags))
    return rows


def command(tiny, out, tokenizer):
    from transformers import AutoConfig

    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=16, num_train_epochs=3,
                             learning_rate=1e-3, report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True)
    model_args = SimpleNamespace(model_name_or_path=str(tiny), model_label="tiny")
    identity = model_identity(str(tiny), AutoConfig.from_pretrained(tiny), tokenizer)
    return runner.Command(WordTags(), model_args, SimpleNamespace(seeds=1, save_model=False), None, args, tokenizer,
                          identity, SimpleNamespace(requested="fp32", used="fp32"))


def test_a_third_task_family_runs_through_the_one_runner(tmp_path, tiny, capsys):
    tokenizer = BertTokenizer.from_pretrained(str(tiny))
    vocabulary = [w for w in tokenizer.get_vocab() if w.isalpha() and len(w) > 2][:60]
    rows = word_rows(240, 0, vocabulary), word_rows(60, 1, vocabulary)
    cmd = command(tiny, tmp_path / "tags", tokenizer)
    key = {**cmd.identity, **training_settings(cmd.training_args), "rows": len(rows[0])}
    summary = runner.run_jobs(cmd, [runner.Job("tags", "word tags", rows, key)], [1e-3])
    run = json.loads((tmp_path / "tags" / "tags" / "lr0.001_seed42" / "results.json").read_text())
    numbers = np.mean([t for _, tags in rows[1] for t in tags])
    assert run["steps"] == 45 and run["metrics"]["dev"]["accuracy"] > max(numbers, 1 - numbers) + 0.05
    assert summary["tasks"]["tags"]["score"] == run["score"] == 100 * run["metrics"]["dev"]["accuracy"]
    assert json.loads((tmp_path / "tags" / "results.json").read_text()) == summary
    assert "word tags lr 0.001 seed 42: dev accuracy" in capsys.readouterr().out
    # a rerun keeps the finished run; another setting is refused, as in run_glue.py and run_qa.py
    again = runner.run_jobs(cmd, [runner.Job("tags", "word tags", rows, key)], [1e-3])
    assert again["tasks"]["tags"] == summary["tasks"]["tags"] and ": kept " in capsys.readouterr().out
    with pytest.raises(InputError, match="was run with other settings"):
        runner.run_jobs(cmd, [runner.Job("tags", "word tags", rows, {**key, "rows": 1})], [1e-3])
