"""The classification task: `BertClassifier` on one text or a pair, or regression (one output).

Inputs are `token_ids`, `segment_ids` and `padding_mask`; targets integer class ids (float
scores for regression), from `kbert.data.classification_dataset`. Its settings, saved in the
model directory, name the classes, the metric and the columns the model was trained on. A GLUE
task's classes are named as TFDS names them (SST-2's `negative` and `positive`), in predictions
and in the export, even for a model directory that saved no names.
"""

import math

import keras

from kbert.data.glue import GLUE_TASKS
from kbert.tasks import Finetuning, Task


class ClassificationTask(Task):
    """Text classification and regression; see the module docstring.

    Settings (all optional): `name` (a GLUE task or "classification"), `label_names`,
    `num_classes`, `metric`, `text_columns`, `label_column`, `text_pair`.
    """

    name = "classification"
    model_class_name = "BertClassifier"
    learning_rate = 5e-5
    aliases = tuple(GLUE_TASKS)

    # === Model ===

    def build_model(self, backbone, dropout=0.1, num_classes=None):
        """A `BertClassifier` of `num_classes` (default: the settings') outputs."""
        from kbert.classifier import BertClassifier

        num_classes = num_classes or self.settings["num_classes"]
        return BertClassifier(backbone, num_classes=num_classes, dropout=dropout)

    def prepare_finetuning(self, init, data, tokenizer, seed=0):
        """Labeled texts of `data` (see `kbert.data.load_labeled_texts`), in batches."""
        from kbert.data import load_labeled_texts
        from kbert.data.sources import is_local
        from kbert.tokenizer import BertPreprocessor

        source_options = data.column_options()
        training_texts = load_labeled_texts(data.train, split=data.train_split, **source_options)
        validation = data.validation
        if validation is None and not is_local(data.train):
            validation = data.train
        # Validation labels must mean what training labels mean.
        source_options["label_names"] = training_texts.label_names
        steps_per_epoch = math.ceil((training_texts.num_examples or 0) / data.batch_size)
        if not steps_per_epoch:
            raise ValueError(f"Could not count the training examples of {data.train}")
        self.settings = _settings(training_texts, data.text_columns, data.label_column)
        train_data, validation_data = self.datasets(
            data.train, BertPreprocessor(tokenizer, sequence_length=data.sequence_length),
            data.batch_size, train_split=data.train_split, validation=validation,
            validation_split=data.validation_split, seed=seed, bucket=data.bucket,
            **source_options,
        )
        return Finetuning(train_data, validation_data, steps_per_epoch, self.settings)

    def datasets(self, train, preprocessor, batch_size, train_split="train", validation=None,
                 validation_split="validation", seed=0, bucket=True, **source_options):
        """Training and validation batches (see `kbert.data.classification_dataset`)."""
        from kbert.data import classification_dataset

        bucket_boundaries = "auto" if bucket else None

        def train_data(input_context=None):
            return classification_dataset(
                train, preprocessor, batch_size, split=train_split, seed=seed,
                bucket_boundaries=bucket_boundaries, input_context=input_context, **source_options,
            )

        def validation_data(input_context=None):
            return classification_dataset(
                validation, preprocessor, batch_size, split=validation_split, shuffle=False,
                bucket_boundaries=bucket_boundaries, input_context=input_context, **source_options,
            )

        return train_data, validation_data if validation is not None else None

    def label_names(self, num_classes):
        """Class names in id order: saved ones, else the GLUE task's, else "0", "1", ..."""
        names = self.settings.get("label_names")
        glue = GLUE_TASKS.get(self.settings.get("name"))
        if names is None and glue is not None and glue.num_classes == num_classes:
            names = glue.label_names
        if names is None or num_classes == 1:
            return [str(index) for index in range(num_classes)]
        if len(names) != num_classes:
            raise ValueError(
                f"Expected {num_classes} label names for a {num_classes}-class model. "
                f"Received: label_names={list(names)!r}"
            )
        return list(names)

    def metric(self, num_classes):
        """The saved metric, else accuracy (Pearson/Spearman for regression)."""
        default = "pearson_spearman" if num_classes == 1 else "accuracy"
        return self.settings.get("metric") or default

    # === Loss and metrics ===

    def compile_defaults(self, model):
        from kbert.metrics import metrics_for

        if model.num_classes == 1:
            loss = keras.losses.MeanSquaredError()
        else:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return dict(loss=loss, metrics=metrics_for(self.metric(model.num_classes), model.num_classes))

    # === Evaluation ===

    def evaluation_dataset(self, model, tokenizer, data, sequence_length, batch_size, split=None,
                           data_dir=None, task=None, text_columns=None, label_column=None,
                           header=None, delimiter=None):
        """Labeled data read with the columns the model was trained on, unless others are given."""
        from kbert.data import classification_dataset
        from kbert.tokenizer import BertPreprocessor

        saved_name = self.settings.get("name")
        source_options = dict(
            task=task or (saved_name if saved_name != self.name else None),
            text_columns=text_columns or self.settings.get("text_columns"),
            label_column=label_column if label_column is not None else self.settings.get("label_column"),
            label_names=self.settings.get("label_names"),
            regression=self.settings.get("num_classes") == 1,
            header=header,
            delimiter=delimiter,
            data_dir=data_dir,
        )
        preprocessor = BertPreprocessor(tokenizer, sequence_length=sequence_length)
        return classification_dataset(
            data, preprocessor, batch_size, split=split or "validation", shuffle=False,
            **source_options
        )

    # === Serving ===

    def reads_text_pair(self):
        from kbert.export import task_reads_text_pair

        return task_reads_text_pair(self.settings)

    def serving_endpoints(self, model, preprocessor, top_k=5, text_pair=None):
        """`serving_default` (text), `serve_token_ids` and `serve_examples` (Classify/Regress)."""
        import tensorflow as tf

        from kbert import signatures

        num_classes = model.num_classes
        regression = num_classes == 1
        label_names = self.label_names(num_classes)
        if text_pair is None:
            text_pair = self.reads_text_pair()
        text_names = ("text", "text_pair") if text_pair else ("text",)

        def run_model(token_ids, segment_ids, padding_mask):
            logits = model(
                {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask},
                training=False,
            )  # (batch, num_classes), float32
            if regression:
                return {"score": logits[:, 0]}
            probabilities = tf.nn.softmax(logits, axis=-1)
            label_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            label = tf.gather(tf.constant(label_names), label_id)
            return {"probabilities": probabilities, "label_id": label_id, "label": label}

        def from_token_ids(token_ids, segment_ids, padding_mask):
            return run_model(
                **signatures.checked_token_id_inputs(model.backbone, token_ids, segment_ids, padding_mask)
            )

        def from_text(text, text_pair=None):
            # Padded to the longest request of the batch, not to the model's sequence length.
            return run_model(**preprocessor(text, text_pair, pad_to_longest=True))

        def from_examples(inputs):
            # No default value: an Example without the text is refused, not read as "".
            features = tf.io.parse_example(
                inputs, {name: tf.io.FixedLenFeature([], tf.string) for name in text_names}
            )
            outputs = from_text(**features)
            if regression:
                return {tf.saved_model.REGRESS_OUTPUTS: outputs["score"]}
            batch_size = tf.shape(inputs)[0]
            classes = tf.tile(tf.constant(label_names)[None, :], [batch_size, 1])
            return {
                tf.saved_model.CLASSIFY_OUTPUT_CLASSES: classes,  # (batch, num_classes)
                tf.saved_model.CLASSIFY_OUTPUT_SCORES: outputs["probabilities"],
            }

        return {
            signatures.SERVING_DEFAULT: (from_text, text_names, signatures.PREDICT_METHOD),
            signatures.SERVE_TOKEN_IDS: (
                from_token_ids,
                ("token_ids", "segment_ids", "padding_mask"),
                signatures.PREDICT_METHOD,
            ),
            signatures.SERVE_EXAMPLES: (
                from_examples,
                (tf.saved_model.CLASSIFY_INPUTS,),
                signatures.REGRESS_METHOD if regression else signatures.CLASSIFY_METHOD,
            ),
        }


def _settings(training_texts, text_columns, label_column):
    """What a classifier's model directory records about its task."""
    glue = training_texts.task
    num_classes = training_texts.num_classes
    return {
        "name": glue.name if glue else "classification",
        "label_names": list(training_texts.label_names) if training_texts.label_names else None,
        "num_classes": num_classes,
        "metric": glue.metric if glue else ("pearson_spearman" if num_classes == 1 else "accuracy"),
        "text_columns": (
            list(text_columns) if text_columns else list(glue.text_columns) if glue else None
        ),
        "label_column": label_column,
        "text_pair": training_texts.has_text_pair,
    }
