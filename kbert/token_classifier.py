"""BertTokenClassifier: a BERT backbone with a tagging head, one set of logits per token."""

import keras

from kbert.classifier import logits_layers
from kbert.functional import TaskModel


@keras.saving.register_keras_serializable(package="kbert")
class BertTokenClassifier(TaskModel):
    """BERT for token classification (named entities, part of speech): a dense layer per token.

    Dropout and a dense layer on `sequence_output`, as Hugging Face's
    `BertForTokenClassification`; the output is float32 logits of shape
    (batch, sequence, num_classes). Trained on a word's first piece (see
    `kbert.data.conll`).

    Args:
        backbone: a `kbert.BertBackbone`.
        num_classes: number of tags.
        dropout: dropout rate before the output layer.

    Example:
    >>> backbone = BertBackbone.from_size("tiny", vocabulary_size=100)
    >>> tagger = BertTokenClassifier(backbone, num_classes=9)
    >>> tagger.compile()
    >>> tagger.fit(dataset, epochs=1)  # doctest: +SKIP
    """

    def __init__(self, backbone, num_classes, dropout=0.1, **kwargs):
        # === Layers ===
        # The float32 sequence output is dropped out and classified in float32.
        self.output_dropout, self.output_dense = logits_layers(num_classes, dropout)

        # === Functional Model ===
        inputs = dict(backbone.input)
        sequence_output = backbone(inputs)["sequence_output"]  # (batch, sequence, hidden)
        logits = self.output_dense(self.output_dropout(sequence_output))  # (batch, sequence, num_classes)
        super().__init__(inputs=inputs, outputs=logits, **kwargs)

        # === Config ===
        self.backbone = backbone
        self.num_classes = num_classes
        self.dropout = dropout

    def head_config(self):
        return {"num_classes": self.num_classes, "dropout": self.dropout}
