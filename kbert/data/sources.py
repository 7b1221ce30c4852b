"""Where data comes from: TFDS datasets by name, or local files through kbert's TFDS builders.

A source is one of:

- a registered TFDS dataset name, with an optional config and version (`"imdb_reviews"`,
  `"glue/sst2"`, `"wikipedia/20230601.en"`), loaded from `data_dir` and downloaded there when the
  machine can;
- local files (a path, a list of paths, or for GLUE a directory with the task's TSV files), which
  kbert's own builders in `kbert.data.builders` prepare once into `data_dir`;
- a `tf.data.Dataset` already holding the examples.

`load_documents` gives text for pretraining; `load_labeled_texts` gives `(text[, text_pair],
label)` examples for classification.
"""

import dataclasses
import logging
import os
import re

import tensorflow as tf

from kbert.data.glue import glue_task

logger = logging.getLogger("kbert")

_LOCAL_EXTENSIONS = (".txt", ".tsv", ".csv")


def is_local(source):
    """Whether `source` names local files rather than a TFDS dataset."""
    if isinstance(source, (list, tuple, dict, os.PathLike)):
        return True
    return (
        os.path.exists(source)
        or source.lower().endswith(_LOCAL_EXTENSIONS)
        or source.startswith((".", "/", "~"))
        or os.sep != "/" and os.sep in source
    )


def _prepare(builder):
    # A prepared dataset is found in data_dir and reused: this writes nothing the second time.
    builder.download_and_prepare()
    return builder


def _prepare_local(builder):
    """Prepares one of kbert's builders for local files, one process at a time.

    TFDS writes a new dataset into a directory of its own and renames it into place at the
    end, so two processes preparing the same new file both write it and the second rename
    fails. An exclusive lock on a file beside the dataset's directory lets the first prepare
    it and the others then find it prepared. The lock is released when its file is closed,
    also when the process dies.
    """
    from kbert.files import locked

    with locked(f"{builder.data_dir}.lock"):
        if builder.data_path.exists():
            # Prepared by another process since this builder was made: a new builder reads
            # the dataset's info from disk.
            builder = type(builder)(
                config=builder.builder_config, data_dir=os.fspath(builder.data_dir_root)
            )
        return _prepare(builder)


def _shard(dataset, input_context):
    if input_context is None or input_context.num_input_pipelines == 1:
        return dataset
    return dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)


def without_autotuning(dataset):
    """`dataset` with tf.data's autotuning off, as kbert's pipelines run.

    With autotuning on, deleting an iterator that Keras has used waits for tf.data's
    autotuning thread to wake up, and that thread sleeps ever longer (10 ms, then twice as
    long each time, up to a minute). Keras deletes an iterator at the end of every `fit` and
    `evaluate` and at every epoch of a dataset without `steps_per_epoch`, so a run would
    wait longer at each of them (docs/data.md). Maps marked `AUTOTUNE`
    then run as many calls at once as there are cores (at most 16).
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def distribution_options(input_context):
    """tf.data options for a pipeline that is (or is not yet) sharded per input pipeline."""
    options = tf.data.Options()
    if input_context is None:
        # A strategy given this dataset shards it itself; sharing out examples rather than files
        # works for every source, including a local file that TFDS prepared as a single file.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    else:
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def _read_split(builder, split, input_context):
    """Reads a split, sharded across input pipelines when `input_context` is given.

    TFDS shards by file where the split has at least one file per input pipeline; otherwise (a
    local file prepared as a single file, a sliced split such as "train[:10%]") every pipeline
    reads the split and keeps its share of the examples.
    """
    import tensorflow_datasets as tfds

    splits = builder.info.splits
    # The split list is empty only under tfds.testing.mock_data, which makes up any split.
    if splits:
        try:
            splits[split]
        except (KeyError, ValueError):
            raise ValueError(
                f"{builder.info.full_name} has no split {split!r}; it has: {', '.join(splits)}"
            ) from None
    num_pipelines = 1 if input_context is None else input_context.num_input_pipelines
    by_file = num_pipelines > 1 and split in splits and splits[split].num_shards >= num_pipelines
    read_config = tfds.ReadConfig(input_context=input_context if by_file else None)
    dataset = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)
    return dataset if by_file else _shard(dataset, input_context)


def _named_builder(name, data_dir, download):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"{name!r} is neither a local file nor a TFDS dataset name "
            "(for a file, check the path; for TFDS, see tfds.list_builders())"
        ) from None
    if download:
        _prepare(builder)
    return builder


# === Text for pretraining ===


def load_documents(
    source,
    split="train",
    data_dir=None,
    text_key="text",
    download=True,
    input_context=None,
):
    """Documents for pretraining, as a `tf.data.Dataset` of tf.string scalars.

    Args:
        source: `.txt` file(s) (blank lines and `= Title =` lines separate documents; a dict maps
            split names to files), a TFDS dataset name, or a `tf.data.Dataset` of strings.
        split: the split to read.
        data_dir: the TFDS data directory (TFDS' default where `None`).
        text_key: the text feature of a named TFDS dataset.
        download: let TFDS download and prepare a named dataset that `data_dir` lacks.
        input_context: a `tf.distribute.InputContext`: read this worker's share only.
    """
    if isinstance(source, tf.data.Dataset):
        return _shard(source, input_context)
    if is_local(source):
        from kbert.data.builders import TextCorpus, text_corpus_config

        builder = _prepare_local(TextCorpus(config=text_corpus_config(source), data_dir=data_dir))
    else:
        builder = _named_builder(source, data_dir, download)
    features = builder.info.features
    if text_key not in features:
        raise ValueError(
            f"{source} has no feature {text_key!r}; pass text_key "
            f"(features: {', '.join(features.keys())})"
        )
    dataset = _read_split(builder, split, input_context)
    return dataset.map(lambda example: example[text_key], num_parallel_calls=tf.data.AUTOTUNE)


# === Labeled text for classification ===


@dataclasses.dataclass
class LabeledTexts:
    """Examples `{"text", ["text_pair"], "label"}` and what their labels mean.

    Attributes:
        dataset: `tf.data.Dataset` of dicts: `text` (and `text_pair` for sentence-pair data) as
            tf.string scalars, `label` as int32 class id, or float32 for regression.
        label_names: class names in id order; `None` for regression.
        num_examples: examples in the split (before sharding), where known.
        task: the `GlueTask`, where the data is a GLUE task.
    """

    dataset: tf.data.Dataset
    label_names: tuple
    num_examples: int = None
    task: object = None

    @property
    def num_classes(self):
        """Number of model outputs: 1 for regression."""
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def has_text_pair(self):
        return "text_pair" in self.dataset.element_spec


def load_labeled_texts(
    source,
    split="train",
    task=None,
    text_columns=None,
    label_column=None,
    label_names=None,
    regression=False,
    header=None,
    delimiter=None,
    skip_bad_rows=False,
    data_dir=None,
    download=True,
    input_context=None,
):
    """Labeled text for classification from a TSV/CSV file, a GLUE directory or a TFDS dataset.

    Args:
        source: a TSV/CSV file (or a dict split -> file), a directory of GLUE TSV files (with
            `task`), a TFDS dataset name such as `"glue/sst2"` or `"imdb_reviews"`, or a
            `tf.data.Dataset` of `{"text", ["text_pair"], "label"}`.
        split: the split to read (`"train"`, `"validation"`, ...).
        task: a GLUE task name; fills in columns, header, label names and metric. Implied by a
            `glue/<task>` TFDS name.
        text_columns: one or two text columns (TSV/CSV: header names or 0-based indexes; TFDS:
            feature names). Defaults to `sentence1, sentence2`, `sentence` or `text`, whichever the
            data has.
        label_column: the label column or feature; defaults to `label`.
        label_names: class names in id order. Labels in a file may be these names or, where
            no name is an integer, integer indexes into them. Read from the file(s) where not given (sorted, numerically where
            all are integers), and from the dataset for TFDS.
        regression: labels are numbers (for one output), not classes.
        header: whether a file's first line names its columns; defaults to True unless every
            column is given by index.
        delimiter: field delimiter; from the file extension where not given.
        skip_bad_rows: skip rows with too few columns or a missing or unknown label (and report
            how many) rather than stop at the first.
        data_dir: the TFDS data directory.
        download: let TFDS download a named dataset.
        input_context: a `tf.distribute.InputContext`: read this worker's share only.

    Returns:
        `LabeledTexts`.
    """
    if task is None and isinstance(source, str) and source.lower().startswith("glue/"):
        task = source
    task = glue_task(task) if task is not None else None
    if task is not None:
        regression = task.label_names is None
        label_names = task.label_names if label_names is None else tuple(label_names)

    if isinstance(source, tf.data.Dataset):
        if label_names is None and not regression and source.element_spec["label"].dtype.is_integer:
            raise ValueError(
                "Expected label_names (or regression=True) with a tf.data.Dataset source: its "
                "integer labels do not say how many classes there are"
            )
        return LabeledTexts(_shard(source, input_context), label_names, task=task)
    if is_local(source):
        return _load_local_labeled_texts(
            source, split, task, text_columns, label_column, label_names, regression,
            header, delimiter, skip_bad_rows, data_dir, input_context,
        )
    return _load_named_labeled_texts(
        source, split, task, text_columns, label_column, label_names, data_dir, download,
        input_context,
    )


def _load_named_labeled_texts(
    name, split, task, text_columns, label_column, label_names, data_dir, download, input_context
):
    import tensorflow_datasets as tfds

    builder = _named_builder(name, data_dir, download)
    features = builder.info.features
    if text_columns is None:
        text_columns = task.tfds_text_features if task is not None else _default_text_columns(
            list(features.keys()), name
        )
    label_column = label_column or "label"
    for column in (*text_columns, label_column):
        if column not in features:
            raise ValueError(
                f"{name} has no feature {column!r} (features: {', '.join(features.keys())})"
            )
    label_feature = features[label_column]
    if isinstance(label_feature, tfds.features.ClassLabel):
        label_names = tuple(label_feature.names) if label_names is None else label_names
        label_dtype = tf.int32
    else:
        label_names, label_dtype = None, tf.float32
    dataset = _read_split(builder, split, input_context)
    dataset = dataset.map(
        lambda example: _example(example, text_columns, label_column, label_dtype),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    splits = builder.info.splits
    num_examples = splits[split].num_examples if splits else None
    return LabeledTexts(dataset, label_names, num_examples=num_examples, task=task)


def _load_local_labeled_texts(
    source, split, task, text_columns, label_column, label_names, regression, header, delimiter,
    skip_bad_rows, data_dir, input_context,
):
    from kbert.data import builders

    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        if task is None:
            raise ValueError(f"{source} is a directory; pass task (a GLUE task) or a file path")
        base_split = re.split(r"[\[+]", split)[0]
        if base_split not in task.files:
            raise ValueError(
                f"GLUE task {task.name} has no split {split!r} (splits: {', '.join(task.files)})"
            )
        files = {base_split: [os.path.join(source, task.files[base_split])]}
    else:
        files = builders._normalise_files(source)
        if isinstance(source, (str, os.PathLike, list, tuple)):
            # A single file (or list) is the split that was asked for; a slice such as
            # "train[:10%]" is read from the whole split.
            files = {re.split(r"[\[+]", split)[0]: files["train"]}
    first_file = next(iter(files.values()))[0]
    delimiter = builders.delimiter_for(first_file, delimiter)

    if task is not None:
        text_columns = text_columns or task.text_columns
        label_column = task.label_column if label_column is None else label_column
        header = task.header if header is None else header
    columns = list(text_columns or ()) + ([label_column] if label_column is not None else [])
    if header is None:
        header = not columns or not all(isinstance(column, int) for column in columns)
    if text_columns is None or label_column is None:
        names = builders.read_header(first_file, delimiter) if header else []
        if text_columns is None:
            text_columns = _default_text_columns(names, first_file)
        if label_column is None:
            label_column = _default_label_column(names, first_file)
    text_columns = tuple(text_columns)
    if len(text_columns) not in (1, 2):
        raise ValueError(f"Expected one or two text columns. Received: text_columns={text_columns}")

    if not regression and label_names is None:
        label_names = _infer_label_names(files, text_columns, label_column, header, delimiter)
    options = builders.DelimitedFileOptions(
        text_columns=text_columns,
        label_column=label_column,
        header=bool(header),
        delimiter=delimiter,
        label_names=None if regression else tuple(label_names),
        regression=bool(regression),
        skip_bad_rows=bool(skip_bad_rows),
    )
    builder = _prepare_local(
        builders.DelimitedFile(config=builders.delimited_file_config(files, options), data_dir=data_dir)
    )
    skipped = builder.info.metadata.get("skipped_rows", {}).get(split)
    if skipped and skipped["count"]:
        logger.warning(
            "%s: %d rows were skipped when the file was prepared (first: %s)",
            ", ".join(files[split]), skipped["count"], skipped["first"],
        )
    label_dtype = tf.float32 if regression else tf.int32
    feature_names = ("text", "text_pair")[: len(text_columns)]
    dataset = _read_split(builder, split, input_context).map(
        lambda example: _example(example, feature_names, "label", label_dtype),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    num_examples = builder.info.splits[split].num_examples
    return LabeledTexts(dataset, options.label_names, num_examples=num_examples, task=task)


def _example(example, text_columns, label_column, label_dtype):
    output = {"text": example[text_columns[0]]}
    if len(text_columns) > 1:
        output["text_pair"] = example[text_columns[1]]
    output["label"] = tf.cast(example[label_column], label_dtype)
    return output


def _default_text_columns(names, where):
    for candidate in (("sentence1", "sentence2"), ("sentence",), ("text",)):
        if all(name in names for name in candidate):
            return candidate
    raise ValueError(
        f"{where}: pass text_columns (no sentence1/sentence2, sentence or text column among: "
        f"{', '.join(map(str, names)) or 'no header'})"
    )


def _default_label_column(names, where):
    if "label" in names:
        return "label"
    raise ValueError(
        f"{where}: pass label_column (no label column among: {', '.join(names) or 'no header'})"
    )


def _infer_label_names(files, text_columns, label_column, header, delimiter):
    """Distinct labels of all the files, sorted (numerically where all are integers)."""
    from kbert.data import builders

    values = set()
    for paths in files.values():
        for path in paths:
            rows = builders.read_rows(path, delimiter)
            names = None
            if header:
                for _, names in rows:
                    break
            index = builders.column_index(label_column, names, path, delimiter)
            for line_number, fields in rows:
                if len(fields) > index and fields[index].strip():
                    values.add(fields[index].strip())
    if not values:
        raise ValueError(f"{', '.join(p for ps in files.values() for p in ps)}: no labels found")
    if all(value.lstrip("-").isdigit() for value in values):
        return tuple(sorted(values, key=int))
    return tuple(sorted(values))
