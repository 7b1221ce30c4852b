"""BertClassifier: a BERT backbone with a classification (or regression) head."""

import keras

from kbert.functional import TaskModel
from kbert.layers import Dropout, bert_kernel_initializer


class LogitsHead(TaskModel):
    """Dropout and a dense layer on one of the backbone's outputs: the base of the classifiers.

    A subclass names the output it classifies in `classified_output`: `pooled_output` (one
    set of logits per text) or `sequence_output` (one per token).
    """

    classified_output = None

    def __init__(self, backbone, num_classes, dropout=0.1, **kwargs):
        # === Layers ===
        # The float32 output is dropped out and classified in float32.
        self.output_dropout, self.output_dense = logits_layers(num_classes, dropout)

        # === Functional Model ===
        inputs = dict(backbone.input)
        features = backbone(inputs)[self.classified_output]  # (batch, [sequence,] hidden)
        logits = self.output_dense(self.output_dropout(features))  # (batch, [sequence,] num_classes)
        super().__init__(inputs=inputs, outputs=logits, **kwargs)

        # === Config ===
        self.backbone = backbone
        self.num_classes = num_classes
        self.dropout = dropout

    def head_config(self):
        return {"num_classes": self.num_classes, "dropout": self.dropout}


@keras.saving.register_keras_serializable(package="kbert")
class BertClassifier(LogitsHead):
    """BERT for sequence classification: dropout and a dense layer on `pooled_output`.

    The output is float32 logits of shape (batch, num_classes); with `num_classes=1` it is
    a regression score (STS-B style) of shape (batch, 1).

    Args:
        backbone: a `kbert.BertBackbone`.
        num_classes: number of classes, or 1 for regression.
        dropout: dropout rate before the output layer.

    Example:
    >>> backbone = BertBackbone.from_size("tiny", vocabulary_size=100)
    >>> classifier = BertClassifier(backbone, num_classes=2)
    >>> classifier.compile()
    >>> classifier.fit(dataset, epochs=1)  # doctest: +SKIP
    """

    classified_output = "pooled_output"


def logits_layers(num_classes, dropout):
    """The dropout and dense layers of a classification head, in float32, BERT-initialized."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(
            f"Expected num_classes to be a positive integer. Received: num_classes={num_classes!r}"
        )
    dropout_layer = Dropout(dropout, dtype="float32", name="output_dropout")
    dense = keras.layers.Dense(
        num_classes, kernel_initializer=bert_kernel_initializer(), dtype="float32", name="logits"
    )
    return dropout_layer, dense
