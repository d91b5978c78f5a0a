"""Train a lowercase BERT WordPiece tokenizer on a text dump, for runs without the model hub.

    python scripts/train_wordpiece.py --file_path data/dump.txt --vocab_size 8000 \
        --output_dir data/wordpiece-uncased

writes a tokenizer folder (vocab.txt, tokenizer.json, tokenizer_config.json) that
`BertTokenizer.from_pretrained(folder)` loads, and that scripts/binarized_data.py takes as
`--tokenizer_type bert --tokenizer_name data/wordpiece-uncased`. Real runs use bert-base-uncased's
own vocabulary instead: the teacher was trained with it.
"""

import argparse
import sys
from pathlib import Path

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(file_path, output_dir, vocab_size=8000, min_frequency=2):
    """Train on `file_path`, save to `output_dir`, return the transformers tokenizer."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    wordpiece = BertWordPieceTokenizer(lowercase=True, strip_accents=True, clean_text=True)
    wordpiece.train([str(file_path)], vocab_size=vocab_size, min_frequency=min_frequency,
                    special_tokens=SPECIAL_TOKENS, show_progress=False)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    wordpiece.save_model(str(output_dir))  # vocab.txt, which transformers 5 no longer writes itself
    tokenizer = BertTokenizerFast(tokenizer_object=wordpiece._tokenizer, do_lower_case=True,
                                  unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                                  cls_token="[CLS]", mask_token="[MASK]", model_max_length=512)
    tokenizer.save_pretrained(str(output_dir))
    return tokenizer


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train a BERT WordPiece tokenizer on a text dump.")
    parser.add_argument("--file_path", default="data/dump.txt", help="text, one sequence per line")
    parser.add_argument("--output_dir", default="data/wordpiece-uncased", help="tokenizer folder to write")
    parser.add_argument("--vocab_size", type=int, default=8000, help="upper bound; a small corpus yields fewer")
    parser.add_argument("--min_frequency", type=int, default=2, help="merges seen fewer times are not learnt")
    args = parser.parse_args(argv)
    path = Path(args.file_path)
    if not path.is_file() or path.stat().st_size == 0:
        print(f"error: {path} is missing or empty: write it with scripts/extract_wikipedia.py", file=sys.stderr)
        return 1
    tokenizer = train_wordpiece(path, args.output_dir, args.vocab_size, args.min_frequency)
    print(f"trained a WordPiece vocabulary of {len(tokenizer):,} ids; wrote {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
