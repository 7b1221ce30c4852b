"""`kbert export`: a kbert model directory as a new SavedModel version for TensorFlow Serving."""

import argparse
import os

from kbert import deployment, serving_releases

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
    parser.add_argument(
        "--serving-version",
        default=serving_releases.OLDEST_RELEASE,
        metavar="2.N",
        help="the oldest TensorFlow Serving release the export must run on; its op registry is "
        f"checked (default: {serving_releases.OLDEST_RELEASE}, the oldest supported; supported: "
        f"{', '.join(serving_releases.RELEASES)})",
    )
    parser.add_argument(
        "--keep-versions",
        type=int,
        default=1,
        metavar="N",
        help="how many of the latest versions models.config tells the server to serve (default: 1)",
    )
    parser.add_argument(
        "--serving-root",
        default=deployment.DEFAULT_SERVING_ROOT,
        metavar="PATH",
        help="where the model server sees the directory that holds --output, for models.config "
        f"(default: {deployment.DEFAULT_SERVING_ROOT}, as in the official Docker image)",
    )


def run(args):
    from kbert.cli import UsageError
    from kbert.export import INCOMPLETE_PREFIX, export
    from kbert.serving import describe_signatures

    try:
        version_dir = export(
            args.model,
            args.output,
            version=args.version,
            sequence_length=args.sequence_length,
            text_pair=args.text_pair,
            top_k=args.top_k,
            serving_version=args.serving_version,
            keep_versions=args.keep_versions,
            serving_root=args.serving_root,
        )
    except ValueError as error:
        raise UsageError(_with_flags(str(error))) from None
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
    parent = os.path.dirname(base_dir)
    docker, native = deployment.server_commands(base_dir, args.serving_root)
    print(
        f"\nServer configuration: {os.path.join(parent, deployment.MODEL_CONFIG_FILE)} (every model "
        f"in {parent}), {os.path.join(parent, deployment.BATCHING_PARAMETERS_FILE)}; warm-up "
        f"requests in {os.path.join(version_dir, deployment.WARMUP_FILE)}.\n"
        f"Serve it with TensorFlow Serving {args.serving_version} or newer:\n"
        f"  {docker}\n"
        f"or, with {parent} at {args.serving_root}:\n"
        f"  {native}\n"
        f"Try it here: kbert predict --model {args.output} \"some text\""
    )
    return 0


def _with_flags(message):
    """The library's parameter names in an error, as the flags that set them."""
    for parameter in ("serving_version", "keep_versions", "serving_root", "sequence_length", "top_k"):
        message = message.replace(f"{parameter}=", f"--{parameter.replace('_', '-')} ")
        message = message.replace(f"Expected {parameter} ", f"Expected --{parameter.replace('_', '-')} ")
    return message
