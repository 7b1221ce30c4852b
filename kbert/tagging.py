"""Tag schemes for token classification: tags to entity spans, validation, the entity metric.

A tag is `O` or a prefix and an entity type joined by a dash (`B-PER`). The schemes are

    IOB1   I-X inside (and at the start of) an entity; B-X only starts an entity that
           directly follows another of the same type (CoNLL-2003's original files)
    IOB2   B-X starts every entity, I-X continues it (CoNLL-2003 as most copies ship it)
    IOBES  B-X begins, I-X continues, E-X ends an entity of several words; S-X is a
           one-word entity

Entities are read from tags the way the `conlleval` script and `seqeval` (in its default
mode) read them: one set of rules serves every scheme, and it also reads tag sequences that
are not valid in any scheme (a model's predictions), an I-X after O starting an entity.
The entity metric is micro-averaged over entities: an entity counts as correct when its
first word, last word and type are all right.

Written here rather than taken from `seqeval`, which computes the same figures, because the
spans are also needed for predictions and in the exported graph, and `seqeval` brings
scikit-learn along.
"""

import collections

SCHEMES = ("IOB1", "IOB2", "IOBES")
OUTSIDE = "O"
# The prefixes of the tags each scheme allows, besides O.
SCHEME_PREFIXES = {"IOB1": ("B", "I"), "IOB2": ("B", "I"), "IOBES": ("B", "I", "E", "S")}
# Prefix ids as the exported graph reads them; O is 0, an unknown prefix reads as I.
PREFIX_IDS = {OUTSIDE: 0, "B": 1, "I": 2, "E": 3, "S": 4}


def split_tag(tag):
    """`(prefix, entity type)` of a tag: `("B", "PER")` for `B-PER`, `("O", "")` for `O`.

    Read character for character as `seqeval` reads it: the prefix is the first character,
    a tag without a type (`O`, `B`) has the type `_`.
    """
    return tag[:1], tag[1:].split("-", 1)[-1] or "_"


def check_scheme(scheme):
    """`scheme`, upper-cased, if it is one of `SCHEMES`; else a ValueError naming it."""
    if not isinstance(scheme, str) or scheme.upper() not in SCHEMES:
        raise ValueError(
            f"Expected scheme to be one of {', '.join(SCHEMES)}. Received: scheme={scheme!r}"
        )
    return scheme.upper()


def chunk_ends(previous_prefix, prefix, previous_type, entity_type):
    """Whether an entity ends between a word tagged (previous_prefix, previous_type) and the next one."""
    if previous_prefix in (OUTSIDE, "."):
        return False
    if previous_prefix in ("E", "S") or previous_type != entity_type:
        return True
    return previous_prefix in ("B", "I") and prefix in ("B", "S", OUTSIDE)


def chunk_starts(previous_prefix, prefix, previous_type, entity_type):
    """Whether an entity starts at a word tagged (prefix, entity_type) after the previous one."""
    if prefix in (OUTSIDE, "."):
        return False
    if prefix in ("B", "S") or previous_type != entity_type:
        return True
    return previous_prefix in ("E", "S", OUTSIDE) and prefix in ("E", "I")


def entity_spans(tags):
    """The entities of one sentence's tags, as `conlleval` and `seqeval` read them.

    Args:
        tags: a sequence of tag strings, one per word.

    Returns:
        A list of `(entity_type, start, end)`, with `start` the index of the entity's first
        word and `end` one past its last, in order.

    Example:
    >>> entity_spans(["B-PER", "I-PER", "O", "I-LOC"])
    [('PER', 0, 2), ('LOC', 3, 4)]
    """
    spans = []
    previous_prefix, previous_type, start = OUTSIDE, "_", 0
    for index, tag in enumerate(list(tags) + [OUTSIDE]):
        prefix, entity_type = split_tag(tag)
        if chunk_ends(previous_prefix, prefix, previous_type, entity_type):
            spans.append((previous_type, start, index))
        if chunk_starts(previous_prefix, prefix, previous_type, entity_type):
            start = index
        previous_prefix, previous_type = prefix, entity_type
    return spans


def invalid_tag(tags, scheme):
    """The first tag of `tags` that `scheme` does not allow where it stands.

    Returns:
        `None` for a valid sequence, else `(index, reason)`, with `reason` a phrase such as
        "I-PER follows O".
    """
    scheme = check_scheme(scheme)
    allowed = SCHEME_PREFIXES[scheme]
    previous_prefix, previous_type = OUTSIDE, "_"
    for index, tag in enumerate(tags):
        prefix, entity_type = split_tag(tag)
        if tag != OUTSIDE and (prefix not in allowed or tag[1:2] != "-" or not tag[2:]):
            expected = ", ".join(f"{allowed_prefix}-TYPE" for allowed_prefix in allowed)
            return index, f"the tag {tag!r} is not O or {expected}"
        continues = previous_prefix in ("B", "I") and previous_type == entity_type
        previous_tag = tags[index - 1] if index else "the start of the sentence"
        reason = None
        if scheme == "IOB2" and prefix == "I" and not continues:
            reason = f"{tag} follows {previous_tag}; IOB2 starts every entity with B-"
        elif scheme == "IOB1" and prefix == "B" and not continues:
            reason = f"{tag} follows {previous_tag}; IOB1 starts entities with I-"
        elif scheme == "IOBES":
            reason = _invalid_iobes(previous_prefix, previous_type, prefix, entity_type, tag, previous_tag)
        if reason:
            return index, reason
        previous_prefix, previous_type = prefix, entity_type
    if scheme == "IOBES" and previous_prefix in ("B", "I"):
        return len(tags) - 1, f"the sentence ends after {tags[-1]}; IOBES ends entities with E- or S-"
    return None


def _invalid_iobes(previous_prefix, previous_type, prefix, entity_type, tag, previous_tag):
    """Why `tag` may not follow `previous_tag` in IOBES, or `None`."""
    open_entity = previous_prefix in ("B", "I")
    if prefix in ("I", "E") and not (open_entity and previous_type == entity_type):
        return f"{tag} follows {previous_tag}; IOBES starts entities with B- or S-"
    if prefix in ("B", "S", OUTSIDE) and open_entity:
        return f"{tag} follows {previous_tag}; IOBES ends entities with E- or S-"
    return None


def check_tags(tags, scheme):
    """Raises a ValueError if `tags` is not a valid sequence of `scheme`."""
    invalid = invalid_tag(tags, scheme)
    if invalid is not None:
        index, reason = invalid
        raise ValueError(
            f"Expected tags in the {check_scheme(scheme)} scheme. Received: at tags[{index}], {reason}"
        )


def _scores(num_correct, num_predicted, num_true):
    """Precision, recall and F1 (0 where undefined, as `seqeval` and `conlleval` report them)."""
    precision = num_correct / num_predicted if num_predicted else 0.0
    recall = num_correct / num_true if num_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": num_true}


def entity_scores(true_tags, predicted_tags):
    """Entity-level precision, recall and F1, micro-averaged over entities, and per entity type.

    Args:
        true_tags: a list of sentences, each a list of tag strings.
        predicted_tags: the predicted tags, a list of the same shape.

    Returns:
        A dict: `precision`, `recall`, `f1` and `support` (number of true entities) over all
        entities, and `per_type`, the same four figures for each entity type (sorted).

    Example:
    >>> entity_scores([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]])["f1"]
    0.0
    """
    if len(true_tags) != len(predicted_tags):
        raise ValueError(
            "Expected as many predicted sentences as true ones. "
            f"Received: len(true_tags)={len(true_tags)}, len(predicted_tags)={len(predicted_tags)}"
        )
    counts = collections.defaultdict(lambda: [0, 0, 0])  # type -> [correct, predicted, true]
    for index, (true, predicted) in enumerate(zip(true_tags, predicted_tags)):
        if len(true) != len(predicted):
            raise ValueError(
                f"Expected sentence {index} to have as many predicted tags as true ones. "
                f"Received: {len(predicted)} predicted tags for {len(true)} true tags"
            )
        true_spans = set(entity_spans(true))
        predicted_spans = set(entity_spans(predicted))
        for span in true_spans:
            counts[span[0]][2] += 1
        for span in predicted_spans:
            counts[span[0]][1] += 1
            counts[span[0]][0] += span in true_spans
    totals = [sum(count[position] for count in counts.values()) for position in range(3)]
    scores = _scores(*totals)
    scores["per_type"] = {name: _scores(*counts[name]) for name in sorted(counts)}
    return scores
