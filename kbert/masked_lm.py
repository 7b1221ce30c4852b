"""BertMaskedLM: a BERT backbone with the masked-LM (and optional next-sentence) head."""

import keras
from keras import ops

from kbert.functional import FunctionalModel
from kbert.layers import MaskedLMHead, bert_kernel_initializer


@keras.saving.register_keras_serializable(package="kbert")
class BertMaskedLM(FunctionalModel):
    """BERT for masked-language-model pretraining.

    Adds the input `mask_positions` (batch, num_predictions) to the backbone's inputs and
    scores the vocabulary only at those positions, with an output projection tied to the
    token embedding. With `next_sentence_prediction=True`, a two-way classifier on
    `pooled_output` is added and the outputs become `{"mlm": ..., "nsp": ...}`, as in the
    original BERT pretraining; otherwise the output is the masked-LM logits alone, so that
    data shaped as `(x, mask_ids, mask_weights)` trains it directly.

    Args:
        backbone: a `kbert.BertBackbone`.
        next_sentence_prediction: add the next-sentence-prediction head.

    Example:
    >>> backbone = BertBackbone.from_size("tiny", vocabulary_size=100)
    >>> model = BertMaskedLM(backbone)
    >>> model.compile()
    >>> model.fit(x, mask_ids, sample_weight=mask_weights)  # doctest: +SKIP
    """

    def __init__(self, backbone, next_sentence_prediction=False, **kwargs):
        # === Layers ===
        self.masked_lm_head = MaskedLMHead(
            token_embedding=backbone.token_embedding,
            layer_norm_epsilon=1e-12,
            kernel_initializer=bert_kernel_initializer(),
            dtype=backbone.dtype_policy,
            name="mlm_head",
        )
        self.next_sentence_head = None
        if next_sentence_prediction:
            self.next_sentence_head = keras.layers.Dense(
                2,
                kernel_initializer=bert_kernel_initializer(),
                dtype="float32",
                name="next_sentence_head",
            )

        # === Functional Model ===
        inputs = dict(backbone.input)
        inputs["mask_positions"] = keras.Input(shape=(None,), dtype="int32", name="mask_positions")
        backbone_outputs = backbone(
            {key: inputs[key] for key in ("token_ids", "segment_ids", "padding_mask")}
        )
        # (batch, num_predictions, vocabulary_size), float32
        mlm_logits = self.masked_lm_head(
            backbone_outputs["sequence_output"], mask_positions=inputs["mask_positions"]
        )
        outputs = mlm_logits
        if self.next_sentence_head is not None:
            nsp_logits = self.next_sentence_head(backbone_outputs["pooled_output"])  # (batch, 2)
            outputs = {"mlm": mlm_logits, "nsp": nsp_logits}
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.backbone = backbone
        self.next_sentence_prediction = next_sentence_prediction

    def call(self, inputs, training=None, mask=None):
        # The functional graph's outputs, computed with less work: the loss needs the last
        # block only at the masked positions (and at [CLS] for next-sentence prediction),
        # so it runs there alone. For a `mini` at sequence 128 with 20 predictions that
        # spares most of a quarter of the encoder's work; the logits are the same up to
        # float rounding (tests compare them with the full graph's).
        mask_positions = ops.cast(inputs["mask_positions"], "int32")
        query_positions = mask_positions
        if self.next_sentence_head is not None:
            first = ops.zeros_like(mask_positions[:, :1])
            query_positions = ops.concatenate([first, mask_positions], axis=1)
        hidden = self.backbone.encode(inputs, query_positions=query_positions, training=training)
        if self.next_sentence_head is None:
            return self.masked_lm_head(hidden)
        pooled_output = self.backbone.pooled_dense(hidden[:, 0, :])
        return {
            "mlm": self.masked_lm_head(hidden[:, 1:, :]),
            "nsp": self.next_sentence_head(pooled_output),
        }

    def compile(self, optimizer="auto", loss="auto", weighted_metrics="auto", **kwargs):
        """Compiles with the choices of `kbert.tasks.masked_lm` where an argument is "auto".

        The defaults are AdamW (learning rate 1e-4, weight decay 0.01), sparse categorical
        cross-entropy on logits (`kbert.losses`), and masked-LM loss and accuracy as weighted
        metrics so that padded prediction slots (weight 0) do not count.
        """
        from kbert import tasks

        task = tasks.for_model(self)
        arguments = task.compile_arguments(
            self, optimizer=optimizer, loss=loss, weighted_metrics=weighted_metrics
        )
        super().compile(**arguments, **kwargs)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "next_sentence_prediction": self.next_sentence_prediction,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
