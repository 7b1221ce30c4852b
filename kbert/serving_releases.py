"""The TensorFlow Serving releases kbert exports for, and the ops each one can run.

A model server runs a SavedModel with the ops registered in its own binary: the core ops of
the TensorFlow it links and the ops of the TensorFlow Text library it links
(`tensorflow_serving/workspace.bzl` in tensorflow/serving). Those differ by release, and
differ from the TensorFlow that writes the export, so an export is checked against the
registry of the release it is meant for, not against the exporting process.

Each registry is a JSON file in `kbert/serving_registries/` that maps op names to attribute
names, for TensorFlow's ops and for TF Text's. `python -m tools.serving_runtimes
write-registries` writes them from the real pinned wheels: the `tensorflow-cpu` of the
release's TensorFlow and the `tensorflow-text` it links.
"""

import dataclasses
import functools
import json
import os

REGISTRY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serving_registries")
# The ops of tf.py_function and tf.numpy_function are registered by TensorFlow's Python
# package only; they call back into Python, which the model server does not have.
PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})


@dataclasses.dataclass(frozen=True)
class Release:
    """One TensorFlow Serving release line and the wheels that reproduce its op registry.

    Args:
        name: the release line, e.g. "2.12" (every 2.12.x server).
        tensorflow: the `tensorflow-cpu` version whose core ops the server registers.
        tensorflow_text: the `tensorflow-text` version whose op library the server links.
    """

    name: str
    tensorflow: str
    tensorflow_text: str

    @property
    def runs_tensorflow_text_wheel(self):
        """Whether the pinned TF Text wheel loads in the pinned TensorFlow (same minor)."""
        return _minor(self.tensorflow) == _minor(self.tensorflow_text)


# TF Serving 2.12.0 to 2.19.1 link TF Text 2.12.1; 2.20.0 links TF Text 2.20.0. The
# TensorFlow of each line is the last patch release of the same minor on PyPI.
RELEASES = {
    release.name: release
    for release in (
        Release("2.12", "2.12.1", "2.12.1"),
        Release("2.13", "2.13.1", "2.12.1"),
        Release("2.14", "2.14.1", "2.12.1"),
        Release("2.15", "2.15.1", "2.12.1"),
        Release("2.16", "2.16.2", "2.12.1"),
        Release("2.17", "2.17.1", "2.12.1"),
        Release("2.18", "2.18.1", "2.12.1"),
        Release("2.19", "2.19.1", "2.12.1"),
        Release("2.20", "2.20.0", "2.20.0"),
    )
}
OLDEST_RELEASE = min(RELEASES, key=lambda name: tuple(map(int, name.split("."))))


def release(name):
    """Returns the `Release` for "2.N" (or "2.N.x"), with a clear error for others."""
    line = ".".join(str(name).split(".")[:2])
    if line not in RELEASES:
        raise ValueError(
            f"Expected serving_version to be a supported TensorFlow Serving release, one of "
            f"{', '.join(sorted(RELEASES, key=_key))}. Received: serving_version={name!r}"
        )
    return RELEASES[line]


def registry_path(name):
    return os.path.join(REGISTRY_DIR, f"tf_serving_{release(name).name}.json")


@functools.lru_cache(maxsize=None)
def registry(name):
    """Returns `{op name: frozenset(attribute names)}` registered by a release's server."""
    with open(registry_path(name), encoding="utf-8") as file:
        registered = json.load(file)
    ops = dict(registered["tensorflow_ops"], **registered["tensorflow_text_ops"])
    return {op: frozenset(attributes) for op, attributes in ops.items() if op not in PYTHON_OPS}


@functools.lru_cache(maxsize=None)
def tensorflow_text_ops(name):
    """Returns the names of the ops that a release's TF Text library registers."""
    with open(registry_path(name), encoding="utf-8") as file:
        return frozenset(json.load(file)["tensorflow_text_ops"])


def first_release_with(op, attributes=()):
    """The oldest supported release that registers `op` with all of `attributes`, or None."""
    for name in sorted(RELEASES, key=_key):
        registered = registry(name).get(op)
        if registered is not None and set(attributes) <= registered:
            return name
    return None


def unsupported_nodes(nodes, name):
    """Returns `[(op, missing attribute names)]` of the `NodeDef`s a release cannot run.

    An op the release does not register gives `(op, ())`; one it registers without some
    attribute a node sets gives the attributes it lacks. Attributes whose names start with
    "_" are runtime annotations, never part of an op's definition.
    """
    ops = registry(name)
    problems = set()
    for node in nodes:
        if node.op not in ops:
            problems.add((node.op, ()))
            continue
        attributes = {key for key in node.attr if not key.startswith("_")}
        missing = tuple(sorted(attributes - ops[node.op]))
        if missing:
            problems.add((node.op, missing))
    return sorted(problems)


def describe_problem(op, missing_attributes, name):
    """One sentence on why release `name` cannot run an op, and which release can."""
    first = first_release_with(op, missing_attributes)
    if missing_attributes:
        what = f"op {op} with attribute(s) {', '.join(missing_attributes)}"
    else:
        what = f"op {op}"
    if first is None:
        return f"{what} is registered by no supported TensorFlow Serving release"
    return f"{what} is not registered in TensorFlow Serving {name}; the first release that has it is {first}"


def _minor(version):
    return tuple(version.split(".")[:2])


def _key(name):
    return tuple(int(part) for part in name.split("."))
