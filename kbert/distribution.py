"""Where training runs: one device, all local accelerators, a TPU, or several JAX processes.

`make_distribution(strategy)` turns the `--strategy` option into a `Distribution` for the
current Keras backend:

- TensorFlow: a `tf.distribute` strategy (`TPUStrategy`, `MirroredStrategy`,
  `OneDeviceStrategy`, or the default strategy for one accelerator, which keeps XLA
  available). Keras 3 does not work with `MultiWorkerMirroredStrategy`
  (keras-team/keras#20585), so training across machines goes through JAX.
- JAX: a `keras.distribution` (`DataParallel`, or `ModelParallel` with `bert_layout_map`),
  across processes after `jax.distributed.initialize`.
- PyTorch: one device.

Models, optimizers and metrics must be created inside `distribution.scope()`; training data
goes through `distribution.distribute_dataset()` (which `kbert.training.fit` calls).
"""

import contextlib
import os

import keras

STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "tpu", "one_device")

# Environment variables read when the matching argument is not given; JAX's own
# (JAX_COORDINATOR_ADDRESS, ...) and cluster auto-detection still apply after them.
COORDINATOR_ADDRESS_VARIABLE = "KBERT_COORDINATOR_ADDRESS"
NUM_PROCESSES_VARIABLE = "KBERT_NUM_PROCESSES"
PROCESS_ID_VARIABLE = "KBERT_PROCESS_ID"


class Distribution:
    """The devices and processes one training run uses; made by `make_distribution`.

    Args:
        strategy: the `--strategy` value it was made from.
        description: one line saying where training runs, for logs.
        tf_strategy: the `tf.distribute.Strategy` (TensorFlow backend), or `None` for
            TensorFlow's default strategy and on other backends.
        keras_distribution: the `keras.distribution.Distribution` (JAX backend) or `None`.
        device: a Keras device name to place everything on (`"cpu:0"`), or `None`.
        num_replicas: how many model replicas share each global batch.
        num_processes: how many processes train together (JAX multi-process), else 1.
        process_id: this process's index among them.

    Example:
    >>> distribution = make_distribution("auto")
    >>> with distribution.scope():
    ...     model = BertClassifier(backbone, num_classes=2)  # doctest: +SKIP
    """

    def __init__(
        self,
        strategy="default",
        description="the default device",
        tf_strategy=None,
        keras_distribution=None,
        device=None,
        num_replicas=1,
        num_processes=1,
        process_id=0,
    ):
        self.strategy = strategy
        self.description = description
        self.tf_strategy = tf_strategy
        self.keras_distribution = keras_distribution
        self.device = device
        self.num_replicas = num_replicas
        self.num_processes = num_processes
        self.process_id = process_id

    def __repr__(self):
        return f"Distribution(strategy={self.strategy!r}, {self.description})"

    @property
    def is_chief(self):
        """Whether this process writes logs, backups and the model directory."""
        return self.process_id == 0

    @contextlib.contextmanager
    def scope(self):
        """Creates models, optimizers and metrics under this distribution."""
        with contextlib.ExitStack() as stack:
            if self.tf_strategy is not None:
                stack.enter_context(self.tf_strategy.scope())
            if self.keras_distribution is not None:
                stack.enter_context(self.keras_distribution.scope())
            if self.device is not None:
                stack.enter_context(keras.device(self.device))
            yield self

    def input_context(self):
        """The `tf.distribute.InputContext` a dataset function receives outside TensorFlow.

        On JAX, each process feeds its share of every global batch and Keras splits it over
        the process's devices, so an input pipeline is a process.
        """
        import tensorflow as tf

        return tf.distribute.InputContext(
            num_input_pipelines=self.num_processes,
            input_pipeline_id=self.process_id,
            num_replicas_in_sync=self.num_processes,
        )

    def distribute_dataset(self, data, skip_batches=0, repeat=False):
        """Turns training or validation data into what `model.fit()` takes here.

        Args:
            data: a `tf.data.Dataset` of global batches, or a function
                `dataset_fn(input_context)` returning a dataset of per-replica batches
                (`input_context.get_per_replica_batch_size(global_batch_size)`), sharded
                with `input_context.num_input_pipelines` and `input_context.input_pipeline_id`.
            skip_batches: how many global batches to skip, for resuming a run. A dataset
                function with a `skip_batches` parameter is given this pipeline's share and
                returns its stream already there (positioned without reading what it skips);
                any other is repeated and skipped through.
            repeat: repeat the data forever before skipping (training data).
        """
        if callable(data) and not _is_dataset(data):
            return self._distribute_dataset_function(data, skip_batches, repeat)
        dataset = data.repeat() if repeat else data
        if skip_batches:
            dataset = dataset.skip(skip_batches)
        if self.keras_distribution is not None and self.num_processes > 1:
            # Every process reads the same global batches and keeps its slice of each,
            # as Keras' auto-sharding does; full batches keep the slices aligned.
            global_batch_size = _batch_size(dataset)
            if global_batch_size % self.num_processes != 0:
                raise ValueError(
                    "Expected the global batch size to be divisible by the number of "
                    f"processes. Received: batch_size={global_batch_size}, "
                    f"num_processes={self.num_processes}"
                )
            dataset = dataset.rebatch(global_batch_size, drop_remainder=True)
            dataset = dataset.rebatch(global_batch_size // self.num_processes)
            dataset = dataset.shard(self.num_processes, self.process_id)
        return dataset

    def _distribute_dataset_function(self, dataset_fn, skip_batches, repeat):
        import tensorflow as tf

        from kbert.data.sources import without_autotuning

        def per_pipeline_dataset(input_context):
            if not (repeat or skip_batches):
                return dataset_fn(input_context)

            # Plain Python that builds a pipeline: nothing for AutoGraph to convert (it would
            # only warn about the TFDS methods it cannot read).
            @tf.autograph.experimental.do_not_convert
            def fresh_stream(_):
                # Each pipeline serves this many replicas per global step.
                replicas_per_pipeline = (
                    input_context.num_replicas_in_sync // input_context.num_input_pipelines
                )
                if skip_batches and _skips_batches(dataset_fn):
                    dataset = dataset_fn(
                        input_context, skip_batches=skip_batches * replicas_per_pipeline
                    )
                    return dataset.repeat() if repeat else dataset
                dataset = dataset_fn(input_context)
                if repeat:
                    dataset = dataset.repeat()
                if skip_batches:
                    dataset = dataset.skip(skip_batches * replicas_per_pipeline)
                return dataset

            # Keras may iterate a training dataset twice in one fit() (once to build the
            # model), and a tf.data pipeline's reshuffling and rerandomizing seeds advance
            # with every iteration of the same dataset object. Building the pipeline anew
            # inside flat_map on every iteration makes each batch a function of its step
            # alone, which is what lets a resumed run see the batches it would have seen.
            # The outer pipeline's options are the ones that hold: autotuning off, as in
            # kbert's pipelines.
            stream = tf.data.Dataset.range(1).flat_map(fresh_stream).prefetch(tf.data.AUTOTUNE)
            return without_autotuning(stream)

        if self.tf_strategy is not None:
            return self.tf_strategy.distribute_datasets_from_function(per_pipeline_dataset)
        return per_pipeline_dataset(self.input_context())


def _skips_batches(dataset_fn):
    """Whether a dataset function positions its stream itself (a `skip_batches` parameter)."""
    import inspect

    try:
        return "skip_batches" in inspect.signature(dataset_fn).parameters
    except (TypeError, ValueError):
        return False


def make_distribution(
    strategy="auto",
    coordinator_address=None,
    num_processes=None,
    process_id=None,
    model_parallel=1,
    tpu=None,
):
    """Chooses the devices (and, on JAX, the processes) that training runs on.

    Call it before building any model: on JAX it starts the multi-process runtime, which
    must happen before the first computation.

    Args:
        strategy: `auto` (a TPU if one is found, else all local GPUs, else the CPU), `cpu`,
            `gpu` (all local GPUs), `mirrored` (all local GPUs, or all logical CPUs where
            there is no GPU), `tpu`, or `one_device` (the first GPU, else the CPU).
        coordinator_address: `host:port` of process 0, for JAX multi-process training;
            defaults to `$KBERT_COORDINATOR_ADDRESS`.
        num_processes: how many processes train together; defaults to
            `$KBERT_NUM_PROCESSES`.
        process_id: this process's index, 0 to `num_processes - 1`; defaults to
            `$KBERT_PROCESS_ID`.
        model_parallel: on JAX, shard each model replica over this many devices with
            `bert_layout_map`; the other mesh axis splits the batch.
        tpu: TPU name or address for `strategy="tpu"` on TensorFlow (default: the local or
            `$TPU_NAME` TPU).

    Example:
    >>> make_distribution("cpu").num_replicas
    1
    """
    if strategy not in STRATEGIES:
        raise ValueError(
            f"Expected strategy to be one of {', '.join(STRATEGIES)}. "
            f"Received: strategy={strategy!r}"
        )
    if not isinstance(model_parallel, int) or model_parallel < 1:
        raise ValueError(
            "Expected model_parallel to be a positive integer. "
            f"Received: model_parallel={model_parallel!r}"
        )
    coordinator_address = coordinator_address or os.environ.get(COORDINATOR_ADDRESS_VARIABLE)
    num_processes = _int_option("num_processes", num_processes, NUM_PROCESSES_VARIABLE)
    process_id = _int_option("process_id", process_id, PROCESS_ID_VARIABLE)
    multi_process = bool(coordinator_address) or (num_processes or 1) > 1

    backend = keras.backend.backend()
    if backend != "jax":
        if multi_process:
            raise ValueError(
                "Multi-process training (coordinator_address, num_processes) needs the JAX "
                f"backend (KERAS_BACKEND=jax). Received: KERAS_BACKEND={backend}"
            )
        if model_parallel > 1:
            raise ValueError(
                "model_parallel > 1 needs the JAX backend (KERAS_BACKEND=jax). "
                f"Received: KERAS_BACKEND={backend}, model_parallel={model_parallel}"
            )
    if backend == "tensorflow":
        return _tensorflow_distribution(strategy, tpu)
    if backend == "jax":
        return _jax_distribution(
            strategy, multi_process, coordinator_address, num_processes, process_id, model_parallel
        )
    return _torch_distribution(strategy)


@contextlib.contextmanager
def distribution_scope(strategy="auto", **kwargs):
    """`make_distribution(strategy, **kwargs)`, entered: build and train inside it.

    Example:
    >>> with distribution_scope("auto") as distribution:
    ...     model = BertMaskedLM(backbone)  # doctest: +SKIP
    ...     training.fit(model, dataset, "runs/mlm", distribution=distribution)  # doctest: +SKIP
    """
    distribution = make_distribution(strategy, **kwargs)
    with distribution.scope():
        yield distribution


def bert_layout_map(device_mesh, model_dimension="model"):
    """A `keras.distribution.LayoutMap` that shards kbert models Megatron-style.

    Attention heads, the feed-forward width and the vocabulary are split over the
    `model_dimension` axis of `device_mesh`; everything else is replicated. The number of
    heads, the intermediate size and the vocabulary size must divide by that axis.
    """
    layout_map = keras.distribution.LayoutMap(device_mesh)
    model = model_dimension
    layout_map[r"token_embedding/embeddings"] = (model, None)
    # (hidden, heads, head_dim) projections and their (heads, head_dim) biases.
    layout_map[r"transformer_layer_\d+/(query|key|value)/kernel"] = (None, model, None)
    layout_map[r"transformer_layer_\d+/(query|key|value)/bias"] = (model, None)
    layout_map[r"transformer_layer_\d+/attention_output/kernel"] = (model, None, None)
    layout_map[r"transformer_layer_\d+/intermediate/kernel"] = (None, model)
    layout_map[r"transformer_layer_\d+/intermediate/bias"] = (model,)
    layout_map[r"transformer_layer_\d+/output/kernel"] = (model, None)
    return layout_map


# === TensorFlow ===


def _tensorflow_distribution(strategy, tpu):
    import tensorflow as tf

    if strategy == "tpu" or (strategy == "auto" and _tpu_expected()):
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as error:
            if strategy == "auto":
                resolver = None
            else:
                raise ValueError(f"strategy='tpu' found no usable TPU ({error}).") from None
        if resolver is not None:
            tf_strategy = tf.distribute.TPUStrategy(resolver)
            return Distribution(
                strategy,
                f"TPUStrategy over {tf_strategy.num_replicas_in_sync} TPU cores",
                tf_strategy=tf_strategy,
                num_replicas=tf_strategy.num_replicas_in_sync,
            )

    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
    if strategy == "gpu" and not gpus:
        raise ValueError("strategy='gpu': TensorFlow sees no GPU on this machine.")
    if strategy == "cpu":
        tf_strategy = tf.distribute.OneDeviceStrategy(cpus[0])
        return Distribution(strategy, f"one CPU ({cpus[0]})", tf_strategy=tf_strategy)
    if strategy == "mirrored":
        devices = gpus or cpus
        tf_strategy = tf.distribute.MirroredStrategy(devices)
        return Distribution(
            strategy,
            f"MirroredStrategy over {', '.join(devices)}",
            tf_strategy=tf_strategy,
            num_replicas=len(devices),
        )
    if strategy in ("auto", "gpu") and len(gpus) > 1:
        tf_strategy = tf.distribute.MirroredStrategy(gpus)
        return Distribution(
            strategy,
            f"MirroredStrategy over {len(gpus)} GPUs",
            tf_strategy=tf_strategy,
            num_replicas=len(gpus),
        )
    # One device: TensorFlow's default strategy, under which Keras may still use XLA
    # (it turns XLA off under any explicit tf.distribute strategy).
    return Distribution(strategy, f"one device ({(gpus or cpus)[0]})")


def _tpu_expected():
    # Asking TPUClusterResolver on a machine without a TPU can wait on a metadata server,
    # so `auto` only tries where a TPU is advertised.
    return bool(os.environ.get("TPU_NAME")) or os.path.exists("/dev/accel0")


# === JAX ===


def _jax_distribution(
    strategy, multi_process, coordinator_address, num_processes, process_id, model_parallel
):
    import jax

    if multi_process and not jax.distributed.is_initialized():
        # Gloo lets processes on CPUs exchange gradients (it is ignored on accelerators).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        keras.distribution.initialize(
            job_addresses=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    platform = {"cpu": "cpu", "gpu": "gpu", "tpu": "tpu"}.get(strategy)
    try:
        devices = jax.devices(platform) if platform else jax.devices()
    except RuntimeError:
        raise ValueError(f"strategy={strategy!r}: JAX sees no {platform.upper()} here.") from None
    process_count = jax.process_count()
    process_index = jax.process_index()
    if strategy == "one_device":
        if process_count > 1:
            raise ValueError("strategy='one_device' cannot train across several processes.")
        devices = devices[:1]
    kind = devices[0].platform.upper()
    if len(devices) % model_parallel != 0:
        raise ValueError(
            "Expected the number of devices to be divisible by model_parallel. "
            f"Received: {len(devices)} {kind} devices, model_parallel={model_parallel}"
        )
    if model_parallel > jax.local_device_count(devices[0].platform):
        raise ValueError(
            "Expected model_parallel to be at most the devices of one process, so that "
            f"each process holds whole model replicas. Received: model_parallel="
            f"{model_parallel}, local devices={jax.local_device_count(devices[0].platform)}"
        )
    num_replicas = len(devices) // model_parallel
    where = f"{len(devices)} {kind} devices" + (
        f" in {process_count} processes" if process_count > 1 else ""
    )
    keras_distribution = None
    if model_parallel > 1:
        device_mesh = keras.distribution.DeviceMesh(
            (num_replicas, model_parallel), ["batch", "model"], devices=devices
        )
        keras_distribution = keras.distribution.ModelParallel(
            layout_map=bert_layout_map(device_mesh),
            batch_dim_name="batch",
            auto_shard_dataset=False,
        )
        description = f"ModelParallel over {where} ({num_replicas} x {model_parallel})"
    elif len(devices) > 1 or process_count > 1 or platform is not None:
        # Datasets reach Keras already split per process (Distribution.distribute_dataset).
        keras_distribution = keras.distribution.DataParallel(
            devices=devices, auto_shard_dataset=False
        )
        description = f"DataParallel over {where}"
    else:
        description = f"one device ({devices[0]})"
    return Distribution(
        strategy,
        description,
        keras_distribution=keras_distribution,
        num_replicas=num_replicas,
        num_processes=process_count,
        process_id=process_index,
    )


# === PyTorch ===


def _torch_distribution(strategy):
    import torch

    if strategy in ("mirrored", "tpu"):
        raise ValueError(
            f"strategy={strategy!r} needs the TensorFlow or JAX backend; with "
            "KERAS_BACKEND=torch kbert trains on one device (strategy auto, cpu, gpu or "
            "one_device)."
        )
    if strategy == "gpu" and not torch.cuda.is_available():
        raise ValueError("strategy='gpu': PyTorch sees no GPU on this machine.")
    if strategy == "cpu":
        return Distribution(strategy, "one CPU", device="cpu")
    if torch.cuda.is_available():
        return Distribution(strategy, "one GPU (cuda:0)", device="cuda:0")
    return Distribution(strategy, "one CPU", device="cpu")


# === Helpers ===


def _int_option(name, value, variable):
    if value is None:
        value = os.environ.get(variable)
        if value in (None, ""):
            return None
        source = f"${variable}"
    else:
        source = name
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"Expected {source} to be an integer. Received: {value!r}") from None


def _is_dataset(value):
    import tensorflow as tf

    return isinstance(value, tf.data.Dataset)


def _batch_size(dataset):
    import tensorflow as tf

    first_spec = tf.nest.flatten(dataset.element_spec)[0]
    if first_spec.shape.rank and first_spec.shape[0] is not None:
        return int(first_spec.shape[0])
    # The batch dimension is not static (no drop_remainder): ask tf.data, as Keras does.
    from tensorflow.python.data.experimental.ops import distribute as tf_data_distribute

    batch_size = int(tf_data_distribute.compute_batch_size(dataset).numpy())
    if batch_size < 1:
        raise ValueError(
            "Expected a batched dataset (dataset.batch(global_batch_size)) for "
            "multi-process training."
        )
    return batch_size
