"""Every benchmark in one run: pretraining, fine-tuning, serving and data pipelines.

    python -m benchmarks.run_all [--quick] [--size mini] [--only finetuning serving ...]

Runs benchmarks/pretraining.py (float32 and mixed_bfloat16), finetuning.py, serving.py and
data_pipelines.py in turn, each measuring its contenders in alternation (medians over rounds),
prints each benchmark's table as it finishes, then a summary: the machine's matmul peaks, each
kbert figure next to its peer with the ratio and the speed target it is held to, and kbert's
model FLOP utilisation for every training figure. Writes everything to
benchmarks/results/all.json and the summary, with the date, machine, command and settings,
to benchmarks/RESULTS.md, the one file the docs quote. `--quick` measures fewer rounds and steps (about 10 minutes on an
idle 2-core machine); its figures are noisier.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile

from benchmarks import finetuning, harness, pretraining, serving

QUICK = {
    "pretraining": {"rounds": 3, "steps": 3},
    "finetuning": {"rounds": 3, "steps": 5},
    "serving": {"rounds": 3, "requests": 50, "batches": 2},
    "data_pipelines": {"rounds": 3, "limit": 5000},
}
BENCHMARKS = ("pretraining", "finetuning", "serving", "data_pipelines")
FULL = {
    # Eight rounds for pretraining: a process's steps can run slow for seconds at a time
    # (kbert's and keras-hub's alike, not at the same moments), and with fewer rounds one
    # such spell moves the median of either.
    "pretraining": {"rounds": 8, "steps": 10},
    "finetuning": {"rounds": 5, "steps": 20},
    "serving": {"rounds": 5, "requests": 200, "batches": 8},
    "data_pipelines": {"rounds": 5, "limit": 20000},
}


def _data_pipelines(settings):
    """data_pipelines.py has only a command line; run it and read back its JSON."""
    with tempfile.TemporaryDirectory() as directory:
        output = os.path.join(directory, "data_pipelines.json")
        command = [
            sys.executable, "-m", "benchmarks.data_pipelines",
            "--rounds", str(settings["rounds"]), "--limit", str(settings["limit"]), "--output", output,
        ]
        completed = subprocess.run(command, cwd=harness.PROJECT_ROOT)
        if completed.returncode != 0 or not os.path.isfile(output):
            print(f"data pipelines: skipped (exit code {completed.returncode})")
            return None
        with open(output, encoding="utf-8") as file:
            return json.load(file)


def _row(benchmark, kbert, peer, kbert_figure, peer_figure, target, higher_is_better=True, mfu=None):
    ratio = kbert_figure / peer_figure
    if target is None:
        met = None
    else:
        met = "yes" if (ratio >= target if higher_is_better else ratio <= target) else "no"
    return {
        "name": benchmark,
        "kbert": kbert,
        "kbert_figure": kbert_figure,
        "peer": peer,
        "peer_figure": peer_figure,
        "ratio": ratio,
        "target": None if target is None else (">= " if higher_is_better else "<= ") + f"{target:g}",
        "met": met,
        "mfu": mfu,
    }


def _fastest_kbert(report, benchmark, figure):
    """kbert's best `figure` over all precisions of `benchmark` in `report` (None if absent)."""
    results = (report.get(benchmark) or {}).get("precisions", {}).values()
    figures = [row[figure] for result in results for row in result["rows"] if row["name"].startswith("kbert")]
    return max(figures, default=None)


def summarize(report):
    """One row per speed target: kbert's figure, its peer's, the ratio and whether it holds."""
    rows = []
    peaks = {}
    targets = {"float32": 1.2, "mixed_bfloat16": 1.5}
    for precision, result in (report.get("pretraining") or {}).get("precisions", {}).items():
        peaks[precision] = result["matmul_peak_gflops"]
        by_name = {row["name"]: row for row in result["rows"]}
        best = by_name[result["best_kbert"]]
        for peer, target in (("keras-hub (tensorflow)", targets[precision]), ("transformers (torch)", 4)):
            if peer in by_name:
                rows.append(_row(
                    f"pretraining {precision}, tokens/s", best["name"], peer,
                    best["tokens_per_second"], by_name[peer]["tokens_per_second"], target, mfu=best["mfu"],
                ))
    for precision, result in (report.get("finetuning") or {}).get("precisions", {}).items():
        peaks.setdefault(precision, result["matmul_peak_gflops"])
        by_name = {row["name"]: row for row in result["rows"]}
        for name in finetuning.CONTENDERS[:-1]:
            rows.append(_row(
                f"SST-2 fine-tuning {precision}, examples/s", name, "keras-hub",
                by_name[name]["examples_per_second"], by_name["keras-hub"]["examples_per_second"], 3,
                mfu=by_name[name]["mfu"],
            ))
    if report.get("serving"):
        by_name = {row["name"]: row for row in report["serving"]["rows"]}
        rows.append(_row(
            "serving, batch-1 p50 ms", "kbert", "keras-hub",
            by_name["kbert"]["batch_1_p50_ms"], by_name["keras-hub"]["batch_1_p50_ms"], 0.8,
            higher_is_better=False,
        ))
        rows.append(_row(
            "serving, batch-64 texts/s", "kbert", "keras-hub",
            by_name["kbert"]["batch_64_texts_per_second"], by_name["keras-hub"]["batch_64_texts_per_second"],
            None,
        ))
    data = report.get("data_pipelines")
    if data:
        for task, kbert in (("pretraining", "kbert"), ("classification", "kbert buckets")):
            rows.append(_row(
                f"data {task}, sequences/s", kbert, "keras-hub",
                data[task][kbert]["sequences_per_second"], data[task]["keras-hub"]["sequences_per_second"], None,
            ))
        # The pipeline must outpace training on the same cores by 5x.
        fastest = _fastest_kbert(report, "pretraining", "tokens_per_second")
        if fastest:
            training_sequences = fastest / report["pretraining"]["config"]["sequence_length"]
            rows.append(_row(
                "pretraining pipeline / training, sequences/s", "kbert", "kbert training",
                data["pretraining"]["kbert"]["sequences_per_second"], training_sequences, 5,
            ))
        training_examples = _fastest_kbert(report, "finetuning", "examples_per_second")
        if training_examples:
            rows.append(_row(
                "classification pipeline / training, sequences/s", "kbert buckets", "kbert training",
                data["classification"]["kbert buckets"]["sequences_per_second"], training_examples, 5,
            ))
    return peaks, rows


SUMMARY_COLUMNS = (
    ("kbert", "kbert"), ("kbert figure", "kbert_figure"), ("peer", "peer"),
    ("peer figure", "peer_figure"), ("ratio", "ratio"), ("target", "target"),
    ("met", "met"), ("kbert MFU", "mfu"),
)


def results_markdown(report, command):
    """benchmarks/RESULTS.md for one run: when, where, how, and the summary table it printed."""
    machine = report["machine"]
    settings = "; ".join(
        f"{name}: " + ", ".join(f"{key} {value}" for key, value in options.items())
        for name, options in report["settings"].items()
        if name in report
    )
    peaks = ", ".join(
        f"{precision} {peak:.0f} GFLOP/s" for precision, peak in report["matmul_peak_gflops"].items()
    )
    lines = [
        "# Benchmark results",
        "",
        "Written by `benchmarks/run_all.py` at the end of its run; the next run replaces this file.",
        "Every figure of the run is in `benchmarks/results/all.json` (not kept in git).",
        "",
        f"- command: `{command}`",
        f"- started: {report['started']}",
        f"- machine: {machine['cpu_count']} CPU cores, {machine['processor'] or 'processor unknown'}, "
        f"{machine['system']}",
        f"- model size: {report['size']}; {'quick' if report['quick'] else 'full'} settings: {settings}",
        f"- matmul peak measured in the run: {peaks or 'not measured'}",
        "",
        "| benchmark | " + " | ".join(label for label, _ in SUMMARY_COLUMNS) + " |",
        "|---" * (len(SUMMARY_COLUMNS) + 1) + "|",
    ]
    for row in report["summary"]:
        cells = [row["name"]] + [harness.format_figure(row.get(key)) for _, key in SUMMARY_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(path, report, command):
    with open(path, "w", encoding="utf-8") as file:
        file.write(results_markdown(report, command))
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps")
    parser.add_argument("--size", default="mini")
    parser.add_argument(
        "--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS,
        help="run these benchmarks only (default: all)",
    )
    parser.add_argument("--output", default=os.path.join(harness.BENCHMARKS_DIR, "results", "all.json"))
    parser.add_argument(
        "--results", default=os.path.join(harness.BENCHMARKS_DIR, "RESULTS.md"),
        help="the summary as markdown (default: benchmarks/RESULTS.md)",
    )
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    report = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor(), "system": platform.platform()},
        "quick": args.quick,
        "size": args.size,
        "settings": settings,
    }
    runners = {
        "pretraining": lambda options: pretraining.run(
            args.size, options["rounds"], options["steps"], ("float32", "mixed_bfloat16")
        ),
        "finetuning": lambda options: finetuning.run(args.size, options["rounds"], options["steps"]),
        "serving": lambda options: serving.run(
            args.size, options["rounds"], options["requests"], options["batches"]
        ),
        "data_pipelines": _data_pipelines,
    }
    for name in BENCHMARKS:
        if name not in args.only:
            continue
        print(f"\n== {name} ==", flush=True)
        report[name] = runners[name](settings[name])
        # Written after each benchmark so that a failure late in a long run keeps the
        # figures already measured.
        harness.write_json(args.output, report)

    peaks, rows = summarize(report)
    report["matmul_peak_gflops"] = peaks
    report["summary"] = rows
    print("\n== summary ==")
    print("matmul peak: " + ", ".join(f"{precision} {peak:.0f} GFLOP/s" for precision, peak in peaks.items()))
    harness.print_table("benchmark", rows, SUMMARY_COLUMNS)
    harness.write_json(args.output, report)
    write_results(args.results, report, shlex.join(["python", "-m", "benchmarks.run_all", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
