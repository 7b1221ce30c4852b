"""Tests of kbert.training and kbert.callbacks: schedules, optimizer, resumable fit.

Also home of the tiny models and synthetic batches that the other training tests import.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import kbert
from kbert import callbacks as callbacks_lib
from kbert import training
from kbert.metrics import masked_lm_metrics
import conftest

SEQUENCE_LENGTH = 16
NUM_PREDICTIONS = 4
VOCABULARY_SIZE = 50


# === Tiny models and synthetic data, shared with the other training tests ===


def tiny_backbone(dropout=0.0):
    return conftest.tiny_backbone(VOCABULARY_SIZE, SEQUENCE_LENGTH, dropout=dropout)


def token_inputs(rng, num_examples):
    lengths = rng.integers(4, SEQUENCE_LENGTH + 1, num_examples)
    padding_mask = (np.arange(SEQUENCE_LENGTH)[None, :] < lengths[:, None]).astype("int32")
    return {
        "token_ids": rng.integers(1, VOCABULARY_SIZE, (num_examples, SEQUENCE_LENGTH)).astype(
            "int32"
        )
        * padding_mask,
        "segment_ids": (np.arange(SEQUENCE_LENGTH)[None, :] >= lengths[:, None] // 2).astype(
            "int32"
        )
        * padding_mask,
        "padding_mask": padding_mask,
    }


def masked_lm_arrays(num_examples=32, seed=0):
    """(x, mask_ids, mask_weights) shaped like kbert's pretraining batches."""
    rng = np.random.default_rng(seed)
    x = token_inputs(rng, num_examples)
    x["mask_positions"] = rng.integers(0, 4, (num_examples, NUM_PREDICTIONS)).astype("int32")
    mask_ids = rng.integers(1, VOCABULARY_SIZE, (num_examples, NUM_PREDICTIONS)).astype("int32")
    mask_weights = (rng.random((num_examples, NUM_PREDICTIONS)) < 0.75).astype("float32")
    return x, mask_ids, mask_weights


def masked_lm_dataset(num_examples=32, batch_size=8, seed=0, shuffle_seed=None):
    dataset = tf.data.Dataset.from_tensor_slices(masked_lm_arrays(num_examples, seed))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(num_examples, seed=shuffle_seed)
    return dataset.batch(batch_size, drop_remainder=True)


def classification_arrays(num_examples=32, num_classes=2, seed=0):
    """(x, labels) shaped like kbert's classification batches; float labels for 1 class."""
    rng = np.random.default_rng(seed)
    x = token_inputs(rng, num_examples)
    if num_classes == 1:
        return x, rng.uniform(0.0, 5.0, num_examples).astype("float32")
    return x, rng.integers(0, num_classes, num_examples).astype("int32")


def classification_dataset(num_examples=32, batch_size=8, num_classes=2, seed=0):
    arrays = classification_arrays(num_examples, num_classes, seed)
    return tf.data.Dataset.from_tensor_slices(arrays).batch(batch_size)


def tiny_masked_lm(learning_rate=1e-3, dropout=0.0, seed=1, **optimizer_options):
    keras.utils.set_random_seed(seed)
    model = kbert.BertMaskedLM(tiny_backbone(dropout))
    optimizer_options.setdefault("decay", "constant")
    model.compile(
        optimizer=training.make_optimizer(learning_rate=learning_rate, **optimizer_options),
        weighted_metrics=masked_lm_metrics(),
    )
    return model


def tiny_classifier(num_classes=2, learning_rate=1e-3, seed=1, **optimizer_options):
    keras.utils.set_random_seed(seed)
    model = kbert.BertClassifier(tiny_backbone(), num_classes=num_classes, dropout=0.0)
    optimizer_options.setdefault("decay", "constant")
    model.compile(
        optimizer=training.make_optimizer(learning_rate=learning_rate, **optimizer_options)
    )
    return model


def flat_weights(model):
    return np.concatenate(
        [keras.ops.convert_to_numpy(weight).ravel() for weight in model.trainable_weights]
    )


# === Learning-rate schedule ===


@pytest.mark.backends
def test_linear_warmup_then_linear_decay_at_known_steps():
    schedule = training.make_learning_rate_schedule(
        1e-3, num_train_steps=110, warmup_steps=10, decay="linear"
    )
    # Warmup: peak * step / 10; decay: peak * (1 - (step - 10) / 100).
    expected = {
        0: 0.0, 1: 1e-4, 5: 5e-4, 9: 9e-4, 10: 1e-3, 35: 7.5e-4, 60: 5e-4, 110: 0.0, 200: 0.0
    }
    for step, rate in expected.items():
        assert float(schedule(step)) == pytest.approx(rate, abs=1e-9), f"step {step}"


@pytest.mark.backends
def test_polynomial_cosine_and_constant_decays_at_known_steps():
    polynomial = training.make_learning_rate_schedule(
        2e-3, num_train_steps=104, warmup_steps=4, decay="polynomial", decay_power=2.0,
        end_learning_rate=1e-4,
    )
    # (peak - end) * (1 - t / 100)^2 + end, t = step - warmup.
    assert float(polynomial(2)) == pytest.approx(1e-3)
    assert float(polynomial(54)) == pytest.approx(1.9e-3 * 0.25 + 1e-4)
    assert float(polynomial(104)) == pytest.approx(1e-4)
    cosine = training.make_learning_rate_schedule(
        1e-3, num_train_steps=20, warmup_steps=0, decay="cosine"
    )
    assert float(cosine(0)) == pytest.approx(1e-3)
    assert float(cosine(10)) == pytest.approx(5e-4)
    assert float(cosine(20)) == pytest.approx(0.0, abs=1e-10)
    constant = training.make_learning_rate_schedule(3e-5, warmup_steps=2, decay="constant")
    assert [round(float(constant(step)), 10) for step in (0, 1, 2, 1000)] == [0, 1.5e-5, 3e-5, 3e-5]


def test_warmup_schedule_round_trips_through_its_config():
    schedule = training.make_learning_rate_schedule(1e-3, num_train_steps=50, warmup_steps=5)
    restored = training.WarmupSchedule.from_config(schedule.get_config())
    for step in (0, 3, 5, 20, 50):
        assert float(restored(step)) == pytest.approx(float(schedule(step)))


@pytest.mark.backends
def test_schedule_counts_updates_under_gradient_accumulation():
    schedule = training.make_learning_rate_schedule(
        1e-3, num_train_steps=20, warmup_steps=10, gradient_accumulation_steps=4
    )
    # Keras passes batches: batches 0-3 are update 0, batches 20-23 update 5.
    assert [float(schedule(batch)) for batch in (0, 3, 4, 20, 23)] == pytest.approx(
        [0.0, 0.0, 1e-4, 5e-4, 5e-4]
    )
    assert float(schedule(40)) == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"decay": "step"}, "Expected decay to be one of"),
        ({"num_train_steps": 10, "warmup_steps": 10}, "Expected warmup_steps to be smaller"),
        ({"num_train_steps": None}, "Expected warmup_steps to be smaller"),
    ],
)
def test_schedule_errors_name_the_parameter(options, message):
    arguments = dict({"num_train_steps": 100, "warmup_steps": 0}, **options)
    with pytest.raises(ValueError, match=message):
        training.make_learning_rate_schedule(1e-3, **arguments)


# === Optimizer ===


@pytest.mark.backends
@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_weight_decay_skips_layer_norm_and_bias_variables(name):
    model = kbert.BertMaskedLM(tiny_backbone())
    optimizer = training.make_optimizer(
        name, learning_rate=0.1, decay="constant", weight_decay=0.5, global_clipnorm=None
    )
    optimizer.build(model.trainable_variables)
    before = {v.path: keras.ops.convert_to_numpy(v) for v in model.trainable_variables}
    # With zero gradients, Adam and LAMB updates are zero: only weight decay moves weights.
    optimizer.apply_gradients(
        [(keras.ops.zeros(v.shape, v.dtype), v) for v in model.trainable_variables]
    )
    decayed, kept = set(), set()
    for variable in model.trainable_variables:
        after = keras.ops.convert_to_numpy(variable)
        if np.array_equal(after, before[variable.path]):
            kept.add(variable.path)
        else:
            np.testing.assert_allclose(after, before[variable.path] * (1 - 0.1 * 0.5), rtol=1e-6)
            decayed.add(variable.path)
    expected_kept = {
        path
        for path in before
        if path.rsplit("/", 1)[-1] in ("gamma", "beta", "bias", "output_bias")
    }
    assert kept == expected_kept
    assert "transformer_layer_0/attention_layer_norm/gamma" in kept
    assert "transformer_layer_1/intermediate/bias" in kept
    assert "mlm_head/output_bias" in kept
    assert "token_embedding/embeddings" in decayed
    assert "transformer_layer_0/query/kernel" in decayed


@pytest.mark.backends
def test_adamw_update_equals_adam_computed_by_hand():
    # On TensorFlow kbert's AdamW runs TF's fused Adam kernel; on every backend its updates are
    # the textbook ones (decoupled weight decay first, then bias-corrected Adam).
    rng = np.random.default_rng(5)
    initial = rng.normal(size=(3, 4)).astype("float32")
    gradients = rng.normal(size=(4, 3, 4)).astype("float32")
    learning_rate, weight_decay, beta_1, beta_2, epsilon = 0.01, 0.1, 0.9, 0.999, 1e-6
    variable = keras.Variable(initial, name="kernel")
    optimizer = training.make_optimizer(
        "adamw", learning_rate, decay="constant", weight_decay=weight_decay, global_clipnorm=None
    )
    expected, m, v = initial.astype("float64"), 0.0, 0.0
    for step, gradient in enumerate(gradients, start=1):
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(gradient), variable)])
        expected = expected - learning_rate * weight_decay * expected
        m = beta_1 * m + (1 - beta_1) * gradient
        v = beta_2 * v + (1 - beta_2) * gradient.astype("float64") ** 2
        alpha = learning_rate * np.sqrt(1 - beta_2**step) / (1 - beta_1**step)
        expected = expected - alpha * m / (np.sqrt(v) + epsilon)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), expected, atol=1e-6)
    assert not np.allclose(expected, initial, atol=1e-3)  # the updates were not negligible


@pytest.mark.backends
def test_gradient_accumulation_matches_one_larger_batch():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")
    # Adam's first steps divide gradients by their own size, which turns float noise in
    # near-zero gradients into whole steps; a large epsilon keeps the comparison exact.
    options = dict(
        num_train_steps=2, warmup_steps=1, decay="linear", learning_rate=0.1, epsilon=1.0
    )

    def regression_model(**extra_options):
        keras.utils.set_random_seed(1)
        model = keras.Sequential(
            [keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)]
        )
        model.compile(optimizer=training.make_optimizer(**options, **extra_options), loss="mse")
        return model

    initial = flat_weights(regression_model())
    accumulating = regression_model(gradient_accumulation_steps=2)
    plain = regression_model()
    # Two updates each: 2 x (2 batches of 4) against 2 batches of 8, same examples in order;
    # the warmup makes the first update's rate 0, so the schedule must count updates.
    accumulating.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    plain.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert int(keras.ops.convert_to_numpy(accumulating.optimizer.iterations)) == 2
    assert np.abs(flat_weights(plain) - initial).max() > 1e-3
    np.testing.assert_allclose(flat_weights(accumulating), flat_weights(plain), rtol=0, atol=1e-7)


@pytest.mark.backends
@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_and_scales_float16_losses(precision):
    training.set_precision(precision)
    model = tiny_classifier(learning_rate=1e-3)
    is_scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert is_scaled == (precision == "mixed_float16")
    assert model.backbone.dtype_policy.name == precision
    history = model.fit(classification_dataset(16, 8), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_optimizer_errors_name_the_parameter():
    with pytest.raises(ValueError, match="Expected optimizer to be one of"):
        training.make_optimizer("sgd", decay="constant")
    with pytest.raises(ValueError, match="Expected gradient_accumulation_steps to be"):
        training.make_optimizer(decay="constant", gradient_accumulation_steps=0)
    with pytest.raises(ValueError, match="Expected precision to be one of"):
        training.set_precision("float8")


def test_optimizer_defaults_are_berts():
    optimizer = training.make_optimizer(learning_rate=1e-4, num_train_steps=100, warmup_steps=10)
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert optimizer.weight_decay == 0.01
    assert optimizer.global_clipnorm == 1.0
    assert optimizer.epsilon == 1e-6
    assert optimizer.get_config()["learning_rate"]["class_name"] == "WarmupSchedule"
    assert isinstance(training.make_optimizer("lamb", decay="constant"), keras.optimizers.Lamb)


# === fit ===


def read_json(path):
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def test_segments_split_only_a_resumed_epoch_from_the_rest():
    assert list(training._segments(0, 12, 4)) == [(0, 12, 4)]
    assert list(training._segments(0, 10, 4)) == [(0, 10, 4)]
    assert list(training._segments(6, 12, 4)) == [(6, 8, 2), (8, 12, 4)]
    assert list(training._segments(9, 10, 4)) == [(9, 10, 1)]
    assert list(training._segments(5, 7, 4)) == [(5, 7, 2)]
    assert list(training._segments(10, 10, 4)) == []


@pytest.mark.backends
def test_fit_records_history_plot_and_backup(tmp_path):
    model = tiny_masked_lm()
    history = training.fit(
        model,
        masked_lm_dataset(32, 8, shuffle_seed=2),
        tmp_path,
        num_train_steps=10,
        steps_per_epoch=4,
        validation_data=masked_lm_dataset(16, 8, seed=1),
        verbose=0,
    )
    assert history["epoch"] == [1, 2, 3]
    assert history["step"] == [4, 8, 10]
    keys = ("loss", "masked_lm_loss", "masked_lm_accuracy", "val_loss", "val_masked_lm_accuracy")
    for key in keys:
        assert len(history[key]) == 3 and all(np.isfinite(history[key])), key
    assert read_json(tmp_path / "history.json") == history
    csv_lines = (tmp_path / "history.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,step,loss,") and len(csv_lines) == 4
    assert (tmp_path / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_json(tmp_path / "backup" / "latest.json")["step"] == 10
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 10
    if _tensorboard_installed():
        assert list((tmp_path / "logs" / "train").iterdir())


def _tensorboard_installed():
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


class CrashAtStep(keras.callbacks.Callback):
    """Raises at the end of a global step, as if the process had died there."""

    def __init__(self, first_step, crash_step):
        super().__init__()
        self.step = first_step
        self.crash_step = crash_step

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step == self.crash_step:
            raise RuntimeError("crash")


@pytest.mark.backends
def test_fit_resumes_mid_epoch_with_the_weights_of_an_uninterrupted_run(tmp_path):
    # Dropout is on, so this also checks that dropout seeds are restored.
    options = dict(dropout=0.1)
    if keras.backend.backend() == "torch":
        # PyTorch's unseeded dropout draws from torch's global generator, which its data
        # loaders draw from too, so only a dropout-free run can match there. Its CPU kernels
        # may also sum in a different order from run to run; Adam divides near-zero
        # gradients by their own size, which turns that noise into whole steps, and a large
        # epsilon keeps it noise.
        options = dict(dropout=0.0, epsilon=1.0, learning_rate=0.1)

    def run(output_dir, callbacks=None):
        model = tiny_masked_lm(**options)
        history = training.fit(
            model,
            # A function: every fit() call rebuilds the pipeline, reshuffled each epoch.
            lambda input_context: masked_lm_dataset(32, 8, shuffle_seed=5),
            output_dir,
            num_train_steps=11,
            steps_per_epoch=4,
            backup_every=3,
            callbacks=callbacks,
            verbose=0,
        )
        return model, history

    reference, reference_history = run(tmp_path / "reference")
    with pytest.raises(RuntimeError, match="crash"):
        run(tmp_path / "resumed", callbacks=[CrashAtStep(0, crash_step=8)])
    # Step 8 ends epoch 2 but crashed before its backup: the last backup is from step 6.
    assert read_json(tmp_path / "resumed" / "backup" / "latest.json")["step"] == 6
    resumed, resumed_history = run(tmp_path / "resumed")
    np.testing.assert_allclose(flat_weights(resumed), flat_weights(reference), rtol=0, atol=1e-6)
    assert resumed_history["step"] == reference_history["step"] == [4, 8, 11]
    # The epoch that was cut short is summarised over the steps run after resuming.
    assert resumed_history["loss"][0] == reference_history["loss"][0]


def test_fit_refuses_a_backup_written_with_other_settings(tmp_path):
    options = dict(num_train_steps=2, steps_per_epoch=2, verbose=0)
    training.fit(
        tiny_masked_lm(), masked_lm_dataset(), tmp_path, run_config={"size": "tiny"}, **options
    )
    with pytest.raises(ValueError, match="size: 'tiny' then, 'mini' now"):
        training.fit(
            tiny_masked_lm(), masked_lm_dataset(), tmp_path, run_config={"size": "mini"}, **options
        )


def test_fit_of_a_finished_run_trains_no_more(tmp_path):
    options = dict(num_train_steps=4, steps_per_epoch=2, verbose=0)
    first_model = tiny_masked_lm()
    first_history = training.fit(first_model, masked_lm_dataset(), tmp_path, **options)
    again = tiny_masked_lm(seed=7)
    history = training.fit(again, masked_lm_dataset(), tmp_path, **options)
    assert history == first_history
    np.testing.assert_array_equal(flat_weights(again), flat_weights(first_model))


def nan_at_batch_dataset(nan_batch, num_batches=8, batch_size=4):
    x, labels = classification_arrays(num_batches * batch_size, num_classes=1, seed=4)
    labels[nan_batch * batch_size] = np.nan
    return tf.data.Dataset.from_tensor_slices((x, labels)).batch(batch_size)


@pytest.mark.backends
def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_backup(tmp_path):
    model = tiny_classifier(num_classes=1)
    model.compile(optimizer=model.optimizer, loss="mse")
    # The sixth batch (step 6) has a NaN label; backups every 4 steps: the good one is step 4.
    with pytest.raises(training.LossNotFiniteError, match=r"step 6: the loss became nan.*step 4"):
        training.fit(
            model,
            nan_at_batch_dataset(nan_batch=5),
            tmp_path,
            num_train_steps=8,
            steps_per_epoch=8,
            backup_every=4,
            verbose=0,
        )
    assert read_json(tmp_path / "backup" / "latest.json")["step"] == 4
    weights = flat_weights(model)
    assert np.isfinite(weights).all()
    reloaded = tiny_classifier(num_classes=1, seed=9)
    callbacks_lib.TrainingState(tmp_path / "backup").restore(reloaded)
    np.testing.assert_array_equal(flat_weights(reloaded), weights)


def test_a_backup_cut_short_leaves_the_previous_one_usable(tmp_path, monkeypatch):
    state = callbacks_lib.TrainingState(str(tmp_path))
    model = tiny_masked_lm()
    model.optimizer.build(model.trainable_variables)
    state.save(model, 3)
    saved = flat_weights(model)
    model.set_weights([weight * 2 for weight in model.get_weights()])

    def killed_midway(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        state.save(model, 6)
    monkeypatch.undo()
    assert state.latest()["step"] == 3
    assert state.restore(model) == 3
    np.testing.assert_array_equal(flat_weights(model), saved)
    state.save(model, 9)
    assert sorted(os.listdir(tmp_path)) == ["latest.json", "step-000000009"]


def test_fit_errors_name_the_parameter(tmp_path):
    with pytest.raises(ValueError, match="Expected epochs or num_train_steps"):
        training.fit(tiny_masked_lm(), masked_lm_dataset(), tmp_path, verbose=0)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        training.fit(
            tiny_masked_lm(), masked_lm_dataset().repeat(), tmp_path, epochs=1, verbose=0
        )
    with pytest.raises(ValueError, match="Expected backup_every to be"):
        training.fit(
            tiny_masked_lm(), masked_lm_dataset(), tmp_path, epochs=1, backup_every=0, verbose=0
        )


@pytest.mark.parametrize("learning_rate", [0.0, -1e-4, float("nan")])
def test_a_learning_rate_that_is_not_positive_is_refused(learning_rate):
    with pytest.raises(ValueError, match=r"Expected learning_rate to be positive\. Received: learning_rate="):
        training.make_optimizer("adamw", learning_rate, num_train_steps=10)
