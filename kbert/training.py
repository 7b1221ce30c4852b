"""Training with Keras `fit()`: optimizer and learning-rate schedule, precision, and a
resumable `fit` that leaves logs, history and a plot in its output directory.

A typical run (what `kbert pretrain` does):

    distribution = kbert.distribution.make_distribution(args.strategy)
    training.set_precision(args.precision)
    keras.utils.set_random_seed(args.seed)
    with distribution.scope():
        model = kbert.BertMaskedLM(kbert.BertBackbone.from_size(...))
        model.compile(
            optimizer=training.make_optimizer(learning_rate=1e-4, num_train_steps=10_000,
                                              warmup_steps=1_000),
            weighted_metrics=kbert.metrics.masked_lm_metrics(),
        )
    history = training.fit(model, dataset_fn, "runs/mlm", num_train_steps=10_000,
                           steps_per_epoch=1_000, distribution=distribution)

Run the same command again after a crash or a kill and `fit` continues from the last
backup in `runs/mlm/backup`.
"""

import json
import math
import os

import keras

from kbert.callbacks import (
    HISTORY_PLOT,
    BackupCallback,
    HistoryLogger,
    LossNotFiniteError,
    TrainingState,
    plot_history,
    read_history,
    write_history,
)
from kbert.distribution import Distribution

OPTIMIZERS = ("adamw", "lamb")
DECAYS = ("linear", "polynomial", "cosine", "constant")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")

# Substrings of variable names that get no weight decay, as in the original BERT:
# LayerNorm scale and offset, and every bias.
NO_WEIGHT_DECAY_NAMES = ("gamma", "beta", "bias")

BACKUP_DIR = "backup"
LOGS_DIR = "logs"

__all__ = [
    "AdamW",
    "Lamb",
    "LossNotFiniteError",
    "WarmupSchedule",
    "fit",
    "make_learning_rate_schedule",
    "make_optimizer",
    "plot_history",
    "set_precision",
]


# === Learning rate ===


@keras.saving.register_keras_serializable(package="kbert")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak_learning_rate`, then `decay_schedule`, per update.

    At update `u < warmup_steps` the rate is `peak_learning_rate * u / warmup_steps`; from
    `warmup_steps` on it is `decay_schedule(u - warmup_steps)`. Keras 3 has warmup only in
    `CosineDecay`; BERT warms up before a linear (polynomial) decay.

    Keras evaluates schedules at its count of batches, which under gradient accumulation
    runs `gradient_accumulation_steps` times faster than the count of updates that Adam's
    bias correction uses; this schedule converts batches to updates so that warmup and
    decay lengths mean updates either way.

    Args:
        peak_learning_rate: the rate reached at the end of warmup.
        warmup_steps: number of warmup updates (0 for none).
        decay_schedule: a schedule (or a constant) that starts at the end of warmup.
        gradient_accumulation_steps: batches per update.

    Example:
    >>> decay = keras.optimizers.schedules.PolynomialDecay(1e-3, decay_steps=90)
    >>> schedule = WarmupSchedule(1e-3, warmup_steps=10, decay_schedule=decay)
    >>> [round(float(schedule(step)), 6) for step in (0, 5, 10, 55, 100)]
    [0.0, 0.0005, 0.001, 0.0005, 0.0]
    """

    def __init__(
        self, peak_learning_rate, warmup_steps, decay_schedule, gradient_accumulation_steps=1
    ):
        self.peak_learning_rate = peak_learning_rate
        self.warmup_steps = warmup_steps
        self.decay_schedule = decay_schedule
        self.gradient_accumulation_steps = gradient_accumulation_steps

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        if self.gradient_accumulation_steps > 1:
            step = keras.ops.floor(step / self.gradient_accumulation_steps)
        warmup_rate = self.peak_learning_rate * step / float(max(self.warmup_steps, 1))
        after_warmup = keras.ops.maximum(step - self.warmup_steps, 0.0)
        if callable(self.decay_schedule):
            decayed_rate = keras.ops.cast(self.decay_schedule(after_warmup), "float32")
        else:
            decayed_rate = keras.ops.full_like(step, self.decay_schedule)
        return keras.ops.where(step < self.warmup_steps, warmup_rate, decayed_rate)

    def get_config(self):
        decay_schedule = self.decay_schedule
        if isinstance(decay_schedule, keras.optimizers.schedules.LearningRateSchedule):
            decay_schedule = keras.optimizers.schedules.serialize(decay_schedule)
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "decay_schedule": decay_schedule,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["decay_schedule"], dict):
            config["decay_schedule"] = keras.optimizers.schedules.deserialize(
                config["decay_schedule"]
            )
        return cls(**config)


def make_learning_rate_schedule(
    learning_rate,
    num_train_steps=None,
    warmup_steps=0,
    decay="linear",
    decay_power=1.0,
    end_learning_rate=0.0,
    gradient_accumulation_steps=None,
):
    """Linear warmup to `learning_rate`, then a decay to `end_learning_rate` at the end.

    Steps count optimizer updates: with gradient accumulation, one update per
    `gradient_accumulation_steps` batches.

    Args:
        learning_rate: the peak rate.
        num_train_steps: total optimizer updates; needed by every decay but `constant`.
        warmup_steps: updates of linear warmup from 0 (0: start at `learning_rate`).
        decay: `linear`, `polynomial` (with `decay_power`), `cosine` or `constant`, over
            the updates after warmup.
        decay_power: the power of the `polynomial` decay (1.0 is `linear`).
        end_learning_rate: the rate at `num_train_steps` (cosine ends at 0).
        gradient_accumulation_steps: batches per update, or `None` (one).

    Example:
    >>> schedule = make_learning_rate_schedule(1e-4, num_train_steps=100, warmup_steps=10)
    >>> round(float(schedule(10)), 8), round(float(schedule(55)), 8)
    (0.0001, 5e-05)
    """
    if decay not in DECAYS:
        raise ValueError(
            f"Expected decay to be one of {', '.join(DECAYS)}. Received: decay={decay!r}"
        )
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(
            f"Expected warmup_steps to be a non-negative integer. Received: warmup_steps={warmup_steps!r}"
        )
    if decay != "constant":
        if num_train_steps is None or num_train_steps <= warmup_steps:
            raise ValueError(
                "Expected warmup_steps to be smaller than num_train_steps, the number of training steps. "
                f"Received: warmup_steps={warmup_steps}, num_train_steps={num_train_steps}"
            )
    schedules = keras.optimizers.schedules
    if decay == "constant":
        decay_schedule = learning_rate
    elif decay == "cosine":
        decay_schedule = schedules.CosineDecay(learning_rate, num_train_steps - warmup_steps)
    else:
        decay_schedule = schedules.PolynomialDecay(
            learning_rate,
            decay_steps=num_train_steps - warmup_steps,
            end_learning_rate=end_learning_rate,
            power=1.0 if decay == "linear" else decay_power,
        )
    gradient_accumulation_steps = gradient_accumulation_steps or 1
    if warmup_steps == 0 and gradient_accumulation_steps == 1:
        return decay_schedule
    return WarmupSchedule(learning_rate, warmup_steps, decay_schedule, gradient_accumulation_steps)


# === Optimizer ===


class _ClipsSummedGradients:
    """Clips the gradient summed over replicas, as on one device.

    Under a multi-replica tf.distribute strategy, Keras 3 clips each replica's share of
    the gradient and sums the clipped shares afterwards, so `global_clipnorm` (and
    `clipnorm`) would bound something else than on one device. Here the shares are summed
    first, clipped, and handed back as equal shares, which Keras then sums to the clipped
    total. This costs one more all-reduce of the gradients per step, only when clipping is
    on and there is more than one replica.
    """

    def _clip_gradients(self, grads):
        context = _multi_replica_context()
        if context is None or not (self.clipnorm or self.global_clipnorm):
            return super()._clip_gradients(grads)
        import tensorflow as tf

        present = [index for index, grad in enumerate(grads) if grad is not None]
        summed = context.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
        clipped = super()._clip_gradients(list(summed))
        share = 1.0 / context.num_replicas_in_sync
        grads = list(grads)
        for index, grad in zip(present, clipped):
            grads[index] = grad * share
        return grads


def _multi_replica_context():
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


@keras.saving.register_keras_serializable(package="kbert")
class AdamW(_ClipsSummedGradients, keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` whose gradient clipping holds under tf.distribute.

    On the TensorFlow backend the Adam update of each variable is TensorFlow's fused
    `ResourceApplyAdam` kernel: one pass over the variable, its two moments and its gradient,
    where Keras builds about ten element-wise ops, each a pass over memory. It computes the
    same update as Keras' `Adam`:
    moments `m += (1 - beta_1) (g - m)`, `v += (1 - beta_2) (g^2 - v)`, then
    `variable -= lr sqrt(1 - beta_2^t) / (1 - beta_1^t) m / (sqrt(v) + epsilon)`. Decoupled
    weight decay is Keras' own, applied before it.
    """

    def update_step(self, gradient, variable, learning_rate):
        if keras.backend.backend() != "tensorflow" or self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        index = self._get_variable_index(variable)
        momentum, velocity = self._momentums[index], self._velocities[index]
        dtype = variable.dtype
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        step = tf.cast(self.iterations + 1, dtype)
        # `.handle` of a Keras variable, or under tf.distribute of the variable's copy on the
        # device being updated.
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=momentum.value.handle,
            v=velocity.value.handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(tf.convert_to_tensor(gradient), dtype),
        )


@keras.saving.register_keras_serializable(package="kbert")
class Lamb(_ClipsSummedGradients, keras.optimizers.Lamb):
    """`keras.optimizers.Lamb` whose gradient clipping holds under tf.distribute."""


def make_optimizer(
    name="adamw",
    learning_rate=1e-4,
    num_train_steps=None,
    warmup_steps=0,
    decay="linear",
    decay_power=1.0,
    end_learning_rate=0.0,
    weight_decay=0.01,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-6,
    global_clipnorm=1.0,
    clipnorm=None,
    gradient_accumulation_steps=None,
    precision=None,
):
    """Builds the optimizer BERT trains with.

    AdamW or LAMB with decoupled weight decay that skips LayerNorm and bias variables
    (`NO_WEIGHT_DECAY_NAMES`), warmup and decay from `make_learning_rate_schedule`,
    gradient clipping, gradient accumulation, and loss scaling under `mixed_float16`.

    Args:
        name: `adamw` (default) or `lamb`.
        learning_rate, num_train_steps, warmup_steps, decay, decay_power,
            end_learning_rate: the schedule, see `make_learning_rate_schedule`.
        weight_decay: decoupled weight decay rate (0 for none).
        beta_1, beta_2, epsilon: Adam moments and epsilon (BERT uses epsilon 1e-6).
        global_clipnorm: clip the gradients to this global norm (`None`: no clipping).
        clipnorm: clip each gradient to this norm instead (`None`: off).
        gradient_accumulation_steps: sum the gradients of this many batches (>= 2) before
            each update; the effective batch is that many times larger.
        precision: the dtype policy name; `None` reads Keras' global policy. Under
            `mixed_float16` the optimizer is wrapped in a `LossScaleOptimizer`.

    Example:
    >>> optimizer = make_optimizer("adamw", 5e-5, num_train_steps=1000, warmup_steps=100)
    """
    if name not in OPTIMIZERS:
        raise ValueError(
            f"Expected optimizer to be one of {', '.join(OPTIMIZERS)}. Received: optimizer={name!r}"
        )
    if gradient_accumulation_steps is not None and (
        not isinstance(gradient_accumulation_steps, int) or gradient_accumulation_steps < 1
    ):
        raise ValueError(
            "Expected gradient_accumulation_steps to be a positive integer. "
            f"Received: gradient_accumulation_steps={gradient_accumulation_steps!r}"
        )
    if isinstance(learning_rate, (int, float)) and not learning_rate > 0:
        raise ValueError(
            f"Expected learning_rate to be positive. Received: learning_rate={learning_rate!r}"
        )
    if clipnorm is not None and global_clipnorm is not None:
        raise ValueError("Expected only one of clipnorm and global_clipnorm to be set. "
            f"Received: clipnorm={clipnorm!r}, global_clipnorm={global_clipnorm!r}")
    schedule = make_learning_rate_schedule(
        learning_rate,
        num_train_steps=num_train_steps,
        warmup_steps=warmup_steps,
        decay=decay,
        decay_power=decay_power,
        end_learning_rate=end_learning_rate,
        gradient_accumulation_steps=gradient_accumulation_steps,
    )
    optimizer_class = AdamW if name == "adamw" else Lamb
    optimizer = optimizer_class(
        learning_rate=schedule,
        weight_decay=weight_decay,
        beta_1=beta_1,
        beta_2=beta_2,
        epsilon=epsilon,
        global_clipnorm=global_clipnorm,
        clipnorm=clipnorm,
        # Keras' accumulation starts at 2; 1 means no accumulation.
        gradient_accumulation_steps=(
            gradient_accumulation_steps if (gradient_accumulation_steps or 1) > 1 else None
        ),
    )
    if weight_decay:
        optimizer.exclude_from_weight_decay(var_names=list(NO_WEIGHT_DECAY_NAMES))
    precision = precision or keras.config.dtype_policy().name
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def set_precision(precision):
    """Sets Keras' global dtype policy before models are built.

    Args:
        precision: `float32`, `mixed_bfloat16` (TPUs and recent GPUs; no loss scaling
            needed) or `mixed_float16` (older GPUs; `make_optimizer` adds loss scaling).
    """
    if precision not in PRECISIONS:
        raise ValueError(
            f"Expected precision to be one of {', '.join(PRECISIONS)}. Received: precision={precision!r}"
        )
    keras.config.set_dtype_policy(precision)


# === fit ===


def fit(
    model,
    train_data,
    output_dir,
    epochs=None,
    steps_per_epoch=None,
    num_train_steps=None,
    validation_data=None,
    validation_steps=None,
    validation_freq=1,
    distribution=None,
    backup_every=None,
    tensorboard_update_freq="epoch",
    run_config=None,
    callbacks=None,
    verbose="auto",
):
    """Trains a compiled model with `model.fit()`, resumably, and records the run.

    Everything lands in `output_dir`: `backup/` (the training state, every `backup_every`
    steps and at each epoch end), `logs/` (TensorBoard), and `history.json`,
    `history.csv` and `history.png` (loss and metric curves). If `output_dir` holds a
    backup from an earlier run of the same configuration, training resumes from it and
    ends with the weights an uninterrupted run would have, provided `train_data` is a
    dataset function with seeded randomness: each `model.fit()` call gets a fresh
    pipeline that skips the batches already trained on. If the loss becomes NaN or infinite,
    training stops, the model gets back the weights of the last backup (which is kept) and
    `LossNotFiniteError` says so.

    Args:
        model: a compiled Keras model, created (with its optimizer) in
            `distribution.scope()`.
        train_data: a function `dataset_fn(input_context)` returning a dataset of
            per-replica batches `(x, y)` or `(x, y, sample_weight)` (see
            `Distribution.distribute_dataset`), or a `tf.data.Dataset` of global batches.
            It is repeated, so epochs need not match its length. A dataset object cannot
            be rebuilt, so resuming from one restarts its reshuffling seeds.
        output_dir: the run's directory (created if missing).
        epochs: number of epochs; or give `num_train_steps`.
        steps_per_epoch: batches per epoch; defaults to the length of a finite
            `train_data` dataset. In pretraining an "epoch" is simply a logging and
            validation period.
        num_train_steps: total training steps (batches); defaults to
            `epochs * steps_per_epoch`. The last epoch is shorter when it does not divide.
        validation_data: a dataset or dataset function evaluated at the end of epochs.
        validation_steps: batches of validation data per evaluation (default: all).
        validation_freq: evaluate every this many epochs.
        distribution: the `kbert.distribution.Distribution` the model was built under.
        backup_every: also back up every this many steps (default: epoch ends only).
        tensorboard_update_freq: `"epoch"`, or write TensorBoard scalars every N steps.
        run_config: JSON-compatible settings of the run; a backup written under other
            settings is not resumed from (an error asks for another output directory).
        callbacks: more Keras callbacks.
        verbose: Keras' progress bar setting (`"auto"`, 0, 1, 2).

    Returns:
        The history of the whole run (across resumptions): a dict of lists with `epoch`,
        `step`, `loss`, the metrics and their `val_` counterparts.
    """
    steps_per_epoch = _steps_per_epoch(train_data, steps_per_epoch)
    num_train_steps = _num_train_steps(epochs, steps_per_epoch, num_train_steps)
    _check_backup_every(backup_every)
    # Compared with the copy stored in JSON, so it is normalised through JSON.
    run_config = dict(run_config or {}, num_train_steps=num_train_steps, steps_per_epoch=steps_per_epoch)
    run_config = json.loads(json.dumps(run_config))
    distribution = distribution or Distribution()
    _check_accumulation_is_supported(model, distribution)
    is_chief = distribution.is_chief
    if is_chief:
        os.makedirs(output_dir, exist_ok=True)
    state = TrainingState(os.path.join(output_dir, BACKUP_DIR))

    with distribution.scope():
        start_step = _resume(model, state, output_dir, run_config, num_train_steps, is_chief)
        history = read_history(output_dir, up_to_step=start_step)

        def epoch_end_step(epoch):
            return min((epoch + 1) * steps_per_epoch, num_train_steps)

        resumed_epoch = start_step // steps_per_epoch if start_step % steps_per_epoch else None
        history_logger = HistoryLogger(
            output_dir, history, epoch_end_step, write=is_chief, resumed_epoch=resumed_epoch
        )
        extra_callbacks = list(callbacks or [])
        if is_chief:
            extra_callbacks += _tensorboard_callbacks(output_dir, tensorboard_update_freq)
        if validation_data is not None:
            validation_data = distribution.distribute_dataset(validation_data)
        for first_step, last_step, segment_steps_per_epoch in _segments(
            start_step, num_train_steps, steps_per_epoch
        ):
            backup_callback = BackupCallback(
                state,
                start_step=first_step,
                stop_step=last_step,
                steps_per_epoch=segment_steps_per_epoch,
                backup_every=backup_every,
                run_config=run_config,
                write=is_chief,
            )
            model.fit(
                distribution.distribute_dataset(train_data, skip_batches=first_step, repeat=True),
                initial_epoch=first_step // steps_per_epoch,
                epochs=math.ceil(last_step / steps_per_epoch),
                steps_per_epoch=segment_steps_per_epoch,
                validation_data=validation_data,
                validation_steps=validation_steps,
                validation_freq=validation_freq,
                callbacks=[history_logger, backup_callback, *extra_callbacks],
                verbose=verbose if is_chief else 0,
                shuffle=False,
            )
            if backup_callback.non_finite_step is not None:
                _stop_on_non_finite_loss(model, state, backup_callback)
        history = history_logger.history
        plot_path = os.path.join(output_dir, HISTORY_PLOT)
        # A finished run that is run again trains nothing, so its logs stay as they are.
        if is_chief and (start_step < num_train_steps or not os.path.isfile(plot_path)):
            write_history(history, output_dir)
            plot_history(history, plot_path)
    return history


def _check_backup_every(backup_every):
    if backup_every is not None and (not isinstance(backup_every, int) or backup_every < 1):
        raise ValueError(
            f"Expected backup_every to be a positive integer. Received: backup_every={backup_every!r}"
        )


def _resume(model, state, output_dir, run_config, num_train_steps, is_chief):
    """Restores the latest backup of this run into `model`; returns its step (0: none)."""
    latest = state.latest()
    if latest is not None and latest.get("run_config") != run_config:
        raise ValueError(
            f"{output_dir} holds a training run with other settings "
            f"({_config_difference(latest.get('run_config'), run_config)}); "
            "choose another output directory or delete it to start over."
        )
    if model.optimizer is not None and not model.optimizer.built:
        # Built now so that every backup, the first included, holds the optimizer state.
        model.optimizer.build(model.trainable_variables)
    start_step = state.restore(model)
    if start_step == 0 and is_chief:
        # Step 0 is the last good state should the loss diverge before the first backup.
        state.save(model, 0, run_config)
    if start_step and is_chief:
        print(
            f"Resuming from the backup at step {start_step} of {num_train_steps} "
            f"in {state.directory}",
            flush=True,
        )
    return start_step


def _tensorboard_callbacks(output_dir, update_freq):
    if not _tensorboard_installed():
        print("No TensorBoard logs: pip install tensorboard to get them.", flush=True)
        return []
    log_dir = os.path.join(output_dir, LOGS_DIR)
    return [keras.callbacks.TensorBoard(log_dir=log_dir, update_freq=update_freq)]


def _check_accumulation_is_supported(model, distribution):
    optimizer = getattr(model, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    if (
        getattr(optimizer, "gradient_accumulation_steps", None)
        and distribution.tf_strategy is not None
        and distribution.num_replicas > 1
    ):
        # Keras 3 accumulates inside a tf.cond, where tf.distribute cannot sum gradients.
        raise ValueError(
            "Expected gradient_accumulation_steps=None under a multi-replica TensorFlow "
            f"strategy ({distribution.description}), where accumulation does not work; use a "
            "larger batch_size or the JAX backend. "
            f"Received: gradient_accumulation_steps={optimizer.gradient_accumulation_steps}"
        )


def _stop_on_non_finite_loss(model, state, backup_callback):
    good_step = state.restore(model)
    raise LossNotFiniteError(
        f"Training stopped at step {backup_callback.non_finite_step}: the loss became "
        f"{backup_callback.non_finite_loss}; the model is back at the last good backup "
        f"(step {good_step}, kept in {state.directory}). Lower the learning_rate or check "
        "the data, then run again."
    )


def _segments(start_step, num_train_steps, steps_per_epoch):
    """Splits [start_step, num_train_steps) into `model.fit()` calls of equal-length epochs.

    Yields (first_step, last_step, steps_per_epoch) triples: a partial first epoch when
    resuming mid-epoch, then the rest; a shorter last epoch ends early (BackupCallback
    stops at `last_step`), so an uninterrupted run is one `fit()` call.
    """
    step = start_step
    if step % steps_per_epoch and step < num_train_steps:
        end = min((step // steps_per_epoch + 1) * steps_per_epoch, num_train_steps)
        yield step, end, end - step
        step = end
    if step < num_train_steps:
        yield step, num_train_steps, steps_per_epoch


def _steps_per_epoch(train_data, steps_per_epoch):
    if steps_per_epoch is not None:
        if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise ValueError(
                f"Expected steps_per_epoch to be a positive integer. Received: {steps_per_epoch!r}"
            )
        return steps_per_epoch
    if _is_dataset(train_data):
        cardinality = int(train_data.cardinality())
        if cardinality > 0:
            return cardinality
    raise ValueError(
        "Expected steps_per_epoch for training data of unknown or infinite length."
    )


def _num_train_steps(epochs, steps_per_epoch, num_train_steps):
    if num_train_steps is None:
        if epochs is None:
            raise ValueError("Expected epochs or num_train_steps to say how long to train. Received: neither")
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"Expected epochs to be a positive integer. Received: epochs={epochs!r}")
        return epochs * steps_per_epoch
    if not isinstance(num_train_steps, int) or num_train_steps < 1:
        raise ValueError(
            f"Expected num_train_steps to be a positive integer. Received: num_train_steps={num_train_steps!r}"
        )
    return num_train_steps


def _config_difference(old, new):
    old, new = old or {}, new or {}
    keys = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
    return ", ".join(f"{key}: {old.get(key)!r} then, {new.get(key)!r} now" for key in keys)


def _tensorboard_installed():
    # TensorFlow no longer installs TensorBoard, and tf.summary needs it.
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _is_dataset(value):
    import tensorflow as tf

    return isinstance(value, tf.data.Dataset)
