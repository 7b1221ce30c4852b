"""Profile a few masked-LM training steps and print where the time goes.

    python -m benchmarks.profile [--contender kbert|keras_hub] [--precision float32] [--size mini]

Runs the pretraining benchmark's model and batch (`benchmarks/pretraining.py`) under the
TensorFlow profiler, writes the trace to `--logdir` (open it with TensorBoard's profile
plugin) and, where `xprof` is installed (`pip install xprof`), prints the self time of the
op types and of the model's parts (each encoder sub-layer summed over layers, the masked-LM
head, the loss, the optimizer) as shares of the busy time. This is how the masked-LM head's
batch-summed embedding gradient showed up.
"""

import argparse
import collections
import glob
import json
import os
import re

# Parts of the model, found in the op names that Keras gives its layers.
_PART = re.compile(r"(mlm_head|embeddings_[a-z_]+|token_embedding|transformer_layer_\d+(?:_\d+)?/[a-z_]+|compile_loss)")


def _part(op_name):
    # The optimizer's name scope (adam_w, lamb, ...); grappler's "ArithmeticOptimizer" ops are not it.
    if re.search(r"(^|/)(adam_w|adam|lamb|loss_scale_optimizer)(_\d+)?/", op_name):
        return "optimizer"
    match = _PART.search(op_name)
    if not match:
        return "other (attention matmuls, casts, ...)"
    return re.sub(r"transformer_layer_\d+(?:_\d+)?/", "encoder layers: ", match.group(1)).rstrip("_")


def _rows(xplane_path):
    from xprof.convert import raw_to_tool_data

    data, _ = raw_to_tool_data.xspace_to_tool_data([xplane_path], "framework_op_stats", {})
    table = json.loads(data)
    table = table[0] if isinstance(table, list) else table
    columns = [column["id"] for column in table["cols"]]
    for row in table["rows"]:
        values = dict(zip(columns, ((cell or {}).get("v") for cell in row["c"])))
        if values["type"] != "IDLE":
            yield values


def print_breakdown(xplane_path, top=15):
    rows = list(_rows(xplane_path))
    busy = sum(row["total_self_time"] for row in rows)
    for title, key in (("op type", lambda row: row["type"]), ("part", lambda row: _part(row["operation"]))):
        totals = collections.Counter()
        for row in rows:
            totals[key(row)] += row["total_self_time"]
        print(f"\nself time by {title} (share of busy time)")
        for name, microseconds in totals.most_common(top):
            print(f"  {100 * microseconds / busy:5.1f}%  {name}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contender", default="kbert", choices=("kbert", "keras_hub"))
    parser.add_argument("--precision", default="float32", choices=("float32", "mixed_bfloat16"))
    parser.add_argument("--size", default="mini")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--logdir", default=os.path.join("benchmarks", "results", "profile"))
    args = parser.parse_args()

    import tensorflow as tf

    import kbert
    from benchmarks import pretraining

    options = dict(
        kbert.size_config(args.size), sequence_length=128, batch_size=32, num_predictions=20,
        steps=args.steps, contender=args.contender, precision=args.precision, jit_compile=False,
    )
    measure = pretraining.setup(options)  # builds, compiles and warms up
    tf.profiler.experimental.start(args.logdir)
    figures = measure()
    tf.profiler.experimental.stop()
    print(f"{args.contender}, {args.size}, {args.precision}: {figures['tokens_per_second']:.0f} tokens/s "
          f"while profiled; trace in {args.logdir}")
    traces = sorted(glob.glob(os.path.join(args.logdir, "plugins", "profile", "*", "*.xplane.pb")))
    try:
        import xprof  # noqa: F401
    except ImportError:
        print("`pip install xprof` to print the breakdown here, or open the trace in TensorBoard.")
        return
    print_breakdown(traces[-1])


if __name__ == "__main__":
    main()
