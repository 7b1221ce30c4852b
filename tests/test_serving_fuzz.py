"""Hostile requests against every signature of every kind of export.

A child process loads the export as the model server does (TF1 session) and runs each
request through the TensorFlow C API directly, so that no Python-side feed check stands in
for the graph's own: like the server, the session only checks dtypes, and the graph must
check everything else. For each seeded request the child first reports that it starts it;
if the child dies, the request it started is the one that killed it, and a fresh child
carries on with the rest. Every request must be answered with finite outputs whose batch
size is the request's, or refused with InvalidArgument.
"""

import json
import os
import subprocess
import sys

import pytest

from hostile_requests import make_request
from test_export import MODEL_KINDS, VOCABULARY, export_every_kind

NUM_REQUESTS = 160
SEED = 20261201

# Generates request `index` of a kind from the seed, runs it, and prints one JSON line
# before (`start`) and after (`done`). Requests are made in the child so that huge ones
# never cross a pipe.
FUZZ_PROCESS = r"""
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401

export_dir, kind, seed, first, count, vocabulary_size = sys.argv[1:7]
first, count, vocabulary_size = int(first), int(count), int(vocabulary_size)
sys.path.insert(0, sys.argv[7])
from hostile_requests import make_request

leaked = sorted(name for name in sys.modules if name.split(".")[0] in ("kbert", "keras_hub"))
assert not leaked, f"the serving process imported {leaked}"

with tf.compat.v1.Session(graph=tf.Graph()) as session:
    meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
    graph = session.graph
    for index in range(first, first + count):
        signature_name, inputs, batch_size = make_request(kind, int(seed), index, vocabulary_size)
        signature = meta_graph.signature_def[signature_name]
        print(json.dumps({"start": index}), flush=True)
        feeds = {graph.get_tensor_by_name(signature.inputs[name].name)._as_tf_output(): value
                 for name, value in inputs.items()}
        names = sorted(signature.outputs)
        fetches = [graph.get_tensor_by_name(signature.outputs[name].name)._as_tf_output() for name in names]
        result = {"done": index, "signature": signature_name, "batch_size": batch_size}
        try:
            outputs = session._call_tf_sessionrun(None, feeds, fetches, [], None)
        except tf.errors.InvalidArgumentError as error:
            result["status"] = "InvalidArgument"
            result["message"] = error.message.splitlines()[0][:200]
        except UnicodeDecodeError:
            # ParseExample quotes the bytes it could not parse in its InvalidArgument
            # message, which Python then fails to decode: the code is lost, not the refusal.
            result["status"] = "InvalidArgument"
            result["message"] = "(a message that is not UTF-8)"
        except Exception as error:
            result["status"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        else:
            result["status"] = "answered"
            result["rows"] = {name: (list(value.shape)[:1] or [None])[0] for name, value in zip(names, outputs)}
            result["finite"] = all(bool(np.isfinite(value).all()) for value in outputs if value.dtype.kind == "f")
        print(json.dumps(result), flush=True)
"""

def fuzz(export_dir, kind):
    """Runs every request in child processes; returns (results by index, crashes)."""
    results, crashes, first = {}, {}, 0
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    while first < NUM_REQUESTS:
        child = subprocess.run(
            [sys.executable, "-c", FUZZ_PROCESS, os.fspath(export_dir), kind, str(SEED),
             str(first), str(NUM_REQUESTS - first), str(len(VOCABULARY)), tests_dir],
            capture_output=True,
            text=True,
            env=environment,
        )
        started = None
        for line in child.stdout.splitlines():
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if "start" in record:
                started = record["start"]
            else:
                results[record["done"]] = record
                started = None
        if child.returncode == 0 and started is None:
            break
        if started is None:  # died before its first request: the export itself fails
            raise AssertionError(f"the serving process failed to start: {child.stderr[-3000:]}")
        crashes[started] = (child.returncode, child.stderr.strip().splitlines()[-1:])
        first = started + 1
    return results, crashes


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    exported = export_every_kind(tmp_path_factory.mktemp("fuzz"))
    return {kind: entry["export"] for kind, entry in exported.items()}


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_hostile_requests_are_answered_or_refused_and_never_crash(exports, kind):
    results, crashes = fuzz(exports[kind], kind)
    assert not crashes, {
        index: (code, make_request(kind, SEED, index, len(VOCABULARY))[0], last_line)
        for index, (code, last_line) in crashes.items()
    }
    assert sorted(results) == list(range(NUM_REQUESTS))
    statuses = {result["status"] for result in results.values()}
    assert statuses <= {"answered", "InvalidArgument"}, [
        result for result in results.values() if result["status"] not in ("answered", "InvalidArgument")
    ][:5]
    # Both outcomes occur, so the set probes the checks and the answers alike.
    assert statuses == {"answered", "InvalidArgument"}
    for result in results.values():
        if result["status"] == "answered":
            assert result["finite"], result
            assert set(result["rows"].values()) == {result["batch_size"]}, result
