"""Callbacks that make `kbert.training.fit` resumable and leave a readable record.

`TrainingState` is the backup directory: weights, optimizer state and dropout seeds at
one step, written so that a process killed at any moment leaves the previous backup
intact. `BackupCallback` writes it every N steps and at each epoch end, and stops training
when the loss stops being finite. `HistoryLogger` keeps `history.json` and `history.csv`
up to date after every epoch, across resumed runs.

Keras' own `BackupAndRestore` resumes only at epoch boundaries, does not keep dropout
seeds and overwrites its single file in place; a run killed while writing it has nothing
to resume from.
"""

import contextlib
import csv
import io
import json
import math
import os
import shutil

import keras
import numpy as np

from kbert import files

LATEST_FILE = "latest.json"
WEIGHTS_FILE = "model.weights.h5"
SEEDS_FILE = "seed_states.npz"
HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"
HISTORY_PLOT = "history.png"


class TrainingState:
    """The backup directory of one training run.

    Layout: `step-000001200/` (weights with the optimizer state, and the seed states of
    dropout layers) and `latest.json`, which names the newest complete step directory.
    A backup is written into a temporary directory, renamed into place, and only then
    named in `latest.json` (replaced atomically), so `latest.json` always points at a
    complete backup.

    Args:
        directory: the backup directory, e.g. `OUTPUT_DIR/backup`.
    """

    def __init__(self, directory):
        self.directory = directory

    def latest(self):
        """Returns the metadata of the newest backup (`step`, `run_config`, ...), or `None`."""
        path = os.path.join(self.directory, LATEST_FILE)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as file:
            return json.load(file)

    def save(self, model, step, run_config=None):
        """Backs up `model` (weights, optimizer state, dropout seeds) as of `step`."""
        from kbert import model_dir

        os.makedirs(self.directory, exist_ok=True)
        name = f"step-{step:09d}"
        final_path = os.path.join(self.directory, name)
        temporary_path = final_path + ".tmp"
        shutil.rmtree(temporary_path, ignore_errors=True)
        try:
            os.makedirs(temporary_path)
        except OSError as error:
            raise files.write_error(temporary_path, error) from None
        try:
            weights_path = os.path.join(temporary_path, WEIGHTS_FILE)
            # The last backup's weights file is the exact size of this one.
            latest = self.latest()
            previous = latest and os.path.join(self.directory, latest["directory"], WEIGHTS_FILE)
            expected_size = model_dir.expected_weights_size(model, previous)
            with files.atomic_path(weights_path, expected_size=expected_size) as temporary:
                with _without_keras_distribution():
                    model.save_weights(temporary)
            seed_states = {
                str(index): keras.ops.convert_to_numpy(variable.value)
                for index, variable in enumerate(_seed_state_variables(model))
            }
            buffer = io.BytesIO()
            np.savez(buffer, **seed_states)
            files.write_bytes(os.path.join(temporary_path, SEEDS_FILE), buffer.getvalue())
        except BaseException:
            # The last complete backup stays the one latest.json names.
            shutil.rmtree(temporary_path, ignore_errors=True)
            raise
        shutil.rmtree(final_path, ignore_errors=True)
        os.replace(temporary_path, final_path)
        files.sync_directory(self.directory)
        files.write_json(
            os.path.join(self.directory, LATEST_FILE),
            {"step": step, "directory": name, "run_config": run_config},
        )
        # Older backups (and temporaries left by killed runs) are no longer needed.
        for entry in os.listdir(self.directory):
            if entry.startswith("step-") and entry != name:
                shutil.rmtree(os.path.join(self.directory, entry), ignore_errors=True)
        files.remove_stale_temporaries(self.directory)

    def restore(self, model):
        """Loads the newest backup into `model`; returns its step, or 0 where there is none."""
        latest = self.latest()
        if latest is None:
            return 0
        path = os.path.join(self.directory, latest["directory"])
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            # The optimizer's slots must exist before their values can be loaded.
            optimizer.build(model.trainable_variables)
        model.load_weights(os.path.join(path, WEIGHTS_FILE))
        with np.load(os.path.join(path, SEEDS_FILE)) as seed_states:
            variables = _seed_state_variables(model)
            if all(str(index) in seed_states.files for index in range(len(variables))):
                for index, variable in enumerate(variables):
                    variable.assign(seed_states[str(index)])
        return int(latest["step"])


@contextlib.contextmanager
def _without_keras_distribution():
    # Saving creates throwaway Keras variables; under a multi-process JAX distribution each
    # creation is a collective that the processes which do not save would never join.
    distribution = keras.distribution.distribution() if keras.backend.backend() == "jax" else None
    if distribution is None:
        yield
        return
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(distribution)


def _seed_state_variables(model):
    # The states of SeedGenerators (dropout): in model.variables but not in model.weights,
    # so model.save_weights() leaves them out.
    weight_ids = {id(weight) for weight in model.weights}
    return [variable for variable in model.variables if id(variable) not in weight_ids]


class LossNotFiniteError(ValueError):
    """Training stopped because the loss became NaN or infinite."""


class BackupCallback(keras.callbacks.Callback):
    """Backs up the training state every `backup_every` steps and at every epoch end,
    and stops training at the first non-finite loss (Keras' `TerminateOnNaN` behaviour)
    without backing up the bad state.

    Args:
        state: the `TrainingState` to write.
        start_step: the global step the current `fit()` call starts from.
        stop_step: the global step at which to stop (ending the epoch early if needed).
        steps_per_epoch: steps in each epoch of the current `fit()` call.
        backup_every: back up every this many steps, or `None` for epoch ends only.
        run_config: JSON-compatible settings stored with each backup.
        write: whether this process writes (the chief does; all processes check the loss).
    """

    def __init__(
        self,
        state,
        start_step,
        stop_step,
        steps_per_epoch,
        backup_every=None,
        run_config=None,
        write=True,
    ):
        super().__init__()
        self.state = state
        self.step = start_step
        self.stop_step = stop_step
        self.steps_per_epoch = steps_per_epoch
        self.backup_every = backup_every
        self.run_config = run_config
        self.write = write
        self.last_backup_step = None
        self.non_finite_step = None
        self.non_finite_loss = None
        self._batches_done_in_epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._batches_done_in_epoch = 0

    def on_train_batch_end(self, batch, logs=None):
        # With steps_per_execution > 1, Keras reports only the last batch of each execution.
        self.step += batch + 1 - self._batches_done_in_epoch
        self._batches_done_in_epoch = batch + 1
        loss = (logs or {}).get("loss")
        if loss is not None:
            loss = float(keras.ops.convert_to_numpy(loss))
            if not math.isfinite(loss):
                self.non_finite_step = self.step
                self.non_finite_loss = loss
                # self._model avoids the JAX state sync that self.model would force.
                self._model.stop_training = True
                return
        end_of_epoch = self._batches_done_in_epoch >= self.steps_per_epoch
        if self.step >= self.stop_step:
            # Keras still validates and ends the epoch normally after a stop.
            self._model.stop_training = True
            end_of_epoch = True
        if self.backup_every and self.step % self.backup_every == 0 and not end_of_epoch:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        # After HistoryLogger (listed before this callback), so a resumed run never lacks
        # the history of an epoch it does not repeat.
        if self.non_finite_step is None:
            self._save()

    def _save(self):
        if self.last_backup_step == self.step:
            return
        model = self.model
        if not all(
            np.isfinite(keras.ops.convert_to_numpy(weight)).all()
            for weight in model.trainable_weights
        ):
            self.non_finite_step = self.step
            self.non_finite_loss = float("nan")
            model.stop_training = True
            return
        if self.write:
            self.state.save(model, self.step, self.run_config)
        self.last_backup_step = self.step


class HistoryLogger(keras.callbacks.Callback):
    """Appends each epoch's logs to `history.json` and `history.csv` in `output_dir`.

    The history is a dict of lists, like `keras.callbacks.History.history`, with two more
    keys: `epoch` (1-based) and `step` (global step at the end of the epoch).

    A run resumed in the middle of an epoch has trained on only part of that epoch since
    Keras last reset its metrics, so that epoch's training metrics are left empty (`None`)
    rather than recorded as if they covered it; its validation metrics and learning rate,
    which do not depend on the interruption, are kept.

    Args:
        output_dir: where the files go.
        history: the history of earlier (interrupted) runs to continue, or `None`.
        epoch_end_step: function from a 0-based epoch index to the global step at its end.
        write: whether this process writes the files.
        resumed_epoch: the 0-based epoch this run resumes in the middle of, or `None`.
    """

    def __init__(self, output_dir, history, epoch_end_step, write=True, resumed_epoch=None):
        super().__init__()
        self.output_dir = output_dir
        self.history = history or {}
        self.epoch_end_step = epoch_end_step
        self.write = write
        self.resumed_epoch = resumed_epoch

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "step": self.epoch_end_step(epoch)}
        for key, value in (logs or {}).items():
            partial = epoch == self.resumed_epoch and not key.startswith("val_")
            if partial and key != "learning_rate":
                row[key] = None
                continue
            row[key] = float(keras.ops.convert_to_numpy(value))
        num_rows = len(self.history.get("epoch", []))
        for key in set(self.history) | set(row):
            column = self.history.setdefault(key, [None] * num_rows)
            column.append(row.get(key))
        if self.write:
            write_history(self.history, self.output_dir)


def read_history(output_dir, up_to_step=None):
    """Reads `history.json` from `output_dir`, keeping the epochs that ended by `up_to_step`."""
    path = os.path.join(output_dir, HISTORY_JSON)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as file:
        history = json.load(file)
    if up_to_step is not None:
        keep = [step <= up_to_step for step in history.get("step", [])]
        history = {
            key: [value for value, kept in zip(values, keep) if kept]
            for key, values in history.items()
        }
    return history


def write_history(history, output_dir):
    """Writes `history.json` and `history.csv` (one row per epoch) into `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)
    columns = ["epoch", "step"] + sorted(key for key in history if key not in ("epoch", "step"))
    files.write_json(
        os.path.join(output_dir, HISTORY_JSON),
        {key: history[key] for key in columns if key in history},
    )
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(columns)
    for index in range(len(history.get("epoch", []))):
        row = [history[key][index] for key in columns]
        writer.writerow(["" if value is None else value for value in row])
    files.write_text(os.path.join(output_dir, HISTORY_CSV), text.getvalue())


def plot_history(history, path):
    """Plots loss and metric curves against the training step into a PNG at `path`.

    One panel per quantity (`loss`, `accuracy`, ...), training and validation together.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    steps = history.get("step", [])
    names = [
        key
        for key in history
        if key not in ("epoch", "step", "learning_rate") and not key.startswith("val_")
    ]
    names += [
        key[len("val_") :]
        for key in history
        if key.startswith("val_") and key[len("val_") :] not in names
    ]
    figure, axes = pyplot.subplots(
        1, max(len(names), 1), figsize=(4.5 * max(len(names), 1), 3.5), squeeze=False
    )
    for axis, name in zip(axes[0], names):
        for key, label in ((name, "training"), (f"val_{name}", "validation")):
            points = [
                (step, value)
                for step, value in zip(steps, history.get(key, []))
                if value is not None
            ]
            if points:
                axis.plot(*zip(*points), marker="o", markersize=3, label=label)
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=100)
    pyplot.close(figure)
    files.write_bytes(path, image.getvalue())
