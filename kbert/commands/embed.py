"""`kbert embed`: one embedding per line of a text file, saved as a NumPy array for an index.

Row i of the output is the embedding of line i + 1 of the input (empty lines included, so
rows and lines stay aligned). The model is a kbert model directory of an embedding model or
its export (a SavedModel, run by its `serving_default` signature as TF Serving would).
"""

import os
import sys

HELP = "Embed the lines of a text file with an embedding model; writes a .npy array."


def add_arguments(parser):
    add_model_arguments(parser)
    parser.add_argument("--input", required=True, metavar="FILE", help="texts, one per line")
    parser.add_argument("--output", required=True, metavar="FILE",
                        help="the .npy file to write: float32 [lines, hidden]")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def add_model_arguments(parser):
    """`--model` and `--batch-size`, as `kbert embed` and `kbert search` share them."""
    from kbert.commands import options

    parser.add_argument("--model", required=True, metavar="PATH",
                        help="an embedding model directory, or its SavedModel (version or base directory)")
    parser.add_argument("--batch-size", type=options.positive_int, default=64, metavar="N",
                        help="texts per batch (default: 64)")


def read_texts(path):
    """The lines of `path` (bytes), refusing an empty file with its name and line."""
    from kbert.commands.predict import _read_lines

    texts = _read_lines(path)
    if not texts:
        raise ValueError(f"{path}, line 1: expected a text per line, found an empty file")
    return texts


def run(args):
    import numpy as np

    from kbert import files
    from kbert.cli import UsageError
    from kbert.retrieval import TextEncoder

    if not args.output.endswith(".npy"):
        raise UsageError(f"--output must name a .npy file, not {args.output}")
    texts = read_texts(args.input)
    encoder = TextEncoder(args.model)
    embeddings = encoder.embed_all(texts, args.batch_size, progress=None if args.quiet else print_progress)
    with files.atomic_path(args.output, expected_size=embeddings.nbytes + 4096) as temporary:
        np.save(temporary, embeddings)
    print(f"Wrote {args.output}: {embeddings.shape[0]} embeddings of {embeddings.shape[1]} dimensions")
    return 0


def print_progress(done, total):
    """A progress line on stderr, rewritten in place; stdout stays for results."""
    end = "\n" if done == total else ""
    print(f"\rembedded {done:,}/{total:,} texts ({100 * done / total:.0f}%)", end=end, file=sys.stderr,
          flush=True)
