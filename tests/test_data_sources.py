"""Data sources: kbert's TFDS builders for local files, named TFDS datasets, the GLUE table."""

import json
import logging
import os
import subprocess
import sys
import textwrap
import time

import pytest
import tensorflow as tf

from conftest import PROJECT_ROOT
from kbert.data import GLUE_TASKS, glue_task, load_documents, load_labeled_texts


def _write(path, text, encoding="utf-8"):
    path.write_bytes(text if isinstance(text, bytes) else text.encode(encoding))
    return str(path)


def _examples(labeled_texts):
    return [
        {key: value.decode() if isinstance(value, bytes) else value for key, value in example.items()}
        for example in labeled_texts.dataset.as_numpy_iterator()
    ]


# === Text corpora ===


def test_text_corpus_splits_documents_on_blank_lines_and_titles(tmp_path):
    corpus = _write(
        tmp_path / "corpus.txt",
        " = First article = \n \n First paragraph .\n Still first .\n\n"
        " = = Section = = \n \n Section text .\n\nLast document\n",
    )
    documents = load_documents(corpus, data_dir=str(tmp_path / "tfds"))
    assert [d.decode() for d in documents.as_numpy_iterator()] == [
        "First article\nFirst paragraph .\nStill first .",
        "Section\nSection text .",
        "Last document",
    ]


def test_local_files_are_prepared_once_and_reused(tmp_path, monkeypatch):
    from kbert.data import builders

    corpus = _write(tmp_path / "corpus.txt", "one document\n\nanother one\n")
    data_dir = str(tmp_path / "tfds")
    first = list(load_documents(corpus, data_dir=data_dir).as_numpy_iterator())

    def must_not_run(*args, **kwargs):
        raise AssertionError("the corpus was prepared a second time")

    monkeypatch.setattr(builders.TextCorpus, "_generate_examples", must_not_run)
    monkeypatch.setattr(builders, "read_documents", must_not_run)
    second = list(load_documents(corpus, data_dir=data_dir).as_numpy_iterator())
    assert second == first == [b"one document", b"another one"]
    assert len(os.listdir(os.path.join(data_dir, "text_corpus"))) == 1

    # An edited file is a different dataset, prepared anew.
    monkeypatch.undo()
    _write(tmp_path / "corpus.txt", "changed text\n")
    assert list(load_documents(corpus, data_dir=data_dir).as_numpy_iterator()) == [b"changed text"]
    assert len(os.listdir(os.path.join(data_dir, "text_corpus"))) == 2


def test_an_edit_that_keeps_size_and_mtime_is_read(tmp_path):
    corpus = tmp_path / "corpus.txt"
    _write(corpus, "first text\n")
    data_dir = str(tmp_path / "tfds")
    assert list(load_documents(str(corpus), data_dir=data_dir).as_numpy_iterator()) == [b"first text"]
    stat = os.stat(corpus)
    _write(corpus, "other text\n")
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(corpus).st_size == stat.st_size
    assert list(load_documents(str(corpus), data_dir=data_dir).as_numpy_iterator()) == [b"other text"]


def test_several_text_files_and_splits(tmp_path):
    first = _write(tmp_path / "a.txt", "alpha\n")
    second = _write(tmp_path / "b.txt", "beta\n\ngamma\n")
    held_out = _write(tmp_path / "c.txt", "delta\n")
    files = {"train": [first, second], "validation": held_out}
    data_dir = str(tmp_path / "tfds")
    train = load_documents(files, split="train", data_dir=data_dir)
    assert list(train.as_numpy_iterator()) == [b"alpha", b"beta", b"gamma"]
    validation = load_documents(files, split="validation", data_dir=data_dir)
    assert list(validation.as_numpy_iterator()) == [b"delta"]
    with pytest.raises(ValueError, match="no split 'test'"):
        load_documents(files, split="test", data_dir=data_dir)


def test_real_corpus_round_trips(shared_data, tmp_path):
    path = shared_data / "corpus" / "wikitext2_valid.txt"
    documents = [d.decode() for d in load_documents(str(path), data_dir=str(tmp_path)).as_numpy_iterator()]
    assert documents[0].startswith("Homarus gammarus\nHomarus gammarus , known as the European lobster")
    # Every line of the file is in a document, in order: headings as their title, text as is.
    expected = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("= "):
            expected.append(line.strip().strip("= ").strip())
        elif line.strip():
            expected.append(line.strip())
    assert [line for document in documents for line in document.split("\n")] == expected


# === Delimited classification files ===


def test_tsv_with_header_and_names(tmp_path):
    path = _write(tmp_path / "train.tsv", "sentence\tlabel\na fine film\t1\n\"quoted\" text\t0\n")
    data = load_labeled_texts(path, data_dir=str(tmp_path / "tfds"), label_names=["negative", "positive"])
    assert data.label_names == ("negative", "positive") and data.num_classes == 2
    assert data.num_examples == 2 and not data.has_text_pair
    assert _examples(data) == [{"text": "a fine film", "label": 1}, {"text": '"quoted" text', "label": 0}]


def test_csv_without_header_by_index_with_string_labels(tmp_path):
    path = _write(
        tmp_path / "pairs.csv",
        'x,"first, with a comma",second,yes\n'
        'y,"a ""quoted"" word",other,no\n',
    )
    data = load_labeled_texts(path, text_columns=[1, 2], label_column=3, data_dir=str(tmp_path / "tfds"))
    assert data.label_names == ("no", "yes")  # read from the file, sorted
    assert data.has_text_pair
    assert _examples(data) == [
        {"text": "first, with a comma", "text_pair": "second", "label": 1},
        {"text": 'a "quoted" word', "text_pair": "other", "label": 0},
    ]


def test_integer_labels_sort_numerically_and_regression_reads_floats(tmp_path):
    path = _write(tmp_path / "stars.tsv", "text\tlabel\na\t10\nb\t2\nc\t1\n")
    data = load_labeled_texts(path, data_dir=str(tmp_path / "tfds"))
    assert data.label_names == ("1", "2", "10")
    assert [example["label"] for example in _examples(data)] == [2, 1, 0]

    scores = _write(tmp_path / "scores.tsv", "sentence1\tsentence2\tscore\na\tb\t3.5\nc\td\t0\n")
    data = load_labeled_texts(scores, label_column="score", regression=True, data_dir=str(tmp_path / "tfds"))
    assert data.label_names is None and data.num_classes == 1
    labels = [example["label"] for example in data.dataset.as_numpy_iterator()]
    assert labels == [3.5, 0.0]
    assert data.dataset.element_spec["label"].dtype == tf.float32


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.tsv", b"", r"empty\.tsv, line 1: the file is empty"),
        (
            "binary.tsv",
            b"sentence\tlabel\ngood\t1\nbad \xff\xfe bytes\t0\n",
            r"binary\.tsv, line 3: bytes that are not UTF-8 \(0xff at column 5\)",
        ),
        (
            "short.tsv",
            b"sentence\tlabel\ngood\t1\nno label column here\n",
            r"short\.tsv, line 3: expected at least 2 columns separated by tabs, found 1",
        ),
        ("missing.tsv", b"sentence\tlabel\ngood\t1\nbad\t \n", r"missing\.tsv, line 3: missing label"),
        (
            "unknown.tsv",
            b"sentence\tlabel\ngood\t1\nbad\tmaybe\n",
            r"unknown\.tsv, line 3: unknown label 'maybe'; expected one of: negative, positive",
        ),
        (
            "header.tsv",
            b"text\tlabel\ngood\t1\n",
            r"header\.tsv, line 1: no column named 'sentence' in the header",
        ),
        (
            "unclosed.csv",
            b'sentence,label\ngood,1\n"never closed,0\nbad,0\n"worse",1\n',
            r"unclosed\.csv, line 3: unbalanced quote",
        ),
        (
            "unclosed_at_end.csv",
            b'sentence,label\ngood,1\nbad,"0\n',
            r"unclosed_at_end\.csv, line 3: unbalanced quote",
        ),
        (
            "after_quote.csv",
            b'sentence,label\ngood,1\n"quoted" and more,0\n',
            r"after_quote\.csv, line 3: ',' expected after '\"'",
        ),
        (
            "line_break.csv",
            b'sentence,label\n"two\nlines",1\n',
            r"line_break\.csv, line 2: unbalanced quote",
        ),
        (
            "duplicate.tsv",
            b"sentence\tlabel\tsentence\ngood\t1\tbad\n",
            r"duplicate\.tsv, line 1: the header names 2 columns 'sentence' \(0-based indexes 0, 2\)",
        ),
    ],
)
def test_bad_delimited_files_name_file_and_line(tmp_path, name, content, message):
    path = _write(tmp_path / name, content)
    with pytest.raises(ValueError, match=message) as error:
        load_labeled_texts(path, task="sst2", data_dir=str(tmp_path / "tfds"))
    assert "\n" not in str(error.value)
    assert not list((tmp_path / "tfds").glob("delimited_file/*/1.0.0"))  # nothing half-prepared


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.txt", b"", r"empty\.txt, line 1: the file is empty"),
        ("blank.txt", b"\n  \n\n", r"blank\.txt, line 1: the file is empty"),
        ("binary.txt", b"fine\n\nfine again\n\x80oops\n", r"binary\.txt, line 4: bytes that are not UTF-8"),
    ],
)
def test_bad_text_files_name_file_and_line(tmp_path, name, content, message):
    path = _write(tmp_path / name, content)
    with pytest.raises(ValueError, match=message):
        load_documents(path, data_dir=str(tmp_path / "tfds"))


def test_an_unbalanced_quote_stops_label_inference_too(tmp_path):
    rows = [f"text number {index},{index % 2}" for index in range(100)]
    rows[40] = '"the action is stilted,0'
    path = _write(tmp_path / "reviews.csv", "text,label\n" + "\n".join(rows) + '\n"last",1\n')
    with pytest.raises(ValueError, match=r"reviews\.csv, line 42: unbalanced quote"):
        load_labeled_texts(path, data_dir=str(tmp_path / "tfds"))


def test_an_integer_label_is_a_name_where_the_names_are_integers(tmp_path):
    path = _write(tmp_path / "dev.tsv", "text\tlabel\na\t3\nb\t0\nc\t2\n")
    with pytest.raises(ValueError, match=r"dev\.tsv, line 4: unknown label '2'; expected one of: 0, 1, 3$"):
        load_labeled_texts(path, label_names=["0", "1", "3"], data_dir=str(tmp_path / "tfds"))
    # Names that are not integers are still indexed by integer labels, as GLUE's are.
    data = load_labeled_texts(path, label_names=["a", "b", "c", "d"], data_dir=str(tmp_path / "tfds"))
    assert [example["label"] for example in _examples(data)] == [3, 0, 2]


def test_line_endings_mixed_in_one_file(tmp_path):
    path = _write(tmp_path / "mixed.csv", 'sentence,label\r\ngood,1\rbad,0\n"a, b",1\r\n\r\nlast,0')
    data = load_labeled_texts(path, data_dir=str(tmp_path / "tfds"))
    assert [example["text"] for example in _examples(data)] == ["good", "bad", "a, b", "last"]


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.txt"):
        load_documents(str(tmp_path / "nowhere.txt"), data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"nowhere\.tsv"):
        load_labeled_texts(str(tmp_path / "nowhere.tsv"), task="sst2", data_dir=str(tmp_path))


def test_skipped_rows_are_counted_and_reported(tmp_path, caplog):
    path = _write(
        tmp_path / "noisy.tsv",
        "sentence\tlabel\ngood\t1\n\nno label\nbad\t0\nworse\tmaybe\n",
    )
    with caplog.at_level(logging.WARNING, logger="kbert"):
        data = load_labeled_texts(path, task="sst2", skip_bad_rows=True, data_dir=str(tmp_path / "tfds"))
    assert [example["text"] for example in _examples(data)] == ["good", "bad"]
    assert "skipped 3 rows" in caplog.text and "noisy.tsv, line 3: blank line" in caplog.text
    # Reported again when the prepared data is reused.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kbert"):
        load_labeled_texts(path, task="sst2", skip_bad_rows=True, data_dir=str(tmp_path / "tfds"))
    assert "3 rows were skipped" in caplog.text


# === GLUE ===


# Each process waits at a barrier of files before every round, so that both start preparing
# the same new file together.
_PREPARE_IN_ROUNDS = textwrap.dedent(
    """
    import json, os, sys, time
    from kbert.data import load_labeled_texts

    directory, name, num_rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for round_index in range(num_rounds):
        barrier = os.path.join(directory, f"barrier{round_index}")
        os.makedirs(barrier, exist_ok=True)
        open(os.path.join(barrier, name), "w").close()
        while len(os.listdir(barrier)) < 2:
            time.sleep(0.001)
        data = load_labeled_texts(
            os.path.join(directory, f"round{round_index}.tsv"),
            data_dir=os.path.join(directory, "tfds"),
        )
        texts = [example["text"].decode() for example in data.dataset.as_numpy_iterator()]
        print("texts:", json.dumps(texts), flush=True)
    """
)


def test_two_processes_preparing_the_same_new_file(tmp_path):
    num_rounds = 4
    expected = []
    for round_index in range(num_rounds):
        texts = [f"round {round_index} row {index}" for index in range(2000)]
        rows = "".join(f"{text}\t{index % 2}\n" for index, text in enumerate(texts))
        _write(tmp_path / f"round{round_index}.tsv", "text\tlabel\n" + rows)
        expected.append(texts)
    environment = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    processes = []
    for name in ("first", "second"):
        # Output goes to files: a process blocked on a full pipe would hold the other at the
        # barrier.
        with open(tmp_path / f"{name}.out", "w") as out, open(tmp_path / f"{name}.err", "w") as err:
            command = [sys.executable, "-c", _PREPARE_IN_ROUNDS, str(tmp_path), name, str(num_rounds)]
            processes.append(subprocess.Popen(command, stdout=out, stderr=err, env=environment))
    # A process that fails leaves the other waiting at the next barrier: stop it then.
    deadline = time.monotonic() + 300
    while any(process.poll() is None for process in processes) and time.monotonic() < deadline:
        if any(process.poll() for process in processes):
            break
        time.sleep(0.1)
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
    errors = {
        name: (tmp_path / f"{name}.err").read_text().strip().splitlines()[-1:]
        for name, process in zip(("first", "second"), processes)
        if process.returncode != 0
    }
    assert not errors
    for name in ("first", "second"):
        lines = (tmp_path / f"{name}.out").read_text().splitlines()
        lines = [line.removeprefix("texts: ") for line in lines if line.startswith("texts: ")]
        assert [json.loads(line) for line in lines] == expected
    # One dataset per file, prepared once.
    assert len(list((tmp_path / "tfds").glob("delimited_file/*/1.0.0"))) == num_rounds


def test_glue_table_covers_every_task():
    assert set(GLUE_TASKS) == {"sst2", "cola", "mrpc", "rte", "qnli", "stsb", "qqp", "mnli", "wnli"}
    assert glue_task("SST-2") is glue_task("glue/sst2") is GLUE_TASKS["sst2"]
    assert glue_task("stsb").num_classes == 1 and glue_task("stsb").metric == "pearson_spearman"
    assert glue_task("cola").metric == "matthews_correlation" and glue_task("cola").header is False
    assert glue_task("mrpc").metric == "f1" and glue_task("mnli").num_classes == 3
    with pytest.raises(ValueError, match="Unknown GLUE task 'sst3'"):
        glue_task("sst3")


@pytest.mark.parametrize(
    "task, directory, num_examples, first_label",
    [("sst2", "SST-2", 872, "positive"), ("cola", "CoLA", 1043, "acceptable"), ("rte", "RTE", 277, "not_entailment")],
)
def test_glue_tsv_files_read_with_the_table(shared_data, tmp_path, task, directory, num_examples, first_label):
    data = load_labeled_texts(
        str(shared_data / "glue" / directory), split="validation", task=task, data_dir=str(tmp_path)
    )
    examples = _examples(data)
    assert data.num_examples == len(examples) == num_examples
    assert data.label_names == glue_task(task).label_names
    assert data.label_names[examples[0]["label"]] == first_label
    assert data.has_text_pair == (task == "rte")
    assert data.task is glue_task(task)


# === Named TFDS datasets ===


def test_named_tfds_dataset_through_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=7):
        data = load_labeled_texts("glue/sst2", split="train", data_dir=str(tmp_path))
        examples = list(data.dataset.take(7).as_numpy_iterator())
        documents = load_documents("imdb_reviews", split="train", data_dir=str(tmp_path))
        texts = list(documents.take(3).as_numpy_iterator())
    assert data.label_names == ("negative", "positive") and data.task is glue_task("sst2")
    assert len(examples) == 7 and set(examples[0]) == {"text", "label"}
    assert all(example["label"] in (0, 1) for example in examples)
    assert len(texts) == 3 and all(isinstance(text, bytes) for text in texts)


def test_named_tfds_dataset_with_wrong_feature(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=2):
        with pytest.raises(ValueError, match="glue/sst2 has no feature 'text'"):
            load_documents("glue/sst2", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="neither a local file nor a TFDS dataset"):
        load_documents("no_such_dataset_anywhere", data_dir=str(tmp_path))


def test_sharding_per_input_pipeline(tmp_path):
    corpus = _write(tmp_path / "corpus.txt", "\n\n".join(f"document {i}" for i in range(10)) + "\n")
    shards = [
        list(
            load_documents(
                corpus,
                data_dir=str(tmp_path / "tfds"),
                input_context=tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=index),
            ).as_numpy_iterator()
        )
        for index in range(3)
    ]
    assert [len(shard) for shard in shards] == [4, 3, 3]
    assert sorted(sum(shards, [])) == sorted(f"document {i}".encode() for i in range(10))
