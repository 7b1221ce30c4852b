"""Runs the tests marked `backends` again under the JAX and PyTorch backends.

Keras fixes its backend when it is first imported, so each backend needs a process of its
own. Under the default TensorFlow backend this test starts one pytest process per other
backend; inside those processes it skips itself.
"""

import os
import subprocess
import sys

import pytest

from conftest import PROJECT_ROOT


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_marked_tests_pass_on(backend):
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        pytest.skip("already running under a non-default backend")
    pytest.importorskip(backend)
    environment = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "backends", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
    )
    summary = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, f"tests marked `backends` failed under {backend}:\n{summary}"
    assert " passed" in result.stdout, f"no test ran under {backend}:\n{summary}"
