"""The token classification task: `BertTokenClassifier` tagging words (named entities, ...).

Data are CoNLL-style files (`kbert.data.conll`); a word's tag labels its first word piece.
The metric is entity-level precision, recall and F1 (`kbert.tagging`), with figures per
entity type. Its settings, saved in the model directory, name the tags, their scheme and
the tag column.

The export reads raw text and returns entities as Hugging Face's token-classification
pipeline does with `aggregation_strategy="first"`: a word is what BERT's basic tokenizer
calls a word, its tag is the one predicted on its first piece (score: that tag's
probability), and consecutive words form an entity as `conlleval` reads their tags (score:
the mean of its words' scores). `start` and `end` are character offsets into the input (code
points, as Python indexes a `str`); a text longer than the model's sequence is tagged on its
first `sequence_length - 2` pieces.
"""

import math

import keras

from kbert import tagging
from kbert.tasks import Finetuning, Task


class TokenClassificationTask(Task):
    """Token classification; see the module docstring.

    Settings: `name` ("token_classification" or "conll2003"), `label_names` (the tags in id
    order), `num_classes`, `scheme` (of the tags), `tag_column`.
    """

    name = "token_classification"
    model_class_name = "BertTokenClassifier"
    learning_rate = 5e-5
    aliases = ("conll2003",)
    # Its per-token probabilities cover every position of the batch.
    padded_position_endpoints = ("serve_token_ids",)

    # === Model ===

    def build_model(self, backbone, dropout=0.1, num_classes=None):
        """A `BertTokenClassifier` of `num_classes` (default: the settings') tags."""
        from kbert.token_classifier import BertTokenClassifier

        num_classes = num_classes or self.settings["num_classes"]
        # Tags read the sequence output only: the pooler, frozen, gets no optimizer slots (nor
        # Keras' warning that it has no gradients).
        backbone.pooled_dense.trainable = False
        return BertTokenClassifier(backbone, num_classes=num_classes, dropout=dropout)

    def source_options(self, tag_column=None, tag_scheme=None, label_names=None):
        """How files are read: given options, else the saved ones, else CoNLL-2003's or defaults."""
        from kbert.data.conll import CONLL2003_TAGS

        conll2003 = self.settings.get("name") == "conll2003"
        if label_names is None:
            label_names = self.settings.get("label_names") or (CONLL2003_TAGS if conll2003 else None)
        if tag_column is None:
            tag_column = self.settings.get("tag_column", -1)
        if tag_scheme is None:
            tag_scheme = self.settings.get("scheme", "IOB2")
        return dict(tag_column=tag_column, scheme=tag_scheme, label_names=label_names)

    def prepare_finetuning(self, init, data, tokenizer, seed=0):
        """Tagged sentences of `data.train` and `data.validation`, in batches."""
        from kbert.data.conll import load_tagged_sentences, tagging_dataset
        from kbert.tokenizer import BertPreprocessor

        options = self.source_options(
            getattr(data, "tag_column", None), getattr(data, "tag_scheme", None), data.label_names
        )
        train = load_tagged_sentences(data.train, split=data.train_split, data_dir=data.data_dir, **options)
        # Validation tags must mean what training tags mean.
        options["label_names"] = train.label_names
        self.settings = {
            "name": self.settings.get("name", self.name),
            "label_names": list(train.label_names),
            "num_classes": len(train.label_names),
            "scheme": options["scheme"],
            "tag_column": options["tag_column"],
        }
        preprocessor = BertPreprocessor(tokenizer, sequence_length=data.sequence_length)
        boundaries = "auto" if data.bucket else None

        def train_data(input_context=None):
            return tagging_dataset(
                data.train, preprocessor, data.batch_size, split=data.train_split, seed=seed,
                bucket_boundaries=boundaries, input_context=input_context, data_dir=data.data_dir,
                **options,
            )

        def validation_data(input_context=None):
            return tagging_dataset(
                data.validation, preprocessor, data.batch_size, split=data.validation_split,
                shuffle=False, bucket_boundaries=boundaries, input_context=input_context,
                data_dir=data.data_dir, **options,
            )

        steps_per_epoch = math.ceil(train.num_examples / data.batch_size)
        validation = validation_data if data.validation is not None else None
        return Finetuning(train_data, validation, steps_per_epoch, self.settings)

    # === Loss and metrics ===

    def compile_defaults(self, model):
        # Averaged over the weighted tokens (each word's first piece), as Hugging Face averages
        # over the labels it does not ignore.
        loss = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"
        )
        return dict(loss=loss, weighted_metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy")])

    def compile_arguments(self, model, optimizer="auto", metrics="auto", weighted_metrics="auto", **given):
        # Metrics given are weighted ones here: only first pieces count.
        if not (isinstance(metrics, str) and metrics == "auto"):
            weighted_metrics = metrics
        return super().compile_arguments(
            model, optimizer=optimizer, weighted_metrics=weighted_metrics, **given
        )

    # === Evaluation ===

    def evaluation_dataset(self, model, tokenizer, data, sequence_length, batch_size, split=None,
                           data_dir=None, tag_column=None, tag_scheme=None, **unused_options):
        """Tagged sentences read with the tags and column the model was trained on."""
        from kbert.data.conll import tagging_dataset
        from kbert.tokenizer import BertPreprocessor

        del model, unused_options  # column options of other tasks
        preprocessor = BertPreprocessor(tokenizer, sequence_length=sequence_length)
        return tagging_dataset(
            data, preprocessor, batch_size, split=split or "validation", shuffle=False,
            data_dir=data_dir, **self.source_options(tag_column, tag_scheme),
        )

    def evaluate(self, model, dataset, compile=True):
        """Entity-level precision, recall and F1 (and per type), and token accuracy.

        Computed over the whole dataset at once: entity F1 is not a mean over batches.
        """
        import numpy as np

        from kbert.data.conll import tags_of_batch

        label_names = self.settings["label_names"]
        true_tags, predicted_tags = [], []
        correct = total = 0
        for x, labels, sample_weight in dataset:
            predictions = np.argmax(np.asarray(model(x, training=False)), axis=-1)
            true_tags += tags_of_batch(labels, sample_weight, label_names)
            predicted_tags += tags_of_batch(predictions, sample_weight, label_names)
            weight = np.asarray(sample_weight) > 0
            correct += int(np.sum((predictions == np.asarray(labels)) & weight))
            total += int(np.sum(weight))
        scores = tagging.entity_scores(true_tags, predicted_tags)
        scores["accuracy"] = correct / total if total else 0.0
        return scores

    # === Serving ===

    def serving_endpoints(self, model, preprocessor, top_k=5, text_pair=None):
        """`serving_default` (text -> entities) and `serve_token_ids` (per-token probabilities)."""
        from kbert import signatures

        label_names = self.settings.get("label_names") or [str(i) for i in range(model.num_classes)]

        def from_text(text):
            return entities_of_text(model, preprocessor, text, label_names)

        def from_token_ids(token_ids, segment_ids, padding_mask):
            inputs = signatures.checked_token_id_inputs(
                model.backbone, token_ids, segment_ids, padding_mask
            )
            return token_probabilities(model, inputs, label_names)

        return signatures.predict_endpoints(from_text, from_token_ids)

    def rows(self, outputs, batch_size):
        """One list of entities per input: `text`, `label`, `start`, `end`, `score`."""
        return [
            [
                {name: outputs[name][index][entity] for name in ("text", "label", "start", "end", "score")}
                for entity in range(outputs["num_entities"][index])
            ]
            for index in range(batch_size)
        ]


# === In-graph entities ===


def words_with_offsets(tokenizer, text):
    """BERT's words of `text` with their byte offsets, and each word's pieces.

    The words are split where `kbert.tokenizer.basic_tokenize` splits them (whitespace,
    punctuation and CJK characters), on the text as given, so each keeps its place in it;
    the tokenizer then cleans, lowercases and WordPiece-splits each word on its own, which
    gives the pieces it gives the whole text. Words it reduces to nothing are left out.

    Returns:
        `(text, pieces, starts, ends)`: the text with invalid UTF-8 replaced, int32 ragged
        pieces (batch, (words), (pieces)) and the words' int64 byte offsets (batch, (words)).
    """
    import tensorflow as tf
    import tensorflow_text as tf_text

    from kbert import tokenizer as tokenizer_lib

    text = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD)
    kept = f"{tokenizer_lib._PUNCTUATION}|{tokenizer_lib._CJK_CHARACTERS}"
    words, starts, ends = tf_text.regex_split_with_offsets(
        text, delim_regex_pattern=f"{tokenizer_lib._WHITESPACE}|{kept}", keep_delim_regex_pattern=kept
    )
    pieces = words.with_flat_values(tokenizer(words.flat_values))  # (batch, (words), (pieces))
    nonempty = pieces.row_lengths(axis=2) > 0
    return (
        text,
        tf.ragged.boolean_mask(pieces, nonempty),
        tf.ragged.boolean_mask(starts, nonempty),
        tf.ragged.boolean_mask(ends, nonempty),
    )


def _tag_tables(label_names):
    """Per tag id: its prefix id (`kbert.tagging.PREFIX_IDS`, 5 for others), type id; type names."""
    types = sorted({tagging.split_tag(tag)[1] for tag in (*label_names, tagging.OUTSIDE)})
    prefixes = [tagging.PREFIX_IDS.get(tagging.split_tag(tag)[0], 5) for tag in label_names]
    return prefixes, [types.index(tagging.split_tag(tag)[1]) for tag in label_names], types


def entity_boundaries(prefixes, types, outside_type):
    """Where entities start and end, by `kbert.tagging`'s rules, on padded word tags.

    Args:
        prefixes: int32 (batch, words) prefix ids (`kbert.tagging.PREFIX_IDS`), padding
            words as O.
        types: int32 (batch, words) type ids, padding words with O's.
        outside_type: the type id of O.

    Returns:
        `(starts, ends)`: bool (batch, words), whether an entity starts at a word, and
        whether one ends at it (before the next word).
    """
    import tensorflow as tf

    outside, begin, inside, end, single = (tagging.PREFIX_IDS[key] for key in "OBIES")
    # O before the first word and after the last, as `tagging.entity_spans` reads a sentence.
    previous_prefixes = tf.pad(prefixes[:, :-1], [[0, 0], [1, 0]], constant_values=outside)
    previous_types = tf.pad(types[:, :-1], [[0, 0], [1, 0]], constant_values=outside_type)
    next_prefixes = tf.pad(prefixes[:, 1:], [[0, 0], [0, 1]], constant_values=outside)
    next_types = tf.pad(types[:, 1:], [[0, 0], [0, 1]], constant_values=outside_type)

    def among(values, choices):
        return tf.reduce_any(tf.stack([values == choice for choice in choices]), axis=0)

    # tagging.chunk_starts(previous word, word)
    starts = (prefixes != outside) & (
        among(prefixes, (begin, single))
        | (previous_types != types)
        | among(previous_prefixes, (end, single, outside)) & among(prefixes, (end, inside))
    )
    # tagging.chunk_ends(word, next word)
    ends = (prefixes != outside) & (
        among(prefixes, (end, single))
        | (types != next_types)
        | among(prefixes, (begin, inside)) & among(next_prefixes, (begin, single, outside))
    )
    return starts, ends


def _character_offsets(text, byte_offsets):
    """Byte offsets into UTF-8 `text` (batch,) as character offsets, ragged (batch, (n))."""
    import tensorflow as tf

    _, character_starts = tf.strings.unicode_decode_with_offsets(text, "UTF-8")
    # The characters that start before a byte offset are the characters before it.
    sorted_starts = character_starts.to_tensor(default_value=tf.int64.max)
    offsets = tf.searchsorted(sorted_starts, byte_offsets.to_tensor(), side="left")
    return tf.RaggedTensor.from_tensor(tf.cast(offsets, tf.int32), lengths=byte_offsets.row_lengths())


def entities_of_text(model, preprocessor, text, label_names):
    """The `serving_default` outputs: the entities of each text, padded to the most of the batch.

    Returns:
        dict: `text` (the entity's characters) and `label` string, `start` and `end` int32
        character offsets, `score` float32, all (batch, entities), and `num_entities` int32
        (batch,). Padding entities have label "", start and end -1 and score 0.
    """
    import tensorflow as tf

    text, pieces, byte_starts, byte_ends = words_with_offsets(preprocessor.tokenizer, text)
    num_pieces = preprocessor.sequence_length - 2
    # The position of each word's first piece after [CLS]; words past the sequence are cut.
    first_positions = 1 + tf.cast(tf.cumsum(pieces.row_lengths(axis=2), axis=1, exclusive=True), tf.int32)
    kept = first_positions <= num_pieces
    first_positions, byte_starts, byte_ends = (
        tf.ragged.boolean_mask(values, kept) for values in (first_positions, byte_starts, byte_ends)
    )
    inputs = preprocessor.pack(pieces.merge_dims(1, 2), pad_to_longest=True)
    logits = model(inputs, training=False)  # (batch, length, num_classes), float32
    probabilities = tf.gather(tf.nn.softmax(logits, axis=-1), first_positions.to_tensor(), batch_dims=1)
    word_tags = tf.argmax(probabilities, axis=-1, output_type=tf.int32)  # (batch, words)
    word_scores = tf.reduce_max(probabilities, axis=-1)
    is_word = tf.sequence_mask(first_positions.row_lengths(), tf.shape(word_tags)[1])
    prefix_table, type_table, type_names = _tag_tables(label_names)
    outside_type = type_names.index("_")
    prefixes = tf.where(is_word, tf.gather(prefix_table, word_tags), 0)
    types = tf.where(is_word, tf.gather(type_table, word_tags), outside_type)
    starts, ends = entity_boundaries(prefixes, types, outside_type)
    word_indexes = tf.broadcast_to(tf.range(tf.shape(word_tags)[1]), tf.shape(word_tags))
    first_words = tf.ragged.boolean_mask(word_indexes, starts)  # (batch, (entities))
    last_words = tf.ragged.boolean_mask(word_indexes, ends)

    def at_words(values, indexes):
        return tf.gather(values, indexes.to_tensor(), batch_dims=1)

    padded_byte_starts, padded_byte_ends = byte_starts.to_tensor(), byte_ends.to_tensor()
    scores_sum = tf.cumsum(tf.where(is_word, word_scores, 0.0), axis=1)
    entity_byte_starts = at_words(padded_byte_starts, first_words)
    entity_byte_ends = at_words(padded_byte_ends, last_words)
    num_words = tf.cast(last_words.to_tensor() - first_words.to_tensor() + 1, tf.float32)
    scores = (at_words(scores_sum, last_words) - at_words(scores_sum, first_words)
              + at_words(tf.where(is_word, word_scores, 0.0), first_words)) / num_words
    num_entities = tf.cast(first_words.row_lengths(), tf.int32)
    present = tf.sequence_mask(num_entities, tf.shape(entity_byte_starts)[1])
    labels = tf.gather(tf.constant(type_names), at_words(types, first_words))
    entity_text = tf.strings.substr(
        tf.broadcast_to(text[:, tf.newaxis], tf.shape(entity_byte_starts)),
        entity_byte_starts, entity_byte_ends - entity_byte_starts,
    )
    return {
        "text": tf.where(present, entity_text, ""),
        "label": tf.where(present, labels, ""),
        "start": tf.where(present, _dense_characters(text, entity_byte_starts, num_entities), -1),
        "end": tf.where(present, _dense_characters(text, entity_byte_ends, num_entities), -1),
        "score": tf.where(present, scores, 0.0),
        "num_entities": num_entities,
    }


def _dense_characters(text, byte_offsets, num_entities):
    import tensorflow as tf

    ragged = tf.RaggedTensor.from_tensor(byte_offsets, lengths=num_entities)
    return _character_offsets(text, ragged).to_tensor(shape=tf.shape(byte_offsets))


def token_probabilities(model, inputs, label_names):
    """The `serve_token_ids` outputs: per-token `probabilities` (batch, sequence, num_classes),
    and the most likely tag's `label_id` int32 and `label` string (batch, sequence)."""
    import tensorflow as tf

    probabilities = tf.nn.softmax(model(inputs, training=False), axis=-1)
    label_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    return {
        "probabilities": probabilities,
        "label_id": label_id,
        "label": tf.gather(tf.constant(list(label_names)), label_id),
    }
