"""`kbert search`: the lines of a corpus closest to a query, by exact dot-product search.

Every corpus line is embedded (or its embeddings are read from `kbert embed`'s .npy file) and
scored against the query's embedding in memory; for normalised embeddings the score is the
cosine similarity. Exact search reads the whole corpus for every query: past about a million
lines (a 384-dimensional float32 corpus then takes 1.5 GB and a query some 100 ms on a CPU), a
vector index (FAISS, ScaNN) built from `kbert embed`'s array is the better tool.
"""

import json

from kbert.commands import options
from kbert.commands.embed import add_model_arguments

HELP = "Print the corpus lines most similar to each query (exact search, in memory)."


def add_arguments(parser):
    add_model_arguments(parser)
    parser.add_argument("--corpus", required=True, metavar="FILE", help="the texts searched, one per line")
    parser.add_argument("queries", nargs="+", metavar="QUERY", help="what to search for")
    parser.add_argument("--corpus-embeddings", default=None, metavar="FILE",
                        help="the corpus's embeddings from kbert embed (.npy), instead of embedding it here")
    parser.add_argument("--top-k", type=options.positive_int, default=5, metavar="K", help="matches per query (default: 5)")
    parser.add_argument("--json", action="store_true", help="one JSON object per query instead of a table")


def run(args):
    import os

    import numpy as np

    from kbert.cli import UsageError
    from kbert.commands.embed import print_progress, read_texts
    from kbert.retrieval import TextEncoder, search

    corpus = read_texts(args.corpus)
    encoder = TextEncoder(args.model)
    if args.corpus_embeddings is not None:
        if not os.path.isfile(args.corpus_embeddings):
            raise FileNotFoundError(f"Corpus embeddings not found: {args.corpus_embeddings}")
        corpus_embeddings = np.load(args.corpus_embeddings)
        if corpus_embeddings.ndim != 2 or len(corpus_embeddings) != len(corpus):
            raise UsageError(
                f"{args.corpus_embeddings} holds an array of shape {corpus_embeddings.shape}; expected "
                f"one row per line of {args.corpus} ({len(corpus)} lines)"
            )
    else:
        corpus_embeddings = encoder.embed_all(corpus, args.batch_size, progress=print_progress)
    queries = [query.encode("utf-8", "surrogateescape") for query in args.queries]
    indices, scores = search(encoder(queries), corpus_embeddings, top_k=args.top_k)
    for query, rows, row_scores in zip(args.queries, indices, scores):
        matches = [
            {"rank": rank, "score": float(score), "line": int(row) + 1,
             "text": corpus[row].decode("utf-8", "replace")}
            for rank, (row, score) in enumerate(zip(rows, row_scores), start=1)
        ]
        if args.json:
            print(json.dumps({"query": query, "matches": matches}, ensure_ascii=False))
            continue
        print(f"query: {query}")
        for match in matches:
            print(f"  {match['rank']:>3}  {match['score']:.4f}  line {match['line']}: {match['text']}")
    return 0
