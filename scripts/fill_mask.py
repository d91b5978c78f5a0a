"""Show what masked LMs predict for a masked word, side by side.

    python scripts/fill_mask.py --model demo_run/teacher --model demo_run/student_distilled \\
        --data_file demo_run/binarized_text.wordpiece-uncased.valid.pickle \\
        --token_counts demo_run/token_counts.wordpiece-uncased.pickle --num_sentences 4
    python scripts/fill_mask.py --model demo_run/teacher --text "riverburg is a city in [MASK]."

With --data_file, it takes the first --num_sentences held-out sequences and masks, in each, the word that
is rarest in the training data (by --token_counts) among its whole words of letters (names and facts
rather than "the"); with --text, the sentences' own [MASK]. For each model it prints the --top_k
predictions with their probabilities. The tokenizer is the first model's.
"""

import argparse
import sys
from pathlib import Path

import torch

from core.errors import InputError, reports_errors
from core.loading import load_masked_lm, load_tokenizer, split_name
from training import data_format

ROOT = Path(__file__).resolve().parents[1]


def held_out_examples(tokenizer, data_file, counts_file, n):
    """[(token ids with one [MASK], the masked word)] from the first `n` usable held-out sequences."""
    data = data_format.load_binarized(data_file)
    counts, _ = data_format.load_token_counts(counts_file)
    examples = []
    for i in range(len(data)):
        ids = [int(t) for t in data[i]]
        pieces = tokenizer.convert_ids_to_tokens(ids)
        whole = [
            j
            for j, tok in enumerate(pieces)
            if tok.isalpha() and len(tok) > 3 and (j + 1 == len(pieces) or not pieces[j + 1].startswith("##"))
            and j > 0 and ids[j] not in tokenizer.all_special_ids
        ]
        if not whole:
            continue
        j = min(whole, key=lambda k: (counts[ids[k]], k))
        answer = pieces[j]
        ids[j] = tokenizer.mask_token_id
        examples.append((ids, answer))
        if len(examples) == n:
            break
    return examples


@torch.no_grad()
def predictions(model, ids, mask_id, top_k):
    logits = model(input_ids=torch.tensor([ids])).logits[0]
    probs = logits[ids.index(mask_id)].float().softmax(-1)
    p, idx = probs.topk(top_k)
    return list(zip(idx.tolist(), p.tolist()))


@reports_errors
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", required=True, help="[NAME=]PATH of a masked LM; repeat")
    p.add_argument("--text", action="append", default=[], help="a sentence with one [MASK]; repeat")
    p.add_argument("--data_file", default=None, help="held-out binarized text to take sentences from")
    p.add_argument("--token_counts", default=None, help="token counts (with --data_file: picks the rarest word)")
    p.add_argument("--num_sentences", type=int, default=4, help="held-out sentences to show")
    p.add_argument("--top_k", type=int, default=3, help="predictions per model")
    args = p.parse_args(argv)

    import transformers
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    names = []
    for spec in args.model:
        name, path = split_name(spec)
        names.append((name or Path(path.rstrip("/")).name, path))
    tokenizer = load_tokenizer(AutoTokenizer, names[0][1])
    models = {name: load_masked_lm(name, path) for name, path in names}  # a model without its head is refused
    examples = [(tokenizer(t)["input_ids"], None) for t in args.text]
    if args.data_file:
        if not args.token_counts:
            raise InputError("--data_file needs --token_counts")
        examples += held_out_examples(tokenizer, args.data_file, args.token_counts, args.num_sentences)
    if not examples:
        raise InputError("give --text or --data_file")
    width = max(len(n) for n in models)
    for ids, answer in examples:
        if ids.count(tokenizer.mask_token_id) != 1:
            print(f"skipped (needs exactly one {tokenizer.mask_token}): {tokenizer.decode(ids)}")
            continue
        text = tokenizer.decode(ids, skip_special_tokens=False).replace("[CLS] ", "").replace(" [SEP]", "")
        print(text + (f"    (answer: {answer})" if answer else ""))
        for name, model in models.items():
            preds = predictions(model, ids, tokenizer.mask_token_id, args.top_k)
            shown = " | ".join(f"{tokenizer.convert_ids_to_tokens(i)} {pr:.2f}" for i, pr in preds)
            print(f"  {name.ljust(width)}  {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
