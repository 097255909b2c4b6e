"""Model quality on real data: the live service against the practitioner's bare script.

    python -m bench.quality [--datasets digits,wordnet,penguins,fashion,diabetes,pairs]
                            [--quick] [--rows lr,ft,default,again,auto,full]
                            [--repo PATH] [--json PATH] [--references OLD.json]

Every dataset is real data that installs offline (the bench installs what is missing):
- `fashion`: Fashion-MNIST (Debian `dataset-fashion-mnist`), a seeded stratified subset
  of the train file, held out from the t10k file, lite0 at 224 px;
- `wordnet`: WordNet noun glosses (Debian `wordnet-base`), labelled by their lexical
  file (the 8 largest), minilm-l6;
- `penguins`: palmerpenguins (PyPI), categorical columns and missing values, mlp;
- `digits`: scikit-learn's digits as images, lite0 at 64 px;
- `diabetes`: scikit-learn's diabetes, a regression (tabular, mlp);
- `pairs`: two digits side by side, labelled with both: multi-label images, lite0.

Rows per dataset. The references are bare code on the same backbone, built with the
engine's `build_model` (the same weights the service loads) but never its training loop:
- `lr`: logistic regression (scikit-learn, L-BFGS) on the frozen pooled features, C by
  5-fold cross-validation on train (ridge for regression, one-vs-rest for multi-label;
  on the one-hot/standardised columns for tabular data, where the MLP has no weights);
- `ft`: fastai's `fine_tune` in bare PyTorch: one frozen epoch (head only, one-cycle),
  then everything unfrozen with discriminative rates (3 groups, lr/100 .. lr) and a
  one-cycle schedule, AdamW with no decay on biases and norms; tabular: fastai's
  `fit_one_cycle` from scratch (an MLP has no pretrained body to freeze);
- `ft-wdall`: the same with weight decay on every parameter (issue 11's measurement).
Service rows, through the live service's HTTP API as a user would (ZIP of class folders,
CSV), predicting the held-out set through POST /v1/models/{id}/predict:
- `default`: `{"dataset_id", "base_model"}` only (plus `image_size` where the bench's
  image size is not the service's default 224, so both sides see the same pixels);
- `again`: the same job a second time (what a feature cache saves);
- `auto`, `full`: `"strategy": "auto"` / `"full"`.
- `auto-10x` (not run by default): `auto` with `auto_budget_seconds` at the issue's time
  target, 10x the bare forward over train: what auto gets when it must finish in time.
Held-out rows are never uploaded. A task the service refuses at upload (422) shows as
"n/a (task not supported)". Job seconds are the service's own created_at -> finished_at;
"POST→done" is the client's wall clock. Targets (issue 10): the default job >= the LR
reference - 0.01, in <= 1.3x one bare forward pass over the training inputs + 2 s;
`auto` >= the better reference on 3 of 4 classification datasets, within 10x a forward.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import io
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

# Before torch starts OpenMP: on a loaded shared machine, spinning OpenMP threads made a
# forward pass 5-10x slower. The service started below inherits the same policy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.digits import digit_image  # noqa: E402
from bench.service import wait_done  # noqa: E402
from tests.helpers import free_port, png_bytes, stop, wait_http  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
KEY = "ft_bench_quality_key_0123456789abcdefghijklmn"
REPO = Path(__file__).resolve().parents[1]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
WORDNET_NOUNS = Path("/usr/share/wordnet/data.noun")
FASHION_CLASSES = [
    "tshirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
]  # fmt: skip
# WordNet's lexicographer files for nouns (lexnames numbers 03-28).
NOUN_LEXFILES = {
    3: "Tops", 4: "act", 5: "animal", 6: "artifact", 7: "attribute", 8: "body",
    9: "cognition", 10: "communication", 11: "event", 12: "feeling", 13: "food",
    14: "group", 15: "location", 16: "motive", 17: "object", 18: "person",
    19: "phenomenon", 20: "plant", 21: "possession", 22: "process", 23: "quantity",
    24: "relation", 25: "shape", 26: "state", 27: "substance", 28: "time",
}  # fmt: skip
REFERENCE_ROWS = ("lr", "ft", "ft-wdall")
# auto-10x: auto with auto_budget_seconds at the time target, 10x the bare forward
SERVICE_ROWS = ("default", "again", "auto", "auto-10x", "full")
DEFAULT_ROWS = ("lr", "ft", "default", "again", "auto", "full")
QUICK_ROWS = ("lr", "ft", "default", "again")
C_GRID = [0.01, 0.1, 1.0, 10.0, 100.0]


# ---------------------------------------------------------------- metrics


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else float("nan")


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def macro_f1(y_true, y_pred, n_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 over the classes present in y_true or y_pred
    (scikit-learn's f1_score(average="macro"))."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = np.union1d(y_true, y_pred) if n_classes is None else np.arange(n_classes)
    tp = np.array([np.sum((y_true == c) & (y_pred == c)) for c in labels], dtype=float)
    fp = np.array([np.sum((y_true != c) & (y_pred == c)) for c in labels], dtype=float)
    fn = np.array([np.sum((y_true == c) & (y_pred != c)) for c in labels], dtype=float)
    return float(_f1(tp, fp, fn).mean())


def multilabel_scores(y_true, y_pred) -> dict[str, float]:
    """Indicator matrices (N, L): exact-set accuracy, micro-F1 and macro-F1 over labels."""
    t, p = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    tp, fp, fn = (t & p).sum(0), (~t & p).sum(0), (t & ~p).sum(0)
    return {
        "subset_accuracy": float((t == p).all(1).mean()),
        "micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())),
        "macro_f1": float(_f1(tp.astype(float), fp.astype(float), fn.astype(float)).mean()),
    }


def regression_scores(y_true, y_pred) -> dict[str, float]:
    t, p = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    ss_res, ss_tot = float(((t - p) ** 2).sum()), float(((t - t.mean()) ** 2).sum())
    return {
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        "rmse": math.sqrt(ss_res / len(t)),
        "mae": float(np.abs(t - p).mean()),
    }


def scores(kind: str, y_true, y_pred) -> dict[str, float]:
    if kind == "regression":
        return regression_scores(y_true, y_pred)
    if kind == "multilabel":
        return multilabel_scores(y_true, y_pred)
    return {"accuracy": accuracy(y_true, y_pred), "macro_f1": macro_f1(y_true, y_pred)}


def headline(kind: str, s: dict) -> tuple[float, float]:
    """The table's two metric columns: (accuracy, macro-F1), or (R², RMSE) for regression,
    or (exact-set accuracy, macro-F1) for multi-label."""
    if kind == "regression":
        return s["r2"], s["rmse"]
    if kind == "multilabel":
        return s["subset_accuracy"], s["macro_f1"]
    return s["accuracy"], s["macro_f1"]


# ---------------------------------------------------------------- splits and parsers


def stratified_pick(
    labels: np.ndarray, per_class: int | None, seed: int, exclude: set[int] = frozenset()
) -> np.ndarray:
    """Sorted indices of `per_class` samples of every class (all when None), seeded."""
    rng = np.random.RandomState(seed)
    out = []
    for c in np.unique(labels):
        idx = np.array([i for i in np.flatnonzero(labels == c) if i not in exclude], dtype=int)
        idx = rng.permutation(idx)
        out.append(idx if per_class is None else idx[:per_class])
    return np.sort(np.concatenate(out))


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int):
    """(train, test) indices: about `test_fraction` of every class held out."""
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = max(1, int(round(len(idx) * test_fraction)))
        test.extend(idx[:n])
        train.extend(idx[n:])
    return np.sort(np.array(train, dtype=int)), np.sort(np.array(test, dtype=int))


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST's format; gzipped or not): magic 0x00 0x00 <dtype> <ndim>, then
    ndim big-endian uint32 sizes, then the data."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if raw[:2] != b"\x00\x00":
        raise ValueError(f"{path}: not an idx file")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    dtype, ndim = np.dtype(dtypes[raw[2]]), raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim, count=math.prod(shape))
    return data.reshape(shape)


def _idx_file(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"{root}/{stem}(.gz)")


def parse_noun_glosses(text: str) -> list[tuple[int, str]]:
    """(lexfile number, gloss) of every synset in a WordNet data.noun. License lines start
    with two spaces; in a data line the lexfile number is the second field and the gloss
    follows the `|`."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("  "):
            continue
        head, sep, gloss = line.partition(" | ")
        fields = head.split()
        if not sep or len(fields) < 2 or not gloss.strip():
            continue
        out.append((int(fields[1]), gloss.strip()))
    return out


# ---------------------------------------------------------------- datasets


@dataclass
class Data:
    name: str
    modality: str  # image | text | tabular
    kind: str  # classification | multilabel | regression
    base_model: str
    describe: str
    x_train: list  # PIL images, strings, or {column: value} rows
    y_train: np.ndarray  # class index / float / (N, L) indicators
    x_test: list
    y_test: np.ndarray
    classes: list[str] = field(default_factory=list)
    image_size: int | None = None
    label_column: str = "label"
    config: dict = field(default_factory=dict)

    @property
    def task(self) -> str:
        return f"{self.modality}_{self.kind}"


def load_fashion(n_train: int, n_test: int, size: int, seed: int, root: Path = FASHION_DIR):
    xtr = read_idx(_idx_file(root, "train-images-idx3-ubyte"))
    ytr = read_idx(_idx_file(root, "train-labels-idx1-ubyte")).astype(int)
    xte = read_idx(_idx_file(root, "t10k-images-idx3-ubyte"))
    yte = read_idx(_idx_file(root, "t10k-labels-idx1-ubyte")).astype(int)
    tr = stratified_pick(ytr, n_train // 10, seed)
    te = stratified_pick(yte, n_test // 10, seed + 1)
    return Data(
        name="fashion",
        modality="image",
        kind="classification",
        base_model="efficientnet_lite0",
        describe=f"Fashion-MNIST {len(tr)} train / {len(te)} test (t10k), lite0 at {size} px",
        x_train=[Image.fromarray(xtr[i]) for i in tr],
        y_train=ytr[tr],
        x_test=[Image.fromarray(xte[i]) for i in te],
        y_test=yte[te],
        classes=FASHION_CLASSES,
        image_size=size,
        config={"n_train": n_train, "n_test": n_test, "size": size, "seed": seed},
    )


def load_wordnet(
    per_class_train: int, per_class_test: int, n_classes: int, seed: int, path=WORDNET_NOUNS
):
    glosses = parse_noun_glosses(Path(path).read_text(encoding="utf-8", errors="replace"))
    counts: dict[int, int] = {}
    for lex, _ in glosses:
        counts[lex] = counts.get(lex, 0) + 1
    chosen = sorted(sorted(counts, key=lambda k: (-counts[k], k))[:n_classes])
    glosses = [(chosen.index(lex), g) for lex, g in glosses if lex in chosen]
    labels = np.array([c for c, _ in glosses])
    tr = stratified_pick(labels, per_class_train, seed)
    te = stratified_pick(labels, per_class_test, seed + 1, exclude=set(tr.tolist()))
    return Data(
        name="wordnet",
        modality="text",
        kind="classification",
        base_model="minilm-l6",
        describe=f"WordNet noun glosses, {len(chosen)} lexical files, {len(tr)} train / "
        f"{len(te)} test, minilm-l6",
        x_train=[glosses[i][1] for i in tr],
        y_train=labels[tr],
        x_test=[glosses[i][1] for i in te],
        y_test=labels[te],
        classes=[NOUN_LEXFILES.get(k, str(k)) for k in chosen],
        config={"per_class_train": per_class_train, "per_class_test": per_class_test,
                "classes": n_classes, "seed": seed},
    )  # fmt: skip


def _none_if_nan(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if hasattr(v, "item") else v


def load_penguins(test_fraction: float, seed: int):
    import palmerpenguins

    df = palmerpenguins.load_penguins()
    classes = sorted(df["species"].unique().tolist())
    labels = np.array([classes.index(s) for s in df["species"]])
    rows = [
        {k: _none_if_nan(v) for k, v in rec.items() if k != "species"}
        for rec in df.to_dict("records")
    ]
    tr, te = stratified_split(labels, test_fraction, seed)
    return Data(
        name="penguins",
        modality="tabular",
        kind="classification",
        base_model="mlp",
        describe=f"palmerpenguins {len(tr)} train / {len(te)} test (categoricals, missing "
        "values), mlp",
        x_train=[rows[i] for i in tr],
        y_train=labels[tr],
        x_test=[rows[i] for i in te],
        y_test=labels[te],
        classes=classes,
        label_column="species",
        config={"test_fraction": test_fraction, "seed": seed},
    )


def load_digits_images(per_class_train: int, size: int, seed: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    labels = d.target.astype(int)
    tr = stratified_pick(labels, per_class_train, seed)
    te = np.setdiff1d(np.arange(len(labels)), tr)
    return Data(
        name="digits",
        modality="image",
        kind="classification",
        base_model="efficientnet_lite0",
        describe=f"scikit-learn digits {len(tr)} train / {len(te)} test, lite0 at {size} px",
        x_train=[digit_image(d.images[i]) for i in tr],
        y_train=labels[tr],
        x_test=[digit_image(d.images[i]) for i in te],
        y_test=labels[te],
        classes=[str(c) for c in range(10)],
        image_size=size,
        config={"per_class_train": per_class_train, "size": size, "seed": seed},
    )


def load_diabetes_rows(test_fraction: float, seed: int):
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    rng = np.random.RandomState(seed)
    idx = rng.permutation(len(d.target))
    n_test = int(round(len(idx) * test_fraction))
    te, tr = np.sort(idx[:n_test]), np.sort(idx[n_test:])
    rows = [{n: float(v) for n, v in zip(d.feature_names, x, strict=True)} for x in d.data]
    return Data(
        name="diabetes",
        modality="tabular",
        kind="regression",
        base_model="mlp",
        describe=f"scikit-learn diabetes (regression) {len(tr)} train / {len(te)} test, mlp",
        x_train=[rows[i] for i in tr],
        y_train=d.target[tr].astype(float),
        x_test=[rows[i] for i in te],
        y_test=d.target[te].astype(float),
        label_column="target",
        config={"test_fraction": test_fraction, "seed": seed},
    )


def load_digit_pairs(n_train: int, n_test: int, size: int, seed: int):
    """Two digits side by side on one square image, labelled with both (one label when
    they are the same digit). Train and test pairs come from disjoint digit images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.RandomState(seed)
    order = rng.permutation(len(d.target))
    pools = {"train": order[: len(order) // 2], "test": order[len(order) // 2 :]}

    def make(pool: np.ndarray, n: int):
        images, ys = [], np.zeros((n, 10), dtype=int)
        for k in range(n):
            a, b = rng.choice(pool, 2, replace=False)
            canvas = np.zeros((16, 16))
            canvas[4:12, 0:8], canvas[4:12, 8:16] = d.images[a], d.images[b]
            images.append(digit_image(canvas))
            ys[k, d.target[a]] = ys[k, d.target[b]] = 1
        return images, ys

    xtr, ytr = make(pools["train"], n_train)
    xte, yte = make(pools["test"], n_test)
    return Data(
        name="pairs",
        modality="image",
        kind="multilabel",
        base_model="efficientnet_lite0",
        describe=f"digit pairs (multi-label, 10 labels) {n_train} train / {n_test} test, "
        f"lite0 at {size} px",
        x_train=xtr,
        y_train=ytr,
        x_test=xte,
        y_test=yte,
        classes=[str(c) for c in range(10)],
        image_size=size,
        config={"n_train": n_train, "n_test": n_test, "size": size, "seed": seed},
    )


# ---------------------------------------------------------------- uploads and predict


def _csv_bytes(header: list[str], rows: list[list]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        w.writerow(["" if v is None else v for v in r])
    return buf.getvalue().encode()


def upload_payload(data: Data) -> tuple[str, bytes, dict[str, str]]:
    """(file name, bytes, form fields) of the upload a user would make of the train set."""
    if data.modality == "image":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            rows = []
            for i, (img, y) in enumerate(zip(data.x_train, data.y_train, strict=True)):
                if data.kind == "classification":  # class folders
                    zf.writestr(f"{data.classes[y]}/{i:05d}.png", png_bytes(img))
                else:  # labels.csv at the root (issue 12)
                    zf.writestr(f"images/{i:05d}.png", png_bytes(img))
                    rows.append([f"images/{i:05d}.png", _label_cell(data, y)])
            if rows:
                zf.writestr("labels.csv", _csv_bytes(["path", "label"], rows))
        form = {"name": data.name}
        if data.kind != "classification":
            form["task"] = data.task
        return "train.zip", buf.getvalue(), form
    if data.modality == "text":
        rows = [[t, data.classes[y]] for t, y in zip(data.x_train, data.y_train, strict=True)]
        body = _csv_bytes(["text", "label"], rows)
        return "train.csv", body, {"name": data.name, "task": data.task}
    columns = list(data.x_train[0])
    rows = [
        [r[c] for c in columns] + [_label_cell(data, y)]
        for r, y in zip(data.x_train, data.y_train, strict=True)
    ]
    body = _csv_bytes([*columns, data.label_column], rows)
    form = {"name": data.name, "task": data.task, "label_column": data.label_column}
    return "train.csv", body, form


def _label_cell(data: Data, y) -> str:
    if data.kind == "regression":
        return repr(float(y))
    if data.kind == "multilabel":
        return "|".join(data.classes[j] for j in np.flatnonzero(y))
    return data.classes[int(y)]


def predict_requests(data: Data) -> Iterator[dict]:
    """httpx keyword arguments of the predict requests covering the held-out set."""
    if data.modality == "image":
        for s in range(0, len(data.x_test), 32):
            chunk = data.x_test[s : s + 32]
            files = [("files", (f"{s + i}.png", png_bytes(im))) for i, im in enumerate(chunk)]
            yield {"files": files}
    else:
        for s in range(0, len(data.x_test), 256):
            yield {"json": {"inputs": data.x_test[s : s + 256]}}


def parse_prediction(data: Data, p: dict):
    if data.kind == "regression":
        return float(p["value"])
    if data.kind == "multilabel":
        y = np.zeros(len(data.classes), dtype=int)
        for label in p["labels"]:
            y[data.classes.index(label)] = 1
        return y
    return data.classes.index(p["label"]) if p["label"] in data.classes else -1


# ---------------------------------------------------------------- bare references


def _image_batch(images: list, size: int) -> torch.Tensor:
    from app.training.presets import pil_to_uint8

    return torch.stack([pil_to_uint8(img, size) for img in images])


def _trim_tokens(x: torch.Tensor) -> torch.Tensor:
    """A (N, 2, L) [ids; mask] batch cut to its longest real text."""
    length = int(x[:, 1].sum(1).max().clamp(min=1))
    return x[..., :length]


@dataclass
class Encoded:
    """Inputs as the backbone takes them: train/test tensors and the normalisation."""

    x_train: torch.Tensor
    x_test: torch.Tensor
    prep: Callable[[torch.Tensor], torch.Tensor]
    n_features: int | None = None  # tabular: encoded width


def encode(data: Data) -> Encoded:
    if data.modality == "image":
        from app.training.build import get_base_model
        from app.training.presets import EvalPreset

        spec = get_base_model(data.base_model)
        preset = EvalPreset(mean=spec.mean, std=spec.std)
        return Encoded(
            _image_batch(data.x_train, data.image_size),
            _image_batch(data.x_test, data.image_size),
            preset,
        )
    if data.modality == "text":
        from app.training import text

        tok = text.TextTokenizer(text.package_dir(), text.DEFAULT_MAX_LENGTH)
        return Encoded(tok(data.x_train), tok(data.x_test), _trim_tokens)
    xtr, xte = tabular_matrix(data)
    return Encoded(
        torch.from_numpy(xtr), torch.from_numpy(xte), lambda x: x, n_features=xtr.shape[1]
    )


def tabular_matrix(data: Data) -> tuple[np.ndarray, np.ndarray]:
    """The practitioner's encoding, fitted on train: numerics mean-imputed and
    standardised with a missing indicator, categoricals one-hot (unknown -> zeros)."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    columns = list(data.x_train[0])
    numeric = [
        c
        for c in columns
        if all(r[c] is None or isinstance(r[c], int | float) for r in data.x_train)
    ]
    categorical = [c for c in columns if c not in numeric]

    def frame(rows):
        return np.array(
            [[np.nan if r[c] is None else r[c] for c in numeric] for r in rows], dtype=float
        ), np.array([["" if r[c] is None else str(r[c]) for c in categorical] for r in rows])

    num_tr, cat_tr = frame(data.x_train)
    num_te, cat_te = frame(data.x_test)
    num = make_pipeline(SimpleImputer(add_indicator=True), StandardScaler())
    parts_tr, parts_te = [num.fit_transform(num_tr)], [num.transform(num_te)]
    if categorical:
        enc = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
        parts_tr.append(enc.fit_transform(cat_tr))
        parts_te.append(enc.transform(cat_te))
    return (
        np.hstack(parts_tr).astype(np.float32),
        np.hstack(parts_te).astype(np.float32),
    )


def build_backbone(data: Data, num_outputs: int, enc: Encoded):
    from app.training.build import build_model

    return build_model(
        base_model=data.base_model,
        num_classes=num_outputs,
        pretrained=True,
        num_inputs=enc.n_features,
    )


def pooled_features(model, x: torch.Tensor, prep, batch: int = 64) -> torch.Tensor:
    model.eval()
    out = []
    with torch.inference_mode():
        for chunk in x.split(batch):
            out.append(model.forward_features(prep(chunk)))
    return torch.cat(out)


def lr_reference(kind: str, f_train: np.ndarray, y_train, f_test: np.ndarray, seed: int):
    """(held-out predictions, chosen hyperparameter): LR with C by 5-fold CV on train;
    ridge (alpha by CV) for regression; one-vs-rest LR for multi-label."""
    from threadpoolctl import threadpool_limits

    # One BLAS thread: on a loaded 2-core machine OpenBLAS's two spinning threads made
    # each L-BFGS fit about 25x slower than one thread.
    with threadpool_limits(1, user_api="blas"):
        return _lr_fit(kind, f_train, y_train, f_test, seed)


def _lr_fit(kind: str, f_train: np.ndarray, y_train, f_test: np.ndarray, seed: int):
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeCV
    from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
    from sklearn.multiclass import OneVsRestClassifier

    if kind == "regression":
        m = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(f_train, y_train)
        return m.predict(f_test), {"alpha": float(m.alpha_)}
    if kind == "multilabel":
        grid = GridSearchCV(
            OneVsRestClassifier(LogisticRegression(max_iter=3000)),
            {"estimator__C": C_GRID},
            cv=KFold(5, shuffle=True, random_state=seed),
            scoring="f1_macro",
        ).fit(f_train, y_train)
        return grid.predict(f_test), {"C": grid.best_params_["estimator__C"]}
    m = LogisticRegressionCV(
        Cs=C_GRID, cv=StratifiedKFold(5, shuffle=True, random_state=seed), max_iter=3000
    ).fit(f_train, y_train)
    return m.predict(f_test), {"C": float(np.atleast_1d(m.C_)[0])}


NORMS = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm)


def _param_groups(modules: list, lr: float, wd: float, decay_norms: bool) -> list[dict]:
    decay, no_decay = [], []
    for mod in modules:
        for sub in mod.modules():
            for name, p in sub.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                is_norm = isinstance(sub, NORMS)
                if decay_norms or not (is_norm or name == "bias"):
                    decay.append(p)
                else:
                    no_decay.append(p)
    return [
        {"params": decay, "lr": lr, "weight_decay": wd},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0},
    ]


def _one_cycle(
    model, groups: list[dict], step_fn, n: int, *, epochs: int, batch: int, pct_start: float,
    div: float, seed: int,
) -> None:  # fmt: skip
    """fastai's fit_one_cycle: AdamW (eps 1e-5), rate up from lr/div then cosine down to
    lr/1e5, momentum 0.95 -> 0.85 -> 0.95."""
    groups = [g for g in groups if g["params"]]
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.99), eps=1e-5)
    steps = epochs * math.ceil(n / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=[g["lr"] for g in groups],
        total_steps=steps,
        pct_start=pct_start,
        div_factor=div,
        final_div_factor=1e5 / div,
        base_momentum=0.85,
        max_momentum=0.95,
    )
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=gen).split(batch):
            loss = step_fn(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


# `ft`'s unfrozen epochs when not given: as a practitioner sizes fastai's fine_tune(n) to
# the data, enough for about FT_MIN_STEPS optimizer steps, within FT_EPOCHS. (A fixed 2
# epochs left 500 digits at 16 steps an epoch with 32 steps in all: 0.350 held out.)
FT_MIN_STEPS = 150
FT_EPOCHS = (3, 12)


def ft_epochs(n_train: int, batch: int) -> int:
    steps = max(1, math.ceil(n_train / batch))
    return max(FT_EPOCHS[0], min(FT_EPOCHS[1], math.ceil(FT_MIN_STEPS / steps)))


def fine_tune(
    model, enc: Encoded, y_train: np.ndarray, *, epochs: int, freeze_epochs: int = 1,
    base_lr: float = 2e-3, lr_mult: float = 100.0, batch: int = 32, wd: float = 0.01,
    decay_norms: bool = False, pretrained: bool = True, seed: int = 0,
) -> np.ndarray:  # fmt: skip
    """fastai's Learner.fine_tune in bare PyTorch; held-out predictions.

    Frozen phase: the body in eval mode under no_grad (BatchNorm statistics frozen too),
    the head trained with one cycle (pct_start 0.99). Then lr /= 2, everything unfrozen,
    three groups (lower half of the blocks with the stem, upper half, head) at rates
    spaced geometrically from lr/lr_mult to lr, one cycle (pct_start 0.3, div 5).
    With no pretrained body (tabular), fit_one_cycle(epochs, lr) on everything."""
    torch.manual_seed(seed)
    y = torch.as_tensor(y_train, dtype=torch.long)
    x, prep, n = enc.x_train, enc.prep, len(enc.x_train)
    loss_fn = torch.nn.functional.cross_entropy

    if pretrained and freeze_epochs:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.head.parameters():
            p.requires_grad_(True)

        def frozen_step(idx):
            with torch.no_grad():
                model.eval()
                h = model.forward_features(prep(x[idx]))
            model.dropout.train()
            return loss_fn(model.head(model.dropout(h)), y[idx])

        groups = _param_groups([model.head], base_lr, wd, decay_norms)
        _one_cycle(
            model, groups, frozen_step, n, epochs=freeze_epochs, batch=batch,
            pct_start=0.99, div=25.0, seed=seed,
        )  # fmt: skip
        base_lr /= 2
    for p in model.parameters():
        p.requires_grad_(True)
    half = len(model.blocks) // 2
    parts = [[model.stem, *model.blocks[:half]], list(model.blocks[half:]), [model.head]]
    if pretrained:
        rates = [base_lr / lr_mult, base_lr / math.sqrt(lr_mult), base_lr]
        pct_start, div = 0.3, 5.0
    else:
        rates, pct_start, div = [base_lr] * 3, 0.25, 25.0
    groups = [g for mods, lr in zip(parts, rates, strict=True)
              for g in _param_groups(mods, lr, wd, decay_norms)]  # fmt: skip

    def step(idx):
        model.train()
        return loss_fn(model(prep(x[idx])), y[idx])

    _one_cycle(
        model, groups, step, n, epochs=epochs, batch=batch, pct_start=pct_start, div=div,
        seed=seed + 1,
    )  # fmt: skip
    model.eval()
    out = []
    with torch.inference_mode():
        for chunk in enc.x_test.split(64):
            out.append(model(prep(chunk)).argmax(1))
    return torch.cat(out).numpy()


def run_references(data: Data, rows: list[str], args) -> tuple[dict, float | None]:
    """{row: result} for the reference rows, and one bare forward pass's seconds over the
    training inputs (None for tabular data, which has no backbone)."""
    out: dict[str, dict] = {}
    t = time.perf_counter()
    enc = encode(data)
    encode_s = time.perf_counter() - t
    n_out = len(data.classes) if data.kind != "regression" else 1
    forward_s = None
    if data.modality == "tabular":
        f_train, f_test = enc.x_train.numpy(), enc.x_test.numpy()
        feat_s = encode_s
    else:
        model = build_backbone(data, n_out, enc)
        pooled_features(model, enc.x_train[:8], enc.prep)  # warm-up
        t = time.perf_counter()
        f_train = pooled_features(model, enc.x_train, enc.prep).numpy()
        forward_s = time.perf_counter() - t
        f_test = pooled_features(model, enc.x_test, enc.prep).numpy() if "lr" in rows else None
        feat_s = encode_s + forward_s
    if "lr" in rows:
        t = time.perf_counter()
        pred, chosen = lr_reference(data.kind, f_train, data.y_train, f_test, args.seed)
        fit_s = time.perf_counter() - t
        out["lr"] = {
            "scores": scores(data.kind, data.y_test, pred),
            "seconds": feat_s + fit_s,
            "fit_seconds": fit_s,
            "features_seconds": feat_s,
            "chosen": chosen,
        }
    for row in ("ft", "ft-wdall"):
        if row not in rows:
            continue
        if data.kind != "classification":
            out[row] = {"na": f"no bare {row} reference for {data.kind}"}
            continue
        pretrained = data.modality != "tabular"
        model = build_backbone(data, n_out, enc)
        t = time.perf_counter()
        epochs = (args.ft_epochs or ft_epochs(len(data.y_train), args.ft_batch)) if pretrained \
            else args.tab_epochs  # fmt: skip
        pred = fine_tune(
            model,
            enc,
            data.y_train,
            epochs=epochs,
            freeze_epochs=1 if pretrained else 0,
            base_lr=args.ft_lr if pretrained else 1e-2,
            batch=args.ft_batch if pretrained else 64,
            decay_norms=row == "ft-wdall",
            pretrained=pretrained,
            seed=args.seed,
        )
        out[row] = {
            "scores": scores(data.kind, data.y_test, pred),
            "seconds": encode_s + time.perf_counter() - t,
            "epochs": f"1 frozen + {epochs}" if pretrained else f"{epochs} (from scratch)",
        }
    return out, forward_s


# ---------------------------------------------------------------- the live service


@contextlib.contextmanager
def serve(repo: Path, tmp: Path) -> Iterator[httpx.Client]:
    """`python -m app.cli serve` from `repo` (its own code, embedded worker, SQLite) on a
    temp data dir; yields an authenticated client."""
    env = {
        **os.environ,
        "FINETUNE_DATA_DIR": str(tmp / "var"),
        "FINETUNE_API_KEY": KEY,
        "FINETUNE_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(repo),
    }
    for k in ("FINETUNE_DATABASE_URL", "FINETUNE_BROKER_URL"):
        env.pop(k, None)
    python = repo / ".venv" / "bin" / "python"
    port = free_port()
    log = (tmp / "serve.log").open("ab")
    proc = subprocess.Popen(
        [str(python if python.exists() else sys.executable), "-m", "app.cli", "serve",
         "--port", str(port)],
        cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", 180, proc)
        with httpx.Client(
            base_url=base, timeout=600, headers={"Authorization": f"Bearer {KEY}"}
        ) as client:
            yield client
    finally:
        stop(proc)
        log.close()


def _error(r: httpx.Response) -> str:
    try:
        e = r.json()["error"]
        return f"{r.status_code} {e.get('code')}: {e.get('message')}"[:300]
    except Exception:  # noqa: BLE001 - whatever the body is, the row shows it
        return f"{r.status_code} {r.text[:200]}"


def _names_task(r: httpx.Response) -> bool:
    """A 422 that refuses the upload's task (not its content)."""
    try:
        e = r.json()["error"]
    except (ValueError, KeyError):
        return False
    fields = [f.get("field", "") for f in e.get("fields") or []]
    return (
        e.get("field") == "task"
        or any("task" in str(f) for f in fields)
        or ("task" in e.get("message", "") and e.get("code") != "corrupt_archive")
    )


def job_spec(data: Data, row: str, args) -> dict:
    spec = {"dataset_id": None, "base_model": data.base_model}
    if data.image_size and data.image_size != 224:
        spec["image_size"] = data.image_size
    if row in ("auto", "full"):
        spec["strategy"] = row
    if row == "auto-10x":
        spec["strategy"] = "auto"
        if getattr(args, "forward_s", None):  # tabular has no forward pass to scale by
            spec["auto_budget_seconds"] = round(10 * args.forward_s, 2)
    if row == "full" and args.full_epochs:
        spec["epochs"] = args.full_epochs
    if row == "full" and getattr(args, "full_lr", None):
        spec["learning_rate"] = args.full_lr
    return spec


def run_service(client: httpx.Client, data: Data, rows: list[str], args) -> dict:
    out: dict[str, dict] = {}
    name, body, form = upload_payload(data)
    t = time.perf_counter()
    r = client.post("/v1/datasets", files={"file": (name, body)}, data=form)
    upload_s = time.perf_counter() - t
    if r.status_code == 422 and _names_task(r):
        return {row: {"na": "task not supported", "error": _error(r)} for row in rows}
    if r.status_code != 201:
        return {row: {"na": f"upload failed: {_error(r)}"} for row in rows}
    ds = r.json()
    for row in rows:
        spec = {**job_spec(data, row, args), "dataset_id": ds["id"]}
        t = time.perf_counter()
        r = client.post("/v1/jobs", json=spec)
        if r.status_code != 202:
            out[row] = {"na": _error(r), "spec": spec}
            continue
        try:
            job = wait_done(client, r.json()["id"], deadline_s=args.job_timeout, poll_s=0.25)
        except TimeoutError:
            client.post(f"/v1/jobs/{r.json()['id']}/cancel")
            out[row] = {"na": f"not done after --job-timeout {args.job_timeout:g} s (cancelled)",
                        "spec": spec}  # fmt: skip
            continue
        post_done = time.perf_counter() - t
        res = {"spec": spec, "job_id": job["id"], "status": job["status"],
               "post_to_done_s": post_done, "upload_s": upload_s}  # fmt: skip
        if job.get("finished_at") and job.get("created_at"):
            res["job_s"] = (
                datetime.fromisoformat(job["finished_at"])
                - datetime.fromisoformat(job["created_at"])
            ).total_seconds()
        res["epochs_run"] = len(job.get("history") or [])
        probe = next((h for h in job.get("history") or [] if h.get("stage") == "probe"), None)
        if probe:  # what the exact probe chose (C, its grid), for the notes
            res["probe"] = {k: probe.get(k) for k in ("C", "grid", "val_accuracy", "val_loss")}
        res["resolved_spec"] = job.get("spec")  # what the service chose for the defaults
        res["service_metrics"] = {
            k: v for k, v in (job.get("metrics") or {}).items() if isinstance(v, int | float)
        }
        if job.get("leaderboard"):
            res["leaderboard"] = job["leaderboard"]
        if job["status"] != "succeeded":
            res["na"] = f"{job['status']}: {(job.get('error') or {}).get('message', '')}"[:300]
            out[row] = res
            continue
        preds, t = [], time.perf_counter()
        for req in predict_requests(data):
            r = client.post(f"/v1/models/{job['model_id']}/predict", **req)
            if r.status_code != 200:
                res["na"] = f"predict {_error(r)}"
                break
            preds.extend(parse_prediction(data, p) for p in r.json()["predictions"])
        res["predict_s"] = time.perf_counter() - t
        if "na" not in res:
            y_pred = np.array(preds)
            res["scores"] = scores(data.kind, data.y_test, y_pred)
        out[row] = res
    return out


# ---------------------------------------------------------------- the table


def _fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def table(results: dict) -> str:
    lines = [
        "| dataset | row | acc (R² reg.; exact-set multi-label) | macro-F1 (RMSE reg.) "
        "| job s (created→finished) | POST→done s | own s (refs) | notes |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, d in results["datasets"].items():
        kind = d["kind"]
        fwd = d.get("bare_forward_s")
        lines.append(
            f"| **{name}** | {d['describe']}; one bare forward over train: "
            f"{_fmt(fwd, 2) + ' s' if fwd is not None else 'n/a'}"
            f"{' (from an earlier run)' if d.get('bare_forward_reused') else ''} | | | | | | |"
        )
        for row, r in d["rows"].items():
            if "scores" not in r:
                note = r.get("na", "")
                if note == "task not supported":
                    note = "n/a (task not supported)"
                lines.append(f"| {name} | {row} | n/a | n/a | | | | {note} |")
                continue
            m1, m2 = headline(kind, r["scores"])
            notes = []
            if "chosen" in r:
                notes.append(", ".join(f"{k}={v:g}" for k, v in r["chosen"].items()))
            if "epochs" in r:
                notes.append(f"epochs {r['epochs']}")
            if "epochs_run" in r:
                strategy = (r.get("resolved_spec") or {}).get("strategy")
                notes.append(f"{strategy + ', ' if strategy else ''}{r['epochs_run']} epochs")
            if r.get("leaderboard"):
                notes.append(f"{len(r['leaderboard'])} candidates")
            if r.get("reused"):
                notes.append("reference reused from an earlier run")
            lines.append(
                f"| {name} | {row} | {_fmt(m1)} | {_fmt(m2, 3 if kind != 'regression' else 1)} "
                f"| {_fmt(r.get('job_s'), 1)} | {_fmt(r.get('post_to_done_s'), 1)} "
                f"| {_fmt(r.get('seconds'), 1)} | {'; '.join(notes)} |"
            )
    return "\n".join(lines)


def _acc(rows: dict, row: str) -> float | None:
    r = rows.get(row) or {}
    return r["scores"]["accuracy"] if "scores" in r else None


def target_checks(results: dict) -> list[str]:
    out, auto_wins, auto_n = [], 0, 0
    for name, d in results["datasets"].items():
        if d["kind"] != "classification":
            continue
        rows, fwd = d["rows"], d.get("bare_forward_s")

        lr, ft, default, auto = (_acc(rows, r) for r in ("lr", "ft", "default", "auto"))
        if lr is not None and default is not None:
            ok = default >= lr - 0.01
            out.append(f"- {name}: default {default:.3f} ≥ LR {lr:.3f} − 0.01: "
                       f"{'PASS' if ok else 'FAIL'}")  # fmt: skip
        if fwd is not None and rows.get("default", {}).get("job_s") is not None:
            job_s, bound = rows["default"]["job_s"], 1.3 * fwd + 2
            out.append(f"- {name}: default job {job_s:.1f} s ≤ 1.3 × {fwd:.2f} + 2 = "
                       f"{bound:.1f} s: {'PASS' if job_s <= bound else 'FAIL'}")  # fmt: skip
        refs = [v for v in (lr, ft) if v is not None]
        if auto is not None and refs:
            auto_n += 1
            auto_wins += auto >= max(refs)
            out.append(f"- {name}: auto {auto:.3f} vs better reference {max(refs):.3f}: "
                       f"{'≥' if auto >= max(refs) else '<'}")  # fmt: skip
            if fwd is not None and rows["auto"].get("job_s") is not None:
                job_s = rows["auto"]["job_s"]
                out.append(f"- {name}: auto job {job_s:.1f} s ≤ 10 × {fwd:.2f} = {10 * fwd:.1f} "
                           f"s: {'PASS' if job_s <= 10 * fwd else 'FAIL'}")  # fmt: skip
        fast = _acc(rows, "auto-10x")
        job_s = (rows.get("auto-10x") or {}).get("job_s")
        if fast is not None and refs and job_s is not None:
            budget = (rows["auto-10x"].get("spec") or {}).get("auto_budget_seconds")
            line = (f"- {name}: auto with a {budget} s budget {fast:.3f} vs better reference "
                    f"{max(refs):.3f}: {'≥' if fast >= max(refs) else '<'}, job {job_s:.1f} s")
            if fwd:
                verdict = "PASS" if job_s <= 10 * fwd else "FAIL"
                line += f" (≤ 10 × forward {10 * fwd:.1f} s: {verdict})"
            out.append(line)  # fmt: skip
    if auto_n:
        ok = auto_wins >= min(3, auto_n)
        out.append(f"- auto ≥ the better reference on {auto_wins} of {auto_n} datasets "
                   f"(target: 3 of 4): {'PASS' if ok else 'FAIL'}")  # fmt: skip
    return out


# ---------------------------------------------------------------- main


def ensure_installed(names: list[str]) -> None:
    """Install what the chosen datasets need (Debian packages, PyPI) if absent."""
    apt = []
    if "fashion" in names and not any(FASHION_DIR.glob("train-images-idx3-ubyte*")):
        apt.append("dataset-fashion-mnist")
    if "wordnet" in names and not WORDNET_NOUNS.is_file():
        apt.append("wordnet-base")
    if apt:
        subprocess.run(["apt-get", "install", "-y", *apt], check=True)
    if "penguins" in names:
        try:
            import palmerpenguins  # noqa: F401
        except ImportError:
            subprocess.run([sys.executable, "-m", "pip", "install", "palmerpenguins"], check=True)


def load(name: str, quick: bool, args) -> Data:
    s = args.seed
    if name == "fashion":
        n, size = (100, 64) if quick else (args.fashion_train, args.fashion_size)
        return load_fashion(n, 100 if quick else args.fashion_test, size, s)
    if name == "wordnet":
        return load_wordnet(10 if quick else 50, 10 if quick else 50, 8, s)
    if name == "penguins":
        return load_penguins(0.3, s)
    if name == "digits":
        return load_digits_images(10 if quick else 50, 32 if quick else args.digits_size, s)
    if name == "diabetes":
        return load_diabetes_rows(0.25, s)
    if name == "pairs":
        return load_digit_pairs(100 if quick else 600, 100 if quick else 400,
                                32 if quick else args.digits_size, s)  # fmt: skip
    raise SystemExit(f"unknown dataset {name!r}")


def reusable(old: dict | None, data: Data, row: str) -> dict | None:
    """A reference row from an earlier run of the same dataset config, if given."""
    if not old:
        return None
    d = old.get("datasets", {}).get(data.name)
    if not d or d.get("config") != data.config or row not in d.get("rows", {}):
        return None
    r = d["rows"][row]
    return {**r, "reused": True} if "scores" in r else None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="digits,wordnet,penguins,fashion,diabetes,pairs")
    ap.add_argument(
        "--rows",
        help=f"of {','.join(REFERENCE_ROWS + SERVICE_ROWS)} (default "
        f"{','.join(DEFAULT_ROWS)}; --quick: {','.join(QUICK_ROWS)})",
    )
    ap.add_argument("--skip", default="", help="dataset:row pairs to leave out, e.g. "
                    "fashion:ft,fashion:full (the costly ones at 224 px)")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    ap.add_argument("--repo", type=Path, default=REPO, help="the service's code")
    ap.add_argument("--json", type=Path, default=REPO / "bench/results/quality.json")
    ap.add_argument("--references", type=Path, action="append", default=[],
                    help="reuse reference rows (same dataset config) from this earlier "
                    "JSON; may be given more than once")  # fmt: skip
    ap.add_argument("--reuse-forward", action="store_true",
                    help="when every reference row is reused, take the bare forward time "
                    "from --references too instead of measuring it again")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fashion-train", type=int, default=1000)
    ap.add_argument("--fashion-test", type=int, default=1000)
    ap.add_argument("--fashion-size", type=int, default=224)
    ap.add_argument("--digits-size", type=int, default=64)
    ap.add_argument("--ft-epochs", type=int, help="unfrozen epochs of `ft` (default: enough "
                    f"for {FT_MIN_STEPS} steps, {FT_EPOCHS[0]} to {FT_EPOCHS[1]})")  # fmt: skip
    ap.add_argument("--ft-batch", type=int, default=32)
    ap.add_argument("--ft-lr", type=float, default=2e-3, help="fastai's fine_tune base_lr")
    ap.add_argument("--tab-epochs", type=int, default=50)
    ap.add_argument("--full-epochs", type=int, help="epochs of the `full` row (service default)")
    ap.add_argument("--full-lr", type=float, help="learning rate of the `full` row (default: "
                    "the service's)")  # fmt: skip
    ap.add_argument("--job-timeout", type=float, default=3600)
    ap.add_argument("--no-install", action="store_true")
    args = ap.parse_args(argv)
    names = [n for n in args.datasets.split(",") if n]
    rows = [r for r in (args.rows or ",".join(QUICK_ROWS if args.quick else DEFAULT_ROWS))
            .split(",") if r]  # fmt: skip
    skip = {tuple(p.split(":", 1)) for p in args.skip.split(",") if ":" in p}
    unknown = set(rows) - set(REFERENCE_ROWS + SERVICE_ROWS)
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}")
    if args.quick:
        args.ft_epochs, args.tab_epochs = 1, 10
    if not args.no_install:
        ensure_installed(names)
    old: dict = {"datasets": {}}
    for path in args.references:  # merged row by row, later files first
        for name, d in json.loads(path.read_text()).get("datasets", {}).items():
            prev = old["datasets"].get(name)
            if prev is not None and prev.get("config") == d.get("config"):
                d = {**prev, **d, "rows": {**prev["rows"], **d["rows"]}}
            old["datasets"][name] = d
    torch.manual_seed(args.seed)
    repo = args.repo.resolve()
    results = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "repo": str(repo),
        "repo_commit": _git_head(repo),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
        "quick": args.quick,
        "argv": sys.argv[1:] if argv is None else argv,
        "datasets": {},
    }
    # SIGTERM (a killed run) unwinds like Ctrl-C, so the service below is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        with serve(repo, Path(tmp)) as client:
            for name in names:
                data = load(name, args.quick, args)
                mine = [r for r in rows if (name, r) not in skip]
                ref_rows = [r for r in mine if r in REFERENCE_ROWS]
                reused = {r: reusable(old, data, r) for r in ref_rows}
                todo = [r for r in ref_rows if reused[r] is None]
                print(f"[{name}] references {todo or '(reused)'} ...", flush=True)
                old_fwd = old["datasets"].get(name, {}).get("bare_forward_s")
                if not todo and args.reuse_forward and old_fwd is not None:
                    refs, fwd = {}, old_fwd  # skip even the forward pass (224 px: minutes)
                else:
                    refs, fwd = run_references(data, todo, args)
                refs.update({r: v for r, v in reused.items() if v is not None})
                args.forward_s = fwd  # the auto-10x row's budget
                print(f"[{name}] service rows ...", flush=True)
                svc = run_service(client, data, [r for r in mine if r in SERVICE_ROWS], args)
                results["datasets"][name] = {
                    "describe": data.describe,
                    "kind": data.kind,
                    "task": data.task,
                    "config": data.config,
                    "n_train": len(data.x_train),
                    "n_test": len(data.x_test),
                    "bare_forward_s": fwd,
                    "bare_forward_reused": not todo and args.reuse_forward and fwd == old_fwd,
                    "rows": {r: (refs | svc)[r] for r in mine if r in refs | svc},
                }
                _write(args.json, results)
                print(table({"datasets": {name: results["datasets"][name]}}), flush=True)
    results["total_s"] = time.perf_counter() - t0
    results["load_after"] = os.getloadavg()
    results["targets"] = target_checks(results)
    _write(args.json, results)
    print(f"\nModel quality, service at {repo} ({results['repo_commit']}), started "
          f"{results['started']}; {results['threads']} torch threads on {results['cpus']} "
          f"shared, loaded CPUs (load average {results['load_before'][0]:.1f} before, "
          f"{results['load_after'][0]:.1f} after); total {results['total_s']:.0f} s\n")  # fmt: skip
    print(table(results))
    print("\nTargets (issue 10):")
    print("\n".join(results["targets"]) or "- (none: no classification dataset ran)")
    print(f"\nJSON: {args.json}")
    return results


def _git_head(repo: Path) -> str:
    try:

        def git(*a: str) -> str:
            return subprocess.run(["git", "-C", str(repo), *a], capture_output=True,
                                  text=True, check=True).stdout.strip()  # fmt: skip

        dirty = any(not line.startswith("??") for line in git("status", "--porcelain").splitlines())
        return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def _write(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=_json_default))


def _json_default(o):
    if isinstance(o, np.integer | np.floating):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


if __name__ == "__main__":
    main()
