"""Tests of kbert.distribution: strategy choice, input splitting, and equivalence of
distributed training with one-device training.

The equivalence tests run this file as a script in fresh processes, since devices must be
configured before TensorFlow or JAX starts:

    python tests/test_distribution.py mirrored OUTPUT_DIR
    python tests/test_distribution.py jax-process OUTPUT_DIR PROCESS_ID NUM_PROCESSES PORT
    python tests/test_distribution.py jax-local OUTPUT_DIR
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import keras
import tensorflow as tf

from kbert import distribution as distribution_lib

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
GLOBAL_BATCH_SIZE = 8
NUM_STEPS = 6


# === Strategy choice ===


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow strategies")
def test_tensorflow_strategies_on_a_cpu_machine():
    cpu = distribution_lib.make_distribution("cpu")
    assert isinstance(cpu.tf_strategy, tf.distribute.OneDeviceStrategy)
    auto = distribution_lib.make_distribution("auto")
    # One device: TensorFlow's default strategy, under which Keras may still use XLA.
    assert auto.tf_strategy is None and auto.num_replicas == 1 and auto.is_chief
    mirrored = distribution_lib.make_distribution("mirrored")
    assert isinstance(mirrored.tf_strategy, tf.distribute.MirroredStrategy)
    if not tf.config.list_logical_devices("GPU"):
        with pytest.raises(ValueError, match="strategy='gpu'"):
            distribution_lib.make_distribution("gpu")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"strategy": "fastest"}, "Expected strategy to be one of"),
        ({"model_parallel": 0}, "Expected model_parallel to be"),
        ({"num_processes": "two"}, "Expected num_processes to be an integer"),
    ],
)
def test_distribution_errors_name_the_parameter(options, message):
    with pytest.raises(ValueError, match=message):
        distribution_lib.make_distribution(**options)


def test_process_options_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("KBERT_NUM_PROCESSES", "many")
    with pytest.raises(ValueError, match=r"\$KBERT_NUM_PROCESSES to be an integer"):
        distribution_lib.make_distribution("auto")
    if keras.backend.backend() != "jax":
        monkeypatch.setenv("KBERT_NUM_PROCESSES", "2")
        with pytest.raises(ValueError, match="needs the JAX backend"):
            distribution_lib.make_distribution("auto")


# === Input splitting ===


def numbered_batches(num_examples=16, batch_size=GLOBAL_BATCH_SIZE):
    return tf.data.Dataset.range(num_examples).batch(batch_size)


def batches_of(dataset, count):
    return [batch.numpy().tolist() for batch in dataset.take(count)]


def test_a_process_gets_its_slice_of_every_global_batch():
    # What each JAX process feeds: its half of each global batch, partial batches dropped.
    second = distribution_lib.Distribution(
        keras_distribution=object(), num_replicas=2, num_processes=2, process_id=1
    )
    assert batches_of(second.distribute_dataset(numbered_batches(20)), 5) == [
        [4, 5, 6, 7],
        [12, 13, 14, 15],
    ]
    resumed = second.distribute_dataset(numbered_batches(16), skip_batches=3, repeat=True)
    assert batches_of(resumed, 2) == [[12, 13, 14, 15], [4, 5, 6, 7]]
    context = second.input_context()
    assert (context.num_input_pipelines, context.input_pipeline_id) == (2, 1)
    assert context.get_per_replica_batch_size(GLOBAL_BATCH_SIZE) == 4


def test_dataset_functions_are_rebuilt_on_every_iteration():
    def dataset_fn(input_context):
        dataset = tf.data.Dataset.range(8).shuffle(8, seed=1)
        return dataset.batch(input_context.get_per_replica_batch_size(4))

    stream = distribution_lib.Distribution().distribute_dataset(
        dataset_fn, skip_batches=3, repeat=True
    )
    # Iterating again starts the same stream: reshuffling depends on the step alone.
    first, second = batches_of(stream, 4), batches_of(stream, 4)
    assert first == second
    fresh = batches_of(dataset_fn(tf.distribute.InputContext()).repeat(), 7)
    assert first == fresh[3:]
    # The stream's own options hold (a pipeline's inside flat_map are dropped): autotuning
    # off, so that Keras deletes its iterators without waiting (kbert.data.sources.without_autotuning).
    if not isinstance(stream, tf.distribute.DistributedDataset):
        assert stream.options().autotune.enabled is False


# === Equivalence with one device (subprocesses) ===


def run_script(arguments, environment=None, timeout=600):
    """Runs this file as a script; returns its output, failing the test if it fails."""
    environment = dict(os.environ, **(environment or {}))
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout


@pytest.mark.slow
def test_mirrored_strategy_on_two_cpus_matches_one_device(tmp_path):
    run_script(["mirrored", str(tmp_path)], {"KERAS_BACKEND": "tensorflow"})
    one_device = np.load(tmp_path / "one_device.npz")
    mirrored = np.load(tmp_path / "mirrored.npz")
    assert int(mirrored["num_replicas"]) == 2
    np.testing.assert_allclose(mirrored["weights"], one_device["weights"], rtol=0, atol=1e-6)
    assert np.abs(mirrored["weights"] - mirrored["initial_weights"]).max() > 1e-3
    # Corpus-level metrics come out the same when each replica sees part of every batch.
    np.testing.assert_allclose(mirrored["metrics"], one_device["metrics"], atol=1e-5)
    assert str(one_device["accumulation_error"]) == ""
    assert "gradient_accumulation_steps" in str(mirrored["accumulation_error"])


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_jax_processes_on_loopback_train_like_one(tmp_path):
    pytest.importorskip("jax")
    environment = dict(os.environ, KERAS_BACKEND="jax")
    port = str(free_port())
    # The two processes of one run, and a one-process run for reference, side by side.
    commands = [
        ["jax-process", str(tmp_path / "two"), "0", "2", port],
        ["jax-process", str(tmp_path / "two"), "1", "2", port],
        ["jax-process", str(tmp_path / "one"), "0", "1", "0"],
    ]
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, *command],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for command in commands
    ]
    try:
        outputs = [process.communicate(timeout=600)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-5000:]

    first, second = (np.load(tmp_path / "two" / f"process-{index}.npz") for index in range(2))
    single = np.load(tmp_path / "one" / "process-0.npz")
    assert int(first["num_processes"]) == 2
    np.testing.assert_array_equal(first["weights"], second["weights"])
    np.testing.assert_allclose(first["weights"], single["weights"], rtol=0, atol=1e-6)
    assert np.abs(single["weights"] - single["initial_weights"]).max() > 1e-3
    # Only process 0 writes the run's files.
    assert (tmp_path / "two" / "history.json").is_file()
    backups = sorted(os.listdir(tmp_path / "two" / "backup"))
    assert backups == ["latest.json", f"step-{NUM_STEPS:09d}"]


@pytest.mark.slow
def test_jax_data_and_model_parallel_on_two_devices_match_one_device(tmp_path):
    pytest.importorskip("jax")
    run_script(
        ["jax-local", str(tmp_path)],
        {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
    )
    results = np.load(tmp_path / "jax_local.npz")
    assert results["descriptions"].tolist()[1].startswith("DataParallel over 2 CPU")
    assert results["descriptions"].tolist()[2].startswith("ModelParallel over 2 CPU")
    one_device, data_parallel, model_parallel = results["weights"]
    np.testing.assert_allclose(data_parallel, one_device, rtol=0, atol=1e-6)
    np.testing.assert_allclose(model_parallel, one_device, rtol=0, atol=1e-6)
    assert np.abs(one_device - results["initial_weights"]).max() > 1e-3


# === Script mode ===


def masked_lm_dataset_fn(input_context):
    """Global batches of 8 examples, each pipeline reading its share of every batch."""
    from test_training import masked_lm_arrays

    dataset = tf.data.Dataset.from_tensor_slices(masked_lm_arrays(32, seed=0))
    dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    batch_size = input_context.get_per_replica_batch_size(GLOBAL_BATCH_SIZE)
    replicas_per_pipeline = (
        input_context.num_replicas_in_sync // input_context.num_input_pipelines
    )
    # A pipeline serving several replicas yields one per-replica batch for each in turn.
    dataset = dataset.batch(batch_size * replicas_per_pipeline, drop_remainder=True)
    return dataset.rebatch(batch_size)


def train_tiny_masked_lm(distribution, output_dir, **optimizer_options):
    from test_training import flat_weights, tiny_masked_lm

    from kbert import training

    # Clipping that bites, so that it is checked too. Adam's first steps divide gradients
    # by their own size, which turns float noise in near-zero gradients into whole steps;
    # a large epsilon keeps the comparison exact (and makes Adam nearly SGD, hence the rate).
    optimizer_options = dict(dict(global_clipnorm=0.1, epsilon=1.0), **optimizer_options)
    with distribution.scope():
        model = tiny_masked_lm(learning_rate=1.0, **optimizer_options)
    initial_weights = flat_weights(model)
    training.fit(
        model,
        masked_lm_dataset_fn,
        output_dir,
        num_train_steps=NUM_STEPS,
        steps_per_epoch=3,
        distribution=distribution,
        verbose=0,
    )
    return model, initial_weights


def evaluate_glue_metrics(distribution):
    from test_training import classification_arrays, tiny_backbone

    import kbert
    from kbert.metrics import metrics_for

    keras.utils.set_random_seed(3)
    with distribution.scope():
        model = kbert.BertClassifier(tiny_backbone(), num_classes=1, dropout=0.0)
        model.compile(loss="mse", metrics=metrics_for("pearson_spearman", 1))
    x, labels = classification_arrays(21, num_classes=1, seed=6)
    # 21 examples in batches of 8: the last batch (5) is split 3 + 2 over two replicas.
    dataset = tf.data.Dataset.from_tensor_slices((x, labels)).batch(8)
    results = model.evaluate(dataset, return_dict=True, verbose=0)
    return [results["pearson"], results["spearman"]]


def mirrored_main(output_dir):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    for name in ("one_device", "mirrored"):
        distribution = distribution_lib.make_distribution(name)
        model, initial_weights = train_tiny_masked_lm(distribution, os.path.join(output_dir, name))
        from test_training import flat_weights

        accumulation_error = ""
        try:
            train_tiny_masked_lm(
                distribution, os.path.join(output_dir, f"{name}-accumulating"),
                gradient_accumulation_steps=2,
            )
        except ValueError as error:
            accumulation_error = str(error)
        np.savez(
            os.path.join(output_dir, f"{name}.npz"),
            weights=flat_weights(model),
            initial_weights=initial_weights,
            num_replicas=distribution.num_replicas,
            metrics=evaluate_glue_metrics(distribution),
            accumulation_error=accumulation_error,
        )


def jax_process_main(output_dir, process_id, num_processes, port):
    from test_training import flat_weights

    options = {}
    if num_processes > 1:
        options = dict(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=num_processes,
            process_id=process_id,
        )
    distribution = distribution_lib.make_distribution("cpu", **options)
    model, initial_weights = train_tiny_masked_lm(distribution, output_dir)
    np.savez(
        os.path.join(output_dir, f"process-{process_id}.npz"),
        weights=flat_weights(model),
        initial_weights=initial_weights,
        num_processes=distribution.num_processes,
    )


def jax_local_main(output_dir):
    from test_training import flat_weights

    weights, descriptions = [], []
    for name, options in (
        ("one_device", {}),
        ("cpu", {}),
        ("cpu", {"model_parallel": 2}),
    ):
        distribution = distribution_lib.make_distribution(name, **options)
        run_dir = os.path.join(output_dir, f"{name}-{len(weights)}")
        model, initial_weights = train_tiny_masked_lm(distribution, run_dir)
        weights.append(flat_weights(model))
        descriptions.append(distribution.description)
    np.savez(
        os.path.join(output_dir, "jax_local.npz"),
        weights=np.stack(weights),
        initial_weights=initial_weights,
        descriptions=np.array(descriptions),
    )


if __name__ == "__main__":
    sys.path.insert(0, TESTS_DIR)
    mode, output_directory, *rest = sys.argv[1:]
    os.makedirs(output_directory, exist_ok=True)
    if mode == "mirrored":
        mirrored_main(output_directory)
    elif mode == "jax-process":
        jax_process_main(output_directory, *(int(value) for value in rest))
    elif mode == "jax-local":
        jax_local_main(output_directory)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
