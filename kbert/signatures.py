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

Every signature checks its inputs in the graph and answers a request it cannot read
(inputs of different batch sizes or shapes, ids outside the vocabulary, an Example without
its text) with InvalidArgument, which TF Serving returns as a 400, never with a crash.
"""

import tensorflow as tf

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


def build_serving_module(model, preprocessor, label_names=None, text_pair=False, top_k=5):
    """Builds every signature of an export.

    Args:
        model: a `BertClassifier` or `BertMaskedLM` on the TensorFlow backend.
        preprocessor: the `BertPreprocessor` that turns text into the model's inputs.
        label_names: class names of a classifier, in label-id order (`None`: "0", "1", ...).
        text_pair: whether the classifier reads a pair of texts.
        top_k: number of candidate tokens per `[MASK]` in `fill_mask`.

    Returns:
        `(module, signatures, method_names)`: the object to pass to `tf.saved_model.save`, its
        signatures as concrete functions by name, and the method name of each signature.
    """
    from kbert.classifier import BertClassifier
    from kbert.masked_lm import BertMaskedLM

    module = tf.Module()
    # The tokenizer carries the vocabulary (assets/vocab.txt) and its WordPiece model.
    module.preprocessor = preprocessor

    if isinstance(model, BertClassifier):
        endpoints = _classifier_endpoints(model, preprocessor, label_names, text_pair)
    elif isinstance(model, BertMaskedLM):
        endpoints = _masked_lm_endpoints(model, preprocessor, top_k)
    else:
        raise ValueError(
            "Expected a BertClassifier or BertMaskedLM to export. "
            f"Received: {type(model).__name__}"
        )

    signatures = {}
    method_names = {}
    traced = {}  # a function exported under two names is traced once
    for name, (function, input_names, method_name) in endpoints.items():
        if (function, input_names) not in traced:
            input_signature = [
                tf.TensorSpec(INPUT_SPECS[key].shape, INPUT_SPECS[key].dtype, name=key)
                for key in input_names
            ]
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


def _classifier_endpoints(model, preprocessor, label_names, text_pair):
    num_classes = model.num_classes
    regression = num_classes == 1
    if label_names is None:
        label_names = [str(index) for index in range(num_classes)]
    if not regression and len(label_names) != num_classes:
        raise ValueError(
            f"Expected {num_classes} label names for a {num_classes}-class model. "
            f"Received: label_names={label_names!r}"
        )
    text_names = ("text", "text_pair") if text_pair else ("text",)

    def run_model(token_ids, segment_ids, padding_mask):
        logits = model(
            {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask},
            training=False,
        )  # (batch, num_classes), float32
        if regression:
            return {"score": logits[:, 0]}
        probabilities = tf.nn.softmax(logits, axis=-1)
        label_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        label = tf.gather(tf.constant(label_names), label_id)
        return {"probabilities": probabilities, "label_id": label_id, "label": label}

    def from_token_ids(token_ids, segment_ids, padding_mask):
        return run_model(**checked_token_id_inputs(model.backbone, token_ids, segment_ids, padding_mask))

    def from_text(text, text_pair=None):
        # Padded to the longest request of the batch, not to the model's sequence length.
        return run_model(**preprocessor(text, text_pair, pad_to_longest=True))

    def from_examples(inputs):
        # No default value: an Example without the text is refused, not read as "".
        features = tf.io.parse_example(
            inputs, {name: tf.io.FixedLenFeature([], tf.string) for name in text_names}
        )
        outputs = from_text(**features)
        if regression:
            return {tf.saved_model.REGRESS_OUTPUTS: outputs["score"]}
        batch_size = tf.shape(inputs)[0]
        classes = tf.tile(tf.constant(label_names)[None, :], [batch_size, 1])
        return {
            tf.saved_model.CLASSIFY_OUTPUT_CLASSES: classes,  # (batch, num_classes)
            tf.saved_model.CLASSIFY_OUTPUT_SCORES: outputs["probabilities"],
        }

    return {
        SERVING_DEFAULT: (from_text, text_names, PREDICT_METHOD),
        SERVE_TOKEN_IDS: (
            from_token_ids,
            ("token_ids", "segment_ids", "padding_mask"),
            PREDICT_METHOD,
        ),
        SERVE_EXAMPLES: (
            from_examples,
            (tf.saved_model.CLASSIFY_INPUTS,),
            REGRESS_METHOD if regression else CLASSIFY_METHOD,
        ),
    }


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


def _masked_lm_endpoints(model, preprocessor, top_k):
    tokenizer = preprocessor.tokenizer
    vocabulary = tf.constant(tokenizer.vocabulary)
    special_token_ids = [
        tokenizer.pad_token_id,
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
        tokenizer.mask_token_id,
    ]
    special_token_weights = tf.tensor_scatter_nd_update(
        tf.ones([model.backbone.vocabulary_size]),
        [[token_id] for token_id in special_token_ids],
        tf.zeros([len(special_token_ids)]),
    )
    top_k = min(top_k, model.backbone.vocabulary_size - len(special_token_ids))

    def fill_mask(text):
        # `[MASK]` is cut out of the string before tokenization, so that neither lowercasing
        # nor punctuation splitting can break it up, and its id is put back between the pieces.
        pieces = tf.strings.split(text, MASK_TOKEN)  # (batch, (pieces))
        piece_ids = tokenizer(pieces.flat_values)  # (pieces, (tokens))
        # Every piece but the last of its text was followed by a [MASK].
        piece_index = tf.range(tf.size(pieces.flat_values, out_type=tf.int64))
        last_piece = tf.gather(pieces.row_limits(), pieces.value_rowids()) - 1
        followed_by_mask = piece_index != last_piece
        mask_ids = tf.RaggedTensor.from_row_lengths(
            tf.fill([tf.reduce_sum(tf.cast(followed_by_mask, tf.int32))], tokenizer.mask_token_id),
            tf.cast(followed_by_mask, tf.int64),
        )
        piece_ids = tf.concat([piece_ids, mask_ids], axis=1)
        token_ids = tf.RaggedTensor.from_row_lengths(piece_ids, pieces.row_lengths())
        inputs = preprocessor.pack(token_ids.merge_dims(1, 2), pad_to_longest=True)  # (batch, longest)
        sequence_length = tf.shape(inputs["token_ids"])[1]
        positions = tf.ragged.boolean_mask(
            tf.broadcast_to(tf.range(sequence_length), tf.shape(inputs["token_ids"])),
            inputs["token_ids"] == tokenizer.mask_token_id,
        )  # (batch, (masks))
        # The largest count of masks in a row; 0 for a batch of none (or of no texts).
        num_masks = tf.cast(tf.reduce_max(tf.concat([positions.row_lengths(), [0]], 0)), tf.int32)
        # The model is asked for at least one position, so that a batch without any [MASK]
        # still has a shape it runs; the outputs keep only `num_masks` of them.
        positions = positions.to_tensor(default_value=-1)  # (batch, masks); -1 pads short rows
        positions = tf.pad(
            positions, [[0, 0], [0, tf.maximum(1 - num_masks, 0)]], constant_values=-1
        )  # (batch, max(masks, 1))
        logits = model(dict(inputs, mask_positions=tf.maximum(positions, 0)), training=False)
        if isinstance(logits, dict):
            logits = logits["mlm"]  # (batch, masks, vocabulary_size)
        probabilities = tf.nn.softmax(logits, axis=-1)
        # The scores stay the model's probabilities; special tokens are only never proposed.
        scores, candidate_ids = tf.math.top_k(probabilities * special_token_weights, k=top_k)
        is_mask = (positions >= 0)[:, :, None]
        outputs = {
            "mask_positions": positions,
            "token_ids": tf.where(is_mask, candidate_ids, -1),
            "tokens": tf.where(is_mask, tf.gather(vocabulary, candidate_ids), ""),
            "scores": tf.where(is_mask, scores, 0.0),
        }
        return {name: value[:, :num_masks] for name, value in outputs.items()}

    return {
        SERVING_DEFAULT: (fill_mask, ("text",), PREDICT_METHOD),
        FILL_MASK: (fill_mask, ("text",), PREDICT_METHOD),
    }
