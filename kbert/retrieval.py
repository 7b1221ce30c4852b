"""Exact search over embeddings, and the metrics of embedding models.

`search` scores every query against every corpus embedding (a dot product, the cosine
similarity of normalised embeddings) in chunks, so its answers are exact, not an approximate
index's. `retrieval_metrics` ranks the whole corpus for each query: recall@k and MRR@10 over
all of it, not over a sample. `similarity_correlations` is the STS protocol: Spearman and
Pearson correlation of the cosine similarity of each pair with its gold score.
"""

import numpy as np

# Queries scored against the corpus at once: a (chunk, corpus) float32 matrix in memory.
QUERIES_PER_CHUNK = 256


def cosine_similarities(embeddings, other_embeddings):
    """Row-wise cosine similarity of two (num_pairs, hidden) arrays, in float64."""
    embeddings = np.asarray(embeddings, np.float64)
    other_embeddings = np.asarray(other_embeddings, np.float64)
    norms = np.linalg.norm(embeddings, axis=-1) * np.linalg.norm(other_embeddings, axis=-1)
    # The floor of torch.nn.functional.cosine_similarity, so a zero vector scores 0.
    return np.sum(embeddings * other_embeddings, axis=-1) / np.maximum(norms, 1e-8)


def similarity_correlations(embeddings, other_embeddings, scores):
    """`{"spearman", "pearson"}` of the pairs' cosine similarities with their gold `scores`.

    The correlations of `scipy.stats`, as sentence-transformers' EmbeddingSimilarityEvaluator
    reports them (Spearman ranks ties by their average rank).
    """
    from scipy import stats

    similarities = cosine_similarities(embeddings, other_embeddings)
    scores = np.asarray(scores, np.float64)
    if len(scores) < 2:
        raise ValueError(
            f"Expected at least 2 scored pairs to correlate. Received: {len(scores)} pairs"
        )
    return {
        "spearman": float(stats.spearmanr(scores, similarities).statistic),
        "pearson": float(stats.pearsonr(scores, similarities).statistic),
        "num_pairs": len(scores),
    }


def search(query_embeddings, corpus_embeddings, top_k=10):
    """The `top_k` corpus rows of highest dot product with each query, best first.

    Ties keep corpus order, so the answer does not depend on the chunking.

    Args:
        query_embeddings: (num_queries, hidden) array.
        corpus_embeddings: (corpus_size, hidden) array.
        top_k: matches per query (at most the corpus size).

    Returns:
        `(indices, scores)`: int64 and float32 arrays of shape (num_queries, top_k).
    """
    query_embeddings = np.asarray(query_embeddings, np.float32)
    corpus_embeddings = np.asarray(corpus_embeddings, np.float32)
    if len(corpus_embeddings) == 0:
        raise ValueError("Expected a corpus of at least one embedding. Received: corpus_size=0")
    if top_k < 1:
        raise ValueError(f"Expected top_k to be a positive integer. Received: top_k={top_k}")
    top_k = min(top_k, len(corpus_embeddings))
    indices, scores = [], []
    for start in range(0, len(query_embeddings), QUERIES_PER_CHUNK):
        chunk_scores = query_embeddings[start : start + QUERIES_PER_CHUNK] @ corpus_embeddings.T
        # A stable sort of negated scores: best first, ties in corpus order.
        order = np.argsort(-chunk_scores, axis=1, kind="stable")[:, :top_k]
        indices.append(order)
        scores.append(np.take_along_axis(chunk_scores, order, axis=1))
    if not indices:
        return np.zeros((0, top_k), np.int64), np.zeros((0, top_k), np.float32)
    return np.concatenate(indices).astype(np.int64), np.concatenate(scores)


def retrieval_metrics(query_embeddings, corpus_embeddings, relevant, recall_at=(1, 5, 10), mrr_at=10):
    """Recall@k and MRR@k of exact search over the whole corpus.

    Recall@k of a query is the share of its relevant corpus rows among its top k; MRR@k the
    reciprocal rank of its first relevant row, 0 beyond rank k. Both are averaged over queries.

    Args:
        query_embeddings: (num_queries, hidden) array.
        corpus_embeddings: (corpus_size, hidden) array.
        relevant: for each query, the collection of its relevant corpus row indices.
        recall_at: the k of each recall.
        mrr_at: the depth of the reciprocal rank.

    Returns:
        `{"recall@1", ..., "mrr@10", "num_queries", "corpus_size"}`.
    """
    if len(relevant) != len(query_embeddings):
        raise ValueError(
            f"Expected one set of relevant rows per query. Received: {len(relevant)} sets for "
            f"{len(query_embeddings)} queries"
        )
    depth = max(max(recall_at), mrr_at)
    indices, _ = search(query_embeddings, corpus_embeddings, top_k=depth)
    recalls = {k: [] for k in recall_at}
    reciprocal_ranks = []
    for ranked, relevant_rows in zip(indices, relevant):
        relevant_rows = set(int(row) for row in relevant_rows)
        if not relevant_rows:
            raise ValueError("Expected every query to have at least one relevant corpus row")
        hits = np.array([int(row) in relevant_rows for row in ranked])
        for k in recall_at:
            recalls[k].append(hits[:k].sum() / len(relevant_rows))
        first = np.flatnonzero(hits[:mrr_at])
        reciprocal_ranks.append(1.0 / (first[0] + 1) if len(first) else 0.0)
    metrics = {f"recall@{k}": float(np.mean(values)) for k, values in recalls.items()}
    metrics[f"mrr@{mrr_at}"] = float(np.mean(reciprocal_ranks))
    metrics["num_queries"] = len(reciprocal_ranks)
    metrics["corpus_size"] = len(corpus_embeddings)
    return metrics
