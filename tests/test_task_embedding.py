"""Tests of the embedding task: export, pair files, losses, fine-tuning, evaluate, embed, search.

The export is served as TensorFlow Serving does (TF1 session, SignatureDef tensor names, in a
process without kbert) and must give the Keras model's embeddings; the losses are checked
against sentence-transformers' own loss classes on the same embeddings.
"""

import json
import os

import numpy as np
import pytest

import kbert
from kbert import config, retrieval, tasks, workflows
from kbert.data.pairs import read_text_pairs
from test_export import (
    BAD_TEXTS,
    ORDINARY_TEXTS,
    reference_inputs,
    serve_like_tensorflow_serving,
    strings,
    write_model_dir,
)

TEXTS = ORDINARY_TEXTS + list(BAD_TEXTS.values())
# Scored pairs in the STS benchmark's layout: genre, file, year, id, score, sentence1, sentence2.
STS_ROWS = [
    ("main-captions", "MSRvid", "2012test", "0001", "5.000", "the cat sat on the mat", "a cat sat on a mat"),
    ("main-captions", "MSRvid", "2012test", "0002", "0.500", "a very good film", "the dog was bad"),
    ("main-news", "headlines", "2013", "0003", "3.800", "not a bad movie", "a good movie"),
    ("main-news", "headlines", "2013", "0004", "1.200", "the dog sat", "a film is good"),
    ("main-forum", "answers", "2015", "0005", "4.600", "is it good?", "is it very good?"),
    ("main-forum", "answers", "2015", "0006", "0.000", "the mat", "very bad film"),
]
RETRIEVAL_ROWS = [
    ("cat on the mat", "the cat sat on the mat"),
    ("good film", "a very good film"),
    ("bad dog", "the dog was bad"),
    ("cat on the mat", "a cat sat on a mat"),
]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedder")
    model = write_model_dir(root / "model", kind="embedder", seed=4)
    version_dir = kbert.export(root / "model", root / "saved_models" / "embedder")
    return {"model": model, "model_dir": root / "model", "export": version_dir, "root": root}


def write_rows(path, rows, delimiter="\t"):
    path.write_text("".join(delimiter.join(row) + "\n" for row in rows), encoding="utf-8")
    return path


# === Export ===


def test_export_in_a_tf1_session_gives_the_keras_embeddings(embedder):
    inputs = reference_inputs(embedder["model_dir"], TEXTS)
    expected = np.asarray(embedder["model"].predict(inputs, verbose=0))
    responses = serve_like_tensorflow_serving(
        embedder["export"],
        [
            {"signature": "serving_default", "inputs": {"text": strings(TEXTS)}},
            {"signature": "serve_token_ids", "inputs": {k: v.tolist() for k, v in inputs.items()}},
            {"signature": "serving_default", "inputs": {"text": strings([])}},
        ],
    )
    for response in responses[:2]:
        assert response["method_name"] == "tensorflow/serving/predict"
        assert response["shapes"] == {"embeddings": [len(TEXTS), 16]}
        np.testing.assert_allclose(response["outputs"]["embeddings"], expected, atol=1e-5)
    # Normalised: unit vectors, and different texts point different ways.
    np.testing.assert_allclose(np.linalg.norm(expected, axis=-1), 1.0, atol=1e-5)
    assert np.abs(expected[0] @ expected[1]) < 0.99
    assert responses[2]["shapes"] == {"embeddings": [0, 16]}
    info_path = os.path.join(embedder["export"], "assets.extra", "kbert_export.json")
    with open(info_path, encoding="utf-8") as file:
        info = json.load(file)
    assert info["task"] == "embedding"
    assert set(info["signatures"]) == {"serving_default", "serve_token_ids"}


def test_predict_of_the_model_directory_equals_the_export(embedder):
    from kbert.commands.predict import _KerasPredictor, _SavedModelPredictor

    texts = [text.encode() for text in ORDINARY_TEXTS]
    from_keras = _KerasPredictor(embedder["model_dir"], top_k=5).predict(texts)
    from_export = _SavedModelPredictor(embedder["export"]).predict(texts)
    assert [sorted(row) for row in from_export] == [["embeddings"]] * len(texts)
    np.testing.assert_allclose(
        [row["embeddings"] for row in from_keras], [row["embeddings"] for row in from_export], atol=1e-5
    )


# === Pair files ===


def test_reading_pairs_leaves_the_csv_field_limit_and_refuses_a_field_beyond_it(tmp_path):
    import csv

    limit = csv.field_size_limit()
    read_text_pairs(str(write_rows(tmp_path / "pairs.tsv", RETRIEVAL_ROWS)))
    # The limit is the whole process's: the classification readers refuse fields beyond it.
    assert csv.field_size_limit() == limit
    long_field = write_rows(tmp_path / "long.tsv", RETRIEVAL_ROWS[:1] + [("a", "b" * (limit + 1))])
    with pytest.raises(ValueError, match=r"long.tsv, line 2: field larger than field limit"):
        read_text_pairs(str(long_field))


def test_pair_files_of_each_layout(tmp_path):
    # Rows may carry licence fields after the second sentence, as 197 of sts-train's do.
    rows = STS_ROWS + [STS_ROWS[0] + ("licence", "x")]
    sts = read_text_pairs(str(write_rows(tmp_path / "sts-dev.csv", rows)))
    assert sts.texts[1] == "a very good film" and sts.text_pairs[1] == "the dog was bad"
    np.testing.assert_allclose(sts.scores, [1.0, 0.1, 0.76, 0.24, 0.92, 0.0, 1.0])
    glue = tmp_path / "dev.tsv"
    write_rows(glue, [("index", "genre", "sentence1", "sentence2", "score"), ("0", "g", "a b", "c d", "2.5")])
    pairs = read_text_pairs(str(glue))
    assert (pairs.texts, pairs.text_pairs, pairs.scores) == (["a b"], ["c d"], [0.5])
    plain = read_text_pairs(str(write_rows(tmp_path / "pairs.tsv", RETRIEVAL_ROWS)))
    assert plain.scores is None and plain.text_pairs[2] == "the dog was bad"
    named = tmp_path / "named.csv"
    write_rows(named, [("q", "label", "p"), ("x y", "7", "z")], delimiter=",")
    pairs = read_text_pairs(str(named), text_columns=["q", "p"], label_column="label", score_range=(0, 10))
    assert (pairs.texts, pairs.text_pairs, pairs.scores) == (["x y"], ["z"], [0.7])


@pytest.mark.parametrize(
    "row, message",
    [
        (STS_ROWS[1][:4] + ("", "a", "b"), "line 2: expected a score, found an empty field"),
        (STS_ROWS[1][:4] + ("5.5", "a", "b"), "line 2: score 5.5 lies outside the declared range 0 to 5"),
        (STS_ROWS[1][:4] + ("-1", "a", "b"), "line 2: score -1 lies outside"),
        (STS_ROWS[1][:4] + ("high", "a", "b"), "line 2: expected a score, found 'high'"),
        (STS_ROWS[1][:6], "line 2: expected a text in column 6"),
        (STS_ROWS[1][:4] + ("2", "a", " "), "line 2: expected two texts, found an empty one"),
    ],
)
def test_bad_pair_rows_are_one_line_naming_file_and_line(tmp_path, row, message):
    path = write_rows(tmp_path / "sts-train.csv", [STS_ROWS[0], row])
    with pytest.raises(ValueError) as error:
        read_text_pairs(str(path))
    assert str(error.value).startswith(f"{path}, ") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_a_missing_score_in_a_three_column_file_names_the_line(tmp_path):
    path = write_rows(tmp_path / "scored.tsv", [("a", "b", "1"), ("c", "d")])
    with pytest.raises(ValueError, match=r"scored.tsv, line 2: expected a score in column 2"):
        read_text_pairs(str(path))
    unscored = write_rows(tmp_path / "pairs.tsv", [("a", "b"), ("c", "d")])
    with pytest.raises(ValueError, match=r"pairs.tsv, line 1: expected scored pairs, found no score column"):
        read_text_pairs(str(unscored), scored=True)


# === Losses ===


def stacked(first, second):
    return np.concatenate([first, second]).astype("float32")


def test_losses_equal_sentence_transformers_on_the_same_embeddings():
    import torch
    from sentence_transformers import losses as st_losses

    from kbert import losses

    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    scores = rng.uniform(0, 1, 6).astype("float32")
    embeddings = [torch.tensor(first, dtype=torch.float32), torch.tensor(second, dtype=torch.float32)]
    labels = torch.tensor(scores)
    references = {
        "cosent": st_losses.CoSENTLoss(None, scale=20.0),
        "cosine_mse": st_losses.CosineSimilarityLoss(None),
        "multiple_negatives_ranking": st_losses.MultipleNegativesRankingLoss(None, scale=20.0),
    }
    for objective, reference in references.items():
        expected = float(reference.compute_loss_from_embeddings(embeddings, labels))
        loss = losses.PairEmbeddingLoss(objective)(scores, stacked(first, second))
        np.testing.assert_allclose(float(loss), expected, rtol=1e-5, err_msg=objective)


# === Fine-tuning, evaluate, embed and search ===


def finetune(root, init, train, validation, task, objective=None, epochs=2):
    return workflows.run_finetuning(
        config.ModelConfig(init=str(init), dropout=0.0),
        config.DataConfig(train=str(train), validation=validation and str(validation), task=task, batch_size=3,
                          sequence_length=16, objective=objective),
        config.OptimizerConfig(learning_rate=1e-3, warmup_ratio=0.0),
        config.RunConfig(output_dir=str(root), epochs=epochs, jit_compile=False, verbose=0),
    )


def test_pair_batches_are_padded_to_length_buckets(embedder, tmp_path):
    from kbert.tasks.embedding import pair_dataset
    from kbert.tokenizer import BertPreprocessor

    long_text = " ".join(["cat"] * 40)  # 42 pieces packed: the bucket of 64
    rows = STS_ROWS + [("main-news", "headlines", "2013", "0007", "2.0", long_text, "a dog")]
    pairs = read_text_pairs(str(write_rows(tmp_path / "pairs.csv", rows)))
    preprocessor = BertPreprocessor(kbert.BertTokenizer.from_model_dir(embedder["model_dir"]), sequence_length=128)
    batches = list(pair_dataset(pairs, preprocessor, batch_size=2))
    lengths = [int(x["token_ids"].shape[1]) for x, _ in batches]
    # The first three batches' longest text packs to at most 9 pieces; the last holds the long one.
    assert lengths == [16, 16, 16, 64]
    for x, _ in batches:  # the padding is padding: mean pooling reads only real tokens
        assert int(np.asarray(x["padding_mask"]).sum(axis=1).max()) <= 42


def test_finetuning_on_scored_pairs_lowers_the_cosent_loss_and_evaluates(embedder, tmp_path):
    train = write_rows(tmp_path / "sts-train.csv", STS_ROWS)
    history, metrics = finetune(tmp_path / "sts", embedder["model_dir"], train, train, "sts")
    losses = history.history["loss"] if hasattr(history, "history") else history["loss"]
    assert losses[-1] < losses[0]
    saved = json.loads((tmp_path / "sts" / "config.json").read_text())
    assert saved["model"]["class_name"] == "BertTextEmbedder"
    assert saved["task"]["name"] == "sts" and saved["task"]["objective"] == "cosent"
    # The evaluation is the STS protocol on the saved model, the same as at the end of training.
    evaluated = workflows.evaluate(str(tmp_path / "sts"), str(train), batch_size=4)
    assert evaluated["spearman"] == pytest.approx(metrics["spearman"], abs=1e-4)
    model = kbert.load(str(tmp_path / "sts"))
    inputs = reference_inputs(tmp_path / "sts", [row[5] for row in STS_ROWS] + [row[6] for row in STS_ROWS])
    vectors = np.asarray(model.predict(inputs, verbose=0))
    expected = retrieval.similarity_correlations(vectors[:6], vectors[6:], [float(r[4]) for r in STS_ROWS])
    assert evaluated["spearman"] == pytest.approx(expected["spearman"], abs=1e-4)
    assert evaluated["pearson"] == pytest.approx(expected["pearson"], abs=1e-4)


def test_evaluate_on_query_passage_pairs_ranks_the_whole_corpus(embedder, tmp_path):
    pairs = write_rows(tmp_path / "pairs.tsv", RETRIEVAL_ROWS)
    metrics = workflows.evaluate(str(embedder["model_dir"]), str(pairs), batch_size=2)
    # Three distinct queries (one with two relevant passages) against four passages.
    inputs = reference_inputs(embedder["model_dir"], ["cat on the mat", "good film", "bad dog"])
    queries = np.asarray(embedder["model"].predict(inputs, verbose=0))
    passages = reference_inputs(embedder["model_dir"], [passage for _, passage in RETRIEVAL_ROWS])
    corpus = np.asarray(embedder["model"].predict(passages, verbose=0))
    expected = retrieval.retrieval_metrics(queries, corpus, [{0, 3}, {1}, {2}])
    assert metrics["num_queries"] == 3 and metrics["corpus_size"] == 4
    for name in ("recall@1", "recall@5", "recall@10", "mrr@10"):
        assert metrics[name] == pytest.approx(expected[name], abs=1e-4), name


def test_finetuning_on_anchor_positive_pairs_uses_in_batch_negatives(embedder, tmp_path):
    pairs = write_rows(tmp_path / "pairs.tsv", RETRIEVAL_ROWS)
    # A wrong loss for the pairs stops before any training.
    with pytest.raises(ValueError, match="objective='cosent'"):
        finetune(tmp_path / "bad", embedder["model_dir"], pairs, None, "retrieval", objective="cosent")
    history, _ = finetune(tmp_path / "retriever", embedder["model_dir"], pairs, None, "retrieval", epochs=1)
    losses = history.history["loss"] if hasattr(history, "history") else history["loss"]
    assert np.isfinite(losses).all() and losses[0] > 0
    saved = json.loads((tmp_path / "retriever" / "config.json").read_text())
    assert saved["task"]["name"] == "retrieval"
    assert saved["task"]["objective"] == "multiple_negatives_ranking"


def test_the_embedding_task_and_its_aliases_are_registered():
    assert tasks.get("sts").scored() and tasks.get("retrieval").scored() is False
    assert tasks.get("embedding").model_class_name == "BertTextEmbedder"
    # GLUE's STS-B stays the regression task of a classifier.
    assert tasks.get("stsb").name == "classification"


CORPUS = ["the cat sat on the mat", "a very good film", "the dog was bad", "is it good?", "film"]


def test_embed_writes_one_row_per_line_from_the_model_directory_and_the_export(embedder, tmp_path, capsys):
    from kbert import cli

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(CORPUS + [""]) + "\n", encoding="utf-8")
    for name, model in (("keras", embedder["model_dir"]), ("export", embedder["export"])):
        output = tmp_path / f"{name}.npy"
        argv = ["embed", "--model", str(model), "--input", str(texts), "--output", str(output),
                "--batch-size", "4"]
        assert cli.main(argv) == 0
    assert "embedded 6/6 texts (100%)" in capsys.readouterr().err
    keras_vectors, export_vectors = np.load(tmp_path / "keras.npy"), np.load(tmp_path / "export.npy")
    assert keras_vectors.shape == (6, 16) and keras_vectors.dtype == np.float32
    np.testing.assert_allclose(keras_vectors, export_vectors, atol=1e-5)
    expected = embedder["model"].predict(reference_inputs(embedder["model_dir"], CORPUS + [""]), verbose=0)
    np.testing.assert_allclose(keras_vectors, expected, atol=1e-5)


def test_search_returns_the_corpus_in_order_of_similarity(embedder, tmp_path, capsys):
    from kbert import cli

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    query = "a very good film"
    argv = ["search", "--model", str(embedder["model_dir"]), "--corpus", str(corpus), query,
            "--top-k", "5", "--json"]
    assert cli.main(argv) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    matches = json.loads(line)["matches"]
    vectors = embedder["model"].predict(reference_inputs(embedder["model_dir"], CORPUS + [query]), verbose=0)
    scores = vectors[:-1] @ vectors[-1]
    # The query itself is in the corpus (line 2): first, with cosine similarity 1.
    assert matches[0]["line"] == 2 and matches[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert [match["line"] - 1 for match in matches] == list(np.argsort(-scores, kind="stable"))
    np.testing.assert_allclose([match["score"] for match in matches], np.sort(scores)[::-1], atol=1e-5)
    assert [match["text"] for match in matches] == [CORPUS[match["line"] - 1] for match in matches]


def test_search_of_an_empty_corpus_is_one_line_naming_the_file(embedder, tmp_path, capsys):
    from kbert import cli

    corpus = tmp_path / "empty.txt"
    corpus.write_text("", encoding="utf-8")
    assert cli.main(["search", "--model", str(embedder["model_dir"]), "--corpus", str(corpus), "x"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"kbert search: error: {corpus}, line 1: expected a text per line, found an empty file"
