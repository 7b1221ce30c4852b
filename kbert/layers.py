"""Layers shared by kbert's model builders.

Written with `keras` and `keras.ops` only, so they run on every Keras backend; the
backend-specific fast paths sit in `kbert.kernels`, each behind one call here.
"""

import math

import keras
from keras import ops

from kbert import kernels

# A large negative added to the scores of padded keys. exp() of it underflows to exactly
# 0 in float32, so padded keys get exactly zero attention, as in the original BERT.
_MASKED_SCORE = -1e9


def bert_kernel_initializer(stddev=0.02):
    return keras.initializers.TruncatedNormal(stddev=stddev)


class _Float32Bias:
    """Mixin for Keras' dense layers: the product in the compute dtype, the bias in float32.

    Under `mixed_bfloat16`, Keras' dense layers add the bias in bfloat16 and return
    bfloat16, which every consumer in a BERT block then casts to float32 (residual stream,
    LayerNorm, GELU, attention scores). These layers cast the product once and add the
    float32 bias to it: the output is float32, the bias is not rounded, and its gradient is
    a float32 reduction. In float32 nothing changes. An activation (the feed-forward
    layer's GELU) runs in float32 after the bias.

    `float32_output=False` casts the output to the compute dtype at the end, for a layer
    whose only consumer is a matmul that would cast it anyway (the feed-forward layer's
    GELU output): the same numbers, without a float32 copy of the widest activation.
    """

    def __init__(self, *args, float32_output=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.float32_output = float32_output

    def add_weight(self, *args, **kwargs):
        if kwargs.get("name") == "bias":
            kwargs["autocast"] = False  # read as the float32 variable under mixed precision
        return super().add_weight(*args, **kwargs)

    def call(self, inputs, training=None):
        if not training:
            # On TensorFlow, a MatMul and BiasAdd that grappler fuses: see kernels.dense_inference.
            outputs = kernels.dense_inference(self, inputs, self._contracted_axes())
            if outputs is not None:
                return outputs
        product = self._product(inputs, self.kernel)  # both in the compute dtype
        terms = (product,) if self.bias is None else (product, self.bias)
        # One fused XLA function in TensorFlow training: see kernels.dense_epilogue.
        return kernels.dense_epilogue(self, self._epilogue, terms, training)

    def _epilogue(self, product, bias=None):
        outputs = ops.cast(product, "float32")
        if bias is not None:
            outputs = outputs + bias
        outputs = self.activation(outputs)
        if not self.float32_output:
            outputs = ops.cast(outputs, self.compute_dtype)
        return outputs

    def compute_output_spec(self, inputs, *args, **kwargs):
        spec = super().compute_output_spec(inputs, *args, **kwargs)
        dtype = "float32" if self.float32_output else self.compute_dtype
        return keras.KerasTensor(spec.shape, dtype=dtype)

    def get_config(self):
        config = super().get_config()
        if not self.float32_output:
            config["float32_output"] = False
        return config


@keras.saving.register_keras_serializable(package="kbert")
class Dense(_Float32Bias, keras.layers.Dense):
    """`keras.layers.Dense` with a float32 bias, activation and output; see `_Float32Bias`."""

    def _product(self, inputs, kernel):
        return ops.matmul(inputs, kernel)

    def _contracted_axes(self):
        return 1


@keras.saving.register_keras_serializable(package="kbert")
class EinsumDense(_Float32Bias, keras.layers.EinsumDense):
    """`keras.layers.EinsumDense` with a float32 bias, activation and output."""

    def _product(self, inputs, kernel):
        # A 2-D matmul where the equation is one: see kernels.matrix_product.
        return kernels.matrix_product(self.equation, inputs, kernel)

    def _contracted_axes(self):
        return kernels.contracted_axes(self.equation)


@keras.saving.register_keras_serializable(package="kbert")
class Dropout(keras.layers.Dropout):
    """`keras.layers.Dropout` with an exact rate in bfloat16; see `kernels.dropout`."""

    def call(self, inputs, training=False):
        # Cheaper, exact-rate random bits on TensorFlow: see kernels.dropout.
        return kernels.dropout(self, inputs, training, super().call)


@keras.saving.register_keras_serializable(package="kbert")
class TransformerEncoder(keras.layers.Layer):
    """One post-LayerNorm BERT encoder block.

    keras-hub's `TransformerEncoder` wraps `keras.layers.MultiHeadAttention`, whose softmax
    runs in the compute dtype (bfloat16 under `mixed_bfloat16`); BERT needs it in float32,
    and a block of our own lets the attention kernel be chosen for speed. The weights keep
    the original BERT layout: separate query, key, value and output projections, so that
    checkpoints import exactly.

    Args:
        num_heads: number of attention heads; the input width must be divisible by it.
        intermediate_dim: width of the feed-forward layer.
        dropout: dropout rate on attention probabilities and on both sub-layer outputs.
        layer_norm_epsilon: epsilon of both LayerNorms (1e-12 in the original BERT).
        kernel_initializer: initializer of every kernel.

    Example:
    >>> block = TransformerEncoder(num_heads=2, intermediate_dim=32)
    >>> block(keras.ops.ones((1, 4, 16)), keras.ops.ones((1, 4), "int32")).shape
    (1, 4, 16)
    """

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        dropout=0.1,
        layer_norm_epsilon=1e-12,
        kernel_initializer=None,
        **kwargs,
    ):
        # The residual stream stays float32 under mixed precision: the sub-layers cast their
        # own inputs to the compute dtype, so the block itself must not cast its input.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or bert_kernel_initializer()
        )
        self.supports_masking = False

    def build(self, input_shape):
        hidden_dim = input_shape[-1]
        if hidden_dim % self.num_heads != 0:
            raise ValueError(
                "Expected the hidden size to be divisible by num_heads. "
                f"Received: hidden_dim={hidden_dim}, num_heads={self.num_heads}"
            )
        head_dim = hidden_dim // self.num_heads
        self.head_dim = head_dim

        def einsum_dense(equation, output_shape, bias_axes, name):
            return EinsumDense(
                equation,
                output_shape=output_shape,
                bias_axes=bias_axes,
                kernel_initializer=self.kernel_initializer,
                dtype=self.dtype_policy,
                name=name,
            )

        # (batch, seq, hidden) -> (batch, seq, heads, head_dim)
        projection_shape = (None, self.num_heads, head_dim)
        self.query_dense = einsum_dense("btd,dnh->btnh", projection_shape, "nh", "query")
        self.key_dense = einsum_dense("btd,dnh->btnh", projection_shape, "nh", "key")
        self.value_dense = einsum_dense("btd,dnh->btnh", projection_shape, "nh", "value")
        # (batch, seq, heads, head_dim) -> (batch, seq, hidden)
        self.attention_output_dense = einsum_dense(
            "btnh,nhd->btd", (None, hidden_dim), "d", "attention_output"
        )
        for dense in (self.query_dense, self.key_dense, self.value_dense):
            dense.build(input_shape)
        self.attention_output_dense.build(
            (input_shape[0], input_shape[1], self.num_heads, head_dim)
        )
        self.attention_probabilities_dropout = Dropout(
            self.dropout, dtype=self.dtype_policy, name="attention_probabilities_dropout"
        )
        # The sub-layers' outputs join the float32 residual stream: their dropout runs in
        # float32 too, where under a mixed policy Keras would round them to the compute dtype.
        self.attention_dropout = Dropout(self.dropout, dtype="float32", name="attention_dropout")
        # LayerNorms run in float32 whatever the policy: bfloat16 statistics lose accuracy.
        self.attention_layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype="float32", name="attention_layer_norm"
        )
        self.attention_layer_norm.build(input_shape)
        self.intermediate_dense = Dense(
            self.intermediate_dim,
            activation="gelu",  # exact (erf) GELU, in float32
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
            # Its one consumer, the output projection, multiplies in the compute dtype.
            float32_output=False,
            name="intermediate",
        )
        self.intermediate_dense.build(input_shape)
        self.output_dense = Dense(
            hidden_dim,
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
            name="output",
        )
        self.output_dense.build((input_shape[0], input_shape[1], self.intermediate_dim))
        self.output_dropout = Dropout(self.dropout, dtype="float32", name="output_dropout")
        self.output_layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype="float32", name="output_layer_norm"
        )
        self.output_layer_norm.build(input_shape)
        self.built = True

    def call(self, inputs, padding_mask, query_positions=None, training=None):
        """Runs the block; with `query_positions`, only at those positions.

        `query_positions` (batch, num_queries) restricts the queries, and so the whole block
        after the key and value projections, to some positions: the output is then
        (batch, num_queries, hidden), the rows of the full output at those positions, every
        position still serving as a key. A masked LM's last block needs only its masked
        positions, which spares it most of that block's work.
        """
        queries = inputs
        if query_positions is not None:
            positions = ops.cast(query_positions, "int32")[:, :, None]
            queries = ops.take_along_axis(inputs, positions, axis=1)
        query = self.query_dense(queries)  # (batch, query_seq, heads, head_dim)
        key = self.key_dense(inputs)
        value = self.value_dense(inputs)
        context = self._attend(query, key, value, padding_mask, training)
        return self._after_attention(queries, self.attention_output_dense(context), training)

    def call_on_tokens(self, tokens, pad, unpad, padding_mask):
        """The block at inference on the real tokens alone; the outputs of `call` there.

        `tokens` (1, num_tokens, hidden) are the rows of the real positions of a padded
        batch, packed; `pad` scatters such rows back to (batch, seq, ...) with zeros under
        the padding and `unpad` gathers them again. Only attention needs the padded batch:
        the projections, the feed-forward layer and the LayerNorms, most of the work, run
        on real tokens only. Padded positions of the output are not computed.
        """
        query, key, value = (
            pad(dense(tokens)) for dense in (self.query_dense, self.key_dense, self.value_dense)
        )
        context = unpad(self._attend(query, key, value, padding_mask, training=False))
        return self._after_attention(tokens, self.attention_output_dense(context), training=False)

    def _attend(self, query, key, value, padding_mask, training):
        """The attention context (batch, query_seq, heads, head_dim) of the projections."""
        # Scores and softmax in float32: (batch, heads, query_seq, key_seq). Padded keys get
        # a bias: adding it needs no work in the backward pass, where selecting the scores
        # would. (Scaling the queries instead of the scores saves no measurable time and
        # moves kbert's rounding away from Hugging Face's.)
        scores = ops.einsum("bqnh,bknh->bnqk", query, key)  # float32 (see EinsumDense)
        scores = scores * (1.0 / math.sqrt(self.head_dim))
        key_mask = ops.cast(padding_mask, "bool")[:, None, None, :]  # (batch, 1, 1, seq)
        scores = scores + ops.where(key_mask, 0.0, _MASKED_SCORE)
        probabilities = ops.softmax(scores, axis=-1)
        probabilities = self.attention_probabilities_dropout(probabilities, training=training)
        dtype = self.compute_dtype
        return ops.einsum("bnqk,bknh->bqnh", ops.cast(probabilities, dtype), ops.cast(value, dtype))

    def _after_attention(self, queries, attention_output, training):
        """The residual, LayerNorm and feed-forward sub-layer after the attention output."""
        attention_output = self.attention_dropout(attention_output, training=training)
        hidden = self.attention_layer_norm(ops.add(queries, attention_output))
        # GELU in float32, handed on in the compute dtype.
        feedforward = self.intermediate_dense(hidden, training=training)
        feedforward = self.output_dense(feedforward)  # (batch, seq, hidden)
        feedforward = self.output_dropout(feedforward, training=training)
        return self.output_layer_norm(ops.add(hidden, feedforward))

    def compute_output_shape(self, input_shape, padding_mask_shape=None, query_positions_shape=None):
        if query_positions_shape is not None:
            return (input_shape[0], query_positions_shape[1], input_shape[-1])
        return input_shape

    def compute_output_spec(self, inputs, padding_mask, query_positions=None, training=None):
        shape = inputs.shape
        if query_positions is not None:
            shape = (shape[0], query_positions.shape[1], shape[-1])
        return keras.KerasTensor(shape, dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kbert")
class MaskedLMHead(keras.layers.Layer):
    """BERT's masked-LM head, scoring only the masked positions.

    Gathers the hidden states at `mask_positions`, applies the transform (dense + GELU +
    LayerNorm) and projects onto the vocabulary with the transposed token embedding plus an
    output bias of its own. The projection runs in the compute dtype, as keras-hub's
    `MaskedLMHead` does; the LayerNorm, the output bias and the logits are float32 under
    mixed precision too.

    Args:
        token_embedding: the backbone's token embedding layer, whose matrix is tied to the
            output projection.
        layer_norm_epsilon: epsilon of the transform's LayerNorm.
        kernel_initializer: initializer of the transform kernel.
    """

    def __init__(
        self,
        token_embedding,
        layer_norm_epsilon=1e-12,
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.token_embedding = token_embedding
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or bert_kernel_initializer()
        )

    def build(self, inputs_shape, mask_positions_shape=None):
        sequence_length = inputs_shape[1]
        num_predictions = mask_positions_shape[1] if mask_positions_shape else None
        if sequence_length is not None and num_predictions is not None:
            if num_predictions > sequence_length:
                raise ValueError(
                    "Expected mask_positions to have at most as many positions as the "
                    f"sequence. Received: num_predictions={num_predictions}, "
                    f"sequence_length={sequence_length}"
                )
        hidden_dim = inputs_shape[-1]
        self.transform_dense = Dense(
            hidden_dim,
            activation="gelu",  # exact (erf) GELU, in float32
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
            name="transform",
        )
        self.transform_dense.build((None, None, hidden_dim))
        self.transform_layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype="float32", name="transform_layer_norm"
        )
        self.transform_layer_norm.build((None, None, hidden_dim))
        vocabulary_size = self.token_embedding.input_dim
        self.output_bias = self.add_weight(
            name="output_bias",
            shape=(vocabulary_size,),
            initializer="zeros",
            dtype="float32",
            autocast=False,  # read as float32 under mixed precision, not rounded
        )
        self.built = True

    def call(self, inputs, mask_positions=None, training=None):
        """Logits (batch, num_predictions, vocabulary), float32.

        Without `mask_positions`, `inputs` are already the hidden states at the masked
        positions, (batch, num_predictions, hidden).
        """
        hidden = inputs
        if mask_positions is not None:
            mask_positions = ops.cast(mask_positions, "int32")
            # (batch, seq, hidden) -> (batch, num_predictions, hidden)
            hidden = ops.take_along_axis(inputs, mask_positions[:, :, None], axis=1)
        hidden = self.transform_layer_norm(self.transform_dense(hidden, training=training))
        # The projection onto the vocabulary, the largest matmul of a small BERT, runs in the
        # compute dtype as every other matmul does; the logits are float32 from here on.
        # One 2-D matmul over all predictions of the batch: as a batched matmul against the
        # shared embedding, the embedding's gradient would be summed over the batch.
        embeddings = ops.cast(self.token_embedding.embeddings, self.compute_dtype)
        batch_size, num_predictions, hidden_dim = ops.shape(hidden)
        flat = ops.reshape(ops.cast(hidden, self.compute_dtype), (-1, hidden_dim))
        # (batch * num_predictions, hidden) x (hidden, vocabulary)
        logits = kernels.matmul_transposed(flat, embeddings)
        # The cast and the bias in one pass in mixed-precision training: see kernels.output_bias.
        logits = kernels.output_bias(self, logits, self.output_bias, training)
        return ops.reshape(logits, (batch_size, num_predictions, -1))

    def compute_output_spec(self, inputs, mask_positions=None):
        num_predictions = (inputs if mask_positions is None else mask_positions).shape[1]
        shape = (inputs.shape[0], num_predictions, self.token_embedding.input_dim)
        return keras.KerasTensor(shape, dtype="float32")

    def get_config(self):
        # The token embedding is shared with the backbone; BertMaskedLM passes it again on
        # rebuild, so it is not part of this layer's config.
        config = super().get_config()
        config.update(
            {
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
