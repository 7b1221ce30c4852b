"""kbert prepare (sharded token-id sequences on Apache Beam) and pretraining from them: the same
sequences as the on-the-fly pipeline, streaming without a cache, settings checked, and resuming
mid-epoch by position.

The SIGKILL test runs this file as a script:

    python tests/test_prepare.py PREPARED_DIR VOCABULARY OUTPUT_DIR

which trains a tiny masked LM on the prepared data, printing `step N` after every step
(`$STEP_DELAY_SECONDS` slows it down so that the test can kill it mid-epoch).
"""

import collections
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from test_training_fault_tolerance import kill_at_step, latest_backup_step

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "un", "##believ", "##able", ".", "a"]
VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
SEQUENCE_LENGTH = 16
NUM_SHARDS = 20
BATCH_SIZE = 8
NUM_TRAIN_STEPS = 48
STEPS_PER_EPOCH = 12
BACKUP_EVERY = 3
KILL_AFTER_STEP = 35


def write_corpus(path, num_documents, seed):
    """WikiText-like text: a heading, then documents of 1 to 30 words between blank lines."""
    rng = random.Random(seed)
    words = [word for word in WORDS if not word.startswith("##")] + ["unbelievable"]
    lines = ["= Heading =", ""]
    for _ in range(num_documents):
        lines += [" ".join(rng.choice(words) for _ in range(rng.randint(1, 30))), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A one-file corpus prepared with the local runner's 2 worker processes, into 20 shards."""
    from kbert import cli

    root = tmp_path_factory.mktemp("prepare")
    vocabulary = root / "vocab.txt"
    vocabulary.write_text("\n".join(VOCABULARY) + "\n", encoding="utf-8")
    (root / "corpus").mkdir()
    text = write_corpus(root / "corpus" / "part-0.txt", 300, seed=0)
    prepared = root / "prepared"
    code = cli.main([
        "prepare", "--input", str(root / "corpus" / "*.txt"), "--vocabulary", str(vocabulary),
        "--sequence-length", str(SEQUENCE_LENGTH), "--output", str(prepared),
        "--num-shards", str(NUM_SHARDS), "--num-workers", "2",
    ])
    assert code == 0
    return dict(root=root, vocabulary=vocabulary, text=text, prepared=prepared)


def tokenizer_of(vocabulary):
    from kbert.tokenizer import BertTokenizer

    return BertTokenizer(str(vocabulary))


def unmasked_rows(dataset):
    """The token ids of every sequence before masking, as tuples."""
    rows = []
    for x, mask_ids, mask_weights in dataset.as_numpy_iterator():
        token_ids = x["token_ids"].copy()
        for row in range(token_ids.shape[0]):
            used = mask_weights[row] > 0
            token_ids[row, x["mask_positions"][row, used]] = mask_ids[row, used]
        rows.extend(tuple(row) for row in token_ids)
    return rows


def test_prepare_writes_many_shards_with_the_settings_in_the_info(corpus):
    from kbert.data.prepared import PreparedCorpus, vocabulary_hash

    prepared = PreparedCorpus(corpus["prepared"])
    shard_files = sorted(path.name for path in corpus["prepared"].glob("*.tfrecord-*"))
    assert len(shard_files) == NUM_SHARDS == prepared.num_shards
    # The writer spreads sequences over the shards by a hash of their keys.
    assert prepared.shard_lengths.min() > 0
    assert prepared.settings["vocabulary_sha256"] == vocabulary_hash(VOCABULARY)
    assert prepared.settings["sequence_length"] == SEQUENCE_LENGTH
    assert prepared.settings["chunk_length"] == SEQUENCE_LENGTH - 2
    assert prepared.settings["lowercase"] is True


def test_a_prepared_corpus_with_a_shard_missing_is_refused_in_one_line(corpus, tmp_path):
    import shutil

    from kbert.data.prepared import check_shards

    damaged = tmp_path / "damaged"
    shutil.copytree(corpus["prepared"], damaged)
    check_shards(damaged)  # complete
    lost = sorted(damaged.glob("*.tfrecord-*"))[7]
    lost.unlink()
    with pytest.raises(RuntimeError, match=f"lost 1 of the {NUM_SHARDS} shards .*{lost.name}"):
        check_shards(damaged)


def test_default_shard_count_applies_the_minimum_shard_size():
    import tensorflow_datasets as tfds

    from kbert.data.prepared import MIN_SHARD_SIZE, _DownloadConfig

    # The 100 MB benchmark corpus: 196,270 sequences in 55,180,826 bytes.
    total_bytes, num_sequences = 55_180_826, 196_270
    shards = _DownloadConfig().get_shard_config().get_number_shards(total_bytes, num_sequences)
    # TFDS' rule: the largest power of two with shards of at least the minimum size.
    assert shards == 2 ** int(np.log2(total_bytes / MIN_SHARD_SIZE)) == 8
    # What TFDS itself makes of the same minimum size: one shard (when this fails, TFDS has
    # fixed it and `_ShardConfig` can go).
    tfds_config = tfds.download.DownloadConfig(min_shard_size=MIN_SHARD_SIZE).get_shard_config()
    assert tfds_config.get_number_shards(total_bytes, num_sequences) == 1
    # An explicit count still wins.
    assert _DownloadConfig(num_shards=3).get_shard_config().get_number_shards(total_bytes, 9) == 3


def test_prepared_sequences_equal_the_on_the_fly_pipelines_before_masking(corpus):
    from kbert.data import pretraining_dataset

    tokenizer = tokenizer_of(corpus["vocabulary"])
    options = dict(tokenizer=tokenizer, batch_size=64, sequence_length=SEQUENCE_LENGTH,
                   shuffle=False, seed=1, data_dir=str(corpus["root"] / "tfds"))
    on_the_fly = unmasked_rows(pretraining_dataset(str(corpus["text"]), **options))
    prepared = unmasked_rows(pretraining_dataset(str(corpus["prepared"]), **options))
    assert len(on_the_fly) > 2 * NUM_SHARDS
    assert collections.Counter(prepared) == collections.Counter(on_the_fly)
    # The stream's last, shorter sequence is kept, padded.
    assert sum(row[-1] == 0 for row in on_the_fly) == 1


def test_pretraining_from_prepared_data_streams_without_a_cache(corpus):
    from kbert.data import pretraining_dataset
    from kbert.data.prepared import PreparedCorpus

    tokenizer = tokenizer_of(corpus["vocabulary"])
    options = dict(tokenizer=tokenizer, batch_size=BATCH_SIZE, sequence_length=SEQUENCE_LENGTH,
                   seed=3, data_dir=str(corpus["root"] / "tfds"))
    prepared = pretraining_dataset(str(corpus["prepared"]), **options)
    text = pretraining_dataset(str(corpus["text"]), **options)
    # The on-the-fly pipeline caches its tokenized documents; the prepared stream holds no cache.
    assert b"CacheDataset" in text._as_serialized_graph().numpy()
    assert b"CacheDataset" not in prepared._as_serialized_graph().numpy()
    # The stream is endless and reshuffled every epoch: two epochs, the same sequences in
    # another order.
    num_sequences = PreparedCorpus(corpus["prepared"]).num_sequences
    rows = unmasked_rows(prepared.take(2 * num_sequences // BATCH_SIZE + 2))
    first, second = rows[:num_sequences], rows[num_sequences:2 * num_sequences]
    assert collections.Counter(first) == collections.Counter(second)
    assert first != second


def test_a_prepared_dataset_is_also_read_by_its_tfds_name(corpus, tmp_path):
    import shutil

    from kbert.data import pretraining_dataset

    shutil.copytree(corpus["prepared"], tmp_path / "my_corpus" / "1.0.0")
    options = dict(tokenizer=tokenizer_of(corpus["vocabulary"]), batch_size=BATCH_SIZE,
                   sequence_length=SEQUENCE_LENGTH, seed=2)
    by_name = pretraining_dataset("my_corpus", data_dir=str(tmp_path), **options)
    by_directory = pretraining_dataset(str(corpus["prepared"]), **options)
    for named, direct in zip(by_name.take(3), by_directory.take(3)):
        np.testing.assert_array_equal(named[0]["token_ids"], direct[0]["token_ids"])
        np.testing.assert_array_equal(named[1], direct[1])


def test_input_pipelines_share_out_the_shards_of_each_epoch(corpus):
    import itertools

    import tensorflow as tf

    from kbert.data.prepared import PreparedCorpus

    prepared = PreparedCorpus(corpus["prepared"])
    everything = collections.Counter(tuple(ids) for ids, _ in prepared.chunks(shuffle=False)
                                     .as_numpy_iterator())
    for epoch in (0, 1):
        shared = collections.Counter()
        for pipeline in (0, 1):
            context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline,
                                                 num_replicas_in_sync=2)
            shards = prepared.pipeline_shards(epoch, seed=4, pipeline=pipeline, num_pipelines=2)
            lengths = prepared.shard_lengths[shards.numpy()]
            assert len(lengths) == NUM_SHARDS // 2
            before = sum(prepared.shard_lengths[prepared.pipeline_shards(
                earlier, seed=4, pipeline=pipeline, num_pipelines=2).numpy()].sum()
                for earlier in range(epoch))
            stream = prepared.chunks(seed=4, input_context=context, skip_chunks=int(before))
            shared.update(tuple(ids) for ids, _ in itertools.islice(
                stream.as_numpy_iterator(), int(lengths.sum())))
        assert shared == everything


@pytest.mark.slow
def test_kbert_pretrain_trains_from_a_prepared_directory(corpus, capsys):
    from kbert import cli

    output = corpus["root"] / "model"
    code = cli.main([
        "pretrain", "--input", str(corpus["prepared"]), "--vocab", str(corpus["vocabulary"]),
        "--sequence-length", str(SEQUENCE_LENGTH), "--size", "tiny", "--steps", "4",
        "--batch-size", str(BATCH_SIZE), "--output", str(output), "--quiet",
    ])
    assert code == 0, capsys.readouterr().err
    history = json.loads((output / "history.json").read_text())
    assert history["step"] == [4] and np.isfinite(history["loss"][0])


def test_prepared_data_of_another_vocabulary_or_length_is_refused_in_one_line(corpus, capsys):
    from kbert import cli

    other_vocabulary = corpus["root"] / "other_vocab.txt"
    other_vocabulary.write_text("\n".join(VOCABULARY + ["dogs"]) + "\n", encoding="utf-8")
    common = ["pretrain", "--input", str(corpus["prepared"]), "--size", "tiny", "--steps", "2",
              "--output", str(corpus["root"] / "refused")]
    code = cli.main(common + ["--vocab", str(other_vocabulary),
                              "--sequence-length", str(SEQUENCE_LENGTH)])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error
    assert error.startswith(f"kbert pretrain: error: {corpus['prepared']} was prepared with "
                            f"another vocabulary ({corpus['vocabulary']}")
    code = cli.main(common + ["--vocab", str(corpus["vocabulary"]), "--sequence-length", "32"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error
    assert (f"was prepared for --sequence-length {SEQUENCE_LENGTH}, not --sequence-length 32"
            in error)


@pytest.mark.slow
def test_a_bad_line_in_a_corpus_file_stops_preparation_in_one_line(corpus, tmp_path, capsys):
    from kbert import cli

    (tmp_path / "corpus").mkdir()
    write_corpus(tmp_path / "corpus" / "a.txt", 20, seed=1)
    (tmp_path / "corpus" / "b.txt").write_bytes(b"the cat sat\n\nthe dog \xff ran\n")
    output = tmp_path / "prepared"
    code = cli.main(["prepare", "--input", str(tmp_path / "corpus" / "*.txt"),
                     "--vocab", str(corpus["vocabulary"]), "--output", str(output),
                     "--num-workers", "2"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert error == (f"kbert prepare: error: {tmp_path / 'corpus' / 'b.txt'}, line 3: bytes that "
                     "are not UTF-8 (0xff at column 9)")
    # Neither the output nor the scratch directory is left behind.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corpus"]


def test_prepare_without_beam_says_what_to_install(tmp_path):
    script = ("import sys; sys.modules['apache_beam'] = None; from kbert import cli; "
              "sys.exit(cli.main(sys.argv[1:]))")
    result = subprocess.run(
        [sys.executable, "-c", script, "prepare", "--input", "x.txt", "--vocab", "v.txt",
         "--output", str(tmp_path / "out")],
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "kbert prepare: error: kbert prepare needs Apache Beam: pip install 'kbert[beam]'"
    )


def test_a_resumed_stream_skips_whole_shards_unread(corpus, tmp_path):
    """Started mid-epoch, the stream gives the batches of the whole stream from there, with the
    shards of the windows already read deleted: it never opens them."""
    import shutil

    from kbert.data import pretraining_dataset
    from kbert.data.prepared import SHARDS_PER_WINDOW, PreparedCorpus

    tokenizer = tokenizer_of(corpus["vocabulary"])
    options = dict(tokenizer=tokenizer, batch_size=BATCH_SIZE, sequence_length=SEQUENCE_LENGTH,
                   seed=5)
    prepared = PreparedCorpus(corpus["prepared"])
    first_window = prepared.pipeline_shards(0, seed=5).numpy()[:SHARDS_PER_WINDOW]
    # The first step whose sequences all come after the first window of epoch 0.
    skip_batches = -(-int(prepared.shard_lengths[first_window].sum()) // BATCH_SIZE)
    epoch_batches = prepared.num_sequences // BATCH_SIZE
    assert skip_batches < epoch_batches
    assert prepared.position(skip_batches * BATCH_SIZE, seed=5)[:2] == (0, 1)

    whole = list(pretraining_dataset(str(corpus["prepared"]), **options)
                 .take(epoch_batches).as_numpy_iterator())
    copy = tmp_path / "prepared"
    shutil.copytree(corpus["prepared"], copy)
    for shard in first_window:
        os.remove(prepared.filepaths[shard].replace(str(corpus["prepared"]), str(copy)))
    assert len(list(copy.glob("*.tfrecord-*"))) == NUM_SHARDS - SHARDS_PER_WINDOW
    resumed = list(pretraining_dataset(str(copy), skip_batches=skip_batches, **options)
                   .take(epoch_batches - skip_batches).as_numpy_iterator())
    for expected, batch in zip(whole[skip_batches:], resumed, strict=True):
        for name in expected[0]:
            np.testing.assert_array_equal(batch[0][name], expected[0][name])
        np.testing.assert_array_equal(batch[1], expected[1])
        np.testing.assert_array_equal(batch[2], expected[2])


def start_run(corpus, output_dir, step_delay_seconds=0.0):
    environment = dict(os.environ, STEP_DELAY_SECONDS=str(step_delay_seconds))
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), str(corpus["prepared"]),
         str(corpus["vocabulary"]), str(output_dir)],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.mark.slow
def test_a_run_killed_mid_epoch_of_prepared_data_resumes_to_the_uninterrupted_weights(
    corpus, tmp_path
):
    import keras

    from test_training_fault_tolerance import finish

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the run reports steps on TF")
    from kbert.data.prepared import PreparedCorpus

    # A data epoch is longer than the kill step, so the run is killed inside one.
    assert PreparedCorpus(corpus["prepared"]).num_sequences // BATCH_SIZE > KILL_AFTER_STEP + 1
    uninterrupted = start_run(corpus, tmp_path / "uninterrupted")
    kill_at_step(start_run(corpus, tmp_path / "killed", step_delay_seconds=0.2), KILL_AFTER_STEP)
    backup_step = latest_backup_step(tmp_path / "killed")
    assert backup_step % BACKUP_EVERY == 0 and KILL_AFTER_STEP - 2 <= backup_step < NUM_TRAIN_STEPS
    assert backup_step % STEPS_PER_EPOCH, "the kill should land inside a training epoch"

    output = finish(start_run(corpus, tmp_path / "killed"))
    assert f"Resuming from the backup at step {backup_step} of {NUM_TRAIN_STEPS}" in output
    finish(uninterrupted)
    np.testing.assert_allclose(
        np.load(tmp_path / "killed" / "weights.npy"),
        np.load(tmp_path / "uninterrupted" / "weights.npy"),
        rtol=0, atol=1e-6,
    )


def main(prepared_dir, vocabulary, output_dir):
    sys.path.insert(0, TESTS_DIR)
    import keras
    from conftest import tiny_backbone
    from test_training import flat_weights
    from test_training_fault_tolerance import ReportSteps

    import kbert
    from kbert import config, tasks, training
    from kbert.metrics import masked_lm_metrics

    tokenizer = tokenizer_of(vocabulary)
    data = config.DataConfig(train=prepared_dir, batch_size=BATCH_SIZE,
                             sequence_length=SEQUENCE_LENGTH)
    train_data, _ = tasks.get("masked_lm").datasets(data, tokenizer, seed=7)
    keras.utils.set_random_seed(0)
    # Dropout is on: the resumed run must also continue the dropout masks' random stream.
    model = kbert.BertMaskedLM(tiny_backbone(len(VOCABULARY), dropout=0.1))
    model.compile(optimizer=training.make_optimizer(learning_rate=1e-3, decay="constant"),
                  weighted_metrics=masked_lm_metrics())
    training.fit(
        model, train_data, output_dir, num_train_steps=NUM_TRAIN_STEPS,
        steps_per_epoch=STEPS_PER_EPOCH, backup_every=BACKUP_EVERY,
        callbacks=[ReportSteps(float(os.environ.get("STEP_DELAY_SECONDS", "0")))], verbose=0,
    )
    np.save(os.path.join(output_dir, "weights.npy"), flat_weights(model))


if __name__ == "__main__":
    main(*sys.argv[1:4])
