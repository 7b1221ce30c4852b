"""The task registry, and what each task decides once."""

import keras
import pytest

import kbert
from kbert import tasks


def tiny_backbone():
    return kbert.BertBackbone(
        vocabulary_size=30, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
        max_sequence_length=16,
    )


def test_tasks_are_found_by_name_model_and_model_directory_config():
    assert tasks.names() == ("classification", "masked_lm", "embedding")
    assert tasks.get("masked_lm").model_class_name == "BertMaskedLM"
    assert tasks.get("sst2").settings == {"name": "sst2"}
    assert isinstance(tasks.get("sst2"), type(tasks.get("classification")))
    classifier = kbert.BertClassifier(tiny_backbone(), num_classes=2)
    assert tasks.for_model(classifier).name == "classification"
    # Directories that saved no task name (converted checkpoints) are read by their model class.
    config = {"model": {"class_name": "BertMaskedLM"}, "task": {"label_names": None}}
    assert tasks.from_config(config).name == "masked_lm"
    with pytest.raises(ValueError, match="Expected a BertClassifier or BertMaskedLM or BertTextEmbedder to export"):
        tasks.from_config({"model": {"class_name": "BertBackbone"}, "task": None}, purpose="export")
    with pytest.raises(ValueError, match="Expected task to be one of"):
        tasks.get("sst3")


def test_glue_tasks_name_their_classes_as_tfds_does():
    assert tasks.get("sst2").label_names(2) == ["negative", "positive"]
    assert tasks.get("cola").label_names(2) == ["unacceptable", "acceptable"]
    assert tasks.get("mnli").label_names(3) == ["entailment", "neutral", "contradiction"]
    # Saved names win; a task without names falls back to the class ids.
    assert tasks.get("sst2", {"label_names": ["bad", "good"]}).label_names(2) == ["bad", "good"]
    assert tasks.get("classification").label_names(3) == ["0", "1", "2"]


def test_models_compile_with_their_task_choices():
    classifier = kbert.BertClassifier(tiny_backbone(), num_classes=1)
    classifier.compile()
    assert isinstance(classifier.loss, keras.losses.MeanSquaredError)
    masked_lm = kbert.BertMaskedLM(tiny_backbone())
    masked_lm.compile()
    defaults = tasks.for_model(masked_lm).compile_defaults(masked_lm)
    assert [metric.name for metric in defaults["weighted_metrics"]] == [
        "masked_lm_loss", "masked_lm_accuracy"
    ]
    assert type(masked_lm.loss) is type(defaults["loss"])
    # A given argument stays the caller's.
    classifier.compile(loss="mae")
    assert classifier.loss == "mae"
