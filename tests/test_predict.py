"""Tests of `kbert predict`: a SavedModel and its model directory predict the same, and TF
Serving REST bodies are answered as the REST API answers them."""

import base64
import json
import os

import numpy as np
import pytest

import kbert
from kbert.cli import main
from kbert.serving import SavedModelServer
from test_export import LABEL_NAMES, reference_inputs, write_model_dir

PAIR_LINES = [
    b"the cat sat\ton the mat",
    b"a good film\tnot a bad movie",
    b"\tthe dog",
    b"good \xff\xfe film\t\x00\x00",
    "中文 film 👍🏽\t".encode(),
    b"very good" + b" film" * 50 + b"\t" + b"cat " * 50,
]


@pytest.fixture(scope="module")
def pair_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    write_model_dir(root / "model", text_pair=True, num_classes=2, seed=3)
    kbert.export(root / "model", root / "saved_models" / "pairs")
    return {"model_dir": os.fspath(root / "model"), "base_dir": os.fspath(root / "saved_models" / "pairs")}


def predict(argv, capsys):
    """Runs `kbert predict ARGV`; returns the exit code, the JSON lines printed and stderr."""
    code = main(["predict", *argv])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_saved_model_and_model_directory_predict_the_same(pair_model, tmp_path, capsys):
    input_file = tmp_path / "pairs.tsv"
    input_file.write_bytes(b"\r\n".join(PAIR_LINES) + b"\r\n")

    code, served, _ = predict(["--model", pair_model["base_dir"], "--input", os.fspath(input_file)], capsys)
    assert code == 0
    code, keras_rows, _ = predict(
        ["--model", pair_model["model_dir"], "--input", os.fspath(input_file), "--batch-size", "4"],
        capsys,
    )
    assert code == 0
    assert len(served) == len(keras_rows) == len(PAIR_LINES)
    for served_row, keras_row in zip(served, keras_rows):
        assert sorted(served_row) == ["label", "label_id", "probabilities"]
        assert served_row["label"] == keras_row["label"] == LABEL_NAMES[served_row["label_id"]]
        np.testing.assert_allclose(served_row["probabilities"], keras_row["probabilities"], atol=1e-5)
    probabilities = np.array([row["probabilities"] for row in served])
    assert np.ptp(probabilities[:, 0]) > 0.05

    code, from_arguments, _ = predict(
        ["--model", pair_model["base_dir"], "the cat sat\ton the mat", "a good film\tnot a bad movie"],
        capsys,
    )
    # The same answers; probabilities only within rounding, since the signature pads each
    # batch to its own longest row and these two rows form a batch of their own.
    assert [row["label"] for row in from_arguments] == [row["label"] for row in served[:2]]
    np.testing.assert_allclose(
        [row["probabilities"] for row in from_arguments],
        [row["probabilities"] for row in served[:2]],
        atol=1e-6,
    )


def test_request_bodies_are_answered_as_the_rest_api_answers_them(pair_model, tmp_path):
    server = SavedModelServer(pair_model["base_dir"])
    assert server.path == os.path.join(pair_model["base_dir"], "1")
    texts, text_pairs = ["the cat sat", "a good film"], ["on the mat", "not a bad movie"]
    expected = server.run("serving_default", {"text": texts, "text_pair": text_pairs})

    rows = server.respond(
        {
            "instances": [
                {"text": texts[0], "text_pair": text_pairs[0]},
                {"text": {"b64": base64.b64encode(texts[1].encode()).decode()}, "text_pair": text_pairs[1]},
            ]
        }
    )
    assert [sorted(row) for row in rows["predictions"]] == [["label", "label_id", "probabilities"]] * 2
    np.testing.assert_allclose(
        [row["probabilities"] for row in rows["predictions"]], expected["probabilities"], atol=1e-6
    )
    assert [row["label"] for row in rows["predictions"]] == [
        label.decode() for label in expected["label"]
    ]

    columns = server.respond({"inputs": {"text": texts, "text_pair": text_pairs}})
    assert sorted(columns["outputs"]) == ["label", "label_id", "probabilities"]
    assert columns["outputs"]["label_id"] == expected["label_id"].tolist()

    inputs = reference_inputs(pair_model["model_dir"], texts, text_pairs)
    by_token_ids = server.respond(
        {
            "signature_name": "serve_token_ids",
            "inputs": {name: value.tolist() for name, value in inputs.items()},
        }
    )
    np.testing.assert_allclose(by_token_ids["outputs"]["probabilities"], expected["probabilities"], atol=1e-6)

    classified = server.respond(
        {
            "signature_name": "serve_examples",
            "context": {"text_pair": text_pairs[0]},
            "examples": [{"text": texts[0]}, {"text": texts[1], "text_pair": text_pairs[1]}],
        }
    )
    assert [[label for label, _ in row] for row in classified["result"]] == [LABEL_NAMES[:2]] * 2
    np.testing.assert_allclose(
        [[score for _, score in row] for row in classified["result"]], expected["probabilities"], atol=1e-6
    )

    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps({"instances": [{"text": texts[0], "text_pair": text_pairs[0]}]}))
    assert main(["predict", "--model", pair_model["base_dir"], "--request", os.fspath(request_file)]) == 0


def test_regression_models_serve_a_score(tmp_path, capsys):
    model = write_model_dir(tmp_path / "model", num_classes=1, seed=4)
    version_dir = kbert.export(tmp_path / "model", tmp_path / "saved_models" / "similarity")
    texts = ["the cat sat", "a bad film", ""]
    expected = model.predict(reference_inputs(tmp_path / "model", texts), verbose=0)[:, 0]
    server = SavedModelServer(version_dir)

    # One output: the REST API answers with bare values instead of objects.
    predictions = server.respond({"instances": texts})["predictions"]
    np.testing.assert_allclose(predictions, expected, atol=1e-5)
    assert server.method_name("serve_examples") == "tensorflow/serving/regress"
    regressed = server.respond(
        {"signature_name": "serve_examples", "examples": [{"text": text} for text in texts]}
    )
    np.testing.assert_allclose(regressed["result"], expected, atol=1e-5)
    _, rows, _ = predict(["--model", os.fspath(tmp_path / "model"), *texts], capsys)
    np.testing.assert_allclose([row["score"] for row in rows], expected, atol=1e-5)

    # A one-input signature's instance is its value, {"b64": ...} included.
    encoded = [{"b64": base64.b64encode(text.encode()).decode()} for text in texts]
    np.testing.assert_allclose(server.respond({"instances": encoded})["predictions"], expected, atol=1e-5)
    # Two texts per instance are not one text each: refused, not flattened into four.
    with pytest.raises(ValueError, match=r"Expected input text of shape \(None,\).*\(2, 2\)"):
        server.respond({"instances": [["the cat", "sat"], ["a bad", "film"]]})


def test_masked_lm_predictions_lose_padded_masks(tmp_path, capsys):
    write_model_dir(tmp_path / "model", kind="masked_lm", seed=5)
    kbert.export(tmp_path / "model", tmp_path / "saved_models" / "mlm")
    texts = ["the [MASK] sat on the [MASK]", "no mask", "a [MASK] film"]
    _, served, _ = predict(["--model", os.fspath(tmp_path / "saved_models" / "mlm"), *texts], capsys)
    _, keras_rows, _ = predict(["--model", os.fspath(tmp_path / "model"), *texts], capsys)
    assert [row["mask_positions"] for row in served] == [[2, 6], [], [2]]
    for served_row, keras_row in zip(served, keras_rows):
        assert served_row["tokens"] == keras_row["tokens"]
        assert len(served_row["tokens"]) == len(served_row["mask_positions"])
        np.testing.assert_allclose(
            np.reshape(served_row["scores"], (-1, 5)), np.reshape(keras_row["scores"], (-1, 5)), atol=1e-5
        )


def test_mistakes_get_one_clear_line(pair_model, tmp_path, capsys):
    base_dir, model_dir = pair_model["base_dir"], pair_model["model_dir"]
    no_tab = tmp_path / "no_tab.tsv"
    no_tab.write_bytes(b"the cat\tsat\nno tab here\n")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"instances": [\n  "a",\n}')
    single_texts = tmp_path / "single.json"
    single_texts.write_text(json.dumps({"instances": ["only one text"]}))
    missing_pair = tmp_path / "missing_pair.json"
    missing_pair.write_text(json.dumps({"inputs": {"text": ["a"], "text_pair": [1.5]}}))
    cases = [
        (["--model", base_dir], "give texts, --input FILE or --request FILE"),
        (["--model", base_dir, "--input", os.fspath(no_tab)], f"{no_tab}, line 2: expected two tab-separated"),
        (["--model", model_dir, "--request", os.fspath(bad_json)], "--request needs a SavedModel"),
        (["--model", base_dir, "--request", os.fspath(bad_json)], f"{bad_json}, line 3: invalid JSON"),
        (
            ["--model", base_dir, "--request", os.fspath(single_texts)],
            "Expected instance 0 to be an object with the inputs ['text', 'text_pair']",
        ),
        (
            ["--model", base_dir, "--request", os.fspath(missing_pair)],
            "Signature 'serving_default' rejected the request",
        ),
        (["--model", os.fspath(tmp_path / "nothing"), "a"], "is neither a SavedModel nor a base directory"),
    ]
    for argv, message in cases:
        code, _, error = predict(argv, capsys)
        assert code == 2, argv
        assert message in error and error.startswith("kbert predict: error: "), error
        assert len(error.strip().splitlines()) == 1, error
