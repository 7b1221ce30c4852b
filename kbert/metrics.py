"""Metrics for masked-LM pretraining and for the GLUE tasks.

Keras provides accuracy, cross-entropy and F1; this module adds what it lacks or computes
differently from GLUE: the Matthews correlation, and Pearson and Spearman correlations
over the whole evaluation set (`keras.metrics.PearsonCorrelation` averages per-batch
correlations). All are stateful Keras metrics, so `model.evaluate()` reports the
corpus-level value and they run under every backend and distribution.

Example:
>>> metrics = metrics_for("matthews_correlation", num_classes=2)
>>> classifier.compile(optimizer, loss, metrics=metrics)  # doctest: +SKIP
"""

import keras
from keras import ops

from kbert.losses import SparseCategoricalCrossentropyMetric

# The `metric` of a task (GLUE's name for how the task is scored) -> what `metrics_for` builds.
METRIC_NAMES = ("accuracy", "f1", "matthews_correlation", "pearson_spearman", "masked_lm")


def metrics_for(metric_name, num_classes=2):
    """Returns fresh Keras metrics that score a task, its main metric first.

    Args:
        metric_name: `accuracy` (SST-2, MNLI, QNLI, RTE, WNLI), `f1` (MRPC, QQP: F1 of
            class 1, then accuracy), `matthews_correlation` (CoLA, then accuracy),
            `pearson_spearman` (STS-B, a regression: `num_classes=1`) or `masked_lm`
            (masked-LM loss and accuracy, to be compiled as `weighted_metrics`).
        num_classes: number of classes of the classifier (1 for regression).

    Example:
    >>> [metric.name for metric in metrics_for("f1", num_classes=2)]
    ['f1', 'accuracy']
    """
    if metric_name == "accuracy":
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if metric_name == "f1":
        if num_classes != 2:
            raise ValueError(
                "Expected num_classes=2 for the f1 metric (F1 of class 1). "
                f"Received: num_classes={num_classes}"
            )
        return [BinaryF1Score(name="f1"), keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if metric_name == "matthews_correlation":
        return [
            MatthewsCorrelation(num_classes=num_classes, name="matthews_correlation"),
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
        ]
    if metric_name == "pearson_spearman":
        if num_classes != 1:
            raise ValueError(
                "Expected num_classes=1 (regression) for the pearson_spearman metric. "
                f"Received: num_classes={num_classes}"
            )
        return [PearsonCorrelation(name="pearson"), SpearmanCorrelation(name="spearman")]
    if metric_name == "masked_lm":
        return masked_lm_metrics()
    raise ValueError(
        f"Expected metric to be one of {', '.join(METRIC_NAMES)}. Received: metric={metric_name!r}"
    )


def masked_lm_metrics():
    """Masked-LM loss and accuracy, to be compiled as `weighted_metrics`.

    Weighted by `mask_weights`, they average over the real predictions only, whereas the
    training loss is divided by every prediction slot, padded ones included.
    """
    return [
        SparseCategoricalCrossentropyMetric(name="masked_lm_loss"),
        keras.metrics.SparseCategoricalAccuracy(name="masked_lm_accuracy"),
    ]


def _class_predictions(y_true, y_pred):
    # (batch,) integer labels and (batch,) predicted classes from (batch, num_classes) logits.
    y_true = ops.reshape(ops.cast(y_true, "int32"), (-1,))
    predictions = ops.argmax(y_pred, axis=-1)
    return y_true, ops.reshape(ops.cast(predictions, "int32"), (-1,))


def _flat_weights(sample_weight, like, dtype):
    if sample_weight is None:
        return ops.ones_like(ops.cast(like, dtype))
    return ops.reshape(ops.cast(sample_weight, dtype), (-1,))


@keras.saving.register_keras_serializable(package="kbert")
class BinaryF1Score(keras.metrics.F1Score):
    """F1 of one class (GLUE: class 1) from integer labels and logits.

    `keras.metrics.F1Score` expects one-hot labels and scores; this feeds it the one-hot
    labels and arg-max predictions of a classifier and returns the score of
    `positive_class`.

    Args:
        positive_class: the class whose F1 is reported.
        num_classes: number of classes of the classifier's logits.

    Example:
    >>> metric = BinaryF1Score()
    >>> metric.update_state([1, 0, 1], [[0.1, 0.9], [0.8, 0.2], [0.7, 0.3]])
    >>> round(float(metric.result()), 4)
    0.6667
    """

    def __init__(self, positive_class=1, num_classes=2, name="f1", dtype=None):
        super().__init__(average=None, threshold=None, name=name, dtype=dtype)
        self.positive_class = positive_class
        self.num_classes = num_classes

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true, predictions = _class_predictions(y_true, y_pred)
        if sample_weight is not None:
            sample_weight = ops.reshape(sample_weight, (-1,))
        super().update_state(
            ops.one_hot(y_true, self.num_classes),
            ops.one_hot(predictions, self.num_classes),
            sample_weight=sample_weight,
        )

    def result(self):
        return super().result()[self.positive_class]

    def get_config(self):
        return {
            "name": self.name,
            "dtype": self.dtype,
            "positive_class": self.positive_class,
            "num_classes": self.num_classes,
        }


@keras.saving.register_keras_serializable(package="kbert")
class MatthewsCorrelation(keras.metrics.Metric):
    """Matthews correlation coefficient of a classifier, over everything seen.

    Accumulates the confusion matrix and applies Gorodkin's multi-class formula, which
    reduces to (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) for two classes.
    Returns 0 where the formula divides by zero (a constant prediction), as scikit-learn
    does. Takes integer labels and logits.

    Args:
        num_classes: number of classes of the classifier's logits.

    Example:
    >>> metric = MatthewsCorrelation(num_classes=2)
    >>> metric.update_state([1, 1, 0, 0], [[0, 1], [1, 0], [1, 0], [1, 0]])
    >>> round(float(metric.result()), 4)
    0.5774
    """

    def __init__(self, num_classes=2, name="matthews_correlation", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.num_classes = num_classes
        # (true class, predicted class) -> summed sample weight.
        self.confusion_matrix = self.add_variable(
            shape=(num_classes, num_classes), initializer="zeros", name="confusion_matrix"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true, predictions = _class_predictions(y_true, y_pred)
        weights = _flat_weights(sample_weight, y_true, self.dtype)
        true_one_hot = ops.one_hot(y_true, self.num_classes, dtype=self.dtype)
        predicted_one_hot = ops.one_hot(predictions, self.num_classes, dtype=self.dtype)
        # (classes, batch) @ (batch, classes)
        counts = ops.matmul(ops.transpose(true_one_hot), predicted_one_hot * weights[:, None])
        self.confusion_matrix.assign(self.confusion_matrix + counts)

    def result(self):
        confusion = self.confusion_matrix
        true_counts = ops.sum(confusion, axis=1)
        predicted_counts = ops.sum(confusion, axis=0)
        correct = ops.trace(confusion)
        total = ops.sum(confusion)
        numerator = correct * total - ops.sum(true_counts * predicted_counts)
        denominator = ops.sqrt(
            (total**2 - ops.sum(predicted_counts**2)) * (total**2 - ops.sum(true_counts**2))
        )
        safe_denominator = ops.where(denominator > 0, denominator, 1.0)
        return ops.where(denominator > 0, numerator / safe_denominator, 0.0)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "num_classes": self.num_classes}


def _regression_values(y_true, y_pred, sample_weight, dtype):
    y_true = ops.reshape(ops.cast(y_true, dtype), (-1,))
    y_pred = ops.reshape(ops.cast(y_pred, dtype), (-1,))
    return y_true, y_pred, _flat_weights(sample_weight, y_true, dtype)


def _weighted_pearson(x, y, weights):
    total = ops.sum(weights)
    mean_x = ops.sum(weights * x) / total
    mean_y = ops.sum(weights * y) / total
    centered_x = (x - mean_x) * ops.cast(weights > 0, x.dtype)
    centered_y = (y - mean_y) * ops.cast(weights > 0, y.dtype)
    covariance = ops.sum(weights * centered_x * centered_y)
    variance_x = ops.sum(weights * centered_x**2)
    variance_y = ops.sum(weights * centered_y**2)
    return covariance / ops.sqrt(variance_x * variance_y)


@keras.saving.register_keras_serializable(package="kbert")
class PearsonCorrelation(keras.metrics.Metric):
    """Pearson correlation between labels and predictions over everything seen.

    Keeps weighted sums (count, x, y, x^2, y^2, xy), so the result is the correlation of
    the whole evaluation set, unlike `keras.metrics.PearsonCorrelation`, which averages
    per-batch correlations.

    Example:
    >>> metric = PearsonCorrelation()
    >>> metric.update_state([1.0, 2.0, 3.0], [[1.0], [3.0], [2.0]])
    >>> round(float(metric.result()), 4)
    0.5
    """

    def __init__(self, name="pearson", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.sums = self.add_variable(shape=(6,), initializer="zeros", name="sums")

    def update_state(self, y_true, y_pred, sample_weight=None):
        x, y, weights = _regression_values(y_true, y_pred, sample_weight, self.dtype)
        batch_sums = ops.stack(
            [
                ops.sum(weights),
                ops.sum(weights * x),
                ops.sum(weights * y),
                ops.sum(weights * x * x),
                ops.sum(weights * y * y),
                ops.sum(weights * x * y),
            ]
        )
        self.sums.assign(self.sums + batch_sums)

    def result(self):
        count, sum_x, sum_y, sum_xx, sum_yy, sum_xy = ops.unstack(ops.convert_to_tensor(self.sums))
        covariance = sum_xy - sum_x * sum_y / count
        variance_x = sum_xx - sum_x**2 / count
        variance_y = sum_yy - sum_y**2 / count
        return covariance / ops.sqrt(variance_x * variance_y)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="kbert")
class SpearmanCorrelation(keras.metrics.Metric):
    """Spearman rank correlation between labels and predictions over everything seen.

    Ranks need every value, so the metric keeps up to `max_examples` (label, prediction)
    pairs in fixed-size buffers; past that it returns NaN rather than a wrong number.
    Tied values get their average rank, as in `scipy.stats.spearmanr`. Examples with
    sample weight 0 are left out; other weights count as 1.

    Args:
        max_examples: capacity of the buffers (GLUE STS-B has 1,500 dev examples).

    Example:
    >>> metric = SpearmanCorrelation()
    >>> metric.update_state([1.0, 2.0, 3.0], [[10.0], [30.0], [20.0]])
    >>> round(float(metric.result()), 4)
    0.5
    """

    def __init__(self, max_examples=65536, name="spearman", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.max_examples = max_examples
        # Under TensorFlow's multi-replica strategies every replica gathers the whole batch
        # (see update_state), so replicas hold identical buffers and their mean is exact.
        self.labels = self.add_variable(
            shape=(max_examples,), initializer="zeros", aggregation="mean", name="labels"
        )
        self.predictions = self.add_variable(
            shape=(max_examples,), initializer="zeros", aggregation="mean", name="predictions"
        )
        self.included = self.add_variable(
            shape=(max_examples,), initializer="zeros", aggregation="mean", name="included"
        )
        self.count = self.add_variable(
            shape=(), initializer="zeros", aggregation="mean", name="count"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        x, y, weights = _regression_values(y_true, y_pred, sample_weight, self.dtype)
        x, y, weights = _gather_across_replicas(x, y, weights)
        included = ops.cast(weights > 0, self.dtype)
        size = ops.shape(x)[0]
        if isinstance(size, int) and size > self.max_examples:
            raise ValueError(
                "Expected batches of at most max_examples for SpearmanCorrelation. "
                f"Received: batch_size={size}, max_examples={self.max_examples}"
            )
        # Past capacity the batch overwrites the last slots; result() is NaN by then.
        last_start = ops.cast(self.max_examples - size, self.dtype)
        start = ops.cast(ops.clip(self.count, 0.0, last_start), "int32")
        for variable, values in (
            (self.labels, x),
            (self.predictions, y),
            (self.included, included),
        ):
            variable.assign(ops.slice_update(ops.convert_to_tensor(variable), (start,), values))
        self.count.assign(self.count + ops.cast(ops.shape(x)[0], self.dtype))

    def result(self):
        labels, predictions, included, count = (
            ops.convert_to_tensor(variable)
            for variable in (self.labels, self.predictions, self.included, self.count)
        )
        positions = ops.arange(self.max_examples, dtype=self.dtype)
        valid = ops.logical_and(included > 0, positions < count)
        weights = ops.cast(valid, self.dtype)
        correlation = _weighted_pearson(
            _average_ranks(labels, valid), _average_ranks(predictions, valid), weights
        )
        return ops.where(count <= self.max_examples, correlation, float("nan"))

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "max_examples": self.max_examples}


def _average_ranks(values, valid):
    # Invalid slots sort after every real value, so they do not shift real ranks.
    values = ops.where(valid, values, float("inf"))
    sorted_values = ops.sort(values)
    below = ops.searchsorted(sorted_values, values, side="left")
    below_or_equal = ops.searchsorted(sorted_values, values, side="right")
    # Ties share the mean of the positions they occupy.
    return ops.cast(below + below_or_equal, values.dtype) / 2.0


def _gather_across_replicas(*tensors):
    if keras.backend.backend() != "tensorflow":
        return tensors
    import tensorflow as tf

    replica_context = tf.distribute.get_replica_context()
    if replica_context is None or replica_context.num_replicas_in_sync == 1:
        return tensors
    return tuple(replica_context.all_gather(tensor, axis=0) for tensor in tensors)
