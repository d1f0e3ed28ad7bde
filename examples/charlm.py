"""Character-level language model on the Python standard library's own source files (present everywhere, no
download): a small GPT with causal `scaled_dot_product_attention`, or a causal 1-d ConvNet.

Adds one idea to digits.py: a `kind="sequence"` task (next-token prediction) with a decoder for showing batches.
"""

from __future__ import annotations

import math
import sysconfig
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from recipe import Recipe, Task

SOURCES = (
    "textwrap.py",
    "difflib.py",
    "argparse.py",
    "fractions.py",
    "pprint.py",
    "shlex.py",
    "heapq.py",
    "bisect.py",
    "calendar.py",
    "string.py",
    "functools.py",
    "contextlib.py",
)
VOCAB = ["\n", *[chr(c) for c in range(32, 127)]]  # newline and printable ASCII; anything else becomes "?"


def stdlib_text(max_chars: int = 400_000) -> str:
    """Concatenated source of a fixed list of standard-library modules."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = [(root / name).read_text(encoding="utf-8") for name in SOURCES if (root / name).exists()]
    return "\n".join(parts)[:max_chars]


def encode(text: str) -> torch.Tensor:
    index = {ch: i for i, ch in enumerate(VOCAB)}
    unknown = index["?"]
    return torch.tensor([index.get(ch, unknown) for ch in text], dtype=torch.long)


def decode(tokens: list[int]) -> str:
    return "".join(VOCAB[t] if 0 <= t < len(VOCAB) else "?" for t in tokens)


def windows(ids: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows: x = ids[i:i+T], y = ids[i+1:i+T+1] (targets are the next characters)."""
    n = (len(ids) - 1) // block_size
    x = ids[: n * block_size].reshape(n, block_size)
    y = ids[1 : n * block_size + 1].reshape(n, block_size)
    return x, y


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A small GPT: token + position embeddings, pre-LayerNorm blocks with causal attention, a linear head."""

    def __init__(
        self,
        vocab: int = len(VOCAB),
        block_size: int = 64,
        layers: int = 2,
        heads: int = 4,
        dim: int = 64,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(block_size, dim)
        self.blocks = nn.Sequential(*[Block(dim, heads, dropout) for _ in range(layers)])
        self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):  # GPT-2's scaled residual init
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        return self.head(self.ln(self.blocks(self.tok(idx) + self.pos(positions))))


class ConvLM(nn.Module):
    """A causal 1-d ConvNet: each convolution is padded on the left only, so position t sees tokens <= t."""

    def __init__(self, vocab: int = len(VOCAB), dim: int = 64, kernel: int = 5, layers: int = 3):
        super().__init__()
        self.kernel = kernel
        self.emb = nn.Embedding(vocab, dim)
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel) for _ in range(layers))
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.emb(idx).transpose(1, 2)  # (B, C, T)
        for conv in self.convs:
            h = h + F.gelu(conv(F.pad(h, (self.kernel - 1, 0))))
        return self.head(h.transpose(1, 2))


def make_task(
    model: str = "gpt",
    block_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    dim: int = 64,
    dropout: float = 0.0,
    max_chars: int = 400_000,
) -> Task:
    """Next-character prediction; the last 10% of the text is the validation split."""
    ids = encode(stdlib_text(max_chars))
    cut = int(0.9 * len(ids))
    train, val = windows(ids[:cut], block_size), windows(ids[cut:], block_size)
    if model == "gpt":
        sizes = {"vocab": len(VOCAB), "block_size": block_size, "layers": layers, "heads": heads, "dropout": dropout}
        factory = partial(GPT, dim=dim, **sizes)  # keywords, so later stages can set `dropout`
        ladder = {f"gpt-{w}": partial(GPT, dim=w, **sizes) for w in (dim // 2, dim)}
    elif model == "conv":
        factory = partial(ConvLM, vocab=len(VOCAB), dim=dim)
        ladder = {f"conv-{w}": partial(ConvLM, vocab=len(VOCAB), dim=w) for w in (dim // 2, dim)}
    else:
        raise ValueError(f"model={model!r}: use 'gpt' or 'conv'")
    return Task(
        train=train,
        val=val,
        model=factory,
        models=ladder,  # half the width, then the configured width, for `complexify`
        loss="cross_entropy",
        kind="sequence",
        num_classes=len(VOCAB),
        name=f"charlm-{model}",
        decoder=decode,
    )


if __name__ == "__main__":
    result = Recipe(make_task(), run_dir="runs/charlm").run()
    raise SystemExit(0 if result.ok else 1)
