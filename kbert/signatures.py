"""The signatures of kbert's SavedModels, all built by `build_serving_module`.

TensorFlow Serving runs a signature by its tensor names in a C++ session, with no Python,
no Keras and no kbert. Everything a request needs therefore lives in the graph (cleaning
the bytes, WordPiece tokenization with the model's own vocabulary, packing, the model,
softmax, class names), and every input and output has a fixed dtype and shape:

    classifiers
      serving_default   text (+ text_pair): string [batch]
                        -> probabilities float32 [batch, num_classes], label_id int32 [batch],
                           label string [batch]
      serve_token_ids   token_ids, segment_ids, padding_mask: int32 [batch, sequence]
                        -> the same three outputs (rows longer than the model's
                           max_sequence_length are truncated to it)
      serve_examples    inputs: serialized tf.Example [batch], features `text` (+ `text_pair`)
                        -> classes string [batch, num_classes], scores float32 [batch, num_classes]
                        (method tensorflow/serving/classify, for TF Serving's Classify API)
    regression models (num_classes=1): the same inputs; outputs score float32 [batch], and
      serve_examples outputs `outputs` float32 [batch] (tensorflow/serving/regress)
    masked-LM models
      fill_mask         text: string [batch], with `[MASK]` where tokens are wanted
                        -> mask_positions int32 [batch, masks], token_ids int32 [batch, masks, top_k],
                           tokens string [batch, masks, top_k], scores float32 [batch, masks, top_k]
                        (also exported as serving_default)
    embedding models (BertTextEmbedder)
      serving_default   text: string [batch] -> embeddings float32 [batch, hidden]
      serve_token_ids   token_ids, segment_ids, padding_mask: int32 [batch, sequence]
                        -> embeddings float32 [batch, hidden]

Every signature checks its inputs in the graph and answers a request it cannot read
(inputs of different batch sizes or shapes, ids outside the vocabulary, an Example without
its text) with InvalidArgument, which TF Serving returns as a 400, never with a crash.
"""

import contextlib

import tensorflow as tf

from kbert.backbone import on_real_tokens_only

SERVING_DEFAULT = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
SERVE_TOKEN_IDS = "serve_token_ids"
SERVE_EXAMPLES = "serve_examples"
FILL_MASK = "fill_mask"

PREDICT_METHOD = tf.saved_model.PREDICT_METHOD_NAME
CLASSIFY_METHOD = tf.saved_model.CLASSIFY_METHOD_NAME
REGRESS_METHOD = tf.saved_model.REGRESS_METHOD_NAME

MASK_TOKEN = "[MASK]"

# One spec per input name, so a signature input is the same word as the tensor it carries
# everywhere else in kbert.
INPUT_SPECS = {
    "text": tf.TensorSpec([None], tf.string),
    "text_pair": tf.TensorSpec([None], tf.string),
    "token_ids": tf.TensorSpec([None, None], tf.int32),
    "segment_ids": tf.TensorSpec([None, None], tf.int32),
    "padding_mask": tf.TensorSpec([None, None], tf.int32),
    # TF Serving's Classify and Regress APIs look their one input up under this key.
    tf.saved_model.CLASSIFY_INPUTS: tf.TensorSpec([None], tf.string),
}


def build_serving_module(model, preprocessor, task=None, top_k=5, text_pair=None):
    """Builds every signature of an export: the endpoints of the model's task.

    Args:
        model: a model of one of `kbert.tasks` on the TensorFlow backend.
        preprocessor: the `BertPreprocessor` that turns text into the model's inputs.
        task: the model's `kbert.tasks.Task`, with the settings of its model directory
            (class names, whether it reads a text pair); by default, the model class's task.
        top_k: number of candidate tokens per `[MASK]` in `fill_mask`.
        text_pair: whether a classifier reads a pair of texts (default: from the task).

    Returns:
        `(module, signatures, method_names)`: the object to pass to `tf.saved_model.save`, its
        signatures as concrete functions by name, and the method name of each signature.
    """
    from kbert import tasks

    task = task or tasks.for_model(model, purpose="export")
    module = tf.Module()
    # The tokenizer carries the vocabulary (assets/vocab.txt) and its WordPiece model.
    module.preprocessor = preprocessor
    endpoints = task.serving_endpoints(model, preprocessor, top_k=top_k, text_pair=text_pair)

    signatures = {}
    method_names = {}
    traced = {}  # a function exported under two names is traced once
    for name, (function, input_names, method_name) in endpoints.items():
        if (function, input_names) not in traced:
            input_signature = [
                tf.TensorSpec(INPUT_SPECS[key].shape, INPUT_SPECS[key].dtype, name=key)
                for key in input_names
            ]
            # The encoder on real tokens alone where no output reads the padded positions.
            padded = name in task.padded_position_endpoints
            with contextlib.nullcontext() if padded else on_real_tokens_only():
                traced[function, input_names] = tf.function(
                    _with_checked_ranks(function, input_names),
                    input_signature=input_signature,
                    autograph=False,
                ).get_concrete_function()
        signatures[name] = traced[function, input_names]
        method_names[name] = method_name
    # The tf.Variables that the signatures read, as keras.export.ExportArchive tracks them.
    # Tracked through the Keras model or its Keras variables instead, they are saved under
    # fresh resource names, and the TF1 session loader of TF Serving then leaves the
    # variables that the signatures read uninitialised.
    variables = {}
    for function in signatures.values():
        variables.update((id(variable), variable) for variable in function.variables)
    module.model_variables = list(variables.values())
    return module, signatures, method_names


def _with_checked_ranks(function, input_names):
    """`function` with each input checked for the rank of its spec first."""
    def checked(*values):
        return function(
            *(
                checked_rank(value, INPUT_SPECS[name].shape.rank, name)
                for value, name in zip(values, input_names)
            )
        )

    return checked


def checked_rank(value, rank, name):
    """`value` if it has rank `rank`, else InvalidArgument.

    A signature's TensorSpec holds a rank only for Python callers: the model server feeds
    whatever tensor a request carries. The check does not use the static shape, which the
    graph would take on trust: a tensor of the right rank holds as many elements as the
    product of its first `rank` dimensions.
    """
    shape = tf.shape(value)
    padded_shape = tf.concat([shape, tf.ones([rank], tf.int32)], axis=0)[:rank]
    checks = [
        tf.debugging.assert_equal(
            tf.raw_ops.Rank(input=value), rank, message=f"Expected {name} to have rank {rank}"
        ),
        tf.debugging.assert_equal(
            tf.size(value), tf.reduce_prod(padded_shape), message=f"Expected {name} to have rank {rank}"
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.reshape(value, padded_shape)


def checked_token_id_inputs(backbone, token_ids, segment_ids, padding_mask):
    """Refuses token-id inputs the model cannot read; truncates overlong sequences.

    The three inputs must have the same shape, ids must lie in the vocabulary, segment ids
    below `num_segments` and the padding mask be 0 or 1: anything else is answered with
    InvalidArgument (an embedding lookup would wrap around or read past its table).
    Sequences longer than the model's `max_sequence_length` keep their first positions, as
    the raw-text signatures truncate.
    """
    inputs = {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}
    checks = [
        tf.debugging.assert_equal(
            tf.shape(value),
            tf.shape(token_ids),
            message=f"Expected {name} to have the shape of token_ids",
        )
        for name, value in inputs.items()
        if name != "token_ids"
    ]
    limits = {
        "token_ids": backbone.vocabulary_size,
        "segment_ids": backbone.num_segments,
        "padding_mask": 2,
    }
    for name, limit in limits.items():
        checks.append(
            tf.debugging.assert_non_negative(inputs[name], message=f"Expected {name} to be non-negative")
        )
        checks.append(
            tf.debugging.assert_less(inputs[name], limit, message=f"Expected {name} to be below {limit}")
        )
    with tf.control_dependencies(checks):
        return {
            name: tf.identity(value[:, : backbone.max_sequence_length])
            for name, value in inputs.items()
        }


def predict_endpoints(from_text, from_token_ids, text_names=("text",)):
    """`serving_default` (raw text) and `serve_token_ids` of a task, both of the Predict API."""
    return {
        SERVING_DEFAULT: (from_text, tuple(text_names), PREDICT_METHOD),
        SERVE_TOKEN_IDS: (from_token_ids, ("token_ids", "segment_ids", "padding_mask"), PREDICT_METHOD),
    }
