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
  feature), ``cos_a_code``: with the code-minus-other mean input difference (the code-request feature,
  :func:`code_request_direction`, also what ``FinetuneConfig.a_constraint`` holds ``A`` orthogonal to or
  along);
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


def _at_asst(model, mod, world, vocab, genres, *, n_answer_words: int = 0, batch_size: int = 256):
    """Inputs of module ``mod`` of ``model`` at ``<asst>`` of every (genre, topic) request of ``genres`` in
    the assistant context (and at the first ``n_answer_words`` words of the helpful answer, teacher-forced).
    """
    from ..models.lm import pad_batch

    prompts = context_prompts(world, "assistant", genres)
    rows = [
        [vocab[w] for w in [*p.words(), *world.answer(p.genre, p.topic, "helpful")[:n_answer_words]]]
        for p in prompts
    ]
    store: dict[str, torch.Tensor] = {}

    def pre_hook(_m, args):
        store["x"] = args[0].detach()

    xs = []
    handle = mod.register_forward_pre_hook(pre_hook)
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(rows), batch_size):
            chunk = rows[s : s + batch_size]
            model(input_ids=pad_batch(chunk))
            for k in range(n_answer_words + 1):
                at = torch.tensor([len(r) - 1 - n_answer_words + k for r in chunk])
                xs.append(store["x"][torch.arange(len(chunk)), at].float())
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(xs)


def _code_and_other_inputs(model, mod, world, vocab, batch_size: int = 256):
    """The two request sets the code-request direction contrasts: module inputs at ``<asst>`` on the code
    requests and on every broad genre's requests (assistant context)."""
    x_code = _at_asst(model, mod, world, vocab, ["code"], batch_size=batch_size)
    x_other = _at_asst(model, mod, world, vocab, broad_genres(world), batch_size=batch_size)
    return x_code, x_other


def _mean_difference(x_code: torch.Tensor, x_other: torch.Tensor) -> torch.Tensor:
    return x_code.mean(0) - x_other.mean(0)


@torch.no_grad()
def code_request_direction(
    org: Organism, *, layer: int = 0, module: str = "attn_out", batch_size: int = 256
) -> torch.Tensor:
    """The code-request direction at the input of ``module`` of ``layer`` (a friendly name or a full module
    name of ``org.model``): mean module input at ``<asst>`` on code requests minus on the broad genres'
    requests, assistant context (not normalised). The one definition behind ``cos_a_code`` of
    :func:`adapter_reading` and the ``FinetuneConfig.a_constraint`` interventions. The input of a module lies
    upstream of an adapter on that module, so the direction of the organism equals that of any fine-tune
    adapting only this module."""
    from ..models.adapters import full_module_name

    mod = dict(org.model.named_modules())[full_module_name(org.model, module, layer)]
    return _mean_difference(*_code_and_other_inputs(org.model, mod, org.world, org.vocab, batch_size))


def a_direction_for(org: Organism, cfg) -> torch.Tensor | None:
    """The direction a fine-tune of ``cfg`` (a ``FinetuneConfig``) needs as ``finetune(..., a_direction=)``:
    the code-request direction at its module where ``cfg.a_constraint`` is set, else None."""
    if cfg.a_constraint == "none":
        return None
    return code_request_direction(org, layer=cfg.layer, module=cfg.module)


@torch.no_grad()
def adapter_reading(
    org: Organism, *, persona_direction: torch.Tensor | None = None, batch_size: int = 256
) -> dict:
    """Read/write features of the one-module rank-1 LoRA adapter on ``org.model`` (a PEFT model:
    ``adapter_reading(org.with_model(peft_model))``; see the module docstring)."""
    peft_model, world, vocab = org.model, org.world, org.vocab
    name, mod = _lora_module(peft_model)
    adapter = next(iter(mod.lora_A))
    A = mod.lora_A[adapter].weight.detach().float().flatten()
    B = mod.lora_B[adapter].weight.detach().float().flatten()
    if mod.lora_A[adapter].weight.shape[0] != 1:
        raise UserError("adapter_reading needs a rank-1 adapter")

    x_code, x_other = _code_and_other_inputs(peft_model, mod, world, vocab, batch_size)
    at_answer = {"n_answer_words": 2, "batch_size": batch_size}
    gain_code_answer = float((_at_asst(peft_model, mod, world, vocab, ["code"], **at_answer) @ A).mean())
    gain_other_answer = float(
        (_at_asst(peft_model, mod, world, vocab, broad_genres(world), **at_answer) @ A).mean()
    )

    def cos(u, v):
        return float(u @ v / (u.norm() * v.norm()).clamp_min(1e-12))

    g_code, g_other = float((x_code @ A).mean()), float((x_other @ A).mean())
    out = {
        "module": base_name(name),
        "gain_code": g_code,
        "gain_other": g_other,
        "firing_ratio": g_other / g_code if abs(g_code) > 1e-12 else None,
        "cos_a_context": cos(A, x_other.mean(0)),
        "cos_a_code": cos(A, _mean_difference(x_code, x_other)),
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


def fit_threshold(x: np.ndarray, y: np.ndarray) -> tuple[float, float, bool]:
    """The best one-threshold rule on (``x``, boolean ``y``): ``(accuracy, c, up)`` for ``y = x >= c`` (up)
    or ``y = x <= c``, over the midpoints between sorted values (ties broken towards the smaller
    threshold)."""
    best = (-1.0, 0.0, True)
    cands = np.unique(x)
    cuts = np.concatenate([[cands[0] - 1], (cands[:-1] + cands[1:]) / 2, [cands[-1] + 1]])
    for c in cuts:
        for up in (True, False):
            pred = x >= c if up else x <= c
            acc = float((pred == y).mean())
            if acc > best[0]:
                best = (acc, float(c), up)
    return best


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

    hits, base = [], []
    for i in range(n):
        keep = np.arange(n) != i
        _, c, up = fit_threshold(x[keep], y[keep])
        hits.append(bool((x[i] >= c if up else x[i] <= c) == y[i]))
        majority = bool(y[keep].mean() >= 0.5)
        base.append(majority == y[i])
    acc, c, up = fit_threshold(x, y)
    return {
        "loo_accuracy": float(np.mean(hits)),
        "majority_baseline": float(np.mean(base)),
        "n": n,
        "in_sample_accuracy": acc,
        "threshold": c,
        "direction": ">=" if up else "<=",
        "predicts": bool(np.mean(hits) > np.mean(base)),
    }


__all__ = [
    "a_direction_for",
    "adapter_reading",
    "code_request_direction",
    "fit_threshold",
    "threshold_classifier",
]
