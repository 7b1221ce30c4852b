"""`kbert convert`: import a pretrained checkpoint into a kbert model directory, or export one."""

import argparse
import os

HELP = (
    "Convert Hugging Face, Google TF or keras-hub BERT checkpoints to and from kbert model "
    "directories."
)

FORMATS = ("huggingface", "google", "keras-hub")


def add_arguments(parser):
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument(
        "--from",
        dest="from_format",
        choices=FORMATS,
        help="import PATH, a checkpoint in this format, into a kbert model directory",
    )
    direction.add_argument(
        "--to",
        dest="to_format",
        choices=FORMATS,
        help="export PATH, a kbert model directory, into this format",
    )
    parser.add_argument(
        "path", metavar="PATH", help="the checkpoint (--from) or kbert model directory (--to)"
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="the directory to write")
    parser.add_argument(
        "--overwrite", action="store_true", help="write into DIR even if it is not empty"
    )
    parser.add_argument(
        "--allow-pytorch-bin",
        action="store_true",
        help="read a Hugging Face pytorch_model.bin (a pickle) when there is no model.safetensors",
    )
    parser.add_argument(
        "--lowercase",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="override the tokenizer casing (default: as the checkpoint's tokenizer config "
        "says, else detected from the vocabulary)",
    )


def run(args):
    from kbert import convert

    if args.from_format:
        if args.from_format != "huggingface" and args.allow_pytorch_bin:
            raise ValueError("--allow-pytorch-bin applies only to --from huggingface")
        kwargs = {"lowercase": args.lowercase, "overwrite": args.overwrite}
        if args.from_format == "huggingface":
            kwargs["allow_pytorch_bin"] = args.allow_pytorch_bin
        function = {
            "huggingface": convert.from_huggingface,
            "google": convert.from_google,
            "keras-hub": convert.from_keras_hub,
        }[args.from_format]
        conversion = function(args.path, args.output, **kwargs)
        model = conversion.model
        backbone = getattr(model, "backbone", model)
        casing = "uncased" if conversion.tokenizer["lowercase"] else "cased"
        print(
            f"Wrote {args.output}: {type(model).__name__}, {backbone.num_layers} layers, "
            f"hidden size {backbone.hidden_dim}, {len(conversion.vocabulary)} tokens ({casing})"
        )
        return 0

    if args.allow_pytorch_bin or args.lowercase is not None:
        raise ValueError("--allow-pytorch-bin and --lowercase apply only to --from")
    function = {
        "huggingface": convert.to_huggingface,
        "google": convert.to_google,
        "keras-hub": convert.to_keras_hub,
    }[args.to_format]
    function(args.path, args.output, overwrite=args.overwrite)
    print(f"Wrote {os.path.abspath(args.output)} ({args.to_format} format)")
    return 0
