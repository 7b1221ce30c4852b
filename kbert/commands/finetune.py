"""`kbert finetune`: fine-tune a pretrained BERT for a task (text classification by default).

The flags build the run's config objects (`kbert.config`); each flag is the field of the
same name.
"""

import json

from kbert.commands import options

HELP = "Fine-tune a kbert model directory for a task: a GLUE task, a TSV/CSV file or TFDS."


def add_arguments(parser):
    parser.add_argument("--task", default=None,
                        help="a GLUE task (sst2, cola, mrpc, rte, qnli, stsb, qqp, mnli, wnli): "
                        "sets columns, labels and metric; conll2003 or token_classification for "
                        "named entities from CoNLL-style files; embedding, sts, similarity or "
                        "retrieval: sentence embeddings on text pairs")
    train = parser.add_mutually_exclusive_group(required=True)
    train.add_argument("--train", metavar="FILE", help="training TSV/CSV file (CoNLL-style for tagging)")
    train.add_argument("--tfds", metavar="NAME", help="a TFDS dataset, e.g. glue/sst2")
    parser.add_argument("--validation", metavar="FILE", default=None,
                        help="validation TSV/CSV file (with --tfds: its validation split)")
    parser.add_argument("--train-split", default="train", help="TFDS training split")
    parser.add_argument("--validation-split", default="validation", help="TFDS validation split")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory")
    parser.add_argument("--label-names", default=None,
                        help="comma-separated class names in id order (default: read from the data)")
    parser.add_argument("--regression", action="store_true",
                        help="labels are numbers, one output (STS-B style)")
    options.add_column_arguments(parser)
    parser.add_argument("--tag-column", type=int, default=-1,
                        help="token classification: 0-based column of the tags (default: -1, the last)")
    parser.add_argument("--tag-scheme", default="IOB2", choices=("IOB1", "IOB2", "IOBES"),
                        help="token classification: the tags' scheme, checked on every sentence")
    parser.add_argument("--init", required=True, metavar="DIR",
                        help="kbert model directory to start from (pretrain, finetune or convert)")
    parser.add_argument("--epochs", type=options.positive_int, default=3, help="epochs (default: 3)")
    parser.add_argument("--warmup-ratio", type=float, default=0.1,
                        help="share of steps in linear warmup (default: 0.1)")
    parser.add_argument("--objective", default=None,
                        choices=("cosent", "cosine_mse", "multiple_negatives_ranking"),
                        help="embedding tasks' loss (default: cosent for scored pairs, "
                        "multiple_negatives_ranking for (anchor, positive) pairs)")
    parser.add_argument("--score-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="the scores scored pairs may hold (default: 0 5, as STS)")
    parser.add_argument("--no-bucketing", action="store_true",
                        help="pad every batch to --sequence-length (fixed shapes, e.g. for TPUs)")
    parser.add_argument("--output", required=True, metavar="DIR", help="the model directory to write")
    options.add_training_arguments(parser, learning_rate=5e-5)


def run(args):
    from kbert import config, workflows

    arguments = dict(
        vars(args),
        train=args.train if args.train else args.tfds,
        label_names=args.label_names.split(",") if args.label_names else None,
        bucket=not args.no_bucketing,
        **options.column_options(args),
        **options.training_options(args),
        output_dir=args.output,
    )
    _, metrics = workflows.run_finetuning(*config.of_flags(arguments))
    print(f"Fine-tuned model saved in {args.output}")
    print(f"Next: kbert export --model {args.output} --output saved_models/NAME")
    print(json.dumps(metrics))
    return 0
