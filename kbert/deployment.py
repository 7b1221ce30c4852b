"""What a TensorFlow Serving deployment needs beside the SavedModel: warm-up requests, the
model server's configuration files and the commands that start it.

- `assets.extra/tf_serving_warmup_requests` in each version: a TFRecord of `PredictionLog`s
  (tensorflow-serving-api's protos) that the server replays when it loads the version,
  before it serves, so the first user request does not pay for graph initialisation.
- `models.config` beside the base directories (a `ModelServerConfig` text proto, one entry
  per model) and `batching_parameters.txt` (a `BatchingParameters` text proto for CPU
  serving), for `--model_config_file` and `--batching_parameters_file`.
"""

import os

from kbert import files

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MODEL_CONFIG_FILE = "models.config"
BATCHING_PARAMETERS_FILE = "batching_parameters.txt"
# Where the official image expects its models; the config's base paths are written for it.
DEFAULT_SERVING_ROOT = "/models"
# The newest release kbert's exports are tested on; every image from 2.12 on serves them.
DOCKER_IMAGE = "tensorflow/serving:2.20.0"
# TensorFlow's oneDNN kernels, which the server is built with but turns on by default only
# on CPUs with AVX-512: kbert's exports serve the same numbers with them, faster.
ONEDNN = "TF_ENABLE_ONEDNN_OPTS=1"
# Words per warm-up text: a short query, a sentence, and as many as the export reads.
WARMUP_WORD_COUNTS = (4, 24)
WARMUP_BATCH_SIZES = (1, 8)


def warmup_texts(vocabulary, sequence_length):
    """Deterministic texts of realistic lengths built from the vocabulary's whole words."""
    words = [
        token for token in vocabulary if token.isalpha() and not token.startswith("[")
    ] or ["a"]
    # Each word is one token, so the longest text fills the sequence with [CLS] and [SEP].
    word_counts = sorted({min(count, sequence_length - 2) for count in WARMUP_WORD_COUNTS + (sequence_length,)})
    return [
        " ".join(words[(index * 7) % len(words)] for index in range(num_words))
        for num_words in word_counts
    ]


def write_warmup_requests(version_dir, model_name, signature_defs, vocabulary, sequence_length):
    """Writes the warm-up file: each signature with each text length at each batch size.

    Args:
        version_dir: the SavedModel directory (its `assets.extra/` gets the file).
        model_name: the model's name in the server (its base directory's name).
        signature_defs: `{name: SignatureDef}` of the SavedModel.
        vocabulary: the model's tokens, for texts and token ids the model knows.
        sequence_length: the export's sequence length.

    Returns:
        The number of requests written.
    """
    import tensorflow as tf

    logs = []
    for signature_name, signature_def in sorted(signature_defs.items()):
        for text in warmup_texts(vocabulary, sequence_length):
            for batch_size in WARMUP_BATCH_SIZES:
                logs.append(
                    _warmup_log(model_name, signature_name, signature_def, [text] * batch_size, vocabulary)
                )
    path = os.path.join(version_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return len(logs)


def _warmup_log(model_name, signature_name, signature_def, texts, vocabulary):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    log = prediction_log_pb2.PredictionLog()
    method_name = signature_def.method_name
    if method_name in (tf.saved_model.CLASSIFY_METHOD_NAME, tf.saved_model.REGRESS_METHOD_NAME):
        if method_name == tf.saved_model.CLASSIFY_METHOD_NAME:
            request = log.classify_log.request
        else:
            request = log.regress_log.request
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature_name
        for text in texts:
            # A single-text model's parser reads `text` and ignores `text_pair`.
            features = request.input.example_list.examples.add().features.feature
            for name in ("text", "text_pair"):
                features[name].bytes_list.value.append(text.encode("utf-8"))
        return log

    request = log.predict_log.request
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    input_names = set(signature_def.inputs)
    if input_names <= {"text", "text_pair"}:
        if "mask_positions" in signature_def.outputs:  # a masked LM fills in [MASK]s
            texts = [_with_masks(text) for text in texts]
        for name in input_names:
            request.inputs[name].CopyFrom(tf.make_tensor_proto(texts, dtype=tf.string))
    else:
        for name, value in _token_id_inputs(texts, vocabulary, input_names).items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value, dtype=tf.int32))
    return log


def _with_masks(text):
    """The text with its second word, and for longer texts its last, as `[MASK]`."""
    words = text.split()
    words[min(1, len(words) - 1)] = "[MASK]"
    if len(words) > 4:
        words[-1] = "[MASK]"
    return " ".join(words)


def _token_id_inputs(texts, vocabulary, input_names):
    """`[CLS] words [SEP]` ids of whole-word tokens, one row per text (no padding needed)."""
    ids = {token: index for index, token in enumerate(vocabulary)}
    rows = [
        [ids["[CLS]"]] + [ids.get(word, ids["[UNK]"]) for word in text.split()] + [ids["[SEP]"]]
        for text in texts
    ]
    inputs = {
        "token_ids": rows,
        "segment_ids": [[0] * len(row) for row in rows],
        "padding_mask": [[1] * len(row) for row in rows],
    }
    return {name: inputs[name] for name in input_names}


def read_warmup_requests(version_dir):
    """Returns the `PredictionLog`s of a version's warm-up file, in order."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(version_dir, WARMUP_FILE)
    return [
        prediction_log_pb2.PredictionLog.FromString(record.numpy())
        for record in tf.data.TFRecordDataset(path)
    ]


def update_model_config(base_dir, keep_versions=1, serving_root=DEFAULT_SERVING_ROOT):
    """Adds or updates the model of `base_dir` in `models.config` beside it.

    Other models' entries are kept as they are. The file is rewritten atomically (a
    temporary file renamed over it) under a lock, so concurrent exports of different models
    both land and a server polling the file never reads half of it.

    Args:
        base_dir: the model's base directory; its name is the model's name.
        keep_versions: how many of the latest versions the server serves at once.
        serving_root: where the server sees the directory holding `base_dir`.

    Returns:
        The path of `models.config`.
    """
    from google.protobuf import text_format

    check_keep_versions(keep_versions)
    base_dir = os.path.abspath(base_dir)
    parent, name = os.path.split(base_dir.rstrip(os.sep))
    path = os.path.join(parent, MODEL_CONFIG_FILE)
    with files.locked(os.path.join(parent, f".{MODEL_CONFIG_FILE}.lock")):
        config = read_model_config(base_dir)
        entries = config.model_config_list.config
        entry = next((entry for entry in entries if entry.name == name), None) or entries.add()
        entry.name = name
        entry.base_path = f"{serving_root.rstrip('/')}/{name}"
        entry.model_platform = "tensorflow"
        entry.model_version_policy.latest.num_versions = keep_versions
        files.write_text(path, text_format.MessageToString(config))
    return path


def check_keep_versions(keep_versions):
    if not isinstance(keep_versions, int) or isinstance(keep_versions, bool) or keep_versions < 1:
        raise ValueError(
            f"Expected keep_versions to be a positive integer. Received: keep_versions={keep_versions!r}"
        )


def read_model_config(base_dir):
    """Returns the `ModelServerConfig` in `models.config` beside `base_dir` (empty if none)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = os.path.join(os.path.dirname(os.path.abspath(base_dir).rstrip(os.sep)), MODEL_CONFIG_FILE)
    config = model_server_config_pb2.ModelServerConfig()
    if os.path.exists(path):
        with open(path, encoding="utf-8") as file:
            try:
                text_format.Parse(file.read(), config)
            except text_format.ParseError as error:
                raise ValueError(f"{path} is not a ModelServerConfig text proto: {error}") from None
    return config


def batching_parameters(num_batch_threads=None):
    """`BatchingParameters` text for CPU serving.

    One batch thread per core keeps every core busy with one batch; a 2 ms timeout bounds
    what a lone request waits for company; batches of up to 64 texts are where the served
    rate stops rising on CPUs; variable-length inputs (`token_ids` of requests of different
    lengths) are padded when batched together.
    """
    num_batch_threads = num_batch_threads or os.cpu_count() or 1
    return (
        "max_batch_size { value: 64 }\n"
        "batch_timeout_micros { value: 2000 }\n"
        "max_enqueued_batches { value: 100 }\n"
        f"num_batch_threads {{ value: {num_batch_threads} }}\n"
        "pad_variable_length_inputs: true\n"
    )


def write_batching_parameters(directory, num_batch_threads=None):
    """Writes `batching_parameters.txt` in `directory` unless one is there (users tune it)."""
    path = os.path.join(directory, BATCHING_PARAMETERS_FILE)
    if not os.path.exists(path):
        files.write_text(path, batching_parameters(num_batch_threads))
    return path


def server_commands(base_dir, serving_root=DEFAULT_SERVING_ROOT):
    """The commands that serve every model of `models.config`, in Docker and natively."""
    parent = os.path.dirname(os.path.abspath(base_dir).rstrip(os.sep))
    root = serving_root.rstrip("/")
    flags = (
        f"--model_config_file={root}/{MODEL_CONFIG_FILE} --enable_batching "
        f"--batching_parameters_file={root}/{BATCHING_PARAMETERS_FILE}"
    )
    return [
        f"docker run -p 8500:8500 -p 8501:8501 -e {ONEDNN} -v {parent}:{root} {DOCKER_IMAGE} {flags}",
        f"{ONEDNN} tensorflow_model_server --port=8500 --rest_api_port=8501 {flags}",
    ]
