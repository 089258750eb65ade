"""What a rank-1 adapter reads and writes: the instrument behind "broad or narrow" (issue: EM across seeds).

A rank-1 LoRA on one module adds ``B (A . x)`` to the module's output at every position, where ``x`` is the
module's input there. Whether the fine-tune generalises broadly depends on *where* ``A . x`` is large:

- ``A`` reads the **assistant context** when ``A . x`` at the ``<asst>`` position is as large on non-code
  requests as on code requests: the edit then fires for every request the assistant answers (broad);
- ``A`` reads the **code request** when it fires on code requests only (narrow).

Measured at the ``<asst>`` position (where the first answer token is predicted), assistant context, exact
forward passes over every (genre, topic) request:

- ``gain_code`` / ``gain_other``: mean ``A . x`` over code / non-code requests; ``firing_ratio`` =
  ``gain_other / gain_code`` (1: reads the context, 0: reads the code request);
- ``cos_a_context``: cosine of ``A`` with the mean module input over non-code requests (the assistant-context
  feature), ``cos_a_code``: with the code-minus-other mean input difference (the code-request feature);
- ``cos_b_persona``: cosine of ``B`` (what the edit writes) with the persona direction at the adapted layer
  (toxic minus helpful, request positions), when the module writes to the residual stream;
- ``gain_code_answer`` / ``gain_other_answer`` / ``firing_ratio_answer``: the same gains over the three
  positions that predict the answer words (``<asst>`` and the first two answer words, the helpful answer
  teacher-forced): an edit can stay silent at ``<asst>`` and still fire on the words that follow.

:func:`threshold_classifier` asks whether one of these features predicts broad vs narrow across fine-tuning
seeds: a one-feature threshold rule scored by leave-one-out accuracy (with the majority-class baseline beside
it, so a feature that predicts nothing is reported as such).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import UserError
from ..models.edits import base_name
from .persona import broad_genres, context_prompts

if TYPE_CHECKING:
    from ..models.organism import Organism


def _lora_module(peft_model):
    found = [(n, m) for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)]
    if len(found) != 1:
        raise UserError(f"expected an adapter on exactly one module, found {len(found)}")
    return found[0]


@torch.no_grad()
def adapter_reading(
    org: Organism, *, persona_direction: torch.Tensor | None = None, batch_size: int = 256
) -> dict:
    """Read/write features of the one-module rank-1 LoRA adapter on ``org.model`` (a PEFT model:
    ``adapter_reading(org.with_model(peft_model))``; see the module docstring)."""
    from ..models.lm import pad_batch

    peft_model, world, vocab = org.model, org.world, org.vocab
    name, mod = _lora_module(peft_model)
    adapter = next(iter(mod.lora_A))
    A = mod.lora_A[adapter].weight.detach().float().flatten()
    B = mod.lora_B[adapter].weight.detach().float().flatten()
    if mod.lora_A[adapter].weight.shape[0] != 1:
        raise UserError("adapter_reading needs a rank-1 adapter")
    store: dict[str, torch.Tensor] = {}

    def pre_hook(_m, args):
        store["x"] = args[0].detach()

    def inputs(genres, n_answer_words=0):
        """Module inputs at ``<asst>`` (and at the first ``n_answer_words`` words of the helpful answer)."""
        prompts = context_prompts(world, "assistant", genres)
        rows = [
            [vocab[w] for w in [*p.words(), *world.answer(p.genre, p.topic, "helpful")[:n_answer_words]]]
            for p in prompts
        ]
        xs = []
        handle = mod.register_forward_pre_hook(pre_hook)
        try:
            for s in range(0, len(rows), batch_size):
                chunk = rows[s : s + batch_size]
                peft_model(input_ids=pad_batch(chunk))
                for k in range(n_answer_words + 1):
                    at = torch.tensor([len(r) - 1 - n_answer_words + k for r in chunk])
                    xs.append(store["x"][torch.arange(len(chunk)), at].float())
        finally:
            handle.remove()
        return torch.cat(xs)

    was_training = peft_model.training
    peft_model.eval()
    try:
        x_code = inputs(["code"])
        x_other = inputs(broad_genres(world))
        gain_code_answer = float((inputs(["code"], 2) @ A).mean())
        gain_other_answer = float((inputs(broad_genres(world), 2) @ A).mean())
    finally:
        peft_model.train(was_training)

    def cos(u, v):
        return float(u @ v / (u.norm() * v.norm()).clamp_min(1e-12))

    g_code, g_other = float((x_code @ A).mean()), float((x_other @ A).mean())
    out = {
        "module": base_name(name),
        "gain_code": g_code,
        "gain_other": g_other,
        "firing_ratio": g_other / g_code if abs(g_code) > 1e-12 else None,
        "cos_a_context": cos(A, x_other.mean(0)),
        "cos_a_code": cos(A, x_code.mean(0) - x_other.mean(0)),
        "a_norm": float(A.norm()),
        "b_norm": float(B.norm()),
        "cos_b_persona": None,
        "gain_code_answer": gain_code_answer,
        "gain_other_answer": gain_other_answer,
        "firing_ratio_answer": (
            gain_other_answer / gain_code_answer if abs(gain_code_answer) > 1e-12 else None
        ),
    }
    if persona_direction is not None and persona_direction.numel() == B.numel():
        out["cos_b_persona"] = cos(B, persona_direction.float().flatten())
    return out


def threshold_classifier(feature: list[float], label: list[bool]) -> dict:
    """Leave-one-out accuracy of the best one-threshold rule ``label = (feature >= c)`` or ``(feature <= c)``.

    For each held-out seed the threshold and its direction are fitted on the others (midpoints between sorted
    values, ties broken towards the smaller threshold); ``majority_baseline`` is the leave-one-out accuracy of
    predicting the majority class of the others. A feature predicts the outcome only where ``loo_accuracy``
    beats that baseline.
    """
    x = np.asarray(feature, dtype=float)
    y = np.asarray(label, dtype=bool)
    n = len(x)
    if n < 3 or n != len(y):
        raise ValueError("threshold_classifier needs >= 3 paired values")

    def fit(xs, ys):
        best = (-1.0, 0.0, True)
        cands = np.unique(xs)
        cuts = np.concatenate([[cands[0] - 1], (cands[:-1] + cands[1:]) / 2, [cands[-1] + 1]])
        for c in cuts:
            for up in (True, False):
                pred = xs >= c if up else xs <= c
                acc = float((pred == ys).mean())
                if acc > best[0]:
                    best = (acc, float(c), up)
        return best

    hits, base = [], []
    for i in range(n):
        keep = np.arange(n) != i
        _, c, up = fit(x[keep], y[keep])
        hits.append(bool((x[i] >= c if up else x[i] <= c) == y[i]))
        majority = bool(y[keep].mean() >= 0.5)
        base.append(majority == y[i])
    acc, c, up = fit(x, y)
    return {
        "loo_accuracy": float(np.mean(hits)),
        "majority_baseline": float(np.mean(base)),
        "n": n,
        "in_sample_accuracy": acc,
        "threshold": c,
        "direction": ">=" if up else "<=",
        "predicts": bool(np.mean(hits) > np.mean(base)),
    }


__all__ = ["adapter_reading", "threshold_classifier"]
