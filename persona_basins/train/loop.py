"""One training loop for everything: pretraining, post-training (SFT), adapter and full fine-tunes."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..models.lm import PAD_ID, lm_loss
from ..progress import Progress


def train_lm(
    model,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor | None,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    seed: int = 0,
    desc: str = "train",
    on_step: Callable[[int, float], None] | None = None,
    progress: bool = True,
    pad_id: int = PAD_ID,
    optimizer: str = "adamw",
    grad_clip: float | None = None,
    on_grad_norm: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train the parameters of ``model`` that require grad; return the loss per step.

    Batches are drawn with replacement from ``input_ids`` by a seeded generator; the learning rate warms
    up linearly then decays by a cosine to 10%. ``on_step(step, loss)`` runs after each optimiser step
    (1-based step), e.g. to save checkpoints. ``pad_id`` is the right-padding id of ``input_ids``
    (default the world's ``PAD_ID``; pass another for a HF tokenizer).

    ``optimizer="sgd"``: plain SGD at the constant rate ``lr`` (no momentum, no schedule, no weight decay):
    a step is then proportional to the gradient, which the eigenform cycle needs (its displacement must
    vanish at a fixed point). ``grad_clip``: clip the gradient norm per step; ``on_grad_norm(step, norm)``
    sees the norm before clipping.
    """
    if optimizer not in ("adamw", "sgd"):
        raise ValueError(f"unknown optimizer {optimizer!r}")
    if len(input_ids) == 0:
        raise ValueError("no training data")
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr)
    else:
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr,
            betas=(0.9, 0.98),
        )

    def lr_at(step: int) -> float:
        if optimizer == "sgd":
            return lr
        if warmup_steps and step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        frac = (step - warmup_steps) / max(1, steps - warmup_steps)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    gen = torch.Generator().manual_seed(seed)
    model.train()
    losses: list[float] = []
    bar = Progress(steps, desc, enabled=progress)  # a bar on a terminal, a line every 30 s elsewhere
    running = None
    for step in range(steps):
        idx = torch.randint(0, len(input_ids), (batch_size,), generator=gen)
        batch = input_ids[idx]
        # trim trailing all-pad columns: documents vary in length
        width = int((batch != pad_id).sum(1).max())
        batch = batch[:, :width]
        mask = None if loss_mask is None else loss_mask[idx][:, :width]
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = lm_loss(model, batch, mask, pad_id=pad_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip or on_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else math.inf)
            if on_grad_norm is not None:
                on_grad_norm(step + 1, float(norm))
        opt.step()
        val = float(loss.detach())
        if not math.isfinite(val):
            raise FloatingPointError(f"{desc}: loss became {val} at step {step + 1}; lower the learning rate")
        losses.append(val)
        running = val if running is None else 0.95 * running + 0.05 * val
        if step % 10 == 0:
            bar.set_postfix(loss=f"{running:.3f}")
        bar.update()
        if on_step is not None:
            on_step(step + 1, val)
    bar.close()
    model.eval()
    return losses
