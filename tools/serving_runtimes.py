"""Virtual environments with the op registry of each TensorFlow Serving release, and the
registry files written from them.

The model server cannot be installed here, but its op registry can: each release links a
TensorFlow and a TensorFlow Text, and the same versions of the `tensorflow-cpu` and
`tensorflow-text` wheels register the same ops. An environment holds those wheels and
`tensorflow-serving-api`'s protos of the release, and nothing of kbert, so a SavedModel
loaded there meets what the server would. Environments are cached under
`~/.cache/kbert/serving-runtimes/` (or `$KBERT_SERVING_RUNTIMES`) and built once.

    python -m tools.serving_runtimes write-registries   # kbert/serving_registries/*.json
    python -m tools.serving_runtimes build 2.12         # one environment; prints its python
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

from kbert import files, serving_releases

# Run inside an environment: the ops registered by TensorFlow alone, then with TF Text.
_DUMP_OPS = r"""
import json, sys
from tensorflow.core.framework import op_def_pb2
from tensorflow.python.client import pywrap_tf_session


def registered_ops():
    buffer = pywrap_tf_session.TF_GetAllOpList()
    try:
        op_list = op_def_pb2.OpList.FromString(pywrap_tf_session.TF_GetBuffer(buffer))
    finally:
        pywrap_tf_session.TF_DeleteBuffer(buffer)
    return {op.name: sorted(attribute.name for attribute in op.attr) for op in op_list.op}


import tensorflow as tf

core = registered_ops()
text = {}
if sys.argv[1] == "with-text":
    import tensorflow_text

    text = {name: attributes for name, attributes in registered_ops().items() if name not in core}
print(json.dumps({"tensorflow": tf.__version__, "core": core, "text": text}))
"""


def cache_dir():
    return os.environ.get(
        "KBERT_SERVING_RUNTIMES",
        os.path.join(os.path.expanduser("~"), ".cache", "kbert", "serving-runtimes"),
    )


def requirements(release, with_text=True):
    """The pinned wheels of a release's environment."""
    packages = [f"tensorflow-cpu=={release.tensorflow}"]
    if with_text:
        packages.append(f"tensorflow-text=={release.tensorflow_text}")
    return packages


def environment_dir(release, with_text=True):
    suffix = "" if with_text else "-core"
    return os.path.join(cache_dir(), f"tf-serving-{release.name}{suffix}")


def python_of(directory):
    return os.path.join(directory, "bin", "python")


def ensure_environment(name, with_text=True, quiet=True):
    """Builds (once) the environment of release `name`; returns its Python executable.

    With `with_text`, it holds the release's TensorFlow and TF Text wheels and its
    `tensorflow-serving-api` protos; without, TensorFlow alone (for releases whose TF Text
    wheel does not load in their TensorFlow: their TF Text ops come from the wheel's own
    release line). The environment is built beside its final path and renamed into place,
    under a lock, so a killed or concurrent build never leaves half of one.
    """
    release = serving_releases.release(name)
    if with_text and not release.runs_tensorflow_text_wheel:
        raise ValueError(
            f"tensorflow-text {release.tensorflow_text} does not load in tensorflow "
            f"{release.tensorflow}; build TF Serving {release.name}'s environment without it"
        )
    directory = environment_dir(release, with_text)
    if os.path.isfile(python_of(directory)):
        return python_of(directory)
    os.makedirs(cache_dir(), exist_ok=True)
    with files.locked(directory + ".lock"):
        if os.path.isfile(python_of(directory)):
            return python_of(directory)
        partial = directory + ".partial"
        shutil.rmtree(partial, ignore_errors=True)  # left by a build that was killed
        try:
            subprocess.run([sys.executable, "-m", "venv", partial], check=True)
            pip = [python_of(partial), "-m", "pip", "install", "--disable-pip-version-check"]
            if quiet:
                pip.append("--quiet")
            subprocess.run(pip + requirements(release, with_text), check=True)
            if with_text:
                # The protos only: the package's own dependency is the full `tensorflow`.
                subprocess.run(
                    pip + ["--no-deps", f"tensorflow-serving-api=={release.tensorflow}"], check=True
                )
            # Only `bin/python -m ...` is used, which does not depend on the directory name.
            os.rename(partial, directory)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return python_of(directory)


def dump_ops(python, with_text):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH="")
    result = subprocess.run(
        [python, "-c", _DUMP_OPS, "with-text" if with_text else "core"],
        capture_output=True,
        text=True,
        env=environment,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def write_registries(names=None):
    """Writes `kbert/serving_registries/tf_serving_<release>.json` for every release."""
    names = names or sorted(serving_releases.RELEASES, key=serving_releases._key)
    text_ops = {}  # TF Text version -> its ops, dumped where its wheel loads
    for name in sorted(serving_releases.RELEASES, key=serving_releases._key):
        release = serving_releases.RELEASES[name]
        if release.runs_tensorflow_text_wheel and release.tensorflow_text not in text_ops:
            dumped = dump_ops(ensure_environment(name, with_text=True), with_text=True)
            text_ops[release.tensorflow_text] = dumped["text"]
    os.makedirs(serving_releases.REGISTRY_DIR, exist_ok=True)
    for name in names:
        release = serving_releases.RELEASES[name]
        python = ensure_environment(name, with_text=release.runs_tensorflow_text_wheel)
        dumped = dump_ops(python, with_text=False)
        if dumped["tensorflow"] != release.tensorflow:
            raise RuntimeError(f"{python} runs tensorflow {dumped['tensorflow']}, not {release.tensorflow}")
        core_ops = dumped["core"]
        release_text_ops = text_ops[release.tensorflow_text]
        path = serving_releases.registry_path(name)
        header = {
            "release": release.name,
            "tensorflow": release.tensorflow,
            "tensorflow_text": release.tensorflow_text,
            "written_by": "python -m tools.serving_runtimes write-registries",
        }
        with open(path + ".tmp", "w", encoding="utf-8") as file:
            file.write(_registry_json(header, core_ops, release_text_ops))
        os.replace(path + ".tmp", path)
        print(f"{path}: {len(core_ops)} + {len(release_text_ops)} ops (tensorflow-cpu {release.tensorflow}, tensorflow-text {release.tensorflow_text})")


def _registry_json(header, core_ops, text_ops):
    """The registry as JSON with one op a line, so that a new release reads as a short diff."""
    lines = [json.dumps(header)[:-1] + ","]
    for key, ops in (("tensorflow_ops", core_ops), ("tensorflow_text_ops", text_ops)):
        entries = [f"  {json.dumps(name)}: {json.dumps(attributes)}" for name, attributes in sorted(ops.items())]
        lines.append(f'"{key}": {{\n' + ",\n".join(entries) + "\n},")
    lines[-1] = lines[-1][:-1]
    return "\n".join(lines) + "\n}\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.serving_runtimes", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("write-registries", help="write kbert/serving_registries/*.json")
    build = commands.add_parser("build", help="build one release's environment; print its python")
    build.add_argument("release")
    args = parser.parse_args(argv)
    if args.command == "write-registries":
        write_registries()
    else:
        release = serving_releases.release(args.release)
        print(ensure_environment(release.name, with_text=release.runs_tensorflow_text_wheel, quiet=False))


if __name__ == "__main__":
    main()
