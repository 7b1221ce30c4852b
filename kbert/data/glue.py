"""The GLUE tasks: where each one's text and label sit in its original TSV files and in TFDS.

Label names and their order follow TFDS (`glue/<task>`), so a model fine-tuned on the TSV files and
one fine-tuned on the TFDS dataset agree on what each class id means. In the TSV files, labels are
either these names (RTE, QNLI, MNLI) or integer indexes into them (SST-2, CoLA, MRPC, QQP, WNLI).
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class GlueTask:
    """One GLUE task.

    Args:
        name: the task name, as in `glue/<name>`.
        text_columns: the one or two TSV columns holding text, by header name or 0-based index.
        label_column: the TSV column holding the label, by header name or 0-based index.
        header: whether the TSV files start with a header line.
        label_names: class names in id order; `None` for regression (STS-B).
        metric: the task's headline metric.
        metrics: every metric GLUE reports for the task, headline first.
        files: TSV file name of each split.
        tfds_text_features: the text features of the TFDS dataset `glue/<name>`.
    """

    name: str
    text_columns: tuple
    label_column: object
    header: bool
    label_names: tuple
    metric: str
    metrics: tuple
    files: dict
    tfds_text_features: tuple

    @property
    def num_classes(self):
        """Number of model outputs: 1 for regression."""
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def tfds_name(self):
        return f"glue/{self.name}"


_STANDARD_FILES = {"train": "train.tsv", "validation": "dev.tsv"}

GLUE_TASKS = {
    task.name: task
    for task in (
        GlueTask(
            name="sst2",
            text_columns=("sentence",),
            label_column="label",
            header=True,
            label_names=("negative", "positive"),
            metric="accuracy",
            metrics=("accuracy",),
            files=_STANDARD_FILES,
            tfds_text_features=("sentence",),
        ),
        GlueTask(
            name="cola",
            # source, label, original label, sentence; no header line
            text_columns=(3,),
            label_column=1,
            header=False,
            label_names=("unacceptable", "acceptable"),
            metric="matthews_correlation",
            metrics=("matthews_correlation",),
            files=_STANDARD_FILES,
            tfds_text_features=("sentence",),
        ),
        GlueTask(
            name="mrpc",
            text_columns=("#1 String", "#2 String"),
            label_column="Quality",
            header=True,
            label_names=("not_equivalent", "equivalent"),
            metric="f1",
            metrics=("f1", "accuracy"),
            files=_STANDARD_FILES,
            tfds_text_features=("sentence1", "sentence2"),
        ),
        GlueTask(
            name="rte",
            text_columns=("sentence1", "sentence2"),
            label_column="label",
            header=True,
            label_names=("entailment", "not_entailment"),
            metric="accuracy",
            metrics=("accuracy",),
            files=_STANDARD_FILES,
            tfds_text_features=("sentence1", "sentence2"),
        ),
        GlueTask(
            name="qnli",
            text_columns=("question", "sentence"),
            label_column="label",
            header=True,
            label_names=("entailment", "not_entailment"),
            metric="accuracy",
            metrics=("accuracy",),
            files=_STANDARD_FILES,
            tfds_text_features=("question", "sentence"),
        ),
        GlueTask(
            name="stsb",
            text_columns=("sentence1", "sentence2"),
            label_column="score",
            header=True,
            label_names=None,
            metric="pearson_spearman",
            metrics=("pearson_spearman", "pearson", "spearman"),
            files=_STANDARD_FILES,
            tfds_text_features=("sentence1", "sentence2"),
        ),
        GlueTask(
            name="qqp",
            text_columns=("question1", "question2"),
            label_column="is_duplicate",
            header=True,
            label_names=("not_duplicate", "duplicate"),
            metric="f1",
            metrics=("f1", "accuracy"),
            files=_STANDARD_FILES,
            tfds_text_features=("question1", "question2"),
        ),
        GlueTask(
            name="mnli",
            text_columns=("sentence1", "sentence2"),
            label_column="gold_label",
            header=True,
            label_names=("entailment", "neutral", "contradiction"),
            metric="accuracy",
            metrics=("accuracy",),
            files={
                "train": "train.tsv",
                "validation": "dev_matched.tsv",
                "validation_matched": "dev_matched.tsv",
                "validation_mismatched": "dev_mismatched.tsv",
            },
            tfds_text_features=("premise", "hypothesis"),
        ),
        GlueTask(
            name="wnli",
            text_columns=("sentence1", "sentence2"),
            label_column="label",
            header=True,
            label_names=("not_entailment", "entailment"),
            metric="accuracy",
            metrics=("accuracy",),
            files=_STANDARD_FILES,
            tfds_text_features=("sentence1", "sentence2"),
        ),
    )
}

# The directory names of the original GLUE download, for users who pass "SST-2" rather than "sst2".
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb"}


def glue_task(name):
    """The `GlueTask` called `name` ("sst2", "SST-2", "glue/sst2", ...)."""
    key = name.lower().removeprefix("glue/")
    key = _ALIASES.get(key, key)
    if key not in GLUE_TASKS:
        raise ValueError(
            f"Unknown GLUE task {name!r}; expected one of: {', '.join(GLUE_TASKS)}"
        )
    return GLUE_TASKS[key]
