"""kbert model directories: everything needed to rebuild a trained model.

A model directory holds:

    config.json          the model (Keras class and config), the tokenizer settings and the task
    model.weights.h5     the weights, in Keras' backend-neutral format
    vocab.txt            the WordPiece vocabulary, one token per line
    history.json, ...    training logs, where the model was trained by kbert

`pretrain`, `finetune` and `convert` write one; `kbert.load`, `finetune --init`, `evaluate`,
`predict` and `export` read one.
"""

import json
import os
import shutil

import keras

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
VOCABULARY_FILE = "vocab.txt"
FORMAT_NAME = "kbert-model"
FORMAT_VERSION = 1


def save(model, directory, vocabulary, tokenizer=None, task=None):
    """Writes `model` and its vocabulary into `directory` (created if missing).

    Args:
        model: a `BertBackbone`, `BertMaskedLM` or `BertClassifier`.
        directory: the model directory.
        vocabulary: path of a `vocab.txt`, or a list of tokens in id order.
        tokenizer: tokenizer settings, e.g. `{"lowercase": True, "strip_accents": True,
            "sequence_length": 128}`.
        task: what the model was trained for (for classifiers: `label_names`, text and label
            columns, `metric`), or `None`.
    """
    os.makedirs(directory, exist_ok=True)
    vocabulary_path = os.path.join(directory, VOCABULARY_FILE)
    if isinstance(vocabulary, (str, os.PathLike)):
        if os.path.abspath(vocabulary) != os.path.abspath(vocabulary_path):
            shutil.copyfile(vocabulary, vocabulary_path)
    else:
        with open(vocabulary_path, "w", encoding="utf-8") as file:
            file.write("".join(f"{token}\n" for token in vocabulary))
    model.save_weights(os.path.join(directory, WEIGHTS_FILE))
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model": architecture(model),
        "tokenizer": {"vocabulary": VOCABULARY_FILE, **(tokenizer or {})},
        "task": task,
    }
    _write_json(os.path.join(directory, CONFIG_FILE), config)


def architecture(model):
    # Only the architecture: compile settings belong to whoever trains the model next.
    serialized = keras.saving.serialize_keras_object(model)
    for key in ("compile_config", "build_config"):
        serialized.pop(key, None)
    return serialized


def read_config(directory):
    """Returns the parsed `config.json` of a model directory, with a clear error if absent."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Model directory not found: {directory}")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{directory} is not a kbert model directory: it has no {CONFIG_FILE}"
        )
    try:
        with open(path, encoding="utf-8") as file:
            config = json.load(file)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {error.lineno}: invalid JSON ({error.msg})") from None
    if config.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a kbert model config (no \"format\": \"{FORMAT_NAME}\")")
    return config


def vocabulary_path(directory):
    return os.path.join(directory, read_config(directory)["tokenizer"]["vocabulary"])


def load(directory, compile=False):
    """Rebuilds the model saved in `directory` and loads its weights.

    Example:
    >>> model = kbert.load("runs/sst2")  # doctest: +SKIP
    """
    # Importing the builders registers them with Keras' serialization.
    import kbert.backbone  # noqa: F401
    import kbert.classifier  # noqa: F401
    import kbert.masked_lm  # noqa: F401

    config = read_config(directory)
    model = keras.saving.deserialize_keras_object(config["model"])
    weights_path = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(f"{directory} has no weights file {WEIGHTS_FILE}")
    model.load_weights(weights_path)
    if compile:
        model.compile()
    return model


def _write_json(path, value):
    # Written beside and renamed so that a killed process never leaves half a config.
    temporary_path = path + ".tmp"
    with open(temporary_path, "w", encoding="utf-8") as file:
        json.dump(value, file, indent=2)
        file.write("\n")
    os.replace(temporary_path, path)
