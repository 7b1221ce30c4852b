"""Cross-entropy on logits for the masked-LM head, as a loss and a metric.

The same quantity as `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`. On
TensorFlow, the log-sum-exp and the label's logit run as one XLA-compiled function, forward
and backward, where TensorFlow's fused `SparseSoftmaxCrossEntropyWithLogits` kernel makes
several passes over the logits and writes a gradient even when only the loss is wanted; the
logits are the largest tensor of a small BERT's pretraining step. Other backends run the same arithmetic through `keras.ops` (JAX compiles
the whole step with XLA anyway).

XLA's gather clamps an index that is out of range where TensorFlow's kernel fails, so a
label outside the vocabulary is checked first and fails with a message naming it.
"""

import keras
from keras import ops

from kbert.layers import xla_function

_xla_cross_entropy = None


def sparse_categorical_crossentropy(y_true, y_pred):
    """Per-element cross-entropy of integer labels `y_true` (...,) against logits (..., classes)."""
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.convert_to_tensor(y_true), "int32")
    if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, axis=-1)
    if keras.config.backend() == "tensorflow":
        return _tensorflow_cross_entropy(y_true, y_pred)
    logits = ops.cast(y_pred, "float32")
    label_logits = ops.take_along_axis(logits, y_true[..., None], axis=-1)[..., 0]
    return ops.logsumexp(logits, axis=-1) - label_logits


def _tensorflow_cross_entropy(labels, logits):
    import tensorflow as tf

    global _xla_cross_entropy
    if _xla_cross_entropy is None:

        def cross_entropy(labels, logits):
            # (examples, classes) whatever the rank, so that one trace serves every rank.
            flat_logits = tf.reshape(tf.cast(logits, tf.float32), [tf.size(labels), -1])
            flat_labels = tf.reshape(labels, [-1])
            label_logits = tf.gather(flat_logits, flat_labels, batch_dims=1)
            losses = tf.reduce_logsumexp(flat_logits, axis=-1) - label_logits
            return tf.reshape(losses, tf.shape(labels))

        _xla_cross_entropy = xla_function(cross_entropy)
    num_classes = tf.shape(logits, out_type=tf.int32)[-1]
    check = tf.debugging.assert_less(
        labels,
        num_classes,
        message="Expected every label to be a class id below the number of classes (the "
        "vocabulary size for a masked LM); a label is out of range. Received: labels",
        summarize=8,
    )
    check_negative = tf.debugging.assert_non_negative(
        labels, message="Expected every label to be >= 0. Received: labels", summarize=8
    )
    with tf.control_dependencies([check, check_negative]):
        labels = tf.identity(labels)
    return _xla_cross_entropy(labels, logits)


@keras.saving.register_keras_serializable(package="kbert")
class SparseCategoricalCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels against logits, reduced as Keras losses are.

    Equal to `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`, faster on
    TensorFlow (see the module's docstring).
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
