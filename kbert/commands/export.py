"""`kbert export`: a kbert model directory as a new SavedModel version for TensorFlow Serving."""

import argparse
import os

HELP = "Export a classifier or masked-LM model directory as a versioned SavedModel for TensorFlow Serving."


def add_arguments(parser):
    parser.add_argument("--model", required=True, metavar="DIR", help="the kbert model directory")
    parser.add_argument(
        "--output",
        required=True,
        metavar="DIR",
        help="the model's base directory, e.g. saved_models/sst2; the export becomes its next "
        "numeric version",
    )
    parser.add_argument(
        "--version",
        type=int,
        metavar="N",
        help="the version to write instead of the next free one; an existing version is an error",
    )
    parser.add_argument(
        "--sequence-length",
        type=int,
        metavar="N",
        help="tokens per sequence; longer text is truncated (default: the model directory's "
        "setting, else 128)",
    )
    parser.add_argument(
        "--text-pair",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="whether the raw-text signatures take a text_pair input (default: from the model "
        "directory's task)",
    )
    parser.add_argument(
        "--top-k", type=int, default=5, metavar="K", help="candidate tokens per [MASK] in fill_mask"
    )


def run(args):
    from kbert.export import INCOMPLETE_PREFIX, export
    from kbert.serving import describe_signatures

    version_dir = export(
        args.model,
        args.output,
        version=args.version,
        sequence_length=args.sequence_length,
        text_pair=args.text_pair,
        top_k=args.top_k,
    )
    print(f"Exported {args.model} to {version_dir}")
    print(describe_signatures(version_dir))
    base_dir = os.path.abspath(args.output)
    unfinished = sorted(name for name in os.listdir(base_dir) if name.startswith(INCOMPLETE_PREFIX))
    if unfinished:
        print(
            f"Note: {base_dir} holds unfinished exports of running processes or of other "
            f"hosts, which model servers ignore; remove them once no export runs: "
            f"{', '.join(unfinished)}"
        )
    name = os.path.basename(base_dir.rstrip(os.sep))
    print(
        "\nServe it with TensorFlow Serving:\n"
        f"  docker run -p 8501:8501 -v {os.path.dirname(base_dir)}:/models "
        f"-e MODEL_NAME={name} tensorflow/serving\n"
        f"Try it here: kbert predict --model {args.output} \"some text\""
    )
    return 0
