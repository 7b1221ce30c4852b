"""kbert: the whole BERT life cycle with Keras 3.

Build a BERT, pretrain it on your own text, fine-tune it and serve it with TensorFlow
Serving. Model code uses only `keras` and `keras.ops`, so it runs on the TensorFlow, JAX
and PyTorch backends.
"""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) buries kbert's own output; an
# explicit TF_CPP_MIN_LOG_LEVEL set by the user still wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kbert.backbone import BertBackbone
from kbert import convert, losses
from kbert.classifier import BertClassifier
from kbert.embedder import BertTextEmbedder
from kbert.export import export
from kbert.masked_lm import BertMaskedLM
from kbert.model_dir import load
from kbert.sizes import size_config
from kbert.token_classifier import BertTokenClassifier
from kbert.tokenizer import BertPreprocessor, BertTokenizer

__version__ = "0.1.0"

__all__ = [
    "BertBackbone",
    "BertClassifier",
    "BertMaskedLM",
    "BertPreprocessor",
    "BertTextEmbedder",
    "BertTokenClassifier",
    "BertTokenizer",
    "convert",
    "export",
    "load",
    "losses",
    "size_config",
]
