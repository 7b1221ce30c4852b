"""Crash-safe writes (`kbert.files`) and the checks `kbert.load` makes of a model directory.

A model directory is written by one process and read by others, often after a crash or by
hand-edited hands: every file is replaced whole or not at all, a rerun that changes nothing
writes nothing, and a damaged or foreign file stops `kbert.load` with one line naming it.
"""

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

import kbert
from kbert import cli, files
from kbert import model_dir as model_directory
from conftest import tiny_backbone

VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "the a cat dog sat on mat".split()


def tiny_classifier(seed=0):
    keras.utils.set_random_seed(seed)
    backbone = tiny_backbone(
        len(VOCABULARY), max_sequence_length=16, num_layers=1, hidden_dim=8, intermediate_dim=16
    )
    return kbert.BertClassifier(backbone, num_classes=2)


def weights_of(model):
    return [keras.ops.convert_to_numpy(weight) for weight in model.weights]


def file_states(directory):
    """(inode, mtime) of every file under `directory`: any rewrite changes one of them."""
    states = {}
    for root, _, names in os.walk(directory):
        for name in names:
            status = os.stat(os.path.join(root, name))
            states[os.path.relpath(os.path.join(root, name), directory)] = (
                status.st_ino,
                status.st_mtime_ns,
            )
    return states


@pytest.fixture
def saved(tmp_path):
    model = tiny_classifier()
    model_directory.save(model, tmp_path / "model", VOCABULARY, task={"label_names": ["a", "b"]})
    return tmp_path / "model", model


# === Atomic writes ===


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "history.json"
    files.write_json(path, {"loss": [1.0]})

    class Unserializable:
        pass

    with pytest.raises(TypeError):
        files.write_json(path, {"loss": Unserializable()})
    assert json.loads(path.read_text()) == {"loss": [1.0]}
    assert os.listdir(tmp_path) == ["history.json"]


def test_equal_contents_are_not_rewritten(tmp_path):
    path = tmp_path / "vocab.txt"
    files.write_text(path, "a\nb\n")
    before = os.stat(path)
    files.write_text(path, "a\nb\n")
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    files.write_text(path, "a\nc\n")
    assert path.read_text() == "a\nc\n"


def test_a_write_larger_than_the_free_space_fails_before_writing(tmp_path):
    path = tmp_path / "model.weights.h5"
    path.write_bytes(b"old")
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    with pytest.raises(OSError, match=f"Could not write {path}: no space left on device"):
        with files.atomic_path(path, expected_size=free + 2**40) as temporary:
            raise AssertionError(f"the writer ran, on {temporary}")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.weights.h5"]


def test_only_temporaries_of_exited_writers_are_removed(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    host = files.owner_tag().partition("@")[2]
    try:
        names = {
            "dead": f".tmp-{dead_pid}@{host}-0-model.weights.h5",
            "alive": f".tmp-{sleeper.pid}@{host}-0-model.weights.h5",
            "other host": f".tmp-{dead_pid}@elsewhere-0-model.weights.h5",
            "no owner": ".tmp-model.weights.h5",
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"partial")
        os.makedirs(tmp_path / f".tmp-{dead_pid}@{host}-1-dir")
        files.remove_stale_temporaries(tmp_path)
        assert sorted(os.listdir(tmp_path)) == sorted(
            names[key] for key in ("alive", "other host", "no owner")
        )
    finally:
        sleeper.kill()
        sleeper.wait()


# Saves the model directory again, with other weights, and is killed with SIGKILL while
# HDF5 closes the new weights file, the last moment of writing it.
KILLED_SAVE = r"""
import os, signal, sys
import h5py, keras
import kbert
from kbert import model_dir

directory = sys.argv[1]
model = model_dir.load(directory)
for variable in model.weights:
    variable.assign(keras.ops.zeros(variable.shape))

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

h5py.File.close = die
model_dir.save(model, directory, model_dir.vocabulary_path(directory))
"""


def test_a_save_killed_while_writing_the_weights_leaves_a_loadable_directory(saved):
    directory, model = saved
    result = subprocess.run(
        [sys.executable, "-c", KILLED_SAVE, os.fspath(directory)],
        capture_output=True,
        text=True,
        env=dict(os.environ, KERAS_BACKEND=keras.backend.backend()),
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    reloaded = kbert.load(directory)
    for expected, actual in zip(weights_of(model), weights_of(reloaded)):
        np.testing.assert_array_equal(actual, expected)
    # The killed writer's temporary is removed by the next save.
    assert any(name.startswith(files.TEMPORARY_PREFIX) for name in os.listdir(directory))
    model_directory.save(reloaded, directory, model_directory.vocabulary_path(directory))
    assert not any(name.startswith(files.TEMPORARY_PREFIX) for name in os.listdir(directory))


def test_saving_the_same_model_again_rewrites_nothing(saved):
    directory, model = saved
    before = file_states(directory)
    model_directory.save(
        kbert.load(directory), directory, VOCABULARY, task={"label_names": ["a", "b"]}
    )
    assert file_states(directory) == before


# === What kbert.load checks ===


def assert_one_line_cli_error(capsys, argv, *expected):
    code = cli.main([os.fspath(arg) for arg in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize("damage", ["truncated", "not HDF5"])
def test_a_damaged_weights_file_is_one_line_naming_it(saved, damage, capsys, tmp_path):
    directory, _ = saved
    weights_path = directory / model_directory.WEIGHTS_FILE
    if damage == "truncated":
        weights_path.write_bytes(weights_path.read_bytes()[:96])
    else:
        weights_path.write_text("these are not weights")
    with pytest.raises(ValueError, match="is not a readable weights file"):
        kbert.load(directory)
    assert_one_line_cli_error(
        capsys,
        ["export", "--model", directory, "--output", tmp_path / "saved_models"],
        os.fspath(weights_path),
        "not a readable weights file",
    )


def test_an_unknown_class_in_the_config_is_one_line_naming_the_file(saved):
    directory, _ = saved
    config_path = directory / model_directory.CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["model"].update(class_name="NotABert", registered_name="kbert>NotABert")
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError) as error:
        kbert.load(directory)
    message = str(error.value)
    assert message == (
        f"{config_path} describes a model kbert cannot build: Could not locate class 'NotABert'"
    )


def test_a_vocabulary_longer_than_the_embeddings_is_refused(saved):
    directory, _ = saved
    vocabulary_path = directory / model_directory.VOCABULARY_FILE
    with open(vocabulary_path, "a", encoding="utf-8") as file:
        file.write("".join(f"extra{index}\n" for index in range(5)))
    with pytest.raises(ValueError) as error:
        kbert.load(directory)
    assert str(error.value) == (
        f"{vocabulary_path} has {len(VOCABULARY) + 5} tokens but the model's vocabulary_size "
        f"is {len(VOCABULARY)}; the vocabulary does not belong to this model"
    )


@pytest.mark.parametrize("outside", ["relative", "absolute", "symbolic link"])
def test_a_vocabulary_outside_the_model_directory_is_not_read(saved, tmp_path, outside):
    directory, _ = saved
    secret = tmp_path / "secret.txt"
    secret.write_text("\n".join(VOCABULARY) + "\n")
    if outside == "relative":
        name = "../secret.txt"
    elif outside == "absolute":
        name = os.fspath(secret)
    else:
        name = "link.txt"
        os.symlink(secret, directory / name)
    config_path = directory / model_directory.CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["tokenizer"]["vocabulary"] = name
    config_path.write_text(json.dumps(config))
    expected = (
        f"{config_path} names a vocabulary outside the model directory, which kbert does not "
        f"read: {name}"
    )
    for read in (kbert.load, kbert.BertTokenizer.from_model_dir):
        with pytest.raises(ValueError) as error:
            read(directory)
        assert str(error.value) == expected


def test_a_vocabulary_with_a_duplicate_token_names_both_lines(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCABULARY + ["dog", "mat"]) + "\n")
    with pytest.raises(ValueError) as error:
        kbert.BertTokenizer(path)
    assert str(error.value) == (
        f"{path}, line {len(VOCABULARY) + 1}: the token 'dog' is already on line "
        f"{VOCABULARY.index('dog') + 1}; every token of a vocabulary must be unique"
    )
