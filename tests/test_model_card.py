"""Every saved model folder carries a model card (README.md) that the model hub's own parser reads back, with
the scores its run recorded: run_glue.py and run_qa.py --save_model here, train.py in test_evaluate.py."""

import json

import pytest
from huggingface_hub import ModelCard

from conftest import run_main
from core import model_card
from glue_helpers import FAST
from qa_helpers import qa_argv
from scripts import run_glue, run_qa


def read_card(folder):
    """(front matter as a dict, {metric: value} of its model-index) of folder/README.md, parsed by the hub."""
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    values = {m["type"]: m["value"] for r in data.get("model-index", [{}])[0].get("results", []) for m in r["metrics"]}
    return data, values, card.text


def test_a_glue_model_and_its_distilled_student_say_what_they_are(tmp_path, teacher, custom_task):
    data = ["--train_file", custom_task / "train.csv", "--validation_file", custom_task / "dev.csv"]
    run_main(run_glue.main, "--model_name_or_path", teacher, *data, "--output_dir", tmp_path / "t", "--max_steps", 2,
             "--save_model", *FAST, check=True)
    fine_tuned = tmp_path / "t" / "custom" / "lr2e-05_seed42"
    front, values, text = read_card(fine_tuned / "model")
    result = json.loads((fine_tuned / "results.json").read_text())
    assert values == pytest.approx(result["metrics"]["custom"]) and front["pipeline_tag"] == "text-classification"
    assert "teacher" not in front and "fine-tuned directly (no teacher)" in text
    assert "python scripts/run_glue.py" in text
    # the fine-tuned model teaches a student: the student's card names it
    run_main(run_glue.main, "--model_name_or_path", teacher, *data, "--output_dir", tmp_path / "s", "--max_steps", 2,
             "--teacher_name_or_path", fine_tuned / "model", "--save_model", *FAST, check=True)
    student = tmp_path / "s" / "custom" / "lr2e-05_seed42"
    front, values, text = read_card(student / "model")
    assert front["teacher"] == str(fine_tuned / "model") and f"distilled from `{fine_tuned / 'model'}`" in text
    assert values == pytest.approx(json.loads((student / "results.json").read_text())["metrics"]["custom"])
    assert "base_model" not in front  # a local folder is named in the text; base_model is for hub ids


def test_a_qa_model_card_holds_its_squad_scores(tmp_path, tiny, syn_qa):
    run_main(run_qa.main, *qa_argv(tiny, syn_qa, tmp_path / "qa", "--max_steps", 2, "--save_model"), check=True)
    run = tmp_path / "qa" / "squad" / "lr0.001_seed42"
    front, values, _ = read_card(run / "model")
    assert front["pipeline_tag"] == "question-answering"
    assert values == pytest.approx(json.loads((run / "results.json").read_text())["metrics"]["dev"])


def test_hub_names_go_in_base_model_and_every_result_is_listed():
    card = model_card.Card(title="a student", pipeline_tag="text-classification", base_model="bert-base-uncased",
                           teacher="some/teacher", datasets=["nyu-mll/glue"], command="python x.py",
                           results=[model_card.Result("text-classification", "GLUE MNLI", "nyu-mll/glue",
                                                      {"accuracy": 0.8}, "mnli", "mnli-m"),
                                    model_card.Result("text-classification", "GLUE MNLI", "nyu-mll/glue",
                                                      {"accuracy": 0.7}, "mnli", "mnli-mm")])
    card_text = model_card.render(card)
    parsed = ModelCard(card_text).data.to_dict()
    assert parsed["base_model"] == "bert-base-uncased" and parsed["teacher"] == "some/teacher"
    results = parsed["model-index"][0]["results"]
    assert [(r["dataset"]["split"], r["metrics"][0]["value"]) for r in results] == [("mnli-m", 0.8), ("mnli-mm", 0.7)]
    assert "| GLUE MNLI | mnli-mm | accuracy | 0.7000 |" in card_text
