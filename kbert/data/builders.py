"""kbert's TensorFlow Datasets builders for local files.

Local text enters kbert the way every other dataset does, through TFDS: each builder reads the
files once, checks them, and writes a TFDS dataset into `data_dir`; later runs find it there and
read nothing else. A configuration is named after the files' paths and contents and the reading
options, so an edited file or a different column choice prepares a new dataset rather than
reusing a stale one.

- `TextCorpus`: plain-text corpora for pretraining, one example per document.
- `DelimitedFile`: TSV/CSV classification files, one example per row.

Bad input stops preparation with a one-line error naming the file and line.
"""

import abc
import csv
import dataclasses
import hashlib
import json
import logging
import os
import re

import numpy as np
import tensorflow_datasets as tfds

logger = logging.getLogger("kbert")

VERSION = tfds.core.Version("1.0.0")
RELEASE_NOTES = {"1.0.0": "First release."}

# WikiText-style headings ("= Title =", "= = Section = =") start a new document; the title text
# itself is kept as the document's first line.
_HEADING = re.compile(r"^\s*=(?:\s*=)*\s+(.*?)\s+=(?:\s*=)*\s*$")


# === Reading files ===


def _file_signature(path):
    """The file's path and a digest of its bytes.

    Size and modification time can stay the same across an edit (a restored mtime, a copy that
    keeps it), so the contents decide. BLAKE2b hashes far faster than the file can be parsed
    and written out as TFRecords, which every new preparation does anyway.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"File not found: {path}")
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return [os.path.abspath(path), digest.hexdigest()]


def _config_name(prefix, files, options):
    """A readable, deterministic name: the first file's stem and a digest of everything read."""
    signature = {
        "files": {split: [_file_signature(path) for path in paths] for split, paths in files.items()},
        "options": options,
    }
    digest = hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:16]
    first_path = next(iter(files.values()))[0]
    stem = re.sub(r"[^a-z0-9]+", "_", os.path.splitext(os.path.basename(first_path))[0].lower())
    return f"{prefix}_{stem.strip('_') or 'file'}_{digest}"


def read_lines(path):
    """Yields `(line_number, text)` for each line of a UTF-8 file, without the line break.

    Lines end at `\\n`, `\\r\\n` or a lone `\\r`, as in Python's universal newlines and the csv
    module, so a file whose line endings were mixed by editors on different systems reads as
    its editors show it.

    Raises:
        FileNotFoundError: naming the file.
        ValueError: naming the file and line, for an empty file or bytes that are not UTF-8.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"File not found: {path}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}, line 1: the file is empty")
    line_number = 0
    with open(path, "rb") as file:
        # Read as bytes, not in text mode, so that bytes that are not UTF-8 are found with
        # their line and column.
        for raw_line in file:
            for raw_piece in raw_line.removesuffix(b"\n").removesuffix(b"\r").split(b"\r"):
                line_number += 1
                try:
                    line = raw_piece.decode("utf-8")
                except UnicodeDecodeError as error:
                    column = len(raw_piece[: error.start].decode("utf-8", errors="replace")) + 1
                    raise ValueError(
                        f"{path}, line {line_number}: bytes that are not UTF-8 "
                        f"(0x{raw_piece[error.start]:02x} at column {column})"
                    ) from None
                if line_number == 1:
                    line = line.removeprefix("\ufeff")
                yield line_number, line


def read_documents(path):
    """Yields `(line_number, document)` from a text file, `line_number` being its first line.

    Blank lines and `= Title =` lines separate documents; lines of a document are joined by
    newlines, and a heading's title becomes the first line of the document it starts.
    """
    lines, first_line = [], None
    # A heading waits for its section's text, across the blank lines that usually follow it.
    heading_only = False
    num_documents = 0
    for line_number, line in read_lines(path):
        heading = _HEADING.match(line)
        if not heading and not line.strip():
            if lines and not heading_only:
                yield first_line, "\n".join(lines)
                num_documents += 1
                lines, first_line = [], None
            continue
        if heading:
            if lines and not heading_only:
                yield first_line, "\n".join(lines)
                num_documents += 1
                lines, first_line = [], None
            line = heading.group(1)
        heading_only = bool(heading) and (heading_only or not lines)
        if first_line is None:
            first_line = line_number
        lines.append(line.strip())
    if lines:
        yield first_line, "\n".join(lines)
        num_documents += 1
    if num_documents == 0:
        raise ValueError(f"{path}, line 1: the file is empty (it has only blank lines)")


def delimiter_for(path, delimiter=None):
    """The field delimiter: given, or from the extension (.tsv: tab, .csv: comma)."""
    if delimiter is not None:
        return delimiter
    extension = os.path.splitext(path)[1].lower()
    if extension == ".tsv":
        return "\t"
    if extension == ".csv":
        return ","
    raise ValueError(
        f"{path}: cannot tell the delimiter from the extension {extension!r}; pass delimiter "
        "(e.g. '\\t' or ',')"
    )


def read_rows(path, delimiter):
    """Yields `(line_number, fields)` for each row of a delimited file; blank lines give `[]`.

    Tab-separated files are read without quoting, as GLUE's and the original BERT's readers do
    (their sentences contain bare quotes); other delimiters use standard CSV quoting.

    A row is one line: a quoted field must end on the line it starts on. A quote that is never
    closed on its line is refused rather than read on into the next lines, because a line break
    inside quotes cannot be told from an unbalanced quote that would merge the rows after it
    into one text (and make its label a new class).

    Raises:
        ValueError: naming the file and line, for an unbalanced quote or text after a closing
            quote.
    """
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    # The line being read, and whether csv has asked for a line within the current row.
    state = {"line_number": 0, "in_row": False}

    def unbalanced_quote():
        return ValueError(
            f"{path}, line {state['line_number']}: unbalanced quote: a quoted field does not end "
            "on its line (a row is one line, so quotes cannot hold a line break)"
        )

    def lines():
        for line_number, line in read_lines(path):
            # csv asks for another line within a row only while a quoted field is open.
            if state["in_row"]:
                raise unbalanced_quote()
            state["line_number"], state["in_row"] = line_number, True
            yield line

    reader = csv.reader(lines(), delimiter=delimiter, quoting=quoting, strict=True)
    while True:
        state["in_row"] = False
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            if str(error) == "unexpected end of data":
                raise unbalanced_quote() from None
            raise ValueError(f"{path}, line {state['line_number']}: {error}") from None
        yield state["line_number"], fields


def read_header(path, delimiter):
    for _, fields in read_rows(path, delimiter):
        return fields
    return []


def column_index(column, header, path, delimiter):
    """The 0-based index of a column given by index or by header name."""
    if isinstance(column, int):
        return column
    if header is None:
        raise ValueError(
            f"{path}: column {column!r} is given by name but the file is read without a header; "
            "pass header=True or give columns by 0-based index"
        )
    if column not in header:
        separator = "tab" if delimiter == "\t" else repr(delimiter)
        raise ValueError(
            f"{path}, line 1: no column named {column!r} in the header "
            f"({separator}-separated columns: {', '.join(map(repr, header))})"
        )
    indexes = [index for index, name in enumerate(header) if name == column]
    if len(indexes) > 1:
        raise ValueError(
            f"{path}, line 1: the header names {len(indexes)} columns {column!r} (0-based "
            f"indexes {', '.join(map(str, indexes))}); rename them or give the column by index"
        )
    return indexes[0]


class LabelParser:
    """Turns a label field into a class id (or a float for regression), with a clear error.

    A label is one of `label_names`, or an integer index into them when no label name is an
    integer: where the names are integers ("0", "1", "3"), "2" is an unknown label, not the
    third class.
    """

    def __init__(self, label_names=None, regression=False):
        self.label_names = tuple(label_names) if label_names is not None else None
        self.regression = regression
        self._ids = {name: index for index, name in enumerate(self.label_names or ())}
        self._indexes_allowed = not any(_is_integer(name) for name in self.label_names or ())

    def __call__(self, value, where):
        value = value.strip()
        if not value:
            raise ValueError(f"{where}: missing label")
        if self.regression:
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"{where}: label {value!r} is not a number") from None
        if value in self._ids:
            return self._ids[value]
        # Integer labels index the label names (GLUE's "0"/"1" for negative/positive).
        if self._indexes_allowed and _is_integer(value) and 0 <= int(value) < len(self.label_names):
            return int(value)
        raise ValueError(
            f"{where}: unknown label {value!r}; expected one of: {', '.join(self.label_names)}"
            + (
                f" or an index 0-{len(self.label_names) - 1}"
                if self.label_names and self._indexes_allowed
                else ""
            )
        )


def _is_integer(text):
    return re.fullmatch(r"-?\d+", str(text).strip()) is not None


# === Text corpus ===


class TextCorpusConfig(tfds.core.BuilderConfig):
    """Which text files make up each split."""

    def __init__(self, *, files, **kwargs):
        super().__init__(**kwargs)
        self.files = files


def text_corpus_config(files):
    """A `TextCorpusConfig` for `files`: a path, a list of paths, or a dict split -> path(s)."""
    files = _normalise_files(files)
    return TextCorpusConfig(
        name=_config_name("text", files, {}),
        version=VERSION,
        release_notes=RELEASE_NOTES,
        description="Documents from: " + ", ".join(p for paths in files.values() for p in paths),
        files=files,
    )


class LocalFilesBuilder(tfds.core.GeneratorBasedBuilder):
    """The base of the builders of local files: one example per record, in file order.

    A subclass defines `_info` and `records(path)`, the feature dicts of one file; its
    config's `files` maps each split to its paths.
    """

    VERSION = VERSION
    RELEASE_NOTES = RELEASE_NOTES
    # TFDS looks for a builder's source files through the `importlib_resources` backport, which
    # tensorflow-datasets 4.9 declares only for Python < 3.9; these builders have no files beside
    # their code to find.
    code_path = None

    @abc.abstractmethod
    def records(self, path):
        """The examples (feature dicts) of the file at `path`, in order."""

    def _split_generators(self, dl_manager):
        del dl_manager  # local files only
        return {split: self._generate_examples(paths) for split, paths in self.builder_config.files.items()}

    def _generate_examples(self, paths):
        index = 0
        for path in paths:
            for record in self.records(path):
                yield index, record
                index += 1


class TextCorpus(LocalFilesBuilder):
    """Plain-text files as a TFDS dataset of documents (feature `text`).

    Example:
    >>> builder = TextCorpus(config=text_corpus_config("corpus.txt"), data_dir="tfds")  # doctest: +SKIP
    >>> builder.download_and_prepare()  # doctest: +SKIP
    >>> builder.as_dataset(split="train")  # doctest: +SKIP
    """

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
            # Documents keep their file order, so a packed stream follows the text.
            disable_shuffling=True,
        )

    def records(self, path):
        for _, document in read_documents(path):
            yield {"text": document}


# === Delimited classification files ===


@dataclasses.dataclass(frozen=True)
class DelimitedFileOptions:
    """How to read a delimited file.

    Args:
        text_columns: one or two columns, by header name or 0-based index.
        label_column: the label column, by header name or 0-based index.
        header: whether the first line names the columns.
        delimiter: the field delimiter.
        label_names: class names in id order; labels in the file are names or indexes into them.
        regression: labels are numbers (one output), not classes.
        skip_bad_rows: skip rows with too few columns or a missing or unknown label, and report
            how many, instead of stopping at the first.
    """

    text_columns: tuple
    label_column: object
    header: bool
    delimiter: str
    label_names: tuple = None
    regression: bool = False
    skip_bad_rows: bool = False


class LocalFilesConfig(tfds.core.BuilderConfig):
    """Which local files make up each split (`files`), and how they are read (`options`)."""

    def __init__(self, *, files, options, **kwargs):
        super().__init__(**kwargs)
        self.files = files
        self.options = options


def delimited_file_config(files, options):
    """A `LocalFilesConfig` of a delimited file: `files` (a path, list, or dict split -> path(s))."""
    files = _normalise_files(files)
    return LocalFilesConfig(
        name=_config_name("delimited", files, dataclasses.asdict(options)),
        version=VERSION,
        release_notes=RELEASE_NOTES,
        description="Rows from: " + ", ".join(p for paths in files.values() for p in paths),
        files=files,
        options=options,
    )


def read_examples(path, options):
    """Yields `(line_number, example)` for each data row of a delimited file.

    Returns (as the generator's value) the list of `(line_number, reason)` of skipped rows.
    """
    header = None
    rows = read_rows(path, options.delimiter)
    if options.header:
        for _, header in rows:
            break
    text_indexes = [column_index(c, header, path, options.delimiter) for c in options.text_columns]
    label_index = column_index(options.label_column, header, path, options.delimiter)
    num_columns = max(text_indexes + [label_index]) + 1
    parse_label = LabelParser(options.label_names, options.regression)
    separator = "tabs" if options.delimiter == "\t" else repr(options.delimiter)
    skipped = []
    num_rows = 0
    for line_number, fields in rows:
        where = f"{path}, line {line_number}"
        try:
            if not fields:
                raise ValueError(f"{where}: blank line")
            if len(fields) < num_columns:
                raise ValueError(
                    f"{where}: expected at least {num_columns} columns separated by {separator}, "
                    f"found {len(fields)}"
                )
            example = {"label": parse_label(fields[label_index], where)}
        except ValueError as error:
            # A blank line carries no data, so it is skipped (and counted) even without
            # skip_bad_rows.
            if fields and not options.skip_bad_rows:
                raise
            skipped.append((line_number, str(error)))
            continue
        example["text"] = fields[text_indexes[0]]
        if len(text_indexes) > 1:
            example["text_pair"] = fields[text_indexes[1]]
        num_rows += 1
        yield line_number, example
    if num_rows == 0:
        raise ValueError(f"{path}, line 1: the file has no data rows")
    return skipped


class DelimitedFile(tfds.core.GeneratorBasedBuilder):
    """A TSV/CSV classification file as a TFDS dataset (features `text`, `text_pair`, `label`).

    Rows keep their file order. Skipped rows are counted in `info.metadata["skipped_rows"]`.
    """

    VERSION = VERSION
    RELEASE_NOTES = RELEASE_NOTES
    # TFDS looks for a builder's source files through the `importlib_resources` backport, which
    # tensorflow-datasets 4.9 declares only for Python < 3.9; these builders have no files beside
    # their code to find.
    code_path = None

    def _info(self):
        options = self.builder_config.options
        features = {"text": tfds.features.Text()}
        if len(options.text_columns) > 1:
            features["text_pair"] = tfds.features.Text()
        if options.regression:
            features["label"] = tfds.features.Scalar(dtype=np.float32)
        else:
            features["label"] = tfds.features.ClassLabel(names=list(options.label_names))
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # local files only
        self.info.metadata["skipped_rows"] = {}
        return {split: self._generate_examples(split, paths) for split, paths in self.builder_config.files.items()}

    def _generate_examples(self, split, paths):
        index = 0
        skipped = []
        for path in paths:
            examples = read_examples(path, self.builder_config.options)
            while True:
                try:
                    _, example = next(examples)
                except StopIteration as stop:
                    skipped.extend((f"{path}, line {line}", reason) for line, reason in stop.value)
                    break
                yield index, example
                index += 1
        if skipped:
            logger.warning(
                "%s: skipped %d rows (first: %s)",
                ", ".join(paths),
                len(skipped),
                skipped[0][1],
            )
        self.info.metadata["skipped_rows"][split] = {
            "count": len(skipped),
            "first": skipped[0][1] if skipped else None,
        }


def _normalise_files(files):
    if isinstance(files, (str, os.PathLike)):
        files = {"train": [files]}
    elif isinstance(files, (list, tuple)):
        files = {"train": list(files)}
    normalised = {}
    for split, paths in files.items():
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not paths:
            raise ValueError(f"No files given for split {split!r}")
        normalised[split] = [os.path.expanduser(os.fspath(path)) for path in paths]
        for path in normalised[split]:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"File not found: {path}")
    return normalised
