"""The settings of a training run, as small objects that scripts, recipes and the CLI share.

Each field has the name of its CLI flag (`learning_rate` is `--learning-rate`) and of the
argument of `kbert.workflows.pretrain` / `finetune` that takes it, so a concept reads the
same from the command line to the model directory.

Example:
>>> optimizer = OptimizerConfig(learning_rate=1e-4, warmup_steps=100)
>>> run = RunConfig(output_dir="runs/mini", precision="mixed_bfloat16")
"""

import dataclasses


@dataclasses.dataclass
class OptimizerConfig:
    """How the weights are updated (see `kbert.training.make_optimizer`).

    Args:
        optimizer: one of `kbert.training.OPTIMIZERS`.
        learning_rate: the peak learning rate, after warmup.
        warmup_steps: linear warmup steps; `None` takes `warmup_ratio` of the run.
        warmup_ratio: share of the training steps spent in warmup, without `warmup_steps`.
        weight_decay: decoupled weight decay (not applied to LayerNorm and biases).
        gradient_accumulation_steps: batches whose gradients are summed before each update.
    """

    optimizer: str = "adamw"
    learning_rate: float = 5e-5
    warmup_steps: int = None
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    gradient_accumulation_steps: int = None

    def make(self, num_train_steps, precision=None):
        """The Keras optimizer for a run of `num_train_steps`."""
        from kbert import training

        warmup_steps = self.warmup_steps
        if warmup_steps is None:
            warmup_steps = int(self.warmup_ratio * num_train_steps)
        return training.make_optimizer(
            name=self.optimizer,
            learning_rate=self.learning_rate,
            num_train_steps=num_train_steps,
            warmup_steps=warmup_steps,
            weight_decay=self.weight_decay,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            precision=precision,
        )


@dataclasses.dataclass
class RunConfig:
    """Where and how a run trains.

    Args:
        output_dir: the model directory to write (a killed run found there resumes).
        precision: one of `kbert.training.PRECISIONS`.
        strategy: one of `kbert.distribution.STRATEGIES`.
        jit_compile: XLA: "auto", True or False.
        backup_every: also back up the training state every this many steps.
        seed: the random seed of weights, shuffling and masking.
        distribution_options: more arguments of `kbert.distribution.make_distribution`.
        verbose: Keras' progress bar setting.
    """

    output_dir: str
    precision: str = "float32"
    strategy: str = "auto"
    jit_compile: object = "auto"
    backup_every: int = None
    seed: int = 0
    distribution_options: dict = None
    verbose: object = "auto"


def fields(config_class):
    """The field names of a config class, for splitting keyword arguments among configs."""
    return tuple(field.name for field in dataclasses.fields(config_class))
