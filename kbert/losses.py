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
