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


class TextEncoder:
    """Embeds texts with a kbert model directory or an exported SavedModel.

    A model directory runs its Keras model through the very function its export serves
    (`Task.predict`); a SavedModel runs only its `serving_default` signature, as TF Serving.

    Args:
        path: a kbert model directory of an embedding model, or a SavedModel (version or
            base directory) whose `serving_default` answers `embeddings`.

    Example:
    >>> encoder = TextEncoder("runs/sts")  # doctest: +SKIP
    >>> encoder([b"a man is playing a guitar"]).shape  # doctest: +SKIP
    (1, 384)
    """

    def __init__(self, path):
        import os

        from kbert.signatures import SERVING_DEFAULT

        self.path = os.fspath(path)
        if os.path.isfile(os.path.join(self.path, "config.json")):
            from kbert import model_dir, tasks
            from kbert.export import resolve_sequence_length
            from kbert.tokenizer import BertPreprocessor, BertTokenizer

            config = model_dir.read_config(self.path)
            self.task = tasks.from_config(config, purpose="embed with")
            self.model = model_dir.load(self.path)
            if self.task.name != "embedding":
                raise ValueError(
                    f"{self.path} holds a {type(self.model).__name__}, not an embedding model "
                    f"(BertTextEmbedder)"
                )
            self.preprocessor = BertPreprocessor(
                BertTokenizer.from_model_dir(self.path),
                sequence_length=resolve_sequence_length(config, self.model),
            )
            self._server = None
        else:
            from kbert.serving import SavedModelServer

            self._server = SavedModelServer(self.path)
            outputs = self._server.signature_defs[SERVING_DEFAULT].outputs
            if "embeddings" not in outputs:
                raise ValueError(
                    f"{self.path}'s serving_default answers {sorted(outputs)}, not embeddings: "
                    f"it is not an embedding model's export"
                )

    def __call__(self, texts):
        """(len(texts), hidden) float32 embeddings of `texts` (bytes or str)."""
        from kbert.signatures import SERVING_DEFAULT

        texts = np.array(list(texts), dtype=object)
        if self._server is not None:
            return self._server.run(SERVING_DEFAULT, {"text": texts})["embeddings"]
        outputs = self.task.predict(self.model, self.preprocessor, {"text": texts})
        return np.asarray(outputs["embeddings"], np.float32)

    def embed_all(self, texts, batch_size=64, progress=None):
        """Embeddings of `texts` in batches of `batch_size`; `progress(done, total)` after each."""
        if batch_size < 1:
            raise ValueError(f"Expected batch_size to be positive. Received: batch_size={batch_size}")
        batches = []
        for start in range(0, len(texts), batch_size):
            batches.append(self(texts[start : start + batch_size]))
            if progress is not None:
                progress(min(start + batch_size, len(texts)), len(texts))
        if not batches:
            return np.zeros((0, 0), np.float32)
        return np.concatenate(batches)
