"""Prepared pretraining corpora: `kbert prepare`'s sharded token-id sequences, and the stream
that trains from them.

    .txt files / a TFDS split --read documents, in blocks--> blocks of documents
        --tokenize and pack (Beam workers, in parallel)--> fixed-length token-id sequences
        --TFDS' Beam writer--> a TFDS dataset of many shards (TFRecord files)
    shards --shard order drawn per epoch, a window of shards interleaved, shuffled in blocks-->
        sequences --batch, [CLS] A [SEP], mask (fresh every epoch)--> batches

Preparation runs on Apache Beam through TFDS' Beam support (`PackedCorpus`), so the same builder
runs on the local machine's cores (Beam's DirectRunner in multi-processing mode) or on a Beam
cluster (Dataflow, Spark, Flink) given its pipeline options. Sequences are packed as
`kbert.data.pretraining` packs them on the fly: each document's token ids followed by [SEP],
concatenated and cut into chunks of `sequence_length - 2` tokens (3 with next-sentence
prediction), the last chunk kept at its real length. Packing is sequential, so it runs per
block of `documents_per_block` documents of one file (or one TFDS shard): blocks are packed in
parallel, and a corpus file of fewer documents gives exactly the on-the-fly sequences. Each block
ends in one shorter sequence; nothing is dropped. Sequences are not masked: masking stays dynamic.

The dataset's info (`metadata.json`) records the vocabulary's hash, the sequence and chunk
lengths and the tokenizer's settings, so that training refuses data prepared for another model.
"""

import glob
import hashlib
import os
import re
import shlex
import time

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

VERSION = "1.0.0"
# Documents packed together; each block is one unit of parallel work.
DOCUMENTS_PER_BLOCK = 10_000
# TFDS starts a new shard every 64 MiB by default; smaller shards give the reader's shard order
# more to shuffle and more files to share among workers (see `_ShardConfig`).
MIN_SHARD_SIZE = 4 << 20
# Shards read at once (interleaved) by the training stream.
SHARDS_PER_WINDOW = 16
_DOCUMENTS_PER_TOKENIZER_CALL = 2048
_METADATA_KEY = "kbert_prepared"


def vocabulary_hash(vocabulary):
    """The SHA-256 of a vocabulary's tokens in id order, one per line (a vocab.txt's text)."""
    return hashlib.sha256("".join(f"{token}\n" for token in vocabulary).encode("utf-8")).hexdigest()


def chunk_length_for(sequence_length, next_sentence_prediction=False):
    """Tokens of text per sequence: [CLS] and [SEP] (and a second [SEP] for pairs) excluded."""
    return sequence_length - (3 if next_sentence_prediction else 2)


def pack(documents_token_ids, separator_id, chunk_length):
    """Yields the chunks (int32 arrays) of documents' token ids, packed as on the fly.

    Each non-empty document is followed by `separator_id`; the concatenation is cut into
    `chunk_length` tokens, the last chunk keeping what is left.
    """
    lengths = [len(token_ids) for token_ids in documents_token_ids]
    flat = [token_id for token_ids in documents_token_ids for token_id in token_ids]
    return pack_flat(np.asarray(flat, np.int32), np.asarray(lengths, np.int64), separator_id,
                     chunk_length)


def pack_flat(token_ids, lengths, separator_id, chunk_length):
    """`pack` of documents given as their concatenated token ids and each one's length."""
    ends = np.cumsum(lengths)[np.asarray(lengths) > 0]
    stream = np.insert(np.asarray(token_ids, np.int32), ends, np.int32(separator_id))
    for start in range(0, len(stream), chunk_length):
        yield stream[start:start + chunk_length]


# === Preparation (Apache Beam) ===


def expand_inputs(patterns):
    """The files of `patterns` (paths or globs, local or `gs://`), sorted within each pattern.

    Raises:
        ValueError: naming a pattern that matches no file.
    """
    paths = []
    for pattern in [patterns] if isinstance(patterns, (str, os.PathLike)) else patterns:
        pattern = os.path.expanduser(os.fspath(pattern))
        if "://" in pattern:
            matches = sorted(tf.io.gfile.glob(pattern))
        else:
            matches = sorted(path for path in glob.glob(pattern) if os.path.isfile(path))
        if not matches:
            raise ValueError(f"{pattern}: no file matches (input)")
        paths.extend(matches)
    return paths


class _DocumentBlocks:
    """Reads one input (a file or a TFDS shard) into keyed blocks of documents."""

    def __init__(self, documents_per_block, tfds_dataset_dir=None, text_key="text"):
        self.documents_per_block = documents_per_block
        self.tfds_dataset_dir = tfds_dataset_dir
        self.text_key = text_key

    def __call__(self, indexed_input):
        input_index, source = indexed_input
        block, block_index = [], 0
        for document in self._documents(source):
            block.append(document)
            if len(block) == self.documents_per_block:
                yield (input_index, block_index), block
                block, block_index = [], block_index + 1
        if block:
            yield (input_index, block_index), block

    def _documents(self, source):
        if self.tfds_dataset_dir is None:
            from kbert.data.builders import read_documents

            for _, document in read_documents(source):
                yield document
            return
        features = tfds.builder_from_directory(self.tfds_dataset_dir).info.features
        path, skip, take = source
        records = tf.data.TFRecordDataset(path).skip(skip)
        if take >= 0:
            records = records.take(take)
        for record in records:
            yield features.deserialize_example(record)[self.text_key].numpy().decode("utf-8")


class _TokenizeAndPack:
    """Tokenizes a block of documents with kbert's tokenizer and packs it into chunks.

    Carries the vocabulary itself, not its path, so that workers on other machines need no
    access to the file; each worker builds the tokenizer once.
    """

    def __init__(self, vocabulary, lowercase, strip_accents, chunk_length):
        self.vocabulary = list(vocabulary)
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.chunk_length = chunk_length
        self._tokenizer = None

    def __getstate__(self):
        return dict(self.__dict__, _tokenizer=None, _tokenize=None)

    def __call__(self, keyed_block):
        (input_index, block_index), documents = keyed_block
        if not documents:
            return
        if self._tokenizer is None:
            from kbert.tokenizer import BertTokenizer

            tokenizer = BertTokenizer(
                self.vocabulary, lowercase=self.lowercase, strip_accents=self.strip_accents
            )

            # One graph for the block: run eagerly, the ragged ops' Python cost was as large
            # as the tokenizing itself.
            @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
            def tokenize(texts):
                token_ids = tokenizer(texts)
                return token_ids.flat_values, token_ids.row_lengths()

            self._tokenizer, self._tokenize = tokenizer, tokenize
        token_ids, lengths = [], []
        for start in range(0, len(documents), _DOCUMENTS_PER_TOKENIZER_CALL):
            flat, row_lengths = self._tokenize(
                tf.constant(documents[start:start + _DOCUMENTS_PER_TOKENIZER_CALL]))
            token_ids.append(flat.numpy())
            lengths.append(row_lengths.numpy())
        chunks = pack_flat(np.concatenate(token_ids), np.concatenate(lengths),
                           self._tokenizer.sep_token_id, self.chunk_length)
        for chunk_index, chunk in enumerate(chunks):
            yield f"{input_index}/{block_index}/{chunk_index}", {"token_ids": chunk}


class PackedCorpusConfig(tfds.core.BuilderConfig):
    """What a `PackedCorpus` reads and how it tokenizes and packs it."""

    def __init__(self, *, inputs, settings, vocabulary, documents_per_block,
                 tfds_dataset_dir=None, text_key="text", **kwargs):
        super().__init__(**kwargs)
        self.inputs = inputs
        self.settings = settings
        self.vocabulary = vocabulary
        self.documents_per_block = documents_per_block
        self.tfds_dataset_dir = tfds_dataset_dir
        self.text_key = text_key

class PackedCorpus(tfds.core.GeneratorBasedBuilder):
    """A corpus as fixed-length token-id sequences (feature `token_ids`), prepared with Beam.

    `_generate_examples` returns a Beam `PTransform`: inputs are read into blocks of
    documents, the blocks spread over the workers (`Reshuffle`), and each worker
    tokenizes and packs its blocks. TFDS' Beam writer spreads the sequences over the
    shards by a hash of their keys, so every shard is a sample of the whole corpus.
    """

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "First release."}
    BUILDER_CONFIGS = []
    # No files beside the code to find (see kbert.data.builders.LocalFilesBuilder).
    code_path = None

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {"token_ids": tfds.features.Tensor(shape=(None,), dtype=np.int32)}
            ),
            metadata=tfds.core.MetadataDict({_METADATA_KEY: self.builder_config.settings}),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the inputs are read by the workers
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        beam = tfds.core.lazy_imports.apache_beam
        config = self.builder_config
        return (
            beam.Create(list(enumerate(config.inputs)))
            | "ReadDocuments" >> beam.FlatMap(
                _DocumentBlocks(config.documents_per_block, config.tfds_dataset_dir, config.text_key)
            )
            | "SpreadBlocks" >> beam.Reshuffle()
            | "TokenizeAndPack" >> beam.FlatMap(
                _TokenizeAndPack(
                    config.vocabulary,
                    config.settings["lowercase"],
                    config.settings["strip_accents"],
                    config.settings["chunk_length"],
                )
            )
        )


def beam_options(num_workers=None, pipeline_options=None):
    """Beam `PipelineOptions`: `pipeline_options` (a command line string) or the local runner.

    The local runner is Beam's DirectRunner in multi-processing mode with `num_workers`
    processes (default: the machine's cores).
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    if pipeline_options:
        return PipelineOptions(shlex.split(pipeline_options))
    num_workers = num_workers or os.cpu_count() or 1
    return PipelineOptions(
        ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
         f"--direct_num_workers={num_workers}", "--default_sdk_harness_log_level=WARNING"]
    )


def prepare_corpus(
    output,
    vocabulary,
    inputs=None,
    tfds_name=None,
    split="train",
    text_key="text",
    data_dir=None,
    sequence_length=128,
    lowercase=True,
    strip_accents=None,
    next_sentence_prediction=False,
    num_shards=None,
    num_workers=None,
    pipeline_options=None,
    documents_per_block=DOCUMENTS_PER_BLOCK,
    log=print,
):
    """Tokenizes and packs a corpus into a sharded TFDS dataset in the directory `output`.

    Args:
        output: the dataset directory to write (must not exist); `kbert pretrain --input` reads it.
        vocabulary: the `vocab.txt` to tokenize with.
        inputs: `.txt` files or glob patterns (blank lines and `= Title =` lines separate
            documents); or give `tfds_name`.
        tfds_name, split, text_key, data_dir: a TFDS dataset of documents, its split, its text
            feature and the TFDS data directory.
        sequence_length: tokens per training sequence, [CLS] and [SEP] included.
        lowercase, strip_accents: the tokenizer's settings (see `kbert.tokenizer.BertTokenizer`).
        next_sentence_prediction: pack for next-sentence prediction (one token less per chunk,
            for the second [SEP]).
        num_shards: shards to write (default: TFDS' rule, a power of two, one per 4 MiB or so).
        num_workers: processes of the local runner (default: the cores).
        pipeline_options: Beam pipeline options as a command line, for another runner, e.g.
            `"--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp"`.
        documents_per_block: documents packed together (one unit of parallel work).
        log: where the progress lines go.

    Returns:
        The prepared dataset's `PreparedCorpus`.
    """
    try:
        import apache_beam  # noqa: F401
    except ImportError:
        raise ValueError("kbert prepare needs Apache Beam: pip install 'kbert[beam]'") from None
    from kbert.tokenizer import BertTokenizer

    if (inputs is None) == (tfds_name is None):
        raise ValueError("Expected one of inputs and tfds_name. Received: "
                         f"inputs={inputs!r}, tfds_name={tfds_name!r}")
    output = os.fspath(output)
    if tf.io.gfile.exists(output):
        raise FileExistsError(f"{output} exists (output); choose another directory or delete it")
    chunk_length = chunk_length_for(sequence_length, next_sentence_prediction)
    if chunk_length < 2:
        raise ValueError(f"Expected sequence_length above {sequence_length - chunk_length + 1}. "
                         f"Received: sequence_length={sequence_length}")
    if documents_per_block < 1:
        raise ValueError(
            f"Expected documents_per_block to be positive. Received: {documents_per_block}"
        )
    tokenizer = BertTokenizer(vocabulary, lowercase=lowercase, strip_accents=strip_accents)
    tokenizer_config = tokenizer.get_config()
    inputs, tfds_dataset_dir, described = _resolve_inputs(inputs, tfds_name, split, text_key, data_dir)
    settings = dict(
        vocabulary=os.path.abspath(os.fspath(vocabulary)),
        vocabulary_sha256=vocabulary_hash(tokenizer.vocabulary),
        vocabulary_size=tokenizer.vocabulary_size,
        lowercase=tokenizer_config["lowercase"],
        strip_accents=tokenizer_config["strip_accents"],
        sequence_length=sequence_length,
        chunk_length=chunk_length,
        next_sentence_prediction=bool(next_sentence_prediction),
        documents_per_block=documents_per_block,
        source=described,
    )
    config = PackedCorpusConfig(
        name="packed", version=VERSION, description=f"Token-id sequences of {described}",
        inputs=inputs, settings=settings, vocabulary=tokenizer.vocabulary,
        documents_per_block=documents_per_block, tfds_dataset_dir=tfds_dataset_dir,
        text_key=text_key,
    )
    options = beam_options(num_workers, pipeline_options)
    runner = options.get_all_options().get("runner") or "DirectRunner"
    where = f"{num_workers or os.cpu_count()} local worker processes" if not pipeline_options else runner
    log(f"Preparing {len(inputs)} input{'s' if len(inputs) > 1 else ''} on Beam ({where}) "
        f"for --sequence-length {sequence_length}")
    start = time.monotonic()
    _run_builder(PackedCorpus(config=config, data_dir=_scratch_root(output)), output,
                 _DownloadConfig(beam_options=options, num_shards=num_shards))
    prepared = PreparedCorpus(output)
    log(f"Wrote {prepared.num_sequences} sequences in {prepared.num_shards} shards to {output} "
        f"in {time.monotonic() - start:.1f} s")
    return prepared


class _ShardConfig(tfds.core.utils.shard_utils.ShardConfig):
    """TFDS' shard rule with shards of at least `MIN_SHARD_SIZE`.

    TFDS counts shards in a classmethod that reads the class's `min_shard_size`, so the size
    given to `DownloadConfig(min_shard_size=...)` never applies; a subclass's default does.
    """

    min_shard_size = MIN_SHARD_SIZE


class _DownloadConfig(tfds.download.DownloadConfig):
    def get_shard_config(self):
        return _ShardConfig(num_shards=self.num_shards, min_shard_size=MIN_SHARD_SIZE,
                            max_shard_size=self.max_shard_size)


def _resolve_inputs(inputs, tfds_name, split, text_key, data_dir):
    """`(inputs, tfds_dataset_dir, description)`: files, or a TFDS split's (file, skip, take)."""
    if tfds_name is None:
        inputs = expand_inputs(inputs)
        return inputs, None, ", ".join(inputs)
    from etils import epath

    from kbert.data.sources import _named_builder

    builder = _named_builder(tfds_name, data_dir, download=True)
    if text_key not in builder.info.features:
        raise ValueError(f"TFDS dataset {tfds_name} has no feature {text_key!r} (text_key; features: "
                         f"{', '.join(builder.info.features.keys())})")
    dataset_dir = os.fspath(builder.data_dir)
    inputs = [
        (os.fspath(epath.Path(dataset_dir) / instruction.filename)
         if "/" not in instruction.filename else instruction.filename,
         instruction.skip, instruction.take)
        for instruction in builder.info.splits[split].file_instructions
    ]
    return inputs, dataset_dir, f"{tfds_name} ({split})"


def _scratch_root(output):
    # TFDS writes into <root>/<name>/<config>/<version>; the version directory becomes `output`.
    return f"{output.rstrip('/')}.incomplete-{os.getpid()}"


def _run_builder(builder, output, download_config):
    """Runs the Beam pipeline and moves the dataset to `output`; scratch files go either way.

    A worker's error reaches here inside the runner's report of the failed pipeline; a
    `ValueError` or `OSError` of kbert's reading (naming the file and line) is raised again
    as the one line it was.
    """
    import logging

    from etils import epath

    root = builder.data_dir_root
    # The local runner also logs each worker's traceback; the error is raised below either way.
    job_log = logging.getLogger("apache_beam.runners.portability.local_job_service")
    job_log_level = job_log.level
    job_log.setLevel(logging.CRITICAL)
    try:
        builder.download_and_prepare(download_config=download_config)
        check_shards(builder.data_dir)
        epath.Path(builder.data_dir).rename(output)
    except Exception as error:  # the runners wrap workers' errors in their own types
        cause = _worker_error(error)
        if cause is None:
            raise
        raise cause from None
    finally:
        job_log.setLevel(job_log_level)
        if tf.io.gfile.exists(root):
            tf.io.gfile.rmtree(root)


_SHARD_NAME = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<total>\d{5})$")


def check_shards(directory):
    """Raises when shard files that the dataset's own file names promise are missing.

    The files of a split are named `...-00000-of-00128` and so on; each of the 0 to N-1 must be
    there. Beam's local multi-process runner has lost a shard (the dataset info then written
    without it), so a finished run is checked before it is kept.
    """
    found = {}
    for name in tf.io.gfile.listdir(directory):
        match = _SHARD_NAME.match(name)
        if match:
            key = (match["prefix"], int(match["total"]))
            found.setdefault(key, set()).add(int(match["index"]))
    for (prefix, total), indexes in sorted(found.items()):
        missing = sorted(set(range(total)) - indexes)
        if missing:
            raise RuntimeError(
                f"The Beam run lost {len(missing)} of the {total} shards of {prefix} "
                f"(first: {prefix}-{missing[0]:05d}-of-{total:05d}); nothing was kept: "
                "prepare the corpus again"
            )


_WORKER_ERRORS = {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError,
                  "UnicodeDecodeError": ValueError}


def _worker_error(error):
    """The first error of kbert's reading named in a failed pipeline's report, or `None`."""
    import re

    if isinstance(error, (ValueError, OSError)) and not isinstance(error, RuntimeError):
        return error
    match = re.search(r"\b(ValueError|FileNotFoundError|UnicodeDecodeError): (.+?)(?: \[while running|$|\n)",
                      str(error), flags=re.MULTILINE)
    if match is None:
        return None
    return _WORKER_ERRORS[match.group(1)](match.group(2).strip().strip("'\""))


# === Reading ===


class PreparedCorpus:
    """A prepared dataset (from `prepare_corpus`): its settings, shards, and training stream.

    Training reads an endless stream of epochs. Each epoch draws an order of the shards from
    the seed and the epoch; an input pipeline `p` of `P` (under a distribution strategy) takes
    every `P`-th shard of that order; its shards are read `shards_per_window` at a time,
    interleaved, and shuffled in blocks of `shuffle_buffer_size` sequences, each block in an
    order drawn from the seed, the epoch, the window and the block. The shards themselves were filled in hash order when written, so each is a sample of
    the whole corpus.

    Resuming inside an epoch uses this determinism rather than checkpointing tf.data's
    iterator: the position (epoch, window, sequence within it) follows from the number of
    sequences already trained on and the shard lengths in the dataset's info, so whole windows
    of shards are skipped without being opened and only the current window is read from its
    start. A tf.data iterator checkpoint would hold the shuffled sequences in memory (megabytes in
    every backup), works with Keras' iterators only on the TensorFlow backend, and ties a backup
    to the pipeline's exact graph.

    Args:
        directory: the dataset directory (holding `dataset_info.json`).
        split: the split to read.

    Example:
    >>> corpus = PreparedCorpus("data/wiki128")  # doctest: +SKIP
    >>> chunks = corpus.chunks(seed=0)  # (token ids padded to chunk_length, length)  # doctest: +SKIP
    """

    def __init__(self, directory, split="train", builder=None):
        self.directory = os.fspath(directory)
        self.builder = builder or tfds.builder_from_directory(self.directory)
        self.settings = dict(self.builder.info.metadata[_METADATA_KEY])
        splits = self.builder.info.splits
        if split not in splits:
            raise ValueError(f"{self.directory} has no split {split!r}; it has: {', '.join(splits)}")
        self.filepaths = [os.fspath(path) for path in splits[split].filepaths]
        self.shard_lengths = np.array(splits[split].shard_lengths, np.int64)
        self.chunk_length = int(self.settings["chunk_length"])

    @property
    def num_shards(self):
        return len(self.filepaths)

    @property
    def num_sequences(self):
        return int(self.shard_lengths.sum())

    def check(self, tokenizer, sequence_length, next_sentence_prediction=False):
        """Raises a one-line `ValueError` unless the data was prepared for these settings."""
        settings = self.settings
        if vocabulary_hash(tokenizer.vocabulary) != settings["vocabulary_sha256"]:
            raise ValueError(
                f"{self.directory} was prepared with another vocabulary ({settings['vocabulary']}, "
                f"sha256 {settings['vocabulary_sha256'][:12]}); pretrain with that vocabulary or "
                "prepare the corpus again with this one"
            )
        config = tokenizer.get_config()
        for name in ("lowercase", "strip_accents"):
            if config[name] != settings[name]:
                flag = name.replace("_", "-")
                raise ValueError(
                    f"{self.directory} was prepared with --{'' if settings[name] else 'no-'}{flag}; "
                    f"pretrain with it or prepare the corpus again"
                )
        chunk_length = chunk_length_for(sequence_length, next_sentence_prediction)
        if chunk_length != self.chunk_length:
            prepared_for = f"--sequence-length {settings['sequence_length']}" + (
                " with --next-sentence-prediction" if settings["next_sentence_prediction"] else ""
            )
            asked = f"--sequence-length {sequence_length}" + (
                " with --next-sentence-prediction" if next_sentence_prediction else ""
            )
            raise ValueError(
                f"{self.directory} was prepared for {prepared_for}, not {asked}; pretrain with "
                "those settings or prepare the corpus again"
            )

    # === The training stream ===

    def shard_order(self, epoch, seed):
        """The shards of `epoch` in reading order (an int64 tensor), drawn from `seed`."""
        scores = tf.random.stateless_uniform(
            [self.num_shards], seed=tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
        )
        return tf.argsort(scores, stable=True)

    def pipeline_shards(self, epoch, seed, pipeline=0, num_pipelines=1):
        """The shards input pipeline `pipeline` of `num_pipelines` reads in `epoch`, in order."""
        return self.shard_order(epoch, seed)[pipeline::num_pipelines]

    def position(self, num_chunks, seed, pipeline=0, num_pipelines=1, shards_per_window=SHARDS_PER_WINDOW):
        """Where the stream is after `num_chunks` sequences: `(epoch, window, index in window)`."""
        epoch = 0
        while True:
            # Eagerly, also while a pipeline is being traced (inside `flat_map`).
            with tf.init_scope():
                shards = self.pipeline_shards(epoch, seed, pipeline, num_pipelines).numpy()
            lengths = self.shard_lengths[shards]
            if num_chunks < lengths.sum():
                break
            num_chunks -= int(lengths.sum())
            epoch += 1
        window_lengths = np.add.reduceat(lengths, np.arange(0, len(lengths), shards_per_window))
        ends = np.cumsum(window_lengths)
        window = int(np.searchsorted(ends, num_chunks, side="right"))
        return epoch, window, int(num_chunks - (ends[window] - window_lengths[window]))

    def chunks(
        self,
        shuffle=True,
        seed=0,
        input_context=None,
        skip_chunks=0,
        shuffle_buffer_size=10_000,
        shards_per_window=SHARDS_PER_WINDOW,
    ):
        """The sequences as `(token_ids, length)`: int32 (chunk_length,) zero-padded, and int32.

        Args:
            shuffle: the endless, shuffled training stream; without it, one pass over the
                shards in order (for evaluation and inspection).
            seed: the seed of the shard orders and of the shuffled blocks.
            input_context: a `tf.distribute.InputContext`: read this pipeline's shards only.
            skip_chunks: start this many sequences into this pipeline's stream.
            shuffle_buffer_size: sequences shuffled together (a block of the window).
            shards_per_window: shards interleaved at a time.
        """
        seed = 0 if seed is None else int(seed)
        pipeline, num_pipelines = 0, 1
        if input_context is not None:
            pipeline, num_pipelines = input_context.input_pipeline_id, input_context.num_input_pipelines
        if num_pipelines > self.num_shards:
            raise ValueError(
                f"{self.directory} has {self.num_shards} shards, fewer than the "
                f"{num_pipelines} input pipelines; prepare it again with num_shards "
                f"{num_pipelines} or more"
            )
        if not shuffle:
            shards = tf.data.Dataset.from_tensor_slices(self.filepaths[pipeline::num_pipelines])
            records = shards.flat_map(tf.data.TFRecordDataset)
            return records.map(self._decode).skip(skip_chunks)

        paths = tf.constant(self.filepaths)
        num_pipeline_shards = len(range(pipeline, self.num_shards, num_pipelines))
        num_windows = -(-num_pipeline_shards // shards_per_window)

        def window(epoch, window_index):
            shards = self.pipeline_shards(epoch, seed, pipeline, num_pipelines)
            shards = shards[window_index * shards_per_window:(window_index + 1) * shards_per_window]
            records = tf.data.Dataset.from_tensor_slices(tf.gather(paths, shards)).interleave(
                tf.data.TFRecordDataset, cycle_length=shards_per_window, block_length=1,
                num_parallel_calls=shards_per_window, deterministic=True,
            )
            window_seed = tf.stack([tf.constant(seed, tf.int64),
                                    tf.cast(epoch, tf.int64) * num_windows + window_index])

            def shuffle_block(block_index, block):
                token_ids, lengths = block
                block_seed = tf.random.experimental.stateless_fold_in(window_seed, block_index)
                order = tf.argsort(tf.random.stateless_uniform(tf.shape(lengths), seed=block_seed))
                return tf.gather(token_ids, order), tf.gather(lengths, order)

            # Stateless shuffling of consecutive blocks, rather than tf.data's shuffle buffer,
            # whose seeds mix in the global seed: each block's order is a function of the seed,
            # the epoch, the window and the block alone.
            blocks = records.map(self._decode).batch(shuffle_buffer_size).enumerate()
            return blocks.map(shuffle_block).unbatch()

        def epoch_windows(epoch, first_window=0):
            return tf.data.Dataset.range(first_window, num_windows).flat_map(
                lambda window_index: window(epoch, window_index)
            )

        epoch, window_index, index = self.position(
            skip_chunks, seed, pipeline, num_pipelines, shards_per_window
        )
        current = window(epoch, window_index).skip(index)
        later_epochs = tf.data.Dataset.counter(epoch + 1).flat_map(epoch_windows)
        return current.concatenate(epoch_windows(epoch, window_index + 1)).concatenate(later_epochs)

    def _decode(self, record):
        token_ids = self.builder.info.features.deserialize_example(record)["token_ids"]
        length = tf.size(token_ids)
        return tf.pad(token_ids, [[0, self.chunk_length - length]]), length


def open_prepared(source, split="train", data_dir=None):
    """The `PreparedCorpus` that `source` names, or `None` where it names text.

    `source` is a prepared dataset directory (or a one-item list of it), or the name of a
    prepared TFDS dataset found in `data_dir`.
    """
    if isinstance(source, (list, tuple)):
        if len(source) != 1:
            return None
        source = source[0]
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = os.path.expanduser(os.fspath(source))
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "dataset_info.json")):
            raise ValueError(
                f"{path} is a directory but not a prepared dataset (no dataset_info.json; see "
                "kbert prepare); give .txt files or the output directory of kbert prepare"
            )
        return PreparedCorpus(path, split=_base_split(split, path))
    from kbert.data.sources import is_local

    if is_local(path):
        return None
    from tensorflow_datasets.core import read_only_builder

    try:
        builder = read_only_builder.builder_from_files(path, data_dir=data_dir)
    except (tfds.core.registered.DatasetNotFoundError, FileNotFoundError, ValueError):
        return None
    if _METADATA_KEY not in (builder.info.metadata or {}):
        return None
    return PreparedCorpus(builder.data_dir, split=_base_split(split, path), builder=builder)


def _base_split(split, where):
    if split != "train" and "[" in split:
        raise ValueError(f"{where}: a prepared dataset is read whole; got the split {split!r}")
    return split
