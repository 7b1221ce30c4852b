"""The base classes of kbert's model builders."""

import keras


class FunctionalModel(keras.Model):
    """A Keras functional model whose builder creates its layers before `__init__`.

    The builders create their layers, wire the functional graph, and only then call
    `keras.Model.__init__` with the inputs and outputs. Under the PyTorch backend a Keras
    model is a `torch.nn.Module`, which refuses attribute assignment before its own
    `__init__`; all state lives in the functional graph, so those early assignments can
    bypass the module's bookkeeping (the same approach as keras-hub's `Backbone`).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._initialized = True
        if keras.config.backend() == "torch":
            # Keras listed the module's torch parameters while assignments still bypassed
            # torch.nn.Module, so it had none: zero_grad() cleared nothing and gradients
            # added up across training steps.
            self._track_variables()

    def __setattr__(self, name, value):
        if keras.config.backend() == "torch" and not hasattr(self, "_initialized"):
            return object.__setattr__(self, name, value)
        return super().__setattr__(name, value)


class TaskModel(FunctionalModel):
    """A `BertBackbone` under a task's head (as keras-hub's `Task`): the base of the heads.

    Its config holds the backbone, serialized, next to the head's own settings
    (`head_config`), so a saved model rebuilds whole from one config.
    """

    def compile(self, optimizer="auto", loss="auto", metrics="auto", weighted_metrics="auto", **kwargs):
        """Compiles with the choices of the model's task (`kbert.tasks`) where an argument is "auto".

        The task decides the loss and metrics once (e.g. cross-entropy on logits with
        accuracy for a classifier, masked-LM loss and accuracy as weighted metrics for a
        masked LM) and the optimizer: AdamW at the task's learning rate, weight decay 0.01.
        """
        from kbert import tasks

        task = tasks.for_model(self)
        arguments = task.compile_arguments(
            self, optimizer=optimizer, loss=loss, metrics=metrics, weighted_metrics=weighted_metrics
        )
        super().compile(**arguments, **kwargs)

    def head_config(self):
        """The head's constructor arguments, other than the backbone."""
        return {}

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            **self.head_config(),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
