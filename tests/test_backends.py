"""Runs the tests marked `backends` again under the JAX and PyTorch backends.

Keras fixes its backend when it is first imported, so each backend needs a process of its
own. Under the default TensorFlow backend this test starts one pytest process per other
backend; inside those processes it skips itself.
"""

import os
import pathlib
import re
import subprocess
import sys
import tempfile

import pytest

from conftest import PROJECT_ROOT


def test_backend_marked_tests_pass_on_jax_and_torch():
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        pytest.skip("already running under a non-default backend")
    backends = [backend for backend in ("jax", "torch") if _importable(backend)]
    # Only the files that hold marked tests: collecting every test module costs each process
    # half a minute. Each backend keeps two workers, so that this test, the longest of the
    # suite, does not end it on one core.
    files = _files_with_marked_tests()
    # Both backends at once: each is a chain of imports and subprocesses that waits as much
    # as it computes.
    outputs = {backend: (tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")) for backend in backends}
    processes = {
        backend: subprocess.Popen(
            [sys.executable, "-m", "pytest", "-m", "backends", "-q", "-p", "no:cacheprovider",
             *files],
            cwd=PROJECT_ROOT,
            env=dict(os.environ, KERAS_BACKEND=backend),
            stdout=outputs[backend][0],
            stderr=outputs[backend][1],
        )
        for backend in backends
    }
    assert backends, "neither jax nor torch is installed"
    for backend, process in processes.items():
        process.wait()
        stdout, stderr = (_read(file) for file in outputs[backend])
        summary = stdout[-6000:] + stderr[-3000:]
        assert process.returncode == 0, f"tests marked `backends` failed under {backend}:\n{summary}"
        assert " passed" in stdout, f"no test ran under {backend}:\n{summary}"


def _files_with_marked_tests():
    tests_dir = pathlib.Path(PROJECT_ROOT) / "tests"
    marked = re.compile(r"pytest\.mark\.backends|pytestmark\s*=.*backends")
    files = sorted(
        str(path.relative_to(PROJECT_ROOT))
        for path in tests_dir.glob("test_*.py")
        if marked.search(path.read_text(encoding="utf-8"))
    )
    assert files, f"no test in {tests_dir} is marked `backends`"
    return files


def _read(file):
    file.seek(0)
    return file.read()


def _importable(module_name):
    import importlib.util

    return importlib.util.find_spec(module_name) is not None
