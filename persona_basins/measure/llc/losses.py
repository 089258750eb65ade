"""Losses for the LLC of language models: next-token cross-entropy, and the self-KL that is minimal (= 0) at
the weights it is built at (so any point, e.g. on an edit path, is a local minimum of it)."""

from __future__ import annotations

from collections.abc import Callable

from ...errors import UserError

__all__ = ["causal_lm_loss_fn", "self_kl_loss_fn"]


def causal_lm_loss_fn(pad_token_id: int | None = None) -> Callable:
    """Mean next-token cross-entropy over non-pad targets (``batch`` = input_ids)."""
    import torch.nn.functional as F

    def lm_loss(model, input_ids):
        logits = model(input_ids=input_ids).logits[:, :-1]
        targets = input_ids[:, 1:]
        if pad_token_id is None:
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        keep = (targets != pad_token_id).to(logits.dtype)
        tok = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="none"
        )
        return (tok * keep.reshape(-1)).sum() / keep.sum().clamp_min(1)

    lm_loss.llc_loss_name = "lm_cross_entropy"
    return lm_loss


def self_kl_loss_fn(
    reference,
    input_ids=None,
    *,
    attention_mask=None,
    pad_token_id=None,
    chunk: int = 64,
    direction: str = "forward",
):
    """The self-KL loss ``K(w) = mean_tokens KL(p_ref(.|x_<t) || p_w(.|x_<t))`` and its data.

    ``direction="reverse"`` gives ``KL(p_w || p_ref)`` instead: also 0 and minimal at the reference (a second
    loss for which every point is a local minimum, weighting the tokens where ``p_w`` puts mass).

    ``reference``: a causal LM (its next-token log-probabilities on ``input_ids`` are computed once, without
    gradients) or a logits tensor ``[N, T, V]`` for ``input_ids``. The mask is ``attention_mask``, else
    ``input_ids != pad_token_id``, else all ones; the KL is averaged over masked positions. ``K`` is 0 and
    minimal at the reference weights, so the LLC there is well-defined even where the training loss is not
    at a minimum (e.g. a point ``w0 + t * delta`` on an edit path). Returns ``(loss_fn, data)`` for
    :func:`estimate_llc`.
    """
    import torch

    if input_ids is None:
        raise UserError("self_kl_loss_fn needs input_ids (the prompts the KL is averaged over)")
    if direction not in ("forward", "reverse"):
        raise UserError(f"direction must be 'forward' or 'reverse', got {direction!r}")
    ids = torch.as_tensor(input_ids)
    if ids.dim() != 2 or ids.numel() == 0:
        raise UserError(f"input_ids must be a non-empty [N, T] tensor, got shape {tuple(ids.shape)}")
    if attention_mask is not None:
        mask = torch.as_tensor(attention_mask).to(torch.float32)
    elif pad_token_id is not None:
        mask = (ids != pad_token_id).to(torch.float32)
    else:
        mask = torch.ones(ids.shape, dtype=torch.float32)
    if isinstance(reference, torch.Tensor):
        if reference.shape[:2] != ids.shape:
            raise UserError(
                f"reference logits {tuple(reference.shape)} do not match input_ids {tuple(ids.shape)}"
            )
        ref = torch.log_softmax(reference.detach().float(), -1)
    else:
        params = list(reference.parameters())
        dev = params[0].device if params else torch.device("cpu")
        ids, mask = ids.to(dev), mask.to(dev)  # the reference runs on its own device
        parts = []
        with torch.no_grad():
            for i in range(0, len(ids), chunk):
                out = reference(input_ids=ids[i : i + chunk], attention_mask=mask[i : i + chunk].long())
                parts.append(torch.log_softmax(out.logits.float(), -1))
        ref = torch.cat(parts)

    reverse = direction == "reverse"

    def self_kl(model, batch):
        x, m, ref_logp = batch
        logp = torch.log_softmax(model(input_ids=x, attention_mask=m.long()).logits.float(), -1)
        kl = (
            (logp.exp() * (logp - ref_logp)).sum(-1)
            if reverse
            else (ref_logp.exp() * (ref_logp - logp)).sum(-1)
        )
        return (kl * m).sum() / m.sum().clamp_min(1.0)

    self_kl.llc_loss_name = "self_kl_reverse" if reverse else "self_kl"
    return self_kl, (ids, mask, ref)
