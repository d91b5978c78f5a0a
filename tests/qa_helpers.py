"""Helpers of the question-answering tests: run_qa.py's arguments for a tiny model on make_qa_data.py's sets."""

from glue_helpers import FAST


def qa_argv(model, data, out, *extra, version="v1"):
    split = {"v1": "v1.1", "v2": "v2.0"}[version]
    return ["--model_name_or_path", model, "--train_file", data / version / f"train-{split}.json",
            "--validation_file", data / version / "dev.flat.json", "--output_dir", out, "--max_seq_length", 64,
            "--max_query_length", 24, "--doc_stride", 16, "--max_train_samples", 200, "--max_eval_samples", 60,
            "--learning_rate", 1e-3, "--per_device_train_batch_size", 16, *FAST, *extra,
            *(["--version_2_with_negative"] if version == "v2" else [])]
