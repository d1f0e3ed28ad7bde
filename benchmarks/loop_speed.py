"""How fast is `recipe.fit` next to the training loops people write by hand?

Same model (examples/digits.py's MLP 64-128-128-10), same data (1,437 train / 360 val digits), same epochs,
batch size 64, AdamW lr 3e-4, and a full validation pass (loss + accuracy) after every epoch, for:

  fit         recipe.fit(task, epochs, batch_size=64, progress=False, device=...)
  dataloader  a hand loop over DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
  tensors     a hand loop indexing in-memory tensors with a torch.randperm permutation
  tensors+fused  the same with AdamW(fused=True), the kernel fit picks: the rest of the gap is fit's own overhead
  lightning   lightning's Trainer, only when `lightning` or `pytorch_lightning` is importable

Every timed run includes building the model and the optimizer (and, for fit, its set-up: task checks, data
placement); loading the digits is outside the timer. Contenders are interleaved (one warm-up round, then R rounds in
a new shuffled order each time) and the median is reported.

    python benchmarks/loop_speed.py [--epochs N] [--repeats R] [--device cpu|cuda] [--threads T]
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/ lives next to recipe/, outside the package

import recipe
from examples.digits import MLP, load_digits_split

BATCH_SIZE = 64
LR = 3e-4
WEIGHT_DECAY = 0.0  # fit's default; AdamW's own default is 0.01, so the hand loops pass it to run the same update
SEED = 0

Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # x_train, y_train, x_val, y_val (on the CPU)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- the contenders: each trains a fresh model for `epochs` and returns the last epoch's (val_loss, val_accuracy) ---


def run_fit(data: Data, epochs: int, device: torch.device) -> tuple[float, float]:
    # A fresh Task per run (built outside the timer, like a DataLoader), so fit's one-off checks are timed every run.
    task = TASKS.pop()
    result = recipe.fit(task, epochs=epochs, batch_size=BATCH_SIZE, lr=LR, progress=False, device=device, seed=SEED)
    last = result.history[-1]
    return last["val_loss"], last["val_accuracy"]


def run_dataloader(data: Data, epochs: int, device: torch.device) -> tuple[float, float]:
    x, y, xv, yv = data
    torch.manual_seed(SEED)
    model = MLP().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    pin = device.type == "cuda"
    train = DataLoader(TensorDataset(x, y), batch_size=BATCH_SIZE, shuffle=True, pin_memory=pin)
    val = DataLoader(TensorDataset(xv, yv), batch_size=1024, pin_memory=pin)
    for _ in range(epochs):
        model.train()
        for xb, yb in train:
            xb, yb = xb.to(device, non_blocking=pin), yb.to(device, non_blocking=pin)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        total, correct = 0.0, 0
        with torch.no_grad():
            for xb, yb in val:
                xb, yb = xb.to(device), yb.to(device)
                out = model(xb)
                total += F.cross_entropy(out, yb, reduction="sum").item()
                correct += (out.argmax(1) == yb).sum().item()
        val_loss, val_acc = total / len(xv), correct / len(xv)
    return val_loss, val_acc


def run_tensors(data: Data, epochs: int, device: torch.device, fused: bool = False) -> tuple[float, float]:
    x, y, xv, yv = (t.to(device) for t in data)
    torch.manual_seed(SEED)
    model = MLP().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, **({"fused": True} if fused else {}))
    n = len(x)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, device=device)
        for i in range(0, n, BATCH_SIZE):
            idx = perm[i : i + BATCH_SIZE]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            out = model(xv)
            val_loss = F.cross_entropy(out, yv).item()
            val_acc = (out.argmax(1) == yv).float().mean().item()
    return val_loss, val_acc


def run_tensors_fused(data: Data, epochs: int, device: torch.device) -> tuple[float, float]:
    """The tensor loop with AdamW(fused=True), the kernel fit picks: what is left is fit's own overhead."""
    return run_tensors(data, epochs, device, fused=True)


def lightning_module() -> tuple[object, type] | None:
    """(the `lightning.pytorch` module, a LightningModule class for the MLP), or None when Lightning is absent."""
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl
        except ImportError:
            return None

    class LitMLP(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = MLP()

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            xb, yb = batch
            return F.cross_entropy(self.model(xb), yb)

        def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            xb, yb = batch
            out = self.model(xb)
            self.log("val_loss", F.cross_entropy(out, yb), batch_size=len(yb))
            self.log("val_acc", (out.argmax(1) == yb).float().mean(), batch_size=len(yb))

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.AdamW(self.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    return pl, LitMLP


def run_lightning(data: Data, epochs: int, device: torch.device) -> tuple[float, float]:
    x, y, xv, yv = data
    found = lightning_module()
    assert found is not None
    pl, lit_mlp = found
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric"):  # banners, tips
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.manual_seed(SEED)
    model = lit_mlp()
    pin = device.type == "cuda"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(  # type: ignore[attr-defined]
            max_epochs=epochs,
            accelerator=device.type,
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(
            model,
            DataLoader(TensorDataset(x, y), batch_size=BATCH_SIZE, shuffle=True, pin_memory=pin),
            DataLoader(TensorDataset(xv, yv), batch_size=1024, pin_memory=pin),
        )
    metrics = trainer.callback_metrics
    return float(metrics["val_loss"]), float(metrics["val_acc"])


# ---- the harness -------------------------------------------------------------------------------------------------

TASKS: list[recipe.Task] = []  # fresh Tasks for fit, built outside the timer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads, the same for every contender (default: 1; a 64x128 matmul "
        "gains nothing from more, and on a busy 2-core machine a second thread costs a lot)",
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    x_train, x_val, y_train, y_val = load_digits_split(SEED)
    data: Data = (
        torch.from_numpy(x_train),
        torch.from_numpy(y_train).long(),
        torch.from_numpy(x_val),
        torch.from_numpy(y_val).long(),
    )

    contenders: dict[str, Callable[[Data, int, torch.device], tuple[float, float]]] = {
        "fit": run_fit,
        "dataloader": run_dataloader,
        "tensors": run_tensors,
        "tensors+fused": run_tensors_fused,
    }
    if lightning_module() is not None:
        contenders["lightning"] = run_lightning
    else:
        print("note: lightning / pytorch_lightning is not importable; skipping the Lightning Trainer contender.")

    steps = args.epochs * math.ceil(len(x_train) / BATCH_SIZE)
    print(
        f"digits MLP 64-128-128-10, {len(x_train)} train / {len(x_val)} val, {args.epochs} epochs x "
        f"{steps // args.epochs} steps, batch {BATCH_SIZE}, AdamW lr {LR}, device {device}, "
        f"torch {torch.__version__}, {args.threads} thread(s), {args.repeats} repeats + 1 warm-up, interleaved"
    )

    wall: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    final: dict[str, tuple[float, float]] = {}
    order = list(contenders)
    rng = random.Random(SEED)
    for round_ in range(args.repeats + 1):  # round 0 warms up (imports, allocator, first-call caches), not recorded
        rng.shuffle(order)
        for name in order:
            if name == "fit":
                TASKS.append(
                    recipe.Task(
                        train=(x_train, y_train),
                        val=(x_val, y_val),
                        model=MLP,
                        loss="cross_entropy",
                        num_classes=10,
                        name="digits-mlp",
                    )
                )
            torch.set_num_threads(args.threads)  # the same for everyone, whatever a contender did before
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            final[name] = contenders[name](data, args.epochs, device)
            sync(device)
            if round_ > 0:
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)

    base = statistics.median(wall["fit"])
    print()
    print(
        f"{'contender':<14} {'median s':>9} {'min s':>7} {'cpu s':>7} {'steps/s':>8} {'vs fit':>7}"
        f"   last epoch val loss / acc"
    )
    for name in contenders:
        med = statistics.median(wall[name])
        loss, acc = final[name]
        print(
            f"{name:<14} {med:>9.3f} {min(wall[name]):>7.3f} {statistics.median(cpu[name]):>7.3f} "
            f"{steps / med:>8.0f} {med / base:>6.2f}x   {loss:.3f} / {acc:.3f}"
        )
    print(
        "(vs fit: the contender's median time / fit's; above 1.00x, fit is faster. cpu s: median process CPU time,"
        " steadier than wall time on a busy machine.)"
    )
    vs_loader = statistics.median(wall["dataloader"]) / base
    vs_tensor = statistics.median(wall["tensors"]) / base
    line = (
        f"fit vs DataLoader loop: {vs_loader:.2f}x {'faster' if vs_loader >= 1 else 'slower'}; "
        f"fit vs tensor loop: {vs_tensor:.2f}x (within 5%: {'yes' if vs_tensor >= 0.95 else 'no'})"
    )
    line += f"; fit vs fused tensor loop: {statistics.median(wall['tensors+fused']) / base:.2f}x"
    if "lightning" in wall:
        line += f"; fit vs Lightning: {statistics.median(wall['lightning']) / base:.2f}x"
    print()
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
