"""Data for kbert: sources through TensorFlow Datasets, the GLUE task table, and the pretraining
and classification `tf.data` pipelines.

kbert's own TFDS builders for local files live in `kbert.data.builders` (imported on use, since
importing TFDS takes seconds).
"""

from kbert.data.classification import classification_dataset, default_bucket_boundaries
from kbert.data.glue import GLUE_TASKS, GlueTask, glue_task
from kbert.data.pretraining import MaskGenerator, default_num_predictions, pretraining_dataset
from kbert.data.sources import LabeledTexts, load_documents, load_labeled_texts

__all__ = [
    "GLUE_TASKS",
    "GlueTask",
    "LabeledTexts",
    "MaskGenerator",
    "classification_dataset",
    "default_bucket_boundaries",
    "default_num_predictions",
    "glue_task",
    "load_documents",
    "load_labeled_texts",
    "pretraining_dataset",
]
