"""The records of run_glue.py's and run_qa.py's runs: what a result depends on, which earlier runs are kept or
resumed, and how a run replaces an old one without losing it.

A run is one (task, learning rate, seed) in `--output_dir/TASK/lr<lr>_seed<seed>/`. Before anything trains,
plan_run() decides for each run: keep its results (same settings), resume its newest complete checkpoint
(same settings), or start over; settings that differ stop the call. execute() trains a planned run; with
--overwrite_output_dir the old folder waits aside until the new run has its results. summarize() gives a
task's median per learning rate and the best rate.
"""

import hashlib
import inspect
import json
import math
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

import torch

from core import model_card
from core.errors import InputError, NonFiniteLoss, first_line, say
from core.files import atomic_write, check_writable
from core.run_folder import Replacement
from tasks import glue


def model_identity(name, config, tokenizer):
    """Digests of the model's weights and of the tokenizer: a kept result is reused only for the same model
    (a folder may be moved, or retrained under the same name)."""
    folder = Path(name)
    if folder.is_dir():
        h = hashlib.sha256()
        for path in sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin"), folder / "config.json"]):
            h.update(path.name.encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
        model = f"sha256:{h.hexdigest()[:16]}"
    else:  # a hub name: its revision
        model = f"{name}@{getattr(config, '_commit_hash', None) or 'unknown revision'}"
    backend = getattr(tokenizer, "backend_tokenizer", None)  # vocabulary, lower-casing, accents, ...
    spec = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return {"model": model, "tokenizer": hashlib.sha256(spec.encode()).hexdigest()[:16]}


# TrainingArguments that do not change a run's result: where it is logged or saved, how fast the data load,
# evaluation batch size. Every other flag is compared before a finished run is reused or a checkpoint resumed.
NOT_RESULT = {
    "output_dir", "run_name", "project", "report_to", "disable_tqdm", "seed", "learning_rate",
    "per_device_eval_batch_size", "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
    "dataloader_prefetch_factor", "dataloader_multiprocessing_context", "skip_memory_metrics", "resume_from_checkpoint",
    "do_train", "do_eval", "do_predict", "local_rank", "ddp_backend", "ddp_timeout", "ddp_bucket_cap_mb",
    "push_to_hub", "include_for_metrics", "include_num_input_tokens_seen", "batch_eval_metrics", "debug",
    "prediction_loss_only", "load_best_model_at_end", "metric_for_best_model", "greater_is_better",
    "restore_callback_states_from_checkpoint", "torch_empty_cache_steps", "overwrite_output_dir",
}
NOT_RESULT_PREFIXES = ("logging_", "log_", "save_", "hub_", "trackio_", "eval_")


def training_settings(training_args):
    """The TrainingArguments that change a run's result (NOT_RESULT's complement), as JSON reads them back."""
    args = {k: v for k, v in training_args.to_dict().items()
            if k not in NOT_RESULT and not k.startswith(NOT_RESULT_PREFIXES)}
    return json.loads(json.dumps({"world_size": training_args.world_size, **args}, default=str))


def run_key(cmd, max_length, **task):
    """Everything a run's result depends on besides its seed and learning rate (a kept run must match it): the
    model, the TrainingArguments that change a result, the input length, the teacher, and the task's own
    settings and data digests (`task`)."""
    out = {**cmd.identity, **training_settings(cmd.training_args), "max_seq_length": max_length, **task,
           "distillation": cmd.teacher.settings() if cmd.teacher else None}  # the teacher's digest and weights
    return json.loads(json.dumps(out, default=str))  # as it reads back from results.json


def differences(old, new):
    return [f"{k} {old.get(k)!r} there, {v!r} now" for k, v in new.items() if old.get(k) != v]


def read_json(path, what, keys):
    """A results or settings file written by this script, or an InputError that names it and the way out."""
    check_writable(path, what)  # a folder where the file belongs
    try:
        out = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is damaged ({first_line(e)}): remove it, or give --overwrite_output_dir") from None
    missing = [k for k in keys if k not in out] if isinstance(out, dict) else list(keys)
    if missing:
        raise InputError(f"{path} is not a run_glue.py {what} (it has no {missing[0]!r}): remove it, or give "
                         "--overwrite_output_dir")
    return out


def read_run(path):
    run = read_json(path, "results.json", ("metrics", "score", "learning_rate", "seed", "hyper_parameters"))
    check_metrics(run["metrics"], path)
    return run


def read_summary(path, model, identity, overwrite):
    """The tasks of earlier calls into this --output_dir: kept when they are this model's."""
    if not Path(path).exists():
        return {}
    try:
        summary = check_summary(read_json(path, "results.json", ("model", "tasks")), path)
    except InputError:
        if overwrite:
            return {}
        raise
    if summary.get("model_identity", {}).get("model", identity["model"]) == identity["model"] and (
        "model_identity" in summary or summary.get("model_path") == model
    ):
        return summary["tasks"]
    if overwrite:  # another model's tasks: replaced, not mixed with this one's
        return {}
    raise InputError(f"{path} holds the results of another model ({summary.get('model_path')}): give another "
                     "--output_dir, or --overwrite_output_dir to replace them")


# ----------------------------------------------------------------------------------------------------------
# One run's folder: kept results, a checkpoint to resume, or a fresh start


@dataclass
class Run:
    lr: float
    seed: int
    dir: Path
    kept: dict = None  # its finished results, reused
    resume: Path = None  # the checkpoint to resume from
    discard: list = field(default_factory=list)  # checkpoints that cannot be resumed, removed when it runs
    note: str = ""  # what was found, said when it runs
    redo: bool = False  # finished, but without an output this command asks for: trained again, the old aside


QA_KIND = "question-answering"  # a results.json task of run_qa.py (SQuAD F1): never averaged with GLUE's scores


# The flags that only add an output to a run (not a setting compared with a kept run's): a kept run that lacks
# the output is trained again (same settings, same seed) rather than answering for a command it cannot satisfy.
OUTPUTS = {"model": ("--save_model", lambda run_dir: (run_dir / "model" / "config.json").is_file()
                     and any((run_dir / "model").glob("*.safetensors")))}


def checkpoint_problem(path):
    """Why a Trainer checkpoint cannot be resumed (a kill during its save), or None."""
    for name in ("trainer_state.json", "optimizer.pt", "scheduler.pt"):
        if not (path / name).is_file():
            return f"it has no {name}"
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (ValueError, UnicodeDecodeError):
        return "its trainer_state.json is damaged"
    for name in ("optimizer.pt", "scheduler.pt"):
        if not zipfile.is_zipfile(path / name):  # torch.save writes a zip: a cut one has no central directory
            return f"its {name} is truncated"
    weights = path / "model.safetensors"
    if weights.is_file():
        return None if safetensors_complete(weights) else "its model.safetensors is truncated"
    return None if zipfile.is_zipfile(path / "pytorch_model.bin") else "it has no complete model weights"


def safetensors_complete(path):
    """True when the file is as long as its header says (a cut file still has its header)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size == 8 + n + end
    except (ValueError, KeyError, TypeError, OSError):
        return False


def plan_run(run, run_key, overwrite, main_process, outputs=()):
    """What to do with one run's folder, decided before anything trains or is removed. `outputs`: the OUTPUTS
    this command asks of every run."""
    results = run.dir / "results.json"
    if main_process:  # what a killed command left (the lock is held: no other command is at work here)
        note = replacement(run.dir).recover()
        if note:
            say(note)
    if overwrite or not run.dir.exists():
        return run
    if results.exists():
        run.kept = read_run(results)
        differ = differences(run.kept["hyper_parameters"], run_key)
        if differ:
            raise InputError(f"{results} was run with other settings ({'; '.join(differ[:3])}): "
                             "give --overwrite_output_dir to redo it, or another --output_dir")
        missing = [OUTPUTS[o][0] for o in outputs if not OUTPUTS[o][1](run.dir)]
        if missing:
            run.kept, run.redo = None, True
            run.note = (f"{results} was run without {', '.join(missing)} (its output is not there): training it again "
                        "with the same settings to make it; the finished run is kept aside until then")
        return run
    numbered = [p for p in run.dir.glob("checkpoint-*") if p.name[11:].isdigit()]  # the Trainer's names
    checkpoints = sorted(numbered, key=lambda p: int(p.name[11:]), reverse=True)  # newest first
    if not checkpoints:
        return run
    record = run.dir / "settings.json"
    if not record.exists():
        run.discard = checkpoints
        run.note = f"{run.dir} holds checkpoints but no record of their settings: starting over"
        return run
    differ = differences(read_json(record, "settings.json", ("model",)), run_key)
    if differ:
        raise InputError(f"{run.dir} was interrupted under other settings ({'; '.join(differ[:3])}): give "
                         "--overwrite_output_dir to start it over, or another --output_dir")
    notes = []
    for checkpoint in checkpoints:
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            run.resume = checkpoint
            break
        run.discard.append(checkpoint)
        notes.append(f"{checkpoint.name} is incomplete ({problem}) and is removed")
    then = f"resuming from {run.resume}" if run.resume else "starting over"
    run.note = f"{'; '.join(notes)}: {then}" if notes else then
    return run


def replacement(run_dir):
    """--overwrite_output_dir's replacement of a run (run_folder.py): its commit point is its results.json."""
    return Replacement(run_dir, lambda folder: finished(folder / "results.json"), "finished", "--overwrite_output_dir")


def finished(results):
    """A run folder whose results.json is complete: it is never removed to put an older run back."""
    try:
        read_run(results)
        return True
    except (InputError, OSError):
        return False


def trained_to_the_end(checkpoint):
    """Whether `checkpoint` was saved at its run's last step (the run was stopped before its results were
    written). The Trainer resumed there would take one step more than asked: it checks for the end only after
    a step."""
    if checkpoint is None:
        return False
    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
        return 0 < state["max_steps"] <= state["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def train_or_restore(trainer, run):
    """The run's training metrics: trainer.train(), resumed from the run's checkpoint where it has one; or,
    when that checkpoint is the last step, its weights and state restored with nothing more trained."""
    if trained_to_the_end(run.resume):
        from transformers import TrainerState

        trainer._load_from_checkpoint(str(run.resume))
        trainer.state = TrainerState.load_from_json(str(Path(run.resume) / "trainer_state.json"))
        say(f"  {run.resume} is the run's last step: nothing left to train, its weights are evaluated")
        return {}
    return trainer.train(resume_from_checkpoint=str(run.resume) if run.resume else None).metrics


def execute(run, training_args, overwrite, run_key, train):
    """Train one planned run. --overwrite_output_dir moves the old folder aside and removes it only once the
    new run has its results; a run that fails or is stopped puts it back. A diverged run leaves nothing."""
    main_process = training_args.process_index == 0
    replacing = replacement(run.dir)
    with training_args.main_process_first(local=False, desc="run folder"):  # one process moves; the others wait
        if main_process:
            if overwrite or run.redo:
                replacing.begin()
            for checkpoint in run.discard:
                shutil.rmtree(checkpoint, ignore_errors=True)
            with atomic_write(run.dir / "settings.json", "w") as f:  # what a resume is checked against
                json.dump(run_key, f, indent=2)
    if run.note:
        say(f"  {run.note}")
    try:
        result = train()
    except BaseException as e:
        if main_process and (replacing.begun or isinstance(e, NonFiniteLoss)):
            replacing.rollback()
        raise
    if main_process:
        replacing.commit()
    return result


def summarize(task, runs, score=glue.task_score):
    """The task's figures over its runs: per learning rate the median of each metric over seeds, and the
    learning rate whose median score is best (`score`: a dev set's metrics -> points)."""
    by_lr = {}
    for run in runs:
        by_lr.setdefault(run["learning_rate"], []).append(run)
    grid = {lr: median(r["score"] for r in rs) for lr, rs in by_lr.items()}
    best = max(grid, key=grid.get)
    chosen = by_lr[best]
    metrics = {dev: {m: median(r["metrics"][dev][m] for r in chosen) for m in chosen[0]["metrics"][dev]}
               for dev in chosen[0]["metrics"]}  # median over seeds, each metric on its own
    return {
        "task": task.name, "title": task.title, "metrics": metrics,
        "score": float(sum(score(m) for m in metrics.values()) / len(metrics)), "learning_rate": best,
        "seeds": sorted(r["seed"] for r in chosen),
        "runs": [{"learning_rate": r["learning_rate"], "seed": r["seed"], "score": r["score"]} for r in runs],
        "grid": {str(lr): s for lr, s in grid.items()} if len(grid) > 1 else None, "tokenizer_fit": runs[-1].get(
            "tokenizer_fit"), "train_seconds": round(sum(r["train_seconds"] for r in runs), 1),
    }


def check_metrics(metrics, path):
    """{dev set: {metric: number}}, as run_glue.py writes it; anything else is an InputError naming the file."""

    def numbers(m):
        return isinstance(m, dict) and m and all(isinstance(v, (int, float)) for v in m.values())

    if not isinstance(metrics, dict) or not metrics or not all(numbers(m) for m in metrics.values()):
        raise InputError(f"{path}: its metrics are not {{dev set: {{metric: number}}}}, as run_glue.py writes them")
    return metrics


def check_summary(results, path):
    """A run_glue.py results.json's contents, checked for the fields the table reads."""
    tasks = results.get("tasks") if isinstance(results, dict) else None
    if not isinstance(tasks, dict) or not isinstance(results.get("model"), str):
        raise InputError(f"{path} is not a run_glue.py results.json (it needs a 'model' name and a 'tasks' object)")
    for name, task in tasks.items():
        if not isinstance(task, dict) or not isinstance(task.get("score"), (int, float)):
            raise InputError(f"{path}: task {name!r} has no score")
        check_metrics(task.get("metrics"), f"{path}, task {name!r}")
    return results


def finite_check():
    """A Trainer callback that stops a run whose loss or weights are no longer finite (train.py does the same,
    with the same exit status): a diverged run must not be recorded as a score."""
    from transformers import TrainerCallback

    class FiniteCheck(TrainerCallback):
        def check(self, state, model, loss=None):
            if loss is not None and not math.isfinite(loss):
                raise NonFiniteLoss(f"the training loss is {loss} at step {state.global_step}")
            if model is not None and not all(torch.isfinite(p).all() for p in model.parameters()):
                raise NonFiniteLoss(f"the weights are not finite at step {state.global_step}")

        def on_log(self, args, state, control, logs=None, model=None, **kwargs):
            self.check(state, model, (logs or {}).get("loss"))

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self.check(state, model)

    return FiniteCheck()


def callbacks():
    """The Trainer callbacks of every run (a function, so that tests can add theirs)."""
    return [finite_check()]


def forward_inputs(model):
    """The input names a model's forward takes (DistilBERT has no token_type_ids)."""
    return set(inspect.signature(model.forward).parameters)


def model_inputs(dataset, model, also=()):
    """Only the inputs the model's forward takes (DistilBERT has no token_type_ids), and the columns `also`."""
    keep = forward_inputs(model) | {"label", *also}
    return dataset.remove_columns([c for c in dataset.column_names if c not in keep])


def save_model(trainer, tokenizer, folder, result, task_type, dataset, script):
    """A run's model, tokenizer and model card (README.md) in `folder`. `dataset`: (name as read, hub id or the
    file, hub config or None), for the card's results."""
    trainer.save_model(str(folder))
    tokenizer.save_pretrained(str(folder))
    teacher = (result.get("teacher") or {}).get("path")
    name, kind, config = dataset
    results = [model_card.Result(task_type, name, kind, metrics, config, split)
               for split, metrics in result["metrics"].items()]
    how = f"distilled from `{teacher}` while fine-tuning" if teacher else "fine-tuned directly (no teacher)"
    model_card.write(folder, model_card.Card(
        title=f"{Path(result['model_path']).name} on {result['title']}",
        pipeline_tag=task_type, base_model=result["model_path"], teacher=teacher,
        datasets=[kind] if "/" in kind and not Path(kind).exists() else [], results=results,
        summary=[f"`{result['model_path']}` {how} on {name} by `{script}` ({result['steps']} steps; dev score "
                 f"{result['score']:.2f})."],
        details={"learning rate": result["learning_rate"], "seed": result["seed"], "precision": result["precision"],
                 "max_seq_length": result["hyper_parameters"].get("max_seq_length")},
        command=model_card.this_command(script),
    ))


def seeded_sampling(trainer_class):
    """`trainer_class` whose length-grouped order (the default --train_sampling_strategy group_by_length) is a
    function of the seed and the epoch. transformers' LengthGroupedSampler draws it from the global RNG, whose
    state at an epoch's start a resumed run does not reproduce: a run killed mid-epoch and resumed went on with
    another order than the run uninterrupted (accelerate seeds the random sampler per epoch; this does the same
    for the length-grouped one). The Trainer calls set_epoch at each epoch's start, resumed or not."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochSeededSampler(LengthGroupedSampler):
        def __init__(self, batch_size, lengths, seed):
            super().__init__(batch_size, lengths=lengths)
            self.seed, self.epoch = seed, 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __iter__(self):
            self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
            return super().__iter__()

    class Seeded(trainer_class):
        def _get_train_sampler(self, train_dataset=None):
            sampler = super()._get_train_sampler(train_dataset)
            if type(sampler) is LengthGroupedSampler:
                seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
                return EpochSeededSampler(sampler.batch_size, sampler.lengths, seed)
            return sampler

    Seeded.__name__ = Seeded.__qualname__ = trainer_class.__name__
    return Seeded
