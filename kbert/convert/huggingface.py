"""Hugging Face BERT checkpoints: `from_huggingface` reads one, `to_huggingface` writes one.

A Hugging Face directory holds `config.json`, `vocab.txt` (or `tokenizer.json`),
`tokenizer_config.json` and `model.safetensors` (possibly sharded); `pytorch_model.bin` is
read only when asked for, because unpickling runs code. Its tensor names are the original
Google names with dots, `layer.N` for `layer_N`, `weight` for `kernel` (stored transposed,
as (output, input)) and for LayerNorm's `gamma`, and `bias` for its `beta`.
"""

import dataclasses
import os
import re

import numpy as np

from kbert import files
from kbert.convert import mapping

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
PYTORCH_FILE = "pytorch_model.bin"
VOCABULARY_FILE = "vocab.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_FILE = "tokenizer.json"
# A sentence-transformers folder: its module list, and the Transformer module's settings.
MODULES_FILE = "modules.json"
SENTENCE_BERT_CONFIG_FILE = "sentence_bert_config.json"
POOLING_CONFIG_FILE = "config.json"
# The legacy flags of a Pooling config, in sentence-transformers' order, and kbert's names.
_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}

# Canonical names whose Hugging Face names do not follow the general rule.
_SPECIAL_NAMES = {
    "cls/predictions/output_bias": "cls.predictions.bias",
    "cls/seq_relationship/output_weights": "cls.seq_relationship.weight",
    "cls/seq_relationship/output_bias": "cls.seq_relationship.bias",
    "output_weights": "classifier.weight",
    "output_bias": "classifier.bias",
}
# Prefixes of the encoder's tensors, which BertModel saves without the `bert.` prefix that
# the models with heads (BertForMaskedLM, BertForPreTraining, ...) add.
_ENCODER_PREFIXES = ("embeddings.", "encoder.", "pooler.")
# A constant arange buffer that older versions saved with the weights.
_BUFFERS = ("bert.embeddings.position_ids",)
# The masked-LM decoder is tied to the token embedding and the output bias; checkpoints
# may carry copies, which must equal the originals.
_TIED = {
    "cls.predictions.decoder.weight": "bert/embeddings/word_embeddings",
    "cls.predictions.decoder.bias": "cls/predictions/output_bias",
}
_SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}


def huggingface_name(name):
    """The Hugging Face name of a canonical tensor, and whether it is stored transposed.

    Example:
    >>> huggingface_name("bert/encoder/layer_0/attention/self/query/kernel")
    ('bert.encoder.layer.0.attention.self.query.weight', True)
    """
    if name in _SPECIAL_NAMES:
        return _SPECIAL_NAMES[name], False
    parts = [re.sub(r"^layer_(\d+)$", r"layer.\1", part) for part in name.split("/")]
    transposed = parts[-1] == "kernel"
    if parts[-1] in ("kernel", "gamma"):
        parts[-1] = "weight"
    elif parts[-1] == "beta":
        parts[-1] = "bias"
    elif parts[-1].endswith("_embeddings"):
        parts.append("weight")
    return ".".join(parts), transposed


def _naming(slot):
    name, transposed = huggingface_name(slot.name)
    return name, tuple(reversed(slot.shape)) if transposed else tuple(slot.shape)


def _normalized_key(key):
    if key.startswith(_ENCODER_PREFIXES):
        key = "bert." + key
    # Checkpoints converted from TensorFlow by older versions kept gamma and beta.
    key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
    return re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)


# === Reading ===


@dataclasses.dataclass(frozen=True)
class SentenceTransformerModules:
    """What a sentence-transformers folder's `modules.json` describes.

    Attributes:
        transformer_directory: the folder of the BERT (the Transformer module's path).
        pooling: "mean", "cls" or "max".
        normalize: whether a Normalize module follows the pooling.
        max_sequence_length: the Transformer module's `max_seq_length` (else its tokenizer's
            `model_max_length`), or `None`.
        lowercase: whether the Transformer module lowercases text before its tokenizer.
    """

    transformer_directory: str
    pooling: str
    normalize: bool
    max_sequence_length: int = None
    lowercase: bool = False


def _module_kind(module, modules_path):
    kind = module.get("type") if isinstance(module, dict) else None
    if not isinstance(kind, str):
        raise mapping.ConversionError(f"{modules_path} has a module without a \"type\": {module!r}")
    return kind.rsplit(".", 1)[-1]


def _read_pooling(pooling_directory):
    path = os.path.join(pooling_directory, POOLING_CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The Pooling module's config is missing: {path}")
    config = mapping.read_json(path)
    if "pooling_mode" in config:
        modes = config["pooling_mode"]
        modes = [modes] if isinstance(modes, str) else list(modes)
    else:
        # sentence-transformers pools by mean where no flag is set.
        modes = [mode for flag, mode in _POOLING_FLAGS.items() if config.get(flag)] or ["mean"]
    if len(modes) != 1 or modes[0] not in ("mean", "cls", "max"):
        raise mapping.ConversionError(
            f"{path} asks for pooling {'+'.join(map(str, modes))}; kbert converts only one of "
            "mean, cls or max"
        )
    return modes[0]


def read_sentence_transformer_modules(directory):
    """Reads `modules.json` of a sentence-transformers folder, or returns `None` without one.

    Only Transformer, Pooling (mean, cls or max) and Normalize modules are converted; any
    other module (Dense, LayerNorm, ...) would change the embeddings, so it is refused.
    """
    modules_path = os.path.join(directory, MODULES_FILE)
    if not os.path.isfile(modules_path):
        return None
    modules = mapping.read_json(modules_path)
    if not isinstance(modules, list):
        raise mapping.ConversionError(f"{modules_path} is not a list of modules")
    kinds = [_module_kind(module, modules_path) for module in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or any(kind != "Normalize" for kind in kinds[2:]):
        raise mapping.ConversionError(
            f"{modules_path} lists the modules {', '.join(kinds)}; kbert converts Transformer, "
            "Pooling and an optional Normalize, in that order"
        )
    transformer_directory = os.path.join(directory, modules[0].get("path") or "")
    pooling = _read_pooling(os.path.join(directory, modules[1].get("path") or ""))
    sentence_bert_config = {}
    sentence_bert_config_path = os.path.join(transformer_directory, SENTENCE_BERT_CONFIG_FILE)
    if os.path.isfile(sentence_bert_config_path):
        sentence_bert_config = mapping.read_json(sentence_bert_config_path)
    max_sequence_length = sentence_bert_config.get("max_seq_length")
    tokenizer_config_path = os.path.join(transformer_directory, TOKENIZER_CONFIG_FILE)
    if max_sequence_length is None and os.path.isfile(tokenizer_config_path):
        # Newer sentence-transformers versions keep max_seq_length in the tokenizer's config.
        max_sequence_length = mapping.read_json(tokenizer_config_path).get("model_max_length")
    return SentenceTransformerModules(
        transformer_directory=transformer_directory,
        pooling=pooling,
        normalize="Normalize" in kinds,
        max_sequence_length=max_sequence_length,
        lowercase=bool(sentence_bert_config.get("do_lower_case")),
    )


def _read_safetensors(path):
    from safetensors import safe_open

    tensors = {}
    with safe_open(path, framework="np") as file:
        keys = list(file.keys())
        needs_torch = [key for key in keys if file.get_slice(key).get_dtype() == "BF16"]
        for key in keys:
            if key not in needs_torch:
                tensors[key] = file.get_tensor(key)
    if needs_torch:
        # numpy has no bfloat16; widening to float32 is exact.
        try:
            import torch  # noqa: F401
        except ImportError:
            raise mapping.ConversionError(
                f"{path} stores bfloat16 tensors, which need PyTorch to read (pip install torch)"
            ) from None
        with safe_open(path, framework="pt") as file:
            for key in needs_torch:
                tensors[key] = file.get_tensor(key).float().numpy()
    return tensors


def _read_weights(directory, allow_pytorch_bin):
    """Tensor name -> numpy array, and the path to name in messages."""
    safetensors_path = os.path.join(directory, SAFETENSORS_FILE)
    index_path = os.path.join(directory, SAFETENSORS_INDEX_FILE)
    pytorch_path = os.path.join(directory, PYTORCH_FILE)
    if os.path.isfile(safetensors_path):
        return _read_safetensors(safetensors_path), safetensors_path
    if os.path.isfile(index_path):
        weight_map = mapping.read_json(index_path).get("weight_map", {})
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(_read_safetensors(os.path.join(directory, shard)))
        return tensors, index_path
    if os.path.isfile(pytorch_path):
        if not allow_pytorch_bin:
            raise mapping.ConversionError(
                f"{directory} has only {PYTORCH_FILE}, a pickle; pass allow_pytorch_bin=True "
                "to read it with torch.load(weights_only=True)"
            )
        import pickle

        import torch

        # torch's own message suggests weights_only=False, which would run the pickle's code.
        try:
            state_dict = torch.load(pytorch_path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise mapping.ConversionError(
                f"{pytorch_path} holds Python objects besides tensors (or is not a PyTorch "
                "checkpoint), which kbert will not unpickle"
            ) from None
        except (RuntimeError, EOFError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else "truncated"
            raise mapping.ConversionError(
                f"{pytorch_path} is not a readable PyTorch checkpoint: {reason}"
            ) from None
        if not isinstance(state_dict, dict) or not all(
            isinstance(value, torch.Tensor) for value in state_dict.values()
        ):
            raise mapping.ConversionError(
                f"{pytorch_path} does not hold a dict of tensors (a state dict)"
            )
        return {
            key: value.float().numpy() if value.is_floating_point() else value.numpy()
            for key, value in state_dict.items()
        }, pytorch_path
    raise FileNotFoundError(
        f"{directory} has no {SAFETENSORS_FILE}, {SAFETENSORS_INDEX_FILE} or {PYTORCH_FILE}"
    )


def _read_vocabulary(directory):
    vocabulary_path = os.path.join(directory, VOCABULARY_FILE)
    if os.path.isfile(vocabulary_path):
        return mapping.read_vocabulary(vocabulary_path), vocabulary_path
    tokenizer_path = os.path.join(directory, TOKENIZER_FILE)
    if os.path.isfile(tokenizer_path):
        model = mapping.read_json(tokenizer_path).get("model") or {}
        if model.get("type") == "WordPiece" and model.get("vocab"):
            token_ids = model["vocab"]
            return sorted(token_ids, key=token_ids.get), tokenizer_path
    raise FileNotFoundError(
        f"{directory} has no {VOCABULARY_FILE} (nor a WordPiece {TOKENIZER_FILE})"
    )


def _tokenizer_settings(directory, vocabulary, lowercase):
    if lowercase is not None:
        return mapping.tokenizer_settings(lowercase)
    tokenizer_config_path = os.path.join(directory, TOKENIZER_CONFIG_FILE)
    if os.path.isfile(tokenizer_config_path):
        tokenizer_config = mapping.read_json(tokenizer_config_path)
        if "do_lower_case" in tokenizer_config:
            return mapping.tokenizer_settings(
                tokenizer_config["do_lower_case"], tokenizer_config.get("strip_accents")
            )
    tokenizer_path = os.path.join(directory, TOKENIZER_FILE)
    if os.path.isfile(tokenizer_path):
        normalizer = mapping.read_json(tokenizer_path).get("normalizer") or {}
        if normalizer.get("type") == "BertNormalizer":
            return mapping.tokenizer_settings(
                normalizer.get("lowercase", True), normalizer.get("strip_accents")
            )
    return mapping.tokenizer_settings(mapping.is_uncased(vocabulary))


def _check_tied(key, value, tensors, path):
    original = tensors.get(_TIED[key])
    if original is None:
        return False
    if value.shape != original.value.shape or not np.array_equal(value, original.value):
        raise mapping.ConversionError(
            f"Tensor {key} in {path} (shape {value.shape}) differs from {original.source_name} "
            f"(shape {original.value.shape}), but kbert's masked-LM head always shares them"
        )
    return True


def _source_tensors(weights, slots, weights_path):
    """The checkpoint's tensors by kbert name (dense kernels transposed), tied ones checked."""
    names = {}
    for name in [slot.name for slot in slots] + list(mapping.HEAD_NAMES):
        names[huggingface_name(name)[0]] = name
    tensors = {}
    tied = {}
    for key, (original_key, value) in weights.items():
        if key in _TIED:
            tied[key] = value
            continue
        if key not in names:
            tensors[original_key] = mapping.SourceTensor(original_key, value)
            continue
        name = names[key]
        transposed = huggingface_name(name)[1]
        if transposed and value.ndim != 2:
            raise mapping.ConversionError(
                f"Tensor {original_key} in {weights_path} has shape {value.shape}, but a dense "
                "kernel has two dimensions"
            )
        if transposed:
            tensors[name] = mapping.SourceTensor(original_key, value.T, "transposed")
        else:
            tensors[name] = mapping.SourceTensor(original_key, value)
    for key, value in tied.items():
        checked = _check_tied(key, value, tensors, weights_path)
        if not checked and key == "cls.predictions.decoder.bias":
            # Some versions saved the output bias only as the decoder's.
            tensors["cls/predictions/output_bias"] = mapping.SourceTensor(key, value)
    return tensors


def read_huggingface(path, *, allow_pytorch_bin=False, lowercase=None):
    """Reads a Hugging Face BERT directory into a kbert model.

    A sentence-transformers folder (one with `modules.json`) becomes a `BertTextEmbedder`
    with its pooling and normalisation, and its `max_seq_length` as the tokenizer's
    `sequence_length`.

    Args:
        path: the directory (`config.json`, `vocab.txt`, `model.safetensors`, ...).
        allow_pytorch_bin: read `pytorch_model.bin` when there is no safetensors file.
        lowercase: override the tokenizer's casing; `None` takes it from
            `tokenizer_config.json` or `tokenizer.json`, else from the vocabulary.

    Returns:
        A `kbert.convert.Conversion`.
    """
    directory = os.fspath(path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Hugging Face model directory not found: {directory}")
    sentence_transformer = read_sentence_transformer_modules(directory)
    if sentence_transformer is not None:
        directory = sentence_transformer.transformer_directory
    config_path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"{directory} is not a Hugging Face model directory: it has no {CONFIG_FILE}"
        )
    config = mapping.read_json(config_path)
    backbone_config, notes = mapping.backbone_config(config, config_path)
    weights, weights_path = _read_weights(directory, allow_pytorch_bin)
    weights = {
        _normalized_key(key): (key, value)
        for key, value in weights.items()
        if _normalized_key(key) not in _BUFFERS
    }

    groups = set()
    for key in weights:
        for prefix, group in (
            ("cls.predictions.", mapping.MASKED_LM),
            ("cls.seq_relationship.", mapping.NEXT_SENTENCE),
            ("classifier.", mapping.CLASSIFIER),
        ):
            if key.startswith(prefix):
                groups.add(group)
    num_classes = None
    if mapping.CLASSIFIER in groups and "classifier.weight" in weights:
        num_classes = int(weights["classifier.weight"][1].shape[0])
    model = mapping.build_model(
        backbone_config, groups, num_classes, classifier_dropout=config.get("classifier_dropout")
    )
    slots = mapping.model_slots(model)

    notes += mapping.assign(slots, _source_tensors(weights, slots, weights_path), weights_path, naming=_naming)
    vocabulary, vocabulary_path = _read_vocabulary(directory)
    mapping.check_vocabulary(vocabulary, backbone_config["vocabulary_size"], vocabulary_path)
    task = None
    if mapping.CLASSIFIER in groups:
        id2label = config.get("id2label") or {}
        label_names = [id2label.get(str(index), str(index)) for index in range(num_classes)]
        task = {"label_names": label_names}
    tokenizer = _tokenizer_settings(directory, vocabulary, lowercase)
    if sentence_transformer is not None:
        model, sequence_length = _embedder(model, sentence_transformer, notes, weights_path)
        if sentence_transformer.lowercase and lowercase is None:
            # sentence-transformers lowercases before the tokenizer, leaving accents as they are.
            tokenizer = {**tokenizer, "lowercase": True}
        if sequence_length is not None:
            tokenizer = {**tokenizer, "sequence_length": sequence_length}
        task = None
    mapping.log_notes(notes)
    return mapping.Conversion(
        model=model,
        vocabulary=vocabulary,
        tokenizer=tokenizer,
        task=task,
        notes=notes,
    )


def _embedder(model, sentence_transformer, notes, weights_path):
    """The `BertTextEmbedder` of a sentence-transformers folder, and its sequence length."""
    from kbert.embedder import BertTextEmbedder

    backbone = getattr(model, "backbone", model)
    if backbone is not model:
        notes.append(
            f"The {type(model).__name__} head in {weights_path} was not used: "
            "sentence-transformers pools the encoder's hidden states"
        )
    embedder = BertTextEmbedder(
        backbone, pooling=sentence_transformer.pooling, normalize=sentence_transformer.normalize
    )
    sequence_length = sentence_transformer.max_sequence_length
    if isinstance(sequence_length, (int, float)) and sequence_length >= 3:
        # Past the position table no model can read, whatever its tokenizer claims.
        sequence_length = min(int(sequence_length), backbone.max_sequence_length)
    else:
        sequence_length = None
    return embedder, sequence_length


def from_huggingface(path, output, *, allow_pytorch_bin=False, lowercase=None, overwrite=False):
    """Converts a Hugging Face BERT directory into the kbert model directory `output`.

    The encoder and pooler become a `BertBackbone`; a masked-LM head (`cls.predictions.*`,
    with `cls.seq_relationship.*` for next-sentence prediction) makes it a `BertMaskedLM`,
    a `classifier.*` head a `BertClassifier`. A sentence-transformers folder (with
    `modules.json`) becomes a `BertTextEmbedder`.

    Example:
    >>> conversion = from_huggingface("all-MiniLM-L6-v2", "minilm")  # doctest: +SKIP
    >>> kbert.load("minilm")  # doctest: +SKIP
    """
    conversion = read_huggingface(path, allow_pytorch_bin=allow_pytorch_bin, lowercase=lowercase)
    mapping.prepare_output(output, overwrite)
    conversion.save(output)
    return conversion


# === Writing ===


def _architecture(model):
    from kbert.classifier import BertClassifier
    from kbert.masked_lm import BertMaskedLM

    if isinstance(model, BertMaskedLM):
        return "BertForPreTraining" if model.next_sentence_prediction else "BertForMaskedLM"
    if isinstance(model, BertClassifier):
        return "BertForSequenceClassification"
    return "BertModel"


def to_huggingface(model_directory, output, *, overwrite=False):
    """Writes the kbert model directory `model_directory` as a Hugging Face BERT directory.

    A `BertBackbone` becomes a `BertModel`, a `BertMaskedLM` a `BertForMaskedLM` (or
    `BertForPreTraining` with next-sentence prediction), a `BertClassifier` a
    `BertForSequenceClassification`; `transformers` loads it with `from_pretrained`.
    """
    from safetensors.numpy import save_file

    model, vocabulary, tokenizer, task = mapping.read_kbert_model_dir(model_directory)
    architecture = _architecture(model)
    backbone = getattr(model, "backbone", model)
    tensors = {}
    for name, value in mapping.collect(mapping.model_slots(model)).items():
        key, transposed = huggingface_name(name)
        if architecture == "BertModel":
            key = key.removeprefix("bert.")
        tensors[key] = np.ascontiguousarray(value.T if transposed else value, dtype="float32")

    config = {
        "architectures": [architecture],
        "model_type": "bert",
        **mapping.bert_json_config(backbone),
        "layer_norm_eps": mapping.LAYER_NORM_EPSILON,
        "position_embedding_type": "absolute",
        "pad_token_id": vocabulary.index("[PAD]") if "[PAD]" in vocabulary else 0,
        "tie_word_embeddings": True,
    }
    if architecture == "BertForSequenceClassification":
        label_names = (task or {}).get("label_names") or [
            f"LABEL_{index}" for index in range(model.num_classes)
        ]
        config["id2label"] = {str(index): label for index, label in enumerate(label_names)}
        config["label2id"] = {label: index for index, label in enumerate(label_names)}
        config["classifier_dropout"] = model.dropout
        if model.num_classes == 1:
            config["problem_type"] = "regression"
    tokenizer_config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": tokenizer["lowercase"],
        "strip_accents": tokenizer["strip_accents"],
        "model_max_length": backbone.max_sequence_length,
        **_SPECIAL_TOKENS,
    }

    mapping.prepare_output(output, overwrite)
    with files.atomic_path(os.path.join(output, SAFETENSORS_FILE)) as temporary_path:
        save_file(tensors, temporary_path, metadata={"format": "pt"})
    for file_name, value in ((CONFIG_FILE, config), (TOKENIZER_CONFIG_FILE, tokenizer_config)):
        files.write_json(os.path.join(output, file_name), value)
    files.write_text(
        os.path.join(output, VOCABULARY_FILE), "".join(f"{token}\n" for token in vocabulary)
    )
    return output
