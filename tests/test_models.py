"""Tests of the model builders: BertBackbone, BertMaskedLM, BertClassifier."""

import math
import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import kbert
import kbert.kernels
import kbert.layers
from kbert.layers import TransformerEncoder
from conftest import PROJECT_ROOT
import conftest

VOCABULARY_SIZE = 40
SEQUENCE_LENGTH = 12
NUM_PREDICTIONS = 3


def tiny_backbone(**kwargs):
    return conftest.tiny_backbone(VOCABULARY_SIZE, SEQUENCE_LENGTH, **kwargs)


def backbone_inputs(batch_size=4, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, SEQUENCE_LENGTH + 1, batch_size)
    padding_mask = (np.arange(SEQUENCE_LENGTH)[None, :] < lengths[:, None]).astype("int32")
    token_ids = rng.integers(5, VOCABULARY_SIZE, (batch_size, SEQUENCE_LENGTH)) * padding_mask
    segment_ids = (np.arange(SEQUENCE_LENGTH)[None, :] >= lengths[:, None] // 2) * padding_mask
    return {
        "token_ids": token_ids.astype("int32"),
        "segment_ids": segment_ids.astype("int32"),
        "padding_mask": padding_mask,
    }


def masked_lm_inputs(batch_size=4, seed=0):
    inputs = backbone_inputs(batch_size, seed)
    rng = np.random.default_rng(seed + 1)
    inputs["mask_positions"] = rng.integers(1, 3, (batch_size, NUM_PREDICTIONS)).astype("int32")
    return inputs


def build(kind, **kwargs):
    backbone = tiny_backbone(**kwargs)
    if kind == "backbone":
        return backbone
    if kind == "masked_lm":
        return kbert.BertMaskedLM(backbone)
    if kind == "masked_lm_nsp":
        return kbert.BertMaskedLM(backbone, next_sentence_prediction=True)
    return kbert.BertClassifier(backbone, num_classes=3)


def training_dataset(kind, batch_size=2, num_examples=4):
    rng = np.random.default_rng(7)
    if kind == "classifier":
        x = backbone_inputs(num_examples)
        y = rng.integers(0, 3, num_examples)
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    x = masked_lm_inputs(num_examples)
    mask_ids = rng.integers(5, VOCABULARY_SIZE, (num_examples, NUM_PREDICTIONS))
    mask_weights = np.ones((num_examples, NUM_PREDICTIONS), "float32")
    if kind == "masked_lm_nsp":
        y = {"mlm": mask_ids, "nsp": rng.integers(0, 2, num_examples)}
        sample_weight = {"mlm": mask_weights, "nsp": np.ones(num_examples, "float32")}
        return tf.data.Dataset.from_tensor_slices((x, y, sample_weight)).batch(batch_size)
    return tf.data.Dataset.from_tensor_slices((x, mask_ids, mask_weights)).batch(batch_size)


def inputs_for(kind):
    return backbone_inputs() if kind in ("backbone", "classifier") else masked_lm_inputs()


def as_numpy_tree(outputs):
    if isinstance(outputs, dict):
        return {key: keras.ops.convert_to_numpy(value) for key, value in outputs.items()}
    return keras.ops.convert_to_numpy(outputs)


# === Parameter counts ===


def test_base_has_the_published_parameter_count():
    backbone = kbert.BertBackbone.from_size("base", vocabulary_size=30522)
    assert backbone.count_params() == 109_482_240  # bert-base-uncased with its pooler


@pytest.mark.slow
def test_large_has_the_published_parameter_count():
    backbone = kbert.BertBackbone.from_size("large", vocabulary_size=30522)
    assert backbone.count_params() == 335_141_888


@pytest.mark.parametrize(
    "size, expected",
    [
        ("tiny", (2, 2, 128, 512)),
        ("mini", (4, 4, 256, 1024)),
        ("small", (4, 8, 512, 2048)),
        ("medium", (8, 8, 512, 2048)),
        ("L6_H384", None),
        ("L6_H256", (6, 4, 256, 1024)),
        ("L24_H1024", (24, 16, 1024, 4096)),
    ],
)
def test_named_sizes(size, expected):
    if expected is None:
        with pytest.raises(ValueError, match="Received: size='L6_H384'"):
            kbert.size_config(size)
        return
    config = kbert.size_config(size)
    assert (
        config["num_layers"],
        config["num_heads"],
        config["hidden_dim"],
        config["intermediate_dim"],
    ) == expected


# === Every backend: build, fit, predict, config round trip ===


@pytest.mark.backends
@pytest.mark.parametrize("kind", ["backbone", "masked_lm", "masked_lm_nsp", "classifier"])
def test_build_fit_predict_and_rebuild_from_config(kind):
    keras.utils.set_random_seed(1)
    model = build(kind)
    inputs = inputs_for(kind)
    if kind != "backbone":
        model.compile()
        history = model.fit(training_dataset(kind), epochs=1, steps_per_epoch=2, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
    outputs = as_numpy_tree(model.predict(inputs, verbose=0))

    if kind == "backbone":
        assert outputs["sequence_output"].shape == (4, SEQUENCE_LENGTH, 16)
        assert outputs["pooled_output"].shape == (4, 16)
        assert outputs["sequence_output"].dtype == np.float32
        assert np.all(np.abs(outputs["pooled_output"]) <= 1.0)  # tanh
    elif kind == "masked_lm":
        assert outputs.shape == (4, NUM_PREDICTIONS, VOCABULARY_SIZE)
        assert outputs.dtype == np.float32
    elif kind == "masked_lm_nsp":
        assert outputs["mlm"].shape == (4, NUM_PREDICTIONS, VOCABULARY_SIZE)
        assert outputs["nsp"].shape == (4, 2)
    else:
        assert outputs.shape == (4, 3) and outputs.dtype == np.float32

    rebuilt = model.__class__.from_config(model.get_config())
    assert rebuilt.get_config() == model.get_config()
    assert [w.shape for w in rebuilt.weights] == [w.shape for w in model.weights]
    rebuilt.set_weights(model.get_weights())
    rebuilt_outputs = as_numpy_tree(rebuilt.predict(inputs, verbose=0))
    np.testing.assert_allclose(
        np.concatenate([np.ravel(v) for v in tf.nest.flatten(rebuilt_outputs)]),
        np.concatenate([np.ravel(v) for v in tf.nest.flatten(outputs)]),
        atol=1e-6,
    )


@pytest.mark.backends
def test_masked_lm_output_layer_is_tied_to_the_token_embedding():
    model = build("masked_lm")
    embeddings = model.backbone.token_embedding.embeddings
    embedding_weights = [w for w in model.weights if w.shape == embeddings.shape]
    assert len(embedding_weights) == 1, "the output projection must reuse the embedding matrix"
    # Logits at a position equal (transformed hidden) . embedding^T + bias, so doubling the
    # embedding of one token changes its logit and no other token's.
    inputs = masked_lm_inputs(batch_size=1)
    inputs["token_ids"][:] = 5  # token 9 appears nowhere in the input
    before = keras.ops.convert_to_numpy(model(inputs))
    values = keras.ops.convert_to_numpy(embeddings).copy()
    values[9] *= 2.0
    embeddings.assign(values)
    after = keras.ops.convert_to_numpy(model(inputs))
    changed = np.abs(after - before).max(axis=(0, 1)) > 1e-6
    assert changed[9] and changed.sum() == 1


@pytest.mark.backends
def test_masked_lm_scores_only_the_masked_positions():
    model = build("masked_lm", dropout=0.0)
    inputs = masked_lm_inputs(batch_size=2)
    inputs["mask_positions"] = np.array([[1, 2, 1], [2, 1, 2]], "int32")
    logits = keras.ops.convert_to_numpy(model(inputs))
    # The same position gives the same logits, whichever prediction slot asked for it.
    np.testing.assert_allclose(logits[0, 0], logits[0, 2], atol=1e-6)
    np.testing.assert_allclose(logits[1, 0], logits[1, 2], atol=1e-6)
    assert np.abs(logits[0, 0] - logits[0, 1]).max() > 1e-4


@pytest.mark.backends
@pytest.mark.parametrize("kind", ["masked_lm", "masked_lm_nsp"])
def test_masked_lm_last_block_at_masked_positions_only_matches_the_full_graph(kind):
    # BertMaskedLM runs its last block only where the loss looks; the reference is the
    # functional graph: the backbone over every position, then the head at the masks.
    model = build(kind, dropout=0.0)
    inputs = masked_lm_inputs(batch_size=4)
    inputs["mask_positions"] = np.array([[1, 5, 7], [0, 2, 11], [3, 3, 4], [9, 10, 2]], "int32")
    outputs = as_numpy_tree(model(inputs))
    backbone_outputs = model.backbone({key: inputs[key] for key in ("token_ids", "segment_ids", "padding_mask")})
    full = model.masked_lm_head(backbone_outputs["sequence_output"], mask_positions=inputs["mask_positions"])
    if kind == "masked_lm":
        outputs = {"mlm": outputs}
    np.testing.assert_allclose(outputs["mlm"], keras.ops.convert_to_numpy(full), rtol=1e-5, atol=1e-5)
    if kind == "masked_lm_nsp":
        nsp = model.next_sentence_head(backbone_outputs["pooled_output"])
        np.testing.assert_allclose(outputs["nsp"], keras.ops.convert_to_numpy(nsp), rtol=1e-5, atol=1e-5)
    # A different set of positions gives different logits: the positions are really used.
    moved = dict(inputs, mask_positions=(inputs["mask_positions"] + 1) % SEQUENCE_LENGTH)
    moved_logits = as_numpy_tree(model(moved))
    moved_logits = moved_logits["mlm"] if kind == "masked_lm_nsp" else moved_logits
    assert np.abs(moved_logits - outputs["mlm"]).max() > 1e-4


@pytest.mark.backends
def test_padding_does_not_change_the_outputs_of_real_tokens():
    backbone = tiny_backbone(dropout=0.0)
    inputs = backbone_inputs(batch_size=1)
    inputs["padding_mask"][:] = 1
    inputs["padding_mask"][0, 6:] = 0
    short = {key: value[:, :6] for key, value in inputs.items()}
    padded = dict(inputs, token_ids=inputs["token_ids"].copy())
    padded["token_ids"][0, 6:] = 17  # garbage under the padding must be ignored
    full = backbone(padded)["sequence_output"]
    truncated = backbone(short)["sequence_output"]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(full)[:, :6],
        keras.ops.convert_to_numpy(truncated),
        atol=1e-5,
    )


def test_inside_an_export_the_blocks_run_on_real_tokens_and_give_the_same_outputs():
    from kbert.backbone import on_real_tokens_only

    backbone = tiny_backbone(dropout=0.0)
    inputs = backbone_inputs(batch_size=4, seed=3)
    inputs["padding_mask"][1, 2] = 0  # a hole: any mask, not only padding at the end
    inputs["padding_mask"][3, :] = 0  # a row without a single real token
    real = inputs["padding_mask"].astype(bool)
    expected = as_numpy_tree(backbone(inputs, training=False))

    calls = []
    original = TransformerEncoder.call_on_tokens

    def recording(block, tokens, *args):
        calls.append(tuple(tokens.shape))
        return original(block, tokens, *args)

    with on_real_tokens_only(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(TransformerEncoder, "call_on_tokens", recording)
        outputs = as_numpy_tree(backbone(inputs, training=False))
    # Every block saw one row per real token of the batch, and nothing else.
    assert calls == [(1, real.sum(), 16)] * backbone.num_layers
    np.testing.assert_allclose(
        outputs["sequence_output"][real], expected["sequence_output"][real], atol=1e-5
    )
    assert np.all(outputs["sequence_output"][~real] == 0)
    np.testing.assert_allclose(outputs["pooled_output"][:3], expected["pooled_output"][:3], atol=1e-5)
    # Outside of an export, the padded positions keep the padded computation's values.
    assert np.abs(as_numpy_tree(backbone(inputs))["sequence_output"][~real]).min() > 0


# === Mixed precision ===


@pytest.mark.backends
@pytest.mark.parametrize("kind", ["masked_lm", "classifier"])
def test_mixed_bfloat16_outputs_float32_and_fits(kind):
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = build(kind)
    query_kernel = model.backbone.transformer_layers[0].query_dense
    assert query_kernel.compute_dtype == "bfloat16"
    assert query_kernel.kernel.dtype == "float32"  # variables stay float32
    assert model.backbone.transformer_layers[0].output_layer_norm.compute_dtype == "float32"
    model.compile()
    history = model.fit(training_dataset(kind), epochs=1, steps_per_epoch=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    outputs = keras.ops.convert_to_numpy(model.predict(inputs_for(kind), verbose=0))
    assert outputs.dtype == np.float32
    backbone_outputs = model.backbone(backbone_inputs())
    assert keras.backend.standardize_dtype(backbone_outputs["sequence_output"].dtype) == "float32"
    assert keras.backend.standardize_dtype(backbone_outputs["pooled_output"].dtype) == "float32"


@pytest.mark.backends
def test_mixed_bfloat16_keeps_the_residual_stream_float32():
    # Only the matmuls' operands are rounded to bfloat16. Rounding the summed embeddings and
    # the sub-layer outputs too (as Keras' layers do under the policy) put the `tiny`
    # backbone's mean error at 2.8e-3 of the float32 output, whose RMS is 1; this way it is
    # 2.1e-4.
    rng = np.random.default_rng(0)
    inputs = {
        "token_ids": rng.integers(1, 1000, (2, 32)).astype("int32"),
        "segment_ids": np.zeros((2, 32), "int32"),
        "padding_mask": np.ones((2, 32), "int32"),
    }
    keras.utils.set_random_seed(1)
    reference_model = kbert.BertBackbone.from_size("tiny", vocabulary_size=1000)
    reference = keras.ops.convert_to_numpy(reference_model(inputs)["sequence_output"])
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = kbert.BertBackbone.from_size("tiny", vocabulary_size=1000)
    model.set_weights(reference_model.get_weights())
    assert model.token_embedding.embeddings.dtype == "float32"
    outputs = keras.ops.convert_to_numpy(model(inputs)["sequence_output"])
    assert np.abs(outputs - reference).mean() < 6e-4


# === Dropout ===


@pytest.mark.backends
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_drops_at_its_rate_and_keeps_the_expectation(dtype, rate):
    layer = kbert.layers.Dropout(rate, seed=3, dtype=dtype)
    inputs = keras.ops.ones((3, 1001, 333), dtype)  # an odd number of elements
    outputs = keras.ops.convert_to_numpy(keras.ops.cast(layer(inputs, training=True), "float32"))
    kept = outputs != 0
    # A million draws: the dropped share is within 5 standard deviations of the rate.
    assert abs((1 - kept.mean()) - rate) < 5 * math.sqrt(rate * (1 - rate) / kept.size)
    scale = outputs[kept]
    np.testing.assert_allclose(scale, np.full_like(scale, 1 / (1 - rate)), rtol=1e-2 if dtype == "bfloat16" else 1e-4)
    assert abs(outputs.mean() - 1.0) < 5e-3
    again = keras.ops.convert_to_numpy(keras.ops.cast(layer(inputs, training=True), "float32"))
    assert (again != outputs).any(), "every call must draw a new mask"
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(inputs, training=False)), keras.ops.convert_to_numpy(inputs))


def test_dropout_gradient_is_its_mask_under_tf_function():
    layer = kbert.layers.Dropout(0.25, seed=1)
    x = tf.Variable(tf.random.normal((7, 9)))

    @tf.function(input_signature=[])
    def outputs_and_gradient():
        with tf.GradientTape() as tape:
            y = layer(x, training=True)
            total = tf.reduce_sum(y * 2.0)
        return y, tape.gradient(total, x)

    y, gradient = (value.numpy() for value in outputs_and_gradient())
    kept = y != 0
    np.testing.assert_allclose(y[kept], x.numpy()[kept] / 0.75, rtol=1e-6)
    np.testing.assert_allclose(gradient, np.where(kept, 2.0 / 0.75, 0.0), rtol=1e-6)


# === Dense layers with a float32 bias ===


@pytest.mark.backends
@pytest.mark.parametrize("kind", ["dense", "einsum_dense"])
def test_dense_multiplies_in_the_compute_dtype_and_adds_a_float32_bias(kind):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 8)).astype("float32")
    if kind == "dense":
        layer = kbert.layers.Dense(6, dtype="mixed_bfloat16")
    else:
        layer = kbert.layers.EinsumDense("btd,dnh->btnh", (None, 2, 3), bias_axes="nh", dtype="mixed_bfloat16")
    layer.build(x.shape)
    # 1 + 2**-12 is no bfloat16 number (8 bits of mantissa): a bfloat16 bias would lose it.
    bias = 1 + 2**-12
    layer.bias.assign(np.full(layer.bias.shape, bias, "float32"))
    outputs = layer(x)
    assert keras.backend.standardize_dtype(outputs.dtype) == "float32"
    rounded = lambda v: keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.cast(v, "bfloat16"), "float32"))
    product = np.einsum("btd,de->bte", rounded(x), rounded(layer.kernel).reshape(8, -1))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(outputs) - bias, product.reshape(outputs.shape), rtol=2**-7, atol=2**-7
    )
    layer.kernel.assign(np.zeros(layer.kernel.shape, "float32"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), np.full(outputs.shape, bias, "float32"))


@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_activation_in_training_matches_inference(use_bias):
    # On TensorFlow a training step runs the bias and GELU as one XLA function, and its
    # gradient as another that recomputes them.
    layer = kbert.layers.Dense(64, activation="gelu", use_bias=use_bias)
    x = tf.random.normal((3, 7, 16), seed=1) * 3.0
    layer.build(x.shape)
    if use_bias:
        layer.bias.assign(tf.random.normal((64,), seed=2))

    @tf.function
    def outputs_and_gradients(training):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
            total = tf.reduce_sum(y * tf.sin(y))
        return y, tape.gradient(total, [x, *layer.trainable_weights])

    inference, inference_gradients = outputs_and_gradients(False)
    training, training_gradients = outputs_and_gradients(True)
    expected = _numpy_gelu(x.numpy() @ layer.kernel.numpy() + (layer.bias.numpy() if use_bias else 0.0))
    assert len(training_gradients) == (3 if use_bias else 2)
    np.testing.assert_allclose(inference.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(training.numpy(), inference.numpy(), rtol=1e-6, atol=1e-6)
    for got, want in zip(training_gradients, inference_gradients):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_masked_lm_head_in_training_matches_inference(dtype):
    # On TensorFlow a training step adds the output bias in one XLA function, with its
    # gradient in another.
    embedding = keras.layers.Embedding(50, 16, dtype=dtype)
    embedding.build((None,))
    head = kbert.layers.MaskedLMHead(embedding, dtype=dtype)
    hidden = tf.random.normal((3, 7, 16), seed=1)
    positions = tf.constant([[1, 2], [0, 6], [3, 3]])
    head.build(hidden.shape, positions.shape)
    head.output_bias.assign(tf.random.normal((50,), seed=2))
    weights = [embedding.embeddings, head.output_bias]

    @tf.function
    def logits_and_gradients(training):
        with tf.GradientTape() as tape:
            tape.watch(hidden)
            logits = head(hidden, positions, training=training)
            total = tf.reduce_sum(logits * tf.sin(logits))
        return logits, tape.gradient(total, [hidden, *weights])

    inference, inference_gradients = logits_and_gradients(False)
    training, training_gradients = logits_and_gradients(True)
    assert training.dtype == tf.float32 and training.shape == (3, 2, 50)
    # The transform's GELU runs in XLA in training: equal to the last bit or two.
    np.testing.assert_allclose(training.numpy(), inference.numpy(), rtol=1e-6, atol=1e-6)
    for got, want in zip(training_gradients, inference_gradients):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    # The output bias is added in float32: 1 + 2**-12 is no bfloat16 number.
    embedding.embeddings.assign(tf.zeros(embedding.embeddings.shape))
    head.output_bias.assign(tf.fill((50,), 1 + 2**-12))
    for training in (False, True):
        logits = head(hidden, positions, training=training)
        np.testing.assert_array_equal(logits.numpy(), np.full((3, 2, 50), 1 + 2**-12, "float32"))


# === One encoder block checked by hand in numpy ===


def _numpy_layer_norm(x, gamma, beta, epsilon=1e-12):
    mean = x.mean(-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta


def _numpy_gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


@pytest.mark.backends
def test_one_encoder_block_matches_numpy():
    hidden_dim, num_heads, intermediate_dim, sequence_length = 8, 2, 12, 5
    head_dim = hidden_dim // num_heads
    rng = np.random.default_rng(3)
    block = TransformerEncoder(num_heads=num_heads, intermediate_dim=intermediate_dim, dropout=0.0)
    block.build((1, sequence_length, hidden_dim))
    weights = {}
    for variable in block.weights:
        value = rng.normal(0.0, 0.5, variable.shape).astype("float32")
        variable.assign(value)
        weights[variable.path.split("/", 1)[1]] = value
    x = rng.normal(size=(1, sequence_length, hidden_dim)).astype("float32")
    padding_mask = np.array([[1, 1, 1, 1, 0]], "int32")

    def project(name):  # (seq, hidden) -> (heads, seq, head_dim)
        kernel = weights[f"{name}/kernel"].reshape(hidden_dim, hidden_dim)
        bias = weights[f"{name}/bias"].reshape(hidden_dim)
        return (x[0] @ kernel + bias).reshape(sequence_length, num_heads, head_dim).transpose(1, 0, 2)

    query, key, value = project("query"), project("key"), project("value")
    scores = query @ key.transpose(0, 2, 1) / math.sqrt(head_dim)  # (heads, seq, seq)
    scores[:, :, padding_mask[0] == 0] = -np.inf
    probabilities = np.exp(scores - scores.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    context = (probabilities @ value).transpose(1, 0, 2).reshape(sequence_length, hidden_dim)
    attention = (
        context @ weights["attention_output/kernel"].reshape(hidden_dim, hidden_dim)
        + weights["attention_output/bias"]
    )
    hidden = _numpy_layer_norm(
        x[0] + attention,
        weights["attention_layer_norm/gamma"],
        weights["attention_layer_norm/beta"],
    )
    intermediate = _numpy_gelu(
        hidden @ weights["intermediate/kernel"] + weights["intermediate/bias"]
    )
    output = intermediate @ weights["output/kernel"] + weights["output/bias"]
    expected = _numpy_layer_norm(
        hidden + output, weights["output_layer_norm/gamma"], weights["output_layer_norm/beta"]
    )

    actual = keras.ops.convert_to_numpy(block(x, padding_mask=padding_mask))[0]
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-4)


# === Weights move between backends ===

# One script per hop: load and check what the previous backend saved, then save weights of
# its own (a new seed) for the next. A ring of four processes covers three pairs of backends.
_HOP_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, keras, kbert
    sys.path.insert(0, "tests")
    from test_models import build, masked_lm_inputs
    load_dir, save_dir, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if load_dir != "-":
        model = build("masked_lm")
        model.load_weights(load_dir + "/model.weights.h5")
        outputs = keras.ops.convert_to_numpy(model.predict(masked_lm_inputs(), verbose=0))
        difference = np.abs(outputs - np.load(load_dir + "/outputs.npy")).max()
        print("max abs difference", difference)
        assert difference <= 1e-5, difference
    if save_dir != "-":
        keras.utils.set_random_seed(seed)
        model = build("masked_lm")
        model.save_weights(save_dir + "/model.weights.h5")
        outputs = keras.ops.convert_to_numpy(model.predict(masked_lm_inputs(), verbose=0))
        np.save(save_dir + "/outputs.npy", outputs)
    """
)


def _run_with_backend(backend, script, *arguments):
    pytest.importorskip(backend if backend != "tensorflow" else "tensorflow")
    environment = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, arguments)],
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"{backend}: {result.stdout[-2000:]}{result.stderr[-4000:]}"


@pytest.mark.slow
def test_weights_saved_under_each_backend_load_under_the_next(tmp_path):
    # tensorflow -> jax -> torch -> tensorflow.
    ring = ["tensorflow", "jax", "torch", "tensorflow"]
    directories = [tmp_path / backend for backend in ring[:-1]]
    for directory in directories:
        directory.mkdir()
    for hop, backend in enumerate(ring):
        load_dir = directories[hop - 1] if hop > 0 else "-"
        save_dir = directories[hop] if hop < len(directories) else "-"
        _run_with_backend(backend, _HOP_SCRIPT, load_dir, save_dir, 5 + hop)


# === Bad arguments ===


def test_hidden_dim_not_divisible_by_num_heads():
    with pytest.raises(ValueError, match="hidden_dim=100, num_heads=12"):
        kbert.BertBackbone(
            vocabulary_size=10, num_layers=1, num_heads=12, hidden_dim=100, intermediate_dim=4
        )


def test_unknown_size_name():
    with pytest.raises(ValueError, match="Expected one of .* Received: size='huge'"):
        kbert.BertBackbone.from_size("huge", vocabulary_size=10)


@pytest.mark.parametrize(
    "argument, value", [("num_layers", 0), ("vocabulary_size", -3), ("dropout", 1.5)]
)
def test_bad_sizes_name_the_argument(argument, value):
    config = dict(vocabulary_size=10, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=4)
    config[argument] = value
    with pytest.raises(ValueError, match=f"{argument}={value}"):
        kbert.BertBackbone(**config)


def test_more_mask_positions_than_sequence_positions():
    backbone = tiny_backbone()
    model = kbert.BertMaskedLM(backbone)
    inputs = masked_lm_inputs(batch_size=1)
    inputs = {key: value[:, :4] for key, value in inputs.items() if key != "mask_positions"}
    inputs["mask_positions"] = np.zeros((1, 6), "int32")
    with pytest.raises(ValueError, match="num_predictions=6, sequence_length=4"):
        model.masked_lm_head.build((1, 4, 16), (1, 6))


def test_sequence_longer_than_max_sequence_length():
    backbone = tiny_backbone()
    too_long = {key: np.zeros((1, SEQUENCE_LENGTH + 4), "int32") for key in backbone.input}
    with pytest.raises(ValueError, match="max_sequence_length=12 positions. Received: 16"):
        backbone(too_long)


def test_zero_classes():
    with pytest.raises(ValueError, match="num_classes=0"):
        kbert.BertClassifier(tiny_backbone(), num_classes=0)


# === Fast paths (kbert.kernels) against their keras.ops paths ===


def test_kernels_dense_epilogue_matches_the_keras_ops_path():
    layer = kbert.layers.Dense(8, activation="gelu", dtype="mixed_bfloat16")
    layer.build((None, 4))
    layer.bias.assign(tf.random.normal((8,), seed=3))
    product = tf.cast(tf.random.normal((5, 8), seed=4), "bfloat16")
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(product)
        fast = kbert.kernels.dense_epilogue(layer, layer._epilogue, (product, layer.bias), training=True)
        plain = layer._epilogue(product, layer.bias)
    assert getattr(layer, "_xla_epilogue", None) is not None  # the XLA path really ran
    np.testing.assert_allclose(fast.numpy(), plain.numpy(), rtol=1e-6, atol=1e-6)
    for fast_gradient, plain_gradient in zip(
        tape.gradient(fast, [product, layer.bias]), tape.gradient(plain, [product, layer.bias])
    ):
        np.testing.assert_allclose(
            tf.cast(fast_gradient, "float32").numpy(), tf.cast(plain_gradient, "float32").numpy(), rtol=1e-2
        )


def test_kernels_products_and_output_bias_match_the_keras_ops_path():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 4)).astype("float32"), rng.normal(size=(9, 4)).astype("float32")
    np.testing.assert_allclose(kbert.kernels.matmul_transposed(a, b).numpy(), a @ b.T, rtol=1e-5, atol=1e-5)
    x, kernel = rng.normal(size=(2, 3, 4)).astype("float32"), rng.normal(size=(4, 2, 5)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(kbert.kernels.matrix_product("btd,dnh->btnh", x, kernel)),
        np.einsum("btd,dnh->btnh", x, kernel),
        rtol=1e-5,
        atol=1e-5,
    )
    head = kbert.layers.MaskedLMHead(keras.layers.Embedding(9, 4), dtype="mixed_bfloat16")
    logits = tf.cast(a @ b.T, "bfloat16")
    bias = tf.constant(rng.normal(size=(9,)).astype("float32"))
    fast = kbert.kernels.output_bias(head, logits, bias, training=True)
    assert getattr(head, "_xla_output", None) is not None
    np.testing.assert_array_equal(fast.numpy(), kbert.kernels.add_float32_bias(logits, bias).numpy())


def test_kernels_cross_entropy_matches_keras():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 4, 11)).astype("float32") * 4
    labels = rng.integers(0, 11, (3, 4)).astype("int32")
    expected = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    got = kbert.kernels.sparse_categorical_crossentropy(tf.constant(labels), tf.constant(logits))
    np.testing.assert_allclose(got.numpy(), keras.ops.convert_to_numpy(expected), rtol=1e-5, atol=1e-5)


# === The masked LM's functional graph is what runs ===


@pytest.mark.parametrize("kind", ["masked_lm", "masked_lm_nsp"])
def test_masked_lm_runs_its_functional_graph_with_the_last_block_at_the_masks(kind):
    model = build(kind, dropout=0.0)
    assert "call" not in vars(kbert.BertMaskedLM)  # keras runs the functional graph
    layer_names = [layer.name for layer in model.layers]
    assert model.backbone.name in layer_names and "mlm_head" in layer_names
    # The backbone node of the graph is asked for the masked positions only.
    node = model.backbone._inbound_nodes[-1]
    query_positions = node.arguments.kwargs["query_positions"]
    expected = NUM_PREDICTIONS + (1 if kind == "masked_lm_nsp" else 0)
    assert query_positions.shape[1] is None or query_positions.shape[1] == expected
    lines = []
    model.summary(print_fn=lines.append)
    assert "mlm_head" in "\n".join(lines)


@pytest.mark.parametrize("kind", ["masked_lm", "masked_lm_nsp"])
def test_masked_lm_trains_without_a_gradient_warning(kind):
    model = build(kind)
    model.compile()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(training_dataset(kind), epochs=1, verbose=0)
    messages = [str(warning.message) for warning in caught]
    assert not [message for message in messages if "Gradients do not exist" in message], messages
    # Without the next-sentence head the pooler is left out of training, consistently.
    pooler = set(id(weight) for weight in model.backbone.pooled_dense.weights)
    for variables in (model.trainable_variables, model.trainable_weights):
        assert (pooler <= {id(variable) for variable in variables}) == (kind == "masked_lm_nsp")
    assert pooler <= {id(weight) for weight in model.weights}  # still saved
