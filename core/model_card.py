"""A model card (README.md) in every saved model folder, so that a pushed student says what it is.

The card is the model hub's own format: YAML front matter written by huggingface_hub's ModelCardData (base model,
datasets, metrics with their values as a model-index, tags), then a short text: what the model is, what taught
it, its scores and the command that made it. run_glue.py, run_qa.py and train.py write one beside the weights;
`huggingface_hub.ModelCard.load` reads it back (tests/test_model_card.py).
"""

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Result:
    """One evaluation: a task on a dataset split, and the metrics measured there ({name: value})."""

    task_type: str  # the hub's task id: text-classification, question-answering, fill-mask
    dataset_name: str  # as a reader names it: "GLUE SST-2", "SQuAD v1.1 (dev.json)"
    dataset_type: str  # the hub's dataset id where there is one (nyu-mll/glue, rajpurkar/squad), else the file
    metrics: dict
    dataset_config: str | None = None
    split: str = "validation"


@dataclass
class Card:
    title: str  # the heading: what the model is, in a few words
    pipeline_tag: str
    summary: list = field(default_factory=list)  # lines of prose under the heading
    base_model: str | None = None  # the model it was fine-tuned from or initialised with (a name or a folder)
    teacher: str | None = None  # the model it was distilled from, if any
    datasets: list = field(default_factory=list)
    results: list = field(default_factory=list)  # [Result]
    details: dict = field(default_factory=dict)  # settings worth a line each: {name: value}
    command: str | None = None  # how it was made; default: this process's command line
    tags: list = field(default_factory=lambda: ["distillation"])


def is_hub_name(name):
    """A model hub id (owner/name or name), not a folder on this machine: only those go in `base_model`."""
    return bool(name) and not Path(name).exists() and not str(name).startswith((".", "/", "~"))


def this_command(script=None):
    """The command line of this process, as a user would retype it."""
    args = sys.argv[1:]
    return " ".join(["python", script or Path(sys.argv[0]).name, *map(shlex.quote, args)])


def render(card):
    """The card's text: front matter (huggingface_hub's own YAML) and the prose."""
    from huggingface_hub import EvalResult, ModelCardData

    evals = [
        EvalResult(task_type=r.task_type, dataset_type=r.dataset_type, dataset_name=r.dataset_name,
                   dataset_config=r.dataset_config, dataset_split=r.split, metric_type=name, metric_value=float(v))
        for r in card.results
        for name, v in r.metrics.items()
    ]
    base = card.base_model if is_hub_name(card.base_model) else None
    data = ModelCardData(
        library_name="transformers", pipeline_tag=card.pipeline_tag, tags=card.tags, base_model=base,
        datasets=card.datasets or None, metrics=sorted({e.metric_type for e in evals}) or None,
        model_name=card.title if evals else None, eval_results=evals or None,
        teacher=card.teacher,
    )
    lines = [f"# {card.title}", "", *card.summary, ""]
    if card.base_model:
        lines.append(f"- **Started from:** `{card.base_model}`")
    if card.teacher:
        lines.append(f"- **Distilled from:** `{card.teacher}`")
    for name, value in card.details.items():
        lines.append(f"- **{name}:** {value}")
    if card.results:
        lines += ["", "## Results", "", "| dataset | split | metric | value |", "|---|---|---|---|"]
        lines += [f"| {r.dataset_name} | {r.split} | {name} | {value:.4f} |" for r in card.results
                  for name, value in r.metrics.items()]
    lines += ["", "## How it was made", "", "```bash", card.command or this_command(), "```", ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)


def write(folder, card):
    """Write `card` as folder/README.md (the name the hub shows)."""
    path = Path(folder) / "README.md"
    path.write_text(render(card), encoding="utf-8")
    return path
