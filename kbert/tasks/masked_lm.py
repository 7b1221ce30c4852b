"""The masked-LM task: BERT pretraining (`BertMaskedLM`, with an optional next-sentence head).

Inputs are `token_ids`, `segment_ids`, `padding_mask` and `mask_positions`; targets the ids
of the masked tokens, weighted by `mask_weights` so that padded prediction slots do not count
(`kbert.data.pretraining_dataset`). It serves `fill_mask`: the likeliest tokens at each
`[MASK]` of a text.
"""

import keras

from kbert.tasks import Task

# Every evaluation masks the same positions with this seed, so that scores compare.
EVALUATION_SEED = 1234


class MaskedLMTask(Task):
    """Masked-LM pretraining; see the module docstring."""

    name = "masked_lm"
    model_class_name = "BertMaskedLM"
    learning_rate = 1e-4

    # === Model ===

    def build_model(self, backbone, dropout=None):
        """A `BertMaskedLM`, with the next-sentence head where the settings ask for it.

        The dropout is the backbone's: a masked LM has no layers of its own that drop.
        """
        from kbert.masked_lm import BertMaskedLM

        return BertMaskedLM(
            backbone, next_sentence_prediction=self.settings.get("next_sentence_prediction", False)
        )

    def datasets(self, data, tokenizer, seed=0):
        """Training and validation batches of a `kbert.config.DataConfig` (see
        `kbert.data.pretraining_dataset`)."""
        from kbert.data import pretraining_dataset

        data_options = dict(
            tokenizer=tokenizer, batch_size=data.batch_size, sequence_length=data.sequence_length,
            num_predictions=data.num_predictions, whole_word_masking=data.whole_word_masking,
            next_sentence_prediction=self.settings.get("next_sentence_prediction", False),
            text_key=data.text_key, data_dir=data.data_dir,
        )

        def train_data(input_context=None, skip_batches=0):
            # A prepared corpus resumes by position; text is read through from the start.
            return pretraining_dataset(
                data.train, split=data.train_split, seed=seed, input_context=input_context,
                skip_batches=skip_batches, **data_options
            )

        def validation_data(input_context=None):
            return pretraining_dataset(
                data.validation, split=data.validation_split, shuffle=False, seed=EVALUATION_SEED,
                input_context=input_context, **data_options
            ).take(data.validation_steps)

        return train_data, validation_data if data.validation is not None else None

    # === Loss and metrics ===

    def compile_defaults(self, model):
        from kbert import losses
        from kbert.metrics import masked_lm_metrics

        if not model.next_sentence_prediction:
            return dict(loss=losses.SparseCategoricalCrossentropy(), weighted_metrics=masked_lm_metrics())
        return dict(
            loss={"mlm": losses.SparseCategoricalCrossentropy(), "nsp": losses.SparseCategoricalCrossentropy()},
            weighted_metrics={
                "mlm": masked_lm_metrics(),
                "nsp": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            },
        )

    # === Evaluation ===

    def evaluation_dataset(self, model, tokenizer, data, sequence_length, batch_size, split=None,
                           data_dir=None, **unused_options):
        """Held-out text masked as in training, the same positions on every call."""
        from kbert.data import pretraining_dataset

        if model.next_sentence_prediction:
            raise ValueError(
                "Expected a masked LM without a next-sentence head to evaluate. "
                "Received: next_sentence_prediction=True"
            )
        return pretraining_dataset(
            data, tokenizer, batch_size, split=split or "train", data_dir=data_dir,
            sequence_length=sequence_length, shuffle=False, seed=EVALUATION_SEED,
            num_predictions=model.input["mask_positions"].shape[1], cache=False,
        )

    def evaluate(self, model, dataset, compile=True):
        """Masked-LM loss and accuracy, next to the unigram baseline's accuracy.

        The baseline is the best constant guess, the most frequent masked token.
        """
        metrics = super().evaluate(model, dataset, compile=compile)
        metrics["unigram_baseline_accuracy"] = _most_frequent_target_share(dataset)
        return metrics

    # === Serving ===

    def serving_endpoints(self, model, preprocessor, top_k=5, text_pair=None):
        """`fill_mask` (also as `serving_default`): the `top_k` likeliest tokens per `[MASK]`."""
        import tensorflow as tf

        from kbert.signatures import FILL_MASK, MASK_TOKEN, PREDICT_METHOD, SERVING_DEFAULT

        tokenizer = preprocessor.tokenizer
        vocabulary = tf.constant(tokenizer.vocabulary)
        special_token_ids = [
            tokenizer.pad_token_id,
            tokenizer.cls_token_id,
            tokenizer.sep_token_id,
            tokenizer.mask_token_id,
        ]
        special_token_weights = tf.tensor_scatter_nd_update(
            tf.ones([model.backbone.vocabulary_size]),
            [[token_id] for token_id in special_token_ids],
            tf.zeros([len(special_token_ids)]),
        )
        top_k = min(top_k, model.backbone.vocabulary_size - len(special_token_ids))

        def fill_mask(text):
            # `[MASK]` is cut out of the string before tokenization, so that neither lowercasing
            # nor punctuation splitting can break it up, and its id is put back between the pieces.
            pieces = tf.strings.split(text, MASK_TOKEN)  # (batch, (pieces))
            piece_ids = tokenizer(pieces.flat_values)  # (pieces, (tokens))
            # Every piece but the last of its text was followed by a [MASK].
            piece_index = tf.range(tf.size(pieces.flat_values, out_type=tf.int64))
            last_piece = tf.gather(pieces.row_limits(), pieces.value_rowids()) - 1
            followed_by_mask = piece_index != last_piece
            mask_ids = tf.RaggedTensor.from_row_lengths(
                tf.fill([tf.reduce_sum(tf.cast(followed_by_mask, tf.int32))], tokenizer.mask_token_id),
                tf.cast(followed_by_mask, tf.int64),
            )
            piece_ids = tf.concat([piece_ids, mask_ids], axis=1)
            token_ids = tf.RaggedTensor.from_row_lengths(piece_ids, pieces.row_lengths())
            inputs = preprocessor.pack(token_ids.merge_dims(1, 2), pad_to_longest=True)  # (batch, longest)
            sequence_length = tf.shape(inputs["token_ids"])[1]
            positions = tf.ragged.boolean_mask(
                tf.broadcast_to(tf.range(sequence_length), tf.shape(inputs["token_ids"])),
                inputs["token_ids"] == tokenizer.mask_token_id,
            )  # (batch, (masks))
            # The largest count of masks in a row; 0 for a batch of none (or of no texts).
            num_masks = tf.cast(tf.reduce_max(tf.concat([positions.row_lengths(), [0]], 0)), tf.int32)
            # The model is asked for at least one position, so that a batch without any [MASK]
            # still has a shape it runs; the outputs keep only `num_masks` of them.
            positions = positions.to_tensor(default_value=-1)  # (batch, masks); -1 pads short rows
            positions = tf.pad(
                positions, [[0, 0], [0, tf.maximum(1 - num_masks, 0)]], constant_values=-1
            )  # (batch, max(masks, 1))
            logits = model(dict(inputs, mask_positions=tf.maximum(positions, 0)), training=False)
            if isinstance(logits, dict):
                logits = logits["mlm"]  # (batch, masks, vocabulary_size)
            probabilities = tf.nn.softmax(logits, axis=-1)
            # The scores stay the model's probabilities; special tokens are only never proposed.
            scores, candidate_ids = tf.math.top_k(probabilities * special_token_weights, k=top_k)
            is_mask = (positions >= 0)[:, :, None]
            outputs = {
                "mask_positions": positions,
                "token_ids": tf.where(is_mask, candidate_ids, -1),
                "tokens": tf.where(is_mask, tf.gather(vocabulary, candidate_ids), ""),
                "scores": tf.where(is_mask, scores, 0.0),
            }
            return {name: value[:, :num_masks] for name, value in outputs.items()}

        return {
            SERVING_DEFAULT: (fill_mask, ("text",), PREDICT_METHOD),
            FILL_MASK: (fill_mask, ("text",), PREDICT_METHOD),
        }

    def rows(self, outputs, batch_size):
        """One dict per text; padded mask slots (position -1) are left out."""
        rows = []
        for row in super().rows(outputs, batch_size):
            kept = [slot for slot, position in enumerate(row["mask_positions"]) if position >= 0]
            rows.append({name: [value[slot] for slot in kept] for name, value in row.items()})
        return rows


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
