"""BertBackbone: the BERT encoder network."""

import contextlib
import threading

import keras
from keras import ops

from kbert import kernels
from kbert.functional import FunctionalModel
from kbert.layers import Dropout, TransformerEncoder, bert_kernel_initializer
from kbert.sizes import size_config


def _check_positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"Expected {name} to be a positive integer. Received: {name}={value!r}")


@keras.saving.register_keras_serializable(package="kbert")
class BertBackbone(FunctionalModel):
    """A BERT encoder (Devlin et al. 2018) that outputs the final hidden states.

    Token, position and segment embeddings are summed, layer-normalised and passed through
    a stack of post-LayerNorm Transformer encoder blocks with exact (erf) GELU and LayerNorm
    epsilon 1e-12, as in the original BERT. `pooled_output` is a tanh dense layer on the
    `[CLS]` (first) position. Under a mixed precision policy only the matmuls run in the
    compute dtype: the embeddings, the residual stream with its dropout and LayerNorms, the
    softmax and both outputs are float32.

    Args:
        vocabulary_size: number of token ids.
        num_layers: number of encoder blocks.
        num_heads: number of attention heads; must divide `hidden_dim`.
        hidden_dim: width of the hidden states.
        intermediate_dim: width of each block's feed-forward layer.
        dropout: dropout rate everywhere dropout applies.
        max_sequence_length: number of learned positions, the longest sequence accepted.
        num_segments: number of segment (token type) ids.
        dtype: dtype policy of the layers; `None` follows the global Keras policy.

    Example:
    >>> backbone = BertBackbone.from_size("tiny", vocabulary_size=100)
    >>> outputs = backbone({
    ...     "token_ids": np.array([[2, 7, 9, 3, 0]]),
    ...     "segment_ids": np.zeros((1, 5), "int32"),
    ...     "padding_mask": np.array([[1, 1, 1, 1, 0]]),
    ... })
    >>> outputs["sequence_output"].shape, outputs["pooled_output"].shape
    ((1, 5, 128), (1, 128))
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        dropout=0.1,
        max_sequence_length=512,
        num_segments=2,
        dtype=None,
        **kwargs,
    ):
        _check_arguments(
            vocabulary_size=vocabulary_size,
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_dim,
            intermediate_dim=intermediate_dim,
            max_sequence_length=max_sequence_length,
            num_segments=num_segments,
            dropout=dropout,
        )

        # === Layers ===
        self._build_embeddings(
            vocabulary_size, hidden_dim, dropout, max_sequence_length, num_segments, dtype
        )
        self.transformer_layers = [
            TransformerEncoder(
                num_heads=num_heads,
                intermediate_dim=intermediate_dim,
                dropout=dropout,
                layer_norm_epsilon=1e-12,
                kernel_initializer=bert_kernel_initializer(),
                dtype=dtype,
                name=f"transformer_layer_{index}",
            )
            for index in range(num_layers)
        ]
        # The pooler is one (hidden x hidden) product per sequence: float32 costs nothing.
        self.pooled_dense = keras.layers.Dense(
            hidden_dim,
            activation="tanh",
            kernel_initializer=bert_kernel_initializer(),
            dtype="float32",
            name="pooled_dense",
        )

        # === Functional Model ===
        inputs = {
            "token_ids": keras.Input(shape=(None,), dtype="int32", name="token_ids"),
            "segment_ids": keras.Input(shape=(None,), dtype="int32", name="segment_ids"),
            "padding_mask": keras.Input(shape=(None,), dtype="int32", name="padding_mask"),
        }
        super().__init__(inputs=inputs, outputs=self._encoder_outputs(inputs), dtype=dtype, **kwargs)

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.max_sequence_length = max_sequence_length
        self.num_segments = num_segments

    def _build_embeddings(
        self, vocabulary_size, hidden_dim, dropout, max_sequence_length, num_segments, dtype
    ):
        # The embeddings are summed, normalised and dropped out in float32: under a mixed
        # policy their tables stay float32 and nothing is rounded before the first block.
        embedding_dtype = _float32_compute(dtype)
        self.token_embedding = keras.layers.ReversibleEmbedding(
            input_dim=vocabulary_size,
            output_dim=hidden_dim,
            embeddings_initializer=bert_kernel_initializer(),
            dtype=embedding_dtype,
            name="token_embedding",
        )
        self.position_embedding = _keras_hub_position_embedding(
            sequence_length=max_sequence_length,
            initializer=bert_kernel_initializer(),
            dtype=embedding_dtype,
            name="position_embedding",
        )
        self.segment_embedding = keras.layers.Embedding(
            input_dim=num_segments,
            output_dim=hidden_dim,
            embeddings_initializer=bert_kernel_initializer(),
            dtype=embedding_dtype,
            name="segment_embedding",
        )
        self.embeddings_layer_norm = keras.layers.LayerNormalization(
            epsilon=1e-12, dtype="float32", name="embeddings_layer_norm"
        )
        self.embeddings_dropout = Dropout(dropout, dtype="float32", name="embeddings_dropout")

    def _encoder_outputs(self, inputs, query_positions=None, training=None, real_tokens_only=False):
        """`sequence_output` and `pooled_output` of `inputs`, symbolic or not.

        The functional graph is this function of the inputs. With `query_positions`
        (batch, num_queries), the last block runs only at those positions (TF Model
        Garden's `output_range`, with positions chosen per example): `sequence_output` is
        then (batch, num_queries, hidden), the rows of the full output at them, and
        `pooled_output` pools the first of them. Every position still attends and is
        attended to in the blocks below. With `real_tokens_only` (inside `on_real_tokens_only`
        at inference), the blocks run on real tokens alone: see kernels.encoder_on_real_tokens.
        """
        tokens = self.token_embedding(inputs["token_ids"])  # (batch, seq, hidden)
        positions = self.position_embedding(tokens)
        segments = self.segment_embedding(inputs["segment_ids"])
        x = self.embeddings_layer_norm(ops.add(ops.add(tokens, positions), segments))
        x = self.embeddings_dropout(x, training=training)
        x = self._encode(x, inputs["padding_mask"], query_positions, training, real_tokens_only)
        # (batch, seq, hidden) and (batch, hidden), float32
        return {"sequence_output": x, "pooled_output": self.pooled_dense(x[:, 0, :])}

    def _encode(self, x, padding_mask, query_positions, training, real_tokens_only):
        if real_tokens_only:
            outputs = kernels.encoder_on_real_tokens(self.transformer_layers, x, padding_mask)
            if outputs is not None:
                return outputs
        last = len(self.transformer_layers) - 1
        for index, transformer_layer in enumerate(self.transformer_layers):
            x = transformer_layer(
                x,
                padding_mask=padding_mask,
                query_positions=query_positions if index == last else None,
                training=training,
            )
        return x

    def call(self, inputs, training=None, mask=None, query_positions=None):
        """The backbone's outputs; with `query_positions`, the last block only there.

        A head that needs only some rows of `sequence_output` (a masked LM its masked
        positions, and [CLS]) passes them as `query_positions`, as part of its own
        functional graph; see `_encoder_outputs`.
        """
        self._check_sequence_length(inputs)
        if query_positions is not None:
            return self._encoder_outputs(inputs, ops.cast(query_positions, "int32"), training=training)
        if _real_tokens_only.active and not training:
            # Not the functional graph, whose blocks run on the padded batch.
            return self._encoder_outputs(inputs, training=training, real_tokens_only=True)
        return super().call(inputs, training=training, mask=mask)

    def compute_output_spec(self, inputs, training=None, mask=None, query_positions=None):
        spec = super().compute_output_spec(inputs, training=training, mask=mask)
        if query_positions is None:
            return spec
        sequence = spec["sequence_output"]
        shape = (sequence.shape[0], query_positions.shape[1], sequence.shape[-1])
        return {
            "sequence_output": keras.KerasTensor(shape, dtype=sequence.dtype),
            "pooled_output": spec["pooled_output"],
        }

    def _check_sequence_length(self, inputs):
        # Caught here with a clear message; past the table, position embeddings fail deep
        # inside a slice op with a different error on each backend.
        sequence_length = getattr(inputs.get("token_ids"), "shape", (None, None))[1]
        if sequence_length is not None and sequence_length > self.max_sequence_length:
            raise ValueError(
                "Expected token_ids with at most max_sequence_length="
                f"{self.max_sequence_length} positions. Received: {sequence_length} positions"
            )

    @classmethod
    def from_size(cls, size, vocabulary_size, **kwargs):
        """Builds a backbone of a named size (`tiny` ... `large`, or `L{layers}_H{hidden}`).

        Example:
        >>> BertBackbone.from_size("mini", vocabulary_size=30522).num_layers
        4
        """
        return cls(vocabulary_size=vocabulary_size, **size_config(size), **kwargs)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "vocabulary_size": self.vocabulary_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "dropout": self.dropout,
            "max_sequence_length": self.max_sequence_length,
            "num_segments": self.num_segments,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)


class _RealTokensOnly(threading.local):
    active = False


_real_tokens_only = _RealTokensOnly()


@contextlib.contextmanager
def on_real_tokens_only():
    """Within it, every backbone called at inference runs its blocks on real tokens only.

    For the graphs of an export, whose outputs never read the padded positions of
    `sequence_output`: those come out as zeros instead of the padded computation's values.
    Everywhere else the backbone keeps them, as Hugging Face's and keras-hub's BERTs do.
    On TensorFlow in float32; elsewhere this changes nothing.
    """
    previous, _real_tokens_only.active = _real_tokens_only.active, True
    try:
        yield
    finally:
        _real_tokens_only.active = previous


def _check_arguments(dropout, **sizes):
    for name, value in sizes.items():
        _check_positive_int(name, value)
    hidden_dim, num_heads = sizes["hidden_dim"], sizes["num_heads"]
    if hidden_dim % num_heads != 0:
        raise ValueError(
            "Expected hidden_dim to be divisible by num_heads. "
            f"Received: hidden_dim={hidden_dim}, num_heads={num_heads}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"Expected dropout in [0, 1). Received: dropout={dropout!r}")


def _float32_compute(dtype):
    """`dtype` (a policy, its name, or None for the global one) with float32 computation,
    where its variables are float32: float32 for a mixed policy, `dtype` otherwise."""
    policy = keras.dtype_policies.get(dtype)
    return "float32" if policy.variable_dtype == "float32" else dtype


def _keras_hub_position_embedding(**kwargs):
    # Imported here so that importing kbert's model code stays cheap; keras-hub's layer
    # slices the learned table to the input length.
    from keras_hub.layers import PositionEmbedding

    return PositionEmbedding(**kwargs)
