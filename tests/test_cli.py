"""The `kbert` command: help, the pretrain -> finetune -> evaluate path, and user mistakes."""

import json
import subprocess
import sys

import pytest

import kbert.config
from kbert import cli, model_dir
from conftest import PROJECT_ROOT

WORDS = (
    "the cat sat on the mat while a dog ran in the park and the birds sang over "
    "green hills near an old town where people walked slowly to the market"
).split()


def run_kbert(capsys, *argv):
    code = cli.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny corpus, its vocabulary and a tiny labeled sentiment set."""
    import random

    root = tmp_path_factory.mktemp("cli")
    rng = random.Random(0)
    documents = []
    for _ in range(60):
        documents.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))))
    (root / "corpus.txt").write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    (root / "heldout.txt").write_text("\n\n".join(documents[:10]) + "\n", encoding="utf-8")
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + ["good", "bad"]
    (root / "vocab.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    rows = ["sentence\tlabel"]
    for index in range(64):
        label = index % 2
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10)))
        rows.append(f"{words} {'good' if label else 'bad'}\t{label}")
    (root / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / "dev.tsv").write_text("\n".join(rows[:33]) + "\n", encoding="utf-8")
    return root


TINY_MODEL = ["--size", "tiny", "--sequence-length", "32", "--batch-size", "8", "--quiet"]


@pytest.fixture(scope="module")
def pretrained(files, tmp_path_factory):
    output = tmp_path_factory.mktemp("pretrained") / "model"
    code = cli.main(
        [
            "pretrain", "--input", str(files / "corpus.txt"), "--vocab", str(files / "vocab.txt"),
            "--steps", "6", "--steps-per-epoch", "3", "--output", str(output),
            "--data-dir", str(files / "tfds"), *TINY_MODEL,
        ]
    )
    assert code == 0
    return output


def test_help_of_every_subcommand():
    result = subprocess.run(
        [sys.executable, "-m", "kbert.cli", "--help"], capture_output=True, text=True,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode == 0
    for command in cli.COMMANDS:
        assert command in result.stdout, f"`kbert --help` does not list {command}"
    parser = cli.build_parser()
    for command in cli.COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--help"])
        assert exit_info.value.code == 0


def test_pretrain_writes_a_model_directory_with_logs_and_plot(pretrained):
    config = model_dir.read_config(pretrained)
    assert config["model"]["class_name"] == "BertMaskedLM"
    assert config["task"]["name"] == "masked_lm"
    for name in ("model.weights.h5", "vocab.txt", "history.json", "history.png"):
        assert (pretrained / name).is_file(), name
    history = json.loads((pretrained / "history.json").read_text())
    assert len(history["loss"]) == 2  # two epochs of three steps
    assert history["step"][-1] == 6


def test_rerunning_a_finished_pretraining_rewrites_nothing(files, tmp_path):
    import os

    # A kill during a needless rewrite of the weights would leave a broken model directory.
    output = tmp_path / "model"
    argv = [
        "pretrain", "--input", str(files / "corpus.txt"), "--vocab", str(files / "vocab.txt"),
        "--steps", "4", "--steps-per-epoch", "2", "--output", str(output),
        "--data-dir", str(files / "tfds"), *TINY_MODEL,
    ]
    assert cli.main(argv) == 0

    def states():
        return {
            os.path.relpath(os.path.join(root, name), output): (
                os.stat(os.path.join(root, name)).st_ino,
                os.stat(os.path.join(root, name)).st_mtime_ns,
            )
            for root, _, names in os.walk(output)
            for name in names
        }

    before = states()
    import keras

    keras.utils.clear_session()  # layer names as in a new process, where a rerun happens
    assert cli.main(argv) == 0
    assert states() == before


def test_finetune_then_evaluate(files, pretrained, tmp_path, capsys):
    output = tmp_path / "classifier"
    code, out, err = run_kbert(
        capsys, "finetune", "--train", files / "train.tsv", "--validation", files / "dev.tsv",
        "--init", pretrained, "--epochs", "2", "--learning-rate", "1e-3", "--output", output,
        "--data-dir", files / "tfds", "--batch-size", "8", "--sequence-length", "32", "--quiet",
        "--dropout", "0.05",
    )
    assert code == 0, err
    final_metrics = json.loads(out.strip().splitlines()[-1])
    assert 0.0 <= final_metrics["accuracy"] <= 1.0
    assert "mlm_head" in err  # the pretraining head was reported as not used
    config = model_dir.read_config(output)
    assert config["task"]["label_names"] == ["0", "1"]
    assert config["tokenizer"]["sequence_length"] == 32
    # --dropout reaches the whole backbone, not only the classifier head (pretrained with 0.1).
    assert model_dir.load(output).backbone.dropout == 0.05
    # The flags became the run's config objects, stored under their field names, from which
    # a script rebuilds the same run.
    configs = config["configs"]
    assert kbert.config.DataConfig(**configs["data"]).batch_size == 8
    assert kbert.config.ModelConfig(**configs["model"]).init == str(pretrained)
    assert kbert.config.OptimizerConfig(**configs["optimizer"]).learning_rate == 1e-3
    assert kbert.config.RunConfig(**configs["run"]).epochs == 2

    code, out, err = run_kbert(
        capsys, "evaluate", "--model", output, "--data", files / "dev.tsv",
        "--data-dir", files / "tfds",
    )
    assert code == 0, err
    evaluated = json.loads(out.strip().splitlines()[-1])
    assert evaluated["accuracy"] == pytest.approx(final_metrics["accuracy"], abs=1e-6)


def test_evaluate_a_masked_lm_reports_the_unigram_baseline(files, pretrained, capsys):
    code, out, err = run_kbert(
        capsys, "evaluate", "--model", pretrained, "--data", files / "heldout.txt",
        "--data-dir", files / "tfds",
    )
    assert code == 0, err
    metrics = json.loads(out.strip().splitlines()[-1])
    assert 0.0 < metrics["unigram_baseline_accuracy"] < 1.0
    assert 0.0 <= metrics["masked_lm_accuracy"] <= 1.0


def test_pretrain_holds_out_a_split_of_its_input(files, tmp_path, capsys):
    output = tmp_path / "model"
    held_out = "train[80%:]"
    code, _, err = run_kbert(
        capsys, "pretrain", "--input", files / "corpus.txt", "--vocab", files / "vocab.txt",
        "--split", "train[:80%]", "--validation-split", held_out, "--steps", "4",
        "--steps-per-epoch", "4", "--output", output, "--data-dir", files / "tfds", *TINY_MODEL,
    )
    assert code == 0, err
    saved = model_dir.read_config(output)["configs"]
    assert (saved["data"]["train_split"], saved["data"]["validation_split"]) == ("train[:80%]", held_out)
    assert saved["run"]["num_train_steps"] == 4
    history = json.loads((output / "history.json").read_text())
    # Scoring the same held-out documents afterwards, in batches of the same size (masks are
    # drawn per batch), gives the figure of the last validation.
    code, out, err = run_kbert(
        capsys, "evaluate", "--model", output, "--data", files / "corpus.txt", "--split", held_out,
        "--data-dir", files / "tfds", "--batch-size", "8",
    )
    assert code == 0, err
    metrics = json.loads(out.strip().splitlines()[-1])
    assert metrics["masked_lm_accuracy"] == pytest.approx(
        history["val_masked_lm_accuracy"][-1], abs=1e-3
    )
    # The whole file scores differently: the slice was really applied.
    code, out, err = run_kbert(
        capsys, "evaluate", "--model", output, "--data", files / "corpus.txt",
        "--data-dir", files / "tfds", "--batch-size", "8",
    )
    assert json.loads(out.strip().splitlines()[-1])["loss"] != pytest.approx(metrics["loss"])


# === User mistakes: one line, non-zero exit, no traceback ===


def test_validation_split_that_is_the_training_split(files, tmp_path, capsys):
    code, _, err = run_kbert(
        capsys, "pretrain", "--input", files / "corpus.txt", "--vocab", files / "vocab.txt",
        "--validation-split", "train", "--steps", "2", "--output", tmp_path / "model",
        "--data-dir", files / "tfds", *TINY_MODEL,
    )
    assert_one_line_error(code, err, "--validation-split train is the training split")


def assert_one_line_error(code, err, *expected):
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("kbert ")]
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], lines[0]


def test_missing_input_file(files, tmp_path, capsys):
    code, _, err = run_kbert(
        capsys, "pretrain", "--input", tmp_path / "missing.txt", "--vocab", files / "vocab.txt",
        "--steps", "2", "--output", tmp_path / "out", *TINY_MODEL,
    )
    assert_one_line_error(code, err, "missing.txt")


def test_missing_vocabulary(files, tmp_path, capsys):
    code, _, err = run_kbert(
        capsys, "pretrain", "--input", files / "corpus.txt", "--vocab", tmp_path / "nope.txt",
        "--steps", "2", "--output", tmp_path / "out", *TINY_MODEL,
    )
    assert_one_line_error(code, err, "nope.txt")


def test_unknown_task(files, pretrained, tmp_path, capsys):
    code, _, err = run_kbert(
        capsys, "finetune", "--task", "sst3", "--train", files / "train.tsv",
        "--init", pretrained, "--output", tmp_path / "out",
    )
    assert_one_line_error(code, err, "sst3")


def test_wrong_column(files, pretrained, tmp_path, capsys):
    code, _, err = run_kbert(
        capsys, "finetune", "--text-column", "review", "--label-column", "label",
        "--train", files / "train.tsv", "--init", pretrained, "--output", tmp_path / "out",
        "--data-dir", tmp_path / "tfds",
    )
    assert_one_line_error(code, err, "review")


def test_init_is_not_a_model_directory(files, tmp_path, capsys):
    code, _, err = run_kbert(
        capsys, "finetune", "--task", "sst2", "--train", files / "train.tsv",
        "--init", files, "--output", tmp_path / "out",
    )
    assert_one_line_error(code, err, "not a kbert model directory")


def test_vocabulary_size_too_small(files, tmp_path, capsys):
    code, _, err = run_kbert(
        capsys, "vocab", files / "corpus.txt", "--vocabulary-size", "3",
        "--output", tmp_path / "vocab.txt", "--data-dir", tmp_path / "tfds",
    )
    assert_one_line_error(code, err, "--vocabulary-size", "got 3")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "--batch-size", "0"], "argument --batch-size: expected a positive integer, got 0"),
        (["evaluate", "--steps", "0"], "argument --steps: expected a positive integer, got 0"),
        (["evaluate", "--steps", "-3"], "argument --steps: expected a positive integer, got -3"),
        (["pretrain", "--num-predictions", "0"], "argument --num-predictions: expected a positive integer"),
        (["pretrain", "--learning-rate=-1e-4"], "argument --learning-rate: expected a positive number"),
        (["pretrain", "--learning-rate", "0"], "argument --learning-rate: expected a positive number"),
        (["finetune", "--epochs", "0"], "argument --epochs: expected a positive integer, got 0"),
        (["finetune", "--sequence-length", "-1"], "argument --sequence-length: expected a positive integer"),
    ],
)
def test_sizes_counts_and_rates_below_one_are_refused_with_the_flag(files, tmp_path, capsys, argv, message):
    required = {
        "evaluate": ["--model", tmp_path, "--data", files / "dev.tsv"],
        "pretrain": ["--input", files / "corpus.txt", "--vocab", files / "vocab.txt", "--steps", "2",
                     "--output", tmp_path / "out"],
        "finetune": ["--train", files / "train.tsv", "--init", tmp_path, "--output", tmp_path / "out"],
    }[argv[0]]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(arg) for arg in argv + required])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"kbert {argv[0]}: error: {message}" in err


def test_library_jobs_name_the_parameter(files, pretrained, tmp_path):
    from kbert import workflows

    with pytest.raises(ValueError, match=r"Expected batch_size to be a positive integer\. Received: batch_size=0"):
        workflows.evaluate(pretrained, str(files / "heldout.txt"), batch_size=0)
    with pytest.raises(ValueError, match=r"Expected steps to be a positive integer\. Received: steps=0"):
        workflows.evaluate(pretrained, str(files / "heldout.txt"), steps=0)


def test_finetune_refuses_a_sequence_longer_than_the_model_takes(files, pretrained, tmp_path, capsys):
    code, _, err = run_kbert(
        capsys, "finetune", "--train", files / "train.tsv", "--init", pretrained,
        "--output", tmp_path / "out", "--data-dir", files / "tfds", "--sequence-length", "600",
    )
    assert_one_line_error(code, err, "Expected sequence_length to be at most 512", "sequence_length=600")
    assert not (tmp_path / "out").exists()


def test_vocabulary_size_below_the_alphabet(files, tmp_path, capsys):
    output = tmp_path / "vocab.txt"
    code, _, err = run_kbert(
        capsys, "vocab", files / "corpus.txt", "--vocab-size", "6", "--output", output,
        "--data-dir", tmp_path / "tfds",
    )
    assert_one_line_error(code, err, "Expected vocabulary_size to be at least", "vocabulary_size=6")
    assert not output.exists()
    # The size it names is enough.
    needed = int(err.split("at least ")[1].split()[0])
    code, out, err = run_kbert(
        capsys, "vocab", files / "corpus.txt", "--vocab-size", needed, "--output", output,
        "--data-dir", tmp_path / "tfds",
    )
    assert code == 0, err
    assert len(output.read_text(encoding="utf-8").splitlines()) == needed


def test_output_directory_holding_a_different_model(files, pretrained, capsys):
    code, _, err = run_kbert(
        capsys, "finetune", "--train", files / "train.tsv", "--validation", files / "dev.tsv",
        "--init", pretrained, "--output", pretrained, "--data-dir", files / "tfds",
        "--sequence-length", "32",
    )
    assert_one_line_error(code, err, "already holds a different model")


@pytest.mark.slow
def test_quickstart_offline_runs_every_step(files, tmp_path, capsys):
    output = tmp_path / "quickstart"
    code, out, err = run_kbert(
        capsys, "quickstart", "--corpus", files / "corpus.txt", "--train", files / "train.tsv",
        "--validation", files / "dev.tsv", "--output", output, "--vocabulary-size", "200",
        "--pretrain-steps", "4", "--batch-size", "8", "--data-dir", tmp_path / "tfds", "--quiet",
    )
    assert code == 0, err
    assert (output / "vocab.txt").is_file()
    assert model_dir.read_config(output / "pretrained")["model"]["class_name"] == "BertMaskedLM"
    assert model_dir.read_config(output / "finetuned")["model"]["class_name"] == "BertClassifier"
    assert f"kbert export --model {output / 'finetuned'}" in out


def test_vocab_takes_input_flags(files, tmp_path, capsys):
    output = tmp_path / "vocab.txt"
    code, out, err = run_kbert(
        capsys, "vocab", "--input", files / "corpus.txt", "--vocab-size", "60",
        "--output", output, "--data-dir", tmp_path / "tfds",
    )
    assert code == 0, err
    tokens = output.read_text(encoding="utf-8").split("\n")
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert 5 < len([token for token in tokens if token]) <= 60
