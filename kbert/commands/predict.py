"""`kbert predict`: predictions from an exported SavedModel, or from a kbert model directory.

Given a SavedModel (a version directory, or a base directory for its latest version) it runs
only the SavedModel's signatures, as TensorFlow Serving would; given a kbert model directory
it runs the Keras model with the same preprocessing, so that the two can be compared line by
line. Each input prints one JSON object: `probabilities`, `label_id`, `label` for classifiers
(`score` for regression), `mask_positions`, `token_ids`, `tokens`, `scores` for masked-LM
models.
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
        from kbert.serving import SavedModelServer

        self.server = SavedModelServer(path)
        self.text_pair = "text_pair" in self.server.input_names()

    def predict(self, texts, text_pairs=None):
        from kbert.serving import to_json_value
        from kbert.signatures import SERVING_DEFAULT

        inputs = {"text": np.array(texts, dtype=object)}
        if self.text_pair:
            inputs["text_pair"] = np.array(text_pairs, dtype=object)
        outputs = self.server.run(SERVING_DEFAULT, inputs)
        outputs = {name: to_json_value(value, name) for name, value in outputs.items()}
        return _rows(outputs, len(texts))


class _KerasPredictor:
    """Runs the Keras model of a model directory with the preprocessing of the export."""

    def __init__(self, model_dir, top_k):
        import kbert
        from kbert import model_dir as model_directory
        from kbert.export import resolve_sequence_length, task_reads_text_pair
        from kbert.tokenizer import BertPreprocessor, BertTokenizer

        config = model_directory.read_config(model_dir)
        task = config.get("task") or {}
        self.model = model_directory.load(model_dir)
        if not isinstance(self.model, (kbert.BertClassifier, kbert.BertMaskedLM)):
            raise ValueError(
                f"{model_dir} holds a {type(self.model).__name__}; kbert predict needs a "
                "classifier or a masked-LM model"
            )
        self.tokenizer = BertTokenizer.from_model_dir(model_dir)
        self.sequence_length = resolve_sequence_length(config, self.model)
        self.preprocessor = BertPreprocessor(self.tokenizer, sequence_length=self.sequence_length)
        self.masked_lm = isinstance(self.model, kbert.BertMaskedLM)
        self.text_pair = not self.masked_lm and task_reads_text_pair(task)
        num_classes = 0 if self.masked_lm else self.model.num_classes
        self.label_names = task.get("label_names") or [str(index) for index in range(num_classes)]
        self.top_k = top_k

    def predict(self, texts, text_pairs=None):
        import tensorflow as tf

        if self.masked_lm:
            return self._fill_mask(texts)
        if text_pairs is not None:
            text_pairs = tf.constant(text_pairs, tf.string, shape=[len(text_pairs)])
        inputs = self.preprocessor(tf.constant(texts, tf.string, shape=[len(texts)]), text_pairs)
        inputs = {name: np.asarray(value) for name, value in inputs.items()}
        logits = np.asarray(self.model.predict(inputs, verbose=0), dtype=np.float32)
        if self.model.num_classes == 1:
            return [{"score": float(score)} for score in logits[:, 0]]
        probabilities = _softmax(logits)
        label_ids = probabilities.argmax(axis=-1)
        return [
            {
                "label": self.label_names[label_id],
                "label_id": int(label_id),
                "probabilities": row.tolist(),
            }
            for row, label_id in zip(probabilities, label_ids)
        ]

    def _fill_mask(self, texts):
        import tensorflow as tf

        from kbert.signatures import MASK_TOKEN

        tokenizer = self.tokenizer
        pieces = [text.split(MASK_TOKEN.encode()) for text in texts]
        flat_pieces = [piece for text_pieces in pieces for piece in text_pieces]
        flat_pieces = tf.constant(flat_pieces, tf.string, shape=[len(flat_pieces)])
        piece_ids = iter(tokenizer(flat_pieces).to_list())
        batch_token_ids = []
        for text_pieces in pieces:
            token_ids = []
            for index in range(len(text_pieces)):
                token_ids += next(piece_ids)
                if index < len(text_pieces) - 1:
                    token_ids.append(tokenizer.mask_token_id)
            batch_token_ids.append(token_ids)
        batch_token_ids = tf.ragged.constant(batch_token_ids, tf.int32, ragged_rank=1)
        inputs = self.preprocessor.pack(batch_token_ids)
        inputs = {name: np.asarray(value) for name, value in inputs.items()}
        positions = [
            np.flatnonzero(row == tokenizer.mask_token_id).tolist() for row in inputs["token_ids"]
        ]
        num_masks = max((len(row) for row in positions), default=0)
        inputs["mask_positions"] = np.zeros((len(texts), num_masks), np.int32)
        for row, row_positions in enumerate(positions):
            inputs["mask_positions"][row, : len(row_positions)] = row_positions
        logits = self.model.predict(inputs, verbose=0)
        if isinstance(logits, dict):
            logits = logits["mlm"]
        probabilities = _softmax(np.asarray(logits, dtype=np.float32))  # (batch, masks, vocabulary)
        special_token_ids = [
            tokenizer.pad_token_id,
            tokenizer.cls_token_id,
            tokenizer.sep_token_id,
            tokenizer.mask_token_id,
        ]
        probabilities[..., special_token_ids] = 0.0
        top_k = min(self.top_k, probabilities.shape[-1] - len(special_token_ids))
        rows = []
        for row, row_positions in enumerate(positions):
            row_probabilities = probabilities[row, : len(row_positions)]  # (masks, vocabulary)
            candidates = np.argsort(-row_probabilities, axis=-1, kind="stable")[:, :top_k]
            rows.append(
                {
                    "mask_positions": row_positions,
                    "scores": np.take_along_axis(row_probabilities, candidates, axis=-1).tolist(),
                    "token_ids": candidates.tolist(),
                    "tokens": [[tokenizer.id_to_token(int(i)) for i in ids] for ids in candidates],
                }
            )
        return rows


def _rows(outputs, batch_size):
    """Splits batched outputs into one dict per input; fill_mask rows lose their padded masks."""
    rows = []
    for index in range(batch_size):
        row = {name: value[index] for name, value in sorted(outputs.items())}
        if "mask_positions" in row:
            kept = [slot for slot, position in enumerate(row["mask_positions"]) if position >= 0]
            row = {name: [value[slot] for slot in kept] for name, value in row.items()}
        rows.append(row)
    return rows


def _softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
