"""Tests of token classification: the CoNLL reader and pipeline, BertTokenClassifier, its task
(fine-tune, evaluate, predict) and its export, whose entities carry character offsets."""

import json
import os
import random

import keras
import numpy as np
import pytest
import tensorflow as tf

import kbert
from kbert import model_dir as model_directory
from kbert import tagging, tasks
from kbert.data import conll
from kbert.tasks.token_classification import entity_boundaries, words_with_offsets

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
VOCABULARY = list(dict.fromkeys(
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + "john mary smith paris rome lives in visited the cafe , . 中 文".split()
    + list("abcdefghijklmnopqrstuvwxyz") + [f"##{letter}" for letter in "abcdefghijklmnopqrstuvwxyz"]
))
TRAIN = """-DOCSTART- -X- O

John NNP B-PER
Smith NNP I-PER
lives VBZ O
in IN O
Paris NNP B-LOC
. . O


Mary NNP B-PER
visited VBD O
Rome NNP B-LOC
"""
# Accents, CJK, emoji, repeated and odd spaces, punctuation glued to words.
HARD_TEXTS = [
    "John Smith lives in Paris.",
    "Café  naïve, Mary!",
    "中文 visited  👍🏽 Rome 👨‍👩‍👧 john",
    "\t Mary\u00a0\u00a0smith \u3000 paris\u0301 ",
    "",
    "the " * 20,
]


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return os.fspath(path)


# === Reading files ===


def test_reader_reads_sentences_and_label_names(tmp_path):
    path = write(tmp_path / "train.txt", TRAIN)
    sentences = list(conll.read_sentences(path))
    assert sentences == [
        (3, ["John", "Smith", "lives", "in", "Paris", "."], ["B-PER", "I-PER", "O", "O", "B-LOC", "O"]),
        (11, ["Mary", "visited", "Rome"], ["B-PER", "O", "B-LOC"]),
    ]
    assert conll.read_label_names([path]) == ("O", "B-LOC", "B-PER", "I-PER")
    # A chosen tag column: the POS column as tags.
    assert list(conll.read_sentences(path, tag_column=1, scheme=None))[1][2] == ["NNP", "VBD", "NNP"]
    loaded = conll.load_tagged_sentences(path, data_dir=os.fspath(tmp_path / "tfds"), label_names=TAGS)
    assert loaded.num_examples == 2
    first = next(iter(loaded.dataset))
    assert first["tags"].numpy().tolist() == [1, 2, 0, 0, 3, 0]


@pytest.mark.parametrize(
    "train, validation, line, message",
    [
        (TRAIN.replace("in IN O", "in"), None, 6, "expected at least 2 columns separated by spaces or tabs"),
        (TRAIN, "Mary NNP B-PER\nwent VBD B-ORG\n", 2, "unknown tag 'B-ORG'"),
        (TRAIN.replace("Smith NNP I-PER", "Smith NNP I-LOC"), None, 4, "I-LOC follows B-PER"),
        (TRAIN.replace("Mary NNP B-PER", "Mary NNP I-PER"), None, 11, "I-PER follows the start"),
    ],
)
def test_bad_lines_are_named_by_file_and_line(tmp_path, train, validation, line, message):
    train_path = write(tmp_path / "train.txt", train)
    path = train_path if validation is None else write(tmp_path / "dev.txt", validation)
    with pytest.raises(ValueError) as error:
        label_names = conll.read_label_names([train_path])
        conll.load_tagged_sentences(
            path, split="validation", label_names=label_names, data_dir=os.fspath(tmp_path / "tfds")
        )
    assert str(error.value).startswith(f"{path}, line {line}: ")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_long_sentences_are_split_into_windows_with_first_piece_labels(tmp_path):
    path = write(tmp_path / "train.txt", "John B-PER\nSmiths I-PER\nlives O\nin O\nParis B-LOC\n")
    tokenizer = kbert.BertTokenizer(VOCABULARY)
    preprocessor = kbert.BertPreprocessor(tokenizer, sequence_length=6)
    batches = list(conll.tagging_dataset(
        path, preprocessor, batch_size=4, shuffle=False, label_names=TAGS,
        data_dir=os.fspath(tmp_path / "tfds"),
    ))
    x, labels, sample_weight = batches[0]
    ids = {token: index for index, token in enumerate(VOCABULARY)}
    # "Smiths" is smith ##s: 4 pieces fill the first window, "in Paris" is the second.
    assert x["token_ids"].numpy().tolist() == [
        [ids["[CLS]"], ids["john"], ids["smith"], ids["##s"], ids["lives"], ids["[SEP]"]],
        [ids["[CLS]"], ids["in"], ids["paris"], ids["[SEP]"], 0, 0],
    ]
    assert labels.numpy().tolist() == [[0, 1, 2, 0, 0, 0], [0, 0, 3, 0, 0, 0]]
    assert sample_weight.numpy().tolist() == [[0, 1, 1, 0, 1, 0], [0, 1, 1, 0, 0, 0]]
    assert conll.tags_of_batch(labels, sample_weight, TAGS) == [["B-PER", "I-PER", "O"], ["O", "B-LOC"]]


# === In-graph entities ===


def test_in_graph_entity_boundaries_match_tagging():
    generator = random.Random(0)
    label_names = ["O"] + [f"{prefix}-{kind}" for prefix in "BIES" for kind in ("PER", "LOC")]
    from kbert.tasks.token_classification import _tag_tables

    prefix_table, type_table, type_names = _tag_tables(label_names)
    outside_type = type_names.index("_")
    sequences = [[generator.randrange(len(label_names)) for _ in range(12)] for _ in range(300)]
    tag_ids = tf.constant(sequences)
    starts, ends = entity_boundaries(
        tf.gather(prefix_table, tag_ids), tf.gather(type_table, tag_ids), outside_type
    )
    for row, row_starts, row_ends in zip(sequences, starts.numpy(), ends.numpy()):
        spans = tagging.entity_spans([label_names[tag] for tag in row])
        assert [start for _, start, _ in spans] == list(np.flatnonzero(row_starts))
        assert [end - 1 for _, _, end in spans] == list(np.flatnonzero(row_ends))


def test_words_keep_their_offsets_and_pieces():
    tokenizer = kbert.BertTokenizer(VOCABULARY)
    _, pieces, starts, ends = words_with_offsets(tokenizer, tf.constant(HARD_TEXTS))
    # The same pieces as the tokenizer gives the whole text.
    assert pieces.merge_dims(1, 2).to_list() == tokenizer(HARD_TEXTS).to_list()
    for text, word_pieces, word_starts, word_ends in zip(
        HARD_TEXTS, pieces.to_list(), starts.to_list(), ends.to_list()
    ):
        encoded = text.encode("utf-8")
        for piece_ids, start, end in zip(word_pieces, word_starts, word_ends):
            assert tokenizer([encoded[start:end]]).to_list() == [piece_ids]


# === Model, task, export ===


def write_init(directory):
    keras.utils.set_random_seed(0)
    backbone = kbert.BertBackbone(
        vocabulary_size=len(VOCABULARY), num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=32,
    )
    model_directory.save(backbone, directory, VOCABULARY, tokenizer={"lowercase": True})


def spread_weights(model, seed=0):
    """Widely spread weights: BERT's initialisation tags every word alike, and a model must
    find entities on the hard texts for their offsets to be checked."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if not variable.path.endswith(("gamma", "beta")):  # LayerNorms stay the identity
            variable.assign(rng.normal(0.0, 0.3, variable.shape).astype("float32"))


def write_token_classifier_dir(directory, sequence_length=16):
    """A tiny token classifier's model directory (tags `TAGS`); returns the model."""
    write_init(directory)
    backbone = model_directory.load(directory)
    task = tasks.get("conll2003", {"label_names": TAGS, "num_classes": len(TAGS)})
    model = task.build_model(backbone)
    spread_weights(model)
    settings = dict(task.settings, scheme="IOB2", tag_column=-1)
    model_directory.save(
        model, directory, VOCABULARY, tokenizer={"lowercase": True, "sequence_length": sequence_length},
        task=settings,
    )
    return model


def test_finetune_evaluate_predict_and_export(tmp_path, capsys):
    from kbert import cli
    from kbert.export import check_serving_ops

    train = write(tmp_path / "train.txt", TRAIN * 4)
    write_init(tmp_path / "init")
    output = tmp_path / "tagger"
    assert cli.main([
        "finetune", "--task", "token_classification", "--train", train, "--tag-column", "2",
        "--init", os.fspath(tmp_path / "init"), "--output", os.fspath(output), "--epochs", "2",
        "--batch-size", "4", "--sequence-length", "16", "--learning-rate", "1e-2",
        "--data-dir", os.fspath(tmp_path / "tfds"), "--jit-compile", "false", "--quiet",
    ]) == 0
    history = json.loads((output / "history.json").read_text())
    assert history["loss"][-1] < history["loss"][0], history
    config = model_directory.read_config(output)
    assert config["task"]["label_names"] == ["O", "B-LOC", "B-PER", "I-PER"]
    assert config["task"]["tag_column"] == 2

    assert cli.main(["evaluate", "--model", os.fspath(output), "--data", train]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(evaluated) == {"precision", "recall", "f1", "support", "accuracy", "per_type"}
    assert evaluated["support"] == 4 * 4  # four entities in each copy of the file
    assert set(evaluated["per_type"]) <= {"PER", "LOC"}
    assert evaluated["per_type"]["PER"]["support"] == 8

    model = model_directory.load(output)
    spread_weights(model)
    model_directory.save(model, output, VOCABULARY, tokenizer=config["tokenizer"], task=config["task"])

    input_file = tmp_path / "input.txt"
    input_file.write_bytes(b"\n".join(text.encode("utf-8") for text in HARD_TEXTS) + b"\n")
    assert cli.main(["predict", "--model", os.fspath(output), "--input", os.fspath(input_file)]) == 0
    predicted = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(predicted) == len(HARD_TEXTS)
    assert sum(len(entities) for entities in predicted) > 5
    for text, entities in zip(HARD_TEXTS, predicted):
        for entity in entities:
            assert text[entity["start"] : entity["end"]] == entity["text"]
            assert entity["text"] == entity["text"].strip() and entity["label"] in ("PER", "LOC")

    version_dir = kbert.export(output, tmp_path / "saved_models" / "tagger")
    check_serving_ops(version_dir, "2.12")
    assert cli.main(["predict", "--model", os.fspath(version_dir), "--input", os.fspath(input_file)]) == 0
    served = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [[e["text"], e["label"], e["start"], e["end"]] for r in served for e in r] == [
        [e["text"], e["label"], e["start"], e["end"]] for r in predicted for e in r
    ]
    assert [e["score"] for r in served for e in r] == pytest.approx(
        [e["score"] for r in predicted for e in r], abs=1e-5
    )


@pytest.mark.backends
def test_token_classifier_loss_is_the_mean_over_first_pieces_and_it_rebuilds():
    keras.utils.set_random_seed(0)
    backbone = kbert.BertBackbone(
        vocabulary_size=40, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
        max_sequence_length=16,
    )
    model = kbert.BertTokenClassifier(backbone, num_classes=len(TAGS))
    model.compile(jit_compile=False)
    rng = np.random.default_rng(0)
    x = {
        "token_ids": rng.integers(5, 40, (4, 8)).astype("int32"),
        "segment_ids": np.zeros((4, 8), "int32"),
        "padding_mask": np.ones((4, 8), "int32"),
    }
    labels = rng.integers(0, len(TAGS), (4, 8)).astype("int32")
    sample_weight = (rng.random((4, 8)) < 0.4).astype("float32")
    history = model.fit(x, labels, sample_weight=sample_weight, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"]).all()

    logits = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), "float64")
    assert logits.shape == (4, 8, len(TAGS))
    log_probabilities = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    token_losses = -np.take_along_axis(log_probabilities, labels[..., None], axis=-1)[..., 0]
    expected = (token_losses * sample_weight).sum() / sample_weight.sum()
    evaluated = model.evaluate(x, labels, sample_weight=sample_weight, batch_size=4, return_dict=True, verbose=0)
    assert evaluated["loss"] == pytest.approx(expected, rel=1e-4)
    predicted = logits.argmax(-1)
    accuracy = ((predicted == labels) * sample_weight).sum() / sample_weight.sum()
    assert evaluated["accuracy"] == pytest.approx(accuracy, abs=1e-6)

    rebuilt = kbert.BertTokenClassifier.from_config(model.get_config())
    rebuilt.set_weights(model.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(rebuilt(x, training=False)), logits, atol=1e-5)
