"""`kbert pretrain`: pretrain a BERT masked LM on your own text."""

from kbert.commands import options

HELP = "Pretrain a BERT masked LM from scratch on .txt files or a TFDS dataset."


def add_arguments(parser):
    options.add_corpus_arguments(
        parser,
        input_help=".txt files (blank lines and '= Title =' lines separate documents), "
                   "or the directory kbert prepare wrote",
        tfds_help="a TFDS dataset, e.g. wikipedia/20230601.en, or a prepared one",
        split_dest="train_split",
    )
    parser.add_argument("--size", default="mini",
                        help="tiny, mini, small, medium, base, large or L{layers}_H{hidden} (default: mini)")
    parser.add_argument("--steps", dest="num_train_steps", type=options.positive_int, required=True,
                        help="training steps")
    parser.add_argument("--steps-per-epoch", type=options.positive_int, default=None,
                        help="steps between logs, validation and backups (default: min(steps, 500))")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="linear warmup steps (default: 10%% of --steps)")
    parser.add_argument("--num-predictions", type=options.positive_int, default=None,
                        help="masked positions per sequence (default: 15%% of --sequence-length)")
    parser.add_argument("--whole-word-masking", action="store_true",
                        help="mask all WordPieces of a word together")
    parser.add_argument("--next-sentence-prediction", action="store_true",
                        help="add BERT's next-sentence-prediction task")
    parser.add_argument("--validation", nargs="+", metavar="FILE", default=None,
                        help="held-out .txt files scored at each epoch end")
    parser.add_argument("--validation-split", default=None, metavar="SPLIT",
                        help="split of --validation to score, or without --validation a split of "
                             "the input held out from training, e.g. --split 'train[:90%%]' "
                             "--validation-split 'train[90%%:]'")
    parser.add_argument("--output", required=True, metavar="DIR", help="the model directory to write")
    options.add_training_arguments(parser, learning_rate=1e-4)


def run(args):
    from kbert import config, workflows
    from kbert.cli import UsageError

    if args.validation is None and args.validation_split == args.train_split:
        raise UsageError(
            f"--validation-split {args.validation_split} is the training split; hold out "
            f"another one, e.g. --split 'train[:90%]' --validation-split 'train[90%:]'"
        )
    arguments = dict(
        vars(args),
        train=args.input if args.input else args.tfds,
        output_dir=args.output,
        **options.training_options(args),
    )
    workflows.run_pretraining(*config.of_flags(arguments))
    print(f"Pretrained model saved in {args.output}")
    print(f"Next: kbert finetune --task sst2 --train TRAIN.tsv --validation DEV.tsv "
          f"--init {args.output} --output DIR")
    return 0
