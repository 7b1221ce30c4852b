"""Original Google BERT TF checkpoints into kbert and back.

The checkpoints here are written the way the original code wrote them, with
`tf.compat.v1.train.Saver` and the original variable names, from Hugging Face weights
renamed by hand (the rule in docs/conversion.md), so that the converter is checked against an
independent statement of the mapping.
"""

import json
import os
import re

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import tensorflow as tf  # noqa: E402

import kbert  # noqa: E402
from kbert import cli  # noqa: E402
from kbert.convert import ConversionError, from_google, from_huggingface, read_google, to_google  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SENTENCES = [
    "A gorgeous, witty, seductive movie.",
    "The acting, costumes, music, cinematography and sound are all astounding given the "
    "production's austere locales.",
    "Unflinchingly bleak and desperate.",
]
TINY_VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{index}" for index in range(35)]


def google_name(huggingface_name):
    """The original variable name and whether the array is transposed, by the rule of docs/conversion.md."""
    special = {
        "cls.predictions.bias": "cls/predictions/output_bias",
        "cls.seq_relationship.weight": "cls/seq_relationship/output_weights",
        "cls.seq_relationship.bias": "cls/seq_relationship/output_bias",
    }
    if huggingface_name in special:
        return special[huggingface_name], False
    name = huggingface_name if huggingface_name.startswith(("bert.", "cls.")) else "bert." + huggingface_name
    name = re.sub(r"\.layer\.(\d+)\.", r".layer_\1.", name).replace(".", "/")
    if "LayerNorm" in name:
        return name.replace("/weight", "/gamma").replace("/bias", "/beta"), False
    if name.endswith("_embeddings/weight"):
        return name[: -len("/weight")], False
    if name.endswith("/weight"):
        return name[: -len("/weight")] + "/kernel", True
    return name, False


def write_google_checkpoint(directory, state_dict, config, vocabulary, with_optimizer_state=False):
    directory.mkdir(parents=True, exist_ok=True)
    variables = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids") or key.startswith("cls.predictions.decoder"):
            continue
        name, transposed = google_name(key)
        value = np.asarray(value, "float32")
        variables[name] = tf.Variable(value.T if transposed else value)
        if with_optimizer_state:
            variables[name + "/adam_m"] = tf.Variable(np.zeros_like(value))
            variables[name + "/adam_v"] = tf.Variable(np.zeros_like(value))
    if with_optimizer_state:
        variables["global_step"] = tf.Variable(1000, dtype=tf.int64)
    saver = tf.compat.v1.train.Saver(var_list=variables)
    saver.save(None, str(directory / "bert_model.ckpt"), write_meta_graph=False)
    bert_config = {
        key: config[key]
        for key in (
            "attention_probs_dropout_prob", "hidden_act", "hidden_dropout_prob", "hidden_size",
            "initializer_range", "intermediate_size", "max_position_embeddings",
            "num_attention_heads", "num_hidden_layers", "type_vocab_size", "vocab_size",
        )
    }
    (directory / "bert_config.json").write_text(json.dumps(bert_config))
    (directory / "vocab.txt").write_text("".join(f"{token}\n" for token in vocabulary))


@pytest.fixture(scope="module")
def minilm_google(minilm_path, tmp_path_factory):
    from safetensors.numpy import load_file

    directory = tmp_path_factory.mktemp("google") / "minilm"
    config = json.loads((minilm_path / "config.json").read_text())
    vocabulary = (minilm_path / "vocab.txt").read_text().splitlines()
    write_google_checkpoint(
        directory, load_file(minilm_path / "model.safetensors"), config, vocabulary
    )
    return directory


def test_minilm_google_checkpoint_matches_transformers(minilm_path, minilm_google, tmp_path):
    names = dict(tf.train.list_variables(str(minilm_google / "bert_model.ckpt")))
    assert names["bert/encoder/layer_0/attention/self/query/kernel"] == [384, 384]
    conversion = from_google(minilm_google, tmp_path / "kbert")
    assert conversion.tokenizer == {"lowercase": True, "strip_accents": True}

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path)
    encoded = tokenizer(SENTENCES, padding=True, return_tensors="np")
    reference = transformers.BertModel.from_pretrained(minilm_path).eval()
    with torch.no_grad():
        expected = reference(**{key: torch.tensor(value) for key, value in encoded.items()})
    model = kbert.load(tmp_path / "kbert")
    outputs = model.predict(
        {
            "token_ids": encoded["input_ids"].astype("int32"),
            "segment_ids": encoded["token_type_ids"].astype("int32"),
            "padding_mask": encoded["attention_mask"].astype("int32"),
        },
        verbose=0,
    )
    sequence_difference = np.abs(outputs["sequence_output"] - expected.last_hidden_state.numpy()).max()
    pooled_difference = np.abs(outputs["pooled_output"] - expected.pooler_output.numpy()).max()
    print(f"max abs difference: sequence_output {sequence_difference:.2e}, pooled_output {pooled_difference:.2e}")
    assert sequence_difference < 1e-4
    assert pooled_difference < 1e-4


def tiny_pretraining_checkpoint(directory, with_optimizer_state=False):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(TINY_VOCABULARY), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=24,
    )
    model = transformers.BertForPreTraining(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    state = {key: value.numpy() for key, value in model.state_dict().items()}
    write_google_checkpoint(directory, state, config.to_dict(), TINY_VOCABULARY, with_optimizer_state)
    return model


def test_pretraining_heads_match_and_round_trip(tmp_path):
    reference = tiny_pretraining_checkpoint(tmp_path / "google")
    conversion = from_google(tmp_path / "google", tmp_path / "kbert")
    assert conversion.notes == []
    model = kbert.load(tmp_path / "kbert")
    assert isinstance(model, kbert.BertMaskedLM) and model.next_sentence_prediction
    rng = np.random.default_rng(0)
    inputs = {
        "token_ids": rng.integers(5, len(TINY_VOCABULARY), (2, 9)).astype("int32"),
        "segment_ids": np.array([[0] * 5 + [1] * 4, [0] * 9], "int32"),
        "padding_mask": np.array([[1] * 9, [1] * 6 + [0] * 3], "int32"),
        "mask_positions": np.array([[1, 7], [0, 3]], "int32"),
    }
    with torch.no_grad():
        expected = reference(
            input_ids=torch.tensor(inputs["token_ids"], dtype=torch.long),
            token_type_ids=torch.tensor(inputs["segment_ids"], dtype=torch.long),
            attention_mask=torch.tensor(inputs["padding_mask"], dtype=torch.long),
        )
    outputs = model.predict(inputs, verbose=0)
    expected_mlm = np.take_along_axis(
        expected.prediction_logits.numpy(), inputs["mask_positions"][:, :, None], axis=1
    )
    np.testing.assert_allclose(outputs["mlm"], expected_mlm, atol=1e-5)
    np.testing.assert_allclose(outputs["nsp"], expected.seq_relationship_logits.numpy(), atol=1e-5)

    to_google(tmp_path / "kbert", tmp_path / "google_again")
    original = dict(tf.train.list_variables(str(tmp_path / "google" / "bert_model.ckpt")))
    written = dict(tf.train.list_variables(str(tmp_path / "google_again" / "bert_model.ckpt")))
    assert written == original
    for name in written:
        np.testing.assert_array_equal(
            tf.train.load_variable(str(tmp_path / "google_again" / "bert_model.ckpt"), name),
            tf.train.load_variable(str(tmp_path / "google" / "bert_model.ckpt"), name),
            err_msg=name,
        )
    config = json.loads((tmp_path / "google_again" / "bert_config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["hidden_act"] == "gelu"


def test_google_and_huggingface_agree_on_names(tmp_path):
    # The same weights through both formats give the same kbert model.
    reference = tiny_pretraining_checkpoint(tmp_path / "google")
    reference.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "vocab.txt").write_text("".join(f"{token}\n" for token in TINY_VOCABULARY))
    from_google(tmp_path / "google", tmp_path / "from_google")
    from_huggingface(tmp_path / "hf", tmp_path / "from_hf")
    for a, b in zip(kbert.load(tmp_path / "from_google").weights, kbert.load(tmp_path / "from_hf").weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


def test_checkpoint_prefix_optimizer_state_and_cased_vocabulary(tmp_path):
    tiny_pretraining_checkpoint(tmp_path / "google", with_optimizer_state=True)
    (tmp_path / "google" / "vocab.txt").write_text("".join(f"{token}\n" for token in TINY_VOCABULARY[:-1] + ["The"]))
    conversion = read_google(tmp_path / "google" / "bert_model.ckpt")
    assert any("Skipped 93 optimizer variables" in note for note in conversion.notes), conversion.notes
    assert conversion.tokenizer == {"lowercase": False, "strip_accents": False}
    assert read_google(tmp_path / "google", lowercase=True).tokenizer["lowercase"] is True


def test_missing_tensor_is_an_error(tmp_path):
    reference = tiny_pretraining_checkpoint(tmp_path / "full")
    state = {key: value.numpy() for key, value in reference.state_dict().items()}
    del state["bert.encoder.layer.1.attention.self.key.weight"]
    write_google_checkpoint(tmp_path / "google", state, reference.config.to_dict(), TINY_VOCABULARY)
    with pytest.raises(ConversionError, match=r"no tensor bert/encoder/layer_1/attention/self/key/kernel.*\(16, 16\)"):
        read_google(tmp_path / "google")


def test_wrong_shape_names_tensor_and_both_shapes(tmp_path):
    tiny_pretraining_checkpoint(tmp_path / "google")
    config = json.loads((tmp_path / "google" / "bert_config.json").read_text())
    (tmp_path / "google" / "bert_config.json").write_text(json.dumps({**config, "max_position_embeddings": 32}))
    with pytest.raises(
        ConversionError,
        match=r"bert/embeddings/position_embeddings .* has shape \(24, 16\), but the model expects \(32, 16\)",
    ):
        read_google(tmp_path / "google")


def test_unexpected_tensor_is_an_error(tmp_path):
    tiny_pretraining_checkpoint(tmp_path / "google")
    config = json.loads((tmp_path / "google" / "bert_config.json").read_text())
    (tmp_path / "google" / "bert_config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    with pytest.raises(ConversionError, match=r"unexpected tensor bert/encoder/layer_1/"):
        read_google(tmp_path / "google")


def test_object_based_checkpoint_is_an_error(tmp_path):
    tiny_pretraining_checkpoint(tmp_path / "google")
    for path in (tmp_path / "google").glob("bert_model.ckpt*"):
        path.unlink()
    (tmp_path / "google" / "checkpoint").unlink()
    tf.train.Checkpoint(embeddings=tf.Variable(np.zeros((3, 2), "float32"))).write(str(tmp_path / "google" / "bert_model.ckpt"))
    with pytest.raises(ConversionError, match="object-based TF2 checkpoint"):
        read_google(tmp_path / "google")


def test_missing_files_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_google(tmp_path / "absent")
    tiny_pretraining_checkpoint(tmp_path / "google")
    (tmp_path / "google" / "bert_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="bert_config.json"):
        read_google(tmp_path / "google")


def test_command_line(tmp_path, capsys):
    tiny_pretraining_checkpoint(tmp_path / "google")
    assert cli.main(["convert", "--from", "google", str(tmp_path / "google"), "--output", str(tmp_path / "kbert")]) == 0
    assert "BertMaskedLM, 2 layers" in capsys.readouterr().out
    assert cli.main(["convert", "--to", "google", str(tmp_path / "kbert"), "--output", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "bert_model.ckpt.index").is_file()
    assert cli.main(["convert", "--from", "google", str(tmp_path / "google"), "--output", str(tmp_path / "x"), "--allow-pytorch-bin"]) == 2
    assert "--allow-pytorch-bin applies only" in capsys.readouterr().err
