"""The classification pipeline: packing, length bucketing, labels, sharding."""

import numpy as np
import pytest
import tensorflow as tf

from kbert.data import classification_dataset, default_bucket_boundaries, load_labeled_texts
from kbert.tokenizer import SPECIAL_TOKENS, BertPreprocessor, BertTokenizer
from conftest import tiny_backbone

TINY_VOCABULARY = list(SPECIAL_TOKENS) + ["a", "good", "bad", "film", "plot", ".", "very"]


@pytest.fixture(scope="module")
def preprocessor(minilm_path):
    return BertPreprocessor(BertTokenizer(str(minilm_path / "vocab.txt")), sequence_length=128)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _padded_positions_per_batch(dataset, num_batches=300):
    padded = []
    shapes = set()
    # A few hundred shuffled batches measure the same average as the whole epoch.
    for x, _ in dataset.take(num_batches):
        padding_mask = x["padding_mask"].numpy()
        padded.append(padding_mask.size - padding_mask.sum())
        shapes.add(padding_mask.shape[1])
    return np.mean(padded), shapes


def test_bucketing_cuts_padding_at_least_threefold_on_sst2(shared_data, preprocessor, data_dir):
    train = load_labeled_texts(str(shared_data / "glue" / "SST-2" / "train.tsv"), task="sst2", data_dir=data_dir)
    bucketed, bucket_shapes = _padded_positions_per_batch(
        classification_dataset(train, preprocessor, batch_size=32, seed=0)
    )
    fixed, fixed_shapes = _padded_positions_per_batch(
        classification_dataset(train, preprocessor, batch_size=32, bucket_boundaries=None, seed=0)
    )
    assert fixed_shapes == {128}
    assert bucket_shapes <= set(default_bucket_boundaries(128)) == {16, 32, 64, 128}
    assert fixed / bucketed >= 3


def test_batches_hold_every_example_once_with_its_label(tmp_path, preprocessor):
    rows = [(f"sentence number {i} " + "word " * (i % 40), i % 2) for i in range(100)]
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows), encoding="utf-8")
    dataset = classification_dataset(
        str(path), preprocessor, batch_size=8, task="sst2", seed=1, data_dir=str(tmp_path / "tfds")
    )
    seen = {}
    for x, labels in dataset:
        assert x["token_ids"].dtype == tf.int32 and labels.dtype == tf.int32
        for token_ids, padding_mask, label in zip(x["token_ids"].numpy(), x["padding_mask"].numpy(), labels.numpy()):
            text = preprocessor.tokenizer.detokenize(token_ids[1 : padding_mask.sum() - 1]).numpy().decode()
            seen[text] = label
    assert len(seen) == 100
    assert all(seen[text.strip()] == label for text, label in rows)


def test_sentence_pairs_are_packed_like_the_preprocessor(shared_data, preprocessor, data_dir):
    rte = load_labeled_texts(str(shared_data / "glue" / "RTE"), split="validation", task="rte", data_dir=data_dir)
    dataset = classification_dataset(rte, preprocessor, batch_size=277, shuffle=False, bucket_boundaries=None)
    x, labels = next(iter(dataset))
    examples = list(rte.dataset.as_numpy_iterator())
    expected = preprocessor(
        tf.constant([e["text"] for e in examples]), tf.constant([e["text_pair"] for e in examples])
    )
    for key in ("token_ids", "segment_ids", "padding_mask"):
        np.testing.assert_array_equal(x[key].numpy(), expected[key].numpy())
    np.testing.assert_array_equal(labels.numpy(), [e["label"] for e in examples])


def test_bucket_boundaries_given_and_fixed_shapes(tmp_path):
    preprocessor = BertPreprocessor(BertTokenizer(TINY_VOCABULARY), sequence_length=12)
    texts = ["a good film", "a very very very very very very very very very bad plot", "bad"]
    examples = tf.data.Dataset.from_tensor_slices({"text": texts * 4, "label": [1, 0, 0] * 4})
    dataset = classification_dataset(
        examples, preprocessor, batch_size=4, bucket_boundaries=[6], shuffle=False
    )
    shapes = sorted(x["token_ids"].shape[1] for x, _ in dataset)
    assert shapes == [6, 6, 12]  # 8 short examples in two batches of 6, 4 long ones cut to 12
    fixed = classification_dataset(
        examples, preprocessor, batch_size=5, bucket_boundaries=None, drop_remainder=True
    )
    assert fixed.element_spec[0]["token_ids"].shape.as_list() == [5, 12]
    assert len(list(fixed)) == 2


def test_regression_labels_stay_float(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("sentence1,sentence2,score\na good film,a bad film,1.5\na plot,very bad,4.0\n", encoding="utf-8")
    preprocessor = BertPreprocessor(BertTokenizer(TINY_VOCABULARY), sequence_length=10)
    dataset = classification_dataset(
        str(path), preprocessor, batch_size=2, label_column="score", regression=True, shuffle=False,
        data_dir=str(tmp_path / "tfds"),
    )
    x, labels = next(iter(dataset))
    assert labels.dtype == tf.float32 and labels.numpy().tolist() == [1.5, 4.0]
    assert x["segment_ids"].numpy()[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 0]


def test_named_tfds_dataset_through_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    preprocessor = BertPreprocessor(BertTokenizer(TINY_VOCABULARY), sequence_length=16)
    with tfds.testing.mock_data(num_examples=12):
        dataset = classification_dataset(
            "glue/rte", preprocessor, batch_size=4, split="validation", data_dir=str(tmp_path)
        )
        batches = list(dataset.take(3))
    assert len(batches) == 3
    x, labels = batches[0]
    assert set(x) == {"token_ids", "segment_ids", "padding_mask"}
    assert np.all(x["token_ids"].numpy()[:, 0] == preprocessor.tokenizer.cls_token_id)
    assert set(labels.numpy().tolist()) <= {0, 1}


def test_each_input_pipeline_reads_its_share():
    preprocessor = BertPreprocessor(BertTokenizer(TINY_VOCABULARY), sequence_length=8)
    examples = tf.data.Dataset.from_tensor_slices({"text": ["a film"] * 30, "label": list(range(30))})
    labels = []
    for index in range(3):
        context = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=index, num_replicas_in_sync=6)
        dataset = classification_dataset(examples, preprocessor, batch_size=12, input_context=context)
        batches = [batch_labels.numpy().tolist() for _, batch_labels in dataset]
        assert max(len(batch) for batch in batches) == 2  # 12 over 6 replicas
        labels.append(sorted(sum(batches, [])))
    assert labels[0] == list(range(0, 30, 3)) and sorted(sum(labels, [])) == list(range(30))


def test_options_for_a_labeled_texts_are_refused():
    preprocessor = BertPreprocessor(BertTokenizer(TINY_VOCABULARY), sequence_length=8)
    dataset = tf.data.Dataset.from_tensor_slices({"text": ["a"], "label": [0]})
    with pytest.raises(ValueError, match="Expected label_names"):
        load_labeled_texts(dataset)
    examples = load_labeled_texts(dataset, label_names=["no", "yes"])
    assert examples.num_classes == 2
    with pytest.raises(ValueError, match="text_columns"):
        classification_dataset(examples, preprocessor, batch_size=2, text_columns=["x"])


def test_trains_bert_classifier():
    import kbert

    tokenizer = BertTokenizer(TINY_VOCABULARY)
    preprocessor = BertPreprocessor(tokenizer, sequence_length=16)
    examples = tf.data.Dataset.from_tensor_slices(
        {"text": ["a good film", "a bad plot"] * 8, "label": [1, 0] * 8}
    )
    dataset = classification_dataset(examples, preprocessor, batch_size=4, seed=0)
    backbone = tiny_backbone(
        tokenizer.vocabulary_size, 16, num_layers=1, hidden_dim=8, intermediate_dim=16
    )
    classifier = kbert.BertClassifier(backbone, num_classes=2)
    # Eager steps: tracing a training step costs more than this test needs to show.
    classifier.compile(run_eagerly=True)
    history = classifier.fit(dataset.take(2), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_pipeline_runs_without_tf_data_autotuning():
    # See kbert.data.sources.without_autotuning: a used iterator is deleted without waiting.
    preprocessor = BertPreprocessor(BertTokenizer(TINY_VOCABULARY), sequence_length=16)
    examples = tf.data.Dataset.from_tensor_slices({"text": ["a good film", "a bad plot"], "label": [1, 0]})
    dataset = classification_dataset(examples, preprocessor, batch_size=2, seed=0)
    assert dataset.options().autotune.enabled is False
    assert next(iter(dataset))[1].shape == (2,)
