"""Where a SavedModel's serving time goes, as TensorFlow Serving runs it.

    python -m benchmarks.serving_profile SAVED_MODEL [--batch-size 64] [--runs 10]
        [--texts news|sst2] [--signature serving_default] [--intra-op 2] [--inter-op 2]

Loads the SavedModel with TensorFlow's TF1 session loader (what the model server does), in
this process without kbert, feeds `--batch-size` texts (the first of `benchmarks/serving_real.py`'s
set) to the signature by its tensor names, and traces `--runs` calls with `RunOptions.FULL_TRACE`. The step stats give every node's
time; they are summed by op type and by part of the model (tokenization and packing, the
embeddings, each encoder sub-layer summed over layers, the head), as shares of the summed op
time, next to the median wall time of an untraced call.

Op times overlap when the session runs ops in parallel (`--inter-op` above 1), so the shares
are of op time, not of wall time.
"""

import argparse
import collections
import re
import statistics
import time

# Parts of the model, found in the node names that Keras gives its layers.
_LAYER = re.compile(r"transformer_layer_\d+(?:_\d+)?/([a-z_]+?)(?:_\d+)?/")
_PARTS = (
    ("tokenization and packing", re.compile(r"preprocessor|tokeniz|wordpiece|regex|normaliz|"
                                            r"unicode|pack|ragged|RaggedTensor|StringSplit")),
    ("embeddings", re.compile(r"embedding")),
    ("pooler and head", re.compile(r"pooled_dense|logits|classifier|head|softmax_output")),
)


def part_of(node_name):
    match = _LAYER.search(node_name)
    if match:
        return "encoder: " + match.group(1)
    if "transformer_layer" in node_name:
        return "encoder: attention (scores, softmax, context)"
    for name, pattern in _PARTS:
        if pattern.search(node_name):
            return name
    return "other"


def load(saved_model, signature_name, intra_op, inter_op):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the tokenizer's ops)

    graph = tf.Graph()
    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=intra_op, inter_op_parallelism_threads=inter_op
    )
    session = tf.compat.v1.Session(graph=graph, config=config)
    with graph.as_default():
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], saved_model)
    signature = meta_graph.signature_def[signature_name]
    return session, signature


def profile(saved_model, texts, signature_name="serving_default", runs=10, intra_op=2, inter_op=2):
    import tensorflow as tf

    session, signature = load(saved_model, signature_name, intra_op, inter_op)
    (input_name,) = [info.name for key, info in signature.inputs.items() if key == "text"]
    fetches = [info.name for info in signature.outputs.values()]
    feed = {input_name: texts}
    for _ in range(3):
        session.run(fetches, feed)
    walls = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(fetches, feed)
        walls.append(time.perf_counter() - start)

    by_type, by_part, by_node = collections.Counter(), collections.Counter(), collections.Counter()
    options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
    for _ in range(runs):
        metadata = tf.compat.v1.RunMetadata()
        session.run(fetches, feed, options=options, run_metadata=metadata)
        for device in metadata.step_stats.dev_stats:
            for node in device.node_stats:
                micros = node.all_end_rel_micros
                op_type = node.timeline_label.split("(")[0].split(" = ")[-1].strip() or node.node_name
                by_type[op_type] += micros
                by_part[part_of(node.node_name)] += micros
                by_node[node.node_name] += micros
    return {
        "wall_ms": 1000 * statistics.median(walls),
        "by_type": by_type,
        "by_part": by_part,
        "by_node": by_node,
        "runs": runs,
    }


def print_profile(result, top=25):
    total = sum(result["by_type"].values())
    print(f"median wall time of a call: {result['wall_ms']:.1f} ms; "
          f"summed op time per call: {total / result['runs'] / 1000:.1f} ms")
    for title in ("by_part", "by_type", "by_node"):
        print(f"\nop time {title.replace('_', ' ')} (share of summed op time)")
        for name, micros in result[title].most_common(top):
            print(f"  {100 * micros / total:5.1f}%  {micros / result['runs'] / 1000:7.2f} ms  {name}")


def read_texts(kind, count):
    from benchmarks import serving_real

    return serving_real.read_texts(kind)[:count]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("saved_model")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--texts", choices=("news", "sst2"), default="news")
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--intra-op", type=int, default=2)
    parser.add_argument("--inter-op", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    texts = read_texts(args.texts, args.batch_size)
    result = profile(args.saved_model, texts, args.signature, args.runs, args.intra_op, args.inter_op)
    print_profile(result, args.top)


if __name__ == "__main__":
    main()
