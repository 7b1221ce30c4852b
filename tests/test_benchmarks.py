"""Correctness of the benchmarks' FLOP counts and of what they compare (they print timings)."""

import pytest

from benchmarks.flops import classifier_training_flops, masked_lm_training_flops


def _matmul(rows, inner, columns):
    return 2 * rows * inner * columns


def _encoder_forward_by_matmul(num_layers, hidden, intermediate, heads, batch, length):
    """The encoder's matmuls listed one by one, head by head."""
    head_dim = hidden // heads
    per_sequence_layer = (
        4 * _matmul(length, hidden, hidden)  # query, key, value and output projections
        + heads * _matmul(length, head_dim, length)  # scores: (length, head_dim) x (head_dim, length)
        + heads * _matmul(length, length, head_dim)  # context: (length, length) x (length, head_dim)
        + _matmul(length, hidden, intermediate)
        + _matmul(length, intermediate, hidden)
    )
    return batch * num_layers * per_sequence_layer


def test_masked_lm_flops_match_a_count_of_every_matmul():
    encoder = _encoder_forward_by_matmul(2, 16, 32, 4, batch=3, length=8)
    head = 3 * (_matmul(5, 16, 16) + _matmul(5, 16, 40))  # transform and vocabulary, 5 predictions
    assert masked_lm_training_flops(2, 16, 32, 8, 3, 5, vocabulary_size=40) == 3 * (encoder + head)


def test_masked_lm_flops_executed_with_the_last_layer_at_the_predictions():
    full = _encoder_forward_by_matmul(2, 16, 32, 4, batch=3, length=8)
    first_layer = _encoder_forward_by_matmul(1, 16, 32, 4, batch=3, length=8)
    last_layer = 3 * (
        2 * _matmul(8, 16, 16)  # keys and values at all 8 positions
        + 2 * _matmul(5, 16, 16)  # queries and the attention output at the 5 predictions
        + 4 * _matmul(5, 4, 8)  # scores: (5, head_dim) x (head_dim, 8), 4 heads
        + 4 * _matmul(5, 8, 4)  # context: (5, 8) x (8, head_dim)
        + _matmul(5, 16, 32)
        + _matmul(5, 32, 16)
    )
    head = 3 * (_matmul(5, 16, 16) + _matmul(5, 16, 40))
    executed = masked_lm_training_flops(2, 16, 32, 8, 3, 5, vocabulary_size=40, last_layer_at_predictions=True)
    assert executed == 3 * (first_layer + last_layer + head)
    assert executed < masked_lm_training_flops(2, 16, 32, 8, 3, 5, vocabulary_size=40) == 3 * (full + head)


def test_classifier_flops_follow_the_padded_length_of_each_batch():
    def count(length):
        encoder = _encoder_forward_by_matmul(2, 16, 32, 4, batch=4, length=length)
        head = 4 * (_matmul(1, 16, 16) + _matmul(1, 16, 3))  # pooler and classes on the first token
        return 3 * (encoder + head)

    assert classifier_training_flops(2, 16, 32, 8, 4, 3) == count(8)
    assert classifier_training_flops(2, 16, 32, 16, 4, 3) == count(16)
    # Attention grows with the square of the length, so a bucket of 8 costs less than half of 16.
    assert 2 * count(8) < count(16)


def test_fine_tuning_clock_counts_the_examples_of_uneven_batches():
    import keras
    import numpy as np
    import tensorflow as tf

    from benchmarks import finetuning, harness

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    finetuning._compile(model)
    # Bucketed batches hold different numbers of examples: here 4, 1, 4 and 1.
    sizes = [4, 1, 4, 1]
    examples = tf.data.Dataset.from_tensor_slices(
        (np.zeros((5, 3), "float32"), np.zeros((5,), "int32"))
    )
    dataset = examples.take(4).batch(4).concatenate(examples.take(1).batch(1)).repeat(2)
    clock = harness.batch_clock(count=finetuning._examples_seen)
    model.fit(dataset, epochs=1, verbose=0, callbacks=[clock])
    assert [count for _, count in clock.marks] == list(np.cumsum(sizes))
    assert [time for time, _ in clock.marks] == sorted(time for time, _ in clock.marks)
    # A second `fit` starts its marks afresh, its count from the new epoch's first batch.
    model.fit(dataset.take(2), epochs=1, verbose=0, callbacks=[clock])
    assert [count for _, count in clock.marks] == [4, 5]


def test_fit_batches_are_the_batches_that_fit_trains_on():
    import keras
    import numpy as np
    import tensorflow as tf

    from benchmarks import finetuning
    from kbert.data.sources import LabeledTexts
    from kbert.tokenizer import BertPreprocessor, BertTokenizer

    words = ["a", "b", "c", "d"]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, rng.integers(1, 40))) for _ in range(200)]
    preprocessor = BertPreprocessor(BertTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words), 64)
    sizes = {"num_layers": 2, "hidden_dim": 16, "intermediate_dim": 32}

    def pipeline(labels, cache):
        keras.utils.set_random_seed(0)
        source = tf.data.Dataset.from_tensor_slices({"text": texts, "label": labels})
        return finetuning._pipeline(LabeledTexts(source, label_names=None), preprocessor, cache=cache)

    trained = []

    class RecordingModel(keras.Model):
        def train_step(self, data):
            x, labels = data
            tf.py_function(
                lambda *batch: trained.append([tensor.numpy() for tensor in batch]) or 0,
                [x["token_ids"], labels], tf.int32,
            )
            return super().train_step(data)

    names = ("token_ids", "segment_ids", "padding_mask")
    inputs = {name: keras.Input((None,), dtype="int32", name=name) for name in names}
    features = keras.ops.sum(keras.ops.cast(inputs["token_ids"], "float32"), axis=1, keepdims=True)
    model = RecordingModel(inputs=inputs, outputs=keras.layers.Dense(2)(features))
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=False)
    # As a kbert worker draws its batches: one epoch, the warm-up fit, then one fit per round.
    dataset = pipeline(np.arange(200, dtype="int32") % 2, cache=True)
    finetuning._epoch_statistics(dataset, sizes)
    steps_per_call = [finetuning.WARMUP_STEPS, 4, 4]
    repeated = dataset.repeat()
    fitted = []
    for steps in steps_per_call:
        model.fit(repeated, steps_per_epoch=steps, epochs=1, verbose=0)
        fitted.append(list(trained))
        trained.clear()

    indexed = pipeline(np.arange(200, dtype="int32"), cache=False)
    finetuning._epoch_statistics(indexed, sizes)
    planned = finetuning.fit_batches(indexed, steps_per_call)
    for fitted_call, planned_call in zip(fitted, planned, strict=True):
        assert len(fitted_call) == len(planned_call)
        for (token_ids, labels), (x, indices) in zip(fitted_call, planned_call):
            np.testing.assert_array_equal(token_ids, x["token_ids"].numpy())
            # The indices name the examples trained on: their labels are the labels trained on.
            np.testing.assert_array_equal(labels, indices.numpy() % 2)
    # Each call reshuffles: a plan that replayed the first batches would not match.
    assert not np.array_equal(fitted[1][0][0], fitted[2][0][0])


def test_pytorch_decays_the_tensors_that_kbert_decays():
    import numpy as np

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import kbert
    from benchmarks import finetuning
    from kbert import training

    backbone = kbert.BertBackbone(
        vocabulary_size=40, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=24,
    )
    model = kbert.BertClassifier(backbone, num_classes=3)
    optimizer = training.make_optimizer("adamw", 5e-5, decay="constant", weight_decay=0.01)
    kbert_sizes = {True: [], False: []}
    for variable in model.trainable_variables:
        kbert_sizes[optimizer._use_weight_decay(variable)].append(int(np.prod(variable.shape)))

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=24, num_labels=3,
    )
    decayed, kept = finetuning.torch_parameter_groups(
        transformers.BertForSequenceClassification(config), weight_decay=0.01
    )
    assert (decayed["weight_decay"], kept["weight_decay"]) == (0.01, 0.0)
    # Embeddings and kernels decay; LayerNorm scales and offsets and all biases do not.
    assert sorted(p.numel() for p in decayed["params"]) == sorted(kbert_sizes[True])
    assert sorted(p.numel() for p in kept["params"]) == sorted(kbert_sizes[False])
    assert 40 * 16 in kbert_sizes[True] and len(kbert_sizes[False]) > 0


def test_initial_losses_and_logits_must_agree_between_kbert_and_pytorch():
    from benchmarks import finetuning

    def reports(kbert_loss, kbert_logits):
        return {
            "kbert": {"initial_loss": kbert_loss, "initial_logits": kbert_logits},
            finetuning.PYTORCH: {"initial_loss": 0.69315, "initial_logits": [[0.1, -0.2], [0.3, 0.0]]},
        }

    finetuning.check_initial_losses(reports(0.69312, [[0.10002, -0.2], [0.3, 0.00003]]))
    with pytest.raises(ValueError, match="weights or the inputs differ"):
        finetuning.check_initial_losses(reports(0.6941, [[0.1, -0.2], [0.3, 0.0]]))
    # The same loss from other examples: the logits tell.
    with pytest.raises(ValueError, match="weights or the inputs differ"):
        finetuning.check_initial_losses(reports(0.69315, [[0.3, 0.0], [0.1, -0.2]]))


def test_results_markdown_is_the_summary_table_with_when_where_and_how():
    from benchmarks import run_all

    report = {
        "started": "2025-01-02T03:04:05+00:00",
        "machine": {"cpu_count": 2, "processor": "x86_64", "system": "Linux-6.1"},
        "quick": False,
        "size": "mini",
        "settings": {"pretraining": {"rounds": 8, "steps": 10}, "serving": {"rounds": 5, "requests": 200}},
        "pretraining": {},  # ran; serving did not, so its settings are left out
        "matmul_peak_gflops": {"float32": 221.4, "mixed_bfloat16": 404.0},
        "summary": [
            run_all._row("pretraining float32, tokens/s", "kbert (tensorflow)", "keras-hub (tensorflow)",
                         6298.0, 4537.0, 1.2, mfu=0.8),
            run_all._row("serving, batch-1 p50 ms", "kbert", "keras-hub", 4.36, 10.1, 0.8,
                         higher_is_better=False),
            run_all._row("serving, batch-64 texts/s", "kbert", "keras-hub", 495.0, 167.0, None),
        ],
    }
    assert run_all.results_markdown(report, "python -m benchmarks.run_all --only pretraining") == (
        "# Benchmark results\n"
        "\n"
        "Written by `benchmarks/run_all.py` at the end of its run; the next run replaces this file.\n"
        "Every figure of the run is in `benchmarks/results/all.json` (not kept in git).\n"
        "\n"
        "- command: `python -m benchmarks.run_all --only pretraining`\n"
        "- started: 2025-01-02T03:04:05+00:00\n"
        "- machine: 2 CPU cores, x86_64, Linux-6.1\n"
        "- model size: mini; full settings: pretraining: rounds 8, steps 10\n"
        "- matmul peak measured in the run: float32 221 GFLOP/s, mixed_bfloat16 404 GFLOP/s\n"
        "\n"
        "| benchmark | kbert | kbert figure | peer | peer figure | ratio | target | met | kbert MFU |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        "| pretraining float32, tokens/s | kbert (tensorflow) | 6,298 | keras-hub (tensorflow) | 4,537 "
        "| 1.39 | >= 1.2 | yes | 0.8 |\n"
        "| serving, batch-1 p50 ms | kbert | 4.36 | keras-hub | 10.1 | 0.432 | <= 0.8 | yes | - |\n"
        "| serving, batch-64 texts/s | kbert | 495 | keras-hub | 167 | 2.96 | - | - | - |\n"
    )


def test_results_file_is_written_where_asked(tmp_path):
    from benchmarks import run_all

    report = {
        "started": "2025-01-02T03:04:05+00:00",
        "machine": {"cpu_count": 2, "processor": "", "system": "Linux"},
        "quick": True,
        "size": "tiny",
        "settings": {},
        "matmul_peak_gflops": {},
        "summary": [],
    }
    path = tmp_path / "RESULTS.md"
    run_all.write_results(str(path), report, "python -m benchmarks.run_all --quick")
    text = path.read_text(encoding="utf-8")
    assert "- machine: 2 CPU cores, processor unknown, Linux\n" in text
    assert "- matmul peak measured in the run: not measured\n" in text
    assert text.endswith("|---|---|---|---|---|---|---|---|---|\n")


_SERVING_WORDS = "the a film movie good bad very not is was story actors plot funny boring cliche".split()


def _serving_classifier(directory):
    """A tiny random Hugging Face classifier and its fast tokenizer, saved in `directory`."""
    import torch
    import transformers

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_SERVING_WORDS, "##s", "!", ".", ","]
    vocabulary_file = directory / "vocab.txt"
    vocabulary_file.write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    tokenizer = transformers.BertTokenizerFast.from_pretrained(str(directory), do_lower_case=True)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(vocabulary), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=160, num_labels=2,
    )
    model = transformers.BertForSequenceClassification(config).eval()
    model.save_pretrained(directory / "huggingface")
    tokenizer.save_pretrained(directory / "huggingface")
    return model, tokenizer, vocabulary_file


# Short and long requests: one past 128 tokens, which every contender must cut at 128.
_SERVING_TEXTS = [
    "The film was good.", "Cliché!", " ".join(_SERVING_WORDS * 10), "not a very funny movie, boring plot",
]


def test_serving_real_news_texts_are_the_first_40_words_of_long_paragraphs(tmp_path):
    from benchmarks import serving_real

    path = tmp_path / "wiki.txt"
    long_paragraph = " ".join(f"w{index}" for index in range(45))
    lines = [" ", " = Title = ", " ", f" {long_paragraph} ", " too short a paragraph ", " = = Section = = ",
             f" {long_paragraph[3:]} "]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    texts = serving_real.news_texts(str(path), count=5, words=40)
    # The titles, the blank lines and the short paragraph are skipped; the long ones cut to 40 words.
    assert texts == [
        " ".join(f"w{index}" for index in range(40)), " ".join(f"w{index}" for index in range(1, 41)),
    ]


def test_serving_real_tokenizers_pad_and_cut_as_the_kbert_signature(tmp_path):
    import numpy as np

    from benchmarks import serving_real
    from kbert.tokenizer import BertPreprocessor, BertTokenizer

    _, tokenizer, vocabulary_file = _serving_classifier(tmp_path)
    kbert = BertPreprocessor(BertTokenizer(str(vocabulary_file)), sequence_length=128)(
        _SERVING_TEXTS, pad_to_longest=True
    )
    huggingface = tokenizer(_SERVING_TEXTS, padding="longest", truncation=True, max_length=128)
    rust = serving_real.rust_tokenizer(str(tmp_path / "huggingface")).encode_batch(_SERVING_TEXTS)
    assert kbert["token_ids"].shape == (4, 128)  # the long text, cut; the others padded to it
    for token_ids, padding_mask in (
        (huggingface["input_ids"], huggingface["attention_mask"]),
        ([encoding.ids for encoding in rust], [encoding.attention_mask for encoding in rust]),
    ):
        np.testing.assert_array_equal(kbert["token_ids"].numpy(), np.array(token_ids))
        np.testing.assert_array_equal(kbert["padding_mask"].numpy(), np.array(padding_mask))
    # A batch of short texts is padded to its longest only.
    assert BertPreprocessor(BertTokenizer(str(vocabulary_file)))(_SERVING_TEXTS[:2], pad_to_longest=True)[
        "token_ids"
    ].shape == (2, 7)


def test_serving_real_onnx_runtime_agrees_with_pytorch_and_a_mismatch_stops_the_run(tmp_path):
    import pytest

    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from benchmarks import serving_real

    model, tokenizer, _ = _serving_classifier(tmp_path)
    onnx_file = serving_real.export_onnx(model, tokenizer, str(tmp_path / "model.onnx"))
    huggingface_dir = str(tmp_path / "huggingface")
    probabilities = {
        serving_real.PYTORCH: serving_real.PREDICTORS[serving_real.PYTORCH]({"path": huggingface_dir}),
        serving_real.ONNX_RUNTIME: serving_real.PREDICTORS[serving_real.ONNX_RUNTIME](
            {"path": onnx_file, "tokenizer": huggingface_dir}
        ),
    }
    for texts in (_SERVING_TEXTS, _SERVING_TEXTS[:1]):  # sequence 128, then 7: both axes vary
        outputs = {name: predict(texts).tolist() for name, predict in probabilities.items()}
        differences = serving_real.check_agreement(outputs)
        assert differences[serving_real.ONNX_RUNTIME] < 1e-5
        assert len(outputs[serving_real.ONNX_RUNTIME]) == len(texts)
    outputs[serving_real.ONNX_RUNTIME] = [[0.5, 0.5]]
    with pytest.raises(ValueError, match="Expected the probabilities of ONNX Runtime to match"):
        serving_real.check_agreement(outputs)
