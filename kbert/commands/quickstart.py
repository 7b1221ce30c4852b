"""`kbert quickstart`: vocabulary, pretraining, fine-tuning and evaluation in one go."""

from kbert.commands import options

HELP = ("Learn a vocabulary, pretrain a small BERT, fine-tune and evaluate it "
        "(TFDS data by default; --corpus/--train/--validation files run offline).")


def add_arguments(parser):
    parser.add_argument("--corpus", nargs="+", metavar="FILE", default=None,
                        help=".txt files to pretrain on (default: TFDS imdb_reviews)")
    parser.add_argument("--train", metavar="FILE", default=None,
                        help="labeled training TSV/CSV (default: TFDS glue/sst2)")
    parser.add_argument("--validation", metavar="FILE", default=None,
                        help="labeled validation TSV/CSV (needed with --train)")
    parser.add_argument("--task", default=None,
                        help="GLUE task of --train/--validation (default: sst2 for TFDS; "
                        "for files: columns 'sentence' and 'label')")
    parser.add_argument("--output", default="runs/quickstart", metavar="DIR",
                        help="where everything lands (default: runs/quickstart)")
    parser.add_argument("--size", default="tiny", help="model size (default: tiny)")
    parser.add_argument("--vocabulary-size", type=options.positive_int, default=8192,
                        help="WordPiece vocabulary size (default: 8192)")
    parser.add_argument("--pretrain-steps", type=options.positive_int, default=1500,
                        help="pretraining steps (default: 1500)")
    parser.add_argument("--epochs", type=options.positive_int, default=1, help="fine-tuning epochs (default: 1)")
    parser.add_argument("--batch-size", type=options.positive_int, default=32, help="batch size (default: 32)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory")
    parser.add_argument("--quiet", action="store_true", help="one line per epoch, no progress bar")


def run(args):
    from kbert import workflows

    workflows.quickstart(
        output_dir=args.output,
        corpus=args.corpus,
        train=args.train,
        validation=args.validation,
        task=args.task,
        size=args.size,
        vocabulary_size=args.vocabulary_size,
        pretrain_steps=args.pretrain_steps,
        finetune_epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        data_dir=args.data_dir,
        verbose=2 if args.quiet else "auto",
    )
    return 0
