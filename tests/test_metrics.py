"""Tests of kbert.metrics against hand-computed values and scipy."""

import keras
import numpy as np
import pytest
import scipy.stats

import kbert
from kbert import metrics

# Eight binary examples: TP at 0, 2, 6; FN at 1; FP at 4; TN at 3, 5, 7.
LABELS = np.array([1, 1, 1, 0, 0, 0, 1, 0])
PREDICTED = np.array([1, 0, 1, 0, 1, 0, 1, 0])


def logits_for(predicted_classes, num_classes=2, seed=0):
    """Random logits whose arg-max is `predicted_classes`."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(predicted_classes), num_classes)).astype("float32")
    logits[np.arange(len(predicted_classes)), predicted_classes] = 5.0
    return logits


def update_in_batches(metric, y_true, y_pred, sample_weight=None, batch_size=3):
    for start in range(0, len(y_true), batch_size):
        batch = slice(start, start + batch_size)
        metric.update_state(
            y_true[batch],
            y_pred[batch],
            sample_weight=None if sample_weight is None else sample_weight[batch],
        )
    return float(keras.ops.convert_to_numpy(metric.result()))


@pytest.mark.backends
def test_matthews_correlation_of_a_binary_confusion_matrix():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (9 - 1) / sqrt(4*4*4*4) = 0.5
    metric = metrics.MatthewsCorrelation(num_classes=2)
    assert update_in_batches(metric, LABELS, logits_for(PREDICTED)) == pytest.approx(0.5)
    metric.reset_state()
    assert update_in_batches(metric, LABELS, logits_for(LABELS)) == pytest.approx(1.0)
    metric.reset_state()
    assert update_in_batches(metric, LABELS, logits_for(1 - LABELS)) == pytest.approx(-1.0)


@pytest.mark.backends
def test_matthews_correlation_is_zero_for_a_constant_prediction_and_honours_weights():
    metric = metrics.MatthewsCorrelation(num_classes=2)
    assert update_in_batches(metric, LABELS, logits_for(np.zeros(8, "int64"))) == 0.0
    metric.reset_state()
    # Weight 0 on the FN and FP examples leaves a perfect classifier.
    weights = np.array([1, 0, 1, 1, 0, 1, 1, 1], "float32")
    assert update_in_batches(metric, LABELS, logits_for(PREDICTED), weights) == pytest.approx(1.0)


@pytest.mark.backends
def test_multiclass_matthews_correlation_matches_the_covariance_form():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 50)
    predicted = np.where(rng.random(50) < 0.6, labels, rng.integers(0, 3, 50))
    # Gorodkin's R_K as a correlation of one-hot matrices: cov(X, Y) / sqrt(cov(X, X) cov(Y, Y)).
    x = np.eye(3)[predicted] - np.eye(3)[predicted].mean(axis=0)
    y = np.eye(3)[labels] - np.eye(3)[labels].mean(axis=0)
    expected = (x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum())
    metric = metrics.MatthewsCorrelation(num_classes=3)
    result = update_in_batches(metric, labels, logits_for(predicted, 3), batch_size=16)
    assert result == pytest.approx(expected, abs=1e-6)


@pytest.mark.backends
def test_binary_f1_scores_class_one():
    # Precision 3/4, recall 3/4.
    metric = metrics.BinaryF1Score()
    assert update_in_batches(metric, LABELS, logits_for(PREDICTED)) == pytest.approx(0.75, abs=1e-6)
    metric.reset_state()
    # Predicting 1 everywhere: precision 4/8, recall 1 -> F1 2/3.
    assert update_in_batches(metric, LABELS, logits_for(np.ones(8, "int64"))) == pytest.approx(
        2 / 3, abs=1e-6
    )


@pytest.mark.backends
def test_pearson_and_spearman_match_scipy_over_many_batches():
    rng = np.random.default_rng(2)
    labels = np.round(rng.uniform(0, 5, 40), 1).astype("float32")  # rounded: ties
    predictions = (labels + rng.normal(0, 1.5, 40)).astype("float32")
    predictions[:6] = predictions[6]  # ties among predictions too
    pearson = update_in_batches(
        metrics.PearsonCorrelation(), labels, predictions[:, None], batch_size=7
    )
    spearman = update_in_batches(
        metrics.SpearmanCorrelation(max_examples=64), labels, predictions[:, None], batch_size=7
    )
    assert pearson == pytest.approx(scipy.stats.pearsonr(labels, predictions)[0], abs=1e-5)
    assert spearman == pytest.approx(scipy.stats.spearmanr(labels, predictions)[0], abs=1e-5)
    # Corpus-level, not an average of per-batch correlations as keras.metrics' is.
    per_batch = keras.metrics.PearsonCorrelation()
    assert update_in_batches(per_batch, labels, predictions, batch_size=7) != pytest.approx(pearson)


@pytest.mark.backends
def test_correlations_leave_out_zero_weight_examples_and_spearman_reports_overflow():
    rng = np.random.default_rng(3)
    labels = rng.normal(size=20).astype("float32")
    predictions = (labels + rng.normal(size=20)).astype("float32")
    weights = (np.arange(20) % 4 != 0).astype("float32")
    kept = weights > 0
    pearson = update_in_batches(metrics.PearsonCorrelation(), labels, predictions, weights, 6)
    spearman = update_in_batches(metrics.SpearmanCorrelation(32), labels, predictions, weights, 6)
    assert pearson == pytest.approx(
        scipy.stats.pearsonr(labels[kept], predictions[kept])[0], abs=1e-5
    )
    assert spearman == pytest.approx(
        scipy.stats.spearmanr(labels[kept], predictions[kept])[0], abs=1e-5
    )
    overflowing = metrics.SpearmanCorrelation(max_examples=16)
    assert np.isnan(update_in_batches(overflowing, labels, predictions, batch_size=5))


@pytest.mark.backends
def test_masked_lm_metrics_average_over_real_predictions_only():
    logits = np.log(
        np.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]], [[0.2, 0.2, 0.6], [1 / 3, 1 / 3, 1 / 3]]])
    ).astype("float32")
    mask_ids = np.array([[0, 0], [2, 1]])
    mask_weights = np.array([[1.0, 1.0], [1.0, 0.0]], "float32")
    loss, accuracy = metrics.masked_lm_metrics()
    for metric in (loss, accuracy):
        metric.update_state(mask_ids, logits, sample_weight=mask_weights)
    # The padded (weight 0) slot is ignored: cross-entropy over the three real predictions.
    expected_loss = -(np.log(0.5) + np.log(0.1) + np.log(0.6)) / 3
    assert float(loss.result()) == pytest.approx(expected_loss, abs=1e-5)
    assert float(accuracy.result()) == pytest.approx(2 / 3)
    assert (loss.name, accuracy.name) == ("masked_lm_loss", "masked_lm_accuracy")


def test_metrics_for_each_glue_metric():
    def names(metric_name, num_classes):
        return [metric.name for metric in metrics.metrics_for(metric_name, num_classes)]

    assert names("accuracy", 3) == ["accuracy"]
    assert names("f1", 2) == ["f1", "accuracy"]
    assert names("matthews_correlation", 2) == ["matthews_correlation", "accuracy"]
    assert names("pearson_spearman", 1) == ["pearson", "spearman"]
    assert names("masked_lm", 50) == ["masked_lm_loss", "masked_lm_accuracy"]
    # Fresh metrics each time: models never share metric state.
    assert metrics.metrics_for("accuracy")[0] is not metrics.metrics_for("accuracy")[0]
    with pytest.raises(ValueError, match="metric to be one of"):
        metrics.metrics_for("bleu")
    with pytest.raises(ValueError, match="num_classes=1"):
        metrics.metrics_for("pearson_spearman", 2)


@pytest.mark.backends
def test_evaluate_reports_corpus_level_correlations():
    from test_training import classification_arrays, tiny_backbone

    x, labels = classification_arrays(num_examples=24, num_classes=1, seed=5)
    keras.utils.set_random_seed(0)
    model = kbert.BertClassifier(tiny_backbone(), num_classes=1, dropout=0.0)
    model.compile(loss="mse", metrics=metrics.metrics_for("pearson_spearman", 1))
    results = model.evaluate(x, labels, batch_size=5, return_dict=True, verbose=0)
    predictions = model.predict(x, batch_size=24, verbose=0)[:, 0]
    assert results["pearson"] == pytest.approx(
        scipy.stats.pearsonr(labels, predictions)[0], abs=1e-4
    )
    assert results["spearman"] == pytest.approx(
        scipy.stats.spearmanr(labels, predictions)[0], abs=1e-4
    )
