"""kbert's exports under the op registries of real TensorFlow Serving releases.

The model server links its own TensorFlow and TF Text (TF Serving 2.12 to 2.19 link TF Text
2.12.1, 2.20 links 2.20.0). For each release whose pinned `tensorflow-cpu` and
`tensorflow-text` wheels install together, a virtual environment with exactly those wheels
(`tools/serving_runtimes.py`, cached under ~/.cache/kbert/serving-runtimes) loads every kind
of export in a fresh process with the TF1 session API, as the server does, and runs every
signature by its SignatureDef tensor names. Its answers must equal the Keras model's; the
warm-up requests written into each export must replay there.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kbert import serving_releases
import test_export
from test_export import (
    BAD_TEXTS,
    LABEL_NAMES,
    ORDINARY_TEXTS,
    _bytes,
    example,
    export_every_kind,
    reference_inputs,
    serve_like_tensorflow_serving,
    strings,
)

pytestmark = pytest.mark.slow

RUNTIMES = [name for name, release in serving_releases.RELEASES.items() if release.runs_tensorflow_text_wheel]
TEXTS = ORDINARY_TEXTS + list(BAD_TEXTS.values())
TEXT_PAIRS = ["on the mat", "not a bad movie", "", b"\xff\xfe", "cat " * 40, "中文 film"]
TEXT_PAIRS = (TEXT_PAIRS * 3)[: len(TEXTS)]
MASKED_TEXTS = [
    "the [MASK] sat on the [MASK] .",
    "[MASK]",
    "no mask here",
    "",
    "UN[MASK]good [MASK]" + " cat" * 30 + " [MASK]",
    b"\xff[MASK]\x00",
]

# Replays a version's warm-up file as TF Serving does on load: every logged request through
# the session, by the signature it names. Prints one JSON line: each export directory's replies.
WARMUP_REPLAY = r"""
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401
from tensorflow_serving.apis import prediction_log_pb2

replayed = {}
for export_dir in sys.argv[1:]:
    path = f"{export_dir}/assets.extra/tf_serving_warmup_requests"
    results = []
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
        for record in tf.compat.v1.io.tf_record_iterator(path):
            log = prediction_log_pb2.PredictionLog.FromString(record)
            kind = log.WhichOneof("log_type")
            request = getattr(log, kind).request
            signature = meta_graph.signature_def[request.model_spec.signature_name]
            if kind == "predict_log":
                feeds = {signature.inputs[name].name: tf.make_ndarray(tensor) for name, tensor in request.inputs.items()}
                batch_size = len(next(iter(feeds.values())))
            else:
                examples = [example.SerializeToString() for example in request.input.example_list.examples]
                (input_info,) = signature.inputs.values()
                feeds = {input_info.name: np.array(examples, dtype=object)}
                batch_size = len(examples)
            outputs = session.run({name: info.name for name, info in signature.outputs.items()}, feeds)
            finite = all(np.isfinite(value).all() for value in outputs.values() if value.dtype.kind == "f")
            rows = {name: int(value.shape[0]) for name, value in outputs.items()}
            results.append({"kind": kind, "signature": request.model_spec.signature_name,
                            "batch_size": batch_size, "rows": rows, "finite": bool(finite),
                            "tensorflow": tf.__version__})
    replayed[export_dir] = results
print(json.dumps(replayed))
"""


@pytest.fixture(scope="session", params=RUNTIMES, ids=[f"tf-serving-{name}" for name in RUNTIMES])
def runtime(request):
    """`(release name, python of its environment)`, the environment built once and cached."""
    from tools.serving_runtimes import ensure_environment

    if sys.version_info >= (3, 12) and request.param == "2.12":
        pytest.skip("tensorflow-cpu 2.12 has wheels for Python 3.8 to 3.11 only")
    return request.param, ensure_environment(request.param)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Every kind of model kbert exports, exported once, with the Keras model's answers."""
    import kbert
    from test_token_classification import write_token_classifier_dir

    root = tmp_path_factory.mktemp("runtimes")
    exported = export_every_kind(root, top_k=3)
    model_dir = root / "token_classifier"
    model = write_token_classifier_dir(model_dir)
    export_dir = kbert.export(model_dir, root / "saved_models" / model_dir.name)
    exported["token classifier"] = {"model": model, "model_dir": model_dir, "export": export_dir}
    return exported


def keras_outputs(exported, texts, text_pairs=None):
    inputs = reference_inputs(exported["model_dir"], texts, text_pairs)
    logits = np.asarray(exported["model"].predict(inputs, verbose=0), dtype=np.float64)
    return inputs, logits


def softmax(logits):
    probabilities = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return probabilities / probabilities.sum(axis=-1, keepdims=True)


def bad_requests(input_names):
    """Empty, huge, invalid-UTF-8 texts and batches of 0 and 1,024, for every text input."""
    batches = {
        "empty": [b""],
        "huge": [("the cat sat on the mat " * 4348)[:100_000].encode()],
        "invalid UTF-8": [BAD_TEXTS["invalid UTF-8"]],
        "batch of 0": [],
        "batch of 1,024": [TEXTS[index % len(TEXTS)] for index in range(1024)],
    }
    return {
        name: {input_name: strings(texts) for input_name in input_names}
        for name, texts in batches.items()
    }


def assert_finite_answers(responses, expected_rows):
    for (name, response), rows in zip(responses.items(), expected_rows):
        assert "error" not in response, (name, response)
        for output, shape in response["shapes"].items():
            assert shape[0] == rows, (name, output, shape)
            values = np.array(response["outputs"][output])
            if values.dtype.kind == "f":
                assert np.isfinite(values).all(), (name, output)


@pytest.mark.parametrize("kind", ["classifier", "pair classifier", "regression"])
def test_classifiers_serve_in_the_release_runtime_as_in_keras(runtime, exports, kind):
    release, python = runtime
    exported = exports[kind]
    text_pairs = TEXT_PAIRS if kind == "pair classifier" else None
    inputs, logits = keras_outputs(exported, TEXTS, text_pairs)
    text_inputs = {"text": strings(TEXTS)}
    features = {"text": TEXTS}
    if text_pairs is not None:
        text_inputs["text_pair"] = strings(text_pairs)
        features["text_pair"] = text_pairs
    examples = [example(**dict(zip(features, values))) for values in zip(*features.values())]
    requests = {
        "text": ("serving_default", text_inputs),
        "token ids": ("serve_token_ids", {name: value.tolist() for name, value in inputs.items()}),
        "examples": ("serve_examples", {"inputs": strings(examples)}),
    }
    bad = bad_requests(list(text_inputs))
    for name, request_inputs in bad.items():
        requests[name] = ("serving_default", request_inputs)
    responses = serve_like_tensorflow_serving(
        exported["export"],
        [{"signature": signature, "inputs": values} for signature, values in requests.values()],
        python=python,
    )
    responses = dict(zip(requests, responses))

    if kind == "regression":
        for name in ("text", "token ids"):
            np.testing.assert_allclose(responses[name]["outputs"]["score"], logits[:, 0], atol=1e-5)
        np.testing.assert_allclose(responses["examples"]["outputs"]["outputs"], logits[:, 0], atol=1e-5)
        assert responses["examples"]["method_name"] == "tensorflow/serving/regress"
    else:
        probabilities = softmax(logits)
        label_names = LABEL_NAMES[: probabilities.shape[1]]
        for name in ("text", "token ids"):
            np.testing.assert_allclose(
                responses[name]["outputs"]["probabilities"], probabilities, atol=1e-5
            )
            assert responses[name]["outputs"]["label"] == [
                label_names[index] for index in probabilities.argmax(axis=-1)
            ]
        np.testing.assert_allclose(responses["examples"]["outputs"]["scores"], probabilities, atol=1e-5)
        assert responses["examples"]["method_name"] == "tensorflow/serving/classify"
    assert_finite_answers({name: responses[name] for name in bad}, [1, 1, 1, 0, 1024])


def test_masked_lm_serves_in_the_release_runtime_as_in_keras(runtime, exports):
    from kbert.commands.predict import _KerasPredictor

    release, python = runtime
    exported = exports["masked LM"]
    expected = _KerasPredictor(exported["model_dir"], top_k=3).predict([_bytes(t) for t in MASKED_TEXTS])
    requests = {
        "fill_mask": ("fill_mask", {"text": strings(MASKED_TEXTS)}),
        "serving_default": ("serving_default", {"text": strings(MASKED_TEXTS)}),
    }
    bad = with_bad_requests(requests, "fill_mask")
    responses = serve_requests(exported, requests, python)
    for name in ("fill_mask", "serving_default"):
        outputs = responses[name]["outputs"]
        for index, row in enumerate(expected):
            kept = [slot for slot, position in enumerate(outputs["mask_positions"][index]) if position >= 0]
            assert [outputs["mask_positions"][index][slot] for slot in kept] == row["mask_positions"]
            assert [outputs["tokens"][index][slot] for slot in kept] == row["tokens"]
            np.testing.assert_allclose(
                np.reshape([outputs["scores"][index][slot] for slot in kept], (-1, 3)),
                np.reshape(row["scores"], (-1, 3)),
                atol=1e-5,
            )
    assert_finite_answers({name: responses[name] for name in bad}, [1, 1, 1, 0, 1024])


def test_token_classifier_serves_in_the_release_runtime_as_in_keras(runtime, exports):
    from kbert.commands.predict import _KerasPredictor
    from test_token_classification import HARD_TEXTS

    release, python = runtime
    exported = exports["token classifier"]
    expected = _KerasPredictor(exported["model_dir"], top_k=3).predict([_bytes(t) for t in HARD_TEXTS])
    inputs, logits = keras_outputs(exported, HARD_TEXTS)
    responses, bad = serve_text_and_token_ids(exported, HARD_TEXTS, inputs, python)
    outputs = responses["text"]["outputs"]
    assert outputs["num_entities"] == [len(row) for row in expected]
    assert sum(outputs["num_entities"]) > 5
    for index, row in enumerate(expected):
        for slot, entity in enumerate(row):
            for name in ("text", "label", "start", "end"):
                assert outputs[name][index][slot] == entity[name]
            assert outputs["score"][index][slot] == pytest.approx(entity["score"], abs=1e-5)
    np.testing.assert_allclose(
        responses["token ids"]["outputs"]["probabilities"], softmax(logits), atol=1e-5
    )
    assert_finite_answers({name: responses[name] for name in bad}, [1, 1, 1, 0, 1024])


def test_embedder_serves_in_the_release_runtime_as_in_keras(runtime, exports):
    release, python = runtime
    exported = exports["embedder"]
    inputs, embeddings = keras_outputs(exported, TEXTS)
    responses, bad = serve_text_and_token_ids(exported, TEXTS, inputs, python)
    for name in ("text", "token ids"):
        assert responses[name]["shapes"]["embeddings"] == list(embeddings.shape)
        np.testing.assert_allclose(responses[name]["outputs"]["embeddings"], embeddings, atol=1e-5)
    assert_finite_answers({name: responses[name] for name in bad}, [1, 1, 1, 0, 1024])


def serve_requests(exported, requests, python):
    """`{name: response}` of `requests` (`{name: (signature, inputs)}`) in the runtime."""
    responses = serve_like_tensorflow_serving(
        exported["export"],
        [{"signature": signature, "inputs": values} for signature, values in requests.values()],
        python=python,
    )
    return dict(zip(requests, responses))


def serve_text_and_token_ids(exported, texts, inputs, python):
    """Responses to `serving_default` of `texts`, `serve_token_ids` of `inputs`, and hostile
    texts; returns them with the hostile requests' names."""
    requests = {
        "text": ("serving_default", {"text": strings(texts)}),
        "token ids": ("serve_token_ids", {name: value.tolist() for name, value in inputs.items()}),
    }
    bad = with_bad_requests(requests, "serving_default")
    return serve_requests(exported, requests, python), bad


def with_bad_requests(requests, signature):
    """Adds the hostile `text` requests to `signature` to `requests`; returns them by name."""
    bad = bad_requests(["text"])
    for name, request_inputs in bad.items():
        requests[name] = (signature, request_inputs)
    return bad


def test_warmup_requests_replay_in_the_release_runtime(runtime, exports):
    release, python = runtime
    # Every kind's export in one process: a TensorFlow start-up is most of the time.
    export_dirs = {kind: os.fspath(exported["export"]) for kind, exported in exports.items()}
    result = subprocess.run(
        [python, "-c", WARMUP_REPLAY, *export_dirs.values()],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=""),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    replayed_by_export = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(exports) >= {*test_export.MODEL_KINDS, "token classifier"}
    for kind, export_dir in export_dirs.items():
        assert_warmup_replayed(release, kind, export_dir, replayed_by_export[export_dir])


def assert_warmup_replayed(release, kind, export_dir, replayed):
    expected_tensorflow = serving_releases.RELEASES[release].tensorflow
    assert {entry["tensorflow"] for entry in replayed} == {expected_tensorflow}
    signatures = {entry["signature"] for entry in replayed}
    with open(os.path.join(export_dir, "assets.extra", "kbert_export.json"), encoding="utf-8") as file:
        info = json.load(file)
    assert signatures == set(info["signatures"]), kind
    assert len(replayed) == info["warmup_requests"], kind
    for entry in replayed:
        assert entry["finite"], (kind, entry)
        assert set(entry["rows"].values()) == {entry["batch_size"]}, (kind, entry)
    kinds = {entry["kind"] for entry in replayed}
    if kind == "regression":
        assert "regress_log" in kinds
    elif kind not in ("masked LM", "token classifier", "embedder"):
        assert "classify_log" in kinds, kind
