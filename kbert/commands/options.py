"""Flags shared by the training subcommands (pretrain, finetune, quickstart).

Sizes, counts and rates that only make sense above zero are checked as the flags are parsed,
so that a mistake is reported with the flag's name before any data or model is read.
"""

import argparse
import math
import re

from kbert import distribution, training

# Where a library message names a parameter: `name=value`, or "Expected name to ...".
_NAMED_PARAMETER = re.compile(r"\b([a-z][a-z0-9_]*)=|\bExpected ([a-z][a-z0-9_]*) to\b")


def add_training_arguments(parser, learning_rate, batch_size=32):
    group = parser.add_argument_group("training")
    group.add_argument("--batch-size", type=positive_int, default=batch_size,
                       help=f"global batch size, split over replicas (default: {batch_size})")
    group.add_argument("--sequence-length", type=positive_int, default=128,
                       help="tokens per sequence, [CLS] and [SEP] included (default: 128)")
    group.add_argument("--optimizer", default="adamw", choices=training.OPTIMIZERS,
                       help="optimizer (default: adamw)")
    group.add_argument("--learning-rate", type=positive_float, default=learning_rate,
                       help=f"peak learning rate after warmup (default: {learning_rate})")
    group.add_argument("--weight-decay", type=float, default=0.01,
                       help="decoupled weight decay, not applied to LayerNorm and biases (default: 0.01)")
    group.add_argument("--gradient-accumulation-steps", type=int, default=None,
                       help="sum gradients over this many batches before each update")
    group.add_argument("--dropout", type=float, default=0.1, help="dropout rate (default: 0.1)")
    group.add_argument("--precision", default="float32",
                       choices=training.PRECISIONS,
                       help="dtype policy (default: float32)")
    group.add_argument("--jit-compile", default="auto", type=_auto_or_bool,
                       help="XLA: auto, true or false (default: auto, Keras' choice per device)")
    group.add_argument("--backup-every", type=positive_int, default=None,
                       help="back up the training state every N steps, as well as at epoch ends")
    group.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    group.add_argument("--quiet", action="store_true", help="one line per epoch, no progress bar")

    group = parser.add_argument_group("distribution")
    group.add_argument("--strategy", default="auto",
                       choices=distribution.STRATEGIES,
                       help="devices to train on (default: auto: TPU, else all GPUs, else CPU)")
    group.add_argument("--coordinator-address", default=None,
                       help="host:port of process 0 for multi-process JAX training")
    group.add_argument("--num-processes", type=int, default=None,
                       help="processes training together (JAX)")
    group.add_argument("--process-id", type=int, default=None,
                       help="this process's index, 0 to --num-processes - 1 (JAX)")
    group.add_argument("--model-parallel", type=int, default=1,
                       help="devices each model replica is sharded over (JAX; default: 1)")


def training_options(args):
    """The keyword arguments of kbert.workflows.pretrain / finetune shared by both."""
    return dict(
        batch_size=args.batch_size,
        sequence_length=args.sequence_length,
        optimizer=args.optimizer,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        dropout=args.dropout,
        precision=args.precision,
        jit_compile=args.jit_compile,
        backup_every=args.backup_every,
        seed=args.seed,
        strategy=args.strategy,
        distribution_options=dict(
            coordinator_address=args.coordinator_address,
            num_processes=args.num_processes,
            process_id=args.process_id,
            model_parallel=args.model_parallel,
        ),
        verbose=2 if args.quiet else "auto",
    )


def add_corpus_arguments(parser, input_help, tfds_help, split_dest="split"):
    """The flags of a text corpus and its tokenizer, shared by `kbert pretrain` and `kbert prepare`.

    `--input` or `--tfds` (one required), the TFDS split, text feature and data directory, the
    vocabulary and its casing.
    """
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="FILE", help=input_help)
    source.add_argument("--tfds", metavar="NAME", help=tfds_help)
    parser.add_argument("--split", dest=split_dest, default="train", help="TFDS split (default: train)")
    parser.add_argument("--text-key", default="text", help="TFDS text feature (default: text)")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory")
    parser.add_argument("--vocabulary", "--vocab", dest="vocabulary", required=True, metavar="FILE",
                        help="vocab.txt (see kbert vocab)")
    parser.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=True,
                        help="lowercase text, for an uncased vocabulary (default: yes)")
    parser.add_argument("--strip-accents", action=argparse.BooleanOptionalAction, default=None,
                        help="remove accents (default: as --lowercase)")


def add_column_arguments(parser):
    group = parser.add_argument_group("columns (for files other than a GLUE task's)")
    group.add_argument("--text-column", default=None,
                       help="the text column: header name or 0-based index")
    group.add_argument("--text-pair-column", default=None,
                       help="the second text column, for sentence-pair tasks")
    group.add_argument("--label-column", default=None,
                       help="the label column: header name or 0-based index (default: label)")
    group.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                       help="whether the file's first line names its columns")
    group.add_argument("--delimiter", default=None,
                       help="field delimiter (default: from the extension: tab for .tsv, comma for .csv)")


def column_options(args):
    text_columns = [column for column in (args.text_column, args.text_pair_column) if column is not None]
    if args.text_pair_column is not None and args.text_column is None:
        from kbert.cli import UsageError

        raise UsageError("--text-pair-column needs --text-column")
    return dict(
        text_columns=[_index_or_name(column) for column in text_columns] or None,
        label_column=_index_or_name(args.label_column),
        header=args.header,
        delimiter=args.delimiter,
    )


def _index_or_name(column):
    if column is None:
        return None
    return int(column) if str(column).isdigit() else column


def positive_int(text):
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def byte_count(text):
    """An argparse type: a number of bytes, such as `100000000`, `100MB`, `1.5GB` or `64KiB`."""
    match = re.fullmatch(r"\s*(-?[0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match and match.group(2).lower()
    if unit and unit not in _BYTE_UNITS:
        unit += "b"  # 100M, 64Ki
    if not match or unit not in _BYTE_UNITS:
        raise argparse.ArgumentTypeError(
            f"expected a number of bytes such as 100000000, 100MB or 2GB, got {text!r}"
        )
    return int(float(match.group(1)) * _BYTE_UNITS[unit])


def positive_float(text):
    """An argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _auto_or_bool(value):
    lowered = value.lower()
    if lowered in ("auto", "true", "false"):
        return lowered if lowered == "auto" else lowered == "true"
    raise argparse.ArgumentTypeError(f"expected auto, true or false, got {value!r}")


def flags_of_parameters(parser):
    """`{parameter name: flag}` of a subcommand's parser, e.g. `learning_rate: --learning-rate`."""
    flags = {}
    for action in parser._actions:
        long_options = [option for option in action.option_strings if option.startswith("--")]
        if long_options:
            flags.setdefault(action.dest, long_options[0])
    return flags


def with_flag_names(message, flags):
    """A library error `message`, which names parameters, with the flags that set them added.

    Library errors speak to Python callers (`learning_rate=0`); the command line user is told
    which flag that is, after the message, which stays as the library wrote it.
    """
    named = []
    for match in _NAMED_PARAMETER.finditer(message):
        flag = flags.get(match.group(1) or match.group(2))
        if flag is not None and flag not in named and flag not in message:
            named.append(flag)
    if not named:
        return message
    return f"{message} ({'flags' if len(named) > 1 else 'flag'}: {', '.join(named)})"
