"""Side-by-side measurement: contenders in their own processes, measured in alternation.

Each contender (kbert, keras-hub, Hugging Face) runs in a worker process of its own, since
the Keras backend is fixed per process and frameworks must not share threads. The parent
warms every worker up, then asks them in turn for one measurement, round after round, so
that a slow patch of the machine hits every contender alike. Figures are medians over the
rounds.

A worker is a module with a `setup(options) -> measure` function; `measure()` does one
timed unit of work and returns a dict of figures (e.g. `{"tokens_per_second": ...}`).
`setup` may instead return `(measure, details)`: the details (JSON) reach the parent before
any round, for checks that the contenders do the same work.
"""

import json
import os
import statistics
import subprocess
import sys
import time

BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
PROJECT_ROOT = os.path.dirname(BENCHMARKS_DIR)
_REPLY_PREFIX = "@@kbert-benchmark "


class Worker:
    """A contender running `python -m benchmarks.harness MODULE OPTIONS` in a subprocess."""

    def __init__(self, name, module, options, backend="tensorflow", environment=None):
        self.name = name
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        env.update(environment or {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.harness", module, json.dumps(options)],
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.details = self._read_reply().get("details", {})  # set up and warmed up

    def _read_reply(self):
        for line in self.process.stdout:
            if line.startswith(_REPLY_PREFIX):
                return json.loads(line[len(_REPLY_PREFIX):])
        raise RuntimeError(f"benchmark worker {self.name} exited (code {self.process.wait()})")

    def measure(self):
        self.process.stdin.write("measure\n")
        self.process.stdin.flush()
        return self._read_reply()

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)


def run_alternating(contenders, rounds, check=None):
    """Measures `contenders` ({name: (module, options, backend[, environment])}) in alternation.

    Workers are started one at a time and only one measures at any moment. `check`, if
    given, is called with every worker's setup details ({name: details}) once all are set
    up, before the first round; it raises to stop the run. Returns {name: {figure: median}}
    plus the raw rounds under "rounds" and the worker's setup details under "details".
    """
    workers = {}
    try:
        for name, (module, options, backend, *environment) in contenders.items():
            print(f"  starting {name} ...", file=sys.stderr, flush=True)
            workers[name] = Worker(name, module, options, backend, *environment)
        if check is not None:
            check({name: worker.details for name, worker in workers.items()})
        samples = {name: [] for name in workers}
        for round_index in range(rounds):
            for name, worker in workers.items():
                samples[name].append(worker.measure())
            print(f"  round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)
    finally:
        for worker in workers.values():
            worker.close()
    results = {}
    for name, rows in samples.items():
        figures = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        figures["rounds"] = rows
        figures["details"] = workers[name].details
        results[name] = figures
    return results


def batch_clock(count=None):
    """A Keras callback that marks every training batch's end: `(time, count(model))` pairs
    in `.marks`, started afresh by each `fit`, for timing training in steady state.

    `count(model)` reads a running count at that moment (e.g. the examples seen so far);
    without it the marks hold the time alone.
    """
    import keras

    class BatchClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.marks = []

        def on_train_batch_end(self, batch, logs=None):
            mark = time.perf_counter()
            self.marks.append(mark if count is None else (mark, count(self.model)))

    return BatchClock()


def tensorflow_kernels(onednn):
    """The environment of a worker that runs TensorFlow's oneDNN kernels or its default ones.

    TensorFlow reads the switch at import; without it, oneDNN is on only on CPUs with AVX-512.
    The model server reads the same switch. PyTorch and ONNX Runtime ignore it.
    """
    return {"TF_ENABLE_ONEDNN_OPTS": "1" if onednn else "0"}


def huggingface_bert_config(vocabulary_size, num_layers, num_heads, hidden_dim, intermediate_dim, **config):
    """A `transformers.BertConfig` of kbert's size names (`kbert.size_config`'s keys)."""
    import transformers

    return transformers.BertConfig(
        vocab_size=vocabulary_size,
        hidden_size=hidden_dim,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_dim,
        **config,
    )


def matmul_peak_gflops(dtype="float32", size=2048, repeats=20):
    """The machine's matmul ceiling, in GFLOP/s, from TensorFlow (oneDNN on CPU)."""
    import tensorflow as tf

    a = tf.random.normal((size, size), dtype=tf.float32)
    a = tf.cast(a, dtype)

    @tf.function
    def step(x):
        for _ in range(repeats):
            x = tf.matmul(x, a) * tf.cast(1e-3, dtype)
        return x

    step(a).numpy()
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        step(a).numpy()
        timings.append(time.perf_counter() - start)
    return 2 * size**3 * repeats / statistics.median(timings) / 1e9


def print_table(title, rows, columns):
    """Prints rows (dicts) as an aligned text table."""
    header = [title] + [label for label, _ in columns]
    lines = [header] + [
        [row["name"]] + [format_figure(row.get(key)) for _, key in columns] for row in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for index, line in enumerate(lines):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def format_figure(value):
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def write_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(value, file, indent=2)
    print(f"wrote {path}")


def training_benchmark_main(description, run, name, steps, precisions, rounds=5, extra_arguments=()):
    """The command line of a training benchmark: `run(size, rounds, steps, precisions)`.

    Takes `--size`, `--rounds` (default `rounds`), `--steps` (default `steps`), `--precision`
    (repeatable, default `precisions`), `--output` (default benchmarks/results/NAME.json, where
    `name` is a string or a function of the parsed arguments) and the `extra_arguments`
    (`(flag, add_argument keywords)` pairs), which reach `run` as keyword arguments; writes the
    report `run` returns, or exits with code 2 where it returns None (its data is missing).
    """
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size", default="mini")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--steps", type=int, default=steps, help="training steps per measurement")
    parser.add_argument("--precision", action="append", help="float32 and/or mixed_bfloat16")
    parser.add_argument("--output", help="default: benchmarks/results/NAME.json")
    extra = [parser.add_argument(flag, **keywords).dest for flag, keywords in extra_arguments]
    args = parser.parse_args()
    output = args.output or os.path.join(
        BENCHMARKS_DIR, "results", f"{name(args) if callable(name) else name}.json"
    )
    report = run(
        args.size, args.rounds, args.steps, tuple(args.precision or precisions),
        **{dest: getattr(args, dest) for dest in extra},
    )
    if report is None:
        parser.exit(2)
    write_json(output, report)


def _serve(module_name, options):
    """Worker side: set up, warm up, then measure on each request from the parent."""
    import importlib

    module = importlib.import_module(module_name)
    measure, details = module.setup(options), {}
    if isinstance(measure, tuple):
        measure, details = measure
    print(_REPLY_PREFIX + json.dumps({"ready": True, "details": details}), flush=True)
    for line in sys.stdin:
        if line.strip() == "measure":
            print(_REPLY_PREFIX + json.dumps(measure()), flush=True)


def serving_figures(call, singles, batches, num_texts):
    """Times `call` on each single-text request, then on each batch (of `num_texts` in all):
    batch-1 p50 and p99 latency in ms and batch throughput in texts/s."""
    import numpy as np

    latencies = []
    for request in singles:
        start = time.perf_counter()
        call(request)
        latencies.append(time.perf_counter() - start)
    start = time.perf_counter()
    for batch in batches:
        call(batch)
    seconds = time.perf_counter() - start
    return {
        "batch_1_p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "batch_1_p99_ms": 1000 * float(np.percentile(latencies, 99)),
        "batch_64_texts_per_second": num_texts / seconds,
    }


if __name__ == "__main__":
    sys.path.insert(0, PROJECT_ROOT)
    _serve(sys.argv[1], json.loads(sys.argv[2]))

