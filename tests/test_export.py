"""Tests of `kbert.export`: SavedModels for TensorFlow Serving.

The central tests serve each export the way TensorFlow Serving does: a fresh Python process
that imports only tensorflow and tensorflow_text loads it with the TF1 session API, reads the
SignatureDefs and runs them by the tensor names they list. Its outputs must equal the Keras
model's on the same texts. The models are tiny (hidden 16, 2 layers) with weights spread wide
enough that different texts get clearly different probabilities, so equality means something.
"""

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import kbert
from kbert import model_dir as model_directory
from kbert.export import check_serving_ops, read_saved_model, serving_ops, versions
from conftest import tiny_backbone

SEQUENCE_LENGTH = 16
LABEL_NAMES = ["negative", "neutral", "positive"]
WORDS = "the a cat dog sat on mat good bad film movie is was not very and".split()
VOCABULARY = list(
    dict.fromkeys(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + WORDS
        + list("abcdefghijklmnopqrstuvwxyz")
        + [f"##{letter}" for letter in "abcdefghijklmnopqrstuvwxyz"]
        + list("!.,?'")
        + list("中文字测试")
        + ["ש", "##ל", "##ו", "##ם"]
    )
)
ORDINARY_TEXTS = [
    "the cat sat on the mat",
    "a very good film",
    "not a bad movie",
    "The DOG was bad!",
    "film",
    "is it good?",
]
BAD_TEXTS = {
    "empty": b"",
    "whitespace only": " \t\n\u3000\u00a0 ".encode(),
    "100,000 characters": ("the cat sat on the mat " * 4348)[:100_000].encode(),
    "invalid UTF-8": b"good \xff\xfe film \xc3\x28 \xed\xa0\x80 end \xe2\x82",
    "NUL bytes": b"the\x00cat\x00\x00sat",
    "emoji": "good 👍🏽 film 🎬🍿 👨‍👩‍👧".encode(),
    "combining marks": "cafe\u0301 n\u0303o Z\u0351\u0352\u0353\u0354\u0355a\u0300\u0301\u0302".encode(),
    "CJK": "中文字符测试，好电影。".encode(),
    "right-to-left": "שלום עולם مرحبا بالعالم \u202eevil\u202c".encode(),
}
# Served in a process that imports only what TF Serving's C++ server has: TensorFlow and the
# TF Text op library. Inputs arrive base64-encoded, since they include bytes that are not UTF-8.
SERVING_PROCESS = r"""
import base64, json, sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the TF Text ops, as the model server links them)

leaked = sorted(name for name in sys.modules if name.split(".")[0] in ("kbert", "keras_hub"))
assert not leaked, f"the serving process imported {leaked}"
export_dir, requests = sys.argv[1], json.loads(sys.stdin.read())


def encode(value):
    if value.dtype == object:
        return np.vectorize(lambda item: item.decode("utf-8"), otypes=[object])(value).tolist()
    return value.tolist()


responses = []
with tf.compat.v1.Session(graph=tf.Graph()) as session:
    meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
    for request in requests:
        signature = meta_graph.signature_def[request["signature"]]
        feeds = {}
        for name, value in request["inputs"].items():
            if isinstance(value, dict):
                value = np.array([base64.b64decode(item) for item in value["b64"]], dtype=object)
            else:
                value = np.array(value, dtype=np.int32)
            feeds[signature.inputs[name].name] = value
        fetches = {name: info.name for name, info in signature.outputs.items()}
        try:
            outputs = session.run(fetches, feeds)
        except tf.errors.InvalidArgumentError as error:  # what TF Serving answers with a 400
            responses.append({"error": "InvalidArgument", "message": error.message[:500]})
            continue
        responses.append(
            {
                "method_name": signature.method_name,
                "outputs": {name: encode(value) for name, value in outputs.items()},
                "shapes": {name: list(value.shape) for name, value in outputs.items()},
            }
        )
print(json.dumps(responses))
"""


def write_model_dir(directory, kind="classifier", text_pair=False, num_classes=3, seed=0):
    """Writes a tiny kbert model directory with widely spread weights; returns the model."""
    keras.utils.set_random_seed(seed)
    backbone = tiny_backbone(len(VOCABULARY))
    if kind == "classifier":
        model = kbert.BertClassifier(backbone, num_classes=num_classes)
        columns = ["sentence1", "sentence2"] if text_pair else ["sentence"]
        label_names = LABEL_NAMES[:num_classes] if num_classes > 1 else None
        task = {"label_names": label_names, "text_columns": columns}
    elif kind == "embedder":
        model = kbert.BertTextEmbedder(backbone, pooling="mean", normalize=True)
        task = {"name": "embedding"}
    else:
        model = kbert.BertMaskedLM(backbone)
        task = None
    # BERT's initialisation (stddev 0.02) gives every text nearly the same output.
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if not variable.path.endswith(("gamma", "beta")):  # LayerNorms stay the identity
            variable.assign(rng.normal(0.0, 0.3, variable.shape).astype("float32"))
    model_directory.save(
        model,
        directory,
        VOCABULARY,
        tokenizer={"lowercase": True, "sequence_length": SEQUENCE_LENGTH},
        task=task,
    )
    return model


# Every kind of model kbert exports, as `write_model_dir` options.
MODEL_KINDS = {
    "classifier": dict(kind="classifier"),
    "pair classifier": dict(kind="classifier", text_pair=True, num_classes=2, seed=1),
    "regression": dict(kind="classifier", num_classes=1, seed=3),
    "masked LM": dict(kind="masked_lm", seed=2),
    "embedder": dict(kind="embedder", seed=4),
}


def export_every_kind(root, **export_options):
    """Writes and exports a tiny model of each kind under `root`.

    Returns:
        `{kind: {"model", "model_dir", "export"}}`, the Keras model, its model directory
        and its version directory.
    """
    exported = {}
    for name, options in MODEL_KINDS.items():
        model_dir = root / name.replace(" ", "_")
        model = write_model_dir(model_dir, **options)
        export_dir = kbert.export(model_dir, root / "saved_models" / model_dir.name, **export_options)
        exported[name] = {"model": model, "model_dir": model_dir, "export": export_dir}
    return exported


def reference_inputs(model_dir, texts, text_pairs=None):
    """The model inputs kbert's own preprocessing gives, as NumPy arrays."""
    import tensorflow as tf

    preprocessor = kbert.BertPreprocessor(
        kbert.BertTokenizer.from_model_dir(model_dir), sequence_length=SEQUENCE_LENGTH
    )
    text_pairs = None if text_pairs is None else tf.constant(text_pairs, tf.string)
    inputs = preprocessor(tf.constant(texts, tf.string), text_pairs)
    return {name: value.numpy() for name, value in inputs.items()}


def reference_probabilities(model, inputs):
    logits = np.asarray(model.predict(inputs, verbose=0), dtype=np.float64)
    probabilities = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return probabilities / probabilities.sum(axis=-1, keepdims=True)


def strings(values):
    return {"b64": [base64.b64encode(_bytes(value)).decode("ascii") for value in values]}


def _bytes(value):
    return value.encode("utf-8") if isinstance(value, str) else value


def serve_like_tensorflow_serving(export_dir, requests, python=sys.executable, environment=None):
    """Runs `[{"signature", "inputs"}]` in a fresh TF-only process; returns its responses.

    `python` is the interpreter of the process: this one's, or that of an environment with
    another release's TensorFlow and TF Text; `environment` adds variables to its
    environment. A request the graph refuses is answered with
    `{"error": "InvalidArgument", "message"}`; any other failure fails the test.
    """
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(environment or {}))
    if python != sys.executable:
        environment["PYTHONPATH"] = ""  # nothing of this environment's packages
    result = subprocess.run(
        [python, "-c", SERVING_PROCESS, os.fspath(export_dir)],
        input=json.dumps(requests),
        capture_output=True,
        text=True,
        env=environment,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def example(**features):
    import tensorflow as tf

    return tf.train.Example(
        features=tf.train.Features(
            feature={
                name: tf.train.Feature(bytes_list=tf.train.BytesList(value=[_bytes(value)]))
                for name, value in features.items()
            }
        )
    ).SerializeToString()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifier")
    model = write_model_dir(root / "model")
    version_dir = kbert.export(root / "model", root / "saved_models" / "sentiment")
    return {"model": model, "model_dir": root / "model", "export": version_dir}


@pytest.fixture(scope="module")
def pair_classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair_classifier")
    model = write_model_dir(root / "model", text_pair=True, num_classes=2, seed=1)
    version_dir = kbert.export(root / "model", root / "saved_models" / "entailment")
    return {"model": model, "model_dir": root / "model", "export": version_dir}


TEXTS = ORDINARY_TEXTS + list(BAD_TEXTS.values())
LONG_TEXT = BAD_TEXTS["100,000 characters"]
# Every word of the long text is one token, so its first SEQUENCE_LENGTH - 2 words are exactly
# what fits between [CLS] and [SEP].
TRUNCATED_TEXT = b" ".join(LONG_TEXT.split()[: SEQUENCE_LENGTH - 2])


@pytest.fixture(scope="module")
def classifier_served(classifier):
    """The classifier export's answers to every request below, from one serving process."""
    inputs = reference_inputs(classifier["model_dir"], TEXTS)
    requests = {
        "text": ("serving_default", {"text": strings(TEXTS)}),
        "token_ids": ("serve_token_ids", {name: value.tolist() for name, value in inputs.items()}),
        "examples": ("serve_examples", {"inputs": strings([example(text=t) for t in TEXTS])}),
        "batch of 0": ("serving_default", {"text": strings([])}),
        "batch of 1,000": (
            "serving_default",
            {"text": strings([TEXTS[index % len(TEXTS)] for index in range(1000)])},
        ),
        "long and truncated": ("serving_default", {"text": strings([LONG_TEXT, TRUNCATED_TEXT])}),
        "no examples": ("serve_examples", {"inputs": strings([])}),
        "example without features": ("serve_examples", {"inputs": strings([example()])}),
    }
    for name, text in BAD_TEXTS.items():
        requests[name] = ("serving_default", {"text": strings([text])})
    responses = serve_like_tensorflow_serving(
        classifier["export"],
        [{"signature": signature, "inputs": inputs} for signature, inputs in requests.values()],
    )
    return dict(zip(requests, responses))


def test_classifier_served_as_tensorflow_serving_serves_it_equals_keras(
    classifier, classifier_served
):
    inputs = reference_inputs(classifier["model_dir"], TEXTS)
    expected = reference_probabilities(classifier["model"], inputs)
    assert np.ptp(expected[: len(ORDINARY_TEXTS), 0]) > 0.05, "texts should get different outputs"

    for name in ("text", "token_ids"):
        response = classifier_served[name]
        assert response["method_name"] == "tensorflow/serving/predict"
        np.testing.assert_allclose(response["outputs"]["probabilities"], expected, atol=1e-5)
        assert response["outputs"]["label_id"] == expected.argmax(axis=-1).tolist()
        assert response["outputs"]["label"] == [LABEL_NAMES[i] for i in expected.argmax(axis=-1)]
    examples = classifier_served["examples"]
    assert examples["method_name"] == "tensorflow/serving/classify"
    np.testing.assert_allclose(examples["outputs"]["scores"], expected, atol=1e-5)
    assert examples["outputs"]["classes"] == [LABEL_NAMES] * len(TEXTS)


def test_with_tensorflows_onednn_kernels_the_classifier_serves_the_same(classifier):
    # The deployment docs and the printed server commands turn oneDNN on
    # (TF_ENABLE_ONEDNN_OPTS=1); its kernels round differently, within 1e-5 of Keras.
    onednn = {"TF_ENABLE_ONEDNN_OPTS": "1"}
    check = "from tensorflow.python.util import _pywrap_util_port as port; print(port.IsMklEnabled())"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                            env=dict(os.environ, **onednn))
    assert result.stdout.split() == ["True"], result.stderr[-2000:]  # the switch is honoured
    inputs = reference_inputs(classifier["model_dir"], TEXTS)
    expected = reference_probabilities(classifier["model"], inputs)
    (response,) = serve_like_tensorflow_serving(
        classifier["export"],
        [{"signature": "serving_default", "inputs": {"text": strings(TEXTS)}}],
        environment=onednn,
    )
    np.testing.assert_allclose(response["outputs"]["probabilities"], expected, atol=1e-5)


def test_text_pair_classifier_served_as_tensorflow_serving_serves_it_equals_keras(
    pair_classifier,
):
    texts = ["the cat sat", "a good film", "", b"\xff\xfe", "中文 film"]
    text_pairs = ["on the mat", "not a bad movie", "the dog", "cat " * 40, ""]
    inputs = reference_inputs(pair_classifier["model_dir"], texts, text_pairs)
    expected = reference_probabilities(pair_classifier["model"], inputs)
    assert set(inputs["segment_ids"][1]) == {0, 1}

    by_text, by_examples = serve_like_tensorflow_serving(
        pair_classifier["export"],
        [
            {
                "signature": "serving_default",
                "inputs": {"text": strings(texts), "text_pair": strings(text_pairs)},
            },
            {
                "signature": "serve_examples",
                "inputs": {
                    "inputs": strings(
                        [example(text=a, text_pair=b) for a, b in zip(texts, text_pairs)]
                    )
                },
            },
        ],
    )
    np.testing.assert_allclose(by_text["outputs"]["probabilities"], expected, atol=1e-5)
    assert by_text["outputs"]["label"] == [LABEL_NAMES[i] for i in expected.argmax(axis=-1)]
    np.testing.assert_allclose(by_examples["outputs"]["scores"], expected, atol=1e-5)


def test_bad_input_never_fails_and_gives_probabilities(classifier_served):
    for name in BAD_TEXTS:
        probabilities = np.array(classifier_served[name]["outputs"]["probabilities"])
        assert probabilities.shape == (1, 3), name
        assert np.isfinite(probabilities).all(), name
        np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5, err_msg=name)

    assert classifier_served["batch of 0"]["shapes"] == {
        "probabilities": [0, 3],
        "label_id": [0],
        "label": [0],
    }
    thousand = np.array(classifier_served["batch of 1,000"]["outputs"]["probabilities"])
    assert thousand.shape == (1000, 3) and np.isfinite(thousand).all()
    np.testing.assert_allclose(thousand.sum(axis=-1), 1.0, atol=1e-5)
    long, truncated = classifier_served["long and truncated"]["outputs"]["probabilities"]
    np.testing.assert_allclose(long, truncated, atol=1e-6)
    assert classifier_served["no examples"]["shapes"]["scores"] == [0, 3]
    # An Example without its text is refused, not classified as if the text were empty.
    refused = classifier_served["example without features"]
    assert refused["error"] == "InvalidArgument" and "text" in refused["message"]


def test_token_ids_longer_than_the_model_reads_are_truncated_not_refused(classifier):
    inputs = reference_inputs(classifier["model_dir"], ORDINARY_TEXTS)
    rng = np.random.default_rng(0)
    extra = rng.integers(5, len(VOCABULARY), size=(len(ORDINARY_TEXTS), 24))
    long_inputs = {
        "token_ids": np.concatenate([inputs["token_ids"], extra], axis=1),
        "segment_ids": np.concatenate([inputs["segment_ids"], np.zeros_like(extra)], axis=1),
        "padding_mask": np.concatenate([inputs["padding_mask"], np.ones_like(extra)], axis=1),
    }
    assert long_inputs["token_ids"].shape[1] == 40  # the model has 32 positions
    (served,) = serve_like_tensorflow_serving(
        classifier["export"],
        [{"signature": "serve_token_ids", "inputs": {k: v.tolist() for k, v in long_inputs.items()}}],
    )
    expected = reference_probabilities(
        classifier["model"], {name: value[:, :32] for name, value in long_inputs.items()}
    )
    np.testing.assert_allclose(served["outputs"]["probabilities"], expected, atol=1e-5)


def test_masked_lm_fill_mask_served_as_tensorflow_serving_serves_it(tmp_path):
    from kbert.commands.predict import _KerasPredictor

    write_model_dir(tmp_path / "model", kind="masked_lm", seed=2)
    version_dir = kbert.export(tmp_path / "model", tmp_path / "saved_models" / "mlm", top_k=3)
    texts = [
        "the [MASK] sat on the [MASK] .",
        "[MASK]",
        "no mask here",
        "",
        "UN[MASK]good [MASK]" + " cat" * 30 + " [MASK]",  # the last mask is truncated away
        b"\xff[MASK]\x00",
    ]
    (served,) = serve_like_tensorflow_serving(
        version_dir, [{"signature": "fill_mask", "inputs": {"text": strings(texts)}}]
    )
    expected = _KerasPredictor(tmp_path / "model", top_k=3).predict([_bytes(t) for t in texts])

    outputs = served["outputs"]
    assert [row["mask_positions"] for row in expected] == [[2, 6], [1], [], [], [3, 5], [1]]
    for index, row in enumerate(expected):
        kept = [slot for slot, position in enumerate(outputs["mask_positions"][index]) if position >= 0]
        assert [outputs["mask_positions"][index][slot] for slot in kept] == row["mask_positions"]
        assert [outputs["token_ids"][index][slot] for slot in kept] == row["token_ids"]
        assert [outputs["tokens"][index][slot] for slot in kept] == row["tokens"]
        np.testing.assert_allclose(
            np.reshape([outputs["scores"][index][slot] for slot in kept], (-1, 3)),
            np.reshape(row["scores"], (-1, 3)),
            atol=1e-5,
        )
    assert np.array(outputs["token_ids"]).shape == (len(texts), 2, 3)
    special_tokens = {"[PAD]", "[CLS]", "[SEP]", "[MASK]"}
    assert not special_tokens & {token for row in expected for slot in row["tokens"] for token in slot}


def test_saved_model_cli_lists_the_three_signatures(classifier):
    saved_model_cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run(
        [saved_model_cli, "show", "--all", "--dir", os.fspath(classifier["export"])],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    signatures = _parse_saved_model_cli(result.stdout)
    assert sorted(name for name in signatures if not name.startswith("__")) == [
        "serve_examples",
        "serve_token_ids",
        "serving_default",
    ]
    label_outputs = {
        "label": ("DT_STRING", "(-1)"),
        "label_id": ("DT_INT32", "(-1)"),
        "probabilities": ("DT_FLOAT", "(-1, 3)"),
    }
    assert signatures["serving_default"] == {
        "inputs": {"text": ("DT_STRING", "(-1)")},
        "outputs": label_outputs,
        "method": "tensorflow/serving/predict",
    }
    assert signatures["serve_token_ids"] == {
        "inputs": {
            name: ("DT_INT32", "(-1, -1)") for name in ("token_ids", "segment_ids", "padding_mask")
        },
        "outputs": label_outputs,
        "method": "tensorflow/serving/predict",
    }
    assert signatures["serve_examples"] == {
        "inputs": {"inputs": ("DT_STRING", "(-1)")},
        "outputs": {"classes": ("DT_STRING", "(-1, 3)"), "scores": ("DT_FLOAT", "(-1, 3)")},
        "method": "tensorflow/serving/classify",
    }


def _parse_saved_model_cli(output):
    signatures = {}
    for block in output.split("signature_def['")[1:]:
        name = block.split("'", 1)[0]
        tensors = {"inputs": {}, "outputs": {}}
        for kind, tensor, dtype, shape in re.findall(
            r"(inputs|outputs)\['([^']+)'\] tensor_info:\s+dtype: (\S+)\s+shape: (\([^)]*\)|\S+)",
            block,
        ):
            tensors[kind][tensor] = (dtype, shape)
        method = re.search(r"Method name is: (\S*)", block)
        signatures[name] = dict(tensors, method=method.group(1) if method else "")
    return signatures


def test_export_holds_only_core_and_tensorflow_text_ops(classifier, tmp_path):
    from tensorflow.core.framework import node_def_pb2

    vocabulary = os.path.join(classifier["export"], "assets", "vocab.txt")
    with open(vocabulary, encoding="utf-8") as file:
        assert file.read().splitlines() == VOCABULARY
    ops = check_serving_ops(classifier["export"])
    # The tokenizer runs in the graph, and the model's ops sit in the function library.
    assert {"FastWordpieceTokenizeWithOffsets", "RegexSplitWithOffsets"} <= set(ops["tensorflow_text"])
    assert {"Softmax", "MatMul", "ParseExampleV2"} <= set(ops["tensorflow"])

    forged = tmp_path / "forged"
    shutil.copytree(classifier["export"], forged)
    saved_model = read_saved_model(forged)
    function = saved_model.meta_graphs[0].graph_def.library.function[0]
    function.node_def.append(node_def_pb2.NodeDef(name="custom", op="Addons>Sparsemax"))
    function.node_def.append(node_def_pb2.NodeDef(name="python", op="EagerPyFunc"))
    (forged / "saved_model.pb").write_bytes(saved_model.SerializeToString())
    assert {"Addons>Sparsemax", "EagerPyFunc"} <= serving_ops(forged)
    with pytest.raises(
        ValueError,
        match=r"op Addons>Sparsemax is registered by no supported TensorFlow Serving release; "
        r"op EagerPyFunc is registered by no",
    ):
        check_serving_ops(forged)


def test_every_encoder_dense_layer_runs_as_one_fused_matmul_on_real_tokens_in_a_tf1_session(
    classifier,
):
    # Grappler's remapper fuses a MatMul with the BiasAdd right after it when the model
    # server loads the graph; a bias added after a reshape would stay a separate pass. Each
    # product has one row per real token of the batch, none for its padding.
    script = textwrap.dedent(
        """
        import collections, json, sys
        import tensorflow as tf
        import tensorflow_text
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph)
        with graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], sys.argv[1])
        signature = meta_graph.signature_def["serving_default"]
        fetches = [info.name for info in signature.outputs.values()]
        feed = {signature.inputs["text"].name: [t.encode() for t in json.loads(sys.argv[2])]}
        options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
        metadata = tf.compat.v1.RunMetadata()
        session.run(fetches, feed, options=options, run_metadata=metadata)
        ops, rows = collections.Counter(), set()
        for device in metadata.step_stats.dev_stats:
            for node in device.node_stats:
                if "transformer_layer" in node.node_name:
                    op = node.timeline_label.split("(")[0].split(" = ")[-1].strip()
                    ops[op] += 1
                    if op == "_FusedMatMul":
                        rows.add(node.output[0].tensor_description.shape.dim[0].size)
        print(json.dumps([ops, sorted(rows)]))
        """
    )
    texts = ["the cat sat", "a dog ran on the mat and the cat sat on the dog"]
    padding_mask = reference_inputs(classifier["model_dir"], texts)["padding_mask"]
    lengths = padding_mask.sum(axis=1)
    assert lengths.min() < lengths.max(), lengths  # the batch holds padding
    result = subprocess.run([sys.executable, "-c", script, os.fspath(classifier["export"]),
                             json.dumps(texts)],
                            capture_output=True, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-4000:]
    ops, rows = json.loads(result.stdout.strip().splitlines()[-1])
    num_layers = classifier["model"].backbone.num_layers
    # Query, key, value, attention output, intermediate and output of every layer.
    assert ops.get("_FusedMatMul") == 6 * num_layers, ops
    assert "MatMul" not in ops and "BiasAdd" not in ops, ops
    assert rows == [lengths.sum()], (rows, lengths)


def test_an_export_with_xla_compiled_functions_fails(classifier, tmp_path):
    # Training steps compile some element-wise work with XLA; an export must not, since
    # TensorFlow Serving's XLA JIT is off unless the server is started with it.
    forged = tmp_path / "forged"
    shutil.copytree(classifier["export"], forged)
    saved_model = read_saved_model(forged)
    function = saved_model.meta_graphs[0].graph_def.library.function[0]
    function.attr["_XlaMustCompile"].b = True
    (forged / "saved_model.pb").write_bytes(saved_model.SerializeToString())
    with pytest.raises(ValueError, match=f"XLA.*{function.signature.name}"):
        check_serving_ops(forged)


def test_an_op_outside_the_target_release_fails_naming_the_first_release_with_it(
    tmp_path, monkeypatch, capsys
):
    import tensorflow_text as tf_text

    from kbert.cli import main

    # TF Text's own trimmer, which kbert replaced with core ops: its op came with TF Text 2.13,
    # so TF Serving 2.12 to 2.19 (TF Text 2.12.1) cannot run it.
    tokenizer_module = sys.modules["kbert.tokenizer"]
    monkeypatch.setattr(
        tokenizer_module,
        "truncate_longest_first",
        lambda segments, max_tokens: tf_text.RoundRobinTrimmer(max_tokens).trim(segments),
    )
    write_model_dir(tmp_path / "model")
    base_dir = tmp_path / "saved_models" / "model"
    for serving_version in ("2.12", "2.19"):
        argv = ["export", "--model", str(tmp_path / "model"), "--output", str(base_dir)]
        assert main(argv + ["--serving-version", serving_version]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1
        assert (
            f"op TFText>RoundRobinTrim is not registered in TensorFlow Serving {serving_version}; "
            "the first release that has it is 2.20" in error
        ), error
        assert os.listdir(base_dir) == []  # no version, no unfinished export
    # The release that has it takes the same graph.
    assert kbert.export(tmp_path / "model", base_dir, serving_version="2.20").endswith("/1")
    with pytest.raises(ValueError, match=r"serving_version to be a supported.*2\.12, 2\.13"):
        kbert.export(tmp_path / "model", base_dir, serving_version="2.11")


def test_versions_are_consecutive_and_never_overwritten(classifier, capsys):
    from kbert.cli import main

    base_dir = os.path.dirname(classifier["export"])
    assert os.path.basename(classifier["export"]) == "1"
    assert main(["export", "--model", os.fspath(classifier["model_dir"]), "--output", base_dir]) == 0
    assert versions(base_dir) == [1, 2]
    assert f"to {os.path.join(base_dir, '2')}" in capsys.readouterr().out

    before = _tree_digest(os.path.join(base_dir, "1"))
    code = main(
        ["export", "--model", os.fspath(classifier["model_dir"]), "--output", base_dir, "--version", "1"]
    )
    error = capsys.readouterr().err
    assert code == 2
    assert f"Version 1 already exists in {base_dir}" in error and "next free one (3)" in error
    assert _tree_digest(os.path.join(base_dir, "1")) == before
    assert sorted(os.listdir(base_dir)) == ["1", "2"]


def _tree_digest(directory):
    digest = hashlib.sha256()
    for root, directories, files in sorted(os.walk(directory)):
        directories.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(path.encode())
            digest.update(str(os.stat(path).st_mtime_ns).encode())
            with open(path, "rb") as file:
                digest.update(file.read())
    return digest.hexdigest()


# Kills the exporting process with SIGKILL at a chosen step: after the SavedModel is written
# (before its method names are set) or after it is complete (before it is renamed into place).
KILLED_EXPORT = r"""
import os, signal, sys
import kbert
export_module = sys.modules["kbert.export"]
step = sys.argv[3]

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

setattr(export_module, step, die)
kbert.export(sys.argv[1], sys.argv[2])
"""


@pytest.mark.parametrize(
    "step", [pytest.param("_finish_saved_model", marks=pytest.mark.slow), "_publish"]
)
def test_an_export_killed_midway_leaves_no_version(classifier, tmp_path, step, capsys):
    base_dir = tmp_path / "saved_models" / "sentiment"
    result = subprocess.run(
        [sys.executable, "-c", KILLED_EXPORT, os.fspath(classifier["model_dir"]), os.fspath(base_dir), step],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow"),
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    (leftover,) = os.listdir(base_dir)
    assert leftover.startswith(".incomplete-") and not leftover.isdigit()
    assert os.path.isfile(base_dir / leftover / "saved_model.pb")  # killed after writing
    assert versions(base_dir) == []

    if step == "_publish":
        # The next export removes the killed one's leftover, but not that of a live export,
        # nor one it cannot tell the owner of, and says so.
        from kbert.cli import main
        from kbert.files import owner_tag

        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        try:
            running = f".incomplete-{sleeper.pid}@{owner_tag().partition('@')[2]}-next-abc"
            os.makedirs(base_dir / running)
            os.makedirs(base_dir / ".incomplete-next-old")
            model_dir = os.fspath(classifier["model_dir"])
            assert main(["export", "--model", model_dir, "--output", os.fspath(base_dir)]) == 0
        finally:
            sleeper.kill()
            sleeper.wait()
        assert versions(base_dir) == [1]
        assert sorted(os.listdir(base_dir)) == sorted(["1", running, ".incomplete-next-old"])
        assert "holds unfinished exports of running processes" in capsys.readouterr().out


@contextlib.contextmanager
def deadline(seconds):
    """Fails the test, rather than hang it, if the block runs longer than `seconds`."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_names_that_are_not_versions_never_block_the_next_one(classifier, tmp_path):
    base_dir = tmp_path / "saved_models" / "sentiment"
    os.makedirs(base_dir / "1")
    (base_dir / "2").write_text("x\n")  # a plain file: no version, but the name is taken
    os.makedirs(base_dir / "\u00b2")  # a digit to str.isdigit(), not to int() or TF Serving
    os.makedirs(base_dir / "\u0663")
    assert versions(base_dir) == [1]
    with deadline(300):
        version_dir = kbert.export(classifier["model_dir"], base_dir)
    assert version_dir == os.path.join(base_dir, "3")
    assert versions(base_dir) == [1, 3]
    with pytest.raises(FileExistsError, match="Version 2 already exists"):
        kbert.export(classifier["model_dir"], base_dir, version=2)
    assert (base_dir / "2").read_text() == "x\n"


def test_a_full_disk_during_an_export_is_one_line_and_leaves_no_version(
    classifier, small_disk, capsys
):
    from kbert.cli import main

    disk = small_disk("256k")
    base_dir = disk / "sentiment"
    code = main(["export", "--model", os.fspath(classifier["model_dir"]), "--output", os.fspath(base_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"kbert export: error: Could not write the export into {base_dir}: ")
    assert os.listdir(base_dir) == []


def test_a_vocabulary_that_does_not_fit_the_model_is_not_exported(tmp_path):
    write_model_dir(tmp_path / "model")
    vocabulary_path = tmp_path / "model" / "vocab.txt"
    with open(vocabulary_path, "a", encoding="utf-8") as file:
        file.write("".join(f"added{index}\n" for index in range(5)))
    with pytest.raises(ValueError) as error:
        kbert.export(tmp_path / "model", tmp_path / "saved_models" / "model")
    assert str(error.value).startswith(
        f"{vocabulary_path} has {len(VOCABULARY) + 5} tokens but the model's vocabulary_size "
        f"is {len(VOCABULARY)}"
    )
    assert versions(tmp_path / "saved_models" / "model") == []


def test_a_vocabulary_outside_the_model_directory_is_not_exported(tmp_path):
    write_model_dir(tmp_path / "model")
    outside = tmp_path / "outside.txt"
    shutil.copyfile(tmp_path / "model" / "vocab.txt", outside)
    config_path = tmp_path / "model" / "config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer"]["vocabulary"] = os.fspath(outside)
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="names a vocabulary outside the model directory"):
        kbert.export(tmp_path / "model", tmp_path / "saved_models" / "model")
    assert versions(tmp_path / "saved_models" / "model") == []


def test_exporting_a_backbone_fails_clearly(tmp_path):
    backbone = tiny_backbone(len(VOCABULARY), num_layers=1)
    model_directory.save(backbone, tmp_path / "model", VOCABULARY)
    with pytest.raises(ValueError, match="Expected a BertClassifier, BertMaskedLM(, .*)? or .* to export"):
        kbert.export(tmp_path / "model", tmp_path / "saved_models" / "backbone")
    assert not os.path.exists(tmp_path / "saved_models" / "backbone")


def test_export_arguments_are_checked(classifier, tmp_path):
    with pytest.raises(ValueError, match="Expected version to be a positive integer"):
        kbert.export(classifier["model_dir"], tmp_path / "saved_models", version=0)
    with pytest.raises(ValueError, match="max_sequence_length 32. Received: sequence_length=64"):
        kbert.export(classifier["model_dir"], tmp_path / "saved_models", sequence_length=64)
    with pytest.raises(FileNotFoundError, match="Model directory not found"):
        kbert.export(tmp_path / "missing", tmp_path / "saved_models")


@pytest.mark.slow
def test_export_from_a_model_trained_on_jax(tmp_path):
    pytest.importorskip("jax")
    code = r"""
import sys
import numpy as np
sys.path.insert(0, sys.argv[2])
from test_export import write_model_dir, reference_inputs, reference_probabilities
import kbert
from kbert.serving import SavedModelServer

model = write_model_dir(sys.argv[1] + "/model")
texts = ["the cat sat", "a bad film", ""]
expected = reference_probabilities(model, reference_inputs(sys.argv[1] + "/model", texts))
version_dir = kbert.export(sys.argv[1] + "/model", sys.argv[1] + "/saved_models/jax")
served = SavedModelServer(version_dir).run("serving_default", {"text": texts})
np.testing.assert_allclose(served["probabilities"], expected, atol=1e-5)
print("exported", version_dir)
"""
    result = subprocess.run(
        [sys.executable, "-c", code, os.fspath(tmp_path), os.path.dirname(__file__)],
        capture_output=True,
        text=True,
        env=dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert f"exported {tmp_path}/saved_models/jax/1" in result.stdout
