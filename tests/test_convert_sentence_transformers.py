"""sentence-transformers folders into kbert embedders, compared with sentence-transformers' own encode."""

import json
import os
import shutil

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import kbert  # noqa: E402
from kbert import cli  # noqa: E402
from kbert.convert import ConversionError, from_huggingface, read_huggingface  # noqa: E402
from conftest import tiny_huggingface_config  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
sentence_transformers = pytest.importorskip("sentence_transformers")

TINY_VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{index}" for index in range(35)]
TINY_MAX_SEQUENCE_LENGTH = 16


def tiny_texts(num_texts=6, seed=0):
    rng = np.random.default_rng(seed)
    # Lengths on both sides of the model's max_seq_length, so that truncation is compared too.
    lengths = [1, 3, 7, 14, 20, 9][:num_texts]
    return [" ".join(f"w{index}" for index in rng.integers(0, 35, length)) for length in lengths]


def save_tiny_sentence_transformer(directory, pooling_mode="mean", normalize=True, extra_modules=()):
    """A sentence-transformers folder around a tiny random BERT, saved by sentence-transformers."""
    from sentence_transformers import SentenceTransformer, models

    bert_directory = directory.parent / f"{directory.name}_bert"
    torch.manual_seed(0)
    config = tiny_huggingface_config(len(TINY_VOCABULARY))
    bert = transformers.BertModel(config).eval()
    with torch.no_grad():
        # Random biases and LayerNorm parameters, so that a swapped weight cannot go unnoticed.
        for parameter in bert.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    bert.save_pretrained(bert_directory)
    (bert_directory / "vocab.txt").write_text("".join(f"{token}\n" for token in TINY_VOCABULARY))
    modules = [
        models.Transformer(str(bert_directory), max_seq_length=TINY_MAX_SEQUENCE_LENGTH),
        models.Pooling(16, pooling_mode=pooling_mode),
    ]
    if normalize:
        modules.append(models.Normalize())
    modules += [factory() for factory in extra_modules]
    model = SentenceTransformer(modules=modules, device="cpu")
    model.save(str(directory))
    return model


def reference_encode(directory, texts):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(directory), device="cpu")
    return model.encode(texts, batch_size=64, convert_to_numpy=True)


def kbert_encode(directory, texts, batch_size=64):
    """Embeddings from raw text through kbert's tokenizer and preprocessor."""
    import keras
    import tensorflow as tf

    config = json.loads((directory / "config.json").read_text())
    model = kbert.load(directory)
    preprocessor = kbert.BertPreprocessor(
        kbert.BertTokenizer.from_model_dir(directory),
        sequence_length=config["tokenizer"]["sequence_length"],
    )
    order = np.argsort([len(text) for text in texts], kind="stable")  # similar lengths batch together
    embeddings = np.zeros((len(texts), model.backbone.hidden_dim), "float32")
    for start in range(0, len(texts), batch_size):
        indices = order[start : start + batch_size]
        batch = tf.constant([texts[index] for index in indices])
        inputs = {key: value.numpy() for key, value in preprocessor(batch, pad_to_longest=True).items()}
        embeddings[indices] = keras.ops.convert_to_numpy(model(inputs))
    return embeddings


# === Tiny folders: every pooling the converter takes ===


@pytest.mark.parametrize(
    "pooling, normalize", [("mean", True), ("mean", False), ("cls", True), ("max", False)]
)
def test_tiny_folder_converts_to_an_embedder_that_matches(tmp_path, pooling, normalize):
    save_tiny_sentence_transformer(tmp_path / "st", pooling, normalize)
    conversion = from_huggingface(tmp_path / "st", tmp_path / "kbert")
    assert conversion.tokenizer["sequence_length"] == TINY_MAX_SEQUENCE_LENGTH
    config = json.loads((tmp_path / "kbert" / "config.json").read_text())
    assert config["model"]["class_name"] == "BertTextEmbedder"
    assert config["model"]["config"]["pooling"] == pooling
    assert config["model"]["config"]["normalize"] is normalize

    texts = tiny_texts()
    expected = reference_encode(tmp_path / "st", texts)
    actual = kbert_encode(tmp_path / "kbert", texts)
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)
    norms = np.linalg.norm(actual, axis=-1)
    assert np.allclose(norms, 1.0, atol=1e-5) is normalize


def test_legacy_pooling_flags_are_read(tmp_path):
    save_tiny_sentence_transformer(tmp_path / "st", "max")
    pooling_path = next((tmp_path / "st").glob("*Pooling*")) / "config.json"
    pooling_path.write_text(
        json.dumps({
            "word_embedding_dimension": 16,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": False,
            "pooling_mode_max_tokens": True,
            "pooling_mode_mean_sqrt_len_tokens": False,
        })
    )
    assert read_huggingface(tmp_path / "st").model.pooling == "max"


def test_a_folder_without_modules_json_still_gives_a_backbone(tmp_path):
    save_tiny_sentence_transformer(tmp_path / "st")
    shutil.copytree(tmp_path / "st", tmp_path / "plain")
    os.remove(tmp_path / "plain" / "modules.json")
    assert isinstance(read_huggingface(tmp_path / "plain").model, kbert.BertBackbone)
    assert "sequence_length" not in read_huggingface(tmp_path / "plain").tokenizer


def test_sentence_bert_config_sets_sequence_length_and_lowercasing(tmp_path):
    save_tiny_sentence_transformer(tmp_path / "st")
    tokenizer_config_path = tmp_path / "st" / "tokenizer_config.json"
    tokenizer_config = json.loads(tokenizer_config_path.read_text())
    tokenizer_config.update(do_lower_case=False, strip_accents=False)
    tokenizer_config_path.write_text(json.dumps(tokenizer_config))
    assert read_huggingface(tmp_path / "st").tokenizer == {
        "lowercase": False, "strip_accents": False, "sequence_length": TINY_MAX_SEQUENCE_LENGTH
    }
    # Its max_seq_length wins over the tokenizer's model_max_length; its do_lower_case
    # lowercases in front of a cased tokenizer, which keeps its accents.
    (tmp_path / "st" / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 12, "do_lower_case": True}))
    assert read_huggingface(tmp_path / "st").tokenizer == {
        "lowercase": True, "strip_accents": False, "sequence_length": 12
    }
    assert read_huggingface(tmp_path / "st", lowercase=False).tokenizer["lowercase"] is False


@pytest.mark.parametrize("pooling_mode", ["weightedmean", "lasttoken", "mean_sqrt_len_tokens", ("cls", "mean")])
def test_unsupported_pooling_is_refused_naming_the_file(tmp_path, pooling_mode):
    save_tiny_sentence_transformer(tmp_path / "st", pooling_mode)
    pooling_path = next((tmp_path / "st").glob("*Pooling*")) / "config.json"
    with pytest.raises(ConversionError, match="kbert converts only one of mean, cls or max") as error:
        read_huggingface(tmp_path / "st")
    assert str(error.value).startswith(f"{pooling_path} asks for pooling ")


def test_other_modules_are_refused_on_the_command_line(tmp_path, capsys):
    from sentence_transformers import models

    save_tiny_sentence_transformer(
        tmp_path / "st", extra_modules=[lambda: models.Dense(16, 8)]
    )
    capsys.readouterr()
    code = cli.main(["convert", "--from", "huggingface", str(tmp_path / "st"), "--output", str(tmp_path / "kbert")])
    error = capsys.readouterr().err
    assert code == 2
    assert error.strip().splitlines() == [
        f"kbert convert: error: {tmp_path / 'st' / 'modules.json'} lists the modules Transformer, "
        "Pooling, Normalize, Dense; kbert converts Transformer, Pooling and an optional Normalize, "
        "in that order"
    ]


def test_command_line_writes_an_embedder(tmp_path, capsys):
    save_tiny_sentence_transformer(tmp_path / "st")
    assert cli.main(["convert", "--from", "huggingface", str(tmp_path / "st"), "--output", str(tmp_path / "kbert")]) == 0
    assert "BertTextEmbedder, 2 layers" in capsys.readouterr().out
    assert isinstance(kbert.load(tmp_path / "kbert"), kbert.BertTextEmbedder)


# === The real all-MiniLM-L6-v2 ===


@pytest.fixture(scope="module")
def minilm_embedder(minilm_path, tmp_path_factory):
    output = tmp_path_factory.mktemp("minilm_embedder") / "kbert"
    from_huggingface(minilm_path, output)
    return output


def sst2_sentences(shared_data, num_sentences):
    lines = (shared_data / "glue" / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    sentences = [line.split("\t")[0] for line in lines]
    # Spread over the file rather than its first rows, for a range of lengths.
    return sentences[:: len(sentences) // num_sentences][:num_sentences]


def test_minilm_settings_come_from_its_folder(minilm_path, minilm_embedder):
    sentence_bert_config = json.loads((minilm_path / "sentence_bert_config.json").read_text())
    config = json.loads((minilm_embedder / "config.json").read_text())
    assert config["tokenizer"]["sequence_length"] == sentence_bert_config["max_seq_length"]
    assert (config["model"]["config"]["pooling"], config["model"]["config"]["normalize"]) == ("mean", True)


@pytest.mark.backends
def test_minilm_embeddings_match_sentence_transformers(minilm_path, minilm_embedder, shared_data):
    sentences = sst2_sentences(shared_data, 64)
    expected = reference_encode(minilm_path, sentences)
    actual = kbert_encode(minilm_embedder, sentences)
    difference = np.abs(actual - expected).max()
    print(f"{len(sentences)} SST-2 dev sentences: max abs difference {difference:.2e}")
    assert difference < 1e-5


def read_sts(path):
    """Scores and sentence pairs of an STS benchmark file (tab-separated, score in column 5)."""
    scores, first, second = [], [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        scores.append(float(fields[4]))
        first.append(fields[5])
        second.append(fields[6])
    return np.array(scores), first, second


def sts_spearman(encode, first, second, scores):
    from scipy.stats import spearmanr

    texts = sorted(set(first) | set(second))
    embeddings = dict(zip(texts, encode(texts)))
    a = np.stack([embeddings[text] for text in first])
    b = np.stack([embeddings[text] for text in second])
    cosine = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return spearmanr(cosine, scores).statistic


@pytest.mark.slow
def test_minilm_sts_dev_spearman_matches_sentence_transformers(minilm_path, minilm_embedder, shared_data):
    scores, first, second = read_sts(shared_data / "stsbenchmark" / "sts-dev.csv")
    assert len(scores) == 1500
    reference = sts_spearman(lambda texts: reference_encode(minilm_path, texts), first, second, scores)
    converted = sts_spearman(lambda texts: kbert_encode(minilm_embedder, texts), first, second, scores)
    print(f"sts-dev Spearman: kbert {converted:.5f}, sentence-transformers {reference:.5f}")
    assert abs(converted - reference) < 0.001
    assert converted > 0.8  # a model that embeds at all; the published STS test figure is 0.82
