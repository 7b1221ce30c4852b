"""`kbert prepare`: tokenize and pack a corpus into a sharded dataset, on Apache Beam."""

from kbert.commands import options

HELP = "Tokenize and pack a corpus into sharded token-id sequences (Apache Beam) for kbert pretrain."


def add_arguments(parser):
    options.add_corpus_arguments(
        parser,
        input_help=".txt files or glob patterns ('corpus/*.txt', gs://...); blank lines "
                   "and '= Title =' lines separate documents",
        tfds_help="a TFDS dataset, e.g. wikipedia/20230601.en",
    )
    parser.add_argument("--sequence-length", type=options.positive_int, default=128,
                        help="tokens per sequence, [CLS] and [SEP] included (default: 128)")
    parser.add_argument("--next-sentence-prediction", action="store_true",
                        help="pack for kbert pretrain --next-sentence-prediction")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="the dataset directory to write (kbert pretrain --input DIR)")
    parser.add_argument("--num-shards", type=options.positive_int, default=None,
                        help="shards to write (default: a power of two, one per 4 MiB or so)")
    parser.add_argument("--num-workers", type=options.positive_int, default=None,
                        help="processes of the local Beam runner (default: the cores)")
    parser.add_argument("--documents-per-block", type=options.positive_int, default=None,
                        help="documents packed together, one unit of parallel work (default: 10000)")
    parser.add_argument("--beam-pipeline-options", default=None, metavar="OPTIONS",
                        help="Beam pipeline options for another runner, e.g. "
                             "\"--runner=DataflowRunner --project=P --region=R "
                             "--temp_location=gs://B/tmp\"")


def run(args):
    from kbert.cli import UsageError

    try:
        import apache_beam  # noqa: F401
    except ImportError:
        raise UsageError("kbert prepare needs Apache Beam: pip install 'kbert[beam]'") from None
    if args.beam_pipeline_options and args.num_workers:
        raise UsageError("--num-workers sets the local runner; with --beam-pipeline-options, "
                         "give the runner's own worker flags there")
    from kbert.data.prepared import DOCUMENTS_PER_BLOCK, prepare_corpus

    prepare_corpus(
        args.output,
        args.vocabulary,
        inputs=args.input,
        tfds_name=args.tfds,
        split=args.split,
        text_key=args.text_key,
        data_dir=args.data_dir,
        sequence_length=args.sequence_length,
        lowercase=args.lowercase,
        strip_accents=args.strip_accents,
        next_sentence_prediction=args.next_sentence_prediction,
        num_shards=args.num_shards,
        num_workers=args.num_workers,
        pipeline_options=args.beam_pipeline_options,
        documents_per_block=args.documents_per_block or DOCUMENTS_PER_BLOCK,
        log=lambda line: print(line, flush=True),
    )
    print(f"Next: kbert pretrain --input {args.output} --vocabulary {args.vocabulary} "
          f"--sequence-length {args.sequence_length} --steps N --output DIR")
    return 0
