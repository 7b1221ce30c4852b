"""The base class of kbert's model builders."""

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
