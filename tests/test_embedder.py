"""Tests of BertTextEmbedder: pooling over real tokens, normalisation, config and model directory."""

import re

import keras
import numpy as np
import pytest

import kbert
from kbert.embedder import EmbeddingPooling
import conftest

VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{index}" for index in range(35)]
SEQUENCE_LENGTH = 12


def tiny_backbone():
    return conftest.tiny_backbone(len(VOCABULARY), SEQUENCE_LENGTH, dropout=0.0)


def tiny_inputs(batch_size=4, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.array([SEQUENCE_LENGTH, 7, 3, 5])[:batch_size]
    padding_mask = (np.arange(SEQUENCE_LENGTH)[None, :] < lengths[:, None]).astype("int32")
    # Ids at padded positions too, as a packer that pads with another id would leave them:
    # pooling must ignore those positions whatever they hold.
    token_ids = rng.integers(5, len(VOCABULARY), (batch_size, SEQUENCE_LENGTH)).astype("int32")
    return {
        "token_ids": token_ids,
        "segment_ids": np.zeros_like(token_ids),
        "padding_mask": padding_mask,
    }


def to_numpy(value):
    return keras.ops.convert_to_numpy(value)


def unit(vectors):
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


@pytest.mark.backends
def test_pooling_of_known_hidden_states():
    # Two real tokens and one padded token whose values would change every result if counted.
    hidden = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]]], "float32")  # (1, 3, 2)
    padding_mask = np.array([[1, 1, 0]], "int32")
    expected = {"mean": [2.0, 3.0], "max": [3.0, 4.0], "cls": [1.0, 2.0]}
    for pooling, vector in expected.items():
        raw = to_numpy(EmbeddingPooling(pooling, normalize=False)(hidden, padding_mask))
        np.testing.assert_allclose(raw, [vector], rtol=1e-6, err_msg=pooling)
        normalized = to_numpy(EmbeddingPooling(pooling, normalize=True)(hidden, padding_mask))
        np.testing.assert_allclose(normalized, [np.array(vector) / np.hypot(*vector)], rtol=1e-6)


@pytest.mark.backends
def test_max_pooling_ignores_padding_even_when_real_tokens_are_all_negative():
    hidden = np.array([[[-5.0, -1.0], [-3.0, -4.0], [0.0, 0.0]]], "float32")
    padding_mask = np.array([[1, 1, 0]], "int32")
    pooled = to_numpy(EmbeddingPooling("max", normalize=False)(hidden, padding_mask))
    np.testing.assert_array_equal(pooled, [[-3.0, -1.0]])


@pytest.mark.backends
def test_an_all_padding_row_gives_finite_embeddings():
    hidden = np.ones((1, 3, 2), "float32")
    pooled = to_numpy(EmbeddingPooling("mean", normalize=True)(hidden, np.zeros((1, 3), "int32")))
    np.testing.assert_array_equal(pooled, [[0.0, 0.0]])


@pytest.mark.backends
@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
@pytest.mark.parametrize("normalize", [True, False], ids=["normalized", "raw"])
def test_embeddings_pool_the_backbone_sequence_output_over_real_tokens(pooling, normalize):
    keras.utils.set_random_seed(3)
    backbone = tiny_backbone()
    embedder = kbert.BertTextEmbedder(backbone, pooling=pooling, normalize=normalize)
    inputs = tiny_inputs()
    embeddings = to_numpy(embedder.predict(inputs, verbose=0))
    assert embeddings.shape == (4, 16) and embeddings.dtype == np.float32

    hidden = to_numpy(backbone.predict(inputs, verbose=0)["sequence_output"])  # (batch, seq, hidden)
    mask = inputs["padding_mask"].astype(bool)
    if pooling == "mean":
        expected = np.stack([row[keep].mean(axis=0) for row, keep in zip(hidden, mask)])
        everywhere = hidden.mean(axis=1)
    elif pooling == "max":
        expected = np.stack([row[keep].max(axis=0) for row, keep in zip(hidden, mask)])
        everywhere = hidden.max(axis=1)
    else:
        expected = everywhere = hidden[:, 0, :]
    if normalize:
        expected, everywhere = unit(expected), unit(everywhere)
    np.testing.assert_allclose(embeddings, expected, atol=1e-5)
    if pooling != "cls":
        # The padded rows would have pooled differently had padding been counted.
        assert np.abs(embeddings[1:] - everywhere[1:]).max() > 1e-3
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"pooling": "weightedmean"}, "Expected pooling to be one of 'mean', 'cls', 'max'. Received: pooling='weightedmean'"),
        ({"pooling": None}, "Expected pooling to be one of 'mean', 'cls', 'max'. Received: pooling=None"),
        ({"normalize": "yes"}, "Expected normalize to be True or False. Received: normalize='yes'"),
    ],
)
def test_bad_arguments_are_named(arguments, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        kbert.BertTextEmbedder(tiny_backbone(), **arguments)


@pytest.mark.backends
def test_config_round_trip_and_model_directory(tmp_path):
    keras.utils.set_random_seed(4)
    embedder = kbert.BertTextEmbedder(tiny_backbone(), pooling="max", normalize=False)
    inputs = tiny_inputs()
    expected = to_numpy(embedder.predict(inputs, verbose=0))

    rebuilt = kbert.BertTextEmbedder.from_config(embedder.get_config())
    assert rebuilt.get_config() == embedder.get_config()
    assert (rebuilt.pooling, rebuilt.normalize) == ("max", False)
    rebuilt.set_weights(embedder.get_weights())
    np.testing.assert_allclose(to_numpy(rebuilt.predict(inputs, verbose=0)), expected, atol=1e-6)

    kbert.model_dir.save(embedder, tmp_path / "embedder", VOCABULARY, tokenizer={"lowercase": True})
    loaded = kbert.load(tmp_path / "embedder")
    assert isinstance(loaded, kbert.BertTextEmbedder)
    assert (loaded.pooling, loaded.normalize) == ("max", False)
    np.testing.assert_array_equal(to_numpy(loaded.predict(inputs, verbose=0)), expected)


@pytest.mark.backends
def test_embedder_trains():
    keras.utils.set_random_seed(5)
    embedder = kbert.BertTextEmbedder(tiny_backbone())
    inputs = tiny_inputs()
    targets = unit(np.random.default_rng(0).normal(size=(4, 16))).astype("float32")
    embedder.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    before = embedder.evaluate(inputs, targets, verbose=0)
    embedder.fit(inputs, targets, epochs=5, batch_size=4, verbose=0)
    assert embedder.evaluate(inputs, targets, verbose=0) < before
