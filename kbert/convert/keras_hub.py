"""keras-hub BERT presets: `from_keras_hub` reads one, `to_keras_hub` writes one.

A keras-hub preset directory holds `config.json` (a serialized
`keras_hub.models.BertBackbone`), `model.weights.h5`, `tokenizer.json` and
`assets/tokenizer/vocabulary.txt`, plus `task.json` and `task.weights.h5` for a
`BertMaskedLM` or `BertTextClassifier`. keras-hub reads and writes them itself; this
module maps the variables of its model onto kbert's, which have the same shapes.

Two numerical differences remain, both documented in docs/conversion.md: keras-hub's BERT computes
GELU with the tanh approximation (kbert, like the original paper's definition and Hugging
Face, exactly), and its masked-LM head normalises with LayerNorm epsilon 1e-5 (kbert 1e-12).
"""

import os

from kbert.convert import mapping

CONFIG_FILE = "config.json"
TASK_CONFIG_FILE = "task.json"
TOKENIZER_CONFIG_FILE = "tokenizer.json"
VOCABULARY_FILE = os.path.join("assets", "tokenizer", "vocabulary.txt")

# Sub-layers of keras-hub's TransformerEncoder and MaskedLMHead, named as in
# `mapping.KBERT_BLOCK` and `mapping.KBERT_MASKED_LM_HEAD`.
KERAS_HUB_BLOCK = {
    "attention/self/query": "_self_attention_layer.query_dense",
    "attention/self/key": "_self_attention_layer.key_dense",
    "attention/self/value": "_self_attention_layer.value_dense",
    "attention/output/dense": "_self_attention_layer.output_dense",
    "attention/output/LayerNorm": "_self_attention_layer_norm",
    "intermediate/dense": "_feedforward_intermediate_dense",
    "output/dense": "_feedforward_output_dense",
    "output/LayerNorm": "_feedforward_layer_norm",
}
KERAS_HUB_MASKED_LM_HEAD = {
    "cls/predictions/transform/dense": "_intermediate_dense",
    "cls/predictions/transform/LayerNorm": "_intermediate_layer_norm",
    "cls/predictions/output_bias": "_bias",
}
_BACKBONE_ARGUMENTS = (
    "vocabulary_size",
    "num_layers",
    "num_heads",
    "hidden_dim",
    "intermediate_dim",
    "dropout",
    "max_sequence_length",
    "num_segments",
)
GELU_NOTE = (
    "keras-hub computes GELU with the tanh approximation and kbert computes it exactly, so "
    "outputs differ slightly (see the README)"
)


def _class_name(config):
    return str(config.get("registered_name") or config.get("class_name") or "")


def keras_hub_slots(model):
    """The slots of a keras-hub BertBackbone, BertMaskedLM or BertTextClassifier."""
    import keras_hub

    if isinstance(model, keras_hub.models.BertBackbone):
        return mapping.backbone_slots(model, KERAS_HUB_BLOCK)
    slots = mapping.backbone_slots(model.backbone, KERAS_HUB_BLOCK)
    if isinstance(model, keras_hub.models.BertMaskedLM):
        return slots + mapping.masked_lm_head_slots(model.masked_lm_head, KERAS_HUB_MASKED_LM_HEAD)
    return slots + mapping.output_layer_slots("", model.output_dense, mapping.CLASSIFIER)


def read_keras_hub(path, *, lowercase=None):
    """Reads a keras-hub BERT preset directory into a kbert model.

    Args:
        path: the preset directory.
        lowercase: override the tokenizer's casing; `None` takes it from `tokenizer.json`.

    Returns:
        A `kbert.convert.Conversion`.
    """
    import keras_hub

    directory = os.fspath(path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"keras-hub preset directory not found: {directory}")
    config_path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{directory} is not a keras-hub preset: it has no {CONFIG_FILE}")
    config = mapping.read_json(config_path)
    if "model_type" in config:
        raise mapping.ConversionError(
            f"{directory} is a Hugging Face directory; convert it with from_huggingface "
            "(from_format='huggingface')"
        )
    if not _class_name(config).endswith("BertBackbone"):
        raise mapping.ConversionError(
            f"{config_path} describes {_class_name(config) or 'no Keras object'}, "
            "not a keras-hub BertBackbone"
        )

    task_class = ""
    task_path = os.path.join(directory, TASK_CONFIG_FILE)
    if os.path.isfile(task_path):
        task_class = _class_name(mapping.read_json(task_path))
    notes = [GELU_NOTE]
    if task_class.endswith("BertMaskedLM"):
        source = keras_hub.models.BertMaskedLM.from_preset(
            directory, preprocessor=None, dtype="float32"
        )
        groups = {mapping.POOLER, mapping.MASKED_LM}
        notes.append("keras-hub's masked-LM head uses LayerNorm epsilon 1e-5 and kbert's 1e-12")
    elif task_class.endswith("BertTextClassifier"):
        source = keras_hub.models.BertTextClassifier.from_preset(
            directory, preprocessor=None, dtype="float32"
        )
        groups = {mapping.POOLER, mapping.CLASSIFIER}
    else:
        if task_class:
            notes.append(f"{task_path} describes a {task_class}, whose head kbert does not convert")
        source = keras_hub.models.BertBackbone.from_preset(directory, dtype="float32")
        groups = {mapping.POOLER}
    source_backbone = getattr(source, "backbone", source)
    backbone_config = {name: getattr(source_backbone, name) for name in _BACKBONE_ARGUMENTS}
    num_classes = getattr(source, "num_classes", None)
    model = mapping.build_model(
        backbone_config, groups, num_classes, classifier_dropout=getattr(source, "dropout", None)
    )
    source_tensors = mapping.variable_tensors(keras_hub_slots(source))
    notes += mapping.assign(mapping.model_slots(model), source_tensors, directory)

    vocabulary_path = os.path.join(directory, VOCABULARY_FILE)
    vocabulary = mapping.read_vocabulary(vocabulary_path)
    mapping.check_vocabulary(vocabulary, backbone_config["vocabulary_size"], vocabulary_path)
    if lowercase is not None:
        tokenizer = mapping.tokenizer_settings(lowercase)
    else:
        tokenizer_path = os.path.join(directory, TOKENIZER_CONFIG_FILE)
        tokenizer_config = {}
        if os.path.isfile(tokenizer_path):
            tokenizer_config = mapping.read_json(tokenizer_path).get("config", {})
        if "lowercase" in tokenizer_config:
            tokenizer = mapping.tokenizer_settings(
                tokenizer_config["lowercase"], tokenizer_config.get("strip_accents")
            )
        else:
            tokenizer = mapping.tokenizer_settings(mapping.is_uncased(vocabulary))
    task = None
    if num_classes is not None:
        task = {"label_names": [str(index) for index in range(num_classes)]}
    mapping.log_notes(notes)
    return mapping.Conversion(
        model=model, vocabulary=vocabulary, tokenizer=tokenizer, task=task, notes=notes
    )


def from_keras_hub(path, output, *, lowercase=None, overwrite=False):
    """Converts a keras-hub BERT preset directory into the kbert model directory `output`.

    Example:
    >>> from_keras_hub("bert_tiny_en_uncased", "bert-tiny")  # doctest: +SKIP
    """
    conversion = read_keras_hub(path, lowercase=lowercase)
    mapping.prepare_output(output, overwrite)
    conversion.save(output)
    return conversion


def to_keras_hub(model_directory, output, *, overwrite=False):
    """Writes the kbert model directory `model_directory` as a keras-hub preset directory.

    `keras_hub.models.BertBackbone.from_preset(output)` loads the backbone; a
    `BertMaskedLM` is also written as a keras-hub `BertMaskedLM` task and a `BertClassifier`
    as a `BertTextClassifier`, each with its preprocessor. keras-hub has no next-sentence
    head, so that head is left out.

    Returns:
        The notes about what was left out or differs numerically.
    """
    import keras_hub

    from kbert.classifier import BertClassifier
    from kbert.masked_lm import BertMaskedLM

    model, vocabulary, tokenizer_settings, _ = mapping.read_kbert_model_dir(model_directory)
    backbone = getattr(model, "backbone", model)
    hub_backbone = keras_hub.models.BertBackbone(
        **{name: getattr(backbone, name) for name in _BACKBONE_ARGUMENTS}, dtype="float32"
    )
    tokenizer = keras_hub.models.BertTokenizer(
        vocabulary=vocabulary,
        lowercase=tokenizer_settings["lowercase"],
        strip_accents=tokenizer_settings["strip_accents"],
    )
    sequence_length = min(512, backbone.max_sequence_length)
    notes = [GELU_NOTE]
    if isinstance(model, BertMaskedLM):
        preprocessor = keras_hub.models.BertMaskedLMPreprocessor(
            tokenizer, sequence_length=sequence_length
        )
        target = keras_hub.models.BertMaskedLM(hub_backbone, preprocessor=preprocessor)
        notes.append("keras-hub's masked-LM head uses LayerNorm epsilon 1e-5 and kbert's 1e-12")
    elif isinstance(model, BertClassifier):
        preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
            tokenizer, sequence_length=sequence_length
        )
        target = keras_hub.models.BertTextClassifier(
            hub_backbone,
            num_classes=model.num_classes,
            preprocessor=preprocessor,
            dropout=model.dropout,
        )
    else:
        target = hub_backbone
    source_tensors = mapping.variable_tensors(mapping.model_slots(model))
    notes += mapping.assign(keras_hub_slots(target), source_tensors, model_directory)

    mapping.prepare_output(output, overwrite)
    target.save_to_preset(output)
    if target is hub_backbone:
        tokenizer.save_to_preset(output)
    mapping.log_notes(notes)
    return notes
