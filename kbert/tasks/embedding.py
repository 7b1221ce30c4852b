"""The sentence-embedding task: `BertTextEmbedder`, trained on text pairs, served as vectors.

Two kinds of pairs train it (`kbert.data.pairs` reads them):

    scored pairs ("sts", "similarity")   two texts and a similarity score; the CoSENT loss (or
                                         squared error of the cosine similarity, "cosine_mse")
    (anchor, positive) ("retrieval")     a query and a passage that answers it; multiple-negatives
                                         ranking: every other positive of the batch is a negative

A batch holds `pairs` pairs as one embedder batch of 2 * pairs texts: the first texts, then the
second texts. The model trained is the embedder itself, so the model directory, the export and
`kbert embed` read exactly what was trained. Under `tf.distribute` each replica batches its own
share, so the in-batch negatives of a step are those of its replica's batch
(global batch / replicas pairs).

Evaluation follows the field's protocols: on scored pairs, Spearman and Pearson correlation of
the cosine similarity with the gold scores (STS); on (query, passage) pairs, recall@1/5/10 and
MRR@10 of exact search over every distinct passage of the data (`kbert.retrieval`).
"""

import math

import numpy as np

from kbert.tasks import Finetuning, Task

SCORED_ALIASES = ("sts", "similarity")
RETRIEVAL_ALIASES = ("retrieval",)
SCORED_OBJECTIVES = ("cosent", "cosine_mse")
RETRIEVAL_OBJECTIVE = "multiple_negatives_ranking"
# The similarity scale of sentence-transformers' CoSENT and multiple-negatives ranking losses.
DEFAULT_SCALE = 20.0


class EmbeddingTask(Task):
    """Sentence embeddings; see the module docstring.

    Settings (all optional): `name` ("embedding", "sts", "similarity" or "retrieval"),
    `pooling`, `normalize`, `objective`, `scale`, `text_columns`, `label_column`,
    `score_range`.
    """

    name = "embedding"
    model_class_name = "BertTextEmbedder"
    learning_rate = 2e-5
    aliases = SCORED_ALIASES + RETRIEVAL_ALIASES

    # === Model ===

    def build_model(self, backbone, dropout=0.1):
        """A `BertTextEmbedder` with the settings' pooling and normalisation."""
        from kbert.embedder import BertTextEmbedder

        # The embeddings never read the pooler: frozen, it gets no optimizer slots (nor Keras'
        # warning that it has no gradients).
        backbone.pooled_dense.trainable = False
        return BertTextEmbedder(
            backbone,
            pooling=self.settings.get("pooling", "mean"),
            normalize=self.settings.get("normalize", True),
        )

    def scored(self):
        """`True` or `False` where the task's name decides whether pairs carry scores, else `None`."""
        name = self.settings.get("name")
        if name in SCORED_ALIASES:
            return True
        if name in RETRIEVAL_ALIASES:
            return False
        return None

    def read_pairs(self, paths, text_columns=None, label_column=None, header=None, delimiter=None,
                   score_range=None, scored=None):
        """The `TextPairs` of one file or several (joined), read as the settings say."""
        from kbert.data.pairs import TextPairs, read_text_pairs

        paths = [paths] if isinstance(paths, (str, bytes)) or not hasattr(paths, "__iter__") else paths
        options = dict(
            text_columns=text_columns or self.settings.get("text_columns"),
            label_column=label_column if label_column is not None else self.settings.get("label_column"),
            header=header, delimiter=delimiter,
            score_range=score_range or self.settings.get("score_range"),
            scored=self.scored() if scored is None else scored,
        )
        parts = [read_text_pairs(str(path), **options) for path in paths]
        if len({part.scores is None for part in parts}) > 1:
            raise ValueError(
                f"Expected all of {', '.join(map(str, paths))} to hold scored pairs, or none of them"
            )
        scores = None if parts[0].scores is None else sum((part.scores for part in parts), [])
        return TextPairs(
            sum((part.texts for part in parts), []), sum((part.text_pairs for part in parts), []),
            scores, ", ".join(part.path for part in parts),
        )

    def prepare_finetuning(self, init, data, tokenizer, seed=0):
        """Pairs of `data.train` (and `data.validation`), in stacked batches of pair texts."""
        from kbert.tokenizer import BertPreprocessor

        read_options = dict(
            text_columns=data.text_columns, label_column=data.label_column, header=data.header,
            delimiter=data.delimiter, score_range=getattr(data, "score_range", None),
        )
        training_pairs = self.read_pairs(data.train, **read_options)
        scored = training_pairs.scores is not None
        read_options["scored"] = scored
        validation_pairs = None
        if data.validation is not None:
            validation_pairs = self.read_pairs(data.validation, **read_options)
        objective = getattr(data, "objective", None) or ("cosent" if scored else RETRIEVAL_OBJECTIVE)
        _check_objective(objective, scored)
        self.settings = dict(
            _init_pooling(init),
            name=self.settings.get("name", self.name),
            objective=objective,
            scale=DEFAULT_SCALE,
            text_columns=list(data.text_columns) if data.text_columns else None,
            label_column=data.label_column,
            score_range=list(read_options["score_range"]) if read_options["score_range"] else None,
        )
        preprocessor = BertPreprocessor(tokenizer, sequence_length=data.sequence_length)

        def train_data(input_context=None):
            return pair_dataset(training_pairs, preprocessor, data.batch_size, shuffle=True,
                                seed=seed, input_context=input_context)

        def validation_data(input_context=None):
            return pair_dataset(validation_pairs, preprocessor, data.batch_size,
                                input_context=input_context)

        steps_per_epoch = math.ceil(len(training_pairs.texts) / data.batch_size)
        return Finetuning(
            train_data, validation_data if validation_pairs is not None else None,
            steps_per_epoch, self.settings,
        )

    # === Loss and metrics ===

    def compile_defaults(self, model):
        from kbert.losses import PairEmbeddingLoss

        return dict(loss=PairEmbeddingLoss(
            self.settings.get("objective", "cosent"), scale=self.settings.get("scale", DEFAULT_SCALE)
        ))

    # === Evaluation ===

    def evaluation_dataset(self, model, tokenizer, data, sequence_length, batch_size, split=None,
                           data_dir=None, task=None, text_columns=None, label_column=None,
                           header=None, delimiter=None):
        """Pairs of `data`: scored pairs for the STS protocol, else (query, passage) pairs."""
        from kbert.tokenizer import BertPreprocessor

        scored = None
        if task is not None:
            scored = type(self)({"name": task}).scored()
        pairs = self.read_pairs(data, text_columns=text_columns, label_column=label_column,
                                header=header, delimiter=delimiter, scored=scored)
        preprocessor = BertPreprocessor(tokenizer, sequence_length=sequence_length)
        return pair_dataset(pairs, preprocessor, batch_size)

    def evaluate(self, model, dataset, compile=True):
        """STS correlations, or retrieval metrics over the whole corpus (see the module docstring).

        The metrics need every embedding at once, which Keras' streaming metrics do not see.
        """
        from kbert import retrieval

        first, second, targets = [], [], []
        for inputs, batch_targets in dataset:
            embeddings = np.asarray(model(inputs, training=False))  # (2 * pairs, hidden)
            num_pairs = len(embeddings) // 2
            first.append(embeddings[:num_pairs])
            second.append(embeddings[num_pairs:])
            targets.append(np.asarray(batch_targets))
        first, second, targets = (np.concatenate(values) for values in (first, second, targets))
        if targets.ndim == 1:  # scores
            return retrieval.similarity_correlations(first, second, targets)
        query_ids, passage_ids = targets[:, 0], targets[:, 1]
        queries = _first_rows(first, query_ids)
        corpus = _first_rows(second, passage_ids)
        relevant = [set() for _ in range(len(queries))]
        for query_id, passage_id in zip(query_ids, passage_ids):
            relevant[query_id].add(passage_id)
        return retrieval.retrieval_metrics(queries, corpus, relevant)

    # === Serving ===

    def serving_endpoints(self, model, preprocessor, top_k=5, text_pair=None):
        """`serving_default` (text -> embeddings) and `serve_token_ids`."""
        from kbert import signatures

        def run_model(token_ids, segment_ids, padding_mask):
            embeddings = model(
                {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask},
                training=False,
            )  # (batch, hidden), float32
            return {"embeddings": embeddings}

        def from_token_ids(token_ids, segment_ids, padding_mask):
            return run_model(
                **signatures.checked_token_id_inputs(model.backbone, token_ids, segment_ids, padding_mask)
            )

        def from_text(text):
            # Padded to the longest text of the batch: padding cannot change mean pooling.
            return run_model(**preprocessor(text, pad_to_longest=True))

        return signatures.predict_endpoints(from_text, from_token_ids)


def pair_dataset(pairs, preprocessor, batch_size, shuffle=False, seed=None, input_context=None):
    """Batches of `(x, targets)` of `pairs` for a `BertTextEmbedder` trained on pairs.

    Args:
        pairs: a `kbert.data.pairs.TextPairs`.
        preprocessor: a `BertPreprocessor`; texts are truncated to its `sequence_length`, and
            each batch padded to the smallest of `default_bucket_boundaries(sequence_length)`
            that holds its longest text.
        batch_size: the global number of pairs per batch (divided among replicas under
            `input_context`).
        shuffle: shuffle the pairs every epoch.
        seed: the shuffling seed.
        input_context: a `tf.distribute.InputContext`: this pipeline's share of the pairs.

    Returns:
        `tf.data.Dataset` of `(x, targets)`: `x` the model inputs of 2 * pairs texts (the first
        texts, then the second texts); `targets` the float32 scores (pairs,) of scored pairs,
        else int32 (pairs, 2) ids of the distinct query and passage of each pair.
    """
    import tensorflow as tf

    from kbert.data.classification import default_bucket_boundaries
    from kbert.data.sources import distribution_options, without_autotuning

    if pairs.scores is not None:
        targets = np.asarray(pairs.scores, np.float32)
    else:
        targets = np.stack([_distinct_ids(pairs.texts), _distinct_ids(pairs.text_pairs)], axis=1)
    # Tokenized once, eagerly, for every epoch: tracing the tokenizer into each pipeline
    # costs more than running it on all the texts. No text keeps more than this after packing.
    max_tokens = preprocessor.sequence_length - 2
    tokenizer = preprocessor.tokenizer
    token_ids = [tokenizer(tf.constant(texts))[:, :max_tokens] for texts in (pairs.texts, pairs.text_pairs)]
    dataset = tf.data.Dataset.from_tensor_slices((*token_ids, targets))
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
        if input_context.num_input_pipelines > 1:
            dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if shuffle:
        dataset = dataset.shuffle(len(pairs.texts), seed=seed, reshuffle_each_iteration=True)

    # Padded to the smallest length bucket that holds the batch's longest text, not to the
    # longest text itself: a few shapes mean a few traces (and XLA compilations) per run,
    # where one shape per length would compile the training step dozens of times.
    boundaries = tf.constant(default_bucket_boundaries(preprocessor.sequence_length), tf.int32)

    def pack(first_ids, second_ids, batch_targets):
        token_ids = tf.concat([first_ids, second_ids], axis=0)
        longest = tf.maximum(tf.reduce_max(token_ids.row_lengths()), 0) + 2  # [CLS] text [SEP]
        length = boundaries[tf.searchsorted(boundaries, tf.cast(longest, tf.int32)[tf.newaxis])[0]]
        return preprocessor.pack(token_ids, sequence_length=length), batch_targets

    # Graph code already; AutoGraph would only spend time converting it.
    pack = tf.autograph.experimental.do_not_convert(pack)
    dataset = dataset.ragged_batch(batch_size).map(pack, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.with_options(distribution_options(input_context)).prefetch(tf.data.AUTOTUNE)
    return without_autotuning(dataset)


def _distinct_ids(texts):
    """int32 id of each text, the same for equal texts, in order of first appearance."""
    ids = {}
    return np.array([ids.setdefault(text, len(ids)) for text in texts], np.int32)


def _first_rows(embeddings, ids):
    """(num_ids, hidden): for each id, the embedding of its first row."""
    _, first = np.unique(ids, return_index=True)  # ids run 0 .. num_ids - 1
    return embeddings[first]


def _init_pooling(init):
    """The pooling and normalisation of the model directory `init`, if it holds an embedder."""
    from kbert import model_dir

    model = model_dir.read_config(init)["model"]
    if model.get("class_name") != EmbeddingTask.model_class_name:
        return {"pooling": "mean", "normalize": True}
    return {"pooling": model["config"]["pooling"], "normalize": model["config"]["normalize"]}


def _check_objective(objective, scored):
    allowed = SCORED_OBJECTIVES if scored else (RETRIEVAL_OBJECTIVE,)
    if objective not in allowed:
        kind = "scored pairs" if scored else "(anchor, positive) pairs"
        raise ValueError(
            f"Expected objective to be one of {', '.join(allowed)} for {kind}. "
            f"Received: objective={objective!r}"
        )
