"""`kbert vocab`: learn a WordPiece vocabulary (vocab.txt) from a sample of a text corpus."""

import argparse
import os

from kbert.commands.options import byte_count
from kbert.data.text_sample import DEFAULT_SAMPLE_BYTES
from kbert.tokenizer import TRAINERS

HELP = "Learn a WordPiece vocab.txt from text files or a TFDS dataset, special tokens at ids 0-4."


def add_arguments(parser):
    parser.add_argument(
        "source",
        nargs="*",
        metavar="SOURCE",
        help="UTF-8 text files, read in lines, or one TFDS dataset name, such as "
        "wikipedia/20230601.en",
    )
    parser.add_argument(
        "--input",
        nargs="+",
        metavar="FILE",
        default=[],
        help="the same as SOURCE, as a flag (as in kbert pretrain)",
    )
    parser.add_argument("--output", required=True, metavar="FILE", help="the vocab.txt to write")
    parser.add_argument(
        "--vocabulary-size",
        "--vocab-size",
        type=int,
        default=30522,
        help="the largest number of tokens, special tokens included (default: 30522, as BERT's)",
    )
    parser.add_argument(
        "--lowercase",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="lowercase text, for an uncased model (default: yes)",
    )
    parser.add_argument(
        "--strip-accents",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="remove accents (default: as --lowercase)",
    )
    parser.add_argument(
        "--sample-bytes",
        type=byte_count,
        default=DEFAULT_SAMPLE_BYTES,
        metavar="BYTES",
        help="learn from this much text, drawn evenly across the whole corpus, such as 100MB or "
        f"2GB (default: {DEFAULT_SAMPLE_BYTES // 1_000_000} MB; a smaller corpus is read whole)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="where the sample is drawn; the same seed reads the same text (default: 0)",
    )
    parser.add_argument(
        "--trainer",
        choices=TRAINERS,
        default=TRAINERS[0],
        help="Hugging Face tokenizers' WordPiece trainer (fast, default) or tensorflow-text's "
        "BERT vocabulary learner (pure Python, the same file every run)",
    )
    parser.add_argument(
        "--split",
        default="train",
        help="the split of a TFDS dataset to read (default: train); a split with its own slicing "
        "(train[:10%%]) is sampled from its start",
    )
    parser.add_argument(
        "--text-key", default="text", help="the text feature of a TFDS dataset (default: text)"
    )
    parser.add_argument(
        "--data-dir", default=None, help="the TFDS data directory (default: TFDS' own)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace FILE if it exists"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args):
    from kbert.cli import UsageError
    from kbert.data.sources import is_local
    from kbert.data.text_sample import sample_documents, sample_text_files
    from kbert.tokenizer import train_vocabulary, write_vocabulary

    if args.vocabulary_size <= 5:
        raise UsageError(
            f"--vocabulary-size must leave room beyond the 5 special tokens; got {args.vocabulary_size}"
        )
    if args.sample_bytes < 1:
        raise UsageError(f"--sample-bytes must be at least 1; got {args.sample_bytes}")
    args.source = list(args.source) + list(args.input)
    if not args.source:
        raise UsageError("give the text to learn from: SOURCE... or --input FILE...")
    if os.path.exists(args.output) and not args.overwrite:
        raise FileExistsError(f"--output {args.output} exists; pass --overwrite to replace it")
    local = [is_local(source) for source in args.source]
    if not all(local) and len(args.source) > 1:
        raise UsageError("SOURCE takes several .txt files or one TFDS dataset name, not both")
    progress = not args.quiet
    if all(local):
        if args.split != "train":
            raise UsageError(
                f"--split {args.split} is for a TFDS dataset; text files have no splits"
            )
        sample = sample_text_files(args.source, args.sample_bytes, seed=args.seed, progress=progress)
    else:
        sample = sample_documents(
            args.source[0],
            split=args.split,
            data_dir=args.data_dir,
            text_key=args.text_key,
            sample_bytes=args.sample_bytes,
            seed=args.seed,
            progress=progress,
        )
    try:
        vocabulary = train_vocabulary(
            sample,
            args.vocabulary_size,
            lowercase=args.lowercase,
            strip_accents=args.strip_accents,
            trainer=args.trainer,
            progress=progress,
        )
    except ValueError as error:
        raise ValueError(f"{sample.source}: {error}") from None
    print(sample.summary())
    directory = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(directory, exist_ok=True)
    write_vocabulary(vocabulary, args.output)
    print(f"Wrote {len(vocabulary)} tokens to {args.output}")
    return 0
