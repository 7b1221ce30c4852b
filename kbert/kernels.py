"""Backend-specific fast paths of kbert's layers and losses, each behind one dispatch.

Every function here computes what its keras.ops fallback computes (the layers pass that
fallback in, or it is written out beside the fast path), so the model reads the same on
every backend. Most fast paths run on TensorFlow only: JAX compiles the whole step with
XLA anyway, and PyTorch runs the keras.ops path. XLA-compiled functions run in training only:
a SavedModel holding them needs TensorFlow Serving's XLA JIT, which is off by default, so
inference and exports run the same arithmetic op by op.
"""

import functools
import math

import keras
from keras import ops


def _on_tensorflow():
    return keras.config.backend() == "tensorflow"


# === XLA building blocks ===


def xla_function(function):
    """`function` as a TensorFlow function compiled by XLA, for element-wise work in training.

    TensorFlow's CPU kernels make one pass over memory per element-wise op, forward and
    backward; XLA fuses a chain of them into one pass.
    """
    import tensorflow as tf

    return tf.function(function, jit_compile=True, reduce_retracing=True)


def xla_function_with_recomputed_gradient(function):
    """`xla_function(function)` whose gradient is a second XLA function of its inputs.

    TensorFlow's gradient of an XLA-compiled function keeps the forward pass's
    intermediates (for a GELU, its float32 input) and runs the rest of the backward pass,
    such as a bias's gradient summed over the batch, op by op. This one's backward pass
    recomputes the forward pass from `function`'s inputs, and the whole gradient (through
    `tf.GradientTape`, so the same derivative) is one XLA function. `function` takes and
    returns tensors, and every input gets a gradient.
    """
    import tensorflow as tf

    forward = xla_function(function)

    def gradient(upstream, *inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = function(*inputs)
        return tape.gradient(outputs, inputs, output_gradients=upstream)

    backward = xla_function(gradient)

    @tf.custom_gradient
    def run(*inputs):
        return forward(*inputs), lambda upstream: backward(upstream, *inputs)

    @tf.autograph.experimental.do_not_convert
    def call(*inputs):
        # Variables as their values: a gradient reaches them through the reads.
        return run(*(tf.convert_to_tensor(value) for value in inputs))

    return call


def _cached_xla(owner, attribute, function):
    # One compiled function per layer, built on first use so that import stays cheap.
    compiled = getattr(owner, attribute, None)
    if compiled is None:
        compiled = xla_function_with_recomputed_gradient(function)
        setattr(owner, attribute, compiled)
    return compiled


# === Dispatches used by kbert.layers ===


def dense_epilogue(layer, epilogue, terms, training):
    """`epilogue(*terms)`: the float32 cast, bias and activation after a dense product.

    On TensorFlow in training, with an activation, one XLA function forward and one that
    recomputes it backward: op by op, each element-wise step is a pass over the widest
    activation of the block.
    """
    activated = layer.activation is not keras.activations.linear
    if training and activated and _on_tensorflow():
        return _cached_xla(layer, "_xla_epilogue", epilogue)(*terms)
    return epilogue(*terms)


def matrix_product(equation, inputs, kernel):
    """`ops.einsum(equation, inputs, kernel)`, as one 2-D matmul where the equation is one.

    Keras' TensorFlow einsum runs the attention projections' `btd,dnh->btnh` as a batched
    matmul against the kernel broadcast over the batch, whose kernel gradient is a
    (batch, in, out) product summed afterwards; the flattened 2-D matmul has none.
    """
    count = contracted_axes(equation)
    if count is None:
        return ops.einsum(equation, inputs, kernel)
    product, shape = _flat_product(inputs, kernel, count)
    return ops.reshape(product, shape)


def _flat_product(inputs, kernel, count):
    """`(product, shape)`: `inputs` times `kernel` (its first `count` axes contracted) as one
    2-D matmul, and the shape to give the product back its batch and output axes."""
    contracted = math.prod(kernel.shape[:count])
    out_shape = tuple(kernel.shape[count:])
    batch_shape = ops.shape(inputs)[: len(inputs.shape) - count]
    flat = ops.reshape(inputs, (-1, contracted))
    product = ops.matmul(flat, ops.reshape(kernel, (contracted, -1)))
    return product, (*batch_shape, *out_shape)


def dense_inference(layer, inputs, count):
    """A float32 dense layer outside training on TensorFlow, or None where this does not apply.

    `count` is how many kernel axes the layer contracts (None: not one matrix product). The
    product runs as one 2-D MatMul with a BiasAdd on it, which grappler's remapper fuses into
    one `_FusedMatMul` (the bias added as the product is written); then the activation and a
    reshape back. Written as the layers write it, the product is reshaped back first and the
    bias added with an AddV2, which the remapper does not fuse: one more pass over every
    output. The arithmetic is the same. The stored graph holds only MatMul and BiasAdd, ops of
    every TensorFlow Serving release; the fusion happens when the server loads it.
    """
    if not _on_tensorflow() or layer.bias is None or layer.compute_dtype != "float32":
        return None
    kernel, bias = layer.kernel, layer.bias
    if count is None or tuple(bias.shape) != tuple(kernel.shape[count:]):
        return None
    import tensorflow as tf

    product, shape = _flat_product(inputs, kernel, count)
    outputs = layer.activation(tf.nn.bias_add(product, tf.reshape(bias, [-1])))
    if not layer.float32_output:
        outputs = tf.cast(outputs, layer.compute_dtype)
    return ops.reshape(outputs, shape)


def encoder_on_real_tokens(blocks, inputs, padding_mask):
    """`blocks` run one after another on `inputs` (batch, seq, hidden) at inference, on the
    real tokens alone; None where this does not apply (off TensorFlow, or not in float32).

    A batch of texts of different lengths is padded to the longest, and much of it can be
    padding. Here only attention sees the padded batch (see
    `TransformerEncoder.call_on_tokens`): the rows of the real positions are gathered once,
    scattered to the padded shape for each block's attention and gathered back after it.
    The result is the padded (batch, seq, hidden) output with zeros at padded positions,
    whose rows at real positions are those of the padded computation.
    """
    if not _on_tensorflow() or any(block.compute_dtype != "float32" for block in blocks):
        return None
    import tensorflow as tf

    positions = tf.where(tf.cast(padding_mask, tf.bool))  # (num_tokens, 2): batch, position
    batch_shape = tf.shape(padding_mask, out_type=tf.int64)

    def pad(rows):  # (1, num_tokens, ...) -> (batch, seq, ...)
        shape = tf.concat([batch_shape, tf.shape(rows, out_type=tf.int64)[2:]], axis=0)
        return tf.scatter_nd(positions, rows[0], shape)

    def unpad(padded):  # (batch, seq, ...) -> (1, num_tokens, ...)
        return tf.gather_nd(padded, positions)[None]

    tokens = unpad(inputs)
    for block in blocks:
        with tf.name_scope(block.name):  # the ops named as in the block's own call
            tokens = block.call_on_tokens(tokens, pad, unpad, padding_mask)
    return pad(tokens)


def contracted_axes(equation):
    """How many kernel axes `equation` contracts, where it is one matrix product.

    That is an equation `{batch}{contracted},{contracted}{out}->{batch}{out}`, such as the
    attention projections' `btd,dnh->btnh` and `btnh,nhd->btd`; None for any other.
    """
    operands, output = equation.split("->")
    inputs, kernel = operands.split(",")
    for count in range(1, len(kernel)):
        contracted, out = kernel[:count], kernel[count:]
        if inputs.endswith(contracted) and output == inputs[: -len(contracted)] + out:
            return count
    return None


def dropout(layer, inputs, training, fallback):
    """`layer`'s dropout: 16 random bits per element on TensorFlow, `fallback` elsewhere.

    Keras' TensorFlow dropout draws one uniform float per element in the input's dtype;
    under `mixed_bfloat16` that float has 8 bits, so a rate of 0.1 drops 10.15%. Here the
    rate is exact to 1e-5 in every dtype and the random numbers are cheaper to draw. A
    `noise_shape` uses Keras' dropout.
    """
    fast = 0 < layer.rate < 1 and layer.noise_shape is None
    if training and fast and _on_tensorflow():
        return _tensorflow_dropout(inputs, layer.rate, layer.seed_generator.next())
    return fallback(inputs, training=training)


def _tensorflow_dropout(inputs, rate, seed):
    import tensorflow as tf

    # Stateless random ops want int32 seeds under XLA; the seed generator's state is int64.
    seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), "int32")
    size = tf.size(inputs)
    bits = tf.random.stateless_uniform(
        [(size + 1) // 2], seed, minval=None, maxval=None, dtype=tf.uint32
    )
    halves = tf.reshape(tf.bitcast(bits, tf.uint16), [-1])  # two 16-bit draws per output
    threshold = round(rate * 65536)
    keep = tf.reshape(halves[:size] >= threshold, tf.shape(inputs))
    scale = tf.cast(65536 / (65536 - threshold), inputs.dtype)
    # One mask of scales, multiplied forward and backward: a select of the scaled inputs
    # would cost a select and a multiply each way.
    return inputs * tf.where(keep, scale, tf.zeros((), inputs.dtype))


def matmul_transposed(a, b):
    """`a @ b.T`; on TensorFlow one matmul with `transpose_b`, so that the backward pass
    does not transpose the (vocabulary, hidden) gradient of the tied embedding separately."""
    if _on_tensorflow():
        import tensorflow as tf

        return tf.linalg.matmul(a, b, transpose_b=True)
    return ops.matmul(a, ops.transpose(b))


def add_float32_bias(product, bias):
    return ops.cast(product, "float32") + bias


def output_bias(head, logits, bias, training):
    """`add_float32_bias(logits, bias)` for the masked-LM head's vocabulary logits.

    On TensorFlow in mixed-precision training, the cast and the bias are one pass over the
    logits and so are their gradients. (In float32 there is no cast, and the function's
    gradient would only copy the logits' gradient.)
    """
    mixed = head.compute_dtype != "float32"
    if training and mixed and _on_tensorflow():
        return _cached_xla(head, "_xla_output", add_float32_bias)(logits, bias)
    return add_float32_bias(logits, bias)


# === Dispatch used by kbert.losses ===


def sparse_categorical_crossentropy(labels, logits):
    """Cross-entropy of int32 `labels` (...,) against `logits` (..., classes).

    On TensorFlow the log-sum-exp and the label's logit are one XLA function, forward and
    backward: TensorFlow's fused `SparseSoftmaxCrossEntropyWithLogits` makes several passes
    over the logits and writes a gradient even when only the loss is wanted. XLA's gather
    clamps an out-of-range index where TensorFlow's kernel fails, so the labels are checked
    first and a bad one fails with a message naming it.
    """
    if _on_tensorflow():
        return _tensorflow_cross_entropy(labels, logits)
    logits = ops.cast(logits, "float32")
    label_logits = ops.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    return ops.logsumexp(logits, axis=-1) - label_logits


@functools.cache
def _xla_cross_entropy():
    import tensorflow as tf

    def cross_entropy(labels, logits):
        # (examples, classes) whatever the rank, so that one trace serves every rank.
        flat_logits = tf.reshape(tf.cast(logits, tf.float32), [tf.size(labels), -1])
        flat_labels = tf.reshape(labels, [-1])
        label_logits = tf.gather(flat_logits, flat_labels, batch_dims=1)
        losses = tf.reduce_logsumexp(flat_logits, axis=-1) - label_logits
        return tf.reshape(losses, tf.shape(labels))

    return xla_function(cross_entropy)


def _tensorflow_cross_entropy(labels, logits):
    import tensorflow as tf

    num_classes = tf.shape(logits, out_type=tf.int32)[-1]
    check = tf.debugging.assert_less(
        labels,
        num_classes,
        message="Expected every label to be a class id below the number of classes (the "
        "vocabulary size for a masked LM); a label is out of range. Received: labels",
        summarize=8,
    )
    check_negative = tf.debugging.assert_non_negative(
        labels, message="Expected every label to be >= 0. Received: labels", summarize=8
    )
    with tf.control_dependencies([check, check_negative]):
        labels = tf.identity(labels)
    return _xla_cross_entropy()(labels, logits)
