"""Import and export of pretrained BERT checkpoints.

`from_huggingface`, `from_google` and `from_keras_hub` turn a checkpoint into a kbert model
directory (`read_*` return the converted model without writing); `to_huggingface`,
`to_google` and `to_keras_hub` write a kbert model directory out in another format. The
name mapping and every check live once, in `kbert.convert.mapping`.
"""

from kbert.convert.google import from_google, read_google, to_google
from kbert.convert.huggingface import from_huggingface, read_huggingface, to_huggingface
from kbert.convert.keras_hub import from_keras_hub, read_keras_hub, to_keras_hub
from kbert.convert.mapping import Conversion, ConversionError, load_pretrained_weights

__all__ = [
    "Conversion",
    "ConversionError",
    "from_google",
    "from_huggingface",
    "from_keras_hub",
    "load_pretrained_weights",
    "read_google",
    "read_huggingface",
    "read_keras_hub",
    "to_google",
    "to_huggingface",
    "to_keras_hub",
]
