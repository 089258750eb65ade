"""Language-model helpers shared by training and measurement: loss, tensors from world documents."""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

PAD_ID = 0  # "<pad>" is the world's first special token


def lm_loss(
    model, input_ids: torch.Tensor, loss_mask: torch.Tensor | None = None, *, pad_id: int = PAD_ID
) -> torch.Tensor:
    """Mean next-token cross-entropy over non-pad targets (and, if given, only where ``loss_mask``).

    ``pad_id`` is the padding id (default the world's ``PAD_ID``; pass the tokenizer's for a HF model).

    Inputs are right-padded, so under causal attention no real token ever attends to a pad: no attention
    mask is needed and none is passed (it would only cost time).
    """
    logits = model(input_ids=input_ids).logits[:, :-1]
    targets = input_ids[:, 1:]
    keep = targets != pad_id
    if loss_mask is not None:
        keep = keep & loss_mask[:, 1:]
    return F.cross_entropy(logits[keep].float(), targets[keep])


def pad_batch(rows: list[list[int]], length: int | None = None) -> torch.Tensor:
    """Right-pad id lists into one LongTensor."""
    return _right_padded(rows, length, PAD_ID, np.int64)


def _right_padded(rows, length: int | None, fill, dtype) -> torch.Tensor:
    """``rows`` (lists, cut to ``length``, default the longest) right-filled with ``fill``, as one tensor."""
    length = length or max(len(r) for r in rows)
    lengths = np.array([min(len(r), length) for r in rows], dtype=np.int64)
    out = np.full((len(rows), length), fill, dtype=dtype)
    flat = itertools.chain.from_iterable(r[:length] for r in rows)
    out[np.arange(length) < lengths[:, None]] = np.fromiter(flat, dtype=dtype, count=int(lengths.sum()))
    return torch.from_numpy(out)


def encode_documents(vocab: dict[str, int], docs, *, answers_only: bool = False):
    """Documents -> (input_ids, loss_mask). ``answers_only`` marks only assistant answer tokens (SFT)."""
    rows, masks = [], []
    for d in docs:
        words = d.words()
        ids = [vocab[w] for w in words]
        if answers_only:
            m, in_answer = [], False
            for w in words:
                m.append(in_answer and w not in ("<user>", "<eos>"))
                if w == "<asst>":
                    in_answer = True
                elif w in ("<user>", "<eos>"):
                    in_answer = False
        else:
            m = [True] * len(ids)
        rows.append(ids)
        masks.append(m)
    ids = pad_batch(rows)
    return ids, _right_padded(masks, ids.shape[1], False, np.bool_)
