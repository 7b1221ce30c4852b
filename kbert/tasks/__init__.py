"""Tasks: everything that one kind of model does differently from the others.

A task owns the head it builds, how examples become its inputs and targets, its loss and
metrics, its export endpoints and how its predictions read. The code that serves every task
(`kbert.workflows`, `kbert.signatures`, `kbert predict`, `kbert evaluate`) looks the task up
here and never branches on model classes. Adding a task is one module in this package plus
its tests; see docs/adding_a_task.md.

Example:
>>> task = tasks.for_model(classifier)  # doctest: +SKIP
>>> classifier.compile(**task.compile_arguments(classifier))  # doctest: +SKIP
"""

import collections

# What fine-tuning needs from a task (see `Task.prepare_finetuning`).
Finetuning = collections.namedtuple(
    "Finetuning", ["train_data", "validation_data", "steps_per_epoch", "settings"]
)


class Task:
    """The base class of kbert's tasks.

    A task is built from the "task" entry of a model directory's `config.json` (its
    `settings`), so that what a model was trained for travels with it.

    Args:
        settings: the task's saved settings (a dict), or `None` for defaults.
    """

    # The registry key, written as the "name" of the task's settings.
    name = None
    # The class name of the Keras model the task builds (`config.json`'s model class_name).
    model_class_name = None
    # Peak learning rate of the optimizer `compile_arguments` makes for "auto".
    learning_rate = 5e-5
    # More names that select the task (each saved as the settings' "name"), e.g. datasets
    # whose format and labels the task knows.
    aliases = ()
    # The serving endpoints whose outputs include the padded positions of a batch, which
    # therefore run the backbone on them (see `kbert.backbone.on_real_tokens_only`).
    padded_position_endpoints = ()

    def __init__(self, settings=None):
        self.settings = dict(settings or {})

    # === Model ===

    def build_model(self, backbone, dropout=0.1):
        """The task's Keras model on top of `backbone`, as `self.settings` describe it."""
        raise NotImplementedError

    def prepare_finetuning(self, init, data, tokenizer, seed=0):
        """What fine-tuning the backbone of `init` on `data` needs.

        Args:
            init: the model directory fine-tuning starts from.
            data: a `kbert.config.DataConfig`.
            tokenizer: the `kbert.tokenizer.BertTokenizer` of `init`.
            seed: the seed of shuffling.

        Returns:
            A `Finetuning`: `train_data` and `validation_data` (functions of an
            `input_context` returning batches; `validation_data` may be `None`), the
            `steps_per_epoch` of one pass over the training data, and the `settings` to save
            as the model directory's "task" entry, from which `build_model` builds the head.
        """
        raise NotImplementedError

    # === Loss and metrics ===

    def compile_defaults(self, model):
        """The task's `model.compile` arguments: `loss` and its metrics."""
        raise NotImplementedError

    def compile_arguments(self, model, optimizer="auto", **given):
        """`model.compile` arguments: `given` ones, the task's choices where they are "auto"."""
        import keras

        arguments = self.compile_defaults(model)
        for key, value in given.items():
            if not (isinstance(value, str) and value == "auto"):
                arguments[key] = value
        if isinstance(optimizer, str) and optimizer == "auto":
            optimizer = keras.optimizers.AdamW(learning_rate=self.learning_rate, weight_decay=0.01)
        return dict(arguments, optimizer=optimizer)

    def compile(self, model, optimizer=None, jit_compile="auto"):
        """Compiles `model` with the task's loss and metrics (and AdamW without `optimizer`)."""
        model.compile(
            optimizer=optimizer or "auto", jit_compile=jit_compile, **self.compile_defaults(model)
        )

    # === Evaluation ===

    def evaluate(self, model, dataset, compile=True):
        """Scores `model` on `dataset` (compiled for it first, unless `compile=False`)."""
        from kbert.workflows import without_misleading_warnings

        if compile:
            self.compile(model)
        with without_misleading_warnings():
            return model.evaluate(dataset, return_dict=True, verbose=0)

    # === Serving ===

    def reads_text_pair(self):
        """Whether the model reads a pair of texts."""
        return False

    def serving_endpoints(self, model, preprocessor, top_k=5, text_pair=None):
        """`{signature name: (function, input names, method name)}` for `build_serving_module`."""
        raise NotImplementedError

    def predict(self, model, preprocessor, inputs, **options):
        """Runs the `serving_default` endpoint eagerly on `inputs` (input name -> strings).

        The Keras model answers with the very function that the SavedModel serves, so the
        two cannot drift apart.
        """
        import tensorflow as tf

        from kbert.signatures import SERVING_DEFAULT

        endpoints = self.serving_endpoints(model, preprocessor, **options)
        function, input_names, _ = endpoints[SERVING_DEFAULT]
        outputs = function(*(tf.constant(inputs[name], tf.string) for name in input_names))
        return {name: value.numpy() for name, value in outputs.items()}

    def rows(self, outputs, batch_size):
        """Splits batched JSON-ready outputs into one dict per input, as `kbert predict` prints."""
        return [
            {name: value[index] for name, value in sorted(outputs.items())}
            for index in range(batch_size)
        ]


def _registry():
    from kbert.tasks.classification import ClassificationTask
    from kbert.tasks.embedding import EmbeddingTask
    from kbert.tasks.masked_lm import MaskedLMTask
    from kbert.tasks.token_classification import TokenClassificationTask

    return {
        task.name: task
        for task in (ClassificationTask, MaskedLMTask, TokenClassificationTask, EmbeddingTask)
    }


def names():
    """The names of the registered tasks."""
    return tuple(_registry())


def get(name, settings=None):
    """The task called `name` (or one of its aliases, e.g. a GLUE task), with `settings`."""
    registry = _registry()
    if name in registry:
        return registry[name](settings)
    for task in registry.values():
        if name in task.aliases:
            return task(dict(settings or {}, name=name))
    aliases = ", ".join(alias for task in registry.values() for alias in task.aliases)
    raise ValueError(
        f"Expected task to be one of {', '.join(registry)} or {aliases}. Received: task={name!r}"
    )


def for_model(model, settings=None, purpose="use"):
    """The task of a Keras model, by its class; `purpose` words the error for other models."""
    return _for_class_name(type(model).__name__, settings, purpose)


def from_config(config, purpose="use"):
    """The task of a model directory, from its parsed `config.json`.

    The saved task name decides; directories that saved none (converted checkpoints, older
    runs) are read by their model class.
    """
    settings = config.get("task") or {}
    name = settings.get("name")
    if name is not None:
        return get(name, settings)
    return _for_class_name(config["model"]["class_name"], settings, purpose)


def _for_class_name(class_name, settings, purpose):
    registry = _registry().values()
    for task in registry:
        if task.model_class_name == class_name:
            return task(settings)
    *others, last = [task.model_class_name for task in registry]
    expected = f"{', '.join(others)} or {last}" if others else last
    raise ValueError(f"Expected a {expected} to {purpose}. Received: a {class_name}")
