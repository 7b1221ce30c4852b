"""BertTextEmbedder: a BERT backbone pooled (and optionally normalised) into sentence embeddings."""

import keras
from keras import ops

from kbert.functional import TaskModel

POOLING_MODES = ("mean", "cls", "max")


@keras.saving.register_keras_serializable(package="kbert")
class EmbeddingPooling(keras.layers.Layer):
    """Pools (batch, seq, hidden) hidden states into (batch, hidden) over the real tokens.

    Args:
        pooling: "mean" (average of the real tokens), "cls" (the first token) or "max"
            (element-wise maximum of the real tokens).
        normalize: divide each embedding by its L2 norm.
    """

    def __init__(self, pooling="mean", normalize=True, **kwargs):
        super().__init__(**kwargs)
        _check_pooling(pooling)
        self.pooling = pooling
        self.normalize = normalize

    def call(self, sequence_output, padding_mask):
        sequence_output = ops.cast(sequence_output, "float32")
        mask = ops.cast(padding_mask, "float32")[:, :, None]  # (batch, seq, 1)
        if self.pooling == "mean":
            # The same floor as sentence-transformers, so that an all-padding row gives zeros.
            num_tokens = ops.maximum(ops.sum(mask, axis=1), 1e-9)  # (batch, 1)
            embeddings = ops.sum(sequence_output * mask, axis=1) / num_tokens
        elif self.pooling == "max":
            # Padded positions must never win the maximum, whatever their hidden states hold.
            embeddings = ops.max(ops.where(mask > 0, sequence_output, -1e9), axis=1)
        else:
            embeddings = sequence_output[:, 0, :]
        if self.normalize:
            # As torch.nn.functional.normalize: the norm is floored, not offset.
            norm = ops.sqrt(ops.sum(ops.square(embeddings), axis=-1, keepdims=True))
            embeddings = embeddings / ops.maximum(norm, 1e-12)
        return embeddings  # (batch, hidden)

    def compute_output_shape(self, sequence_output_shape, padding_mask_shape=None):
        return (sequence_output_shape[0], sequence_output_shape[2])

    def get_config(self):
        return {**super().get_config(), "pooling": self.pooling, "normalize": self.normalize}


def _check_pooling(pooling):
    if pooling not in POOLING_MODES:
        raise ValueError(
            f"Expected pooling to be one of {', '.join(repr(mode) for mode in POOLING_MODES)}. "
            f"Received: pooling={pooling!r}"
        )


@keras.saving.register_keras_serializable(package="kbert")
class BertTextEmbedder(TaskModel):
    """BERT for sentence embeddings: the backbone's `sequence_output` pooled over real tokens.

    The output, `embeddings`, is float32 of shape (batch, hidden). With `normalize=True`
    every embedding has unit L2 norm, so the dot product of two is their cosine similarity,
    as sentence-transformers models such as all-MiniLM-L6-v2 compute it.

    Args:
        backbone: a `kbert.BertBackbone`.
        pooling: "mean" (average over the real tokens, by `padding_mask`), "cls" (the
            `[CLS]` token's hidden state) or "max" (element-wise maximum over real tokens).
        normalize: L2-normalise the embeddings.

    Example:
    >>> backbone = BertBackbone.from_size("tiny", vocabulary_size=100)
    >>> embedder = BertTextEmbedder(backbone, pooling="mean", normalize=True)
    >>> embedder.predict(inputs).shape  # doctest: +SKIP
    (batch, 128)
    """

    def __init__(self, backbone, pooling="mean", normalize=True, **kwargs):
        _check_pooling(pooling)
        if not isinstance(normalize, bool):
            raise ValueError(
                f"Expected normalize to be True or False. Received: normalize={normalize!r}"
            )
        # === Layers ===
        self.pooling_layer = EmbeddingPooling(
            pooling=pooling, normalize=normalize, dtype="float32", name="embeddings"
        )

        # === Functional Model ===
        inputs = dict(backbone.input)
        sequence_output = backbone(inputs)["sequence_output"]  # (batch, seq, hidden)
        embeddings = self.pooling_layer(sequence_output, inputs["padding_mask"])  # (batch, hidden)
        super().__init__(inputs=inputs, outputs=embeddings, **kwargs)

        # === Config ===
        self.backbone = backbone
        self.pooling = pooling
        self.normalize = normalize

    def head_config(self):
        return {"pooling": self.pooling, "normalize": self.normalize}
