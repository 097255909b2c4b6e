"""CSV datasets for the text and tabular tests: real data where scikit-learn ships it
(Iris, digits), and a small seeded topic corpus for text."""

import csv
import random
from pathlib import Path

import numpy as np

IRIS_COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def iris_csv(path: Path) -> Path:
    """scikit-learn's Iris: four numeric columns and `label` with the species names."""
    from sklearn.datasets import load_iris

    d = load_iris()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*IRIS_COLUMNS, "label"])
        for x, y in zip(d.data, d.target, strict=True):
            w.writerow([*(f"{v:.1f}" for v in x), d.target_names[y]])
    return path


def iris_rows() -> tuple[list[dict], list[str]]:
    from sklearn.datasets import load_iris

    d = load_iris()
    rows = [dict(zip(IRIS_COLUMNS, map(float, x), strict=True)) for x in d.data]
    return rows, [str(d.target_names[y]) for y in d.target]


def digits_csv(
    path: Path, *, digits: range, train_per_class: int | None, test_per_class: int, seed: int = 0
) -> Path:
    """scikit-learn's 8x8 digits as 64 numeric columns p0..p63 and `label` ("d5"...), with
    an explicit `split` column: `train_per_class` rows per class to train on (None: all
    but the test rows), `test_per_class` held out."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.RandomState(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*(f"p{i}" for i in range(64)), "label", "split"])
        for digit in digits:
            idx = rng.permutation(np.flatnonzero(d.target == digit))
            test = idx[:test_per_class]
            rest = idx[test_per_class:]
            train = rest if train_per_class is None else rest[:train_per_class]
            for split, rows in (("train", train), ("test", test)):
                for i in rows:
                    w.writerow([*(int(v) for v in d.data[i]), f"d{digit}", split])
    return path


# Topic words for training and *other* words for the test split: a model can only get
# the test right by knowing what the words mean (pretraining), not by matching them.
TOPICS = {
    "sports": (
        ["football", "the goalkeeper", "a tennis match", "the referee", "basketball"],
        ["the striker", "a rugby game", "the Olympic sprinter", "a baseball pitcher"],
    ),
    "cooking": (
        ["the recipe", "a frying pan", "baking bread", "the oven", "chopped onions"],
        ["a chef's knife", "simmering soup", "the pastry dough", "roasted garlic"],
    ),
    "weather": (
        ["heavy rain", "the thunderstorm", "a sunny afternoon", "strong winds", "snowfall"],
        ["the hurricane", "a foggy morning", "hailstones", "the heatwave"],
    ),
    "finance": (
        ["the stock market", "interest rates", "a bank loan", "inflation", "the investors"],
        ["the mortgage", "bond yields", "a hedge fund", "quarterly earnings"],
    ),
}
TEMPLATES = [
    "Everyone was talking about {} today.",
    "I read a long article about {} last night.",
    "My friend keeps telling me about {}.",
    "There was a news report on {} this morning.",
    "We spent the evening discussing {}.",
]


def topic_rows(*, per_class_train: int, per_class_test: int, seed: int = 0) -> list[tuple]:
    """(text, label, split) rows; test rows use topic words never seen in training."""
    rng = random.Random(seed)
    rows = []
    for label, (train_words, test_words) in TOPICS.items():
        for split, words, n in (
            ("train", train_words, per_class_train),
            ("test", test_words, per_class_test),
        ):
            for i in range(n):
                rows.append((rng.choice(TEMPLATES).format(words[i % len(words)]), label, split))
    rng.shuffle(rows)
    return rows


# The upload form that names topics_csv's columns.
TOPICS_FORM = {"task": "text_classification", "label_column": "topic", "text_column": "sentence"}


def upload_topics(client, path: Path):
    """POST /v1/datasets of topics_csv(path), its columns named, by any client with
    httpx's post (the ASGI test client or a live one); the response."""
    with topics_csv(path).open("rb") as f:
        return client.post(
            "/v1/datasets", files={"file": (path.name, f, "text/csv")}, data=TOPICS_FORM
        )


def topics_csv(path: Path, *, per_class_train: int = 12, per_class_test: int = 8) -> Path:
    """Text CSV with configurable column names `sentence` / `topic` and a `split`."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "topic", "split"])
        w.writerows(topic_rows(per_class_train=per_class_train, per_class_test=per_class_test))
    return path


def shared_factor_csv(
    path: Path, *, task: str, rows_per_class: int, test_per_class: int, seed: int = 0
) -> Path:
    """A synthetic pair of tabular tasks that share hidden features: 12 numeric columns
    x ~ N(0, 1), hidden factors z_k = (a_k . x)^2 - 1 (the same a_k for both tasks), and
    the label argmax_c (W z)_c with its own W per task: "source" has 6 classes, "target"
    3. Learning the factors takes many rows; a model that has them needs few."""
    factors = np.random.RandomState(1234).normal(size=(5, 12)) / np.sqrt(12)
    weights = np.random.RandomState({"source": 1, "target": 2}[task]).normal(
        size=(6 if task == "source" else 3, 5)
    )
    rng = np.random.RandomState(seed + {"source": 10, "target": 20}[task])
    n_classes = len(weights)
    want = {"train": rows_per_class, "test": test_per_class}
    got = {(s, c): 0 for s in want for c in range(n_classes)}
    out = []
    while any(got[s, c] < want[s] for s, c in got):
        x = rng.normal(size=(512, 12))
        labels = (((x @ factors.T) ** 2 - 1) @ weights.T).argmax(1)
        for row, c in zip(x, labels, strict=True):
            for s in ("train", "test"):
                if got[s, c] < want[s]:
                    got[s, c] += 1
                    out.append(([f"{v:.4f}" for v in row], f"{task[0]}{c}", s))
                    break
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*(f"x{i}" for i in range(12)), "label", "split"])
        for row, label, split in out:
            w.writerow([*row, label, split])
    return path
