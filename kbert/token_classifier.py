"""BertTokenClassifier: a BERT backbone with a tagging head, one set of logits per token."""

import keras

from kbert.classifier import LogitsHead


@keras.saving.register_keras_serializable(package="kbert")
class BertTokenClassifier(LogitsHead):
    """BERT for token classification (named entities, part of speech): a dense layer per token.

    Dropout and a dense layer on `sequence_output`, as Hugging Face's
    `BertForTokenClassification`; the output is float32 logits of shape
    (batch, sequence, num_classes). Trained on a word's first piece (see
    `kbert.data.conll`).

    Args:
        backbone: a `kbert.BertBackbone`.
        num_classes: the number of tags (CoNLL-2003's IOB2 tags are 9).
        dropout: the rate of the dropout on each token's vector before its logits.

    Example:
    >>> tagger = BertTokenClassifier(BertBackbone.from_size("tiny", vocabulary_size=100), 9)
    >>> tagger.compile()  # cross-entropy on each word's first piece, AdamW
    >>> tagger.fit(tagged_batches, epochs=3)  # doctest: +SKIP
    """

    classified_output = "sequence_output"
