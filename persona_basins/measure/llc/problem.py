"""The sampled problem: the data as a fixed partition into minibatches, and the loss as a function of the flat
vector of moving parameters (the model is called with those tensors swapped in, never modified)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import UserError


@dataclass
class _Moving:
    name: str
    shape: Any
    idx: Any  # LongTensor of flat positions, or None for the whole tensor
    full: Any  # detached flat copy of the parameter at w*
    numel: int


class BatchPartition:
    """A fixed seeded partition of the data into ``n_batches`` equal-size batches of ``bs`` examples,
    pre-gathered as ``[n_batches, bs, ...]`` (the remainder of ``N / bs`` is left out)."""

    def __init__(self, data, batch_size, gen):
        import torch

        single = False
        if isinstance(data, torch.Tensor):
            tensors, single = (data,), True
        elif isinstance(data, tuple | list) and data and all(isinstance(t, torch.Tensor) for t in data):
            tensors = tuple(data)
        elif isinstance(data, tuple | list) and not data:
            raise UserError("data is empty")
        elif hasattr(data, "__getitem__") and not isinstance(data, str | bytes):
            try:
                ids = data["input_ids"]
            except (KeyError, TypeError, IndexError):
                raise UserError(
                    "data must be a tensor, a tuple of tensors, or a dataset with 'input_ids'"
                ) from None
            if not isinstance(ids, torch.Tensor):
                ids = torch.as_tensor(np.asarray(ids if isinstance(ids, list | np.ndarray) else list(ids)))
            tensors, single = (ids,), True
        else:
            raise UserError("data must be a tensor, a tuple of tensors, or a dataset with 'input_ids'")
        N = len(tensors[0]) if tensors[0].dim() > 0 else 0
        if N == 0:
            raise UserError("data is empty (0 examples)")
        if any(len(t) != N for t in tensors):
            raise UserError(f"data tensors differ in length: {[len(t) for t in tensors]}")
        bs = N if batch_size is None else int(batch_size)
        if bs < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        bs = min(bs, N)
        n_batches = N // bs
        # Index bookkeeping lives on the CPU (explicit device: never the process's default device).
        perm = (
            torch.randperm(N, generator=gen, device="cpu")[: n_batches * bs].view(n_batches, bs)
            if n_batches > 1
            else torch.arange(bs, device="cpu")[None]
        )
        self.single, self.N, self.bs, self.n_batches = single, N, bs, n_batches
        self.tb = tuple(t[perm.to(t.device)] for t in tensors)

    def to(self, device) -> BatchPartition:
        """Move the pre-gathered batches to ``device`` (in place; returns self)."""
        self.tb = tuple(t.to(device) for t in self.tb)
        return self

    def batch(self, b: int):
        return self.tb[0][b] if self.single else tuple(t[b] for t in self.tb)

    def stacked(self, idx):
        return self.tb[0][idx] if self.single else tuple(t[idx] for t in self.tb)


class FunctionalLoss:
    def __init__(self, model, loss_fn, selection: dict):
        import torch

        self.model, self.loss_fn = model, loss_fn
        named = dict(model.named_parameters())
        self.sels: list[_Moving] = []
        for name, idx in selection.items():
            p = named[name]
            full = p.detach().reshape(-1).clone()
            if idx is not None:
                idx = idx.to(p.device)
            self.sels.append(
                _Moving(name, p.shape, idx, full, int(p.numel() if idx is None else idx.numel()))
            )
        # Every (module, attribute) slot that holds each moving parameter (tied weights have several).
        by_id = {id(named[s.name]): i for i, s in enumerate(self.sels)}
        self.slots: list[tuple[Any, str, int]] = []
        for mod in model.modules():
            for attr, q in mod._parameters.items():
                if q is not None and id(q) in by_id:
                    self.slots.append((mod, attr, by_id[id(q)]))
        self.theta0 = torch.cat([s.full if s.idx is None else s.full[s.idx] for s in self.sels])
        self.D = int(self.theta0.numel())
        self.offsets = np.cumsum([0] + [s.numel for s in self.sels]).tolist()

    def leaves(self, theta) -> list:
        """Per-parameter views of ``theta`` (``[D]`` -> shapes, ``[C, D]`` -> ``[C, *shapes]``) as fresh
        autograd leaves sharing its storage. Differentiating w.r.t. separate leaves avoids the
        ``O(num_tensors x D)`` slice-backward of differentiating w.r.t. the flat vector."""
        lead = tuple(theta.shape[:-1])
        out = []
        for s, a, b in zip(self.sels, self.offsets[:-1], self.offsets[1:]):
            v = theta[..., a:b]
            out.append((v.view(*lead, *s.shape) if s.idx is None else v).detach().requires_grad_(True))
        return out

    def write_grads(self, grads, out) -> None:
        """Copy per-parameter gradients into the flat ``out`` (``[D]`` or ``[C, D]``)."""
        lead = tuple(out.shape[:-1])
        for g, a, b in zip(grads, self.offsets[:-1], self.offsets[1:]):
            out[..., a:b].copy_(g.reshape(*lead, b - a))

    def loss(self, vals, batch):
        """The loss with the moving parameters set to ``vals`` (one tensor per selected parameter): a
        lightweight reparametrisation that puts the tensors straight into the owning modules' parameter slots
        for the call (what ``torch.func.functional_call`` does, minus its per-call module-tree walk)."""
        ts = [
            v if s.idx is None else s.full.index_put((s.idx,), v).view(s.shape)
            for s, v in zip(self.sels, vals)
        ]
        saved = [(mod, attr, mod._parameters[attr]) for mod, attr, _ in self.slots]
        try:
            for mod, attr, i in self.slots:
                mod._parameters[attr] = ts[i]
            return self.loss_fn(self.model, batch)
        finally:
            for mod, attr, q in saved:
                mod._parameters[attr] = q
