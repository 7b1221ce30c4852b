"""What every checkpoint format shares: names, layouts, checks and config translation.

Every format is translated to and from one canonical form, the variables of the original
Google BERT TensorFlow checkpoints: `bert/embeddings/word_embeddings`,
`bert/encoder/layer_0/attention/self/query/kernel`, `cls/predictions/output_bias`, ... with
their shapes (a dense kernel is (input, output), a projection onto all heads is
(hidden, hidden)). Every BERT port derives its own names from these, so a format module
only says how its names and layouts differ; the checks (missing, unexpected and wrongly
shaped tensors, unsupported settings) live here, once.
"""

import dataclasses
import json
import logging
import math
import os

import keras
import numpy as np

from kbert import model_dir

logger = logging.getLogger("kbert.convert")

# Groups of canonical names. Only the encoder is required: a checkpoint may lack the pooler
# (Hugging Face's BertForMaskedLM has none) or carry heads that the target model lacks.
ENCODER = "encoder"
POOLER = "pooler"
MASKED_LM = "masked_lm"
NEXT_SENTENCE = "next_sentence"
CLASSIFIER = "classifier"

GROUP_DESCRIPTIONS = {
    ENCODER: "encoder",
    POOLER: "pooler",
    MASKED_LM: "masked-LM head",
    NEXT_SENTENCE: "next-sentence head",
    CLASSIFIER: "classifier head",
}

# The canonical names outside the encoder; they do not depend on the model's size. The
# classifier names are those of the original `run_classifier.py`.
HEAD_NAMES = {
    "bert/pooler/dense/kernel": POOLER,
    "bert/pooler/dense/bias": POOLER,
    "cls/predictions/transform/dense/kernel": MASKED_LM,
    "cls/predictions/transform/dense/bias": MASKED_LM,
    "cls/predictions/transform/LayerNorm/gamma": MASKED_LM,
    "cls/predictions/transform/LayerNorm/beta": MASKED_LM,
    "cls/predictions/output_bias": MASKED_LM,
    "cls/seq_relationship/output_weights": NEXT_SENTENCE,
    "cls/seq_relationship/output_bias": NEXT_SENTENCE,
    "output_weights": CLASSIFIER,
    "output_bias": CLASSIFIER,
}

# Sub-layers of one encoder block: canonical name -> attribute path in kbert's
# `TransformerEncoder`. keras-hub's block has the same sub-layers under other names.
KBERT_BLOCK = {
    "attention/self/query": "query_dense",
    "attention/self/key": "key_dense",
    "attention/self/value": "value_dense",
    "attention/output/dense": "attention_output_dense",
    "attention/output/LayerNorm": "attention_layer_norm",
    "intermediate/dense": "intermediate_dense",
    "output/dense": "output_dense",
    "output/LayerNorm": "output_layer_norm",
}
KBERT_MASKED_LM_HEAD = {
    "cls/predictions/transform/dense": "transform_dense",
    "cls/predictions/transform/LayerNorm": "transform_layer_norm",
    "cls/predictions/output_bias": "output_bias",
}

# The settings kbert's BertBackbone fixes rather than takes as arguments.
LAYER_NORM_EPSILON = 1e-12


class ConversionError(ValueError):
    """A checkpoint that cannot be converted exactly; the message names the tensor or setting."""


@dataclasses.dataclass(frozen=True)
class Slot:
    """One model variable and the canonical tensor it holds.

    `shape` is the canonical shape. The variable holds the same numbers reshaped (the heads
    of a projection get an axis of their own) or, with `transpose`, transposed (the original
    checkpoints store the next-sentence and classifier matrices as (classes, hidden)).
    """

    name: str
    variable: object
    group: str
    shape: tuple
    transpose: bool = False

    def to_variable(self, value):
        value = np.asarray(value, dtype=self.variable.dtype)
        return value.T if self.transpose else value.reshape(tuple(self.variable.shape))

    def from_variable(self):
        value = keras.ops.convert_to_numpy(self.variable)
        return value.T if self.transpose else value.reshape(self.shape)


@dataclasses.dataclass(frozen=True)
class SourceTensor:
    """A tensor read from a checkpoint, already in the canonical layout.

    Args:
        source_name: its name in the checkpoint, for messages.
        value: the numbers, in the canonical layout.
        layout: how the checkpoint stores it: "canonical", "transposed" (Hugging Face's
            (output, input) matrices) or "variable" (a Keras model with kbert's variable
            shapes).
        source_shape: its shape as stored.
    """

    source_name: str
    value: np.ndarray
    layout: str = "canonical"
    source_shape: tuple = None

    def expected_shape(self, slot):
        if self.layout == "transposed":
            return tuple(reversed(slot.shape))
        if self.layout == "variable":
            return tuple(slot.variable.shape)
        return tuple(slot.shape)

    def shape_as_stored(self):
        if self.source_shape is not None:
            return tuple(self.source_shape)
        shape = tuple(self.value.shape)
        return tuple(reversed(shape)) if self.layout == "transposed" else shape


def group_of(name):
    if name in HEAD_NAMES:
        return HEAD_NAMES[name]
    return ENCODER if name.startswith("bert/") else None


def groups_present(names):
    """The head groups (pooler, masked LM, next sentence, classifier) among canonical names."""
    return {HEAD_NAMES[name] for name in names if name in HEAD_NAMES}


# === Slots of a model ===


def _resolve(obj, attribute_path):
    for attribute in attribute_path.split("."):
        obj = getattr(obj, attribute)
    return obj


def _dense_slots(name, layer, group, input_axes=1):
    # A kernel of shape (d0, ..., dk, ...) is canonically (d0*...*d{input_axes-1}, rest).
    kernel_shape = tuple(layer.kernel.shape)
    return [
        Slot(
            f"{name}/kernel",
            layer.kernel,
            group,
            (math.prod(kernel_shape[:input_axes]), math.prod(kernel_shape[input_axes:])),
        ),
        Slot(f"{name}/bias", layer.bias, group, (math.prod(layer.bias.shape),)),
    ]


def _layer_norm_slots(name, layer, group):
    return [
        Slot(f"{name}/gamma", layer.gamma, group, tuple(layer.gamma.shape)),
        Slot(f"{name}/beta", layer.beta, group, tuple(layer.beta.shape)),
    ]


def _sublayer_slots(name, layer, group):
    if name.endswith("LayerNorm"):
        return _layer_norm_slots(name, layer, group)
    if hasattr(layer, "kernel"):
        input_axes = 2 if name.endswith("attention/output/dense") else 1
        return _dense_slots(name, layer, group, input_axes)
    return [Slot(name, layer, group, tuple(layer.shape))]  # a bare variable


def backbone_slots(backbone, block=KBERT_BLOCK):
    """The slots of a BERT backbone: kbert's, or keras-hub's with `block` naming its sub-layers."""

    def embedding(name, variable):
        return Slot(f"bert/embeddings/{name}", variable, ENCODER, tuple(variable.shape))

    slots = [
        embedding("word_embeddings", backbone.token_embedding.embeddings),
        embedding("position_embeddings", backbone.position_embedding.position_embeddings),
        embedding("token_type_embeddings", backbone.segment_embedding.embeddings),
        *_layer_norm_slots("bert/embeddings/LayerNorm", backbone.embeddings_layer_norm, ENCODER),
    ]
    for index, transformer_layer in enumerate(backbone.transformer_layers):
        for sublayer_name, attribute_path in block.items():
            slots += _sublayer_slots(
                f"bert/encoder/layer_{index}/{sublayer_name}",
                _resolve(transformer_layer, attribute_path),
                ENCODER,
            )
    slots += _dense_slots("bert/pooler/dense", backbone.pooled_dense, POOLER)
    return slots


def masked_lm_head_slots(head, attributes=KBERT_MASKED_LM_HEAD):
    slots = []
    for name, attribute_path in attributes.items():
        slots += _sublayer_slots(name, _resolve(head, attribute_path), MASKED_LM)
    return slots


def output_layer_slots(prefix, dense, group):
    """A (hidden -> classes) dense layer stored as (classes, hidden) weights plus a bias."""
    weights = "output_weights"
    bias = "output_bias"
    if prefix:
        weights, bias = f"{prefix}/{weights}", f"{prefix}/{bias}"
    return [
        Slot(weights, dense.kernel, group, tuple(reversed(dense.kernel.shape)), transpose=True),
        Slot(bias, dense.bias, group, tuple(dense.bias.shape)),
    ]


def model_slots(model):
    """The slots of a kbert BertBackbone, BertMaskedLM, BertClassifier or BertTextEmbedder."""
    from kbert.backbone import BertBackbone
    from kbert.classifier import BertClassifier
    from kbert.embedder import BertTextEmbedder
    from kbert.masked_lm import BertMaskedLM

    if isinstance(model, BertBackbone):
        return backbone_slots(model)
    if isinstance(model, BertMaskedLM):
        slots = backbone_slots(model.backbone) + masked_lm_head_slots(model.masked_lm_head)
        if model.next_sentence_head is not None:
            slots += output_layer_slots(
                "cls/seq_relationship", model.next_sentence_head, NEXT_SENTENCE
            )
        return slots
    if isinstance(model, BertClassifier):
        classifier_slots = output_layer_slots("", model.output_dense, CLASSIFIER)
        return backbone_slots(model.backbone) + classifier_slots
    if isinstance(model, BertTextEmbedder):
        # Pooling and normalisation have no weights: the embedder is its backbone's tensors.
        return backbone_slots(model.backbone)
    raise ConversionError(
        "Expected a kbert BertBackbone, BertMaskedLM, BertClassifier or BertTextEmbedder. "
        f"Received: {type(model).__name__}"
    )


def build_model(backbone_config, groups, num_classes=None, classifier_dropout=None):
    """Builds the kbert model that holds the heads in `groups`: masked LM (with or without
    next-sentence prediction), else a classifier, else the bare backbone."""
    from kbert.backbone import BertBackbone
    from kbert.classifier import BertClassifier
    from kbert.masked_lm import BertMaskedLM

    # Converted weights are float32; a dtype policy is chosen when the model is trained.
    backbone = BertBackbone(**backbone_config, dtype="float32")
    if MASKED_LM in groups:
        return BertMaskedLM(backbone, next_sentence_prediction=NEXT_SENTENCE in groups)
    if CLASSIFIER in groups:
        kwargs = {} if classifier_dropout is None else {"dropout": classifier_dropout}
        return BertClassifier(backbone, num_classes=num_classes, **kwargs)
    return backbone


# === Checking and copying ===


def _plural(count, word):
    return f"{count} {word}{'' if count == 1 else 's'}"


def _canonical_naming(slot):
    return slot.name, tuple(slot.shape)


def assign(slots, tensors, source, naming=_canonical_naming):
    """Copies checkpoint tensors into model variables after checking every name and shape.

    Args:
        slots: the model's slots (`model_slots`).
        tensors: canonical name -> `SourceTensor`.
        source: the checkpoint's path, for messages.
        naming: maps a slot to the name and shape its tensor would have in the checkpoint,
            for messages about missing tensors.

    Returns:
        Notes (one sentence each) about what the checkpoint had that the model does not use
        and what the model has that the checkpoint lacked (left freshly initialised).

    Raises:
        ConversionError: naming the first missing, unexpected or wrongly shaped tensor.
    """
    problems = []
    notes = []
    slot_names = {slot.name for slot in slots}
    for name, tensor in tensors.items():
        if name not in slot_names and group_of(name) in (None, ENCODER):
            problems.append(
                f"{source} has an unexpected tensor {tensor.source_name} with shape "
                f"{tensor.shape_as_stored()}: it is not part of a BERT model with this config"
            )
    missing_by_group = {}
    for slot in slots:
        tensor = tensors.get(slot.name)
        if tensor is None:
            missing_by_group.setdefault(slot.group, []).append(slot)
            continue
        actual = tuple(tensor.value.shape)
        if actual != tuple(slot.shape):
            problems.append(
                f"Tensor {tensor.source_name} in {source} has shape {tensor.shape_as_stored()}, "
                f"but the model expects {tensor.expected_shape(slot)}"
            )
    for slot in missing_by_group.get(ENCODER, []):
        name, shape = naming(slot)
        problems.append(f"{source} has no tensor {name}, which the model needs with shape {shape}")
    if problems:
        more = f" (and {_plural(len(problems) - 1, 'more problem')})" if len(problems) > 1 else ""
        raise ConversionError(problems[0] + more)

    for slot in slots:
        if slot.name in tensors:
            slot.variable.assign(slot.to_variable(tensors[slot.name].value))

    for group, missing in missing_by_group.items():
        notes.append(
            f"{source} has no {GROUP_DESCRIPTIONS[group]} "
            f"({_plural(len(missing), 'tensor')}, e.g. {naming(missing[0])[0]}): "
            "it keeps its fresh initialisation"
        )
    unused_by_group = {}
    for name in tensors:
        if name not in slot_names:
            unused_by_group.setdefault(group_of(name), []).append(tensors[name].source_name)
    for group, unused in unused_by_group.items():
        notes.append(
            f"The {GROUP_DESCRIPTIONS[group]} in {source} was not used "
            f"({_plural(len(unused), 'tensor')}: {', '.join(unused)})"
        )
    return notes


def log_notes(notes):
    for note in notes:
        logger.warning(note)


def variable_tensors(slots):
    """The slots' variables as checkpoint tensors, for copying one Keras model into another."""
    return {
        slot.name: SourceTensor(
            slot.variable.path, slot.from_variable(), "variable", tuple(slot.variable.shape)
        )
        for slot in slots
    }


def collect(slots):
    """Canonical name -> numpy array of every slot, for writing a checkpoint."""
    return {slot.name: slot.from_variable() for slot in slots}


def load_pretrained_weights(model, directory):
    """Loads the weights of the kbert model directory `directory` into `model`.

    The encoder must match; everything else is matched by name: the masked-LM head of a
    pretrained model is reported as not used when loaded into a classifier, and a head the
    directory lacks keeps its fresh initialisation. Both are logged and returned.

    Args:
        model: a kbert BertBackbone, BertMaskedLM or BertClassifier.
        directory: a kbert model directory (written by `kbert convert`, `pretrain`, ...).

    Returns:
        The notes about unused and freshly initialised tensors.

    Example:
    >>> classifier = kbert.BertClassifier(kbert.load("minilm").backbone, 2)  # doctest: +SKIP
    >>> load_pretrained_weights(classifier, "bert-base-pretrained")  # doctest: +SKIP
    """
    source = model_dir.load(directory)
    notes = assign(model_slots(model), variable_tensors(model_slots(source)), directory)
    log_notes(notes)
    return notes


# === Configs ===


def backbone_config(config, path):
    """BertBackbone arguments from a BERT JSON config (Hugging Face `config.json` or Google
    `bert_config.json`, which share their field names).

    Returns:
        `(backbone_config, notes)`.

    Raises:
        ConversionError: for a missing field or a setting kbert does not implement.
    """
    required = (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"
    )
    for field in required:
        if field not in config:
            raise ConversionError(f"{path} has no field {field!r}, which a BERT config needs")
    unsupported = {
        "model_type": (config.get("model_type", "bert"), "bert"),
        "hidden_act": (config.get("hidden_act", "gelu"), "gelu"),
        "position_embedding_type": (
            config.get("position_embedding_type") or "absolute",
            "absolute",
        ),
        "is_decoder": (bool(config.get("is_decoder", False)), False),
        "add_cross_attention": (bool(config.get("add_cross_attention", False)), False),
    }
    for field, (received, expected) in unsupported.items():
        if received != expected:
            raise ConversionError(
                f"{path} sets {field}={received!r}, but kbert implements only the original "
                f"BERT ({field}={expected!r})"
            )
    epsilon = float(config.get("layer_norm_eps", LAYER_NORM_EPSILON))
    if not math.isclose(epsilon, LAYER_NORM_EPSILON, rel_tol=1e-6):
        raise ConversionError(
            f"{path} sets layer_norm_eps={epsilon!r}, but kbert implements only the original "
            f"BERT (layer_norm_eps={LAYER_NORM_EPSILON})"
        )
    if config.get("tie_word_embeddings") is False:
        raise ConversionError(
            f"{path} sets tie_word_embeddings=false, but kbert's masked-LM head always shares "
            "the token embedding"
        )
    notes = []
    dropout = float(config.get("hidden_dropout_prob", 0.1))
    attention_dropout = float(config.get("attention_probs_dropout_prob", dropout))
    if attention_dropout != dropout:
        notes.append(
            f"{path} sets attention_probs_dropout_prob={attention_dropout} and "
            f"hidden_dropout_prob={dropout}; kbert uses one dropout rate, {dropout} "
            "(this matters only for training)"
        )
    kwargs = {
        "vocabulary_size": int(config["vocab_size"]),
        "num_layers": int(config["num_hidden_layers"]),
        "num_heads": int(config["num_attention_heads"]),
        "hidden_dim": int(config["hidden_size"]),
        "intermediate_dim": int(config["intermediate_size"]),
        "dropout": dropout,
        "max_sequence_length": int(config.get("max_position_embeddings", 512)),
        "num_segments": int(config.get("type_vocab_size", 2)),
    }
    if kwargs["hidden_dim"] % kwargs["num_heads"]:
        raise ConversionError(
            f"{path} sets hidden_size={kwargs['hidden_dim']}, which is not divisible by "
            f"num_attention_heads={kwargs['num_heads']}"
        )
    return kwargs, notes


def bert_json_config(backbone):
    """The original BERT JSON config (`bert_config.json`) of a kbert backbone."""
    return {
        "attention_probs_dropout_prob": backbone.dropout,
        "hidden_act": "gelu",
        "hidden_dropout_prob": backbone.dropout,
        "hidden_size": backbone.hidden_dim,
        "initializer_range": 0.02,
        "intermediate_size": backbone.intermediate_dim,
        "max_position_embeddings": backbone.max_sequence_length,
        "num_attention_heads": backbone.num_heads,
        "num_hidden_layers": backbone.num_layers,
        "type_vocab_size": backbone.num_segments,
        "vocab_size": backbone.vocabulary_size,
    }


# === Files, vocabularies and tokenizer settings ===


def read_json(path):
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        raise ConversionError(
            f"{path}, line {error.lineno}: invalid JSON ({error.msg})"
        ) from None


def read_vocabulary(path):
    from kbert.tokenizer import read_vocabulary

    return read_vocabulary(path)


def check_vocabulary(vocabulary, vocabulary_size, path):
    if len(vocabulary) > vocabulary_size:
        raise ConversionError(
            f"{path} has {len(vocabulary)} tokens, more than the model's vocabulary size "
            f"{vocabulary_size}"
        )


def is_uncased(vocabulary):
    """Whether a WordPiece vocabulary was built from lowercased text: no token other than the
    bracketed special tokens has an uppercase letter (cased vocabularies have "The", "A", ...)."""
    for token in vocabulary:
        if token.startswith("[") and token.endswith("]"):
            continue
        if token != token.lower():
            return False
    return True


def tokenizer_settings(lowercase, strip_accents=None):
    """kbert's tokenizer settings. As in BERT's BasicTokenizer, accents are stripped exactly
    when text is lowercased unless a checkpoint says otherwise."""
    lowercase = bool(lowercase)
    return {
        "lowercase": lowercase,
        "strip_accents": lowercase if strip_accents is None else bool(strip_accents),
    }


# === Results ===


@dataclasses.dataclass
class Conversion:
    """A converted checkpoint: the kbert model, its vocabulary and what was not carried over.

    Attributes:
        model: a kbert BertBackbone, BertMaskedLM or BertClassifier.
        vocabulary: the tokens in id order.
        tokenizer: `{"lowercase": ..., "strip_accents": ...}`.
        task: the task settings of a classifier (`label_names`), else `None`.
        notes: one sentence per thing not used or left freshly initialised.
    """

    model: object
    vocabulary: list
    tokenizer: dict
    task: dict = None
    notes: list = dataclasses.field(default_factory=list)

    def save(self, directory):
        """Writes a kbert model directory that `kbert.load` reads."""
        model_dir.save(
            self.model, directory, self.vocabulary, tokenizer=self.tokenizer, task=self.task
        )


def prepare_output(directory, overwrite):
    """Refuses to mix a conversion into an existing, non-empty directory unless asked to."""
    if os.path.isdir(directory) and os.listdir(directory) and not overwrite:
        raise FileExistsError(
            f"Output directory {directory} is not empty; choose another or pass overwrite=True"
        )
    os.makedirs(directory, exist_ok=True)


def read_kbert_model_dir(directory):
    """The model, vocabulary and tokenizer settings of a kbert model directory."""
    config = model_dir.read_config(directory)
    model = model_dir.load(directory)
    vocabulary = read_vocabulary(model_dir.vocabulary_path(directory))
    tokenizer = config.get("tokenizer") or {}
    settings = tokenizer_settings(
        tokenizer.get("lowercase", is_uncased(vocabulary)), tokenizer.get("strip_accents")
    )
    return model, vocabulary, settings, config.get("task")
