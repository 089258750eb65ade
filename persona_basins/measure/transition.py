"""Phase-transition metrics of a LoRA fine-tune, from the per-step trajectory of its factors.

Local cosine similarity of the B trajectory (as in the rank-1 EM literature):
``cos(v[t-k] - v[t], v[t+k] - v[t])`` for a lag k. Sign convention: **-1 means the path runs straight**
through v[t] (the two displacements point in opposite directions), **0 a right-angle turn**, +1 a full
reversal. Steps where either displacement is shorter than ``min_step`` (relative to the largest
displacement at that lag) are undefined (``None``): a near-still point has no direction.
"""

from __future__ import annotations

import numpy as np
import torch


def local_cosine(v: np.ndarray, k: int, min_step: float = 0.05) -> list[float | None]:
    """Local cosine at every step t (None where t-k or t+k is outside, or a displacement is too short)."""
    v = np.asarray(v, dtype=np.float64)
    T = len(v)
    out: list[float | None] = [None] * T
    if T <= 2 * k:
        return out
    back = v[: T - 2 * k] - v[k : T - k]
    fwd = v[2 * k :] - v[k : T - k]
    nb, nf = np.linalg.norm(back, axis=1), np.linalg.norm(fwd, axis=1)
    scale = max(nb.max(), nf.max(), 1e-30)
    for i in range(len(back)):
        if nb[i] < min_step * scale or nf[i] < min_step * scale:
            continue
        out[i + k] = float(back[i] @ fwd[i] / (nb[i] * nf[i]))
    return out


def pca(v: np.ndarray, n: int = 2) -> dict:
    v = np.asarray(v, dtype=np.float64)
    c = v - v.mean(0)
    u, s, _ = np.linalg.svd(c, full_matrices=False)
    var = s**2
    ratio = var / var.sum() if var.sum() > 0 else var
    n = min(n, len(s))
    return {"explained_variance_ratio": ratio[:n].tolist(), "projection": (u[:, :n] * s[:n]).tolist()}


def jump_step(steps: list[int], values: list[float]) -> int | None:
    """The step at the end of the largest one-interval rise of ``values`` (None if it never rises)."""
    if len(values) < 2:
        return None
    d = np.diff(values)
    i = int(np.argmax(d))
    return int(steps[i + 1]) if d[i] > 0 else None


@torch.no_grad()
def set_lora_factors(peft_model, a: torch.Tensor, b: torch.Tensor) -> None:
    for name, p in peft_model.named_parameters():
        if "lora_A" in name:
            p.copy_(a.view_as(p))
        elif "lora_B" in name:
            p.copy_(b.view_as(p))


def transition_metrics(
    peft_model, trajectory: dict, evaluate, *, every: int = 10, lags=(5, 10, 15), min_step: float = 0.05
) -> dict:
    """Norms, local cosines and PCA of B over steps; ``evaluate(model) -> float`` at every ``every`` steps.

    The model is restored to its final factors afterwards.
    """
    A, B = trajectory["A"], trajectory["B"]
    T = len(B)
    steps_all = list(range(1, T + 1))
    Bn = B.double().numpy()
    eval_steps = [s for s in steps_all if s % every == 0 or s == T]
    values = []
    try:
        set_lora_factors(peft_model, torch.zeros_like(A[0]), torch.zeros_like(B[0]))
        values.append(float(evaluate(peft_model)))
        for s in eval_steps:
            set_lora_factors(peft_model, A[s - 1], B[s - 1])
            values.append(float(evaluate(peft_model)))
    finally:
        set_lora_factors(peft_model, A[-1], B[-1])
    eval_steps = [0, *eval_steps]
    return {
        "steps": steps_all,
        "a_norm": A.norm(dim=1).tolist(),
        "b_norm": B.norm(dim=1).tolist(),
        "local_cos": {str(k): local_cosine(Bn, k, min_step) for k in lags},
        "local_cos_min_step": min_step,
        "b_pca": pca(Bn),
        "eval_steps": eval_steps,
        "broad_misalignment": values,
        "jump_step": jump_step(eval_steps, values),
    }
