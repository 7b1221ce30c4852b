"""Generated data files: every row is read exactly, or reading stops at the file and line at fault.

Seeded TSV, CSV and text files hold what real files hold: quotes, delimiters and control
characters inside texts, mixed line endings (\\n, \\r\\n, \\r), a byte order mark, blank lines and
huge lines. Some are then damaged (an unbalanced quote, a stray delimiter, a field longer than
the csv module reads). A clean file must come back row for row; a damaged one may only stop with
a one-line `ValueError` naming the file and the damaged line.
"""

import csv
import io
import random
import re

import pytest

from kbert.data import builders, load_labeled_texts

LABEL_NAMES = ("negative", "positive")
LINE_ENDINGS = ("\n", "\r\n", "\r")
# Characters a text may hold anywhere: quotes, both delimiters, control characters other than
# line breaks, separators Python's str.splitlines would break at, and a byte order mark.
CHARACTERS = (
    list("abcdefghij ABC 0123456789.,;'!?-") + ['"', '"', ",", "\t", "\x00", "\x01", "\x0b", "\x0c", "\x1c", "\x1f"]
    + ["\x7f", "\x85", "\u2028", "\u2029", "\ufeff", "é", "ß", "中", "😀"]
)
CSV_FIELD_LIMIT = 131072


def _random_text(rng, delimiter):
    if rng.random() < 0.03:
        length = rng.randint(50_000, 100_000)  # a huge line, still within what csv reads
    else:
        length = rng.randint(0, 40)
    text = "".join(rng.choice(CHARACTERS) for _ in range(length))
    # Tab-separated files have no quoting, so their texts cannot hold a tab.
    return text.replace("\t", " ") if delimiter == "\t" else text


def _blank_line(rng, previous, prefix=""):
    # A lone "\n" after a line that ends in "\r" would make one "\r\n" of the two.
    endings = LINE_ENDINGS[1:] if not prefix and previous.endswith("\r") else LINE_ENDINGS
    return prefix + rng.choice(endings)


def _format_row(fields, delimiter):
    if delimiter == "\t":
        return "\t".join(fields)
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter, lineterminator="").writerow(fields)
    return buffer.getvalue()


def _delimited_file(rng, delimiter, num_text_columns):
    """`(lines, rows)`: the file's lines (each with its line ending) and the rows they hold."""
    lines, rows = [], []
    if rng.random() < 0.3:
        lines.append("\ufeff")  # a byte order mark, joined to the header below
    header = ["text", "text_pair"][:num_text_columns] + ["label"]
    lines.append(_format_row(header, delimiter) + rng.choice(LINE_ENDINGS))
    if lines[0] == "\ufeff":
        lines[:2] = [lines[0] + lines[1]]
    for _ in range(rng.randint(1, 30)):
        if rng.random() < 0.1:
            lines.append(_blank_line(rng, lines[-1]))
        texts = [_random_text(rng, delimiter) for _ in range(num_text_columns)]
        label = rng.choice(LABEL_NAMES + ("0", "1"))
        rows.append((len(lines) + 1, texts, LABEL_NAMES.index(label) if label in LABEL_NAMES else int(label)))
        lines.append(_format_row(texts + [label], delimiter) + rng.choice(LINE_ENDINGS))
    if rng.random() < 0.3:
        lines[-1] = lines[-1].rstrip("\r\n")  # no line break at the end
    return lines, rows


def _damage(rng, lines, rows, delimiter):
    """Damages one data line; returns its line number and what the error must say."""
    line_number, texts, _ = rng.choice(rows)
    line = lines[line_number - 1]
    body, ending = line.rstrip("\r\n"), line[len(line.rstrip("\r\n")):]
    kind = rng.choice(["stray delimiter", "long field"] + (["unbalanced quote"] * 2 if delimiter == "," else []))
    if kind == "unbalanced quote":
        # At the start of the label or of an unquoted first text: a quote there opens a quoted
        # field, and neither holds a quote that could close it.
        starts = [body.rfind(delimiter) + 1] + ([0] if not body.startswith('"') else [])
        start = rng.choice(starts)
        lines[line_number - 1] = body[:start] + '"' + body[start:] + ending
        return line_number, r"unbalanced quote"
    if kind == "stray delimiter":
        # Into the label: the row's columns shift and its last field is no label.
        label_start = body.rfind(delimiter) + 1
        lines[line_number - 1] = body[:label_start] + "x" + delimiter + body[label_start:] + "x" + ending
        return line_number, r"unknown label"
    texts[0] = "y" * (CSV_FIELD_LIMIT + 1)
    lines[line_number - 1] = _format_row(texts + ["1"], delimiter) + ending
    return line_number, r"field larger than field limit"


def _options(delimiter, num_text_columns):
    return builders.DelimitedFileOptions(
        text_columns=("text", "text_pair")[:num_text_columns],
        label_column="label",
        header=True,
        delimiter=delimiter,
        label_names=LABEL_NAMES,
    )


def _assert_stops_at(error, path, line_number, reason):
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"{path}, line {line_number}: "), message
    assert re.search(reason, message), message


@pytest.mark.parametrize("delimiter, extension", [("\t", "tsv"), (",", "csv")])
def test_generated_delimited_files(tmp_path, delimiter, extension):
    rng = random.Random(22)
    num_damaged = 0
    for index in range(60):
        num_text_columns = rng.choice((1, 2))
        lines, rows = _delimited_file(rng, delimiter, num_text_columns)
        damaged = _damage(rng, lines, rows, delimiter) if index % 3 == 0 else None
        path = tmp_path / f"file{index}.{extension}"
        path.write_bytes("".join(lines).encode("utf-8"))
        options = _options(delimiter, num_text_columns)
        if damaged is None:
            read = list(builders.read_examples(str(path), options))
            expected = [
                (line_number, dict(zip(("text", "text_pair"), texts), label=label))
                for line_number, texts, label in rows
            ]
            assert len(read) == len(expected), path
            assert read == expected, path
        else:
            num_damaged += 1
            with pytest.raises(ValueError) as error:
                list(builders.read_examples(str(path), options))
            _assert_stops_at(error.value, path, *damaged)
    assert num_damaged == 20


def test_generated_delimited_files_through_tfds(tmp_path):
    rng = random.Random(7)
    for index in range(3):
        delimiter = ("\t", ",")[index % 2]
        lines, rows = _delimited_file(rng, delimiter, 1)
        path = tmp_path / f"file{index}.{'tsv' if delimiter == chr(9) else 'csv'}"
        path.write_bytes("".join(lines).encode("utf-8"))
        data = load_labeled_texts(str(path), label_names=LABEL_NAMES, data_dir=str(tmp_path / "tfds"))
        read = [(example["text"].decode("utf-8"), int(example["label"])) for example in data.dataset.as_numpy_iterator()]
        assert read == [(texts[0], label) for _, texts, label in rows]


def _text_line(rng):
    # Python's str.strip is what removes a line's surrounding whitespace, so each line starts
    # and ends with a letter and may hold anything between.
    middle = "".join(rng.choice(CHARACTERS) for _ in range(rng.randint(0, 60)))
    if rng.random() < 0.05:
        middle = "z" * rng.randint(100_000, 300_000)
    text = rng.choice("abc") + middle.replace("\t", " ") + rng.choice("xyz")
    return text


def test_generated_text_corpora(tmp_path):
    rng = random.Random(5)
    for index in range(40):
        documents = [[_text_line(rng) for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(1, 8))]
        pieces = ["\ufeff"] if rng.random() < 0.3 else []
        for number, document in enumerate(documents):
            if number:
                for _ in range(rng.randint(1, 3)):
                    pieces.append(_blank_line(rng, pieces[-1], rng.choice(["", " ", "\t", "  \x0c"])))
            for line in document:
                pieces.append(rng.choice(["", " ", "\t"]) + line + rng.choice(["", " "]) + rng.choice(LINE_ENDINGS))
        if rng.random() < 0.3:
            pieces[-1] = pieces[-1].rstrip("\r\n")
        path = tmp_path / f"corpus{index}.txt"
        path.write_bytes("".join(pieces).encode("utf-8"))
        read = [document for _, document in builders.read_documents(str(path))]
        assert read == ["\n".join(document) for document in documents], path


def test_bytes_that_are_not_utf8_stop_at_their_line(tmp_path):
    rng = random.Random(3)
    for index in range(10):
        lines, rows = _delimited_file(rng, "\t", 1)
        line_number = rng.choice(rows)[0]
        data = [line.encode("utf-8") for line in lines]
        data[line_number - 1] = b"\xff" + data[line_number - 1]
        path = tmp_path / f"file{index}.tsv"
        path.write_bytes(b"".join(data))
        with pytest.raises(ValueError) as error:
            list(builders.read_examples(str(path), _options("\t", 1)))
        _assert_stops_at(error.value, path, line_number, r"bytes that are not UTF-8")
