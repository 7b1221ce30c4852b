"""`kbert evaluate`: score a kbert model directory on labeled data or held-out text."""

import json

from kbert.commands import options

HELP = "Score a model directory on data; prints the metrics as JSON on the last line."


def add_arguments(parser):
    parser.add_argument("--model", required=True, metavar="DIR", help="a kbert model directory")
    parser.add_argument("--data", required=True, nargs="+", metavar="FILE",
                        help="a TSV/CSV file (or a TFDS name) for a classifier; .txt files for a masked LM")
    parser.add_argument("--task", default=None,
                        help="a GLUE task (default: the model's own); for an embedding model, sts "
                        "(scored pairs) or retrieval ((query, passage) pairs; default: by the data)")
    parser.add_argument("--split", default=None,
                        help="split to read (default: validation for a TFDS classification set, "
                             "train, i.e. all of it, for .txt files; slices such as 'train[90%%:]' work)")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory")
    parser.add_argument("--batch-size", type=options.positive_int, default=32,
                        help="batch size (default: 32)")
    parser.add_argument("--steps", type=options.positive_int, default=None,
                        help="score only this many batches (default: all)")
    options.add_column_arguments(parser)


def run(args):
    from kbert import workflows

    data = args.data if len(args.data) > 1 else args.data[0]
    column_options = options.column_options(args)
    metrics = workflows.evaluate(
        args.model,
        data,
        task=args.task,
        split=args.split,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        steps=args.steps,
        **column_options,
    )
    print(json.dumps(metrics))
    return 0
