"""`kbert predict`: predictions from an exported SavedModel, or from a kbert model directory.

Given a SavedModel (a version directory, or a base directory for its latest version) it runs
only the SavedModel's signatures, as TensorFlow Serving would; given a kbert model directory
it runs the Keras model with the same preprocessing, so that the two can be compared line by
line. Each input prints one JSON object: `probabilities`, `label_id`, `label` for classifiers
(`score` for regression), `mask_positions`, `token_ids`, `tokens`, `scores` for masked-LM
models, `embeddings` for embedding models.
"""

import json
import os

import numpy as np

HELP = "Predict with an exported SavedModel (as TensorFlow Serving would) or a kbert model directory."


def add_arguments(parser):
    parser.add_argument(
        "--model",
        required=True,
        metavar="PATH",
        help="a SavedModel version directory, a base directory (its latest version is used) or "
        "a kbert model directory",
    )
    parser.add_argument(
        "texts",
        nargs="*",
        metavar="TEXT",
        help="texts to predict; for text-pair models, the two texts separated by a tab",
    )
    parser.add_argument(
        "--input",
        metavar="FILE",
        help="a file of texts, one per line (two tab-separated texts for text-pair models)",
    )
    parser.add_argument(
        "--request",
        metavar="FILE",
        help='a TensorFlow Serving REST request body ({"instances": [...]}, {"inputs": ...} or '
        '{"examples": [...]}); prints the body the REST API returns (SavedModels only)',
    )
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="texts per batch")
    parser.add_argument(
        "--top-k",
        type=int,
        default=5,
        metavar="K",
        help="candidate tokens per [MASK] for a masked-LM model directory (a SavedModel has its own)",
    )


def run(args):
    from kbert.cli import UsageError

    sources = [bool(args.texts), args.input is not None, args.request is not None]
    if sum(sources) != 1:
        raise UsageError("give texts, --input FILE or --request FILE (exactly one of them)")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer, not {args.batch_size}")
    is_model_dir = os.path.isfile(os.path.join(args.model, "config.json"))

    if args.request is not None:
        if is_model_dir:
            raise UsageError(
                f"--request needs a SavedModel, and {args.model} is a kbert model directory: "
                "run kbert export first"
            )
        from kbert.serving import SavedModelServer

        body = _read_json(args.request)
        print(json.dumps(SavedModelServer(args.model).respond(body), ensure_ascii=False))
        return 0

    if args.input is not None:
        lines = _read_lines(args.input)
        origin = args.input
    else:
        lines = [os.fsencode(text) for text in args.texts]
        origin = "TEXT"
    if is_model_dir:
        predictor = _KerasPredictor(args.model, args.top_k)
    else:
        predictor = _SavedModelPredictor(args.model)
    texts, text_pairs = _split_pairs(lines, predictor.text_pair, origin)
    for start in range(0, len(texts), args.batch_size):
        batch_pairs = text_pairs[start : start + args.batch_size] if predictor.text_pair else None
        for row in predictor.predict(texts[start : start + args.batch_size], batch_pairs):
            print(json.dumps(row, ensure_ascii=False), flush=True)
    return 0


def _read_json(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Request file not found: {path}")
    with open(path, encoding="utf-8") as file:
        try:
            return json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {error.lineno}: invalid JSON ({error.msg})") from None


def _read_lines(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Input file not found: {path}")
    # Bytes, not text: the model cleans invalid UTF-8 itself, as it does for any request.
    with open(path, "rb") as file:
        lines = file.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _split_pairs(lines, text_pair, origin):
    if not text_pair:
        return lines, None
    texts, text_pairs = [], []
    for number, line in enumerate(lines, start=1):
        if b"\t" not in line:
            raise ValueError(
                f"{origin}, line {number}: expected two tab-separated texts for a text-pair model"
            )
        text, pair = line.split(b"\t", 1)
        texts.append(text)
        text_pairs.append(pair)
    return texts, text_pairs


class _SavedModelPredictor:
    """Runs the SavedModel's `serving_default` signature, nothing else."""

    def __init__(self, path):
        from kbert import tasks
        from kbert.serving import SavedModelServer
        from kbert.signatures import FILL_MASK, SERVING_DEFAULT

        self.server = SavedModelServer(path)
        self.text_pair = "text_pair" in self.server.input_names()
        # The signatures tell the task: exports carry no model directory config.
        outputs = self.server.signature_defs[SERVING_DEFAULT].outputs
        if FILL_MASK in self.server.signature_defs:
            name = "masked_lm"
        elif "num_entities" in outputs:
            name = "token_classification"
        else:
            name = "embedding" if "embeddings" in outputs else "classification"
        self.task = tasks.get(name)

    def predict(self, texts, text_pairs=None):
        from kbert.signatures import SERVING_DEFAULT

        inputs = {"text": np.array(texts, dtype=object)}
        if self.text_pair:
            inputs["text_pair"] = np.array(text_pairs, dtype=object)
        return _rows(self.task, self.server.run(SERVING_DEFAULT, inputs), len(texts))


class _KerasPredictor:
    """Runs the Keras model of a model directory through its task's serving function."""

    def __init__(self, model_dir, top_k):
        from kbert import model_dir as model_directory
        from kbert import tasks
        from kbert.export import resolve_sequence_length
        from kbert.tokenizer import BertPreprocessor, BertTokenizer

        config = model_directory.read_config(model_dir)
        self.task = tasks.from_config(config, purpose="predict with")
        self.model = model_directory.load(model_dir)
        sequence_length = resolve_sequence_length(config, self.model)
        self.preprocessor = BertPreprocessor(
            BertTokenizer.from_model_dir(model_dir), sequence_length=sequence_length
        )
        self.text_pair = self.task.reads_text_pair()
        self.top_k = top_k

    def predict(self, texts, text_pairs=None):
        inputs = {"text": texts, "text_pair": text_pairs}
        outputs = self.task.predict(
            self.model, self.preprocessor, inputs, top_k=self.top_k, text_pair=self.text_pair
        )
        return _rows(self.task, outputs, len(texts))


def _rows(task, outputs, batch_size):
    """One JSON-ready dict per input, as the task reads its outputs."""
    from kbert.serving import to_json_value

    outputs = {name: to_json_value(np.asarray(value), name) for name, value in outputs.items()}
    return task.rows(outputs, batch_size)
