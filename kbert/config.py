"""The settings of a training run, as small objects that scripts, recipes and the CLI share.

Four objects describe a run: the model (`ModelConfig`), the data (`DataConfig`), the
optimizer (`OptimizerConfig`) and where and how it runs (`RunConfig`). Each field has the
name of its CLI flag (`learning_rate` is `--learning-rate`) and of the argument of
`kbert.workflows.pretrain` / `finetune` that takes it, and the model directory stores them
under the same names (`config.json`'s "configs"), so a concept reads the same from the
command line to the saved model.

Example:
>>> model = ModelConfig(init="runs/mini")
>>> data = DataConfig(train="train.tsv", validation="dev.tsv", task="sst2")
>>> optimizer = OptimizerConfig(learning_rate=1e-4, warmup_steps=100)
>>> run = RunConfig(output_dir="runs/sst2", epochs=3, precision="mixed_bfloat16")
>>> workflows.run_finetuning(model, data, optimizer, run)  # doctest: +SKIP
"""

import dataclasses


@dataclasses.dataclass
class ModelConfig:
    """The model a run trains.

    Args:
        init: the kbert model directory fine-tuning starts from (its backbone, vocabulary
            and tokenizer settings; not its heads).
        size: a named size for pretraining from scratch, `tiny` ... `large` or
            `L{layers}_H{hidden}`.
        dropout: the dropout rate of every layer (fine-tuning sets its own, whatever the
            checkpoint was pretrained with).
        next_sentence_prediction: pretraining also trains BERT's next-sentence head.
        vocabulary: the `vocab.txt` a model pretrained from scratch tokenizes with (a
            fine-tuned one keeps its `init`'s).
        lowercase, strip_accents: how that tokenizer normalizes text (see
            `kbert.tokenizer.BertTokenizer`).
    """

    init: str = None
    size: str = "mini"
    dropout: float = 0.1
    next_sentence_prediction: bool = False
    vocabulary: str = None
    lowercase: bool = True
    strip_accents: bool = None


@dataclasses.dataclass
class DataConfig:
    """What a run reads, and how it batches it.

    Args:
        train: the training data: file(s), a GLUE directory or a TFDS name.
        validation: the validation data, in the same forms (or `None`).
        task: the task that reads them: a registered task name or one of its aliases (a
            GLUE task, `conll2003`, ...); `None` is classification.
        train_split, validation_split: the splits read (TFDS names and slices).
        data_dir: the TFDS data directory.
        text_columns: the text column(s), header names or 0-based indices.
        label_column: the label column, a header name or a 0-based index.
        label_names: class names in id order (default: read from the data).
        regression: labels are numbers and the model has one output.
        header: whether a file's first line names its columns (default: detected).
        delimiter: the field delimiter (default: from the file's extension).
        batch_size: the global batch size, split over replicas.
        sequence_length: tokens per sequence, `[CLS]` and `[SEP]` included.
        bucket: pad each batch to one of a few bucket lengths rather than
            `sequence_length`.
        text_key: the text feature of a TFDS corpus (pretraining).
        num_predictions: masked positions per sequence (pretraining; default: 15% of
            `sequence_length`).
        whole_word_masking: mask all word pieces of a word together (pretraining).
        validation_steps: batches of held-out text scored at each epoch end (pretraining).
        tag_column: token classification: the 0-based column of the tags (-1: the last).
        tag_scheme: token classification: the scheme the tags follow (IOB1, IOB2, IOBES).
        objective: the loss of an embedding task: "cosent" or "cosine_mse" for scored
            pairs, "multiple_negatives_ranking" for (anchor, positive) pairs (default: by data).
        score_range: `(lowest, highest)` score of scored pairs (default: 0 to 5, as STS).
    """

    train: object = None
    validation: object = None
    task: str = None
    train_split: str = "train"
    validation_split: str = "validation"
    data_dir: str = None
    text_columns: list = None
    label_column: object = None
    label_names: list = None
    regression: bool = False
    header: bool = None
    delimiter: str = None
    batch_size: int = 32
    sequence_length: int = 128
    bucket: bool = True
    text_key: str = "text"
    num_predictions: int = None
    whole_word_masking: bool = False
    validation_steps: int = 20
    tag_column: int = -1
    tag_scheme: str = "IOB2"
    objective: str = None
    score_range: list = None

    def column_options(self):
        """How a file's columns are read, as `kbert.data.load_labeled_texts` takes them."""
        return dict(
            task=self.task, text_columns=self.text_columns, label_column=self.label_column,
            label_names=self.label_names, regression=self.regression, header=self.header,
            delimiter=self.delimiter, data_dir=self.data_dir,
        )


@dataclasses.dataclass
class OptimizerConfig:
    """How the weights are updated (see `kbert.training.make_optimizer`).

    Args:
        optimizer: one of `kbert.training.OPTIMIZERS`.
        learning_rate: the peak learning rate, after warmup.
        warmup_steps: linear warmup steps; `None` takes `warmup_ratio` of the run.
        warmup_ratio: share of the training steps spent in warmup, without `warmup_steps`.
        weight_decay: decoupled weight decay (not applied to LayerNorm and biases).
        gradient_accumulation_steps: batches whose gradients are summed before each update.
    """

    optimizer: str = "adamw"
    learning_rate: float = 5e-5
    warmup_steps: int = None
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    gradient_accumulation_steps: int = None

    def make(self, num_train_steps, precision=None):
        """The Keras optimizer for a run of `num_train_steps`."""
        from kbert import training

        warmup_steps = self.warmup_steps
        if warmup_steps is None:
            warmup_steps = int(self.warmup_ratio * num_train_steps)
        return training.make_optimizer(
            name=self.optimizer,
            learning_rate=self.learning_rate,
            num_train_steps=num_train_steps,
            warmup_steps=warmup_steps,
            weight_decay=self.weight_decay,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            precision=precision,
        )


@dataclasses.dataclass
class RunConfig:
    """Where and how a run trains.

    Args:
        output_dir: the model directory to write (a killed run found there resumes).
        epochs: the run's length in passes over the training data (fine-tuning).
        num_train_steps: the run's length in batches (pretraining; fine-tuning takes it
            over `epochs` when given).
        steps_per_epoch: steps between logging, validation and backups (default: a pass
            over the training data, or for pretraining `min(num_train_steps, 500)`).
        precision: one of `kbert.training.PRECISIONS`.
        strategy: one of `kbert.distribution.STRATEGIES`.
        jit_compile: XLA: "auto", True or False.
        backup_every: also back up the training state every this many steps.
        seed: the random seed of weights, shuffling and masking.
        distribution_options: more arguments of `kbert.distribution.make_distribution`.
        verbose: Keras' progress bar setting.
    """

    output_dir: str
    epochs: int = 3
    num_train_steps: int = None
    steps_per_epoch: int = None
    precision: str = "float32"
    strategy: str = "auto"
    jit_compile: object = "auto"
    backup_every: int = None
    seed: int = 0
    distribution_options: dict = None
    verbose: object = "auto"


def fields(config_class):
    """The field names of a config class, for splitting keyword arguments among configs."""
    return tuple(field.name for field in dataclasses.fields(config_class))


CONFIG_CLASSES = (ModelConfig, DataConfig, OptimizerConfig, RunConfig)


def of_flags(arguments):
    """`(model, data, optimizer, run)` configs of parsed flags (others ignored)."""
    return tuple(from_arguments(config_class, arguments) for config_class in CONFIG_CLASSES)


def from_options(options):
    """`(model, data, optimizer, run)` configs of keyword `options` named as their fields.

    What the keyword forms of the training jobs take; an option that is no config's field
    is refused, as a misspelt keyword argument would be.
    """
    known = {name for config_class in CONFIG_CLASSES for name in fields(config_class)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(
            f"Expected options among the fields of {', '.join(c.__name__ for c in CONFIG_CLASSES)}. "
            f"Received: {', '.join(f'{name}={options[name]!r}' for name in unknown)}"
        )
    return of_flags(options)


def from_arguments(config_class, arguments):
    """A `config_class` of the keyword `arguments` named as its fields (others ignored)."""
    return config_class(**{name: arguments[name] for name in fields(config_class) if name in arguments})


def as_dicts(**configs):
    """`{name: fields as a dict}` of configs, as a model directory stores them."""
    return {name: dataclasses.asdict(value) for name, value in configs.items()}
