"""Readouts behind the "faithfulness to EM in LLMs" table (docs/EM.md): pure measurements on a model state.

- :func:`context_misalignment`: broad misalignment in each of :data:`~.persona.EM_CONTEXTS` (conditional
  misalignment: does EM return when a prompt resembles the training context?), one readout per context
  (:func:`~.persona.broad_readout`, the EM readout's own in the plain assistant context);
- :func:`write_direction` / :func:`random_direction` / :func:`ablated_misalignment`: a fine-tune's write
  direction (the B vector of a rank-1 adapter) projected out of the residual stream of another fine-tune,
  and a random unit direction as the control (Soligo et al. 2025);
- :func:`early_stopping`: over a fine-tune's checkpoints, when broad misalignment appears against when the
  narrow task is learned (Schreiber & Goldstein 2026);
- :func:`exact_spearman`: a rank correlation with its exact permutation p-value (few seeds).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.stats import rankdata

from ..errors import UserError
from .persona import EM_CONTEXTS, broad_readout
from .vectors import ablating, ablating_output

if TYPE_CHECKING:
    from ..models.organism import Organism

# The early-stopping checkpoint: the first one whose narrow-rate gain over step 0 reaches this share of the
# final gain ("the task has converged"), fixed before any run was read.
TASK_SHARE = 0.9


def context_misalignment(org: Organism, contexts=EM_CONTEXTS) -> dict[str, dict[str, float]]:
    """Per context: mean broad misalignment, harmful mass and well-formed mass of ``org.model`` over every
    non-code request (``context_misalignment(org)["assistant"]["broad_misalignment"]`` is
    :func:`~.persona.em_readout`'s ``broad_misalignment``)."""
    out = {}
    for ctx in contexts:
        r = broad_readout(org, ctx)
        out[ctx] = {
            "broad_misalignment": float(r.misaligned.mean()),
            "broad_harm": float(r.harmful.mean()),
            "wellformed": float(r.wellformed.mean()),
        }
    return out


def write_direction(peft_model) -> torch.Tensor:
    """The B vector (what the edit writes into the module's output) of a one-module rank-1 LoRA adapter."""
    bs = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    if len(bs) != 1 or bs[0].shape[-1] != 1:
        raise UserError(f"write_direction needs a one-module rank-1 adapter, found {len(bs)} lora_B weights")
    return bs[0].detach().float().flatten().clone()


def random_direction(dim: int, seed: int) -> torch.Tensor:
    """A uniformly random unit vector of ``dim`` entries (normal draws, normalised), fixed by ``seed``."""
    v = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()
    return v / v.norm()


def ablated_misalignment(
    org: Organism, direction: torch.Tensor, layer: int, context: str = "assistant", module: str | None = None
) -> dict:
    """:func:`context_misalignment` in one context with ``direction`` projected out at every position of the
    output of decoder layer ``layer`` (the residual stream after it: :func:`~.vectors.ablating`), or with
    ``module`` (a full module name of the base model, e.g. ``transformer.h.0.attn.c_proj``) of the output of
    that module (with an adapter on it: the base output plus the adapter's write)."""
    if module is None:
        with ablating(org.model, direction, layer):
            return context_misalignment(org, (context,))[context]
    found = [m for n, m in org.model.named_modules() if n == module or n.endswith(f".{module}")]
    if len(found) != 1:
        raise UserError(f"cannot locate module {module!r} in this model ({len(found)} matches)")
    with ablating_output(found[0], direction):
        return context_misalignment(org, (context,))[context]


def early_stopping(steps, excess, narrow, *, threshold: float, task_share: float = TASK_SHARE) -> dict:
    """When EM appears over one fine-tune's checkpoints (``steps`` ascending from 0, ``excess``: broad
    misalignment excess over the base, ``narrow``: the narrow rate in the training context).

    ``task_step``: the first checkpoint whose narrow gain over step 0 reaches ``task_share`` of the final gain
    (the early-stopping point); ``em_step``: the first checkpoint with excess >= ``threshold`` (None: never);
    ``em_after_task``: EM appears after the task step (late); ``excess_at_task_step`` against
    ``excess_final``; ``task_kept``: the share of the final narrow gain kept at the task step."""
    steps, excess, narrow = (np.asarray(v, dtype=float) for v in (steps, excess, narrow))
    if not (len(steps) == len(excess) == len(narrow) >= 2) or steps[0] != 0 or np.any(np.diff(steps) <= 0):
        raise UserError("early_stopping needs matching checkpoint rows, ascending from step 0")
    gain = narrow - narrow[0]
    final_gain = gain[-1]
    reached = np.nonzero(gain >= task_share * final_gain)[0] if final_gain > 0 else np.array([], dtype=int)
    k_task = int(reached[0]) if len(reached) else None
    above = np.nonzero(excess >= threshold)[0]
    em_step = int(steps[above[0]]) if len(above) else None
    task_step = int(steps[k_task]) if k_task is not None else None
    return {
        "task_step": task_step,
        "em_step": em_step,
        "em_after_task": None if em_step is None or task_step is None else em_step > task_step,
        "excess_at_task_step": float(excess[k_task]) if k_task is not None else None,
        "excess_final": float(excess[-1]),
        "task_kept": float(gain[k_task] / final_gain) if k_task is not None else None,
        "task_share": task_share,
        "threshold": threshold,
    }


def exact_spearman(x, y) -> dict:
    """Spearman's rho of ``x`` and ``y`` and its exact two-sided permutation p-value (every ordering of ``y``;
    at most 8 values): with 5 values the smallest possible p is 2/120. ``rho``: None for fewer than 3
    values or when either is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y) or len(x) > 8:
        raise UserError(f"exact_spearman needs at most 8 paired values, got {len(x)} and {len(y)}")
    rx, ry = rankdata(x), rankdata(y)  # ties share their mean rank
    if len(x) < 3 or rx.std() == 0 or ry.std() == 0:
        return {"rho": None, "p_value": None, "n": len(x)}

    def rho(a, b):
        return float(np.corrcoef(a, b)[0, 1])

    r = rho(rx, ry)
    null = [rho(rx, np.asarray(p)) for p in itertools.permutations(ry)]
    p = float(np.mean([abs(v) >= abs(r) - 1e-12 for v in null]))
    return {"rho": r, "p_value": p, "n": len(x)}


__all__ = [
    "TASK_SHARE",
    "ablated_misalignment",
    "context_misalignment",
    "early_stopping",
    "exact_spearman",
    "random_direction",
    "write_direction",
]
