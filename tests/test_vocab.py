"""`kbert vocab` at corpus scale: an even, reproducible sample, the tokenizers trainer, progress."""

import random

import numpy as np
import pytest
import tensorflow as tf

from kbert import cli
from kbert.data.text_sample import WINDOW_BYTES, sample_text_files, spread_split
from kbert.tokenizer import SPECIAL_TOKENS, BertTokenizer, read_vocabulary

# A word that only the second half of the corpora below holds.
LATE_WORD = "zyzzogeton"
WORDS = "the of and to in a is that for it as was with be by on not he this are or his".split()


def _two_halves(path, num_bytes):
    """A text file of about `num_bytes`: common words, then lines that also hold LATE_WORD."""
    rng = random.Random(0)
    lines, size = [], 0
    while size < num_bytes:
        words = rng.choices(WORDS, k=rng.randint(5, 30))
        if size >= num_bytes // 2:
            words[rng.randrange(len(words))] = LATE_WORD
        lines.append(" ".join(words))
        size += len(lines[-1]) + 1
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _sampled_lines(*arguments, **keywords):
    return [line for batch in sample_text_files(*arguments, progress=False, **keywords) for line in batch]


def _vocab(capsys, *arguments):
    exit_code = cli.main(["vocab", *map(str, arguments)])
    captured = capsys.readouterr()
    return exit_code, captured.out, captured.err


# === The sample ===


def test_sample_spreads_over_the_whole_file_and_keeps_to_its_size(tmp_path):
    corpus = _two_halves(tmp_path / "corpus.txt", 40 * WINDOW_BYTES)
    text = corpus.read_text(encoding="utf-8")
    sample = sample_text_files([corpus], sample_bytes=4 * WINDOW_BYTES, seed=1, progress=False)
    lines = [line for batch in sample for line in batch]
    # Whole lines of the file only, as many bytes as asked at most, and from both halves.
    assert set(lines) <= set(text.splitlines())
    assert sample.bytes_read == sum(len(line) + 1 for line in lines)
    assert 0.9 * 4 * WINDOW_BYTES < sample.bytes_read <= 4 * WINDOW_BYTES
    assert sample.corpus_bytes == len(text)
    late = sum(LATE_WORD in line for line in lines)
    assert LATE_WORD not in text[: 4 * WINDOW_BYTES] and 0.3 * len(lines) < late < 0.7 * len(lines)
    # The seed decides where the windows lie.
    assert _sampled_lines([corpus], 4 * WINDOW_BYTES, seed=1) == lines
    assert _sampled_lines([corpus], 4 * WINDOW_BYTES, seed=2) != lines


def test_a_corpus_smaller_than_the_sample_is_read_whole(tmp_path):
    first = tmp_path / "first.txt"
    # A line longer than a window, and a last line without a line break.
    first.write_text("a b c\n" + "long " * WINDOW_BYTES + "\nend", encoding="utf-8")
    second = _two_halves(tmp_path / "second.txt", 3 * WINDOW_BYTES)
    sample = sample_text_files([first, second], sample_bytes=10**9, progress=False)
    lines = [line for batch in sample for line in batch]
    texts = [path.read_text(encoding="utf-8") for path in (first, second)]
    assert lines == [line for text in texts for line in text.splitlines()]
    assert sample.bytes_read == sample.corpus_bytes == first.stat().st_size + second.stat().st_size
    size = f"{sample.corpus_bytes:,}"
    assert sample.summary() == f"Sampled {size} bytes of {size} (100.0%) from 2 files"


def test_every_file_gives_its_share(tmp_path):
    files = []
    for name, num_lines in (("small", 64_000), ("large", 192_000)):
        files.append(tmp_path / f"{name}.txt")
        lines = [f"{name} line {index}\n" for index in range(num_lines)]
        files[-1].write_text("".join(lines), encoding="utf-8")
    # About a quarter of the corpus: 4 windows of the small file, 13 of the large one.
    sample = sample_text_files(files, sample_bytes=16 * WINDOW_BYTES, progress=False)
    lines = [line for batch in sample for line in batch]
    small = sum(len(line) + 1 for line in lines if line.startswith("small"))
    large = sum(len(line) + 1 for line in lines if line.startswith("large"))
    assert large == pytest.approx(3 * small, rel=0.1)
    # Spread over each file: lines from its first and last quarters.
    for name, num_lines in (("small", 64_000), ("large", 192_000)):
        numbers = [int(line.split()[-1]) for line in lines if line.startswith(name)]
        assert min(numbers) < num_lines / 4 and max(numbers) > num_lines * 3 / 4


def test_tfds_split_is_read_in_spread_slices():
    split = spread_split("train", num_examples=10_000, num_bytes=10**8, sample_bytes=10**7, seed=0)
    slices = [tuple(map(int, part[len("train["):-1].split(":"))) for part in split.split("+")]
    assert len(slices) == 100 and sum(end - start for start, end in slices) == pytest.approx(1000, abs=100)
    assert all(earlier[1] <= later[0] for earlier, later in zip(slices, slices[1:]))
    assert slices[0][0] < 100 and slices[-1][1] > 9_900
    assert spread_split("train", 10_000, 10**8, 10**7, seed=1) != split
    assert spread_split("train", 10_000, 10**6, 10**7) == "train"


# === The command ===


def test_vocabulary_learned_from_a_sample_covers_held_out_text(shared_data, tmp_path, capsys):
    corpus = shared_data / "corpus"
    output = tmp_path / "vocab.txt"
    exit_code, out, err = _vocab(
        capsys, corpus / "wikitext2_valid.txt", corpus / "tinyshakespeare.txt", "--output", output,
        "--vocabulary-size", "3000", "--sample-bytes", "1MB",
    )
    assert exit_code == 0, err
    size = (corpus / "wikitext2_valid.txt").stat().st_size + (corpus / "tinyshakespeare.txt").stat().st_size
    sampled = int(out.split("Sampled ")[1].split(" bytes")[0].replace(",", ""))
    assert 900_000 < sampled <= 1_000_000 and f"of {size:,} " in out
    vocabulary = read_vocabulary(str(output))  # which also checks every token is unique
    assert vocabulary[:5] == list(SPECIAL_TOKENS) and 2900 <= len(vocabulary) <= 3000
    assert sum(token.startswith("##") for token in vocabulary) > 100
    # BertTokenizer builds tensorflow-text's FastWordpieceTokenizer from the file.
    tokenizer = BertTokenizer(str(output))
    assert tokenizer.special_token_ids == [0, 1, 2, 3, 4]
    held_out = (corpus / "wikitext2_test.txt").read_text(encoding="utf-8").splitlines()
    ids = tokenizer(tf.constant(held_out)).flat_values.numpy()
    assert ids.size > 200_000 and np.mean(ids == tokenizer.unk_token_id) < 0.01


def test_a_word_only_at_the_end_of_the_corpus_is_learned(tmp_path, capsys):
    corpus = _two_halves(tmp_path / "corpus.txt", 40 * WINDOW_BYTES)
    output = tmp_path / "vocab.txt"
    exit_code, out, err = _vocab(
        capsys, corpus, "--output", output, "--vocabulary-size", "100", "--sample-bytes", "200KB",
    )
    assert exit_code == 0, err
    assert LATE_WORD in read_vocabulary(str(output))
    assert "of 2,621," in out  # bytes of the whole corpus


def test_progress_for_every_phase_on_stderr(tmp_path, capsys):
    corpus = _two_halves(tmp_path / "corpus.txt", 20 * WINDOW_BYTES)
    exit_code, out, err = _vocab(
        capsys, corpus, "--output", tmp_path / "vocab.txt", "--vocabulary-size", "60",
        "--sample-bytes", "500KB",
    )
    assert exit_code == 0
    lines = err.splitlines()
    sampled = [line for line in lines if line.startswith("sampled ")]
    assert any(line.startswith("sampling 0.5 MB of 1.3 MB from") for line in lines)
    assert len(sampled) >= 5 and sampled[-1].endswith(("(98%)", "(99%)", "(100%)"))
    assert any(line.startswith("learning: merging word pieces") for line in lines)
    assert lines.index(sampled[-1]) < [line.startswith("learning: merging") for line in lines].index(True)
    assert "Wrote" in out and "Wrote" not in err
    exit_code, out, err = _vocab(
        capsys, corpus, "--output", tmp_path / "vocab.txt", "--overwrite", "--vocabulary-size", "60",
        "--quiet",
    )
    assert exit_code == 0 and "sampled" not in err and "learning" not in err and "Wrote" in out


def test_tensorflow_text_trainer_is_still_there(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\nthe dog sat\n" * 20, encoding="utf-8")
    output = tmp_path / "vocab.txt"
    exit_code, out, err = _vocab(
        capsys, corpus, "--output", output, "--vocabulary-size", "40", "--trainer", "tensorflow-text",
    )
    assert exit_code == 0, err
    vocabulary = read_vocabulary(str(output))
    assert vocabulary[:5] == list(SPECIAL_TOKENS) and "the" in vocabulary and "##t" in vocabulary
    assert "tensorflow-text trainer" in err


def test_bad_input_gets_one_line_naming_the_flag_or_file(tmp_path, capsys):
    output = tmp_path / "vocab.txt"
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\n\t\n", encoding="utf-8")
    corpus = _two_halves(tmp_path / "corpus.txt", 1000)
    for arguments, named in [
        ((empty,), "empty.txt"),
        ((blank,), "blank.txt"),
        ((corpus, "--sample-bytes", "0"), "--sample-bytes"),
        ((corpus, "--sample-bytes", "-5"), "--sample-bytes"),
        ((corpus, "--split", "train[:10%]"), "--split"),
    ]:
        exit_code, out, err = _vocab(capsys, *arguments, "--output", output, "--quiet")
        assert exit_code == 2 and err.count("\n") == 1 and named in err, (arguments, err)
    assert not output.exists()
    with pytest.raises(SystemExit):
        cli.main(["vocab", str(corpus), "--output", str(output), "--sample-bytes", "lots"])
    assert "argument --sample-bytes" in capsys.readouterr().err


# === TFDS sources ===


@pytest.fixture(scope="module")
def halves_dataset(tmp_path_factory):
    """A TFDS dataset, kept in the order it was generated: documents that hold LATE_WORD last."""
    import tensorflow_datasets as tfds

    class VocabTestHalves(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        disable_shuffling = True

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()})
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            rng = random.Random(0)
            for index in range(2000):
                words = rng.choices(WORDS, k=40)
                if index >= 1000:
                    words[0] = LATE_WORD
                yield index, {"text": " ".join(words)}

    data_dir = tmp_path_factory.mktemp("tfds")
    VocabTestHalves(data_dir=str(data_dir)).download_and_prepare()
    return "vocab_test_halves", data_dir


def test_tfds_dataset_is_sampled_across_its_split(halves_dataset, tmp_path, capsys):
    name, data_dir = halves_dataset
    output = tmp_path / "vocab.txt"
    exit_code, out, err = _vocab(
        capsys, name, "--data-dir", data_dir, "--output", output, "--vocabulary-size", "100",
        "--sample-bytes", "40KB",
    )
    assert exit_code == 0, err
    sampled = int(out.split("Sampled ")[1].split(" bytes")[0].replace(",", ""))
    assert 30_000 < sampled <= 40_000 and "from vocab_test_halves train" in out
    assert LATE_WORD in read_vocabulary(str(output))
    assert "sampled" in err


def test_tfds_dataset_of_unknown_size_is_read_up_to_the_sample(tmp_path):
    import tensorflow_datasets as tfds

    from kbert.data.text_sample import sample_documents

    # mock_data makes up examples of any dataset, and no split sizes.
    with tfds.testing.mock_data(num_examples=50):
        sample = sample_documents("imdb_reviews", data_dir=str(tmp_path), sample_bytes=300, progress=False)
        lines = [line for batch in sample for line in batch]
    assert lines and 200 < sample.bytes_read <= 300
    assert sample.summary() == (
        f"Sampled {sample.bytes_read:,} bytes from imdb_reviews train (of a size TFDS does not know)"
    )
