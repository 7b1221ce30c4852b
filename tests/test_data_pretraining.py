"""The pretraining pipeline: packing, dynamic and whole-word masking, next-sentence pairs."""

import numpy as np
import pytest
import tensorflow as tf

from kbert.data import MaskGenerator, default_num_predictions, pretraining_dataset
from kbert.tokenizer import SPECIAL_TOKENS, BertTokenizer
from conftest import tiny_backbone

TINY_VOCABULARY = list(SPECIAL_TOKENS) + [
    "the", "cat", "sat", "on", "mat", "dog", "ran", "un", "##believ", "##able", ".", "a",
]


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return BertTokenizer(str(minilm_path / "vocab.txt"))


@pytest.fixture(scope="module")
def wikitext(shared_data):
    return str(shared_data / "corpus" / "wikitext2_valid.txt")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _unmasked(x, mask_ids, mask_weights):
    """The token ids before masking: masked positions put back from mask_ids."""
    token_ids = x["token_ids"].numpy().copy()
    positions, weights = x["mask_positions"].numpy(), mask_weights.numpy()
    for row in range(token_ids.shape[0]):
        used = weights[row] > 0
        token_ids[row, positions[row, used]] = mask_ids.numpy()[row, used]
    return token_ids


def _take_sequences(dataset, num_sequences):
    batches = []
    total = 0
    for batch in dataset:
        batches.append(batch)
        total += batch[0]["token_ids"].shape[0]
        if total >= num_sequences:
            break
    return batches


def _token_stream(tokenizer, path, data_dir):
    """The corpus' token ids in order, each document followed by [SEP]."""
    from kbert.data import load_documents

    documents = list(load_documents(path, data_dir=data_dir).as_numpy_iterator())
    stream = []
    for ids in tokenizer(tf.constant(documents)).to_list():
        if ids:
            stream.extend(ids + [tokenizer.sep_token_id])
    return stream


def _words(row, continuation):
    """Lists of positions, one list per word, of the maskable tokens of a row."""
    words = []
    for position, is_continuation in enumerate(continuation[row]):
        if is_continuation and words and words[-1][-1] == position - 1:
            words[-1].append(position)
        else:
            words.append([position])
    return words


def test_masking_statistics_over_ten_thousand_sequences(tokenizer, wikitext, data_dir):
    dataset = pretraining_dataset(
        wikitext, tokenizer, batch_size=250, sequence_length=64, data_dir=data_dir, seed=7
    ).repeat()
    special = np.array(tokenizer.special_token_ids)
    num_maskable = num_selected = num_mask_token = num_random = num_unchanged = 0
    num_sequences = 0
    for x, mask_ids, mask_weights in _take_sequences(dataset, 10_000):
        original = _unmasked(x, mask_ids, mask_weights)
        padding_mask = x["padding_mask"].numpy().astype(bool)
        num_maskable += np.sum(padding_mask & ~np.isin(original, special))
        weights = mask_weights.numpy() > 0
        selected_original = mask_ids.numpy()[weights]
        assert not np.isin(selected_original, special).any()
        shown = np.take_along_axis(x["token_ids"].numpy(), x["mask_positions"].numpy(), axis=1)[weights]
        num_selected += weights.sum()
        num_mask_token += np.sum(shown == tokenizer.mask_token_id)
        num_unchanged += np.sum(shown == selected_original)
        num_random += np.sum((shown != tokenizer.mask_token_id) & (shown != selected_original))
        num_sequences += len(original)
        # Masked tokens differ from the input only where selected.
        changed = x["token_ids"].numpy() != original
        assert np.all(np.isin(np.argwhere(changed)[:, 1], x["mask_positions"].numpy()))

    assert num_sequences >= 10_000
    assert abs(num_selected / num_maskable - 0.15) <= 0.005
    assert abs(num_mask_token / num_selected - 0.8) <= 0.01
    assert abs(num_random / num_selected - 0.1) <= 0.01
    assert abs(num_unchanged / num_selected - 0.1) <= 0.01


def test_whole_word_masking_never_masks_part_of_a_word(tokenizer, wikitext, data_dir):
    dataset = pretraining_dataset(
        wikitext, tokenizer, batch_size=128, sequence_length=64, whole_word_masking=True,
        data_dir=data_dir, seed=3,
    )
    is_continuation = np.array([token.startswith("##") for token in tokenizer.vocabulary])
    special = np.array(tokenizer.special_token_ids)
    num_maskable = num_selected = num_multi_piece_words_selected = 0
    for x, mask_ids, mask_weights in _take_sequences(dataset, 2_000):
        original = _unmasked(x, mask_ids, mask_weights)
        maskable = x["padding_mask"].numpy().astype(bool) & ~np.isin(original, special)
        continuation = is_continuation[original] & maskable
        for row in range(len(original)):
            selected = set(x["mask_positions"].numpy()[row][mask_weights.numpy()[row] > 0].tolist())
            for word in _words(row, continuation):
                if not maskable[row, word[0]]:
                    continue
                taken = [position in selected for position in word]
                assert all(taken) or not any(taken), (row, word, taken)
                num_multi_piece_words_selected += len(word) > 1 and all(taken)
        num_maskable += maskable.sum()
        num_selected += (mask_weights.numpy() > 0).sum()
    assert num_multi_piece_words_selected > 100  # the test saw real multi-piece words
    assert abs(num_selected / num_maskable - 0.15) <= 0.01


def test_packing_fills_sequences_and_keeps_the_text_in_order(tokenizer, wikitext, data_dir):
    dataset = pretraining_dataset(
        wikitext, tokenizer, batch_size=64, sequence_length=128, data_dir=data_dir, shuffle=False, seed=1
    )
    num_real = num_positions = 0
    stream = []
    for x, mask_ids, mask_weights in dataset:
        padding_mask = x["padding_mask"].numpy()
        num_real += padding_mask.sum()
        num_positions += padding_mask.size
        original = _unmasked(x, mask_ids, mask_weights)
        assert np.all(original[:, 0] == tokenizer.cls_token_id)
        assert np.all(x["segment_ids"].numpy() == 0)
        for row, length in zip(original, padding_mask.sum(axis=1)):
            assert row[length - 1] == tokenizer.sep_token_id
            stream.extend(row[1 : length - 1].tolist())
    assert num_real / num_positions > 0.97

    # Unshuffled, the sequences are the documents' tokens in file order.
    assert stream == _token_stream(tokenizer, wikitext, data_dir)


def test_next_sentence_pairs(tokenizer, wikitext, data_dir):
    dataset = pretraining_dataset(
        wikitext, tokenizer, batch_size=64, sequence_length=64, next_sentence_prediction=True,
        data_dir=data_dir, seed=5, shuffle=False,
    )
    stream = _token_stream(tokenizer, wikitext, data_dir)
    chunk_length = 64 - 3
    labels = []
    for batch_index, (x, y, sample_weight) in enumerate(dataset.take(10)):
        assert set(y) == {"mlm", "nsp"} and set(sample_weight) == {"mlm", "nsp"}
        assert x["token_ids"].shape[1] == 64 and x["mask_positions"].shape[1] == 10
        assert np.all(sample_weight["nsp"].numpy() == 1.0)
        original = _unmasked(x, y["mlm"], sample_weight["mlm"])
        segment_ids = x["segment_ids"].numpy()
        num_rows = len(original)
        for row in range(num_rows):
            length = x["padding_mask"].numpy()[row].sum()
            # [CLS] A [SEP] is segment 0 and B [SEP] segment 1.
            first_b = int(np.argmax(segment_ids[row] == 1))
            assert original[row, 0] == tokenizer.cls_token_id
            assert original[row, first_b - 1] == original[row, length - 1] == tokenizer.sep_token_id
            assert np.all(segment_ids[row, :first_b] == 0) and np.all(segment_ids[row, first_b:length] == 1)
            a = original[row, 1 : first_b - 1].tolist()
            b = original[row, first_b : length - 1].tolist()
            chunk_index = batch_index * 64 + row
            chunk = stream[chunk_index * chunk_length : (chunk_index + 1) * chunk_length]
            assert len(a) >= 1 and a == chunk[: len(a)]
            if y["nsp"].numpy()[row] == 0:  # B is the text that follows A
                assert b == chunk[len(a) :]
            else:  # B is the same span of another sequence of the batch
                other_index = batch_index * 64 + (row - 1) % num_rows
                other = stream[other_index * chunk_length : (other_index + 1) * chunk_length]
                assert b == other[len(a) : len(a) + len(b)] and len(a) + len(b) == chunk_length
        labels.extend(y["nsp"].numpy().tolist())
    assert 0.4 < np.mean(labels) < 0.6


def test_dynamic_masking_is_new_every_epoch_and_reproducible():
    tokenizer = BertTokenizer(TINY_VOCABULARY)
    documents = tf.data.Dataset.from_tensor_slices(["the cat sat on the mat . " * 40, "a dog ran ."] * 5)

    def first_epochs(seed):
        dataset = pretraining_dataset(documents, tokenizer, batch_size=8, sequence_length=32, seed=seed)
        return [
            [batch[0]["mask_positions"].numpy() for batch in dataset],
            [batch[0]["mask_positions"].numpy() for batch in dataset],
        ]

    first, again = first_epochs(seed=11), first_epochs(seed=11)
    assert all(np.array_equal(a, b) for a, b in zip(first[0], again[0]))
    assert all(np.array_equal(a, b) for a, b in zip(first[1], again[1]))
    assert not all(
        a.shape == b.shape and np.array_equal(a, b) for a, b in zip(first[0], first[1])
    )


def test_mask_generator_on_a_hand_made_batch():
    tokenizer = BertTokenizer(TINY_VOCABULARY)
    # [CLS] un ##believ ##able cat sat [SEP] [PAD]: three words of which one has three pieces.
    token_ids = tf.constant([[2, 12, 13, 14, 6, 7, 3, 0]])
    padding_mask = tf.constant([[1, 1, 1, 1, 1, 1, 1, 0]])
    masker = MaskGenerator(
        tokenizer, num_predictions=4, mask_selection_rate=0.5, mask_token_rate=1.0,
        random_token_rate=0.0, whole_word_masking=True,
    )
    outcomes = set()
    for seed in range(40):
        masked = masker(token_ids, padding_mask, seed=tf.constant([seed, 0], tf.int64))
        positions = masked["mask_positions"].numpy()[0][masked["mask_weights"].numpy()[0] > 0]
        outcomes.add(tuple(positions.tolist()))
        assert masked["token_ids"].numpy()[0, positions].tolist() == [tokenizer.mask_token_id] * len(positions)
        assert masked["mask_ids"].numpy()[0, : len(positions)].tolist() == token_ids.numpy()[0, positions].tolist()
    # Half of 5 maskable tokens is 2.5, rounded to 2 or 3: the three-piece word is taken whole or
    # not at all.
    assert (1, 2, 3) in outcomes
    assert all(set(o) & {1, 2, 3} in (set(), {1, 2, 3}) for o in outcomes)
    assert all(0 not in o and 6 not in o and 7 not in o for o in outcomes)


@pytest.mark.parametrize("num_predictions", [0, -1, 2.5])
def test_num_predictions_below_one_is_refused(num_predictions):
    # No prediction slot would make the masked-LM loss 0 / 0.
    with pytest.raises(ValueError, match=rf"Expected num_predictions to be a positive integer .*num_predictions={num_predictions}"):
        MaskGenerator(BertTokenizer(TINY_VOCABULARY), num_predictions=num_predictions)
    with pytest.raises(ValueError, match="num_predictions"):
        pretraining_dataset(
            tf.data.Dataset.from_tensor_slices(["cat sat"]), BertTokenizer(TINY_VOCABULARY), 2,
            sequence_length=8, num_predictions=num_predictions,
        )


def test_default_num_predictions_matches_bert():
    assert default_num_predictions(128) == 20
    assert default_num_predictions(512) == 77


def test_trains_bert_masked_lm_with_and_without_next_sentence_prediction():
    import keras

    import kbert

    tokenizer = BertTokenizer(TINY_VOCABULARY)
    documents = tf.data.Dataset.from_tensor_slices(["the cat sat on the mat . a dog ran ."] * 20)
    for next_sentence_prediction in (False, True):
        dataset = pretraining_dataset(
            documents, tokenizer, batch_size=4, sequence_length=16,
            next_sentence_prediction=next_sentence_prediction, seed=0,
        )
        backbone = tiny_backbone(
            tokenizer.vocabulary_size, 16, num_layers=1, hidden_dim=8, intermediate_dim=16
        )
        model = kbert.BertMaskedLM(backbone, next_sentence_prediction=next_sentence_prediction)
        # Eager steps: tracing a training step costs more than this test needs to show.
        model.compile(run_eagerly=True)
        history = model.fit(dataset.take(1), epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        keras.utils.clear_session()


def test_each_input_pipeline_reads_its_share():
    tokenizer = BertTokenizer(TINY_VOCABULARY)
    texts = [f"the cat sat {'on the mat ' * i}" for i in range(1, 41)]
    documents = tf.data.Dataset.from_tensor_slices(texts)
    for index in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=index, num_replicas_in_sync=4
        )
        dataset = pretraining_dataset(
            documents, tokenizer, batch_size=16, sequence_length=16, input_context=context, shuffle=False
        )
        batches = list(dataset)
        assert max(batch[0]["token_ids"].shape[0] for batch in batches) == 4  # 16 over 4 replicas
        num_sequences = sum(batch[0]["token_ids"].shape[0] for batch in batches)
        num_real = sum(int(tf.reduce_sum(batch[0]["padding_mask"])) for batch in batches)
        # This pipeline's documents are every other one: their tokens, a [SEP] after each
        # document, and [CLS] ... [SEP] around each sequence.
        share = tokenizer(tf.constant(texts[index::2])).flat_values.shape[0] + len(texts[index::2])
        assert num_real == share + 2 * num_sequences


def test_pipeline_runs_without_tf_data_autotuning():
    # With autotuning on, deleting a used iterator (Keras does at every fit, evaluate and epoch)
    # waits for tf.data's autotuning thread to wake up: seconds at a time (see
    # kbert.data.sources.without_autotuning).
    tokenizer = BertTokenizer(TINY_VOCABULARY)
    documents = tf.data.Dataset.from_tensor_slices(["the cat sat on the mat . " * 40] * 4)
    dataset = pretraining_dataset(documents, tokenizer, batch_size=4, sequence_length=32, seed=0)
    assert dataset.options().autotune.enabled is False
    assert next(iter(dataset))[0]["token_ids"].shape == (4, 32)
