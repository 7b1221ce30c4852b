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

import keras
import numpy as np

from kbert import files

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
VOCABULARY_FILE = "vocab.txt"
FORMAT_NAME = "kbert-model"
FORMAT_VERSION = 1


def save(model, directory, vocabulary, tokenizer=None, task=None, configs=None):
    """Writes `model` and its vocabulary into `directory` (created if missing).

    Args:
        model: a `BertBackbone`, `BertMaskedLM`, `BertClassifier` or `BertTextEmbedder`.
        directory: the model directory.
        vocabulary: path of a `vocab.txt`, or a list of tokens in id order.
        tokenizer: tokenizer settings, e.g. `{"lowercase": True, "strip_accents": True,
            "sequence_length": 128}`.
        task: what the model was trained for (for classifiers: `label_names`, text and label
            columns, `metric`), or `None`.
        configs: the config objects of the run that trained it, as dicts
            (`kbert.config.as_dicts`), or `None`.
    """
    os.makedirs(directory, exist_ok=True)
    files.remove_stale_temporaries(directory)
    vocabulary_path = os.path.join(directory, VOCABULARY_FILE)
    if isinstance(vocabulary, (str, os.PathLike)):
        if os.path.abspath(vocabulary) != os.path.abspath(vocabulary_path):
            files.copy_file(vocabulary, vocabulary_path)
    else:
        files.write_text(vocabulary_path, "".join(f"{token}\n" for token in vocabulary))
    # Each file is replaced whole, weights before config, so that a process killed in between
    # leaves a directory that loads (old or new weights), never a half-written one.
    save_weights(model, os.path.join(directory, WEIGHTS_FILE))
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model": architecture(model),
        "tokenizer": {"vocabulary": VOCABULARY_FILE, **(tokenizer or {})},
        "task": task,
    }
    if configs is not None:
        config["configs"] = configs
    files.write_json(os.path.join(directory, CONFIG_FILE), config)


def save_weights(model, path):
    """`model.save_weights(path)`, atomically, after checking that the device has room."""
    with files.atomic_path(path, expected_size=expected_weights_size(model, path)) as temporary:
        model.save_weights(temporary)


def expected_weights_size(model, path=None):
    """A generous bound on the bytes of `model`'s weights file (with its optimizer's state).

    Per variable, HDF5 adds a header and a group entry to the data; the file already at
    `path`, written from the same model, is the best estimate where there is one.
    """
    variables = list(model.weights)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and getattr(optimizer, "built", False):
        variables += list(optimizer.variables)
    data_bytes = sum(
        int(np.prod(variable.shape)) * np.dtype(variable.dtype).itemsize for variable in variables
    )
    estimate = data_bytes + 3072 * len(variables) + 65536
    if path is not None and os.path.isfile(path):
        estimate = max(estimate, os.path.getsize(path))
    return estimate


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
    """The model directory's vocabulary file, which must lie inside the directory."""
    name = read_config(directory)["tokenizer"]["vocabulary"]
    path = os.path.join(directory, name)
    # Real paths, so that neither "../" nor a symbolic link leads outside the directory.
    root = os.path.realpath(directory)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise ValueError(
            f"{os.path.join(directory, CONFIG_FILE)} names a vocabulary outside the model "
            f"directory, which kbert does not read: {name}"
        )
    return path


def load(directory, compile=False):
    """Rebuilds the model saved in `directory` and loads its weights.

    Example:
    >>> model = kbert.load("runs/sst2")  # doctest: +SKIP
    """
    # Importing the builders registers them with Keras' serialization.
    import kbert.backbone  # noqa: F401
    import kbert.classifier  # noqa: F401
    import kbert.embedder  # noqa: F401
    import kbert.masked_lm  # noqa: F401
    import kbert.token_classifier  # noqa: F401

    config = read_config(directory)
    config_path = os.path.join(directory, CONFIG_FILE)
    try:
        model = keras.saving.deserialize_keras_object(config["model"])
    except TypeError as error:
        # Keras' message goes on with advice and the whole config; its first sentence names
        # the class.
        reason = str(error).strip().split(". ")[0].splitlines()[0] if str(error).strip() else ""
        raise ValueError(f"{config_path} describes a model kbert cannot build: {reason}") from None
    weights_path = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(f"{directory} has no weights file {WEIGHTS_FILE}")
    try:
        model.load_weights(weights_path)
    except OSError as error:  # h5py's, for a file that is not (or no longer all) HDF5
        raise ValueError(
            f"{weights_path} is not a readable weights file (truncated, or not HDF5): {error}"
        ) from None
    check_vocabulary_size(directory, model)
    if compile:
        model.compile()
    return model


def check_vocabulary_size(directory, model):
    """Fails unless the vocabulary has no more tokens than the model has embeddings.

    A vocabulary may be shorter (some checkpoints pad their embedding table), never longer:
    its extra tokens would become ids the model cannot look up.
    """
    backbone = getattr(model, "backbone", model)
    vocabulary_size = getattr(backbone, "vocabulary_size", None)
    if vocabulary_size is None or not read_config(directory).get("tokenizer", {}).get("vocabulary"):
        return
    path = vocabulary_path(directory)
    if not os.path.isfile(path):
        return
    # Lines as `kbert.tokenizer.read_vocabulary` splits them.
    with open(path, encoding="utf-8", errors="replace") as file:
        num_tokens = sum(1 for _ in file)
    if num_tokens > vocabulary_size:
        raise ValueError(
            f"{path} has {num_tokens} tokens but the model's vocabulary_size is "
            f"{vocabulary_size}; the vocabulary does not belong to this model"
        )
