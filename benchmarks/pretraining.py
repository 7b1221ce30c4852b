"""Pretraining throughput: kbert vs keras-hub vs Hugging Face, side by side.

    python -m benchmarks.pretraining [--size mini] [--rounds 8] [--steps 10] [--sequence-length 128]

The same masked-LM work for every contender: a BERT of the given size, vocabulary 30,522,
sequence 128 (or `--sequence-length`), batch 32 (or `--batch-size`), 20 predictions per 128
positions, AdamW (kbert's own for kbert: the same
update, fused on TensorFlow, and no weight decay on LayerNorm and biases, as in BERT; Keras'
for keras-hub; torch's for Hugging Face), one optimizer step per batch,
in float32 and mixed_bfloat16. Reports training tokens/s (medians over alternating rounds),
the kbert/peer ratios, and each contender's model FLOP utilisation (MFU: the model's FLOPs,
the same for all) and hardware FLOP utilisation (HFU: the FLOPs it executes) against the
machine's measured matmul peak.
"""

import time

from benchmarks import harness
from benchmarks.flops import VOCABULARY_SIZE, masked_lm_training_flops


def _synthetic_batch(options):
    import numpy as np

    rng = np.random.default_rng(0)
    batch, length, predictions = options["batch_size"], options["sequence_length"], options["num_predictions"]
    token_ids = rng.integers(1000, VOCABULARY_SIZE, (batch, length)).astype("int32")
    mask_positions = np.sort(
        np.stack([rng.choice(np.arange(1, length), predictions, replace=False) for _ in range(batch)]), 1
    ).astype("int32")
    mask_ids = np.take_along_axis(token_ids, mask_positions, 1)
    token_ids[np.arange(batch)[:, None], mask_positions] = 103
    x = {
        "token_ids": token_ids,
        "segment_ids": np.zeros_like(token_ids),
        "padding_mask": np.ones_like(token_ids),
        "mask_positions": mask_positions,
    }
    return x, mask_ids, np.ones(mask_ids.shape, "float32")


def _keras_setup(options):
    import keras
    import tensorflow as tf

    keras.config.set_dtype_policy(options["precision"])
    keras.utils.set_random_seed(0)
    size = dict(
        vocabulary_size=VOCABULARY_SIZE,
        num_layers=options["num_layers"],
        num_heads=options["num_heads"],
        hidden_dim=options["hidden_dim"],
        intermediate_dim=options["intermediate_dim"],
        max_sequence_length=512,
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=0.01)
    if options["contender"] == "kbert":
        import kbert
        from kbert import training

        # kbert's own AdamW, as `kbert pretrain` trains with it (fused update on TensorFlow);
        # the same hyperparameters and no clipping, as for the others.
        optimizer = training.make_optimizer(
            "adamw", 1e-4, decay="constant", weight_decay=0.01, global_clipnorm=None
        )

        model = kbert.BertMaskedLM(kbert.BertBackbone(**size))
        # kbert's cross-entropy, its masked LM's default loss: the same quantity as Keras'.
        model.compile(
            optimizer=optimizer,
            loss=kbert.losses.SparseCategoricalCrossentropy(),
            weighted_metrics=[],
            jit_compile=options["jit_compile"],
        )
    else:
        import keras_hub

        model = keras_hub.models.BertMaskedLM(keras_hub.models.BertBackbone(**size), preprocessor=None)
        model.compile(optimizer=optimizer, loss=loss, weighted_metrics=[])
    x, y, sample_weight = _synthetic_batch(options)
    dataset = tf.data.Dataset.from_tensors((x, y, sample_weight)).repeat()
    steps = options["steps"]
    model.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0)  # compile and warm up

    clock = harness.batch_clock()

    def measure():
        # Steady state, as in a long run: from the end of the first step to the end of the
        # last, so that starting `fit` (a new iterator, callbacks), which costs about as much
        # as several `mini` steps, is not counted as training. Hugging Face's loop has no such
        # start-up to leave out.
        model.fit(dataset, steps_per_epoch=steps + 1, epochs=1, verbose=0, callbacks=[clock])
        seconds = clock.marks[-1] - clock.marks[0]
        return {"tokens_per_second": steps * options["batch_size"] * options["sequence_length"] / seconds}

    return measure


def _huggingface_setup(options):
    import torch
    import transformers

    torch.manual_seed(0)
    shape = ("num_layers", "num_heads", "hidden_dim", "intermediate_dim")
    config = harness.huggingface_bert_config(VOCABULARY_SIZE, **{key: options[key] for key in shape})
    # On a GPU where torch has one (untested here: the project's machines have none).
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.BertForMaskedLM(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    x, mask_ids, _ = _synthetic_batch(options)
    labels = torch.full(x["token_ids"].shape, -100, dtype=torch.long)
    positions = torch.as_tensor(x["mask_positions"], dtype=torch.long)
    labels.scatter_(1, positions, torch.as_tensor(mask_ids, dtype=torch.long))
    inputs = {
        "input_ids": torch.as_tensor(x["token_ids"], dtype=torch.long),
        "token_type_ids": torch.as_tensor(x["segment_ids"], dtype=torch.long),
        "attention_mask": torch.as_tensor(x["padding_mask"], dtype=torch.long),
        "labels": labels,
    }
    inputs = {key: value.to(device) for key, value in inputs.items()}
    autocast = options["precision"] == "mixed_bfloat16"

    def synchronize():
        if device == "cuda":
            torch.cuda.synchronize()

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()

    def measure():
        synchronize()
        start = time.perf_counter()
        for _ in range(options["steps"]):
            step()
        synchronize()
        seconds = time.perf_counter() - start
        return {"tokens_per_second": options["steps"] * options["batch_size"] * options["sequence_length"] / seconds}

    return measure


def setup(options):
    if options["contender"] == "huggingface":
        return _huggingface_setup(options)
    return _keras_setup(options)


def run(
    size="mini", rounds=8, steps=10, precisions=("float32", "mixed_bfloat16"),
    kbert_backends=("tensorflow", "jax"), sequence_length=128, batch_size=32,
):
    import kbert

    model_size = kbert.size_config(size)
    # BERT's 20 predictions per 128 positions: 80 at 512, as in its second pretraining phase.
    num_predictions = 20 * sequence_length // 128
    base = dict(
        model_size, sequence_length=sequence_length, batch_size=batch_size,
        num_predictions=num_predictions, steps=steps,
    )
    shape = (
        model_size["num_layers"], model_size["hidden_dim"], model_size["intermediate_dim"],
        base["sequence_length"], base["batch_size"],
    )
    # Model FLOPs (the basis of MFU) are the same for every contender; the FLOPs each one
    # executes (the basis of hardware FLOP utilisation, HFU) are not: kbert's last block runs
    # only at the masked positions, Hugging Face scores the vocabulary at every position.
    flops_per_step = masked_lm_training_flops(*shape, base["num_predictions"])
    executed_flops_per_step = {
        "kbert": masked_lm_training_flops(*shape, base["num_predictions"], last_layer_at_predictions=True),
        "keras-hub": flops_per_step,
        "transformers": masked_lm_training_flops(*shape, base["sequence_length"]),
    }
    tokens_per_step = base["batch_size"] * base["sequence_length"]
    report = {
        "size": size, "config": base, "flops_per_step": flops_per_step,
        "executed_flops_per_step": executed_flops_per_step, "precisions": {},
    }
    for precision in precisions:
        peak = harness.matmul_peak_gflops("bfloat16" if precision == "mixed_bfloat16" else "float32")
        contenders = {}
        for backend in kbert_backends:
            contenders[f"kbert ({backend})"] = (
                "benchmarks.pretraining",
                dict(base, contender="kbert", precision=precision, jit_compile=backend == "jax"),
                backend,
            )
        contenders["keras-hub (tensorflow)"] = (
            "benchmarks.pretraining", dict(base, contender="keras_hub", precision=precision), "tensorflow"
        )
        contenders["transformers (torch)"] = (
            "benchmarks.pretraining", dict(base, contender="huggingface", precision=precision), "torch"
        )
        print(
            f"pretraining, {size}, sequence {sequence_length}, batch {batch_size}, {precision}: "
            f"matmul peak {peak:.0f} GFLOP/s",
            flush=True,
        )
        results = harness.run_alternating(contenders, rounds)
        best_kbert = max(
            (name for name in results if name.startswith("kbert")),
            key=lambda name: results[name]["tokens_per_second"],
        )
        rows = []
        for name, figures in results.items():
            tokens_per_second = figures["tokens_per_second"]
            steps_per_second = tokens_per_second / tokens_per_step
            gflops = steps_per_second * flops_per_step / 1e9
            executed = executed_flops_per_step[name.split(" ")[0]]
            rows.append(
                {
                    "name": name,
                    "tokens_per_second": tokens_per_second,
                    "model_gflops": gflops,
                    "mfu": gflops / peak,
                    "hfu": steps_per_second * executed / 1e9 / peak,
                    "kbert_ratio": results[best_kbert]["tokens_per_second"] / tokens_per_second,
                    "rounds": figures["rounds"],
                }
            )
        harness.print_table(
            f"{precision} (peak {peak:.0f} GFLOP/s)",
            rows,
            [("tokens/s", "tokens_per_second"), ("model GFLOP/s", "model_gflops"),
             ("MFU", "mfu"), ("HFU", "hfu"), (f"{best_kbert} / this", "kbert_ratio")],
        )
        report["precisions"][precision] = {"matmul_peak_gflops": peak, "best_kbert": best_kbert, "rows": rows}
    return report


def main():
    harness.training_benchmark_main(
        __doc__.split("\n\n")[0], run, "pretraining", steps=10, rounds=8,
        precisions=("float32", "mixed_bfloat16"),
        extra_arguments=(
            ("--sequence-length", dict(type=int, default=128)),
            ("--batch-size", dict(type=int, default=32)),
        ),
    )


if __name__ == "__main__":
    main()
