"""Tests of kbert.tagging: entity spans, scheme validation and the entity metric.

The metric is checked against hand-computed figures and against `seqeval` (the reference the
field reports with) on generated sentences in every scheme.
"""

import random

import pytest

from kbert import tagging

TYPES = ("PER", "LOC", "ORG", "MISC")


def test_entity_spans_read_each_scheme():
    # Hand-read: the same two entities (PER over words 0-1, LOC at word 3) in every scheme.
    assert tagging.entity_spans(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 2), ("LOC", 3, 4)]
    assert tagging.entity_spans(["I-PER", "I-PER", "O", "I-LOC"]) == [("PER", 0, 2), ("LOC", 3, 4)]
    assert tagging.entity_spans(["B-PER", "E-PER", "O", "S-LOC"]) == [("PER", 0, 2), ("LOC", 3, 4)]
    # IOB1's B- separates two adjacent entities of one type.
    assert tagging.entity_spans(["I-PER", "B-PER", "I-PER"]) == [("PER", 0, 1), ("PER", 1, 3)]
    # Invalid sequences are read as conlleval reads them: I- after O or another type starts one.
    assert tagging.entity_spans(["O", "I-ORG", "I-LOC", "E-LOC", "I-LOC"]) == [
        ("ORG", 1, 2), ("LOC", 2, 4), ("LOC", 4, 5),
    ]
    assert tagging.entity_spans([]) == []


def test_entity_scores_hand_computed():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "I-ORG", "B-PER"]]
    # True: PER(0-2) LOC(3) | ORG(0) PER(2); predicted: PER(0-2) ORG(3) | ORG(0-2) PER(2).
    # Correct: PER(0-2) and PER(2): 2 of 4 predicted, 2 of 4 true.
    scores = tagging.entity_scores(true, predicted)
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(0.5)
    assert scores["support"] == 4
    assert scores["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert scores["per_type"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert scores["per_type"]["LOC"]["support"] == 1
    # No entities at all: zeros, not a division by zero.
    assert tagging.entity_scores([["O"]], [["O"]])["f1"] == 0.0


def test_entity_scores_refuse_mismatched_lengths():
    with pytest.raises(ValueError, match="sentence 0 .* 1 predicted tags for 2 true tags"):
        tagging.entity_scores([["O", "O"]], [["O"]])


@pytest.mark.parametrize(
    "tags, scheme, index, reason",
    [
        (["O", "I-PER"], "IOB2", 1, "I-PER follows O; IOB2 starts every entity with B-"),
        (["B-PER", "I-LOC"], "IOB2", 1, "I-LOC follows B-PER"),
        (["O", "B-PER"], "IOB1", 1, "B-PER follows O; IOB1 starts entities with I-"),
        (["B-PER", "I-PER"], "IOBES", 1, "the sentence ends after I-PER"),
        (["B-PER", "O"], "IOBES", 1, "O follows B-PER; IOBES ends entities with E- or S-"),
        (["E-PER"], "IOBES", 0, "E-PER follows the start of the sentence"),
        (["S-PER"], "IOB2", 0, "the tag 'S-PER' is not O or B-TYPE, I-TYPE"),
        (["PER"], "IOB2", 0, "the tag 'PER' is not O"),
        (["B-"], "IOB2", 0, "the tag 'B-' is not O"),
    ],
)
def test_invalid_tag_finds_the_first_bad_tag(tags, scheme, index, reason):
    found_index, found_reason = tagging.invalid_tag(tags, scheme)
    assert found_index == index
    assert reason in found_reason


def test_valid_sequences_pass_and_bad_scheme_is_named():
    assert tagging.invalid_tag(["I-PER", "B-PER", "O", "I-LOC"], "IOB1") is None
    assert tagging.invalid_tag(["B-PER", "I-PER", "O", "B-LOC"], "iob2") is None
    assert tagging.invalid_tag(["B-PER", "I-PER", "E-PER", "S-LOC"], "IOBES") is None
    with pytest.raises(ValueError, match=r"Received: scheme='BILOU'"):
        tagging.invalid_tag(["O"], "BILOU")
    with pytest.raises(ValueError, match=r"at tags\[1\]"):
        tagging.check_tags(["O", "I-PER"], "IOB2")


def _random_spans(generator, length):
    """Random entities over `length` words: a list of (type, start, end), some adjacent."""
    spans, position = [], generator.randrange(2)
    while position < length:
        end = min(length, position + generator.choice((1, 1, 2, 3)))
        spans.append((generator.choice(TYPES), position, end))
        position = end + generator.choice((0, 0, 1, 2))
    return spans


def _encode(spans, length, scheme):
    """The tags of `spans` in `scheme`, written out independently of kbert's reader."""
    tags = ["O"] * length
    previous = None
    for entity_type, start, end in spans:
        for position in range(start, end):
            tags[position] = f"I-{entity_type}"
        if scheme == "IOB2" or (scheme == "IOB1" and previous == (entity_type, start)):
            tags[start] = f"B-{entity_type}"
        if scheme == "IOBES":
            if end - start == 1:
                tags[start] = f"S-{entity_type}"
            else:
                tags[start], tags[end - 1] = f"B-{entity_type}", f"E-{entity_type}"
        previous = (entity_type, end)
    return tags


def _corrupt(tags, generator, scheme):
    """Predictions: tags changed at random, into any tag of the scheme (often invalid ones)."""
    prefixes = tagging.SCHEME_PREFIXES[scheme]
    choices = ["O"] + [f"{prefix}-{entity_type}" for prefix in prefixes for entity_type in TYPES]
    return [generator.choice(choices) if generator.random() < 0.15 else tag for tag in tags]


@pytest.mark.parametrize("scheme", tagging.SCHEMES)
def test_entity_scores_match_seqeval(scheme):
    seqeval_metrics = pytest.importorskip("seqeval.metrics.sequence_labeling")
    seqeval_scheme = pytest.importorskip("seqeval.scheme")
    generator = random.Random(hash(scheme) % 1000)
    true, predicted = [], []
    for _ in range(1200):
        length = generator.randrange(1, 20)
        tags = _encode(_random_spans(generator, length), length, scheme)
        true.append(tags)
        predicted.append(_corrupt(tags, generator, scheme))

    for tags in true:
        assert tagging.invalid_tag(tags, scheme) is None, tags
    # The gold spans are those seqeval's strict reading of the scheme finds.
    strict = seqeval_scheme.Entities(true, getattr(seqeval_scheme, scheme))
    ours = sorted(
        (sentence, entity_type, start, end)
        for sentence, tags in enumerate(true)
        for entity_type, start, end in tagging.entity_spans(tags)
    )
    theirs = sorted(
        (entity.sent_id, entity.tag, entity.start, entity.end)
        for sentence in strict.entities
        for entity in sentence
    )
    assert ours == theirs

    scores = tagging.entity_scores(true, predicted)
    precision, recall, f1, support = seqeval_metrics.precision_recall_fscore_support(
        true, predicted, average="micro"
    )
    assert 0.3 < scores["f1"] < 0.99  # the generated predictions are neither all right nor all wrong
    assert (scores["precision"], scores["recall"], scores["f1"], scores["support"]) == pytest.approx(
        (precision, recall, f1, support), abs=1e-12
    )
    report = seqeval_metrics.classification_report(true, predicted, output_dict=True)
    for entity_type in TYPES:
        ours_for_type = scores["per_type"][entity_type]
        theirs_for_type = report[entity_type]
        assert ours_for_type["f1"] == pytest.approx(theirs_for_type["f1-score"], abs=1e-12)
        assert ours_for_type["precision"] == pytest.approx(theirs_for_type["precision"], abs=1e-12)
        assert ours_for_type["recall"] == pytest.approx(theirs_for_type["recall"], abs=1e-12)
        assert ours_for_type["support"] == theirs_for_type["support"]
