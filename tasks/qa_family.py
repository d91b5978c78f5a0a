"""run_qa.py's task family for tasks/runner.py: extractive question answering (SQuAD v1.1 / v2.0, tasks/qa.py
reads the questions and cuts their contexts into windows), scored with SQuAD's exact match and F1, and
distilled with tasks/qa_distill.py's span losses."""

from core.errors import say
from core.precision import autocast_dtype
from tasks import qa
from tasks.qa_distill import UNANSWERED, Spans
from tasks.runner import TaskFamily
from tasks.runs import QA_KIND, model_inputs
from tasks.teacher_pass import model_logits

HUB = {"squad": "rajpurkar/squad", "squad_v2": "rajpurkar/squad_v2"}


def qa_score(metrics):
    """A dev set's score in points: its F1 (the figure SQuAD's leaderboards rank by)."""
    return 100 * metrics["f1"]


def encode(tokenizer, split, data, max_length, training):
    """A split's windows: (datasets.Dataset of the model's columns, all columns as lists for post-processing)."""
    import datasets

    cols = qa.features(tokenizer, split.examples, max_length, data.doc_stride, data.max_query_length, training)
    keep = {"input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions"}
    return datasets.Dataset.from_dict({k: v for k, v in cols.items() if k in keep}), cols


class QAFamily(TaskFamily):
    """Extractive QA: a span head that scores every token as the answer's start and end; each question and
    its context become windows of --max_seq_length tokens; the gold answers are the windows' start and end
    positions. job.task is (the train split, the dev split, the transfer questions or None)."""

    script = "run_qa.py"
    pipeline_tag = "question-answering"
    model_class = "AutoModelForQuestionAnswering"
    teacher_needs = ("a question-answering model", "fine-tune it on the task first (run_qa.py --save_model: its "
                     "squad/RUN/model)")
    targets = Spans.targets

    def losses(self, job, args, teacher):
        """The span loss over each window's real tokens (and KD with a teacher), with or without a teacher."""
        return Spans()

    def prepare(self, job, cmd):
        """The windows of both splits, once for every run; with a teacher, its start/end logits per token."""
        import datasets

        train, dev, transfer = job.task
        job.train_set, _ = encode(cmd.tokenizer, train, self.data_args, self.max_length, True)
        dev_set, dev_cols = encode(cmd.tokenizer, dev, self.data_args, self.max_length, False)
        more = ""
        if transfer:  # after the gold windows; only the teacher's logits are their target
            extra, _ = encode(cmd.tokenizer, transfer, self.data_args, self.max_length, True)
            extra = extra.map(lambda b: {k: [UNANSWERED] * len(b[k]) for k in self.targets}, batched=True)
            job.train_set, more = datasets.concatenate_datasets([job.train_set, extra]), f" (+ {len(extra):,} of " \
                f"{len(transfer):,} transfer questions only the teacher answers)"
        say(f"{len(job.train_set):,} training windows{more}, {len(dev_set):,} dev windows")
        job.dev = dev_set, dev_cols
        teacher = cmd.teacher
        if teacher and teacher.args.logits_once:
            job.train_set = teacher.with_logits(job.train_set, cmd.tokenizer, cmd.training_args, True)

    def evaluate(self, trainer, job, args, collator):
        """({"dev": SQuAD's metrics}, the prediction files): every dev window through the model (each process
        reads all of them), the best answer per question."""
        dev_set, dev_cols = job.dev
        d = self.data_args
        logits = model_logits(trainer.model, model_inputs(dev_set, trainer.model), collator,
                              args.per_device_eval_batch_size, args.device, autocast_dtype(args), desc="dev windows",
                              quiet=args.disable_tqdm)  # in the precision it trained in
        examples = job.task[1].examples
        predictions, nbest, null_odds = qa.postprocess(examples, dev_cols, [a[:, 0] for a in logits],
                                                       [a[:, 1] for a in logits], d.n_best_size, d.max_answer_length,
                                                       d.version_2_with_negative, d.null_score_diff_threshold)
        outputs = {"predictions.json": predictions, "nbest_predictions.json": nbest}
        if d.version_2_with_negative:
            outputs["null_odds.json"] = null_odds
        return {"dev": qa.squad_metrics(examples, predictions, d.version_2_with_negative)}, outputs

    def dev_score(self, metrics):
        return qa_score(metrics)

    def shown(self, metrics):  # one dev set
        return ", ".join(f"{k} {100 * v:.2f}" for k, v in metrics["dev"].items())

    def data_source(self, job):
        train, dev, transfer = job.task
        return {"train": train.source, "dev": dev.source, **({"transfer": transfer.source} if transfer else {})}

    def card_dataset(self, job):
        dev = job.task[1]
        return dev.source, HUB.get(job.name) or dev.source, None

    def teacher_rows(self, job):
        transfer = job.task[2]
        return {"transfer_questions_used": len(transfer) if transfer else 0}

    def summarize(self, job, results):
        return super().summarize(job, results) | {"kind": QA_KIND}
