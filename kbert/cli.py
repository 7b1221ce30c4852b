"""The `kbert` command.

Each subcommand lives in `kbert/commands/<name>.py`, which defines `HELP` (one line),
`add_arguments(parser)` and `run(args)`; this module only dispatches. User mistakes raise
`UsageError` (or `ValueError` / `OSError`, such as a missing file or a full disk, from the
library) and are printed as one line without a traceback, with exit code 2.
"""

import argparse
import importlib
import os
import sys

# Subcommands in the order `kbert --help` lists them.
COMMANDS = (
    "vocab",
    "prepare",
    "pretrain",
    "finetune",
    "evaluate",
    "convert",
    "export",
    "predict",
    "embed",
    "search",
    "quickstart",
)


class UsageError(Exception):
    """A mistake in what the user asked for: printed as one line, exit code 2."""


def _available_commands():
    commands = {}
    for name in COMMANDS:
        module_name = f"kbert.commands.{name}"
        if importlib.util.find_spec(module_name) is not None:
            commands[name] = module_name
    return commands


def build_parser():
    from kbert.commands import options

    parser = argparse.ArgumentParser(
        prog="kbert",
        description="Build, pretrain, fine-tune, evaluate and export BERT models with Keras 3.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in _available_commands().items():
        module = importlib.import_module(module_name)
        subparser = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(subparser)
        subparser.set_defaults(
            run=module.run, flags_of_parameters=options.flags_of_parameters(subparser)
        )
    return parser


def main(argv=None):
    from kbert.commands import options

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except (UsageError, ValueError, OSError) as error:
        message = options.with_flag_names(str(error), args.flags_of_parameters)
        print(f"kbert {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kbert {args.command}: interrupted", file=sys.stderr)
        return 130
    return result or 0


if __name__ == "__main__":
    sys.exit(main())
