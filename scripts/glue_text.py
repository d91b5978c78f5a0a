"""Write the training texts of GLUE task files as a plain-text dump, one text per line, labels unused: real,
unlabelled text for general distillation (train.py) when no Wikipedia dump is at hand.

    python scripts/glue_text.py --data_dir ../shared/data/glue --tasks sst2,rte --output demo_task/dump.txt
    python scripts/binarized_data.py --file_path demo_task/dump.txt --tokenizer_type bert \\
        --tokenizer_name M --dump_file demo_task/binarized_text      # then token_counts.py and train.py

Every text column of each task's training split is written (RTE: both sentences), each distinct text once,
in the files' order. Dev sets are never read: a student scored on them must not have trained on their text.
"""

import argparse

from core.errors import InputError, reports_errors
from core.files import atomic_write, check_writable
from tasks import glue


@reports_errors
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True, help="a folder of GLUE task folders (SST-2/, rte/, ...)")
    p.add_argument("--tasks", default="sst2", help=f"comma-separated, of {', '.join(glue.TASKS)} (default: sst2)")
    p.add_argument("--max_texts", type=int, default=None, help="stop after N texts (default: all)")
    p.add_argument("--output", required=True, help="the dump to write, one text per line")
    args = p.parse_args(argv)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in names if t not in glue.TASKS]
    if not names or unknown:
        raise InputError(f"--tasks {args.tasks!r}: give names among {', '.join(glue.TASKS)}")
    if args.max_texts is not None and args.max_texts < 1:
        raise InputError(f"--max_texts {args.max_texts}: give at least 1")
    check_writable(args.output, "--output")
    seen, counts = {}, {}
    for name in names:
        train = glue.load_local(glue.TASKS[name], args.data_dir).train
        before = len(seen)
        for column in train.texts:
            for text in column:
                text = " ".join(text.split())  # one line per text, whatever its own line breaks
                if text:
                    seen.setdefault(text, None)
        counts[name] = len(seen) - before
    texts = list(seen)[: args.max_texts]
    with atomic_write(args.output, "w") as f:
        f.write("".join(t + "\n" for t in texts))
    words = sum(len(t.split()) for t in texts)
    parts = ", ".join(f"{glue.TASKS[n].title} {c:,}" for n, c in counts.items())
    print(f"{len(texts):,} distinct training texts ({parts}), {words:,} words -> {args.output}")


if __name__ == "__main__":
    main()
