"""Tests of `kbert.retrieval`: exact search and the metrics, against hand-computed values and scipy."""

import numpy as np
import pytest

from kbert import retrieval

# Four corpus rows and three queries in 2-D; dot products worked out by hand below.
CORPUS = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]], np.float32)
QUERIES = np.array([[1.0, 0.0], [0.0, 1.0], [-0.6, -0.8]], np.float32)
# Query 0 scores rows (1, 0, 0.6, -1): ranking 0, 2, 1, 3.
# Query 1 scores rows (0, 1, 0.8, 0): ranking 1, 2, then 0 and 3 tied (corpus order).
# Query 2 scores rows (-0.6, -0.8, -1, 0.6): ranking 3, 0, 1, 2.


def test_search_ranks_by_dot_product_with_ties_in_corpus_order():
    indices, scores = retrieval.search(QUERIES, CORPUS, top_k=4)
    np.testing.assert_array_equal(indices, [[0, 2, 1, 3], [1, 2, 0, 3], [3, 0, 1, 2]])
    np.testing.assert_allclose(scores[0], [1.0, 0.6, 0.0, -1.0], atol=1e-6)
    # More matches asked for than the corpus holds: all of it.
    assert retrieval.search(QUERIES, CORPUS, top_k=10)[0].shape == (3, 4)


def test_search_answers_the_same_in_chunks(monkeypatch):
    rng = np.random.default_rng(0)
    queries, corpus = rng.normal(size=(7, 5)), rng.normal(size=(30, 5))
    whole = retrieval.search(queries, corpus, top_k=6)
    monkeypatch.setattr(retrieval, "QUERIES_PER_CHUNK", 2)
    chunked = retrieval.search(queries, corpus, top_k=6)
    np.testing.assert_array_equal(whole[0], chunked[0])
    np.testing.assert_array_equal(whole[0], np.argsort(-(queries @ corpus.T), axis=1)[:, :6])


def test_retrieval_metrics_of_a_hand_computed_example():
    # Relevant rows: query 0 -> {2} (rank 2), query 1 -> {1, 3} (ranks 1 and 4),
    # query 2 -> {2} (rank 4).
    metrics = retrieval.retrieval_metrics(
        QUERIES, CORPUS, [{2}, {1, 3}, {2}], recall_at=(1, 2, 4), mrr_at=3
    )
    assert metrics["recall@1"] == pytest.approx((0 + 1 / 2 + 0) / 3)
    assert metrics["recall@2"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert metrics["recall@4"] == pytest.approx(1.0)
    # Reciprocal ranks 1/2, 1/1 and 0 (rank 4 lies beyond 3).
    assert metrics["mrr@3"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert metrics["num_queries"] == 3 and metrics["corpus_size"] == 4


def test_similarity_correlations_match_scipy_on_cosines():
    from scipy import stats

    rng = np.random.default_rng(1)
    first, second = rng.normal(size=(20, 4)), rng.normal(size=(20, 4))
    scores = rng.uniform(0, 5, 20)
    cosines = [a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(first, second)]
    metrics = retrieval.similarity_correlations(first, second, scores)
    assert metrics["spearman"] == pytest.approx(stats.spearmanr(scores, cosines)[0], abs=1e-12)
    assert metrics["pearson"] == pytest.approx(np.corrcoef(scores, cosines)[0, 1], abs=1e-12)


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="corpus_size=0"):
        retrieval.search(QUERIES, np.zeros((0, 2)))
    with pytest.raises(ValueError, match="top_k=0"):
        retrieval.search(QUERIES, CORPUS, top_k=0)
    with pytest.raises(ValueError, match="one set of relevant rows per query"):
        retrieval.retrieval_metrics(QUERIES, CORPUS, [{0}])
