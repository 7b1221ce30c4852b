"""The jobs behind the `kbert` command: pretrain, fine-tune, evaluate, quickstart.

Each job is a function a script or a test can call with the same arguments as the command
line; the `kbert` subcommands only parse flags and call these. Every run writes a kbert
model directory (see `kbert.model_dir`) plus its training logs into `output_dir`.
"""

import contextlib
import dataclasses
import json
import math
import os
import sys
import warnings

import keras

from kbert import config, files, model_dir, tasks

PRETRAINING_TASK = "masked_lm"


def pretrain(output_dir, vocabulary, source, num_train_steps, **options):
    """Pretrains a `BertMaskedLM` from scratch on `source` and saves it in `output_dir`.

    The keyword form of `run_pretraining`: `options` are the fields of the config objects
    (`kbert.config`) of the same names.

    Args:
        output_dir: the model directory to write (resumes a killed run found there).
        vocabulary: the `vocab.txt` to tokenize with (see `kbert vocab`).
        source: `.txt` file(s) or a TFDS dataset name (the data's `train`), or a corpus
            `kbert prepare` wrote (its directory or TFDS name).
        num_train_steps: training steps (batches).
        **options: e.g. `size` ("mini"), `sequence_length` (128), `batch_size` (32),
            `learning_rate` (1e-4 here), `validation`, `validation_split` (without
            `validation`, a split of `source` held out from training, e.g.
            `train_split="train[:90%]"` with `validation_split="train[90%:]"`: TFDS slicing,
            documents, not tokens), `precision`, `strategy`, `seed`.

    Returns:
        The run's history (a dict of lists).
    """
    options = dict(dict(learning_rate=1e-4, validation_split=None), **options)
    model, data, optimizer, run = config.from_options(
        dict(options, output_dir=output_dir, vocabulary=vocabulary, train=source,
             num_train_steps=num_train_steps)
    )
    return run_pretraining(model, data, optimizer, run)


def run_pretraining(model, data, optimizer, run):
    """Pretrains a `BertMaskedLM` of `model.size` on the text of `data`.

    Args:
        model: a `kbert.config.ModelConfig` (its `size`, `vocabulary`, `lowercase`,
            `strip_accents`, `dropout`, `next_sentence_prediction`).
        data: a `kbert.config.DataConfig` (`train` is `.txt` file(s) or a TFDS name).
        optimizer: a `kbert.config.OptimizerConfig`.
        run: a `kbert.config.RunConfig` (its `num_train_steps`).

    Returns:
        The run's history (a dict of lists).
    """
    from kbert.backbone import BertBackbone
    from kbert.tokenizer import BertTokenizer

    _check_positive("num_train_steps", run.num_train_steps)
    _check_positive("batch_size", data.batch_size)
    task = tasks.get(PRETRAINING_TASK, {"next_sentence_prediction": model.next_sentence_prediction})
    tokenizer = BertTokenizer(
        model.vocabulary, lowercase=model.lowercase, strip_accents=model.strip_accents
    )
    data = _held_out_text(data)
    train_data, validation_data = task.datasets(data, tokenizer, seed=run.seed)

    def build_model():
        backbone = BertBackbone.from_size(
            model.size,
            vocabulary_size=tokenizer.vocabulary_size,
            max_sequence_length=max(512, data.sequence_length),
            dropout=model.dropout,
        )
        return task.build_model(backbone)

    history, _ = train_task(
        task, build_model, train_data, validation_data, run, optimizer,
        num_train_steps=run.num_train_steps,
        steps_per_epoch=run.steps_per_epoch or min(run.num_train_steps, 500),
        vocabulary=model.vocabulary,
        tokenizer_settings=dict(tokenizer.get_config(), sequence_length=data.sequence_length),
        task_settings=dict(task.settings, name=PRETRAINING_TASK, metric="masked_lm"),
        run_settings=dict(job="pretrain", source=_describe(data.train), batch_size=data.batch_size),
        probe_train=True,
        configs=config.as_dicts(model=model, data=data, optimizer=optimizer, run=run),
    )
    return history


def finetune(output_dir, init, train, validation=None, task=None, **options):
    """Fine-tunes the backbone of model directory `init` for `task` (a classifier by default).

    The keyword form of `run_finetuning`: `options` are the fields of the config objects
    (`kbert.config`) of the same names.

    Args:
        output_dir: the model directory to write.
        init: a kbert model directory (from `pretrain`, `finetune` or `convert`); its
            backbone, vocabulary and tokenizer settings are used, its heads are not.
        train: a TSV/CSV file, a GLUE directory (with `task`) or a TFDS name (`glue/sst2`).
        validation: the same for the validation data; for a TFDS name, `validation_split`
            of `train` is used when `validation` is not given.
        task: a task name or alias (`kbert.tasks.get`); a GLUE task name fills in columns,
            label names and the metric. `None` is text classification.
        **options: e.g. `epochs` (3), `batch_size` (32), `sequence_length` (128),
            `learning_rate` (5e-5), `text_columns`, `label_column`, `label_names`,
            `precision`, `strategy`, `seed`.

    Returns:
        `(history, metrics)`: the run's history and the final validation metrics (or `{}`).
    """
    return run_finetuning(*config.from_options(
        dict(options, output_dir=output_dir, init=init, train=train, validation=validation, task=task)
    ))


def run_finetuning(model, data, optimizer, run):
    """Fine-tunes `model.init` on `data`, as the task `data.task` trains it.

    Args:
        model: a `kbert.config.ModelConfig` (its `init` and `dropout`).
        data: a `kbert.config.DataConfig`.
        optimizer: a `kbert.config.OptimizerConfig`.
        run: a `kbert.config.RunConfig` (its `epochs`, or `num_train_steps`).

    Returns:
        `(history, metrics)`: the run's history and the final validation metrics (or `{}`).
    """
    from kbert.tokenizer import BertTokenizer

    _check_positive("epochs", run.epochs)
    _check_positive("batch_size", data.batch_size)
    _check_positive("sequence_length", data.sequence_length)
    model_dir.read_config(model.init)  # a bad init stops here, before the data is read
    task = tasks.get(data.task or "classification")
    tokenizer = BertTokenizer.from_model_dir(model.init)
    prepared = task.prepare_finetuning(model.init, data, tokenizer, seed=run.seed)
    num_train_steps = run.num_train_steps or run.epochs * prepared.steps_per_epoch

    def build_model():
        backbone = _load_backbone(model.init, model.dropout)
        if data.sequence_length > backbone.max_sequence_length:
            raise ValueError(
                f"Expected sequence_length to be at most {backbone.max_sequence_length}, the "
                f"longest the model in {model.init} takes (its max_sequence_length). "
                f"Received: sequence_length={data.sequence_length}"
            )
        return task.build_model(backbone, dropout=model.dropout)

    run_settings = dict(job="finetune", init=os.path.abspath(model.init), task=prepared.settings,
                        train=_describe(data.train), batch_size=data.batch_size)
    return train_task(
        task, build_model, prepared.train_data, prepared.validation_data, run, optimizer,
        num_train_steps=num_train_steps, steps_per_epoch=prepared.steps_per_epoch,
        vocabulary=model_dir.vocabulary_path(model.init),
        tokenizer_settings=dict(tokenizer.get_config(), sequence_length=data.sequence_length),
        task_settings=prepared.settings, run_settings=run_settings, evaluate=True,
        configs=config.as_dicts(model=model, data=data, optimizer=optimizer, run=run),
    )


def train_task(
    task,
    build_model,
    train_data,
    validation_data,
    run,
    optimizer,
    num_train_steps,
    steps_per_epoch,
    vocabulary,
    tokenizer_settings,
    task_settings,
    run_settings,
    probe_train=False,
    evaluate=False,
    configs=None,
):
    """The steps every training job shares: what differs comes in as arguments.

    Sets precision, distribution and seed, builds the input pipelines once eagerly, builds
    and compiles the model in the distribution's scope with the task's loss and metrics,
    trains it resumably (`kbert.training.fit`) and saves the model directory.

    Args:
        task: the `kbert.tasks.Task` trained.
        build_model: a function of no arguments returning the model, called in scope.
        train_data, validation_data: functions of an `input_context` returning batches
            (`validation_data` may be `None`).
        run: a `kbert.config.RunConfig`; optimizer: a `kbert.config.OptimizerConfig`.
        num_train_steps, steps_per_epoch: the run's length and its logging period.
        vocabulary: the `vocab.txt` saved with the model.
        tokenizer_settings, task_settings: saved in the model directory's config.
        run_settings: what else identifies the run (a backup of another run is not resumed).
        probe_train: build the training pipeline eagerly first, so bad input stops the run
            with its own message (inside tf.data it would surface wrapped in tracing errors).
        evaluate: score the validation data at the end (written to `metrics.json`).
        configs: the run's config objects as dicts (`kbert.config.as_dicts`), stored in the
            model directory.

    Returns:
        `(history, metrics)`: the run's history and the final validation metrics (or `{}`).
    """
    from kbert import distribution as distribution_lib
    from kbert import training

    training.set_precision(run.precision)
    distribution = distribution_lib.make_distribution(
        run.strategy, **(run.distribution_options or {})
    )
    keras.utils.set_random_seed(run.seed)
    if probe_train:
        train_data()
    if validation_data is not None:
        validation_data()
    with distribution.scope():
        model = build_model()
        _refuse_other_model(run.output_dir, model)
        task.compile(
            model,
            optimizer=optimizer.make(num_train_steps, precision=run.precision),
            jit_compile=run.jit_compile,
        )
    run_config = dict(
        run_settings,
        model=model_dir.architecture(model),
        tokenizer=tokenizer_settings,
        learning_rate=optimizer.learning_rate,
        seed=run.seed,
    )
    with without_misleading_warnings():
        history = training.fit(
            model, train_data, run.output_dir, num_train_steps=num_train_steps,
            steps_per_epoch=steps_per_epoch, validation_data=validation_data,
            distribution=distribution, backup_every=run.backup_every, run_config=run_config,
            verbose=run.verbose,
        )
    metrics = {}
    if evaluate and validation_data is not None:
        metrics = _round(task.evaluate(model, validation_data(), compile=False))
    if distribution.is_chief:
        model_dir.save(
            model, run.output_dir, vocabulary, tokenizer=tokenizer_settings, task=task_settings,
            configs=configs,
        )
        if metrics:
            files.write_json(os.path.join(run.output_dir, "metrics.json"), metrics)
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
    from kbert.tokenizer import BertTokenizer

    _check_positive("batch_size", batch_size)
    if steps is not None:
        # None means every batch; 0 would score nothing.
        _check_positive("steps", steps)
    config = model_dir.read_config(directory)
    task_of_model = tasks.from_config(config, purpose="evaluate")
    model = model_dir.load(directory)
    dataset = task_of_model.evaluation_dataset(
        model,
        BertTokenizer.from_model_dir(directory),
        data,
        sequence_length=config["tokenizer"].get("sequence_length", 128),
        batch_size=batch_size,
        split=split,
        data_dir=data_dir,
        task=task,
        text_columns=text_columns,
        label_column=label_column,
        header=header,
        delimiter=delimiter,
    )
    if steps is not None:
        dataset = dataset.take(steps)
    return _round(task_of_model.evaluate(model, dataset))


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
        raise ValueError(
            "Expected validation (a file of held-out examples) with train. Received: validation=None"
        )
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
        sequence_length=sequence_length, batch_size=batch_size, train_split=corpus_split,
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
def without_misleading_warnings():
    """Silences a Keras warning that is a false alarm in these jobs.

    Keras warns "Your input ran out of data" at the end of every pass over a dataset of
    unknown length; training data repeats, so here it only ever means that a validation
    set was read to its end.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        yield


def _held_out_text(data):
    """`data` of a pretraining run, whose validation is, without `validation`, a split of `train`."""
    if data.validation is None and data.validation_split is not None:
        if data.validation_split == data.train_split:
            raise ValueError(
                "Expected validation_split to be another split than train_split, which trains: "
                "e.g. train_split='train[:90%]', validation_split='train[90%:]'. "
                f"Received: train_split={data.train_split!r}, "
                f"validation_split={data.validation_split!r}"
            )
        return dataclasses.replace(data, validation=data.train)
    return dataclasses.replace(data, validation_split=data.validation_split or "train")


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
            f"{output_dir} already holds a different model "
            f"({existing.get('class_name')}); choose another output_dir"
        )


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
    return {
        key: _round(value) if isinstance(value, dict) else round(float(value), 6)
        for key, value in metrics.items()
    }


def _step(number, what, where):
    print(f"\n[{number}/3] {what} -> {where}", flush=True)
