"""Hugging Face checkpoints into kbert and back, compared with `transformers` itself."""

import json
import os
import re

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import kbert  # noqa: E402
from kbert import cli  # noqa: E402
from conftest import tiny_backbone, tiny_huggingface_config  # noqa: E402
from kbert.convert import (  # noqa: E402
    ConversionError,
    from_huggingface,
    load_pretrained_weights,
    read_huggingface,
    to_huggingface,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Real sentences of different lengths, so that the batch is padded.
SENTENCES = [
    "A gorgeous, witty, seductive movie.",
    "It's a cookie-cutter movie, a cut-and-paste job.",
    "The acting, costumes, music, cinematography and sound are all astounding given the "
    "production's austere locales.",
    "Unflinchingly bleak and desperate.",
    "Naïve but charming.",
]
SECOND_SENTENCES = ["Yes.", "No, not at all.", "Maybe", "It is.", "Café au lait for everyone at the end."]

TINY_VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{index}" for index in range(35)]


def tiny_config(**overrides):
    return tiny_huggingface_config(len(TINY_VOCABULARY), **overrides)


def save_tiny(model_class, directory, seed=0, **config_overrides):
    torch.manual_seed(seed)
    model = model_class(tiny_config(**config_overrides)).eval()
    with torch.no_grad():
        # Random biases and LayerNorm parameters, so that a swapped weight cannot go unnoticed.
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(directory)
    (directory / "vocab.txt").write_text("".join(f"{token}\n" for token in TINY_VOCABULARY))
    return model


def tiny_inputs(batch_size=3, sequence_length=10, seed=1):
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(5, len(TINY_VOCABULARY), (batch_size, sequence_length)).astype("int32")
    lengths = np.array([sequence_length, 6, 3])[:batch_size]
    padding_mask = (np.arange(sequence_length)[None, :] < lengths[:, None]).astype("int32")
    segment_ids = ((np.arange(sequence_length)[None, :] >= lengths[:, None] // 2) * padding_mask).astype("int32")
    return {
        "token_ids": token_ids * padding_mask,
        "segment_ids": segment_ids,
        "padding_mask": padding_mask,
    }


def torch_inputs(inputs):
    return {
        "input_ids": torch.tensor(inputs["token_ids"], dtype=torch.long),
        "token_type_ids": torch.tensor(inputs["segment_ids"], dtype=torch.long),
        "attention_mask": torch.tensor(inputs["padding_mask"], dtype=torch.long),
    }


def to_numpy(value):
    import keras

    return keras.ops.convert_to_numpy(value)


@pytest.fixture(scope="module")
def minilm_directory(minilm_path, tmp_path_factory):
    output = tmp_path_factory.mktemp("minilm") / "kbert"
    from_huggingface(minilm_path, output)
    return output


@pytest.fixture(scope="module")
def minilm_transformers(minilm_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path)
    return tokenizer, transformers.BertModel.from_pretrained(minilm_path).eval()


def minilm_reference(minilm_transformers, first, second=None):
    tokenizer, model = minilm_transformers
    encoded = tokenizer(first, second, padding=True, return_tensors="np")
    with torch.no_grad():
        outputs = model(**{key: torch.tensor(value) for key, value in encoded.items()})
    inputs = {
        "token_ids": encoded["input_ids"].astype("int32"),
        "segment_ids": encoded["token_type_ids"].astype("int32"),
        "padding_mask": encoded["attention_mask"].astype("int32"),
    }
    return inputs, outputs.last_hidden_state.numpy(), outputs.pooler_output.numpy()


@pytest.mark.backends
@pytest.mark.parametrize("pairs", [False, True], ids=["sentences", "sentence_pairs"])
def test_minilm_matches_transformers(minilm_transformers, minilm_directory, pairs):
    inputs, sequence_reference, pooled_reference = minilm_reference(
        minilm_transformers, SENTENCES, SECOND_SENTENCES if pairs else None
    )
    assert inputs["padding_mask"].min() == 0, "the batch should contain padding"
    assert inputs["segment_ids"].max() == (1 if pairs else 0)
    embedder = kbert.load(minilm_directory)
    # The folder is a sentence-transformers one (tests/test_convert_sentence_transformers.py);
    # its BERT is the embedder's backbone.
    assert isinstance(embedder, kbert.BertTextEmbedder)
    model = embedder.backbone
    outputs = model.predict(inputs, verbose=0)
    sequence_difference = np.abs(outputs["sequence_output"] - sequence_reference)
    tokens = inputs["padding_mask"].astype(bool)
    pooled_difference = np.abs(outputs["pooled_output"] - pooled_reference).max()
    print(
        f"max abs difference: sequence_output {sequence_difference.max():.2e} "
        f"(real tokens {sequence_difference[tokens].max():.2e}), pooled_output {pooled_difference:.2e}"
    )
    assert sequence_difference.max() < 1e-4
    assert pooled_difference < 1e-4
    # Padded positions carry the larger part of the difference (transformers' own eager and
    # SDPA attention differ there by as much); at real tokens the match is much closer.
    assert sequence_difference[tokens].max() < 1e-5


def test_sentence_embeddings_end_to_end(minilm_transformers, minilm_directory, shared_data):
    """kbert's tokenizer and converted model against transformers' tokenizer and model on SST-2
    dev: the token ids of every sentence, and the mean-pooled sentence embeddings (as
    sentence-transformers computes them) of every fourth sentence by length, to keep it quick."""
    import tensorflow as tf

    lines = (shared_data / "glue" / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    sentences = sorted((line.split("\t")[0] for line in lines), key=len)  # similar lengths batch together
    preprocessor = kbert.BertPreprocessor(kbert.BertTokenizer.from_model_dir(minilm_directory), sequence_length=128)
    hf_tokenizer, hf_model = minilm_transformers

    def encode(batch):
        inputs = {key: value.numpy() for key, value in preprocessor(tf.constant(batch)).items()}
        length = int(inputs["padding_mask"].sum(axis=1).max())
        inputs = {key: value[:, :length] for key, value in inputs.items()}
        encoded = hf_tokenizer(batch, padding=True, truncation=True, max_length=128, return_tensors="np")
        np.testing.assert_array_equal(inputs["token_ids"], encoded["input_ids"])
        np.testing.assert_array_equal(inputs["padding_mask"], encoded["attention_mask"])
        return inputs, encoded

    for start in range(0, len(sentences), 128):
        encode(sentences[start : start + 128])

    def mean_pooled(hidden, padding_mask):
        mask = padding_mask[:, :, None].astype("float32")
        return (hidden * mask).sum(axis=1) / mask.sum(axis=1)

    model = kbert.load(minilm_directory).backbone
    sample = sentences[::4]
    largest_difference = 0.0
    for start in range(0, len(sample), 64):
        inputs, encoded = encode(sample[start : start + 64])
        with torch.no_grad():
            expected = hf_model(**{key: torch.tensor(value) for key, value in encoded.items()}).last_hidden_state
        actual = to_numpy(model(inputs)["sequence_output"])
        difference = np.abs(
            mean_pooled(actual, inputs["padding_mask"]) - mean_pooled(expected.numpy(), encoded["attention_mask"])
        ).max()
        largest_difference = max(largest_difference, float(difference))
    print(
        f"{len(sentences)} SST-2 dev sentences tokenized alike; mean-pooled embeddings of {len(sample)}: "
        f"max abs difference {largest_difference:.2e}"
    )
    assert largest_difference < 1e-4


def test_minilm_directory_holds_vocabulary_and_uncased_settings(minilm_path, minilm_directory):
    config = json.loads((minilm_directory / "config.json").read_text())
    assert config["tokenizer"]["lowercase"] is True
    assert config["tokenizer"]["strip_accents"] is True
    assert (minilm_directory / "vocab.txt").read_text() == (minilm_path / "vocab.txt").read_text()
    backbone_config = config["model"]["config"]["backbone"]["config"]
    assert backbone_config["num_layers"] == 6
    assert backbone_config["hidden_dim"] == 384


@pytest.mark.parametrize(
    "model_class, next_sentence",
    [("BertForMaskedLM", False), ("BertForPreTraining", True)],
)
def test_masked_lm_round_trip(tmp_path, model_class, next_sentence):
    reference = save_tiny(getattr(transformers, model_class), tmp_path / "hf")
    inputs = tiny_inputs()
    mask_positions = np.array([[1, 4], [0, 5], [2, 2]], "int32")

    conversion = from_huggingface(tmp_path / "hf", tmp_path / "kbert")
    if not next_sentence:
        assert any("no pooler" in note for note in conversion.notes), conversion.notes
    model = kbert.load(tmp_path / "kbert")
    assert isinstance(model, kbert.BertMaskedLM)
    assert model.next_sentence_prediction is next_sentence
    outputs = model.predict({**inputs, "mask_positions": mask_positions}, verbose=0)
    with torch.no_grad():
        reference_outputs = reference(**torch_inputs(inputs))
    logits = reference_outputs.logits if not next_sentence else reference_outputs.prediction_logits
    expected_mlm = np.take_along_axis(logits.numpy(), mask_positions[:, :, None], axis=1)
    mlm = outputs["mlm"] if next_sentence else outputs
    np.testing.assert_allclose(mlm, expected_mlm, atol=1e-5)
    if next_sentence:
        np.testing.assert_allclose(outputs["nsp"], reference_outputs.seq_relationship_logits.numpy(), atol=1e-5)

    # kbert -> Hugging Face -> kbert keeps every tensor and transformers reads it back.
    to_huggingface(tmp_path / "kbert", tmp_path / "hf_again")
    reloaded = getattr(transformers, model_class).from_pretrained(tmp_path / "hf_again").eval()
    with torch.no_grad():
        reloaded_outputs = reloaded(**torch_inputs(inputs))
    reloaded_logits = reloaded_outputs.logits if not next_sentence else reloaded_outputs.prediction_logits
    np.testing.assert_array_equal(reloaded_logits.numpy(), logits.numpy())
    from_huggingface(tmp_path / "hf_again", tmp_path / "kbert_again")
    again = kbert.load(tmp_path / "kbert_again")
    for original, copy in zip(model.weights, again.weights):
        np.testing.assert_array_equal(to_numpy(original), to_numpy(copy), err_msg=original.path)


def test_classifier_round_trip(tmp_path):
    reference = save_tiny(
        transformers.BertForSequenceClassification,
        tmp_path / "hf",
        num_labels=3,
        id2label={0: "negative", 1: "neutral", 2: "positive"},
        label2id={"negative": 0, "neutral": 1, "positive": 2},
    )
    inputs = tiny_inputs()
    conversion = from_huggingface(tmp_path / "hf", tmp_path / "kbert")
    assert conversion.task == {"label_names": ["negative", "neutral", "positive"]}
    model = kbert.load(tmp_path / "kbert")
    assert isinstance(model, kbert.BertClassifier) and model.num_classes == 3
    with torch.no_grad():
        expected = reference(**torch_inputs(inputs)).logits.numpy()
    np.testing.assert_allclose(model.predict(inputs, verbose=0), expected, atol=1e-5)

    to_huggingface(tmp_path / "kbert", tmp_path / "hf_again")
    reloaded = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "hf_again").eval()
    assert reloaded.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    with torch.no_grad():
        np.testing.assert_array_equal(reloaded(**torch_inputs(inputs)).logits.numpy(), expected)


def test_backbone_export_loads_as_bert_model(tmp_path):
    reference = save_tiny(transformers.BertModel, tmp_path / "hf")
    from_huggingface(tmp_path / "hf", tmp_path / "kbert")
    to_huggingface(tmp_path / "kbert", tmp_path / "hf_again")
    reloaded = transformers.BertModel.from_pretrained(tmp_path / "hf_again").eval()
    inputs = torch_inputs(tiny_inputs())
    with torch.no_grad():
        np.testing.assert_array_equal(
            reloaded(**inputs).pooler_output.numpy(), reference(**inputs).pooler_output.numpy()
        )
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf_again")
    assert tokenizer.convert_tokens_to_ids(["[CLS]", "w3"]) == [2, 8]


def test_masked_lm_loaded_into_classifier_reports_what_was_not_used(tmp_path):
    save_tiny(transformers.BertForPreTraining, tmp_path / "hf")
    from_huggingface(tmp_path / "hf", tmp_path / "kbert")
    pretrained = kbert.load(tmp_path / "kbert")
    backbone = tiny_backbone(len(TINY_VOCABULARY), max_sequence_length=24)
    classifier = kbert.BertClassifier(backbone, num_classes=2)
    notes = load_pretrained_weights(classifier, tmp_path / "kbert")
    assert any("masked-LM head" in note and "not used" in note for note in notes), notes
    assert any("next-sentence head" in note and "not used" in note for note in notes), notes
    assert any("no classifier head" in note for note in notes), notes
    np.testing.assert_array_equal(
        to_numpy(backbone.transformer_layers[1].query_dense.kernel),
        to_numpy(pretrained.backbone.transformer_layers[1].query_dense.kernel),
    )


def test_pytorch_bin_needs_opt_in(tmp_path):
    reference = save_tiny(transformers.BertForMaskedLM, tmp_path / "hf")
    os.remove(tmp_path / "hf" / "model.safetensors")
    # state_dict() carries the tied decoder weights, which must equal the embedding.
    torch.save(reference.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="allow_pytorch_bin=True"):
        read_huggingface(tmp_path / "hf")
    conversion = read_huggingface(tmp_path / "hf", allow_pytorch_bin=True)
    np.testing.assert_array_equal(
        to_numpy(conversion.model.masked_lm_head.output_bias), reference.cls.predictions.bias.detach().numpy()
    )


class _RunsCode:
    """Unpickling this calls `print`: what a malicious pickle would do with worse functions."""

    def __reduce__(self):
        return (print, ("unpickled",))


def test_a_pytorch_bin_holding_objects_is_refused_without_torch_advice(tmp_path, capsys):
    reference = save_tiny(transformers.BertForMaskedLM, tmp_path / "hf")
    os.remove(tmp_path / "hf" / "model.safetensors")
    state = dict(reference.state_dict(), extra=_RunsCode())
    torch.save(state, tmp_path / "hf" / "pytorch_model.bin")
    capsys.readouterr()
    code = cli.main(
        ["convert", "--from", "huggingface", str(tmp_path / "hf"), "--output",
         str(tmp_path / "kbert"), "--allow-pytorch-bin"]
    )
    captured = capsys.readouterr()
    assert code == 2
    assert "unpickled" not in captured.out
    assert captured.err.strip().splitlines() == [
        f"kbert convert: error: {tmp_path / 'hf' / 'pytorch_model.bin'} holds Python objects "
        "besides tensors (or is not a PyTorch checkpoint), which kbert will not unpickle"
    ]
    assert "weights_only" not in captured.err


def test_a_vocabulary_with_duplicates_is_not_converted(tmp_path):
    save_tiny(transformers.BertModel, tmp_path / "hf")
    vocabulary_path = tmp_path / "hf" / "vocab.txt"
    tokens = vocabulary_path.read_text().splitlines()
    tokens[-1] = tokens[5]
    vocabulary_path.write_text("\n".join(tokens) + "\n")
    with pytest.raises(ValueError, match=f"line {len(tokens)}: the token .* is already on line 6"):
        read_huggingface(tmp_path / "hf")


def test_sharded_bfloat16_safetensors(tmp_path):
    reference = save_tiny(transformers.BertModel, tmp_path / "float32")
    reference.to(torch.bfloat16).save_pretrained(tmp_path / "hf", max_shard_size="4KB")
    (tmp_path / "hf" / "vocab.txt").write_text("".join(f"{token}\n" for token in TINY_VOCABULARY))
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    model = read_huggingface(tmp_path / "hf").model
    np.testing.assert_array_equal(
        to_numpy(model.transformer_layers[1].output_dense.kernel),
        reference.encoder.layer[1].output.dense.weight.detach().float().numpy().T,
    )


def test_untied_decoder_is_an_error(tmp_path):
    reference = save_tiny(transformers.BertForMaskedLM, tmp_path / "hf")
    state = reference.state_dict()
    state["cls.predictions.decoder.weight"] = state["cls.predictions.decoder.weight"] + 1.0
    os.remove(tmp_path / "hf" / "model.safetensors")
    torch.save(state, tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(ConversionError, match=r"cls\.predictions\.decoder\.weight .*differs"):
        read_huggingface(tmp_path / "hf", allow_pytorch_bin=True)


def edit_config(directory, **changes):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"hidden_act": "gelu_new"}, "hidden_act='gelu_new'"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key'"),
        ({"layer_norm_eps": 1e-5}, "layer_norm_eps=1e-05"),
        ({"model_type": "roberta"}, "model_type='roberta'"),
        ({"is_decoder": True}, "is_decoder=True"),
    ],
)
def test_unsupported_config_is_an_error(tmp_path, changes, message):
    save_tiny(transformers.BertModel, tmp_path / "hf")
    edit_config(tmp_path / "hf", **changes)
    with pytest.raises(ConversionError, match=re.escape(message)):
        read_huggingface(tmp_path / "hf")


def rewrite_weights(directory, edit):
    from safetensors.numpy import load_file, save_file

    path = directory / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_tensor_is_an_error(tmp_path):
    save_tiny(transformers.BertModel, tmp_path / "hf")
    rewrite_weights(tmp_path / "hf", lambda tensors: tensors.pop("encoder.layer.1.output.dense.weight"))
    with pytest.raises(ConversionError, match=r"no tensor bert\.encoder\.layer\.1\.output\.dense\.weight.*shape \(16, 32\)"):
        read_huggingface(tmp_path / "hf")


def test_wrong_shape_names_tensor_and_both_shapes(tmp_path):
    save_tiny(transformers.BertModel, tmp_path / "hf")
    edit_config(tmp_path / "hf", intermediate_size=40)
    with pytest.raises(
        ConversionError,
        match=r"encoder\.layer\.0\.intermediate\.dense\.weight .* has shape \(32, 16\), but the model expects \(40, 16\)",
    ):
        read_huggingface(tmp_path / "hf")


def test_unexpected_tensor_is_an_error(tmp_path):
    save_tiny(transformers.BertModel, tmp_path / "hf")
    edit_config(tmp_path / "hf", num_hidden_layers=1)
    with pytest.raises(ConversionError, match=r"unexpected tensor encoder\.layer\.1\."):
        read_huggingface(tmp_path / "hf")


def test_cased_vocabulary_is_detected_without_tokenizer_config(tmp_path):
    save_tiny(transformers.BertModel, tmp_path / "hf")
    assert read_huggingface(tmp_path / "hf").tokenizer == {"lowercase": True, "strip_accents": True}
    (tmp_path / "hf" / "vocab.txt").write_text("".join(f"{token}\n" for token in TINY_VOCABULARY[:-1] + ["The"]))
    assert read_huggingface(tmp_path / "hf").tokenizer == {"lowercase": False, "strip_accents": False}
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "strip_accents": False}))
    assert read_huggingface(tmp_path / "hf").tokenizer == {"lowercase": True, "strip_accents": False}


def test_command_line(tmp_path, capsys):
    save_tiny(transformers.BertForMaskedLM, tmp_path / "hf")
    assert cli.main(["convert", "--from", "huggingface", str(tmp_path / "hf"), "--output", str(tmp_path / "kbert")]) == 0
    assert "BertMaskedLM" in capsys.readouterr().out
    assert isinstance(kbert.load(tmp_path / "kbert"), kbert.BertMaskedLM)
    # A second conversion into the same directory needs --overwrite.
    assert cli.main(["convert", "--from", "huggingface", str(tmp_path / "hf"), "--output", str(tmp_path / "kbert")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["convert", "--to", "huggingface", str(tmp_path / "kbert"), "--output", str(tmp_path / "hf_again")]) == 0
    assert (tmp_path / "hf_again" / "model.safetensors").is_file()
    edit_config(tmp_path / "hf", hidden_act="relu")
    assert cli.main(["convert", "--from", "huggingface", str(tmp_path / "hf"), "--output", str(tmp_path / "other")]) == 2
    error = capsys.readouterr().err
    assert "hidden_act='relu'" in error and "Traceback" not in error
