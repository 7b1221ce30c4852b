"""BertMaskedLM: a BERT backbone with the masked-LM (and optional next-sentence) head."""

import keras
from keras import ops

from kbert.functional import TaskModel
from kbert.layers import MaskedLMHead, bert_kernel_initializer


@keras.saving.register_keras_serializable(package="kbert")
class BertMaskedLM(TaskModel):
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
        # The loss needs the last block only at the masked positions, and at [CLS] (position
        # 0) for next-sentence prediction, so the backbone runs it there alone.
        query_positions = inputs["mask_positions"]
        if next_sentence_prediction:
            first = ops.zeros_like(query_positions[:, :1])
            query_positions = ops.concatenate([first, query_positions], axis=1)
        backbone_outputs = backbone(
            {key: inputs[key] for key in ("token_ids", "segment_ids", "padding_mask")},
            query_positions=query_positions,
        )
        hidden = backbone_outputs["sequence_output"]  # (batch, num_queries, hidden)
        if next_sentence_prediction:
            hidden = hidden[:, 1:, :]  # (batch, num_predictions, hidden)
        mlm_logits = self.masked_lm_head(hidden)  # (batch, num_predictions, vocabulary_size)
        outputs = mlm_logits
        if next_sentence_prediction:
            nsp_logits = self.next_sentence_head(backbone_outputs["pooled_output"])  # (batch, 2)
            outputs = {"mlm": mlm_logits, "nsp": nsp_logits}
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.backbone = backbone
        self.next_sentence_prediction = next_sentence_prediction

    @property
    def trainable_weights(self):
        return self._without_unused_pooler(super().trainable_weights)

    @property
    def trainable_variables(self):
        # The optimizer's slots are built from these, and a resumed run rebuilds them from
        # the same list: both leave the pooler out alike.
        return self._without_unused_pooler(super().trainable_variables)

    def _without_unused_pooler(self, variables):
        # Without the next-sentence head no output depends on the pooler: it keeps the
        # weights it was built or loaded with, instead of asking for a gradient it cannot have.
        if self.next_sentence_head is not None:
            return variables
        pooler = {id(weight) for weight in self.backbone.pooled_dense.weights}
        return [variable for variable in variables if id(variable) not in pooler]

    def head_config(self):
        return {"next_sentence_prediction": self.next_sentence_prediction}
