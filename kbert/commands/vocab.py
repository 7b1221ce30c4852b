"""`kbert vocab`: learn a WordPiece vocabulary (vocab.txt) from a text corpus."""

import argparse
import os

HELP = "Learn a WordPiece vocab.txt from text files or a TFDS dataset, special tokens at ids 0-4."


def add_arguments(parser):
    parser.add_argument(
        "source",
        nargs="*",
        metavar="SOURCE",
        help=".txt files (blank lines and '= Title =' lines separate documents) or one TFDS "
        "dataset name, such as wikipedia/20230601.en",
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
    parser.add_argument("--split", default="train", help="the split to read (default: train)")
    parser.add_argument(
        "--text-key", default="text", help="the text feature of a TFDS dataset (default: text)"
    )
    parser.add_argument(
        "--data-dir", default=None, help="the TFDS data directory (default: TFDS' own)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace FILE if it exists"
    )


def run(args):
    from kbert.cli import UsageError
    from kbert.data.sources import is_local, load_documents
    from kbert.tokenizer import train_vocabulary, write_vocabulary

    if args.vocabulary_size <= 5:
        raise UsageError(
            f"--vocabulary-size must leave room beyond the 5 special tokens; got {args.vocabulary_size}"
        )
    args.source = list(args.source) + list(args.input)
    if not args.source:
        raise UsageError("give the text to learn from: SOURCE... or --input FILE...")
    if os.path.exists(args.output) and not args.overwrite:
        raise FileExistsError(f"--output {args.output} exists; pass --overwrite to replace it")
    local = [is_local(source) for source in args.source]
    if not all(local) and len(args.source) > 1:
        raise UsageError("SOURCE takes several .txt files or one TFDS dataset name, not both")
    source = args.source if all(local) else args.source[0]
    documents = load_documents(
        source, split=args.split, data_dir=args.data_dir, text_key=args.text_key
    )
    vocabulary = train_vocabulary(
        documents,
        args.vocabulary_size,
        lowercase=args.lowercase,
        strip_accents=args.strip_accents,
    )
    directory = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(directory, exist_ok=True)
    write_vocabulary(vocabulary, args.output)
    print(f"Wrote {len(vocabulary)} tokens to {args.output}")
    return 0
