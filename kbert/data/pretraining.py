"""Masked-LM pretraining data: documents to packed, dynamically masked batches.

    documents --tokenize (parallel, cached)--> token ids per document, [SEP] between documents
              --shuffle documents, concatenate, cut into chunks--> full-length chunks
              --shuffle chunks, batch, [CLS] A [SEP] (B [SEP]), mask (fresh every epoch)--> batches

Chunks are cut from the concatenated token stream, so every sequence is full except the very last
one of the stream: no padding is wasted on short documents (RoBERTa's FULL-SENTENCES packing,
with [SEP] marking document ends). Masking happens after the cache, so each epoch masks each
sequence anew (RoBERTa's dynamic masking).

A corpus prepared by `kbert prepare` (`kbert.data.prepared`) skips the first two steps: its
chunks stream from many shards, shuffled across them, with no cache, and the same batches,
masks and next-sentence pairs follow.
"""

import numpy as np
import tensorflow as tf

from kbert.data.sources import distribution_options, load_documents, without_autotuning
from kbert.tokenizer import SUFFIX_INDICATOR, BertPreprocessor

# Documents tokenized per step, and per block of the stream that is cut into chunks.
_DOCUMENTS_PER_BATCH = 64


def default_num_predictions(sequence_length, mask_selection_rate=0.15):
    """Enough prediction slots for `mask_selection_rate` of a full sequence: 20 for 128, 77 for 512."""
    return int(np.ceil(sequence_length * mask_selection_rate))


class MaskGenerator:
    """Chooses and masks tokens for masked-LM training, as the original BERT does.

    Selects `mask_selection_rate * n` of the `n` maskable tokens of each sequence (never a special
    token), rounded up or down at random so the rate holds on average, at least one and at most
    `num_predictions`; of those, `mask_token_rate` become `[MASK]`,
    `random_token_rate` a random non-special token and the rest stay unchanged. With
    `whole_word_masking`, words (a token and the `##` pieces after it) are selected whole: a word
    crossing the budget is taken with the probability that keeps the expected count on target.

    keras-hub's `MaskedLMMaskGenerator` is not used because it draws each token independently and
    then truncates to the prediction slots, so the selection rate falls below target whenever the
    slots fill, and it has no whole-word option.

    Args:
        tokenizer: the `BertTokenizer` whose vocabulary the ids come from.
        num_predictions: prediction slots per sequence (the static shape of `mask_positions`).
        mask_selection_rate: share of maskable tokens to predict.
        mask_token_rate: share of the selected tokens replaced by `[MASK]`.
        random_token_rate: share of the selected tokens replaced by a random token.
        whole_word_masking: select whole words rather than single word pieces.

    Example:
    >>> masker = MaskGenerator(tokenizer, num_predictions=20)  # doctest: +SKIP
    >>> masked = masker(token_ids, padding_mask, seed=tf.constant([1, 2], tf.int64))  # doctest: +SKIP
    """

    def __init__(
        self,
        tokenizer,
        num_predictions,
        mask_selection_rate=0.15,
        mask_token_rate=0.8,
        random_token_rate=0.1,
        whole_word_masking=False,
    ):
        if isinstance(num_predictions, bool) or not isinstance(num_predictions, int) or num_predictions < 1:
            raise ValueError(
                "Expected num_predictions to be a positive integer (a loss over no predictions is "
                f"undefined). Received: num_predictions={num_predictions!r}"
            )
        if not 0 < mask_selection_rate <= 1:
            raise ValueError(
                f"Expected mask_selection_rate in (0, 1]. Received: mask_selection_rate={mask_selection_rate}"
            )
        if mask_token_rate < 0 or random_token_rate < 0 or mask_token_rate + random_token_rate > 1:
            raise ValueError(
                "Expected mask_token_rate and random_token_rate to be non-negative with a sum of at "
                f"most 1. Received: mask_token_rate={mask_token_rate}, "
                f"random_token_rate={random_token_rate}"
            )
        self.tokenizer = tokenizer
        self.num_predictions = num_predictions
        self.mask_selection_rate = mask_selection_rate
        self.mask_token_rate = mask_token_rate
        self.random_token_rate = random_token_rate
        self.whole_word_masking = whole_word_masking
        special_token_ids = np.array(tokenizer.special_token_ids, dtype=np.int32)
        self._special_token_ids = special_token_ids
        self._random_token_ids = np.setdiff1d(
            np.arange(tokenizer.vocabulary_size, dtype=np.int32), special_token_ids
        )
        self._is_continuation = np.array(
            [token.startswith(SUFFIX_INDICATOR) for token in tokenizer.vocabulary], dtype=bool
        )

    def __call__(self, token_ids, padding_mask, seed):
        """Masks a batch.

        Args:
            token_ids: int32 (batch, sequence_length).
            padding_mask: int32 or bool (batch, sequence_length), 1 on real tokens.
            seed: int32/int64 (2,), the stateless random seed for this batch.

        Returns:
            dict: `token_ids` (masked), and (batch, num_predictions) `mask_positions` (int32, in
            increasing order, 0 on unused slots), `mask_ids` (int32, the original tokens) and
            `mask_weights` (float32, 1 on used slots).
        """
        token_ids = tf.convert_to_tensor(token_ids, tf.int32)
        order_seed, crossing_seed, choice_seed, random_token_seed, rounding_seed = tf.unstack(
            tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=5)
        )
        is_special = tf.reduce_any(token_ids[:, :, tf.newaxis] == self._special_token_ids, axis=-1)
        maskable = tf.cast(padding_mask, tf.bool) & ~is_special
        word_index, num_words, word_lengths = self._words(token_ids, maskable)
        selected = self._select(
            maskable, word_index, num_words, word_lengths, order_seed, crossing_seed, rounding_seed
        )
        masked_token_ids = self._replace(token_ids, selected, choice_seed, random_token_seed)

        positions = tf.broadcast_to(tf.range(tf.shape(token_ids)[1]), tf.shape(token_ids))
        selected_positions = tf.ragged.boolean_mask(positions, selected)
        mask_positions = selected_positions.to_tensor(
            default_value=0, shape=[None, self.num_predictions]
        )
        mask_weights = tf.sequence_mask(
            selected_positions.row_lengths(), self.num_predictions, dtype=tf.float32
        )
        mask_ids = tf.gather(token_ids, mask_positions, batch_dims=1)
        mask_ids = tf.where(mask_weights > 0, mask_ids, 0)
        return {
            "token_ids": masked_token_ids,
            "mask_positions": mask_positions,
            "mask_ids": mask_ids,
            "mask_weights": mask_weights,
        }

    def _words(self, token_ids, maskable):
        """Each maskable token's word, the words per row, and each word's maskable tokens.

        A maskable token starts a word unless it is a ## piece following another maskable
        token. Without whole-word masking every token is a word of its own.

        Returns:
            `word_index` (batch, seq), `num_words` (batch,) and `word_lengths` (batch, seq),
            where `word_lengths[b, w]` counts the tokens of word w of row b (0 past the last).
        """
        batch_size, sequence_length = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
        if self.whole_word_masking:
            is_continuation = tf.gather(self._is_continuation, token_ids)
            previous_maskable = tf.pad(maskable[:, :-1], [[0, 0], [1, 0]])
            word_start = maskable & ~(is_continuation & previous_maskable)
        else:
            word_start = maskable
        word_index = tf.cumsum(tf.cast(word_start, tf.int32), axis=1) - 1  # (batch, seq)
        word_index = tf.maximum(word_index, 0)
        num_words = tf.reduce_sum(tf.cast(word_start, tf.int32), axis=1)  # (batch,)
        row_offsets = tf.range(batch_size)[:, tf.newaxis] * sequence_length
        segment_ids = tf.where(maskable, row_offsets + word_index, batch_size * sequence_length)
        word_lengths = tf.math.unsorted_segment_sum(
            tf.ones([batch_size * sequence_length], tf.int32),
            tf.reshape(segment_ids, [-1]),
            batch_size * sequence_length + 1,
        )
        word_lengths = tf.reshape(word_lengths[:-1], [batch_size, sequence_length])
        return word_index, num_words, word_lengths

    def _select(
        self, maskable, word_index, num_words, word_lengths, order_seed, crossing_seed, rounding_seed
    ):
        """The tokens to predict (batch, seq): whole words in random order, within the budget."""
        batch_size, sequence_length = tf.shape(maskable)[0], tf.shape(maskable)[1]
        num_maskable = tf.reduce_sum(tf.cast(maskable, tf.float32), axis=1)
        # Rounded up or down at random, in proportion, so that the expected count is exactly the
        # rate: BERT's plain rounding under-selects in every full sequence.
        rounding = tf.random.stateless_uniform([batch_size], seed=rounding_seed)
        target = tf.floor(self.mask_selection_rate * num_maskable + rounding)
        target = tf.where(num_maskable > 0, tf.maximum(target, 1.0), 0.0)
        target = tf.minimum(target, float(self.num_predictions))[:, tf.newaxis]  # (batch, 1)

        # Visit words in random order and take them while the budget lasts.
        positions = tf.range(sequence_length)[tf.newaxis, :]
        scores = tf.random.stateless_uniform([batch_size, sequence_length], seed=order_seed)
        scores = tf.where(positions < num_words[:, tf.newaxis], scores, 2.0)
        order = tf.argsort(scores, axis=1)
        sorted_lengths = tf.cast(tf.gather(word_lengths, order, batch_dims=1), tf.float32)
        taken_after = tf.cumsum(sorted_lengths, axis=1)
        taken_before = taken_after - sorted_lengths
        take = (taken_after <= target) & (sorted_lengths > 0)
        crossing = (taken_before < target) & (taken_after > target)
        crossing_probability = (target - taken_before) / tf.maximum(sorted_lengths, 1.0)
        take |= (
            crossing
            & (tf.random.stateless_uniform(tf.shape(scores), seed=crossing_seed) < crossing_probability)
            & (taken_after <= self.num_predictions)
        )
        word_taken = tf.gather(take, tf.argsort(order, axis=1), batch_dims=1)  # back to word order
        return maskable & tf.gather(word_taken, word_index, batch_dims=1)

    def _replace(self, token_ids, selected, choice_seed, random_token_seed):
        """`token_ids` with the selected tokens made [MASK], a random token, or kept."""
        choice = tf.random.stateless_uniform(tf.shape(token_ids), seed=choice_seed)
        use_mask_token = selected & (choice < self.mask_token_rate)
        use_random_token = (
            selected & ~use_mask_token & (choice < self.mask_token_rate + self.random_token_rate)
        )
        random_tokens = tf.gather(
            self._random_token_ids,
            tf.random.stateless_uniform(
                tf.shape(token_ids),
                seed=random_token_seed,
                maxval=len(self._random_token_ids),
                dtype=tf.int32,
            ),
        )
        masked_token_ids = tf.where(use_mask_token, self.tokenizer.mask_token_id, token_ids)
        return tf.where(use_random_token, random_tokens, masked_token_ids)


def _cut_into_chunks(blocks, chunk_length):
    """Concatenates 1-D token blocks and cuts them into `(chunk, length)` pairs.

    Every chunk is `chunk_length` long except the stream's last, which is zero-padded with its real
    length given. Written with `scan` because tf.data has no op that re-batches a stream of
    variable-length blocks into fixed-length pieces without going through single tokens.
    """
    end = tf.data.Dataset.from_tensors((tf.zeros([0], tf.int32), True))
    blocks = blocks.map(lambda block: (block, False)).concatenate(end)

    def cut(carry, element):
        block, is_end = element
        stream = tf.concat([carry, block], axis=0)
        num_chunks = tf.size(stream) // chunk_length
        used = num_chunks * chunk_length
        chunks = tf.reshape(stream[:used], [num_chunks, chunk_length])
        lengths = tf.fill([num_chunks], chunk_length)
        rest = stream[used:]
        if_flush = is_end & (tf.size(rest) > 0)
        last = tf.pad(rest, [[0, chunk_length - tf.size(rest)]])[tf.newaxis]
        chunks = tf.cond(if_flush, lambda: tf.concat([chunks, last], 0), lambda: chunks)
        lengths = tf.cond(
            if_flush, lambda: tf.concat([lengths, tf.size(rest)[tf.newaxis]], 0), lambda: lengths
        )
        carry = tf.cond(is_end, lambda: tf.zeros([0], tf.int32), lambda: rest)
        return carry, (chunks, lengths)

    chunks = blocks.scan(tf.zeros([0], tf.int32), cut)
    return chunks.unbatch()


def _batch_seeds(shuffle, seed, first_batch=None, pipeline=0):
    """A dataset of one stateless (2,) seed per batch, for the masks and the pairing.

    With `first_batch` (a prepared corpus' stream), batch `b`'s seed is a function of the seed,
    the input pipeline and `b` alone, so a stream that starts at `first_batch` masks as the
    whole stream would from there.
    """
    if first_batch is not None:
        base = tf.random.experimental.stateless_fold_in(
            tf.constant([seed or 0, 0], tf.int64), pipeline
        )
        return tf.data.Dataset.counter(first_batch).map(
            lambda index: tf.random.experimental.stateless_fold_in(base, index)
        )
    if shuffle:
        # Different every epoch, reproducible from `seed`.
        return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    # Evaluation: the same masks on every pass and in every process, whatever the global
    # seed (which `Dataset.random` would mix in): (seed, batch number).
    return tf.data.Dataset.counter(dtype=tf.int64).map(
        lambda index: tf.stack([tf.constant(seed or 0, tf.int64), index])
    )


def pretraining_dataset(
    source,
    tokenizer,
    batch_size,
    sequence_length=128,
    num_predictions=None,
    mask_selection_rate=0.15,
    mask_token_rate=0.8,
    random_token_rate=0.1,
    whole_word_masking=False,
    next_sentence_prediction=False,
    split="train",
    text_key="text",
    data_dir=None,
    shuffle=True,
    seed=None,
    shuffle_buffer_size=10_000,
    cache=True,
    drop_remainder=False,
    input_context=None,
    skip_batches=0,
):
    """Packed, dynamically masked batches for `BertMaskedLM`.

    Args:
        source: `.txt` file(s), a TFDS dataset name, or a `tf.data.Dataset` of documents (see
            `kbert.data.load_documents`); or a corpus `kbert prepare` wrote (its directory, or
            the name of a prepared TFDS dataset), read as an endless stream when shuffled.
        tokenizer: a `BertTokenizer`.
        batch_size: the global batch size (divided among replicas under `input_context`).
        sequence_length: tokens per sequence, [CLS] and [SEP] included.
        num_predictions: masked positions per sequence; defaults to
            `ceil(mask_selection_rate * sequence_length)`.
        mask_selection_rate: share of tokens to predict.
        mask_token_rate: share of predicted tokens shown as `[MASK]`.
        random_token_rate: share of predicted tokens shown as a random token.
        whole_word_masking: mask all pieces of a word together.
        next_sentence_prediction: split each chunk into `A [SEP] B` and, for half of them, replace
            B by the same span of another sequence of the batch; labels are 0 for the real next
            segment and 1 for a random one, as in the original BERT.
        split: the split of `source` to read.
        text_key: the text feature of a named TFDS dataset.
        data_dir: the TFDS data directory.
        shuffle: shuffle documents and sequences, and mask anew, every epoch; without it the
            batches and their masks are the same on every pass (for evaluation).
        seed: seed for shuffling and masking; the same seed gives the same batches.
        shuffle_buffer_size: sequences in the shuffle buffer.
        cache: keep the tokenized documents in memory (`True`) or in files at this path prefix,
            so later epochs do not tokenize again.
        drop_remainder: drop the last, smaller batch (for static batch shapes).
        input_context: a `tf.distribute.InputContext`: this worker reads its share of the
            documents (of a prepared corpus: of its shards) and batches
            `input_context.get_per_replica_batch_size(batch_size)`.
        skip_batches: start this many batches into the endless training stream (the data
            repeated), for resuming a run. A prepared corpus skips whole shards unread and
            reads only the rest of the current window of shards; text is read from the start.

    Returns:
        `tf.data.Dataset` of `(x, y, sample_weight)`. `x` holds int32 `token_ids`, `segment_ids`,
        `padding_mask` (batch, sequence_length) and `mask_positions` (batch, num_predictions);
        `y` is `mask_ids` (int32) and `sample_weight` `mask_weights` (float32), both
        (batch, num_predictions). With `next_sentence_prediction`, `y` and `sample_weight` are
        dicts keyed `"mlm"` and `"nsp"` (labels (batch,) int32, weights (batch,) float32),
        matching `BertMaskedLM(next_sentence_prediction=True)`.
    """
    num_special_tokens = 3 if next_sentence_prediction else 2
    if sequence_length <= num_special_tokens + 1:
        raise ValueError(
            f"Expected sequence_length above {num_special_tokens + 1}. "
            f"Received: sequence_length={sequence_length}"
        )
    if num_predictions is None:
        num_predictions = default_num_predictions(sequence_length, mask_selection_rate)
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    chunk_length = sequence_length - num_special_tokens
    preprocessor = BertPreprocessor(tokenizer, sequence_length)
    masker = MaskGenerator(
        tokenizer,
        num_predictions,
        mask_selection_rate=mask_selection_rate,
        mask_token_rate=mask_token_rate,
        random_token_rate=random_token_rate,
        whole_word_masking=whole_word_masking,
    )
    separator = tf.constant([[tokenizer.sep_token_id]], tf.int32)

    prepared = None
    if not isinstance(source, tf.data.Dataset):
        from kbert.data.prepared import open_prepared

        prepared = open_prepared(source, split, data_dir)
    if prepared is not None:
        prepared.check(tokenizer, sequence_length, next_sentence_prediction)
        chunks = prepared.chunks(
            shuffle=shuffle, seed=seed, input_context=input_context,
            skip_chunks=skip_batches * batch_size, shuffle_buffer_size=shuffle_buffer_size,
        )
        # The shuffled stream is endless, so every batch is full and a resumed stream's batches
        # line up with the uninterrupted one's.
        batches = chunks.batch(batch_size, drop_remainder=drop_remainder or shuffle)
        pipeline = input_context.input_pipeline_id if input_context is not None else 0
        seeds = _batch_seeds(shuffle, seed, first_batch=skip_batches if shuffle else None,
                             pipeline=pipeline)
        if not shuffle:
            seeds = seeds.skip(skip_batches)
        return _masked_batches(
            tf.data.Dataset.zip(batches, seeds), preprocessor, masker,
            next_sentence_prediction, input_context,
        )

    def tokenize(documents):
        token_ids = tokenizer(documents)
        token_ids = tf.ragged.boolean_mask(token_ids, token_ids.row_lengths() > 0)
        separators = tf.RaggedTensor.from_tensor(tf.tile(separator, [token_ids.nrows(), 1]))
        return tf.concat([token_ids, separators], axis=1)

    documents = load_documents(
        source, split=split, data_dir=data_dir, text_key=text_key, input_context=input_context
    )
    token_ids = documents.batch(_DOCUMENTS_PER_BATCH).map(tokenize, num_parallel_calls=tf.data.AUTOTUNE)
    token_ids = token_ids.unbatch()
    if cache:
        token_ids = token_ids.cache() if cache is True else token_ids.cache(cache)
    if shuffle:
        token_ids = token_ids.shuffle(max(shuffle_buffer_size // 8, 1), seed=seed)
    blocks = token_ids.ragged_batch(_DOCUMENTS_PER_BATCH).map(lambda ids: ids.flat_values)
    chunks = _cut_into_chunks(blocks, chunk_length)
    if shuffle:
        chunks = chunks.shuffle(shuffle_buffer_size, seed=seed)
    batches = chunks.batch(batch_size, drop_remainder=drop_remainder)
    batches = tf.data.Dataset.zip(batches, _batch_seeds(shuffle, seed))
    if skip_batches:
        batches = batches.repeat().skip(skip_batches)
    return _masked_batches(batches, preprocessor, masker, next_sentence_prediction, input_context)


def _masked_batches(batches, preprocessor, masker, next_sentence_prediction, input_context):
    """`(x, y, sample_weight)` of `((chunks, lengths), seed)` batches: packed and masked."""

    def make_example(chunk_batch, seed):
        chunks, lengths = chunk_batch
        pairing_seed, split_seed, masking_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, num=3)
        )
        if next_sentence_prediction:
            segments, next_sentence_labels = _pair_segments(chunks, lengths, pairing_seed, split_seed)
            packed = preprocessor.pack(*segments)
        else:
            packed = preprocessor.pack(tf.RaggedTensor.from_tensor(chunks, lengths=lengths))
        masked = masker(packed["token_ids"], packed["padding_mask"], masking_seed)
        x = {
            "token_ids": masked["token_ids"],
            "segment_ids": packed["segment_ids"],
            "padding_mask": packed["padding_mask"],
            "mask_positions": masked["mask_positions"],
        }
        if not next_sentence_prediction:
            return x, masked["mask_ids"], masked["mask_weights"]
        y = {"mlm": masked["mask_ids"], "nsp": next_sentence_labels}
        sample_weight = {
            "mlm": masked["mask_weights"],
            "nsp": tf.ones_like(next_sentence_labels, tf.float32),
        }
        return x, y, sample_weight

    dataset = batches.map(make_example, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.with_options(distribution_options(input_context)).prefetch(tf.data.AUTOTUNE)
    return without_autotuning(dataset)


def _pair_segments(chunks, lengths, pairing_seed, split_seed):
    """Splits each chunk into segments A and B; for about half, B comes from another row.

    A random B is the same span (positions split..length) of the next row of the shuffled batch,
    so real and random pairs have the same lengths and only their content tells them apart.
    Returns `((a, b), labels)` with ragged int32 segments and int32 labels (1: random B).
    """
    batch_size, chunk_length = tf.shape(chunks)[0], tf.shape(chunks)[1]
    # Split points in [1, length - 1], so that A is never empty (nor B, for chunks of 2+ tokens).
    uniform = tf.random.stateless_uniform([batch_size], seed=split_seed)
    split_points = 1 + tf.cast(uniform * tf.cast(tf.maximum(lengths - 1, 1), tf.float32), tf.int32)
    split_points = tf.minimum(split_points, tf.maximum(lengths - 1, 1))
    is_random = tf.random.stateless_uniform([batch_size], seed=pairing_seed) < 0.5
    is_random &= batch_size > 1  # a batch of one has no other row to borrow from
    other_chunks = tf.roll(chunks, shift=1, axis=0)
    other_lengths = tf.roll(lengths, shift=1, axis=0)

    positions = tf.range(chunk_length)[tf.newaxis, :]
    in_a = positions < split_points[:, tf.newaxis]
    b_end = tf.where(is_random, tf.minimum(lengths, other_lengths), lengths)
    in_b = ~in_a & (positions < b_end[:, tf.newaxis])
    b_source = tf.where(is_random[:, tf.newaxis], other_chunks, chunks)
    a = tf.ragged.boolean_mask(chunks, in_a & (positions < lengths[:, tf.newaxis]))
    b = tf.ragged.boolean_mask(b_source, in_b)
    return (a, b), tf.cast(is_random, tf.int32)
