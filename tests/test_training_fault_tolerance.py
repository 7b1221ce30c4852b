"""A training run killed with SIGKILL resumes from its last backup when run again, and
ends with the weights of a run that was never interrupted.

The run itself is this file as a script:

    python tests/test_training_fault_tolerance.py OUTPUT_DIR

It prints `step N` after every step; `$STEP_DELAY_SECONDS` slows it down so that the
test can kill it mid-training.
"""

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
def test_a_run_killed_mid_training_resumes_to_the_uninterrupted_weights(tmp_path):
    uninterrupted = start_run(tmp_path / "uninterrupted")
    killed = start_run(tmp_path / "killed", step_delay_seconds=0.2)
    try:
        for line in killed.stdout:
            if line.strip() == f"step {KILL_AFTER_STEP}":
                os.kill(killed.pid, signal.SIGKILL)
                break
        killed.wait(timeout=60)
    finally:
        if killed.poll() is None:
            killed.kill()
    assert killed.returncode == -signal.SIGKILL
    with open(tmp_path / "killed" / "backup" / "latest.json", encoding="utf-8") as file:
        backup_step = json.load(file)["step"]
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
