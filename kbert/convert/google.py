"""Original Google BERT TensorFlow checkpoints: `from_google` reads one, `to_google` writes one.

A Google directory holds `bert_config.json`, `vocab.txt` and a TF checkpoint
(`bert_model.ckpt.index`, `bert_model.ckpt.data-*`) whose variable names are the canonical
names of `kbert.convert.mapping`, with the same shapes. The original code computes GELU
with the tanh approximation; kbert, like Hugging Face's converted copies of these
checkpoints, computes exact GELU (docs/conversion.md gives the size of the difference).
"""

import glob
import os

import numpy as np

from kbert import files
from kbert.convert import mapping

CONFIG_FILE = "bert_config.json"
VOCABULARY_FILE = "vocab.txt"
CHECKPOINT_PREFIX = "bert_model.ckpt"

# Training state that the original pretraining and fine-tuning scripts save beside the
# weights (AdamWeightDecayOptimizer slots, tf.train.AdamOptimizer slots, the step).
_OPTIMIZER_SUFFIXES = ("/adam_m", "/adam_v", "/Adam", "/Adam_1")
_OPTIMIZER_NAMES = ("global_step", "beta1_power", "beta2_power")


def _checkpoint_prefix(path):
    """The checkpoint prefix and the directory beside it, from a directory or a prefix."""
    if os.path.isfile(path + ".index"):
        return path, os.path.dirname(path) or "."
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Google BERT checkpoint not found: {path}")
    default = os.path.join(path, CHECKPOINT_PREFIX)
    if os.path.isfile(default + ".index"):
        return default, path
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(path)
    if latest:
        return latest, path
    indexes = sorted(glob.glob(os.path.join(path, "*.index")))
    if len(indexes) == 1:
        return indexes[0][: -len(".index")], path
    if not indexes:
        raise FileNotFoundError(f"{path} has no TF checkpoint ({CHECKPOINT_PREFIX}.index)")
    raise mapping.ConversionError(
        f"{path} has {len(indexes)} checkpoints; pass the prefix of one, e.g. "
        f"{indexes[0][: -len('.index')]}"
    )


def read_google(path, *, lowercase=None):
    """Reads an original Google BERT checkpoint into a kbert model.

    Args:
        path: the directory (`bert_config.json`, `vocab.txt`, `bert_model.ckpt.*`), or a
            checkpoint prefix with those two files beside it.
        lowercase: override the tokenizer's casing; `None` detects it from the vocabulary
            (uncased vocabularies have no uppercase tokens).

    Returns:
        A `kbert.convert.Conversion`.
    """
    import tensorflow as tf

    prefix, directory = _checkpoint_prefix(os.fspath(path))
    config_path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{directory} has no {CONFIG_FILE} beside the checkpoint")
    config = mapping.read_json(config_path)
    backbone_config, notes = mapping.backbone_config(config, config_path)

    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    if any(".ATTRIBUTES" in name for name in shapes):
        raise mapping.ConversionError(
            f"{prefix} is an object-based TF2 checkpoint; kbert reads the original BERT "
            "checkpoints, whose variables are named like bert/embeddings/word_embeddings"
        )
    optimizer_names = [
        name for name in shapes if name.endswith(_OPTIMIZER_SUFFIXES) or name in _OPTIMIZER_NAMES
    ]
    if optimizer_names:
        notes.append(
            f"Skipped {len(optimizer_names)} optimizer variables in {prefix} "
            f"(e.g. {optimizer_names[0]})"
        )
    names = [name for name in shapes if name not in optimizer_names]

    groups = mapping.groups_present(names)
    num_classes = None
    if mapping.CLASSIFIER in groups and "output_weights" in shapes:
        num_classes = shapes["output_weights"][0]  # (classes, hidden)
    model = mapping.build_model(backbone_config, groups, num_classes)
    tensors = {name: mapping.SourceTensor(name, reader.get_tensor(name)) for name in names}
    notes += mapping.assign(mapping.model_slots(model), tensors, prefix)

    vocabulary_path = os.path.join(directory, VOCABULARY_FILE)
    vocabulary = mapping.read_vocabulary(vocabulary_path)
    mapping.check_vocabulary(vocabulary, backbone_config["vocabulary_size"], vocabulary_path)
    if lowercase is None:
        lowercase = mapping.is_uncased(vocabulary)
    task = None
    if num_classes is not None:
        task = {"label_names": [str(index) for index in range(num_classes)]}
    mapping.log_notes(notes)
    return mapping.Conversion(
        model=model,
        vocabulary=vocabulary,
        tokenizer=mapping.tokenizer_settings(lowercase),
        task=task,
        notes=notes,
    )


def from_google(path, output, *, lowercase=None, overwrite=False):
    """Converts an original Google BERT checkpoint into the kbert model directory `output`.

    A checkpoint with `cls/predictions/*` becomes a `BertMaskedLM` (with next-sentence
    prediction when it has `cls/seq_relationship/*`), one with `run_classifier.py`'s
    `output_weights` a `BertClassifier`, any other a `BertBackbone`.

    Example:
    >>> from_google("uncased_L-12_H-768_A-12", "bert-base")  # doctest: +SKIP
    """
    conversion = read_google(path, lowercase=lowercase)
    mapping.prepare_output(output, overwrite)
    conversion.save(output)
    return conversion


def to_google(model_directory, output, *, overwrite=False):
    """Writes the kbert model directory `model_directory` as an original Google BERT checkpoint
    (`bert_config.json`, `vocab.txt`, `bert_model.ckpt.*`)."""
    import tensorflow as tf

    model, vocabulary, _, _ = mapping.read_kbert_model_dir(model_directory)
    tensors = mapping.collect(mapping.model_slots(model))
    mapping.prepare_output(output, overwrite)
    names = sorted(tensors)
    # SaveV2 writes exactly these names, as the original tf.compat.v1 Saver did.
    tf.raw_ops.SaveV2(
        prefix=os.path.join(output, CHECKPOINT_PREFIX),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(np.asarray(tensors[name], "float32")) for name in names],
    )
    files.write_json(
        os.path.join(output, CONFIG_FILE),
        mapping.bert_json_config(getattr(model, "backbone", model)),
    )
    files.write_text(
        os.path.join(output, VOCABULARY_FILE), "".join(f"{token}\n" for token in vocabulary)
    )
    return output
