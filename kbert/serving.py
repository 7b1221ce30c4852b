"""Running an exported SavedModel as TensorFlow Serving runs it, for `kbert predict`.

`SavedModelServer` loads a version (the latest one, given a base directory, as the model
server's default version policy does) and answers TensorFlow Serving REST bodies with the
bodies the REST API returns:

    {"instances": [...]}  (row format)      -> {"predictions": [...]}
    {"inputs": ...}       (columnar format) -> {"outputs": ...}
    {"examples": [...]}   (Classify/Regress API, signature `serve_examples`) -> {"result": [...]}

As in the REST API, an optional "signature_name" picks the signature (default
`serving_default`), binary strings travel as {"b64": "..."}, string outputs whose name ends
in `_bytes` are returned base64-encoded, and a signature with one output is answered with
bare values rather than objects.
"""

import base64
import os

import numpy as np

from kbert.export import signature_defs, versions
from kbert.signatures import SERVING_DEFAULT

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


def resolve_version_dir(path):
    """Returns the SavedModel directory that `path` names: itself, or its latest version."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    found = versions(path)
    if not found:
        raise FileNotFoundError(
            f"{path} is neither a SavedModel nor a base directory with numeric versions"
        )
    return os.path.join(path, str(found[-1]))


class SavedModelServer:
    """One loaded SavedModel version and its signatures.

    Args:
        path: a SavedModel version directory, or a base directory (its latest version).

    Example:
    >>> server = SavedModelServer("saved_models/sst2")  # doctest: +SKIP
    >>> server.respond({"instances": ["a gripping film"]})  # doctest: +SKIP
    {'predictions': [{'label': 'positive', 'label_id': 1, 'probabilities': [0.03, 0.97]}]}
    """

    def __init__(self, path):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the tokenizer's ops)

        self.path = resolve_version_dir(path)
        self._loaded = tf.saved_model.load(self.path)
        self.signature_defs = signature_defs(self.path)

    def run(self, signature_name, inputs):
        """Runs a signature on `{input name: array-like}`; returns `{output name: np.ndarray}`."""
        import tensorflow as tf

        signature_def = self._signature_def(signature_name)
        expected = set(signature_def.inputs)
        if set(inputs) != expected:
            raise ValueError(
                f"Signature {signature_name!r} takes the inputs {sorted(expected)}. "
                f"Received: {sorted(inputs)}"
            )
        try:
            tensors = {
                name: tf.constant(value, dtype=tf.dtypes.as_dtype(signature_def.inputs[name].dtype))
                for name, value in inputs.items()
            }
            for name, tensor in tensors.items():
                expected_shape = tf.TensorShape(signature_def.inputs[name].tensor_shape)
                if not expected_shape.is_compatible_with(tensor.shape):
                    raise ValueError(
                        f"Expected input {name} of shape {expected_shape} "
                        f"(None: any size). Received: shape {tensor.shape}"
                    )
            outputs = self._loaded.signatures[signature_name](**tensors)
        except (TypeError, ValueError, tf.errors.InvalidArgumentError) as error:
            # What TF Serving answers with 400 Bad Request, in one line.
            message = getattr(error, "message", str(error)).strip().splitlines()[0]
            raise ValueError(
                f"Signature {signature_name!r} rejected the request: {message}"
            ) from None
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    def method_name(self, signature_name):
        return self._signature_def(signature_name).method_name

    def input_names(self, signature_name=SERVING_DEFAULT):
        return sorted(self._signature_def(signature_name).inputs)

    def respond(self, body):
        """Answers a TensorFlow Serving REST request body as the REST API does."""
        if not isinstance(body, dict):
            raise ValueError("Expected the request body to be a JSON object")
        signature_name = body.get("signature_name", SERVING_DEFAULT)
        formats = [key for key in ("instances", "inputs", "examples") if key in body]
        if len(formats) != 1:
            raise ValueError(
                'Expected the request body to hold exactly one of "instances", "inputs" '
                f"or \"examples\". Received: {sorted(body)}"
            )
        if formats[0] == "examples":
            return self._classify_or_regress(signature_name, body["examples"], body.get("context"))
        input_names = sorted(self._signature_def(signature_name).inputs)
        if formats[0] == "instances":
            inputs = _row_inputs(body["instances"], input_names)
        else:
            inputs = _columnar_inputs(body["inputs"], input_names)
        outputs = self.run(signature_name, inputs)
        outputs = {name: to_json_value(value, name) for name, value in outputs.items()}
        if formats[0] == "instances":
            if len(outputs) == 1:
                return {"predictions": next(iter(outputs.values()))}
            batch_size = len(next(iter(outputs.values())))
            return {
                "predictions": [
                    {name: value[index] for name, value in sorted(outputs.items())}
                    for index in range(batch_size)
                ]
            }
        if len(outputs) == 1:
            return {"outputs": next(iter(outputs.values()))}
        return {"outputs": dict(sorted(outputs.items()))}

    def _classify_or_regress(self, signature_name, examples, context):
        import tensorflow as tf

        method_name = self.method_name(signature_name)
        if method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
            raise ValueError(
                f"Signature {signature_name!r} has method {method_name!r}, not "
                f'{CLASSIFY_METHOD} or {REGRESS_METHOD}: name "signature_name": "serve_examples"'
            )
        if not isinstance(examples, list):
            raise ValueError('Expected "examples" to be a list of objects')
        serialized = [
            _example(dict(context or {}, **example)).SerializeToString() for example in examples
        ]
        (input_name,) = self._signature_def(signature_name).inputs
        serialized = tf.constant(serialized, tf.string, shape=[len(serialized)])
        outputs = self.run(signature_name, {input_name: serialized})
        if method_name == REGRESS_METHOD:
            return {"result": [float(score) for score in outputs[tf.saved_model.REGRESS_OUTPUTS]]}
        classes = outputs[tf.saved_model.CLASSIFY_OUTPUT_CLASSES]
        scores = outputs[tf.saved_model.CLASSIFY_OUTPUT_SCORES]
        return {
            "result": [
                [[label.decode("utf-8"), float(score)] for label, score in zip(labels, row_scores)]
                for labels, row_scores in zip(classes, scores)
            ]
        }

    def _signature_def(self, signature_name):
        if signature_name not in self.signature_defs:
            raise ValueError(
                f"{self.path} has no signature {signature_name!r}; it has "
                f"{sorted(self.signature_defs)}"
            )
        return self.signature_defs[signature_name]


def describe_signatures(saved_model_dir):
    """Returns the signatures of a SavedModel as text: names, method, inputs and outputs."""
    import tensorflow as tf

    def tensors(tensor_infos):
        return ", ".join(
            f"{name} {tf.dtypes.as_dtype(info.dtype).name} "
            f"[{', '.join(str(dim.size) for dim in info.tensor_shape.dim)}]"
            for name, info in sorted(tensor_infos.items())
        )

    lines = []
    for name, signature_def in sorted(signature_defs(saved_model_dir).items()):
        lines.append(f"  {name} ({signature_def.method_name})")
        lines.append(f"    inputs:  {tensors(signature_def.inputs)}")
        lines.append(f"    outputs: {tensors(signature_def.outputs)}")
    return "\n".join(lines)


def _row_inputs(instances, input_names):
    if not isinstance(instances, list):
        raise ValueError('Expected "instances" to be a list')
    # With one input, an instance is its value; {"b64": ...} is a value too, not named inputs.
    if len(input_names) == 1 and not all(
        isinstance(instance, dict) and not _is_binary(instance) for instance in instances
    ):
        return {input_names[0]: [_decode_binary(instance) for instance in instances]}
    inputs = {name: [] for name in input_names}
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict) or set(instance) != set(input_names):
            raise ValueError(
                f"Expected instance {index} to be an object with the inputs {input_names}. "
                f"Received: {instance!r:.200}"
            )
        for name in input_names:
            inputs[name].append(_decode_binary(instance[name]))
    return inputs


def _columnar_inputs(columns, input_names):
    if len(input_names) == 1 and not isinstance(columns, dict):
        return {input_names[0]: _decode_binary(columns)}
    if not isinstance(columns, dict) or set(columns) != set(input_names):
        raise ValueError(f'Expected "inputs" to be an object with the inputs {input_names}')
    return {name: _decode_binary(columns[name]) for name in input_names}


def _is_binary(value):
    return isinstance(value, dict) and set(value) == {"b64"}


def _decode_binary(value):
    # REST bodies carry strings as UTF-8 text, and arbitrary bytes as {"b64": ...}.
    if _is_binary(value):
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode_binary(item) for item in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def to_json_value(array, name):
    """An output array as JSON values, strings as the REST API writes them."""
    if array.dtype != object or not array.size:
        return array.tolist()
    if name.endswith("_bytes"):
        encode = lambda value: {"b64": base64.b64encode(value).decode("ascii")}  # noqa: E731
    else:
        encode = lambda value: value.decode("utf-8", errors="replace")  # noqa: E731
    return np.vectorize(encode, otypes=[object])(array).tolist()


def _example(features):
    """Builds a tf.train.Example from a REST Classify body's {feature: value} object."""
    import tensorflow as tf

    feature_map = {}
    for name, value in features.items():
        values = value if isinstance(value, list) else [value]
        if all(isinstance(item, (str, dict)) for item in values):
            feature = tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[_decode_binary(item) for item in values])
            )
        elif all(isinstance(item, int) and not isinstance(item, bool) for item in values):
            feature = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        elif all(isinstance(item, (int, float)) for item in values):
            feature = tf.train.Feature(float_list=tf.train.FloatList(value=values))
        else:
            raise ValueError(
                f"Feature {name!r} mixes types or holds an unsupported value: {value!r:.200}"
            )
        feature_map[name] = feature
    return tf.train.Example(features=tf.train.Features(feature=feature_map))
