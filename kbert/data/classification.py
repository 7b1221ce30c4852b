"""Classification data: labeled text to `(x, label)` batches, bucketed by length.

    examples --tokenize (parallel, cached)--> token ids, each segment cut to sequence_length - 2
             --shuffle, group by length bucket, batch--> ragged batches
             --[CLS] a [SEP] (b [SEP]), pad to the bucket's length--> (x, label)

With length bucketing a batch is padded only up to the smallest bucket boundary that holds its
longest example, so short sentences do not pay for `sequence_length` positions, while the few
boundaries keep the number of distinct shapes (and XLA compilations) small.
"""

import tensorflow as tf

from kbert.data.sources import LabeledTexts, distribution_options, load_labeled_texts, without_autotuning

_EXAMPLES_PER_TOKENIZER_CALL = 256


def default_bucket_boundaries(sequence_length):
    """Powers of two from 16 up to `sequence_length` (which is always the last boundary)."""
    boundaries = []
    boundary = 16
    while boundary < sequence_length:
        boundaries.append(boundary)
        boundary *= 2
    return boundaries + [sequence_length]


def _worker_examples(source, split, data_dir, input_context, source_options):
    """The `{"text", ["text_pair"], "label"}` examples this worker reads from `source`."""
    if isinstance(source, tf.data.Dataset):
        # Examples as they are: the pipeline needs no label names.
        source = LabeledTexts(source, label_names=None)
    if not isinstance(source, LabeledTexts):
        source = load_labeled_texts(
            source, split=split, data_dir=data_dir, input_context=input_context, **source_options
        )
        return source.dataset
    if source_options:
        raise ValueError(
            f"Options for reading the source ({', '.join(source_options)}) do not apply to "
            "a LabeledTexts, which has been read already"
        )
    examples = source.dataset
    if input_context is not None and input_context.num_input_pipelines > 1:
        examples = examples.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return examples


def _padded_lengths(bucket_boundaries, sequence_length):
    """The lengths batches are padded to, ascending, the last one `sequence_length`."""
    if bucket_boundaries is None:
        return [sequence_length]
    if bucket_boundaries == "auto":
        return default_bucket_boundaries(sequence_length)
    return sorted({int(b) for b in bucket_boundaries if b < sequence_length}) + [sequence_length]


def classification_dataset(
    source,
    preprocessor,
    batch_size,
    split="train",
    bucket_boundaries="auto",
    shuffle=True,
    seed=None,
    shuffle_buffer_size=10_000,
    cache=True,
    drop_remainder=False,
    input_context=None,
    data_dir=None,
    **source_options,
):
    """Batches of `(x, label)` for `BertClassifier`.

    Args:
        source: a `LabeledTexts` (from `kbert.data.load_labeled_texts`, which also gives the
            label names), anything `load_labeled_texts` accepts (a TSV/CSV file, a GLUE
            directory with `task=`, a TFDS name such as `"glue/sst2"`), or a `tf.data.Dataset`
            of `{"text", ["text_pair"], "label"}`.
        preprocessor: a `BertPreprocessor`; its `sequence_length` is the longest a batch gets.
        batch_size: the global batch size (divided among replicas under `input_context`).
        split: the split to read, where `source` is not a `LabeledTexts`.
        bucket_boundaries: `"auto"` for `default_bucket_boundaries(sequence_length)`, a list of
            padded lengths, or `None` to pad every batch to `sequence_length` (fixed shapes,
            e.g. for TPUs).
        shuffle: shuffle the examples every epoch.
        seed: the shuffling seed.
        shuffle_buffer_size: examples in the shuffle buffer.
        cache: keep the tokenized examples in memory (`True`) or in files at this path prefix.
        drop_remainder: drop each bucket's last, smaller batch.
        input_context: a `tf.distribute.InputContext`: read this worker's share and batch
            `input_context.get_per_replica_batch_size(batch_size)`.
        data_dir: the TFDS data directory.
        **source_options: passed to `load_labeled_texts` (`task`, `text_columns`,
            `label_column`, `label_names`, `header`, `delimiter`, `skip_bad_rows`, ...).

    Returns:
        `tf.data.Dataset` of `(x, label)`: `x` holds int32 `token_ids`, `segment_ids` and
        `padding_mask` of shape (batch, length), where length is a bucket boundary (or
        `sequence_length`); `label` is int32 (batch,), or float32 for regression.
    """
    examples = _worker_examples(source, split, data_dir, input_context, source_options)
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    sequence_length = preprocessor.sequence_length
    tokenizer = preprocessor.tokenizer
    has_text_pair = "text_pair" in examples.element_spec

    def tokenize(batch):
        # No segment can keep more than sequence_length - 2 tokens after packing, so cutting each
        # here changes nothing but the size of the cache.
        token_ids = tokenizer(batch["text"])[:, : sequence_length - 2]
        tokenized = {"token_ids": token_ids, "length": token_ids.row_lengths()}
        if has_text_pair:
            token_ids_pair = tokenizer(batch["text_pair"])[:, : sequence_length - 2]
            tokenized["token_ids_pair"] = token_ids_pair
            tokenized["length_pair"] = token_ids_pair.row_lengths()
        label = batch["label"]
        tokenized["label"] = tf.cast(label, tf.float32 if label.dtype.is_floating else tf.int32)
        return tokenized

    dataset = examples.batch(_EXAMPLES_PER_TOKENIZER_CALL).map(
        tokenize, num_parallel_calls=tf.data.AUTOTUNE
    )
    # Unbatched ragged rows are typed as ragged tensors of ragged rank 0; passing them through a
    # map makes them plain tensors, which padded_batch requires.
    dataset = dataset.unbatch().map(lambda example: example)
    if cache:
        dataset = dataset.cache() if cache is True else dataset.cache(cache)
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer_size, seed=seed)

    boundaries = _padded_lengths(bucket_boundaries, sequence_length)
    boundaries_tensor = tf.constant(boundaries, tf.int32)
    num_special_tokens = 3 if has_text_pair else 2

    def packed_length(example):
        length = example["length"] + num_special_tokens
        if has_text_pair:
            length += example["length_pair"]
        return tf.cast(tf.minimum(length, sequence_length), tf.int32)

    def bucket_index(example):
        return tf.cast(tf.searchsorted(boundaries_tensor, packed_length(example)[tf.newaxis])[0], tf.int64)

    # Batched dense (padded to the longest in the batch) with lengths alongside: padded_batch is
    # about twice as fast in tf.data as ragged_batch, and the ragged rows are rebuilt in `pack`.
    if len(boundaries) == 1:
        dataset = dataset.padded_batch(batch_size, drop_remainder=drop_remainder)
    else:
        dataset = dataset.group_by_window(
            key_func=bucket_index,
            reduce_func=lambda _, window: window.padded_batch(batch_size, drop_remainder=drop_remainder),
            window_size=batch_size,
        )

    def pack(batch):
        token_ids = tf.RaggedTensor.from_tensor(batch["token_ids"], lengths=batch["length"])
        token_ids_pair = None
        if has_text_pair:
            token_ids_pair = tf.RaggedTensor.from_tensor(
                batch["token_ids_pair"], lengths=batch["length_pair"]
            )
        if len(boundaries) == 1:
            length = sequence_length  # a Python int keeps the static shape
        else:
            longest = tf.reduce_max(packed_length(batch))
            length = boundaries_tensor[tf.searchsorted(boundaries_tensor, longest[tf.newaxis])[0]]
        x = preprocessor.pack(token_ids, token_ids_pair, sequence_length=length)
        # Static shapes where they are known, for compilers that want them (XLA on TPU).
        static_shape = [batch_size if drop_remainder else None, length if len(boundaries) == 1 else None]
        x = {key: tf.ensure_shape(value, static_shape) for key, value in x.items()}
        return x, tf.ensure_shape(batch["label"], static_shape[:1])

    dataset = dataset.map(pack, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.with_options(distribution_options(input_context)).prefetch(tf.data.AUTOTUNE)
    return without_autotuning(dataset)
