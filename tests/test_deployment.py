"""Tests of `kbert.deployment`: warm-up requests, `models.config` and the batching file.

The files are read back with TensorFlow Serving's own protos (`tensorflow-serving-api`).
That package does not ship `BatchingParameters` (session_bundle_config.proto), so its
descriptor is rebuilt here from that proto's field names, numbers and types.
"""

import os
import subprocess
import sys

import pytest

import kbert
from kbert import deployment, files
from test_export import write_model_dir


def batching_parameters_class():
    """`tensorflow.serving.BatchingParameters`, as tensorflow_serving/servables/tensorflow/
    session_bundle_config.proto defines it."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    file = descriptor_pb2.FileDescriptorProto(
        name="session_bundle_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = file.message_type.add(name="BatchingParameters")
    field = descriptor_pb2.FieldDescriptorProto
    for number, name, type_name in [
        (1, "max_batch_size", ".google.protobuf.Int64Value"),
        (2, "batch_timeout_micros", ".google.protobuf.Int64Value"),
        (3, "max_enqueued_batches", ".google.protobuf.Int64Value"),
        (4, "num_batch_threads", ".google.protobuf.Int64Value"),
        (5, "thread_pool_name", ".google.protobuf.StringValue"),
    ]:
        message.field.add(
            name=name, number=number, type=field.TYPE_MESSAGE, type_name=type_name, label=field.LABEL_OPTIONAL
        )
    message.field.add(name="allowed_batch_sizes", number=6, type=field.TYPE_INT64, label=field.LABEL_REPEATED)
    message.field.add(name="pad_variable_length_inputs", number=7, type=field.TYPE_BOOL, label=field.LABEL_OPTIONAL)
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def read_model_config(path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    with open(path, encoding="utf-8") as file:
        return text_format.Parse(file.read(), model_server_config_pb2.ModelServerConfig())


def entries(config):
    return {
        entry.name: (entry.base_path, entry.model_platform, entry.model_version_policy.latest.num_versions)
        for entry in config.model_config_list.config
    }


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("deployment") / "model"
    write_model_dir(directory)
    return directory


def test_exports_keep_one_entry_per_model_in_models_config(model_dir, tmp_path, capsys):
    from kbert.cli import main

    root = tmp_path / "saved_models"
    kbert.export(model_dir, root / "sentiment")
    kbert.export(model_dir, root / "sentiment")
    assert main(["export", "--model", str(model_dir), "--output", str(root / "topics"), "--keep-versions", "2"]) == 0
    printed = capsys.readouterr().out
    kbert.export(model_dir, root / "topics", keep_versions=2)

    config = read_model_config(root / "models.config")
    assert entries(config) == {
        "sentiment": ("/models/sentiment", "tensorflow", 1),
        "topics": ("/models/topics", "tensorflow", 2),
    }
    assert sorted(os.listdir(root / "sentiment")) == ["1", "2"]
    assert sorted(os.listdir(root / "topics")) == ["1", "2"]
    # The printed commands serve exactly these files.
    flags = (
        "--model_config_file=/models/models.config --enable_batching "
        "--batching_parameters_file=/models/batching_parameters.txt"
    )
    docker = "docker run -p 8500:8500 -p 8501:8501 -e TF_ENABLE_ONEDNN_OPTS=1"
    assert f"{docker} -v {root}:/models tensorflow/serving:2.20.0 {flags}" in printed
    assert f"TF_ENABLE_ONEDNN_OPTS=1 tensorflow_model_server --port=8500 --rest_api_port=8501 {flags}" in printed

    # Another serving root, and a model's entry updated rather than added again.
    deployment.update_model_config(root / "sentiment", keep_versions=3, serving_root="/srv/models/")
    assert entries(read_model_config(root / "models.config"))["sentiment"] == (
        "/srv/models/sentiment",
        "tensorflow",
        3,
    )
    assert len(read_model_config(root / "models.config").model_config_list.config) == 2


def test_batching_parameters_parse_as_tensorflow_serving_reads_them(model_dir, tmp_path):
    from google.protobuf import text_format

    kbert.export(model_dir, tmp_path / "sentiment")
    with open(tmp_path / "batching_parameters.txt", encoding="utf-8") as file:
        parameters = text_format.Parse(file.read(), batching_parameters_class()())
    assert parameters.max_batch_size.value == 64
    assert parameters.num_batch_threads.value == os.cpu_count()
    assert 0 < parameters.batch_timeout_micros.value <= 10_000
    assert parameters.pad_variable_length_inputs
    # A file the user tuned is kept.
    (tmp_path / "batching_parameters.txt").write_text("max_batch_size { value: 8 }\n")
    kbert.export(model_dir, tmp_path / "sentiment")
    assert (tmp_path / "batching_parameters.txt").read_text() == "max_batch_size { value: 8 }\n"


def test_a_broken_models_config_fails_before_exporting(model_dir, tmp_path):
    (tmp_path / "models.config").write_text("model_config_list { config { name: ")
    with pytest.raises(ValueError, match="models.config is not a ModelServerConfig text proto"):
        kbert.export(model_dir, tmp_path / "sentiment")
    assert not os.path.exists(tmp_path / "sentiment") or os.listdir(tmp_path / "sentiment") == []
    with pytest.raises(ValueError, match="keep_versions to be a positive integer"):
        kbert.export(model_dir, tmp_path / "other", keep_versions=0)


# Rewrites models.config for one model, many times.
UPDATER = r"""
import sys
from kbert import deployment, files
for _ in range(int(sys.argv[2])):
    deployment.update_model_config(sys.argv[1])
"""


def test_concurrent_rewrites_of_models_config_are_atomic_and_all_land(tmp_path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    updaters = [
        subprocess.Popen([sys.executable, "-c", UPDATER, str(tmp_path / name), "40"])
        for name in ("first", "second", "third")
    ]
    reads = 0
    path = tmp_path / "models.config"
    while any(updater.poll() is None for updater in updaters):
        if path.exists():
            # A server polling the file never sees half of it.
            config = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
            assert config.model_config_list.config
            reads += 1
    assert [updater.returncode for updater in updaters] == [0, 0, 0]
    assert reads > 0
    assert set(entries(read_model_config(path))) == {"first", "second", "third"}
    assert [name for name in os.listdir(tmp_path) if name.startswith(files.TEMPORARY_PREFIX)] == []


def test_warmup_requests_cover_every_signature_at_each_length_and_batch_size(model_dir, tmp_path):
    import tensorflow as tf

    version_dir = kbert.export(model_dir, tmp_path / "sentiment")
    logs = deployment.read_warmup_requests(version_dir)
    seen = set()
    for log in logs:
        kind = log.WhichOneof("log_type")
        request = getattr(log, kind).request
        assert request.model_spec.name == "sentiment"
        if kind == "predict_log":
            values = {name: tf.make_ndarray(tensor) for name, tensor in request.inputs.items()}
            batch_size = len(next(iter(values.values())))
            if "text" in values:
                length = len(values["text"][0].split())
            else:
                length = values["token_ids"].shape[1] - 2
                assert (values["padding_mask"] == 1).all()
        else:
            examples = request.input.example_list.examples
            batch_size = len(examples)
            length = len(examples[0].features.feature["text"].bytes_list.value[0].split())
        seen.add((request.model_spec.signature_name, kind, batch_size, length))
    # The export's sequence length is 16: texts of 4 words and of 14, the most that fit.
    assert seen == {
        (signature, kind, batch_size, length)
        for signature, kind in [
            ("serving_default", "predict_log"),
            ("serve_token_ids", "predict_log"),
            ("serve_examples", "classify_log"),
        ]
        for batch_size in (1, 8)
        for length in (4, 14)
    }
