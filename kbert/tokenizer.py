"""BertTokenizer and BertPreprocessor: raw text to BERT inputs, in-graph; WordPiece vocabulary training.

The tokenizer is built from TensorFlow and TensorFlow Text ops, so it runs inside `tf.data`,
inside a `tf.function`, and inside a SavedModel served by TensorFlow Serving, whatever the Keras
backend. Vocabularies are learned with Hugging Face `tokenizers` (or tensorflow-text's learner),
outside the graph.
"""

import collections
import os

import tensorflow as tf
import tensorflow_text as tf_text

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
MASK_TOKEN = "[MASK]"
# The order `kbert vocab` writes them in, so that a trained vocabulary has them at ids 0-4.
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN)
SUFFIX_INDICATOR = "##"

# Words longer than this many characters become [UNK], as in the original BERT and Hugging Face.
MAX_CHARACTERS_PER_WORD = 100

# The patterns below reproduce the original BERT BasicTokenizer as Hugging Face `tokenizers`
# implements it (BertNormalizer + BertPreTokenizer). keras-hub's `pretokenize` and tensorflow-text's
# `BasicTokenizer` come close but differ on real text: they lowercase with NFKC case folding
# ("ß" -> "ss", "ﬁ" -> "fi", full-width letters -> ASCII, Hangul recomposed), they turn control and
# format characters into word breaks where BERT deletes them ("soft\u00adhyphen" is one word), and
# RE2's `\s` misses non-ASCII spaces such as U+00A0 and U+3000.

# Control, format, private-use and unassigned characters, except tab, newline and carriage return
# (which are whitespace), plus U+FFFD, which is also where invalid UTF-8 ends up.
_REMOVED_CHARACTERS = r"[^\t\n\r\PC]|\x{FFFD}"
# Unicode White_Space characters that survive the removal above.
_WHITESPACE = r"[\t\n\r \x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}]"
# The CJK Unified Ideographs blocks of the original BERT: each such character is its own word.
_CJK_CHARACTERS = (
    r"[\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}"
    r"\x{2B740}-\x{2B81F}\x{2B820}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}]"
)
# All non-alphanumeric ASCII counts as punctuation, as in BERT, plus Unicode punctuation.
_PUNCTUATION = r"[!-/:-@\[-`{-~\p{P}]"


def basic_tokenize(texts, lowercase=True, strip_accents=None):
    """Splits text into words the way BERT does before WordPiece.

    Removes control characters, normalises whitespace, puts each CJK character and each punctuation
    mark in a word of its own and, for uncased vocabularies, strips accents and lowercases.

    Args:
        texts: tf.string tensor of shape (batch,).
        lowercase: lowercase the text.
        strip_accents: remove accents (Unicode NFD, then drop non-spacing marks); `None` means the
            same as `lowercase`, as for the uncased BERT vocabularies.

    Returns:
        tf.RaggedTensor of tf.string words, shape (batch, (words)).
    """
    if strip_accents is None:
        strip_accents = lowercase
    # Invalid UTF-8 would make the regex and normalisation ops fail; replacing it with U+FFFD (then
    # removed) gives what Python's `bytes.decode(errors="replace")` + Hugging Face would give.
    texts = tf.strings.unicode_transcode(
        texts, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD
    )
    texts = tf.strings.regex_replace(texts, _REMOVED_CHARACTERS, "")
    texts = tf.strings.regex_replace(texts, _WHITESPACE, " ")
    texts = tf.strings.regex_replace(texts, _CJK_CHARACTERS, r" \0 ")
    if strip_accents:
        texts = tf_text.normalize_utf8(texts, "NFD")
        texts = tf.strings.regex_replace(texts, r"\p{Mn}", "")
    if lowercase:
        # ICU's lowercasing turns a word-final capital sigma into "ς"; the reference lowercases
        # character by character, which always gives "σ".
        texts = tf.strings.regex_replace(texts, "Σ", "σ")
        texts = tf.strings.lower(texts, encoding="utf-8")
    return tf_text.regex_split(
        texts,
        delim_regex_pattern=r"\s|" + _PUNCTUATION,
        keep_delim_regex_pattern=_PUNCTUATION,
    )


def read_vocabulary(path):
    """Reads a `vocab.txt` (one token per line, the line number is the id) into a list."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Vocabulary file not found: {path}")
    with open(path, encoding="utf-8") as file:
        vocabulary = [line.rstrip("\r\n") for line in file]
    check_unique_tokens(vocabulary, path)
    return vocabulary


def check_unique_tokens(vocabulary, source="the vocabulary"):
    """Fails at the first token that appears twice: WordPiece needs one id per token."""
    first_lines = {}
    for line_number, token in enumerate(vocabulary, start=1):
        if token in first_lines:
            raise ValueError(
                f"{source}, line {line_number}: the token {token!r} is already on line "
                f"{first_lines[token]}; every token of a vocabulary must be unique"
            )
        first_lines[token] = line_number


def write_vocabulary(vocabulary, path):
    """Writes a list of tokens as a `vocab.txt`, atomically."""
    from kbert import files

    files.write_text(path, "".join(f"{token}\n" for token in vocabulary))


class _VocabularyLookup:
    """Python-side token <-> id maps.

    Kept in a plain object because `tf.Module` would otherwise track the list and dict as
    checkpoint dependencies, which SavedModel export refuses for containers of strings.
    """

    def __init__(self, tokens):
        self.tokens = tokens
        self.ids = {token: index for index, token in enumerate(tokens)}


class BertTokenizer(tf.Module):
    """WordPiece tokenizer with BERT's basic tokenization, running in-graph.

    Gives the same ids as the Hugging Face BERT tokenizer for the same `vocab.txt`. Works eagerly,
    inside `tf.data` and `tf.function`, and in a SavedModel (a `vocab.txt` path is tracked as an
    asset). Never fails on odd input: empty strings, invalid UTF-8, NUL bytes and very long
    strings all tokenize.

    Args:
        vocabulary: path of a `vocab.txt`, or a list of tokens in id order. Must contain
            `[PAD] [UNK] [CLS] [SEP] [MASK]`, at any ids.
        lowercase: lowercase the text (uncased vocabularies).
        strip_accents: remove accents; `None` means the same as `lowercase`.

    Example:
    >>> tokenizer = BertTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cliche", "!"])
    >>> tokenizer(["Cliché!"]).to_list()
    [[5, 6]]
    """

    def __init__(self, vocabulary, lowercase=True, strip_accents=None, name=None):
        super().__init__(name=name)
        self.vocabulary_file = None
        if isinstance(vocabulary, (str, os.PathLike)):
            source = os.fspath(vocabulary)
            vocabulary = read_vocabulary(source)
            # Carried into any SavedModel that tracks this tokenizer, as assets/vocab.txt.
            self.vocabulary_file = tf.saved_model.Asset(source)
        else:
            source = "the vocabulary"
            vocabulary = list(vocabulary)
            check_unique_tokens(vocabulary, source)
        missing = [token for token in SPECIAL_TOKENS if token not in vocabulary]
        if missing:
            raise ValueError(
                f"Expected {source} to contain the special tokens {' '.join(SPECIAL_TOKENS)}. "
                f"Missing: {' '.join(missing)}"
            )
        self._lookup = _VocabularyLookup(vocabulary)
        self.lowercase = bool(lowercase)
        self.strip_accents = self.lowercase if strip_accents is None else bool(strip_accents)
        self.pad_token_id = self.token_to_id(PAD_TOKEN)
        self.unk_token_id = self.token_to_id(UNK_TOKEN)
        self.cls_token_id = self.token_to_id(CLS_TOKEN)
        self.sep_token_id = self.token_to_id(SEP_TOKEN)
        self.mask_token_id = self.token_to_id(MASK_TOKEN)
        # A word may be up to MAX_CHARACTERS_PER_WORD characters of up to 4 bytes; the character
        # limit itself is applied in `__call__`, since this tokenizer only counts bytes.
        self._word_piece = tf_text.FastWordpieceTokenizer(
            vocab=vocabulary,
            suffix_indicator=SUFFIX_INDICATOR,
            max_bytes_per_word=4 * MAX_CHARACTERS_PER_WORD,
            token_out_type=tf.int32,
            unknown_token=UNK_TOKEN,
            no_pretokenization=True,
            support_detokenization=True,
        )

    @property
    def vocabulary(self):
        """The tokens, in id order (a list)."""
        return self._lookup.tokens

    @property
    def vocabulary_size(self):
        return len(self._lookup.tokens)

    @property
    def special_token_ids(self):
        """Ids of `[PAD] [UNK] [CLS] [SEP] [MASK]`, in that order."""
        return [self.token_to_id(token) for token in SPECIAL_TOKENS]

    def token_to_id(self, token):
        if token not in self._lookup.ids:
            raise ValueError(f"Token {token!r} is not in the vocabulary")
        return self._lookup.ids[token]

    def id_to_token(self, token_id):
        token_id = int(token_id)
        if not 0 <= token_id < len(self.vocabulary):
            raise ValueError(
                f"Expected a token id in [0, {len(self.vocabulary) - 1}]. Received: {token_id}"
            )
        return self.vocabulary[token_id]

    def __call__(self, texts):
        """Tokenizes text.

        Args:
            texts: tf.string tensor of shape (batch,) or a list of Python strings; a scalar string
                gives a 1-D result.

        Returns:
            tf.RaggedTensor of int32 token ids, shape (batch, (tokens)), without [CLS] or [SEP];
            a dense (tokens,) tensor for a scalar input.
        """
        texts = tf.convert_to_tensor(texts, dtype=tf.string)
        scalar_input = texts.shape.rank == 0
        if scalar_input:
            texts = texts[tf.newaxis]
        words = basic_tokenize(texts, self.lowercase, self.strip_accents)
        too_long = tf.strings.length(words.flat_values, unit="UTF8_CHAR") > MAX_CHARACTERS_PER_WORD
        # The whole [UNK] token string tokenizes to the [UNK] id, as one over-long word should.
        words = words.with_flat_values(tf.where(too_long, UNK_TOKEN, words.flat_values))
        token_ids = self._word_piece.tokenize(words)  # (batch, (words), (pieces))
        token_ids = token_ids.merge_dims(-2, -1)  # (batch, (tokens))
        if scalar_input:
            return token_ids[0]
        return token_ids

    def detokenize(self, token_ids):
        """Turns ids back into text: word pieces joined into words, words joined by spaces.

        The basic tokenization is not reversible: text comes back lowercased, without accents
        and with spaces around punctuation, as the tokenizer saw it.
        """
        if not isinstance(token_ids, tf.RaggedTensor):
            token_ids = tf.convert_to_tensor(token_ids)
        if token_ids.shape.rank == 1:
            return self._word_piece.detokenize(token_ids[tf.newaxis])[0]
        return self._word_piece.detokenize(token_ids)

    def get_config(self):
        return {"lowercase": self.lowercase, "strip_accents": self.strip_accents}

    @classmethod
    def from_model_dir(cls, directory):
        """The tokenizer a kbert model directory was trained with."""
        from kbert import model_dir

        settings = model_dir.read_config(directory)["tokenizer"]
        return cls(
            model_dir.vocabulary_path(directory),
            lowercase=settings.get("lowercase", True),
            strip_accents=settings.get("strip_accents"),
        )


class BertPreprocessor(tf.Module):
    """Raw text (one or two segments) to the fixed-length inputs of a BERT backbone.

    Packs `[CLS] text [SEP]` or `[CLS] text [SEP] text_pair [SEP]`, truncating the longest segment
    first as the original BERT does, and pads to `sequence_length`. Graph-safe like the tokenizer,
    so the same object serves `tf.data` pipelines and SavedModel signatures.

    Args:
        tokenizer: a `BertTokenizer`.
        sequence_length: the length of every output row.

    Example:
    >>> preprocessor = BertPreprocessor(tokenizer, sequence_length=8)  # doctest: +SKIP
    >>> preprocessor(tf.constant(["a good film"]))["token_ids"]  # doctest: +SKIP
    <tf.Tensor: shape=(1, 8), dtype=int32, numpy=array([[101, 1037, 2204, 2143, 102, 0, 0, 0]])>
    """

    def __init__(self, tokenizer, sequence_length=128, name=None):
        super().__init__(name=name)
        if sequence_length < 3:
            raise ValueError(
                f"Expected sequence_length to be at least 3 ([CLS] a [SEP] b [SEP] needs room). "
                f"Received: sequence_length={sequence_length}"
            )
        self.tokenizer = tokenizer
        self.sequence_length = sequence_length

    def __call__(self, text, text_pair=None, pad_to_longest=False):
        """Tokenizes and packs a batch.

        Args:
            text: tf.string tensor of shape (batch,).
            text_pair: optional second segment, tf.string tensor of shape (batch,).
            pad_to_longest: pad only as far as the longest packed row of the batch (at most
                `sequence_length`), as serving does: padded positions cannot change a BERT's
                outputs at real tokens, and short requests should not pay for the full length.

        Returns:
            dict of int32 tensors of shape (batch, sequence_length): `token_ids`, `segment_ids`
            and `padding_mask`.
        """
        token_ids_pair = None if text_pair is None else self.tokenizer(text_pair)
        return self.pack(self.tokenizer(text), token_ids_pair, pad_to_longest=pad_to_longest)

    def pack(self, token_ids, token_ids_pair=None, sequence_length=None, pad_to_longest=False):
        """Packs already tokenized segments (ragged int32, shape (batch, (tokens))).

        `sequence_length` overrides the preprocessor's own (it may be a scalar tensor), which is how
        length-bucketed batches are packed; `pad_to_longest` is as in `__call__`.
        """
        sequence_length = self.sequence_length if sequence_length is None else sequence_length
        segments = [token_ids] if token_ids_pair is None else [token_ids, token_ids_pair]
        segments = [tf.cast(segment, tf.int32) for segment in segments]
        num_special_tokens = len(segments) + 1
        segments = truncate_longest_first(segments, sequence_length - num_special_tokens)
        token_ids, segment_ids = tf_text.combine_segments(
            segments,
            start_of_sequence_id=self.tokenizer.cls_token_id,
            end_of_segment_id=self.tokenizer.sep_token_id,
        )
        if pad_to_longest:
            # Every row holds at least its special tokens, which also covers an empty batch.
            longest = tf.reduce_max(token_ids.row_lengths())
            sequence_length = tf.cast(tf.maximum(longest, num_special_tokens), tf.int32)
        token_ids, padding_mask = tf_text.pad_model_inputs(
            token_ids, sequence_length, pad_value=self.tokenizer.pad_token_id
        )
        segment_ids, _ = tf_text.pad_model_inputs(segment_ids, sequence_length, pad_value=0)
        return {
            "token_ids": tf.cast(token_ids, tf.int32),
            "segment_ids": tf.cast(segment_ids, tf.int32),
            "padding_mask": tf.cast(padding_mask, tf.int32),
        }

    def get_config(self):
        return {"sequence_length": self.sequence_length}


def truncate_longest_first(segments, max_tokens):
    """Truncates one or two ragged segments to at most `max_tokens` tokens per row in all.

    BERT's loop drops the last token of the longer segment (of the second on a tie) until the
    pair fits, which keeps `min(length, max(share, max_tokens - other_length))` tokens of each
    segment, where the first segment's share is `ceil(max_tokens / 2)` and the second's
    `floor(max_tokens / 2)`. That is what TF Text's `RoundRobinTrimmer` computes, but its op is
    not in the TF Text 2.12 library that TF Serving 2.12 to 2.19 link, so the arithmetic is
    written here with core ops.

    Args:
        segments: a list of one or two int32 `tf.RaggedTensor`s of shape (batch, (tokens)).
        max_tokens: int or scalar int tensor, the tokens every row may keep in all.

    Returns:
        The truncated segments, in order.

    Raises:
        tf.errors.InvalidArgumentError: two segments with different numbers of rows (also
            inside a graph, before any op that reads both).
    """
    max_tokens = tf.cast(max_tokens, tf.int64)
    lengths = [segment.row_lengths() for segment in segments]  # each (batch,), int64
    if len(segments) == 1:
        keep = [tf.minimum(lengths[0], max_tokens)]
    else:
        check = tf.debugging.assert_equal(
            tf.size(lengths[0]),
            tf.size(lengths[1]),
            message="Expected text and text_pair to hold the same number of texts",
        )
        with tf.control_dependencies([check]):
            lengths = [tf.identity(length) for length in lengths]
        first, second = lengths
        first_share = (max_tokens + 1) // 2
        keep = [
            tf.minimum(first, tf.maximum(first_share, max_tokens - second)),
            tf.minimum(second, tf.maximum(max_tokens - first_share, max_tokens - first)),
        ]
    return [
        tf.ragged.boolean_mask(segment, tf.ragged.range(length) < row_keep[:, tf.newaxis])
        for segment, length, row_keep in zip(segments, lengths, keep)
    ]


# The trainers `train_vocabulary` offers, the default first.
TRAINERS = ("tokenizers", "tensorflow-text")

# The most distinct characters a learned vocabulary keeps, the rarer ones becoming [UNK]: the
# limit Hugging Face's BERT WordPiece trainer applies.
ALPHABET_LIMIT = 1000


def train_vocabulary(
    texts,
    vocabulary_size,
    lowercase=True,
    strip_accents=None,
    trainer="tokenizers",
    batch_size=256,
    progress=True,
):
    """Learns a WordPiece vocabulary from text; `[PAD] [UNK] [CLS] [SEP] [MASK]` take ids 0-4.

    Words are split as `BertTokenizer` splits them (BERT's normalisation and pre-tokenization),
    so the vocabulary fits the tokenizer that will use it. Two trainers:

    - `"tokenizers"`: Hugging Face `tokenizers`' WordPiece trainer, in Rust on all cores, with
      `BertNormalizer` and `BertPreTokenizer` (which `BertTokenizer` reproduces) and at most
      `ALPHABET_LIMIT` characters. It breaks ties between equally frequent pairs in an order
      that changes from run to run, so two runs on the same text can differ in a few of the
      rarest tokens and in the order of the characters.
    - `"tensorflow-text"`: tensorflow-text's BERT vocabulary learner, pure Python: words are
      counted with `basic_tokenize` in `tf.data`, then the learner searches for a count
      threshold. It keeps every character of the text and gives the same file every run, but
      takes many times longer on large text.

    Args:
        texts: a `tf.data.Dataset` of tf.string scalars, or an iterable of Python strings or of
            lists of strings (such as a `kbert.data.text_sample.TextSample`).
        vocabulary_size: the largest number of tokens to return (a trainer may return fewer).
        lowercase: as for `BertTokenizer`.
        strip_accents: as for `BertTokenizer`.
        trainer: one of `TRAINERS`.
        batch_size: texts tokenized per step (tensorflow-text).
        progress: print a line on stderr as each phase starts and ends.

    Returns:
        list of tokens in id order.
    """
    import sys
    import time

    if vocabulary_size <= len(SPECIAL_TOKENS):
        raise ValueError(
            f"Expected vocabulary_size to be larger than the {len(SPECIAL_TOKENS)} special tokens. "
            f"Received: vocabulary_size={vocabulary_size}"
        )
    if trainer not in TRAINERS:
        raise ValueError(
            f"Expected trainer to be one of {', '.join(TRAINERS)}. Received: trainer={trainer!r}"
        )
    if strip_accents is None:
        strip_accents = lowercase

    def report(message):
        if progress:
            print(f"learning: {message}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    report(f"counting words as the text is read ({trainer} trainer)")
    if trainer == "tokenizers":
        vocabulary = _learn_with_tokenizers(texts, vocabulary_size, lowercase, strip_accents, report)
    else:
        vocabulary = _learn_with_tensorflow_text(
            texts, vocabulary_size, lowercase, strip_accents, batch_size, report
        )
    if len(vocabulary) <= len(SPECIAL_TOKENS):
        raise ValueError("Expected text to learn a vocabulary from. Received: no words")
    # Both trainers keep the characters of the text, alone and as ## suffixes, so that any word
    # can be tokenized; a size below that cannot be met, and a larger file than asked for would
    # be a surprise.
    if len(vocabulary) > vocabulary_size:
        raise ValueError(
            f"Expected vocabulary_size to be at least {len(vocabulary)} for this text: the special "
            "tokens and the characters it holds, alone and as ## suffixes. "
            f"Received: vocabulary_size={vocabulary_size}"
        )
    report(f"{len(vocabulary):,} tokens in {time.perf_counter() - started:.0f} s")
    return vocabulary


def _text_batches(texts, batch_size=256):
    """Lists of Python strings from any of the forms `train_vocabulary` takes."""
    if isinstance(texts, tf.data.Dataset):
        for batch in texts.batch(batch_size).prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
            yield [text.decode("utf-8", errors="replace") for text in batch]
        return
    for item in texts:
        yield [item] if isinstance(item, str) else list(item)


def _learn_with_tokenizers(texts, vocabulary_size, lowercase, strip_accents, report):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(
        models.WordPiece(
            unk_token=UNK_TOKEN,
            continuing_subword_prefix=SUFFIX_INDICATOR,
            max_input_chars_per_word=MAX_CHARACTERS_PER_WORD,
        )
    )
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=True,
        strip_accents=strip_accents,
        lowercase=lowercase,
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    word_piece_trainer = trainers.WordPieceTrainer(
        vocab_size=vocabulary_size,
        special_tokens=list(SPECIAL_TOKENS),
        limit_alphabet=ALPHABET_LIMIT,
        continuing_subword_prefix=SUFFIX_INDICATOR,
        # Its progress bars draw only on a terminal; the phases are reported as lines instead.
        show_progress=False,
    )

    def batches_then_report():
        yield from _text_batches(texts)
        report(f"merging word pieces up to {vocabulary_size:,} tokens")

    tokenizer.train_from_iterator(batches_then_report(), trainer=word_piece_trainer)
    token_ids = tokenizer.get_vocab()
    vocabulary = sorted(token_ids, key=token_ids.get)
    if vocabulary[: len(SPECIAL_TOKENS)] != list(SPECIAL_TOKENS):
        raise AssertionError(f"tokenizers put the special tokens elsewhere: {vocabulary[:5]}")
    return vocabulary


def _learn_with_tensorflow_text(texts, vocabulary_size, lowercase, strip_accents, batch_size, report):
    from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib as learner

    if isinstance(texts, tf.data.Dataset):
        batches = texts.batch(batch_size)
    else:
        batches = tf.data.Dataset.from_generator(
            lambda: _text_batches(texts),
            output_signature=tf.TensorSpec(shape=(None,), dtype=tf.string),
        )
    words = batches.map(
        lambda batch: basic_tokenize(batch, lowercase, strip_accents).flat_values,
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    word_counts = collections.Counter()
    for batch in words.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
        word_counts.update(batch.tolist())
    if not word_counts:
        return list(SPECIAL_TOKENS)
    report(f"learning word pieces from {len(word_counts):,} distinct words")
    word_counts = [(word.decode("utf-8"), count) for word, count in word_counts.items()]
    vocabulary = learner.learn(
        word_counts,
        vocabulary_size,
        list(SPECIAL_TOKENS),
        # The learner binary-searches a count threshold from upper_thresh down; no threshold above
        # the largest count changes the result, so starting there halves the search.
        upper_thresh=max(count for _, count in word_counts),
        include_joiner_token=True,
        joiner=SUFFIX_INDICATOR,
    )
    return list(vocabulary)
