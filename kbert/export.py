"""Versioned, atomic SavedModel exports for TensorFlow Serving.

TensorFlow Serving watches a base directory `<base>/` and loads every numeric subdirectory
`<base>/<version>/` as a version of the model as soon as it appears. An export is therefore
built in a hidden directory beside its version (`.incomplete-*`, which the server
ignores: it is not a number) and renamed into place only when complete, so the server never
sees half a model; an existing version is never overwritten.

The model server runs the graph in C++ with core TensorFlow ops and the ops of TensorFlow
Text, whose op library it links. Every export lists the ops of its graph, function library
included, and fails if any other op appears (`check_serving_ops`).

The signatures themselves are built in `kbert/signatures.py`.
"""

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile

import keras

from kbert import files
from kbert import model_dir as model_directory
from kbert import deployment, serving_releases

INCOMPLETE_PREFIX = ".incomplete-"
EXPORT_INFO_FILE = os.path.join("assets.extra", "kbert_export.json")
DEFAULT_SEQUENCE_LENGTH = 128
# Node attributes that only name things in error messages, by op.
DEBUGGING_ATTRIBUTES = {"VarHandleOp": ("debug_name",)}


def export(
    model_dir,
    base_dir,
    version=None,
    sequence_length=None,
    text_pair=None,
    top_k=5,
    serving_version=serving_releases.OLDEST_RELEASE,
    keep_versions=1,
    serving_root=deployment.DEFAULT_SERVING_ROOT,
):
    """Exports a kbert model directory as a new version of a TensorFlow Serving model.

    Exports run on the TensorFlow backend whatever backend trained the model: the weights
    in a model directory are backend-neutral, and under another backend the export runs in a
    TensorFlow subprocess.

    Args:
        model_dir: a kbert model directory holding a classifier or a masked-LM model.
        base_dir: the model's base directory, e.g. `saved_models/sst2`; created if missing.
        version: the version to write; `None` takes the next free one (1 in an empty
            base directory). An existing version is an error, never overwritten.
        sequence_length: tokens per sequence after packing and truncation; `None` takes the
            model directory's tokenizer setting, else 128 (at most `max_sequence_length`).
        text_pair: whether the raw-text signatures take a `text_pair` input; `None` reads it
            from the model directory's task.
        top_k: candidate tokens per `[MASK]` in the `fill_mask` signature.
        serving_version: the oldest TensorFlow Serving release the export must run on
            ("2.12" to "2.20"); its op registry is what the graph is checked against.
        keep_versions: how many of the latest versions `models.config` tells the server
            to serve.
        serving_root: where the model server sees the directory that holds `base_dir`
            (`/models` in the official image), for the base paths of `models.config`.

    Returns:
        The path of the new version directory.

    Example:
    >>> kbert.export("runs/sst2", "saved_models/sst2")  # doctest: +SKIP
    'saved_models/sst2/1'
    """
    arguments = {
        "model_dir": os.fspath(model_dir),
        "base_dir": os.fspath(base_dir),
        "version": version,
        "sequence_length": sequence_length,
        "text_pair": text_pair,
        "top_k": top_k,
        "serving_version": serving_releases.release(serving_version).name,
        "keep_versions": keep_versions,
        "serving_root": serving_root,
    }
    if version is not None and (
        not isinstance(version, int) or isinstance(version, bool) or version < 1
    ):
        raise ValueError(
            f"Expected version to be a positive integer. Received: version={version!r}"
        )
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"Expected top_k to be a positive integer. Received: top_k={top_k!r}")
    deployment.check_keep_versions(keep_versions)
    model_directory.read_config(arguments["model_dir"])
    deployment.read_model_config(arguments["base_dir"])  # a broken models.config fails first
    _check_version_is_free(arguments["base_dir"], version)
    if keras.backend.backend() != "tensorflow":
        return _export_in_tensorflow_process(arguments)
    return _export(**arguments)


def versions(base_dir):
    """Returns the sorted numeric versions in `base_dir`, as TensorFlow Serving sees them."""
    return sorted(
        number
        for number, name in _numbered_entries(base_dir)
        if os.path.isdir(os.path.join(base_dir, name))
    )


def _numbered_entries(base_dir):
    # Only ASCII digits make a version, as TF Serving parses them: "²" is a digit to
    # str.isdigit() but not to int().
    if not os.path.isdir(base_dir):
        return []
    return [
        (int(name), name)
        for name in os.listdir(base_dir)
        if name.isascii() and name.isdigit()
    ]


def _nodes(saved_model_dir):
    """Yields every `NodeDef` of a SavedModel's graphs, function library included."""
    for meta_graph in read_saved_model(saved_model_dir).meta_graphs:
        graph = meta_graph.graph_def
        # A node may call a library function by its name: that is not an op.
        function_names = {function.signature.name for function in graph.library.function}
        nodes = list(graph.node)
        for function in graph.library.function:
            nodes.extend(function.node_def)
        yield from (node for node in nodes if node.op not in function_names)


def serving_ops(saved_model_dir):
    """Returns the names of the ops in a SavedModel's graphs, function library included."""
    return {node.op for node in _nodes(saved_model_dir)}


def xla_compiled_functions(saved_model_dir):
    """Returns the names of the SavedModel's functions, or call nodes, marked for XLA."""
    def marked(attributes):
        return "_XlaMustCompile" in attributes and attributes["_XlaMustCompile"].b

    names = set()
    for meta_graph in read_saved_model(saved_model_dir).meta_graphs:
        graph = meta_graph.graph_def
        for function in graph.library.function:
            if marked(function.attr):
                names.add(function.signature.name)
            names.update(node.name for node in function.node_def if marked(node.attr))
        names.update(node.name for node in graph.node if marked(node.attr))
    return names


def check_serving_ops(saved_model_dir, serving_version=serving_releases.OLDEST_RELEASE):
    """Fails unless TensorFlow Serving `serving_version` registers every op of the SavedModel,
    with every attribute its nodes set, and no function needs XLA (TensorFlow Serving's XLA
    JIT is off by default; kbert uses XLA only in training steps).

    The ops are checked against the release's own registry (`kbert.serving_releases`), not
    against the TensorFlow that wrote the export.

    Returns:
        `{"tensorflow": [...], "tensorflow_text": [...]}`, the sorted op names of each kind.
    """
    release = serving_releases.release(serving_version).name
    problems = serving_releases.unsupported_nodes(_nodes(saved_model_dir), release)
    if problems:
        raise ValueError(
            f"TensorFlow Serving {release} cannot run the SavedModel in {saved_model_dir}: "
            + "; ".join(
                serving_releases.describe_problem(op, attributes, release)
                for op, attributes in problems
            )
        )
    xla_functions = xla_compiled_functions(saved_model_dir)
    if xla_functions:
        raise ValueError(
            f"The SavedModel in {saved_model_dir} has functions that must be compiled by XLA, "
            f"which TensorFlow Serving does not do by default: {', '.join(sorted(xla_functions))}"
        )
    ops = serving_ops(saved_model_dir)
    text_ops = ops & serving_releases.tensorflow_text_ops(release)
    return {"tensorflow": sorted(ops - text_ops), "tensorflow_text": sorted(text_ops)}


def _export(
    model_dir,
    base_dir,
    version,
    sequence_length,
    text_pair,
    top_k,
    serving_version,
    keep_versions,
    serving_root,
):
    import tensorflow as tf

    from kbert import tasks
    from kbert.signatures import build_serving_module
    from kbert.tokenizer import BertPreprocessor, BertTokenizer

    config = model_directory.read_config(model_dir)
    task = tasks.from_config(config, purpose="export")
    model = model_directory.load(model_dir)
    sequence_length = resolve_sequence_length(config, model, sequence_length)
    if text_pair is None:
        text_pair = task.reads_text_pair()
    preprocessor = BertPreprocessor(
        BertTokenizer.from_model_dir(model_dir), sequence_length=sequence_length
    )
    module, signatures, method_names = build_serving_module(
        model, preprocessor, task=task, top_k=top_k, text_pair=text_pair
    )

    os.makedirs(base_dir, exist_ok=True)
    # Unfinished exports of processes that are gone; those of live ones are left alone.
    files.remove_stale_temporaries(base_dir, prefix=INCOMPLETE_PREFIX)
    temporary_dir = tempfile.mkdtemp(
        prefix=f"{INCOMPLETE_PREFIX}{files.owner_tag()}-{version or 'next'}-", dir=base_dir
    )
    try:
        tf.saved_model.save(module, temporary_dir, signatures=signatures)
        _finish_saved_model(temporary_dir, method_names)
        ops = check_serving_ops(temporary_dir, serving_version)
        num_warmup_requests = deployment.write_warmup_requests(
            temporary_dir,
            model_name=os.path.basename(os.path.abspath(base_dir)),
            signature_defs=signature_defs(temporary_dir),
            vocabulary=preprocessor.tokenizer.vocabulary,
            sequence_length=sequence_length,
        )
        _write_json(
            os.path.join(temporary_dir, EXPORT_INFO_FILE),
            {
                "model_dir": os.path.abspath(model_dir),
                "model": type(model).__name__,
                "sequence_length": sequence_length,
                "text_pair": bool(text_pair),
                "task": task.name,
                "label_names": task.settings.get("label_names"),
                "signatures": method_names,
                "tensorflow_text_ops": ops["tensorflow_text"],
                "tensorflow_version": tf.__version__,
                "serving_version": serving_version,
                "warmup_requests": num_warmup_requests,
            },
        )
        # mkdtemp() makes the directory private to its owner; a model server often runs as
        # another user, so the version gets the permissions of any new directory.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary_dir, 0o777 & ~umask)
        version_dir = _publish(temporary_dir, base_dir, version)
    except BaseException as error:
        shutil.rmtree(temporary_dir, ignore_errors=True)
        written = isinstance(error, OSError) and not isinstance(
            error, (FileNotFoundError, FileExistsError)
        )
        if written or isinstance(error, tf.errors.OpError):
            # A full disk, a read-only directory: one line, and no version was made.
            reason = getattr(error, "message", None) or error.strerror or str(error)
            reason = reason.strip().splitlines()[0] if reason.strip() else type(error).__name__
            raise OSError(f"Could not write the export into {base_dir}: {reason}") from None
        raise
    deployment.update_model_config(base_dir, keep_versions, serving_root)
    deployment.write_batching_parameters(os.path.dirname(os.path.abspath(base_dir)))
    return version_dir


def resolve_sequence_length(config, model, sequence_length=None):
    """Returns `sequence_length`, else the model directory's setting, else 128, checked."""
    backbone = getattr(model, "backbone", model)
    if sequence_length is None:
        sequence_length = config["tokenizer"].get("sequence_length") or min(
            DEFAULT_SEQUENCE_LENGTH, backbone.max_sequence_length
        )
    if not 3 <= sequence_length <= backbone.max_sequence_length:
        raise ValueError(
            f"Expected sequence_length between 3 and the model's max_sequence_length "
            f"{backbone.max_sequence_length}. Received: sequence_length={sequence_length}"
        )
    return sequence_length


def task_reads_text_pair(task):
    """Whether a model directory's task (its `config.json` "task") classifies text pairs."""
    task = task or {}
    if "text_pair" in task:  # written by `kbert finetune` from the data it trained on
        return bool(task["text_pair"])
    if task.get("text_pair_column") is not None:
        return True
    return len(task.get("text_columns") or ()) == 2


def _check_version_is_free(base_dir, version):
    # A plain file named like the version blocks it too: the rename could not replace it.
    if version is not None and version in {number for number, _ in _numbered_entries(base_dir)}:
        raise FileExistsError(
            f"Version {version} already exists in {base_dir}; exports never overwrite a "
            f"version: pass another version, or version=None for the next free one "
            f"({_next_version(base_dir)})."
        )


def _next_version(base_dir):
    return max((number for number, _ in _numbered_entries(base_dir)), default=0) + 1


def _publish(temporary_dir, base_dir, version):
    """Renames a complete export into place as `version`, or as the next free version."""
    while True:
        chosen = version or _next_version(base_dir)
        _check_version_is_free(base_dir, chosen)
        version_dir = os.path.join(base_dir, str(chosen))
        try:
            # rename() is atomic, and it fails rather than replace a non-empty directory:
            # an export that raced this one to the same version is never overwritten.
            os.rename(temporary_dir, version_dir)
        except OSError:
            if version is not None or not os.path.lexists(version_dir):
                raise
            # Another export took the number first; it now counts in _next_version, so the
            # next try takes a higher one.
            continue
        return version_dir


def _finish_saved_model(saved_model_dir, method_names):
    """Sets each SignatureDef's method name and drops debugging-only node attributes.

    `tf.saved_model.save` makes every method name "predict", but TF Serving's Classify and
    Regress APIs accept only signatures whose method name says so. TensorFlow 2.13 added the
    attributes in `DEBUGGING_ATTRIBUTES`, which only name things for error messages; older
    servers do not register them. The fingerprint, a checksum of `saved_model.pb`, is then
    written again.
    """
    from tensorflow.python.saved_model import fingerprinting_utils

    saved_model = read_saved_model(saved_model_dir)
    for meta_graph in saved_model.meta_graphs:
        for name, method_name in method_names.items():
            meta_graph.signature_def[name].method_name = method_name
        graph = meta_graph.graph_def
        for node in itertools.chain(
            graph.node, *(function.node_def for function in graph.library.function)
        ):
            for attribute in DEBUGGING_ATTRIBUTES.get(node.op, ()):
                if attribute in node.attr:
                    del node.attr[attribute]
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "wb") as file:
        file.write(saved_model.SerializeToString())
    fingerprinting_utils.write_fingerprint(saved_model_dir)


def read_saved_model(saved_model_dir):
    """Returns the parsed `saved_model.pb` of a SavedModel directory."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(saved_model_dir, "saved_model.pb")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{saved_model_dir} is not a SavedModel: it has no saved_model.pb")
    with open(path, "rb") as file:
        return saved_model_pb2.SavedModel.FromString(file.read())


def signature_defs(saved_model_dir):
    """Returns `{name: SignatureDef}` of a SavedModel, without TF's internal signatures."""
    (meta_graph,) = read_saved_model(saved_model_dir).meta_graphs
    return {
        name: signature_def
        for name, signature_def in meta_graph.signature_def.items()
        if not name.startswith("__")
    }


def _write_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    files.write_json(path, value)


# Run by `_export_in_tensorflow_process`: user errors come back as one JSON line.
_SUBPROCESS_CODE = """
import json, sys
from kbert.export import export
try:
    print(json.dumps({"version_dir": export(**json.loads(sys.argv[1]))}))
except (ValueError, OSError) as error:
    kinds = (FileNotFoundError, FileExistsError, ValueError, OSError)
    kind = next(kind for kind in kinds if isinstance(error, kind))
    print(json.dumps({"error": kind.__name__, "message": str(error)}))
"""


def _export_in_tensorflow_process(arguments):
    # Keras fixes its backend when first imported, so the export needs a process of its own.
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment = dict(
        os.environ,
        KERAS_BACKEND="tensorflow",
        PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])),
    )
    result = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS_CODE, json.dumps(arguments)],
        env=environment,
        capture_output=True,
        text=True,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise RuntimeError(
            f"The TensorFlow export process failed (exit code {result.returncode}):\n"
            f"{result.stderr[-3000:]}"
        )
    outcome = json.loads(lines[-1])
    if "error" in outcome:
        error_class = {
            "ValueError": ValueError,
            "FileNotFoundError": FileNotFoundError,
            "FileExistsError": FileExistsError,
            "OSError": OSError,
        }[outcome["error"]]
        raise error_class(outcome["message"])
    return outcome["version_dir"]
