"""Text pairs for sentence embeddings: similarity-scored pairs and (anchor, positive) pairs.

Three layouts are read:

    STS benchmark (sts-train.csv, ...)  tab-separated, no header:
                                        genre, file, year, id, score, sentence1, sentence2[, ...]
    GLUE STS-B (train.tsv, dev.tsv)     tab-separated, a header naming sentence1, sentence2, score
    generic columns                     any delimited file; `text_columns` names the two texts and
                                        `label_column` the score (none: (anchor, positive) pairs)

Scores must lie in `score_range` (0 to 5 for the STS formats) and are scaled to 0..1, as
sentence-transformers' STS examples scale them. A row with a missing text or score, or a
score outside the range, is an error naming the file and line: nothing is dropped.
"""

import collections
import csv
import os

# The STS benchmark's columns (its readme), and the range of its gold scores.
STS_BENCHMARK_SCORE_COLUMN = 4
STS_BENCHMARK_TEXT_COLUMNS = (5, 6)
STS_SCORE_RANGE = (0.0, 5.0)
# Header names of the score column, in order of preference.
SCORE_COLUMN_NAMES = ("score", "similarity", "label")

TextPairs = collections.namedtuple("TextPairs", ["texts", "text_pairs", "scores", "path"])
TextPairs.__doc__ = """Pairs read from `path`: `texts`, `text_pairs` and `scores` (0..1), or
`scores=None` for (anchor, positive) pairs."""


def read_text_pairs(path, text_columns=None, label_column=None, header=None, delimiter=None,
                    score_range=None, scored=None):
    """Reads the pairs of one file (see the module docstring for the layouts).

    Args:
        path: a `.csv`, `.tsv` or `.txt` file.
        text_columns: the two text columns, header names or 0-based indices (default: the
            layout's, else `sentence1`/`sentence2` of a header, else the first two columns).
        label_column: the score column, a header name or 0-based index (default: the layout's,
            else a header's `score`/`similarity`/`label`).
        header: whether the first line names the columns (default: detected).
        delimiter: the field delimiter (default: tab, except comma for a `.csv` whose first
            line has no tab).
        score_range: `(lowest, highest)` score the file may hold (default: 0 to 5).
        scored: `True` for scored pairs, `False` for (anchor, positive) pairs, `None` to tell
            from the file (a score column found or named).

    Returns:
        A `TextPairs`.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Pair file not found: {path}")
    with open(path, encoding="utf-8", newline="") as file:
        first_line = file.readline().rstrip("\r\n")
    if not first_line:
        raise ValueError(f"{path}, line 1: expected a pair of texts, found an empty line")
    if delimiter is None:
        delimiter = "," if path.endswith(".csv") and "\t" not in first_line else "\t"
    first_fields = first_line.split(delimiter)
    layout = _layout(first_fields, text_columns, label_column, header, scored)
    rows = _read_rows(path, delimiter)
    if layout["header"]:
        names = next(rows)[1]
        layout = _columns_by_name(path, names, layout, scored)
    if scored and layout["label_column"] is None:
        raise ValueError(
            f"{path}, line 1: expected scored pairs, found no score column (name one with "
            f"label_column)"
        )
    score_range = tuple(score_range) if score_range is not None else STS_SCORE_RANGE
    return _pairs(path, rows, layout, score_range)


def _layout(first_fields, text_columns, label_column, header, scored):
    """Which columns hold the texts and the score, before a header is read."""
    is_sts_benchmark = (
        text_columns is None and label_column is None and header is not True
        and len(first_fields) >= 7 and _is_number(first_fields[STS_BENCHMARK_SCORE_COLUMN])
    )
    if is_sts_benchmark:
        return dict(header=False, text_columns=STS_BENCHMARK_TEXT_COLUMNS,
                    label_column=None if scored is False else STS_BENCHMARK_SCORE_COLUMN)
    if header is None:
        # A first line that names columns holds no number where a score would be.
        header = not any(_is_number(field) for field in first_fields) and any(
            field.strip().lower() in ("sentence1", "text", "query", "anchor") + SCORE_COLUMN_NAMES
            for field in first_fields
        )
    if label_column is None and not header and scored is not False and len(first_fields) >= 3:
        label_column = 2
    return dict(header=header, text_columns=tuple(text_columns) if text_columns else (0, 1),
                label_column=label_column, named=bool(text_columns), scored=scored)


def _columns_by_name(path, names, layout, scored):
    """The layout with header names turned into indices."""
    lowered = [name.strip().lower() for name in names]

    def index(column, what):
        if isinstance(column, int):
            return column
        if column.lower() not in lowered:
            raise ValueError(f"{path}, line 1: no {what} column {column!r} among {names}")
        return lowered.index(column.lower())

    text_columns = layout["text_columns"]
    if not layout.get("named") and "sentence1" in lowered and "sentence2" in lowered:
        text_columns = ("sentence1", "sentence2")
    label_column = layout["label_column"]
    if label_column is None and scored is not False:
        label_column = next((name for name in SCORE_COLUMN_NAMES if name in lowered), None)
        if label_column is None and scored:
            raise ValueError(f"{path}, line 1: no score column ({', '.join(SCORE_COLUMN_NAMES)})")
    return dict(
        header=True,
        text_columns=tuple(index(column, "text") for column in text_columns),
        label_column=None if label_column is None else index(label_column, "score"),
    )


def _read_rows(path, delimiter):
    """`(line number, fields)` of every row; in tab-separated files quotes are text."""
    # The STS files hold unbalanced quotes inside sentences, one row per line; comma-separated
    # files need quotes around texts with commas.
    # csv's field size limit is left as it is: it is the whole process's, and the readers of
    # classification files refuse a field beyond it, naming the file and line.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with open(path, encoding="utf-8", newline="") as file:
        reader = csv.reader(file, delimiter=delimiter, quoting=quoting)
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                raise ValueError(f"{path}, line {reader.line_num}: {error}") from None
            yield reader.line_num, fields


def _pairs(path, rows, layout, score_range):
    lowest, highest = score_range
    if not highest > lowest:
        raise ValueError(
            f"Expected score_range to be (lowest, highest) with highest > lowest. "
            f"Received: score_range={score_range!r}"
        )
    first, second = layout["text_columns"]
    label_column = layout["label_column"]
    texts, text_pairs, scores = [], [], []
    for line, fields in rows:
        if not fields or fields == [""]:
            raise ValueError(f"{path}, line {line}: expected a pair of texts, found an empty line")
        needed = max(first, second, -1 if label_column is None else label_column)
        if len(fields) <= needed:
            what = "a score" if label_column is not None and len(fields) <= label_column else "a text"
            raise ValueError(
                f"{path}, line {line}: expected {what} in column {needed} (0-based), found only "
                f"{len(fields)} fields"
            )
        if not fields[first].strip() or not fields[second].strip():
            raise ValueError(f"{path}, line {line}: expected two texts, found an empty one")
        texts.append(fields[first])
        text_pairs.append(fields[second])
        if label_column is not None:
            scores.append(_score(path, line, fields[label_column], lowest, highest))
    if not texts:
        raise ValueError(f"{path} holds no pairs")
    return TextPairs(texts, text_pairs, scores if label_column is not None else None, path)


def _score(path, line, field, lowest, highest):
    if not field.strip():
        raise ValueError(f"{path}, line {line}: expected a score, found an empty field")
    if not _is_number(field):
        raise ValueError(f"{path}, line {line}: expected a score, found {field!r}")
    value = float(field)
    if not lowest <= value <= highest:
        raise ValueError(
            f"{path}, line {line}: score {value:g} lies outside the declared range "
            f"{lowest:g} to {highest:g}"
        )
    return (value - lowest) / (highest - lowest)


def _is_number(field):
    try:
        value = float(field)
    except ValueError:
        return False
    return value == value and abs(value) != float("inf")
