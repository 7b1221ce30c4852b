"""A training run killed with SIGKILL resumes from its last backup when run again, and
ends with the weights of a run that was never interrupted.

The run itself is this file as a script:

    python tests/test_training_fault_tolerance.py OUTPUT_DIR

It prints `step N` after every step; `$STEP_DELAY_SECONDS` slows it down so that the
test can kill it mid-training.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
NUM_TRAIN_STEPS = 24
STEPS_PER_EPOCH = 8
BACKUP_EVERY = 3
KILL_AFTER_STEP = 11


def start_run(output_dir, step_delay_seconds=0.0):
    environment = dict(os.environ, STEP_DELAY_SECONDS=str(step_delay_seconds))
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), str(output_dir)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process, timeout=600):
    output = process.communicate(timeout=timeout)[0]
    assert process.returncode == 0, output[-5000:]
    return output


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the run reports steps on TF")
def kill_at_step(process, step):
    """SIGKILLs `process` (a training run printing `step N` lines) once it has printed `step`."""
    try:
        for line in process.stdout:
            if line.strip() == f"step {step}":
                os.kill(process.pid, signal.SIGKILL)
                break
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL


def latest_backup_step(output_dir):
    """The step of the run's newest backup."""
    with open(os.path.join(output_dir, "backup", "latest.json"), encoding="utf-8") as file:
        return json.load(file)["step"]


def test_a_run_killed_mid_training_resumes_to_the_uninterrupted_weights(tmp_path):
    uninterrupted = start_run(tmp_path / "uninterrupted")
    kill_at_step(start_run(tmp_path / "killed", step_delay_seconds=0.2), KILL_AFTER_STEP)
    backup_step = latest_backup_step(tmp_path / "killed")
    # Backups every 3 steps: the kill landed after step 11, so the last one is from step 9,
    # or a little later on a busy machine; either way mid-training.
    assert backup_step % BACKUP_EVERY == 0 and KILL_AFTER_STEP - 2 <= backup_step < NUM_TRAIN_STEPS
    assert not (tmp_path / "killed" / "weights.npy").exists()

    output = finish(start_run(tmp_path / "killed"))
    assert f"Resuming from the backup at step {backup_step} of {NUM_TRAIN_STEPS}" in output
    finish(uninterrupted)
    np.testing.assert_allclose(
        np.load(tmp_path / "killed" / "weights.npy"),
        np.load(tmp_path / "uninterrupted" / "weights.npy"),
        rtol=0,
        atol=1e-6,
    )
    with open(tmp_path / "killed" / "history.json", encoding="utf-8") as file:
        history = json.load(file)
    assert history["step"] == [8, 16, 24]


# Trains with a backup every 2 steps; after the backup of step 4 a callback fills the disk,
# so the backup of step 6 finds no room. Errors are printed as `kbert` prints them.
FULL_DISK_RUN = r"""
import os, sys
sys.path.insert(0, sys.argv[2])
import keras
from test_training import masked_lm_dataset, tiny_masked_lm
from kbert import cli, training


class FillDisk(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if int(keras.ops.convert_to_numpy(self._model.optimizer.iterations)) == 5:
            with open(os.path.join(sys.argv[1], "filler"), "wb", buffering=0) as file:
                for size in (2**20, 2**12, 1):
                    try:
                        while True:
                            file.write(b"x" * size)
                    except OSError:
                        pass


try:
    training.fit(
        tiny_masked_lm(), lambda input_context: masked_lm_dataset(32, 8),
        os.path.join(sys.argv[1], "run"), num_train_steps=40, steps_per_epoch=8,
        backup_every=2, callbacks=[FillDisk()], verbose=0,
    )
except (ValueError, OSError) as error:
    print(f"kbert pretrain: error: {error}", file=sys.stderr)
    sys.exit(2)
"""


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the run counts steps on TF")
def test_a_full_disk_during_a_backup_ends_in_one_line_and_keeps_the_last_backup(small_disk):
    from test_training import tiny_masked_lm

    disk = small_disk("4m")
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK_RUN, os.fspath(disk), TESTS_DIR],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        timeout=600,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("kbert ")]
    assert result.returncode == 2, result.stderr[-5000:]
    assert "Traceback" not in result.stderr, result.stderr[-5000:]
    assert len(errors) == 1
    assert errors[0].startswith(
        f"kbert pretrain: error: Could not write {disk}/run/backup/step-000000006.tmp"
    )
    assert errors[0].endswith(": no space left on device")
    backup_dir = disk / "run" / "backup"
    with open(backup_dir / "latest.json", encoding="utf-8") as file:
        assert json.load(file)["step"] == 4
    assert sorted(os.listdir(backup_dir)) == ["latest.json", "step-000000004"]
    os.remove(disk / "filler")
    model = tiny_masked_lm()
    model.optimizer.build(model.trainable_variables)
    from kbert.callbacks import TrainingState

    assert TrainingState(os.fspath(backup_dir)).restore(model) == 4


class StopAfterStep(keras.callbacks.Callback):
    """Interrupts training after `step`, as a kill would (after its backup)."""

    def __init__(self, step):
        super().__init__()
        self.stop_step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(keras.ops.convert_to_numpy(self._model.optimizer.iterations)) == self.stop_step:
            raise KeyboardInterrupt


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the run counts steps on TF")
def test_the_history_of_a_resumed_epoch_has_no_partial_training_metrics(tmp_path):
    from test_training import masked_lm_dataset, tiny_masked_lm

    from kbert import training

    def run(callbacks=()):
        return training.fit(
            tiny_masked_lm(),
            lambda input_context: masked_lm_dataset(32, 8),
            tmp_path,
            num_train_steps=24,
            steps_per_epoch=8,
            backup_every=2,
            validation_data=lambda input_context: masked_lm_dataset(16, 8, seed=1),
            callbacks=list(callbacks),
            verbose=0,
        )

    with pytest.raises(KeyboardInterrupt):
        run([StopAfterStep(12)])
    history = run()
    assert history["step"] == [8, 16, 24]
    # Epoch 2 resumed at step 12: its training metrics would cover steps 13-16 only.
    assert history["loss"][1] is None and history["masked_lm_accuracy"][1] is None
    assert all(isinstance(history[key][index], float) for key in ("loss", "val_loss")
               for index in (0, 2))
    assert isinstance(history["val_loss"][1], float)
    with open(tmp_path / "history.csv", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert rows[1]["loss"] == "" and rows[1]["val_loss"] != ""


class ReportSteps(keras.callbacks.Callback):
    """Prints each finished step, then waits `delay` seconds."""

    def __init__(self, delay):
        super().__init__()
        self.delay = delay

    def on_train_batch_end(self, batch, logs=None):
        # TensorFlow keeps the optimizer's step up to date after every batch.
        step = int(keras.ops.convert_to_numpy(self._model.optimizer.iterations))
        print(f"step {step}", flush=True)
        time.sleep(self.delay)


def main(output_dir):
    sys.path.insert(0, TESTS_DIR)
    from test_training import flat_weights, masked_lm_dataset, tiny_masked_lm

    from kbert import training

    # Dropout is on: the resumed run must also continue the dropout masks' random stream.
    model = tiny_masked_lm(dropout=0.1, seed=0)
    training.fit(
        model,
        lambda input_context: masked_lm_dataset(32, 8, shuffle_seed=3),
        output_dir,
        num_train_steps=NUM_TRAIN_STEPS,
        steps_per_epoch=STEPS_PER_EPOCH,
        backup_every=BACKUP_EVERY,
        callbacks=[ReportSteps(float(os.environ.get("STEP_DELAY_SECONDS", "0")))],
        verbose=0,
    )
    np.save(os.path.join(output_dir, "weights.npy"), flat_weights(model))


if __name__ == "__main__":
    main(sys.argv[1])
