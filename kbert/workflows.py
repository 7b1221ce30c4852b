"""The jobs behind the `kbert` command: pretrain, fine-tune, evaluate, quickstart.

Each job is a function a script or a test can call with the same arguments as the command
line; the `kbert` subcommands only parse flags and call these. Every run writes a kbert
model directory (see `kbert.model_dir`) plus its training logs into `output_dir`.
"""

import contextlib
import json
import math
import os
import sys
import warnings

import keras

from kbert import files, model_dir

PRETRAINING_TASK = "masked_lm"


def pretrain(
    output_dir,
    vocabulary,
    source,
    num_train_steps,
    size="mini",
    lowercase=True,
    strip_accents=None,
    sequence_length=128,
    batch_size=32,
    num_predictions=None,
    whole_word_masking=False,
    next_sentence_prediction=False,
    validation=None,
    validation_split=None,
    validation_steps=20,
    steps_per_epoch=None,
    split="train",
    text_key="text",
    data_dir=None,
    optimizer="adamw",
    learning_rate=1e-4,
    warmup_steps=None,
    weight_decay=0.01,
    gradient_accumulation_steps=None,
    dropout=0.1,
    precision="float32",
    strategy="auto",
    jit_compile="auto",
    backup_every=None,
    seed=0,
    distribution_options=None,
    verbose="auto",
):
    """Pretrains a `BertMaskedLM` from scratch on `source` and saves it in `output_dir`.

    Args:
        output_dir: the model directory to write (resumes a killed run found there).
        vocabulary: the `vocab.txt` to tokenize with (see `kbert vocab`).
        source: `.txt` file(s) or a TFDS dataset name.
        num_train_steps: training steps (batches).
        size: a named size, `tiny` ... `large` or `L{layers}_H{hidden}`.
        validation: held-out `.txt` file(s) (or a TFDS name) scored at the end of each epoch.
        validation_split: the split of `validation` to score, or, without `validation`, a
            split of `source` held out from training, e.g. `split="train[:90%]"` with
            `validation_split="train[90%:]"` (TFDS slicing; documents, not tokens).
        steps_per_epoch: steps between logging, validation and plots (default:
            `min(num_train_steps, 500)`).
        warmup_steps: linear warmup steps (default: 10% of `num_train_steps`).
        distribution_options: more arguments of `kbert.distribution.make_distribution`
            (coordinator address, process count and id, model parallelism).
        Others: as in `kbert.data.pretraining_dataset`, `kbert.training.make_optimizer`.

    Returns:
        The run's history (a dict of lists).
    """
    from kbert import distribution as distribution_lib
    from kbert import training
    from kbert.backbone import BertBackbone
    from kbert.data import pretraining_dataset
    from kbert.masked_lm import BertMaskedLM
    from kbert.tokenizer import BertTokenizer

    _check_positive("num_train_steps", num_train_steps)
    _check_positive("batch_size", batch_size)
    tokenizer = BertTokenizer(vocabulary, lowercase=lowercase, strip_accents=strip_accents)
    training.set_precision(precision)
    distribution = distribution_lib.make_distribution(strategy, **(distribution_options or {}))
    keras.utils.set_random_seed(seed)
    steps_per_epoch = steps_per_epoch or min(num_train_steps, 500)
    warmup_steps = int(0.1 * num_train_steps) if warmup_steps is None else warmup_steps
    data_options = dict(
        tokenizer=tokenizer,
        batch_size=batch_size,
        sequence_length=sequence_length,
        num_predictions=num_predictions,
        whole_word_masking=whole_word_masking,
        next_sentence_prediction=next_sentence_prediction,
        text_key=text_key,
        data_dir=data_dir,
    )

    def train_data(input_context=None):
        return pretraining_dataset(
            source, split=split, seed=seed, input_context=input_context, **data_options
        )

    if validation is None and validation_split is not None:
        validation = source
        if validation_split == split:
            raise ValueError(
                f"--validation-split {validation_split} is the training split; hold out "
                f"another one, e.g. --split 'train[:90%]' --validation-split 'train[90%:]'"
            )
    if validation is not None and validation_split is None:
        validation_split = "train"

    def validation_data(input_context=None):
        # A fixed seed: every evaluation masks the same positions, so epochs compare.
        return pretraining_dataset(
            validation, split=validation_split, shuffle=False, seed=1234,
            input_context=input_context, **data_options
        ).take(validation_steps)

    # Built once here, eagerly, so that bad input (a missing file, an empty corpus) stops the
    # run with its own message before any model is built; training builds the pipelines
    # again inside tf.data, where errors would surface wrapped in tracing errors.
    train_data()
    if validation:
        validation_data()
    with distribution.scope():
        backbone = BertBackbone.from_size(
            size,
            vocabulary_size=tokenizer.vocabulary_size,
            max_sequence_length=max(512, sequence_length),
            dropout=dropout,
        )
        model = BertMaskedLM(backbone, next_sentence_prediction=next_sentence_prediction)
        _refuse_other_model(output_dir, model)
        _compile(
            model,
            jit_compile=jit_compile,
            name=optimizer,
            learning_rate=learning_rate,
            num_train_steps=num_train_steps,
            warmup_steps=warmup_steps,
            weight_decay=weight_decay,
            gradient_accumulation_steps=gradient_accumulation_steps,
            precision=precision,
        )
    tokenizer_settings = dict(tokenizer.get_config(), sequence_length=sequence_length)
    with _without_misleading_warnings():
        history = training.fit(
            model,
            train_data,
            output_dir,
            num_train_steps=num_train_steps,
            steps_per_epoch=steps_per_epoch,
            validation_data=validation_data if validation else None,
            distribution=distribution,
            backup_every=backup_every,
            run_config=dict(
                job="pretrain",
                model=model_dir.architecture(model),
                tokenizer=tokenizer_settings,
                source=_describe(source),
                batch_size=batch_size,
                learning_rate=learning_rate,
                seed=seed,
            ),
            verbose=verbose,
        )
    if distribution.is_chief:
        model_dir.save(
            model,
            output_dir,
            vocabulary,
            tokenizer=tokenizer_settings,
            task={"name": PRETRAINING_TASK, "metric": "masked_lm"},
        )
    return history


def finetune(
    output_dir,
    init,
    train,
    validation=None,
    task=None,
    text_columns=None,
    label_column=None,
    label_names=None,
    regression=False,
    header=None,
    delimiter=None,
    train_split="train",
    validation_split="validation",
    data_dir=None,
    epochs=3,
    batch_size=32,
    sequence_length=128,
    bucket=True,
    optimizer="adamw",
    learning_rate=5e-5,
    warmup_ratio=0.1,
    weight_decay=0.01,
    gradient_accumulation_steps=None,
    dropout=0.1,
    precision="float32",
    strategy="auto",
    jit_compile="auto",
    backup_every=None,
    seed=0,
    distribution_options=None,
    verbose="auto",
):
    """Fine-tunes the backbone of model directory `init` as a classifier.

    Args:
        output_dir: the model directory to write.
        init: a kbert model directory (from `pretrain`, `finetune` or `convert`); its
            backbone, vocabulary and tokenizer settings are used, its heads are not.
        train: a TSV/CSV file, a GLUE directory (with `task`) or a TFDS name (`glue/sst2`).
        validation: the same for the validation data; for a TFDS name, `validation_split`
            of `train` is used when `validation` is not given.
        task: a GLUE task name: fills in columns, label names and the metric.
        bucket: pad each batch to a few bucket lengths rather than `sequence_length`.
        warmup_ratio: share of the training steps spent in linear warmup.
        Others: as in `kbert.data.load_labeled_texts` and `kbert.training.make_optimizer`.

    Returns:
        `(history, metrics)`: the run's history and the final validation metrics (or `{}`).
    """
    from kbert import distribution as distribution_lib
    from kbert import training
    from kbert.classifier import BertClassifier
    from kbert.data import classification_dataset, load_labeled_texts
    from kbert.data.sources import is_local
    from kbert.tokenizer import BertPreprocessor, BertTokenizer

    _check_positive("epochs", epochs)
    _check_positive("batch_size", batch_size)
    _check_positive("sequence_length", sequence_length)
    model_dir.read_config(init)  # a bad --init stops here, before the data is read
    source_options = dict(
        task=task,
        text_columns=text_columns,
        label_column=label_column,
        label_names=label_names,
        regression=regression,
        header=header,
        delimiter=delimiter,
        data_dir=data_dir,
    )
    training_texts = load_labeled_texts(train, split=train_split, **source_options)
    if validation is None and not is_local(train):
        validation, validation_split = train, validation_split
    # Validation labels must mean what training labels mean.
    source_options["label_names"] = training_texts.label_names
    num_classes = training_texts.num_classes
    glue = training_texts.task
    metric = glue.metric if glue else ("pearson_spearman" if num_classes == 1 else "accuracy")

    training.set_precision(precision)
    distribution = distribution_lib.make_distribution(strategy, **(distribution_options or {}))
    keras.utils.set_random_seed(seed)
    tokenizer = BertTokenizer.from_model_dir(init)
    with distribution.scope():
        backbone = _load_backbone(init, dropout)
        if sequence_length > backbone.max_sequence_length:
            raise ValueError(
                f"Expected sequence_length to be at most {backbone.max_sequence_length}, the "
                f"longest the model in {init} takes (its max_sequence_length). "
                f"Received: sequence_length={sequence_length}"
            )
        model = BertClassifier(backbone, num_classes=num_classes, dropout=dropout)
        _refuse_other_model(output_dir, model)
        preprocessor = BertPreprocessor(tokenizer, sequence_length=sequence_length)
        steps_per_epoch = math.ceil((training_texts.num_examples or 0) / batch_size) or None
        if steps_per_epoch is None:
            raise ValueError(f"Could not count the training examples of {train}")
        num_train_steps = epochs * steps_per_epoch
        _compile(
            model,
            metric=metric,
            jit_compile=jit_compile,
            name=optimizer,
            learning_rate=learning_rate,
            num_train_steps=num_train_steps,
            warmup_steps=int(warmup_ratio * num_train_steps),
            weight_decay=weight_decay,
            gradient_accumulation_steps=gradient_accumulation_steps,
            precision=precision,
        )
    bucket_boundaries = "auto" if bucket else None

    def train_data(input_context=None):
        return classification_dataset(
            train, preprocessor, batch_size, split=train_split, seed=seed,
            bucket_boundaries=bucket_boundaries, input_context=input_context, **source_options,
        )

    def validation_data(input_context=None):
        return classification_dataset(
            validation, preprocessor, batch_size, split=validation_split, shuffle=False,
            bucket_boundaries=bucket_boundaries, input_context=input_context, **source_options,
        )

    if validation is not None:
        validation_data()  # eagerly, as in `pretrain`: bad validation input stops here
    tokenizer_settings = dict(tokenizer.get_config(), sequence_length=sequence_length)
    task_settings = {
        "name": glue.name if glue else "classification",
        "label_names": list(training_texts.label_names) if training_texts.label_names else None,
        "num_classes": num_classes,
        "metric": metric,
        "text_columns": (
            list(text_columns) if text_columns else list(glue.text_columns) if glue else None
        ),
        "label_column": label_column,
        "text_pair": training_texts.has_text_pair,
    }
    with _without_misleading_warnings():
        history = training.fit(
            model,
            train_data,
            output_dir,
            num_train_steps=num_train_steps,
            steps_per_epoch=steps_per_epoch,
            validation_data=validation_data if validation is not None else None,
            distribution=distribution,
            backup_every=backup_every,
            run_config=dict(
                job="finetune",
                init=os.path.abspath(init),
                model=model_dir.architecture(model),
                tokenizer=tokenizer_settings,
                task=task_settings,
                train=_describe(train),
                batch_size=batch_size,
                learning_rate=learning_rate,
                seed=seed,
            ),
            verbose=verbose,
        )
    metrics = {}
    if validation is not None:
        with _without_misleading_warnings():
            metrics = _round(model.evaluate(validation_data(), return_dict=True, verbose=0))
    if distribution.is_chief:
        model_dir.save(
            model,
            output_dir,
            model_dir.vocabulary_path(init),
            tokenizer=tokenizer_settings,
            task=task_settings,
        )
        if metrics:
            files.write_json(os.path.join(output_dir, "metrics.json"), metrics)
    return history, metrics


def evaluate(
    directory,
    data,
    task=None,
    text_columns=None,
    label_column=None,
    header=None,
    delimiter=None,
    split=None,
    data_dir=None,
    batch_size=32,
    steps=None,
):
    """Scores the model in `directory` on `data`; returns the metrics as a dict.

    A classifier is scored with its task's metric (accuracy, F1, Matthews correlation,
    Pearson/Spearman), reading `data` with the columns it was trained on unless others are
    given. A masked LM is scored on held-out text (`.txt` files) with masked-LM loss and
    accuracy, next to the accuracy of the best constant guess (the most frequent masked
    token), the unigram baseline.

    `split` is the split of `data` to read: by default "validation" for a classifier's TFDS
    data and "train" (all of the text) for a masked LM's `.txt` files, where a slice such as
    "train[90%:]" scores documents held out with `pretrain(..., validation_split=...)`.
    """
    from kbert.data import classification_dataset, pretraining_dataset
    from kbert.tokenizer import BertPreprocessor, BertTokenizer

    _check_positive("batch_size", batch_size)
    if steps is not None:
        # None means every batch; 0 would score nothing.
        _check_positive("steps", steps)
    config = model_dir.read_config(directory)
    saved_task = config.get("task") or {}
    model = model_dir.load(directory)
    tokenizer = BertTokenizer.from_model_dir(directory)
    sequence_length = config["tokenizer"].get("sequence_length", 128)
    class_name = config["model"]["class_name"]
    if class_name == "BertMaskedLM":
        if model.next_sentence_prediction:
            raise ValueError(
                f"{directory} holds a masked LM with a next-sentence head; evaluate scores "
                "masked LMs without one"
            )
        dataset = pretraining_dataset(
            data, tokenizer, batch_size, split=split or "train", data_dir=data_dir,
            sequence_length=sequence_length, shuffle=False,
            seed=1234, num_predictions=model.input["mask_positions"].shape[1], cache=False,
        )
        if steps is not None:
            dataset = dataset.take(steps)
        _compile(model)
        with _without_misleading_warnings():
            metrics = model.evaluate(dataset, return_dict=True, verbose=0)
        metrics["unigram_baseline_accuracy"] = _most_frequent_target_share(dataset)
        return _round(metrics)
    if class_name != "BertClassifier":
        raise ValueError(f"{directory} holds a {class_name}, which has no task to evaluate")
    source_options = dict(
        task=task or (saved_task.get("name") if saved_task.get("name") != "classification" else None),
        text_columns=text_columns or saved_task.get("text_columns"),
        label_column=label_column if label_column is not None else saved_task.get("label_column"),
        label_names=saved_task.get("label_names"),
        regression=saved_task.get("num_classes") == 1,
        header=header,
        delimiter=delimiter,
        data_dir=data_dir,
    )
    preprocessor = BertPreprocessor(tokenizer, sequence_length=sequence_length)
    dataset = classification_dataset(
        data, preprocessor, batch_size, split=split or "validation", shuffle=False,
        **source_options
    )
    if steps is not None:
        dataset = dataset.take(steps)
    _compile(model, metric=saved_task.get("metric", "accuracy"))
    with _without_misleading_warnings():
        return _round(model.evaluate(dataset, return_dict=True, verbose=0))


def quickstart(
    output_dir="runs/quickstart",
    corpus=None,
    train=None,
    validation=None,
    task=None,
    size="tiny",
    vocabulary_size=8192,
    pretrain_steps=1500,
    finetune_epochs=1,
    sequence_length=128,
    batch_size=32,
    seed=0,
    data_dir=None,
    verbose="auto",
):
    """Learns a vocabulary, pretrains a small BERT, fine-tunes and evaluates it.

    With no data given it uses TFDS datasets (`imdb_reviews` text to pretrain, `glue/sst2`
    to fine-tune), which the machine must be able to download; `corpus`, `train` and
    `validation` files run it offline.

    Returns:
        The validation metrics of the fine-tuned model.
    """
    from kbert.data import load_documents
    from kbert.tokenizer import train_vocabulary, write_vocabulary

    if corpus is None:
        corpus, corpus_split, text_key = "imdb_reviews", "unsupervised", "text"
    else:
        corpus_split, text_key = "train", "text"
    if train is None:
        train, task = "glue/sst2", task or "sst2"
    elif validation is None:
        raise ValueError("--validation is needed with --train (a file of held-out examples)")
    pretrained_dir = os.path.join(output_dir, "pretrained")
    finetuned_dir = os.path.join(output_dir, "finetuned")
    vocabulary_path = os.path.join(output_dir, "vocab.txt")
    os.makedirs(output_dir, exist_ok=True)

    _step(1, "learning a WordPiece vocabulary", vocabulary_path)
    if not os.path.isfile(vocabulary_path):
        documents = load_documents(corpus, split=corpus_split, text_key=text_key, data_dir=data_dir)
        write_vocabulary(train_vocabulary(documents, vocabulary_size), vocabulary_path)
    _step(2, f"pretraining a {size} BERT for {pretrain_steps} steps", pretrained_dir)
    # A run this short underfits: a larger learning rate and no dropout, as in
    # recipes/pretrain_wikitext2_mini.sh; fine-tuning puts dropout back.
    pretrain(
        pretrained_dir, vocabulary_path, corpus, pretrain_steps, size=size,
        sequence_length=sequence_length, batch_size=batch_size, split=corpus_split,
        text_key=text_key, learning_rate=5e-4, dropout=0.0, seed=seed, data_dir=data_dir,
        verbose=verbose,
    )
    _step(3, f"fine-tuning on {train}", finetuned_dir)
    _, metrics = finetune(
        finetuned_dir, pretrained_dir, train, validation, task=task, epochs=finetune_epochs,
        batch_size=batch_size, sequence_length=sequence_length, learning_rate=1e-4, seed=seed,
        data_dir=data_dir, verbose=verbose,
    )
    print(
        f"\nDone. The fine-tuned model is in {finetuned_dir} (validation: {json.dumps(metrics)}).\n"
        "Next:\n"
        f"  kbert export --model {finetuned_dir} --output saved_models/quickstart\n"
        "  kbert predict --model saved_models/quickstart \"a gripping, beautifully acted film\"\n"
        f"  kbert evaluate --model {finetuned_dir} --data YOUR_TEST_FILE",
        flush=True,
    )
    return metrics


# === Helpers ===


@contextlib.contextmanager
def _without_misleading_warnings():
    """Silences two Keras warnings that are false alarms in these jobs.

    Keras warns "Your input ran out of data" at the end of every pass over a dataset of
    unknown length; training data repeats, so here it only ever means that a validation
    set was read to its end. A masked LM without the next-sentence head does not use the
    backbone's pooler, so its variables have no gradients, as intended.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        warnings.filterwarnings(
            "ignore", message=r"Gradients do not exist for variables \['pooled_dense"
        )
        yield


def _compile(model, metric=None, jit_compile="auto", **optimizer_options):
    """Compiles `model` with the loss and metrics of its task.

    A masked LM gets masked-LM loss and weighted accuracy (and next-sentence accuracy with an
    NSP head), a classifier cross-entropy (mean squared error for regression) and `metric`,
    its task's GLUE metric. `optimizer_options` go to `kbert.training.make_optimizer`; without
    them the model is compiled for evaluation only.
    """
    from kbert import training
    from kbert.masked_lm import BertMaskedLM
    from kbert.metrics import masked_lm_metrics, metrics_for

    if isinstance(model, BertMaskedLM):
        # "auto": BertMaskedLM's own loss (kbert.losses), per head when it has two.
        losses = dict(loss="auto", weighted_metrics=masked_lm_metrics())
        if model.next_sentence_prediction:
            losses = dict(
                loss="auto",
                weighted_metrics={
                    "mlm": losses["weighted_metrics"],
                    "nsp": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                },
            )
    else:
        regression = model.num_classes == 1
        losses = dict(
            loss=keras.losses.MeanSquaredError()
            if regression
            else keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=metrics_for(metric or "accuracy", model.num_classes),
        )
    if optimizer_options:
        losses["optimizer"] = training.make_optimizer(**optimizer_options)
    model.compile(jit_compile=jit_compile, **losses)


def _load_backbone(directory, dropout):
    """The backbone of model directory `directory`, with `dropout` in all of its layers.

    Fine-tuning sets its own dropout, as BERT's `hidden_dropout_prob` does, whatever rate the
    checkpoint was pretrained with (often none, for short pretraining runs).
    """
    from kbert.backbone import BertBackbone

    model = model_dir.load(directory)
    backbone = getattr(model, "backbone", model)
    unused = [layer.name for layer in model.layers if layer is not backbone and layer.weights]
    if unused:
        print(
            f"Not used from {directory}: {', '.join(unused)} (only the backbone is fine-tuned)",
            file=sys.stderr,
            flush=True,
        )
    if backbone.dropout != dropout:
        rebuilt = BertBackbone.from_config(dict(backbone.get_config(), dropout=dropout))
        rebuilt.set_weights(backbone.get_weights())
        backbone = rebuilt
    return backbone


def _refuse_other_model(output_dir, model):
    """Stops before training over a model directory that holds a different model."""
    if not os.path.isfile(os.path.join(output_dir, model_dir.CONFIG_FILE)):
        return
    existing = model_dir.read_config(output_dir)["model"]
    if existing != model_dir.architecture(model):
        raise FileExistsError(
            f"--output {output_dir} already holds a different model "
            f"({existing.get('class_name')}); choose another output directory"
        )


def _most_frequent_target_share(dataset):
    import numpy as np

    counts = {}
    total = 0.0
    for _, mask_ids, mask_weights in dataset.as_numpy_iterator():
        for token_id, weight in zip(mask_ids.ravel(), mask_weights.ravel()):
            if weight > 0:
                counts[token_id] = counts.get(token_id, 0.0) + weight
                total += weight
    return float(max(counts.values()) / total) if total else float(np.nan)


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Expected {name} to be a positive integer. Received: {name}={value!r}")


def _describe(source):
    if isinstance(source, (list, tuple)):
        return [os.path.abspath(str(item)) for item in source]
    if isinstance(source, str) and os.path.exists(source):
        return os.path.abspath(source)
    return str(source)


def _round(metrics):
    return {key: round(float(value), 6) for key, value in metrics.items()}


def _step(number, what, where):
    print(f"\n[{number}/3] {what} -> {where}", flush=True)
