"""Seeded hostile requests for every signature of kbert's exports (tests/test_serving_fuzz.py).

The serving process of that test imports this module to make each request, so it imports
only NumPy and TensorFlow: nothing of kbert.
"""

import numpy as np


def example(**features):
    """A serialized tf.Example with one bytes value per feature."""
    import tensorflow as tf

    return tf.train.Example(
        features=tf.train.Features(
            feature={
                name: tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
                for name, value in features.items()
            }
        )
    ).SerializeToString()


HOSTILE_TEXTS = [
    b"",
    b" \t\n",
    b"the cat sat on the mat",
    ("the cat sat on the mat " * 4348)[:100_000].encode(),
    b"good \xff\xfe film \xc3\x28 \xed\xa0\x80 end \xe2\x82",
    b"the\x00cat\x00\x00",
    "good 👍🏽 film 🎬".encode(),
    "中文字符测试".encode(),
    b"[MASK]",
    b"[MASK] " * 400,
    b"[MA[MASK]SK] [mask] [MASK",
    bytes(range(256)),
]


def _random_text(rng):
    if rng.random() < 0.7:
        return HOSTILE_TEXTS[rng.integers(len(HOSTILE_TEXTS))]
    return rng.bytes(int(rng.integers(0, 64)))


def _texts(rng, batch_size):
    return np.array([_random_text(rng) for _ in range(batch_size)], dtype=object)


def _batch_size(rng):
    return int(rng.choice([0, 1, 1, 2, 3, 8, 17, 64, 300]))


def _wrong_value(rng, batch_size):
    """A value of the wrong dtype or rank for a string [batch] or int32 [batch, seq] input."""
    choice = rng.integers(6)
    if choice == 0:
        return rng.integers(-5, 5, size=(batch_size,)).astype(np.int32)
    if choice == 1:
        return rng.normal(size=(batch_size, 3)).astype(np.float32)
    if choice == 2:
        return np.array(b"a scalar", dtype=object)
    if choice == 3:
        return np.array([[b"a", b"b"]] * batch_size, dtype=object).reshape(batch_size, 2)
    if choice == 4:
        return rng.integers(0, 5, size=(batch_size, 2, 2)).astype(np.int32)
    return rng.integers(0, 5, size=(batch_size,)).astype(np.int64)


def _token_ids_request(rng, vocabulary_size):
    batch_size = _batch_size(rng)
    length = int(rng.choice([0, 1, 2, 5, 16, 33, 600]))
    shape = (batch_size, length)
    inputs = {
        "token_ids": rng.integers(0, vocabulary_size, size=shape).astype(np.int32),
        "segment_ids": rng.integers(0, 2, size=shape).astype(np.int32),
        "padding_mask": rng.integers(0, 2, size=shape).astype(np.int32),
    }
    name = rng.choice(sorted(inputs))
    fault = rng.integers(8)
    if fault == 1:
        inputs[name] = inputs[name] - int(rng.integers(1, 2**31 - 1))  # negative
    elif fault == 2:
        inputs[name] = inputs[name] + int(rng.choice([2, vocabulary_size, 2**30]))  # too large
    elif fault == 3:
        inputs[name] = rng.integers(0, 2, size=(batch_size + 1, length)).astype(np.int32)
    elif fault == 4:
        inputs[name] = rng.integers(0, 2, size=(batch_size, length + 1)).astype(np.int32)
    elif fault == 5:
        inputs[name] = _wrong_value(rng, batch_size)
    return inputs, batch_size


def _example_request(rng, text_pair):
    batch_size = _batch_size(rng)
    serialized = []
    for _ in range(batch_size):
        fault = rng.integers(7)
        features = {"text": _random_text(rng)}
        if text_pair:
            features["text_pair"] = _random_text(rng)
        if fault == 1:
            serialized.append(example())  # no features at all
        elif fault == 2:
            serialized.append(example(other=b"text elsewhere"))
        elif fault == 3:
            serialized.append(rng.bytes(int(rng.integers(1, 40))))  # not an Example
        elif fault == 4:
            serialized.append(b"")
        else:
            serialized.append(example(**features))
    inputs = {"inputs": np.array(serialized, dtype=object)}
    if rng.random() < 0.1:
        inputs["inputs"] = _wrong_value(rng, batch_size)
    return inputs, batch_size


def make_request(kind, seed, index, vocabulary_size):
    """Request `index` of a kind: `(signature name, {input: array}, batch size)`."""
    rng = np.random.default_rng([seed, index, sum(map(ord, kind))])
    signatures = {
        "masked LM": ["fill_mask", "serving_default"],
        "embedder": ["serving_default", "serve_token_ids"],
    }.get(kind, ["serving_default", "serve_token_ids", "serve_examples"])
    signature = signatures[index % len(signatures)]
    if signature == "serve_token_ids":
        inputs, batch_size = _token_ids_request(rng, vocabulary_size)
    elif signature == "serve_examples":
        inputs, batch_size = _example_request(rng, kind == "pair classifier")
    else:
        batch_size = _batch_size(rng)
        inputs = {"text": _texts(rng, batch_size)}
        if kind == "pair classifier":
            pair_size = batch_size if rng.random() < 0.6 else int(rng.choice([0, 1, batch_size + 1, 64]))
            inputs["text_pair"] = _texts(rng, pair_size)
        if rng.random() < 0.1:
            inputs["text"] = _wrong_value(rng, batch_size)
    return signature, inputs, batch_size
