"""Tests of kbert.losses against Keras' sparse categorical cross-entropy."""

import keras
import numpy as np
import pytest

from kbert import losses


def _logits_labels_weights(shape=(4, 6), num_classes=50, seed=0):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=shape + (num_classes,)) * 4).astype("float32")
    labels = rng.integers(0, num_classes, shape)
    weights = (rng.random(shape) > 0.3).astype("float32")
    return logits, labels, weights


@pytest.mark.backends
@pytest.mark.parametrize("shape", [(8,), (4, 6)])
def test_loss_equals_keras_sparse_categorical_crossentropy(shape):
    logits, labels, weights = _logits_labels_weights(shape)
    ours = losses.SparseCategoricalCrossentropy()(labels, logits, sample_weight=weights)
    reference = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits, sample_weight=weights)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(reference), rtol=1e-6)
    per_element = keras.ops.convert_to_numpy(losses.sparse_categorical_crossentropy(labels, logits))
    shifted = logits - logits.max(-1, keepdims=True)
    by_hand = np.log(np.exp(shifted).sum(-1)) - np.take_along_axis(shifted, labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(per_element, by_hand, rtol=1e-5, atol=1e-6)


@pytest.mark.backends
def test_metric_is_the_weighted_mean_of_the_loss():
    logits, labels, weights = _logits_labels_weights()
    metric = losses.SparseCategoricalCrossentropyMetric(name="masked_lm_loss")
    metric.update_state(labels[:2], logits[:2], sample_weight=weights[:2])
    metric.update_state(labels[2:], logits[2:], sample_weight=weights[2:])
    reference = keras.metrics.SparseCategoricalCrossentropy(from_logits=True)
    reference.update_state(labels, logits, sample_weight=weights)
    np.testing.assert_allclose(float(metric.result()), float(reference.result()), rtol=1e-6)


def test_gradient_equals_keras():
    import tensorflow as tf

    logits, labels, weights = _logits_labels_weights()
    logits = tf.constant(logits)
    gradients = []
    for loss in (losses.SparseCategoricalCrossentropy(), keras.losses.SparseCategoricalCrossentropy(from_logits=True)):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            value = loss(labels, logits, sample_weight=weights)
        gradients.append(tape.gradient(value, logits).numpy())
    np.testing.assert_allclose(gradients[0], gradients[1], rtol=1e-5, atol=1e-8)
    assert np.abs(gradients[0]).sum() > 0


def test_label_out_of_range_fails_with_a_message():
    import tensorflow as tf

    logits, labels, _ = _logits_labels_weights(num_classes=10)
    labels[1, 2] = 10
    with pytest.raises(tf.errors.InvalidArgumentError, match="label is out of range"):
        losses.SparseCategoricalCrossentropy()(labels, logits)
    labels[1, 2] = -1
    with pytest.raises(tf.errors.InvalidArgumentError, match=">= 0"):
        losses.SparseCategoricalCrossentropy()(labels, logits)


def test_loss_round_trips_through_its_config():
    loss = losses.SparseCategoricalCrossentropy(reduction="sum", name="mlm")
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, losses.SparseCategoricalCrossentropy)
    assert (again.reduction, again.name) == ("sum", "mlm")
