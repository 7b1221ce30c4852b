"""Cross-entropy on logits for the masked-LM head, as a loss and a metric.

The same quantity as `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`, with
a faster TensorFlow path (`kbert.kernels.sparse_categorical_crossentropy`).
"""

import keras
from keras import ops

from kbert import kernels


def sparse_categorical_crossentropy(y_true, y_pred):
    """Per-element cross-entropy of integer labels `y_true` (...,) against logits (..., classes)."""
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.convert_to_tensor(y_true), "int32")
    if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, axis=-1)
    return kernels.sparse_categorical_crossentropy(y_true, y_pred)


@keras.saving.register_keras_serializable(package="kbert")
class SparseCategoricalCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels against logits, reduced as Keras losses are.

    Equal to `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`, faster on
    TensorFlow (see `kbert.kernels`).
    """

    def __init__(self, reduction="sum_over_batch_size", name="sparse_categorical_crossentropy", dtype=None):
        super().__init__(reduction=reduction, name=name, dtype=dtype)

    def call(self, y_true, y_pred):
        return sparse_categorical_crossentropy(y_true, y_pred)


@keras.saving.register_keras_serializable(package="kbert")
class SparseCategoricalCrossentropyMetric(keras.metrics.MeanMetricWrapper):
    """Running mean of `sparse_categorical_crossentropy`: the loss as a (weighted) metric."""

    def __init__(self, name="sparse_categorical_crossentropy", dtype=None):
        super().__init__(sparse_categorical_crossentropy, name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


# === Sentence-embedding losses ===
# Each takes the embeddings of a batch of pairs stacked along the batch axis, (2 * pairs,
# hidden): the first texts of the pairs, then the second texts (`kbert.tasks.embedding`
# batches them so, and the embedder reads one batch). Keras has no pairwise losses; these
# follow sentence-transformers' classes of the same names.


def _pair_halves(y_pred):
    """The first and second texts' embeddings, L2-normalised: cosine similarity is a dot product."""
    y_pred = ops.cast(y_pred, "float32")
    num_pairs = ops.shape(y_pred)[0] // 2
    normalized = y_pred / ops.maximum(ops.norm(y_pred, axis=-1, keepdims=True), 1e-12)
    return normalized[:num_pairs], normalized[num_pairs:]  # (pairs, hidden) each


def cosent_loss(y_true, y_pred, scale=20.0):
    """CoSENT: every pair scored higher than another must have the higher cosine similarity.

    `log(1 + sum over (i, j) with y_i > y_j of exp(scale * (cos_j - cos_i)))`, one value for the
    batch, as `sentence_transformers.losses.CoSENTLoss`.
    """
    first, second = _pair_halves(y_pred)
    similarities = ops.sum(first * second, axis=-1) * scale  # (pairs,)
    y_true = ops.reshape(ops.cast(y_true, "float32"), (-1,))
    differences = similarities[:, None] - similarities[None, :]  # (pairs, pairs): cos_i - cos_j
    # Only (i, j) with y_i < y_j count: there cos_i - cos_j should be negative.
    counted = ops.cast(y_true[:, None] < y_true[None, :], "float32")
    differences = differences - (1.0 - counted) * 1e12
    # The leading 0 is the "1 +" inside the log.
    return ops.logsumexp(ops.concatenate([ops.zeros((1,)), ops.reshape(differences, (-1,))]))


def cosine_similarity_mse(y_true, y_pred):
    """Squared error of each pair's cosine similarity against its score (0..1), per pair.

    As `sentence_transformers.losses.CosineSimilarityLoss`.
    """
    first, second = _pair_halves(y_pred)
    y_true = ops.reshape(ops.cast(y_true, "float32"), (-1,))
    return ops.square(ops.sum(first * second, axis=-1) - y_true)  # (pairs,)


def multiple_negatives_ranking_loss(y_true, y_pred, scale=20.0):
    """In-batch negatives: each anchor must pick its own positive among all of the batch's.

    Cross-entropy of `scale * cos(anchor_i, positive_j)` over j with target i, per anchor, as
    `sentence_transformers.losses.MultipleNegativesRankingLoss`. `y_true` is not read.
    """
    del y_true
    anchors, positives = _pair_halves(y_pred)
    logits = ops.matmul(anchors, ops.transpose(positives)) * scale  # (pairs, pairs)
    targets = ops.arange(ops.shape(logits)[0], dtype="int32")
    return keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)


PAIR_LOSSES = {
    "cosent": cosent_loss,
    "cosine_mse": cosine_similarity_mse,
    "multiple_negatives_ranking": multiple_negatives_ranking_loss,
}


@keras.saving.register_keras_serializable(package="kbert")
class PairEmbeddingLoss(keras.losses.Loss):
    """One of `PAIR_LOSSES` on stacked pair embeddings, reduced as Keras losses are.

    Args:
        objective: "cosent" (scored pairs), "cosine_mse" (scored pairs) or
            "multiple_negatives_ranking" ((anchor, positive) pairs, in-batch negatives).
        scale: the similarity scale of "cosent" and "multiple_negatives_ranking".
    """

    def __init__(self, objective="cosent", scale=20.0, reduction="sum_over_batch_size", name=None,
                 dtype=None):
        if objective not in PAIR_LOSSES:
            raise ValueError(
                f"Expected objective to be one of {', '.join(PAIR_LOSSES)}. "
                f"Received: objective={objective!r}"
            )
        super().__init__(reduction=reduction, name=name or objective, dtype=dtype)
        self.objective = objective
        self.scale = scale

    def call(self, y_true, y_pred):
        if self.objective == "cosine_mse":
            return cosine_similarity_mse(y_true, y_pred)
        return PAIR_LOSSES[self.objective](y_true, y_pred, scale=self.scale)

    def get_config(self):
        return {"objective": self.objective, "scale": self.scale, "name": self.name,
                "reduction": self.reduction}
