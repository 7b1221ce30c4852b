"""Token classification data: CoNLL-style files to `(x, labels, sample_weight)` batches.

    file --ConllFile (TFDS builder, checks every line)--> {"words", "tags"} per sentence
         --WordPiece each word; windows of whole words--> word pieces, a label on each word's first piece
         --shuffle, group by length bucket, batch--> [CLS] pieces [SEP], padded to the bucket's length

A CoNLL-style file has one word per line, its columns separated by spaces or tabs, the tag in
one column (the last by default); a blank line ends a sentence and `-DOCSTART-` lines are
skipped. As in BERT's paper, a word's tag labels its first word piece; the word's other pieces,
`[CLS]`, `[SEP]` and padding have sample weight 0, so they count in neither loss nor metrics.

A sentence with more word pieces than a sequence holds is split into windows of whole words:
a window takes words while their pieces fit in `sequence_length - 2`, and the next word starts
the next window. Each window is an example of its own (an entity cut by a window boundary is
two entities). A single word with more pieces than a window keeps its first pieces.
"""

import dataclasses
import os
import re

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from kbert import tagging
from kbert.data import builders
from kbert.data.sources import distribution_options, without_autotuning

DOCSTART = "-DOCSTART-"
# The nine tags of CoNLL-2003 English (IOB2), in the order Hugging Face's `conll2003` dataset
# numbers them.
CONLL2003_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
_COLUMN_SEPARATOR = re.compile(r"[ \t]+")
_PREFIX_ORDER = {"B": 0, "I": 1, "E": 2, "S": 3}


# === Reading files ===


def read_sentences(path, tag_column=-1, label_names=None, scheme="IOB2"):
    """Yields `(line_number, words, tags)` for each sentence of a CoNLL-style file.

    Args:
        path: the file.
        tag_column: the 0-based column of the tag (negative counts from the last); the word
            is the first column.
        label_names: the tags allowed, or `None` for any.
        scheme: the tag scheme every sentence must follow (`kbert.tagging.SCHEMES`), or
            `None` to accept any sequence of tags.

    Raises:
        ValueError: naming the file and line, for a line with too few columns, an unknown
            tag, or a tag the scheme does not allow where it stands.
    """
    if scheme is not None:
        scheme = tagging.check_scheme(scheme)
    allowed = None if label_names is None else set(label_names)
    num_columns = max(2, tag_column + 1 if tag_column >= 0 else -tag_column + 1)
    words, tags, lines = [], [], []
    for line_number, line in builders.read_lines(path):
        fields = _COLUMN_SEPARATOR.split(line.strip(" \t")) if line.strip(" \t") else []
        if fields and fields[0] == DOCSTART:
            continue
        if fields:
            if len(fields) < num_columns:
                raise ValueError(
                    f"{path}, line {line_number}: expected at least {num_columns} columns "
                    f"separated by spaces or tabs (the tag in column {tag_column}), found {len(fields)}"
                )
            tag = fields[tag_column]
            if allowed is not None and tag not in allowed:
                raise ValueError(
                    f"{path}, line {line_number}: unknown tag {tag!r}; expected one of: "
                    f"{', '.join(label_names)}"
                )
            words.append(fields[0])
            tags.append(tag)
            lines.append(line_number)
            continue
        if words:
            _check_sentence(path, lines, tags, scheme)
            yield lines[0], words, tags
        words, tags, lines = [], [], []
    if words:
        _check_sentence(path, lines, tags, scheme)
        yield lines[0], words, tags


def _check_sentence(path, lines, tags, scheme):
    if scheme is None:
        return
    invalid = tagging.invalid_tag(tags, scheme)
    if invalid is not None:
        index, reason = invalid
        raise ValueError(f"{path}, line {lines[index]}: not valid {scheme}: {reason}")


def read_label_names(paths, tag_column=-1, scheme="IOB2"):
    """The tags of `paths`: `O` first, then by entity type and prefix (B, I, E, S)."""
    names = set()
    for path in paths:
        for _, _, tags in read_sentences(path, tag_column, scheme=scheme):
            names.update(tags)
    if not names:
        raise ValueError(f"{', '.join(paths)}, line 1: the file has no tagged words")

    def order(tag):
        prefix, entity_type = tagging.split_tag(tag)
        return (tag != tagging.OUTSIDE, entity_type, _PREFIX_ORDER.get(prefix, 4), tag)

    return tuple(sorted(names, key=order))


# === The TFDS builder ===


def conll_file_config(files, options):
    """A `LocalFilesConfig` of CoNLL-style `files` (split -> paths), read with `read_sentences(**options)`."""
    return builders.LocalFilesConfig(
        name=builders._config_name("conll", files, options), version=builders.VERSION,
        release_notes=builders.RELEASE_NOTES, files=files, options=options,
        description="Sentences from: " + ", ".join(p for paths in files.values() for p in paths),
    )


class ConllFile(builders.LocalFilesBuilder):
    """CoNLL-style files as a TFDS dataset of sentences (features `words`, `tags`)."""

    def _info(self):
        label_names = list(self.builder_config.options["label_names"])
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "words": tfds.features.Sequence(tfds.features.Text()),
                "tags": tfds.features.Sequence(tfds.features.ClassLabel(names=label_names)),
            }),
            disable_shuffling=True,
        )

    def records(self, path):
        for _, words, tags in read_sentences(path, **self.builder_config.options):
            yield {"words": words, "tags": tags}


@dataclasses.dataclass
class TaggedSentences:
    """Sentences `{"words", "tags"}` (tf.string and int32 vectors) and what the tags mean.

    Attributes:
        dataset: `tf.data.Dataset` of dicts with `words` and `tags` (tag ids).
        label_names: the tags in id order.
        num_examples: sentences in the split.
        scheme: the tag scheme of the files.
    """

    dataset: tf.data.Dataset
    label_names: tuple
    num_examples: int = None
    scheme: str = None


def load_tagged_sentences(
    source, split="train", tag_column=-1, label_names=None, scheme="IOB2", data_dir=None,
    input_context=None,
):
    """Tagged sentences from CoNLL-style files, prepared once through a TFDS builder.

    Args:
        source: a file, a list of files, or a dict split -> file(s).
        split: the split to read; a single file (or list) is that split.
        tag_column: the 0-based column of the tags (negative counts from the last).
        label_names: the tags in id order; read from the files (`read_label_names`) if `None`.
        scheme: the tag scheme the files must follow, or `None` for no check.
        data_dir: the TFDS data directory.
        input_context: a `tf.distribute.InputContext`: read this worker's share only.

    Returns:
        `TaggedSentences`.
    """
    from kbert.data.sources import _prepare_local, _read_split

    files = builders._normalise_files(source)
    if isinstance(source, (str, os.PathLike, list, tuple)):
        files = {re.split(r"[\[+]", split)[0]: files["train"]}
    if not isinstance(tag_column, int) or isinstance(tag_column, bool):
        raise ValueError(f"Expected tag_column to be an integer. Received: tag_column={tag_column!r}")
    if label_names is None:
        label_names = read_label_names([p for paths in files.values() for p in paths], tag_column, scheme)
    options = {"tag_column": tag_column, "label_names": list(label_names), "scheme": scheme}
    builder = _prepare_local(ConllFile(config=conll_file_config(files, options), data_dir=data_dir))
    dataset = _read_split(builder, split, input_context).map(
        lambda example: {"words": example["words"], "tags": tf.cast(example["tags"], tf.int32)},
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    num_examples = builder.info.splits[split].num_examples
    return TaggedSentences(dataset, tuple(label_names), num_examples=num_examples, scheme=scheme)


# === The pipeline ===


def word_pieces(tokenizer, words, max_pieces=None):
    """The word pieces of each word, `[UNK]` for a word with none (ragged (words, (pieces))).

    A word that the tokenizer reduces to nothing (control characters only) keeps its tag on an
    `[UNK]` piece rather than losing it; `max_pieces` keeps each word's first pieces.
    """
    pieces = tokenizer(words)  # (words, (pieces))
    empty = tf.cast(pieces.row_lengths() == 0, tf.int64)
    unknown = tf.RaggedTensor.from_row_lengths(
        tf.fill([tf.reduce_sum(empty)], tf.constant(tokenizer.unk_token_id, tf.int32)), empty
    )
    pieces = tf.concat([pieces, unknown], axis=1)
    return pieces if max_pieces is None else pieces[:, :max_pieces]


def sentence_windows(pieces, tags, max_pieces):
    """A sentence's word pieces in windows of whole words, with first-piece labels.

    Args:
        pieces: int32 ragged (words, (pieces)), every word with 1 to `max_pieces` pieces.
        tags: int32 (words,) tag ids.
        max_pieces: the most pieces a window holds.

    Returns:
        dict of ragged (windows, (pieces)): `token_ids`, `labels` (the tag id on each word's
        first piece, 0 elsewhere) and `sample_weight` (1.0 on first pieces, else 0.0).
    """
    counts = tf.cast(pieces.row_lengths(), tf.int32)

    def next_window(state, count):
        # Greedy: a word that does not fit in the current window starts a new one.
        window, used = state[0], state[1]
        full = tf.logical_and(used > 0, used + count > max_pieces)
        return tf.where(full, tf.stack([window + 1, count]), tf.stack([window, used + count]))

    windows = tf.scan(next_window, counts, initializer=tf.constant([0, 0]))[:, 0]  # (words,)
    num_windows = windows[-1] + 1
    piece_windows = tf.repeat(windows, counts)
    first_pieces = tf.scatter_nd(
        tf.cast(pieces.row_starts(), tf.int32)[:, tf.newaxis], tf.ones_like(counts),
        tf.shape(pieces.flat_values),
    )
    labels = tf.repeat(tags, counts) * first_pieces

    def by_window(values):
        return tf.RaggedTensor.from_value_rowids(values, piece_windows, nrows=num_windows)

    return {
        "token_ids": by_window(pieces.flat_values),
        "labels": by_window(labels),
        "sample_weight": by_window(tf.cast(first_pieces, tf.float32)),
    }


def tagging_dataset(
    source, preprocessor, batch_size, split="train", bucket_boundaries="auto", shuffle=True,
    seed=None, shuffle_buffer_size=10_000, drop_remainder=False, input_context=None, **source_options,
):
    """Batches of `(x, labels, sample_weight)` for `BertTokenClassifier`.

    Args:
        source: a `TaggedSentences`, or what `load_tagged_sentences` reads (CoNLL-style files).
        preprocessor: a `BertPreprocessor`; its `sequence_length` is the longest a batch gets.
        batch_size: the global batch size (divided among replicas under `input_context`).
        split: the split to read, where `source` is not a `TaggedSentences`.
        bucket_boundaries: as in `kbert.data.classification_dataset`.
        shuffle, seed, shuffle_buffer_size: shuffling of the windows, every epoch.
        drop_remainder: drop each bucket's last, smaller batch.
        input_context: a `tf.distribute.InputContext`.
        **source_options: passed to `load_tagged_sentences` (`tag_column`, `label_names`,
            `scheme`, `data_dir`).

    Returns:
        `tf.data.Dataset` of `(x, labels, sample_weight)`: `x` as for a classifier, `labels`
        int32 and `sample_weight` float32, both (batch, length).
    """
    from kbert.data.classification import _padded_lengths

    if not isinstance(source, TaggedSentences):
        source = load_tagged_sentences(source, split=split, input_context=input_context, **source_options)
    elif input_context is not None and input_context.num_input_pipelines > 1:
        source = dataclasses.replace(source, dataset=source.dataset.shard(
            input_context.num_input_pipelines, input_context.input_pipeline_id))
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    sequence_length = preprocessor.sequence_length
    max_pieces = sequence_length - 2

    def windows(sentence):
        pieces = word_pieces(preprocessor.tokenizer, sentence["words"], max_pieces)
        return sentence_windows(pieces, sentence["tags"], max_pieces)

    # Without autograph, which would spend seconds converting the tokenizer's code: nothing
    # here branches on tensors.
    plain = tf.autograph.experimental.do_not_convert
    dataset = source.dataset.map(plain(windows), num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    # Unbatched ragged rows are ragged tensors of ragged rank 0 until a map makes them plain.
    dataset = dataset.map(
        plain(lambda window: dict(window, num_pieces=tf.size(window["token_ids"], out_type=tf.int32)))
    ).cache()
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer_size, seed=seed)
    boundaries = _padded_lengths(bucket_boundaries, sequence_length)
    boundaries_tensor = tf.constant(boundaries, tf.int32)

    def padded_length(length):
        return boundaries_tensor[tf.searchsorted(boundaries_tensor, [length + 2])[0]]

    if len(boundaries) == 1:
        dataset = dataset.padded_batch(batch_size, drop_remainder=drop_remainder)
    else:
        dataset = dataset.group_by_window(
            key_func=plain(lambda window: tf.cast(
                tf.searchsorted(boundaries_tensor, [window["num_pieces"] + 2])[0], tf.int64
            )),
            reduce_func=plain(
                lambda _, group: group.padded_batch(batch_size, drop_remainder=drop_remainder)
            ),
            window_size=batch_size,
        )

    def pack(batch):
        longest = tf.shape(batch["token_ids"])[1]
        length = sequence_length if len(boundaries) == 1 else padded_length(longest)
        x = preprocessor.pack(
            tf.RaggedTensor.from_tensor(batch["token_ids"], lengths=batch["num_pieces"]),
            sequence_length=length,
        )
        padding = [[0, 0], [1, length - 1 - longest]]
        return x, tf.pad(batch["labels"], padding), tf.pad(batch["sample_weight"], padding)

    dataset = dataset.map(plain(pack), num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.with_options(distribution_options(input_context)).prefetch(tf.data.AUTOTUNE)
    return without_autotuning(dataset)


def tags_of_batch(labels, sample_weight, label_names):
    """Word-level tag names of each row of a batch: the labels where `sample_weight` is set."""
    label_names = np.asarray(label_names, dtype=object)
    rows = zip(np.asarray(labels), np.asarray(sample_weight))
    return [list(label_names[row[weight > 0]]) for row, weight in rows]
