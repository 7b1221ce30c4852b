"""A sample of a text corpus, drawn evenly across all of it, for learning a vocabulary.

A vocabulary learned from a few hundred MB of text is as good as one learned from the whole of a
large corpus, and learning from all of it takes hours. A sample taken from the head of the
corpus would miss whatever its later files or the end of a big file are about, so the sample is
spread out: text files are read in windows at evenly spaced offsets of every file (each file
giving its share of the sample by size, the window's place within its stretch drawn from
`seed`), and a TFDS split is read in evenly spaced slices of its examples. A corpus no larger
than the sample is read whole.

`sample_text_files` and `sample_documents` return a `TextSample`: iterating it reads the text, in
batches of lines (lists of str), and counts the bytes read.
"""

import math
import random
import sys

# Sized for minutes of learning with `tokenizers`, not hours (docs/data.md has the figures).
DEFAULT_SAMPLE_BYTES = 100_000_000

# Text is read in windows of this size: small enough that even a 100 MB sample of a big file is
# spread over about 1,500 places in it, large enough that seeking costs nothing.
WINDOW_BYTES = 1 << 16

# A TFDS split is read in at most this many slices of consecutive examples.
MAX_SLICES = 100

_WHITESPACE_BYTES = b" \t\n\r\f\v"


class TextSample:
    """Batches of text lines from a corpus, read as they are iterated.

    Attributes:
        source: what the text comes from, in words (file names or a dataset and split).
        corpus_bytes: bytes of text in the corpus (for a TFDS split, the size of its files).
        planned_bytes: bytes the sample is to hold: `sample_bytes`, or the whole corpus where it
            is smaller.
        bytes_read: bytes of text read so far; once iterated, the size of the sample.
    """

    def __init__(self, source, corpus_bytes, planned_bytes, read_batches, progress=True):
        self.source = source
        self.corpus_bytes = corpus_bytes
        self.planned_bytes = planned_bytes
        self.bytes_read = 0
        self._read_batches = read_batches
        self._progress = progress

    def __iter__(self):
        self.bytes_read = 0
        of_corpus = f" of {_megabytes(self.corpus_bytes)}" if self.corpus_bytes else ""
        self._report(f"sampling {_megabytes(self.planned_bytes)}{of_corpus} from {self.source}")
        # One line per tenth of the sample, and one at the end.
        next_report = 0.1
        for num_bytes, lines in self._read_batches():
            self.bytes_read += num_bytes
            if lines:
                yield lines
            if self.planned_bytes and self.bytes_read >= next_report * self.planned_bytes:
                self._report_bytes()
                while self.bytes_read >= next_report * self.planned_bytes:
                    next_report += 0.1
        if next_report < 1.05:
            self._report_bytes()

    def _report_bytes(self):
        share = 100 * self.bytes_read / self.planned_bytes if self.planned_bytes else 100.0
        self._report(
            f"sampled {_megabytes(self.bytes_read)} of {_megabytes(self.planned_bytes)} ({share:.0f}%)"
        )

    def _report(self, message):
        if self._progress:
            print(message, file=sys.stderr, flush=True)

    def summary(self):
        """One line: how many bytes of how many were sampled, from where."""
        if not self.corpus_bytes:
            return f"Sampled {self.bytes_read:,} bytes from {self.source} (of a size TFDS does not know)"
        share = 100 * self.bytes_read / self.corpus_bytes
        return (
            f"Sampled {self.bytes_read:,} bytes of {self.corpus_bytes:,} ({share:.1f}%) "
            f"from {self.source}"
        )


def _megabytes(num_bytes):
    return f"{num_bytes / 1e6:,.1f} MB"


def _decode_lines(data):
    # Undecodable bytes (also a character cut by a window's edge) become U+FFFD, which BERT's
    # normalisation removes.
    return data.decode("utf-8", errors="replace").splitlines()


# === Text files ===


def sample_text_files(paths, sample_bytes=DEFAULT_SAMPLE_BYTES, seed=0, progress=True):
    """A sample of about `sample_bytes` bytes of whole lines, spread over all of `paths`.

    Each file gives a share of the sample in proportion to its size, read in windows of about
    `WINDOW_BYTES` at evenly spaced offsets; a window is trimmed to whole lines (to whole words,
    where a line is longer than the window), so the sample never holds more than `sample_bytes`.

    Args:
        paths: text files (UTF-8).
        sample_bytes: the most bytes to read; the corpus is read whole where it is smaller.
        seed: where each window lies within its stretch of the file; the same seed reads the
            same text.
        progress: print a line on stderr at each tenth of the sample read.

    Returns:
        `TextSample`.

    Raises:
        FileNotFoundError: naming a file that does not exist.
        ValueError: for an empty file (naming it) or `sample_bytes` below 1.
    """
    import os

    if sample_bytes < 1:
        raise ValueError(f"Expected sample_bytes to be at least 1. Received: sample_bytes={sample_bytes}")
    paths = [os.fspath(path) for path in paths]
    if not paths:
        raise ValueError("Expected text files to sample. Received: no paths")
    sizes = []
    for path in paths:
        if os.path.isdir(path):
            raise ValueError(f"{path} is a directory; give the text files in it ({path}/*.txt)")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"File not found: {path}")
        size = os.path.getsize(path)
        if size == 0:
            raise ValueError(f"{path}, line 1: the file is empty")
        sizes.append(size)
    corpus_bytes = sum(sizes)
    source = paths[0] if len(paths) == 1 else f"{len(paths)} files"
    if corpus_bytes <= sample_bytes:
        return TextSample(
            source, corpus_bytes, corpus_bytes, lambda: _read_whole_files(paths), progress
        )
    windows = _plan_windows(paths, sizes, sample_bytes, seed)
    return TextSample(
        source, corpus_bytes, sample_bytes, lambda: _read_windows(windows), progress
    )


def _read_whole_files(paths):
    """Yields `(bytes, lines)` for every line of every file, a window's worth at a time."""
    for path in paths:
        with open(path, "rb") as file:
            carry = b""
            for chunk in iter(lambda: file.read(WINDOW_BYTES), b""):
                data = carry + chunk
                end = data.rfind(b"\n") + 1
                # A line longer than the window waits for the rest of it.
                carry = data[end:]
                if end:
                    yield end, _decode_lines(data[:end])
            if carry:
                yield len(carry), _decode_lines(carry)


def _plan_windows(paths, sizes, sample_bytes, seed):
    """`(path, start, size)` of every window, file by file, in file order.

    A file of `size` bytes with a share of `share` bytes is cut into `n` equal stretches, each
    holding one window of `share / n` bytes at an offset within it drawn from `seed`: the
    windows cover the file from its start to its end, however it is ordered.
    """
    rng = random.Random(seed)
    corpus_bytes = sum(sizes)
    windows = []
    for path, size in zip(paths, sizes):
        share = sample_bytes * size // corpus_bytes
        if share == 0:
            continue
        num_windows = math.ceil(share / WINDOW_BYTES)
        window_bytes = share // num_windows
        stretch = size / num_windows
        for index in range(num_windows):
            start = int(index * stretch + rng.random() * (stretch - window_bytes))
            windows.append((path, start, window_bytes))
    return windows


def _read_windows(windows):
    """Yields `(bytes, lines)` for each window, trimmed to whole lines (or words)."""
    path, file = None, None
    try:
        for window_path, start, window_bytes in windows:
            if window_path != path:
                if file is not None:
                    file.close()
                path, file = window_path, open(window_path, "rb")
            # The bytes either side of the window say whether it starts and ends a line.
            file.seek(max(start - 1, 0))
            starts_a_line = start == 0 or file.read(1) == b"\n"
            data = file.read(window_bytes)
            ends_a_line = file.read(1) in (b"", b"\n")
            data = _whole_lines(data, starts_a_line, ends_a_line)
            yield len(data), _decode_lines(data)
    finally:
        if file is not None:
            file.close()


def _whole_lines(data, starts_a_line, ends_a_line):
    """`data` without the partial line at either end; where no line ends inside `data`,
    without the partial word instead."""
    if not starts_a_line:
        cut = data.find(b"\n")
        if cut < 0:
            cut = min((data.find(space) for space in _WHITESPACE_BYTES if space in data), default=-1)
        data = data[cut + 1 :]
    if not ends_a_line:
        cut = data.rfind(b"\n")
        if cut < 0:
            cut = max(data.rfind(space) for space in _WHITESPACE_BYTES)
        if cut >= 0:
            data = data[: cut + 1]
    return data


# === TFDS datasets ===


def sample_documents(
    name,
    split="train",
    data_dir=None,
    text_key="text",
    sample_bytes=DEFAULT_SAMPLE_BYTES,
    seed=0,
    progress=True,
):
    """A sample of about `sample_bytes` bytes of documents from a TFDS dataset.

    The split is read in up to `MAX_SLICES` evenly spaced slices of consecutive examples,
    together holding the share of the examples that `sample_bytes` is of the split's size (TFDS
    reads only the files a slice lies in); a split no larger than the sample, or given with
    its own slicing (`train[:10%]`), is read from its start. Documents are taken until the
    sample holds `sample_bytes`; the one that would go beyond is cut at a word.

    Args:
        name: a TFDS dataset name, such as `wikipedia/20230601.en`.
        split: the split to read.
        data_dir: the TFDS data directory (TFDS' default where `None`).
        text_key: the text feature.
        sample_bytes: the most bytes of text to read.
        seed: where each slice lies within its stretch of the split.
        progress: print a line on stderr at each tenth of the sample read.

    Returns:
        `TextSample`.
    """
    from kbert.data import sources

    if sample_bytes < 1:
        raise ValueError(f"Expected sample_bytes to be at least 1. Received: sample_bytes={sample_bytes}")
    builder = sources._named_builder(name, data_dir, download=True)
    splits = builder.info.splits
    read_split, corpus_bytes = split, 0
    # The split list is empty under tfds.testing.mock_data, which makes up any split.
    if splits:
        corpus_bytes = splits[split].num_bytes
        if split in splits:
            read_split = spread_split(
                split, splits[split].num_examples, corpus_bytes, sample_bytes, seed
            )
    planned_bytes = min(sample_bytes, corpus_bytes) if corpus_bytes else sample_bytes
    documents = sources.load_documents(
        name, split=read_split, data_dir=data_dir, text_key=text_key
    )

    def read_batches():
        remaining = sample_bytes
        for batch in documents.batch(256).prefetch(2).as_numpy_iterator():
            lines = []
            num_bytes = 0
            for document in batch:
                if len(document) > remaining:
                    document = _whole_lines(document[:remaining], True, False)
                    remaining = 0
                else:
                    remaining -= len(document)
                num_bytes += len(document)
                lines.extend(_decode_lines(document))
                if remaining <= 0:
                    break
            yield num_bytes, lines
            if remaining <= 0:
                return

    return TextSample(
        f"{name} {split}", corpus_bytes, planned_bytes, read_batches, progress
    )


def spread_split(split, num_examples, num_bytes, sample_bytes, seed=0):
    """A TFDS split string reading about `sample_bytes` of `split` in evenly spaced slices.

    `split` itself where it is no larger than the sample or its size is unknown.

    >>> spread_split("train", num_examples=1000, num_bytes=10_000, sample_bytes=1_000)
    'train[...:...]+train[...:...]+...'  # doctest: +SKIP
    """
    if not num_examples or not num_bytes or num_bytes <= sample_bytes:
        return split
    sample_examples = max(1, math.ceil(num_examples * sample_bytes / num_bytes))
    num_slices = min(MAX_SLICES, sample_examples)
    slice_examples = math.ceil(sample_examples / num_slices)
    stretch = num_examples / num_slices
    rng = random.Random(seed)
    slices = []
    for index in range(num_slices):
        start = int(index * stretch + rng.random() * max(stretch - slice_examples, 0))
        end = min(start + slice_examples, num_examples)
        slices.append(f"{split}[{start}:{end}]")
    return "+".join(slices)
