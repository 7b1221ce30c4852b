"""keras-hub presets into kbert and back, compared with keras-hub itself.

keras-hub's BERT computes GELU with the tanh approximation; the tests check outputs
against the documented size of that difference, and exactly (to float rounding) once the
keras-hub model is switched to exact GELU, which shows that the weights map one to one.
"""

import json
import os

import keras
import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import kbert  # noqa: E402
from kbert import cli, model_dir  # noqa: E402
from kbert.convert import ConversionError, from_huggingface, from_keras_hub, read_keras_hub, to_keras_hub  # noqa: E402

keras_hub = pytest.importorskip("keras_hub")

# The documented tanh-GELU difference (docs/conversion.md), measured on all-MiniLM-L6-v2: at most about
# 1e-2 in sequence_output at real tokens and 3e-4 in pooled_output.
GELU_SEQUENCE_TOLERANCE = 2e-2
GELU_POOLED_TOLERANCE = 1e-3

SENTENCES = [
    "A gorgeous, witty, seductive movie.",
    "The acting, costumes, music, cinematography and sound are all astounding given the "
    "production's austere locales.",
    "Unflinchingly bleak and desperate.",
    "Naïve but charming.",
]
TINY_VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{index}" for index in range(35)]
TINY_BACKBONE = dict(
    vocabulary_size=len(TINY_VOCABULARY), num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
    max_sequence_length=24,
)


def use_exact_gelu(hub_backbone):
    for transformer_layer in hub_backbone.transformer_layers:
        transformer_layer._feedforward_intermediate_dense.activation = keras.activations.gelu


def outputs_of(model, inputs):
    return keras.tree.map_structure(keras.ops.convert_to_numpy, model(inputs))


def tiny_inputs():
    rng = np.random.default_rng(0)
    padding_mask = np.array([[1] * 10, [1] * 6 + [0] * 4, [1] * 3 + [0] * 7], "int32")
    return {
        "token_ids": rng.integers(5, len(TINY_VOCABULARY), (3, 10)).astype("int32") * padding_mask,
        "segment_ids": np.array([[0] * 5 + [1] * 5, [0] * 10, [0, 0, 1] + [0] * 7], "int32"),
        "padding_mask": padding_mask,
    }


def randomize(model, seed=0):
    # Random biases and LayerNorm parameters too, so that a swapped weight cannot go unnoticed.
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.normal(0.0, 0.2, variable.shape).astype("float32") + keras.ops.convert_to_numpy(variable))


@pytest.mark.slow
def test_minilm_to_keras_hub_and_back(minilm_path, tmp_path):
    transformers = pytest.importorskip("transformers")
    from_huggingface(minilm_path, tmp_path / "kbert")
    notes = to_keras_hub(tmp_path / "kbert", tmp_path / "hub")
    assert any("tanh approximation" in note for note in notes)

    hub_backbone = keras_hub.models.BertBackbone.from_preset(str(tmp_path / "hub"))
    hub_tokenizer = keras_hub.models.BertTokenizer.from_preset(str(tmp_path / "hub"))
    assert hub_tokenizer.lowercase is True
    encoded = transformers.AutoTokenizer.from_pretrained(minilm_path)(SENTENCES, padding=True, return_tensors="np")
    inputs = {
        "token_ids": encoded["input_ids"].astype("int32"),
        "segment_ids": encoded["token_type_ids"].astype("int32"),
        "padding_mask": encoded["attention_mask"].astype("int32"),
    }
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(hub_tokenizer(SENTENCES[0])),
        inputs["token_ids"][0][inputs["padding_mask"][0] == 1][1:-1],  # without [CLS] and [SEP]
    )
    model = kbert.load(tmp_path / "kbert").backbone  # a sentence-transformers folder gives an embedder
    expected = outputs_of(model, inputs)
    tokens = inputs["padding_mask"].astype(bool)

    approximate = outputs_of(hub_backbone, inputs)
    sequence_difference = np.abs(approximate["sequence_output"] - expected["sequence_output"])[tokens].max()
    pooled_difference = np.abs(approximate["pooled_output"] - expected["pooled_output"]).max()
    print(f"tanh GELU difference: sequence_output {sequence_difference:.2e}, pooled_output {pooled_difference:.2e}")
    assert 1e-4 < sequence_difference < GELU_SEQUENCE_TOLERANCE
    assert pooled_difference < GELU_POOLED_TOLERANCE

    use_exact_gelu(hub_backbone)
    exact = outputs_of(hub_backbone, inputs)
    np.testing.assert_allclose(exact["sequence_output"], expected["sequence_output"], atol=1e-4)
    np.testing.assert_allclose(exact["pooled_output"], expected["pooled_output"], atol=1e-5)

    conversion = from_keras_hub(tmp_path / "hub", tmp_path / "kbert_again")
    assert conversion.tokenizer == {"lowercase": True, "strip_accents": True}
    for original, copy in zip(model.weights, kbert.load(tmp_path / "kbert_again").weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(original), keras.ops.convert_to_numpy(copy))


def test_preset_written_by_keras_hub(tmp_path):
    hub_backbone = keras_hub.models.BertBackbone(**TINY_BACKBONE)
    randomize(hub_backbone)
    hub_backbone.save_to_preset(str(tmp_path / "hub"))
    keras_hub.models.BertTokenizer(vocabulary=TINY_VOCABULARY, lowercase=True).save_to_preset(str(tmp_path / "hub"))

    conversion = from_keras_hub(tmp_path / "hub", tmp_path / "kbert")
    assert isinstance(conversion.model, kbert.BertBackbone)
    assert conversion.tokenizer["lowercase"] is True
    assert (tmp_path / "kbert" / "vocab.txt").read_text().splitlines() == TINY_VOCABULARY
    inputs = tiny_inputs()
    expected = outputs_of(kbert.load(tmp_path / "kbert"), inputs)
    use_exact_gelu(hub_backbone)
    actual = outputs_of(hub_backbone, inputs)
    np.testing.assert_allclose(actual["sequence_output"], expected["sequence_output"], atol=1e-5)
    np.testing.assert_allclose(actual["pooled_output"], expected["pooled_output"], atol=1e-5)


def test_masked_lm_round_trip(tmp_path):
    backbone = kbert.BertBackbone(**TINY_BACKBONE)
    model = kbert.BertMaskedLM(backbone, next_sentence_prediction=True)
    randomize(model)
    model_dir.save(model, tmp_path / "kbert", TINY_VOCABULARY, tokenizer={"lowercase": False, "strip_accents": False})
    notes = to_keras_hub(tmp_path / "kbert", tmp_path / "hub")
    assert any("next-sentence head" in note and "not used" in note for note in notes), notes

    hub_model = keras_hub.models.BertMaskedLM.from_preset(str(tmp_path / "hub"))
    assert hub_model.preprocessor.tokenizer.lowercase is False
    inputs = {**tiny_inputs(), "mask_positions": np.array([[1, 4], [0, 5], [2, 2]], "int32")}
    use_exact_gelu(hub_model.backbone)
    # The heads differ only in LayerNorm epsilon (keras-hub 1e-5, kbert 1e-12).
    np.testing.assert_allclose(outputs_of(hub_model, inputs), outputs_of(model, inputs)["mlm"], atol=1e-3)

    conversion = from_keras_hub(tmp_path / "hub", tmp_path / "kbert_again")
    assert any("epsilon" in note for note in conversion.notes)
    again = conversion.model
    assert isinstance(again, kbert.BertMaskedLM) and not again.next_sentence_prediction
    for variable in again.weights:
        original = {weight.path: weight for weight in model.weights}[variable.path]
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), keras.ops.convert_to_numpy(original))


def test_classifier_round_trip(tmp_path):
    model = kbert.BertClassifier(kbert.BertBackbone(**TINY_BACKBONE), num_classes=3, dropout=0.2)
    randomize(model)
    model_dir.save(model, tmp_path / "kbert", TINY_VOCABULARY, tokenizer={"lowercase": True, "strip_accents": True})
    to_keras_hub(tmp_path / "kbert", tmp_path / "hub")
    hub_model = keras_hub.models.BertTextClassifier.from_preset(str(tmp_path / "hub"))
    assert hub_model.num_classes == 3
    again = read_keras_hub(tmp_path / "hub").model
    assert isinstance(again, kbert.BertClassifier) and again.num_classes == 3 and again.dropout == 0.2
    inputs = tiny_inputs()
    np.testing.assert_array_equal(outputs_of(again, inputs), outputs_of(model, inputs))


def test_not_a_keras_hub_bert_preset(tmp_path, minilm_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_keras_hub(tmp_path / "absent")
    with pytest.raises(ConversionError, match="from_format='huggingface'"):
        read_keras_hub(minilm_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(
        json.dumps({"registered_name": "keras_hub>GPT2Backbone", "class_name": "GPT2Backbone", "config": {}})
    )
    with pytest.raises(ConversionError, match="GPT2Backbone, not a keras-hub BertBackbone"):
        read_keras_hub(tmp_path / "other")


def test_command_line(tmp_path, capsys):
    model = kbert.BertBackbone(**TINY_BACKBONE)
    model_dir.save(model, tmp_path / "kbert", TINY_VOCABULARY, tokenizer={"lowercase": True, "strip_accents": True})
    assert cli.main(["convert", "--to", "keras-hub", str(tmp_path / "kbert"), "--output", str(tmp_path / "hub")]) == 0
    assert (tmp_path / "hub" / "assets" / "tokenizer" / "vocabulary.txt").is_file()
    assert cli.main(["convert", "--from", "keras-hub", str(tmp_path / "hub"), "--output", str(tmp_path / "back")]) == 0
    assert "BertBackbone, 2 layers, hidden size 16, 40 tokens (uncased)" in capsys.readouterr().out
