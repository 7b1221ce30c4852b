"""BertTokenizer and BertPreprocessor against the Hugging Face tokenizer, and vocabulary training."""

import csv
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from kbert.tokenizer import (
    SPECIAL_TOKENS,
    TRAINERS,
    BertPreprocessor,
    BertTokenizer,
    train_vocabulary,
)

TINY_VOCABULARY = list(SPECIAL_TOKENS) + ["the", "film", "good", "cliche", "!", ",", "un", "##able", "a"]

# Lines that exercise every step of BERT's basic tokenization.
TRICKY_LINES = [
    "A cliché, naïve café in Zürich; ÀÉÎÕÜ façade.",
    "北京欢迎你 and 東京タワー and 서울 한국어",
    "emoji 😀👍🏽 and symbols ©®™ € ½ ≥ ∞",
    "tabs\tnewlines\nnbsp\u00a0ideographic\u3000space\u2028separator  multiple   spaces",
    "control\x07bell\x1bescape zero\u200bwidth soft\u00adhyphen bom\ufeffmark",
    "İSTANBUL ΣΟΦΙΑ ΟΔΟΣ Straße ﬁnance Ｆｕｌｌｗｉｄｔｈ",
    "x" * 101 + " " + "y" * 100,
    "é" * 80,
    "don't stop—“quoted” ‘single’ «guillemets» ¿qué? ¡sí!",
    "e\u0301 combining acute, Å angstrom, Ω ohm",
    "",
    "   \n\t  ",
    "U.S.A. $3.50 50% a+b=c <tag> @user #hash ~tilde `tick` ^caret |pipe",
    "private\ue000use unassigned\u0378char",
]


def _read_lines(path):
    with open(path, encoding="utf-8") as file:
        return file.read().splitlines()


def _sst2_sentences(shared_data, split="dev"):
    with open(shared_data / "glue" / "SST-2" / f"{split}.tsv", encoding="utf-8") as file:
        rows = list(csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row[0] for row in rows[1:]]


@pytest.fixture(scope="module")
def minilm_vocabulary(minilm_path):
    return str(minilm_path / "vocab.txt")


@pytest.fixture(scope="module")
def reference_tokenizer(minilm_vocabulary):
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizer(minilm_vocabulary, do_lower_case=True)


def test_parity_with_hugging_face_on_real_text(shared_data, minilm_vocabulary, reference_tokenizer):
    lines = _sst2_sentences(shared_data)
    lines += _read_lines(shared_data / "corpus" / "wikitext2_valid.txt")
    lines += _read_lines(shared_data / "corpus" / "wikitext2_test.txt")
    lines += TRICKY_LINES
    tokenizer = BertTokenizer(minilm_vocabulary)

    ours = tokenizer(tf.constant(lines)).to_list()
    theirs = [reference_tokenizer(line, add_special_tokens=False)["input_ids"] for line in lines]

    mismatches = [line for line, a, b in zip(lines, ours, theirs) if a != b]
    assert len(lines) > 9000
    assert len(mismatches) / len(lines) <= 0.001, mismatches[:5]
    # The hand-picked lines are where a near miss would show, so each must match exactly.
    assert ours[-len(TRICKY_LINES) :] == theirs[-len(TRICKY_LINES) :]


def test_accents_are_stripped_for_uncased_vocabularies(minilm_vocabulary, reference_tokenizer):
    tokenizer = BertTokenizer(minilm_vocabulary)
    ids = tokenizer(["cliché"]).to_list()[0]
    assert [tokenizer.id_to_token(i) for i in ids] == ["cl", "##iche"]
    assert ids == reference_tokenizer("cliché", add_special_tokens=False)["input_ids"]


def test_cased_tokenizer_keeps_case_and_accents():
    tokenizer = BertTokenizer(list(SPECIAL_TOKENS) + ["Café", "café", "cafe"], lowercase=False)
    assert tokenizer.get_config() == {"lowercase": False, "strip_accents": False}
    assert tokenizer(["Café café"]).to_list() == [[5, 6]]
    stripping = BertTokenizer(tokenizer.vocabulary, lowercase=False, strip_accents=True)
    assert stripping(["café"]).to_list() == [[7]]


def test_hostile_inputs_never_fail(minilm_vocabulary):
    tokenizer = BertTokenizer(minilm_vocabulary)
    texts = tf.constant(
        [b"", b"\xff\xfe\xc3(invalid utf-8", b"nul\x00byte", b"a" * 100_000, b"word " * 20_000, b"\x00"]
    )
    ids = tokenizer(texts)
    assert ids.dtype == tf.int32
    lengths = ids.row_lengths().numpy().tolist()
    assert lengths[0] == 0 and lengths[5] == 0
    assert tokenizer.id_to_token(ids[1][0]) == "(" and tokenizer.unk_token_id not in ids[1].numpy()
    # BERT deletes NUL and other control characters rather than splitting on them.
    assert ids[2].numpy().tolist() == tokenizer(["nulbyte"]).to_list()[0]
    assert ids[3].numpy().tolist() == [tokenizer.unk_token_id]  # one word over 100 characters
    assert lengths[4] == 20_000


def test_special_token_ids_are_looked_up_by_token(minilm_vocabulary):
    tokenizer = BertTokenizer(minilm_vocabulary)
    assert tokenizer.vocabulary_size == 30522
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id) == (0, 100)
    assert (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id) == (101, 102, 103)
    assert tokenizer.token_to_id("the") == 1996 and tokenizer.id_to_token(1996) == "the"
    assert isinstance(tokenizer.vocabulary, list)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tokenizer.token_to_id("no-such-token")


def test_vocabulary_without_special_tokens_is_refused(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\nthe\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab\.txt.*Missing: \[CLS\] \[SEP\] \[MASK\]"):
        BertTokenizer(str(path))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        BertTokenizer(str(tmp_path / "missing.txt"))


def test_detokenize_joins_word_pieces():
    tokenizer = BertTokenizer(TINY_VOCABULARY)
    ids = tokenizer(["Unable, the FILM!"])
    assert ids.to_list() == [[11, 12, 10, 5, 6, 9]]
    assert tokenizer.detokenize(ids).numpy().tolist() == [b"unable , the film !"]
    assert tokenizer.detokenize(tf.constant([5, 6])).numpy() == b"the film"


def test_scalar_and_list_inputs():
    tokenizer = BertTokenizer(TINY_VOCABULARY)
    assert tokenizer("the film").numpy().tolist() == [5, 6]
    assert tokenizer(["the", "film good"]).to_list() == [[5], [6, 7]]


def test_runs_in_tf_data_and_tf_function():
    tokenizer = BertTokenizer(TINY_VOCABULARY)
    dataset = tf.data.Dataset.from_tensor_slices(["the film", "a good film"]).batch(2).map(tokenizer)
    assert next(iter(dataset)).to_list() == [[5, 6], [13, 7, 6]]
    tokenize = tf.function(lambda texts: tokenizer(texts).to_tensor())
    assert tokenize(tf.constant(["good"])).numpy().tolist() == [[7]]


def test_saved_model_carries_vocabulary_and_tokenizes(tmp_path):
    vocabulary_path = tmp_path / "vocab.txt"
    vocabulary_path.write_text("".join(f"{token}\n" for token in TINY_VOCABULARY), encoding="utf-8")
    preprocessor = BertPreprocessor(BertTokenizer(str(vocabulary_path)), sequence_length=6)

    class Serving(tf.Module):
        def __init__(self, preprocessor):
            super().__init__()
            self.preprocessor = preprocessor

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, text):
            return self.preprocessor(text)

    export_dir = str(tmp_path / "saved_model")
    tf.saved_model.save(Serving(preprocessor), export_dir)
    vocabulary_path.unlink()  # the SavedModel must not need the original file
    assert os.listdir(os.path.join(export_dir, "assets")) == ["vocab.txt"]
    restored = tf.saved_model.load(export_dir)
    outputs = restored.serve(tf.constant(["The good film!", ""]))
    assert outputs["token_ids"].numpy().tolist() == [[2, 5, 7, 6, 9, 3], [2, 3, 0, 0, 0, 0]]
    assert outputs["padding_mask"].numpy().tolist() == [[1] * 6, [1, 1, 0, 0, 0, 0]]


def test_from_model_dir_reads_vocabulary_and_settings(tmp_path):
    from kbert import model_dir

    vocabulary = list(SPECIAL_TOKENS) + ["Film"]
    (tmp_path / model_dir.VOCABULARY_FILE).write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    config = {
        "format": model_dir.FORMAT_NAME,
        "format_version": model_dir.FORMAT_VERSION,
        "model": None,
        "tokenizer": {"vocabulary": model_dir.VOCABULARY_FILE, "lowercase": False, "strip_accents": False},
        "task": None,
    }
    (tmp_path / model_dir.CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
    tokenizer = BertTokenizer.from_model_dir(str(tmp_path))
    assert tokenizer.vocabulary == vocabulary
    assert tokenizer.get_config() == {"lowercase": False, "strip_accents": False}
    assert tokenizer(["Film"]).to_list() == [[5]]


def test_preprocessor_matches_hugging_face_on_sentence_pairs(shared_data, minilm_vocabulary, reference_tokenizer):
    with open(shared_data / "glue" / "RTE" / "dev.tsv", encoding="utf-8") as file:
        rows = list(csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    first, second = [row[1] for row in rows], [row[2] for row in rows]
    preprocessor = BertPreprocessor(BertTokenizer(minilm_vocabulary), sequence_length=48)

    ours = preprocessor(tf.constant(first), tf.constant(second))
    theirs = reference_tokenizer(
        first, second, truncation="longest_first", max_length=48, padding="max_length", return_tensors="np"
    )

    np.testing.assert_array_equal(ours["token_ids"].numpy(), theirs["input_ids"])
    np.testing.assert_array_equal(ours["segment_ids"].numpy(), theirs["token_type_ids"])
    np.testing.assert_array_equal(ours["padding_mask"].numpy(), theirs["attention_mask"])


def test_preprocessor_truncates_the_longest_segment_first():
    tokenizer = BertTokenizer(TINY_VOCABULARY)
    preprocessor = BertPreprocessor(tokenizer, sequence_length=8)
    long_text = tf.constant(["the film the film the film the film"])
    outputs = preprocessor(long_text, tf.constant(["good"]))
    # [CLS] + 4 of the long segment + [SEP] + good + [SEP]
    assert outputs["token_ids"].numpy().tolist() == [[2, 5, 6, 5, 6, 3, 7, 3]]
    assert outputs["segment_ids"].numpy().tolist() == [[0, 0, 0, 0, 0, 0, 1, 1]]
    single = preprocessor(tf.constant(["good film"]))
    assert single["token_ids"].numpy().tolist() == [[2, 7, 6, 3, 0, 0, 0, 0]]
    assert single["token_ids"].shape == (1, 8) and single["token_ids"].dtype == tf.int32
    packed = preprocessor.pack(tokenizer(["good film"]), sequence_length=tf.constant(5))
    assert packed["token_ids"].numpy().tolist() == [[2, 7, 6, 3, 0]]


def test_truncation_keeps_the_tokens_tf_texts_round_robin_trimmer_keeps():
    import itertools

    import tensorflow_text as tf_text

    from kbert.tokenizer import truncate_longest_first

    # Every pair of lengths up to 11 against every budget up to 15, odd and even.
    rng = np.random.default_rng(0)
    lengths = list(itertools.product(range(12), range(12)))
    first = tf.ragged.constant([rng.integers(5, 99, a).tolist() for a, _ in lengths], tf.int32)
    second = tf.ragged.constant([rng.integers(5, 99, b).tolist() for _, b in lengths], tf.int32)
    for budget in range(16):
        expected = tf_text.RoundRobinTrimmer(budget).trim([first, second])
        for ours, theirs in zip(truncate_longest_first([first, second], budget), expected):
            assert ours.to_list() == theirs.to_list(), budget
        (single,) = truncate_longest_first([first], tf.constant(budget))
        assert single.to_list() == tf_text.RoundRobinTrimmer(budget).trim([first])[0].to_list()


def test_a_pair_batch_of_different_sizes_is_refused():
    preprocessor = BertPreprocessor(BertTokenizer(TINY_VOCABULARY), sequence_length=16)
    for num_texts, num_pairs in [(2, 0), (64, 1), (3, 2), (2, 3)]:
        with pytest.raises(tf.errors.InvalidArgumentError, match="same number of texts"):
            preprocessor(tf.constant(["a b c"] * num_texts), tf.constant(["good"] * num_pairs, tf.string))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)] * 2)
    def packed(text, text_pair):
        return preprocessor(text, text_pair)["token_ids"]

    with pytest.raises(tf.errors.InvalidArgumentError, match="same number of texts"):
        packed(tf.constant(["a b c"] * 2), tf.constant([], tf.string))


def test_preprocessor_pads_to_the_longest_row_when_asked():
    preprocessor = BertPreprocessor(BertTokenizer(TINY_VOCABULARY), sequence_length=8)
    texts = tf.constant(["good", "good film"])
    full = preprocessor(texts)
    short = preprocessor(texts, pad_to_longest=True)
    # [CLS] good film [SEP] is the longest row: 4 positions, the first 4 of the full padding.
    for name in ("token_ids", "segment_ids", "padding_mask"):
        assert short[name].shape == (2, 4), name
        np.testing.assert_array_equal(short[name].numpy(), full[name].numpy()[:, :4])
    # Never beyond sequence_length, and an empty batch still packs.
    long_text = tf.constant(["the film the film the film the film"])
    assert preprocessor(long_text, pad_to_longest=True)["token_ids"].shape == (1, 8)
    assert preprocessor(tf.constant([], tf.string), pad_to_longest=True)["token_ids"].shape[0] == 0


@pytest.fixture(scope="module")
def wikitext_vocabulary(shared_data, tmp_path_factory):
    from kbert import cli

    output = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    exit_code = cli.main(
        [
            "vocab",
            str(shared_data / "corpus" / "wikitext2_valid.txt"),
            "--output",
            str(output),
            "--vocabulary-size",
            "4000",
            "--data-dir",
            str(tmp_path_factory.mktemp("tfds")),
        ]
    )
    assert exit_code == 0
    return output


def test_vocab_command_puts_special_tokens_first(wikitext_vocabulary):
    vocabulary = wikitext_vocabulary.read_text(encoding="utf-8").splitlines()
    assert vocabulary[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert 3000 <= len(vocabulary) <= 4000
    assert len(set(vocabulary)) == len(vocabulary)
    assert any(token.startswith("##") for token in vocabulary)


def test_trained_vocabulary_covers_held_out_text(shared_data, wikitext_vocabulary):
    tokenizer = BertTokenizer(str(wikitext_vocabulary))
    held_out = _read_lines(shared_data / "corpus" / "wikitext2_test.txt")
    ids = tokenizer(tf.constant(held_out)).flat_values.numpy()
    unknown_rate = np.mean(ids == tokenizer.unk_token_id)
    assert ids.size > 200_000
    assert unknown_rate < 0.01


@pytest.mark.parametrize("trainer", TRAINERS)
def test_train_vocabulary_from_a_dataset(trainer):
    texts = tf.data.Dataset.from_tensor_slices(["the cat sat on the mat"] * 50 + ["the dog sat"] * 50)
    vocabulary = train_vocabulary(texts, vocabulary_size=40, trainer=trainer, progress=False)
    assert vocabulary[:5] == list(SPECIAL_TOKENS)
    tokenizer = BertTokenizer(vocabulary)
    assert tokenizer.unk_token_id not in tokenizer(["the cat sat on the dog"]).flat_values.numpy()
    with pytest.raises(ValueError, match="vocabulary_size"):
        train_vocabulary(texts, vocabulary_size=5)


def test_vocab_command_errors_are_one_line(tmp_path, capsys):
    from kbert import cli

    output = str(tmp_path / "vocab.txt")
    assert cli.main(["vocab", str(tmp_path / "missing.txt"), "--output", output]) == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "missing.txt" in message
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text\n", encoding="utf-8")
    assert cli.main(["vocab", str(corpus), "--output", output, "--vocabulary-size", "5"]) == 2
    assert "--vocabulary-size" in capsys.readouterr().err
