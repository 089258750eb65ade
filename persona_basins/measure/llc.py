"""The local learning coefficient (LLC) by localised SGLD, batched over chains.

    lambda_hat = n_beta * (E_w[L(w)] - L(w*)),   w ~ exp(-n_beta L_n(w) - (gamma / 2) ||w - w*||^2)

The posterior is sampled by SGLD (optionally RMSProp-preconditioned); every chain starts at ``w*``. The
draw's loss is the minibatch loss of the SGLD step's own forward pass (no extra evaluation pass).

Variance reduction (unbiased): each draw's contribution is ``n_beta * (L_B(w_t) - L_B(w*))`` - the same
minibatch ``B`` evaluated at the draw and at ``w*``. Batches come from one fixed, seeded partition of the data
into equal-size batches, drawn uniformly at random each step, so ``E_B[L_B(w*)] = L_n(w*)`` exactly and the
paired difference has the same expectation as ``L_B(w_t) - L_n(w*)`` while the shared minibatch noise cancels.
``L_B(w*)`` is computed once per distinct batch that the pre-drawn schedule uses (a forward pass without
gradients, cached), never once per step; by default all chains share the step's batch (``shared_batches``),
so there are at most as many such forwards as steps.

Execution paths: all chains are one ``[chains, params]`` tensor; the model is called functionally with the
moving parameters swapped in (like ``torch.func.functional_call``, without its per-call module walk). ``vmap``
evaluates all chains' losses in one ``torch.func.vmap``-batched forward and gets every chain's gradient from
one backward of their sum; ``loop`` runs the model's own forward/backward once per chain. ``path="auto"``
times both on the first call for a model class (and size) and caches the faster; see ``docs/LLC.md`` for
the measured numbers. Both paths consume the same pre-drawn batch schedule and noise, so they give the same
numbers up to floating-point rounding.

See ``docs/LLC.md`` for hyperparameters, the analytic validation and the benchmark against devinterp.
"""

from __future__ import annotations

import math
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError

__all__ = [
    "LLCResult",
    "LLCDivergenceError",
    "estimate_llc",
    "calibrate",
    "llc_over_checkpoints",
    "llc_along_path",
    "self_kl_loss_fn",
    "causal_lm_loss_fn",
    "adapter_path",
    "default_nbeta",
    "critical_points",
    "rhat",
    "ess",
    "select_parameters",
]


class LLCDivergenceError(UserError):
    """SGLD diverged (NaN/inf or loss explosion); the message names a step size to try."""


def default_nbeta(n: int) -> float:
    """The default inverse temperature ``n / log n`` (the one place it is defined)."""
    if n is None or n < 2:
        raise ValueError(f"n (the dataset size) must be >= 2, got {n}")
    return float(n) / math.log(n)


@dataclass
class LLCResult:
    """``mean``/``std`` over chains, ``per_chain`` estimates, ``loss_trace`` (chains x draws) of the draws'
    minibatch losses, ``llc_trace`` (chains x draws) of ``n_beta * (L_B(w_t) - L_B(w*))`` and diagnostics."""

    mean: float
    std: float
    per_chain: list[float]
    loss_trace: np.ndarray
    diagnostics: dict
    llc_trace: np.ndarray = field(default=None, repr=False)

    def to_dict(self, traces: bool = True) -> dict:
        out = {"llc": self.mean, "llc_std": self.std, "per_chain": list(self.per_chain),
               "diagnostics": self.diagnostics}
        if traces:
            out["loss_trace"] = np.asarray(self.loss_trace).tolist()
            out["llc_trace"] = None if self.llc_trace is None else np.asarray(self.llc_trace).tolist()
        return out


# ---------------------------------------------------------------------------------------------------------
# Parameter selection (restrict)


@dataclass
class _Sel:
    name: str
    shape: Any
    idx: Any  # LongTensor of flat positions, or None for the whole tensor
    full: Any  # detached flat copy of the parameter at w*
    numel: int


_LAYER_RE = re.compile(r"^layers?[:=]?(\d+)(?:[./,: ]+heads?[:=]?(\d+))?$")


def _layer_regex(i: int) -> re.Pattern:
    return re.compile(rf"(^|\.)(layers|layer|h|blocks|block)\.{i}\.")


def _adapter_names(model) -> list[str]:
    cfg = getattr(model, "peft_config", None)
    return list(cfg) if isinstance(cfg, Mapping) else []


def _is_adapter_param(model, name: str) -> bool:
    for a in _adapter_names(model):
        if f".{a}." in name or name.endswith(f".{a}"):
            return True
    return "lora_" in name


def _attn_geometry(model):
    cfg = getattr(model, "config", None)
    if cfg is None and hasattr(model, "get_base_model"):
        cfg = model.get_base_model().config
    heads = getattr(cfg, "num_attention_heads", None)
    if not heads:
        raise UserError("head restriction needs a model config with num_attention_heads (Llama-style attention)")
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return int(heads), int(kv), int(hd)


def _head_selection(model, layer: int, head: int, named: dict) -> dict:
    import torch

    heads, kv, hd = _attn_geometry(model)
    if not 0 <= head < heads:
        raise UserError(f"head {head} out of range: the model has {heads} attention heads per layer")
    kvh = head // max(1, heads // kv)
    lay = _layer_regex(layer)
    out = {}
    for name, p in named.items():
        if not lay.search(name) or _is_adapter_param(model, name):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in ("weight", "bias"):
            continue
        if "c_attn" in name:  # GPT-2: fused q|k|v, Conv1D weight [d, 3d] (outputs are columns)
            d = p.shape[-1] // 3
            cols = torch.cat([torch.arange(j * d + head * hd, j * d + (head + 1) * hd) for j in range(3)])
            if p.dim() == 1:
                out[name] = cols
            else:
                out[name] = (torch.arange(p.shape[0]).unsqueeze(1) * p.shape[1] + cols.unsqueeze(0)).reshape(-1)
            continue
        if "attn.c_proj" in name and leaf == "weight" and p.dim() == 2:  # GPT-2 output proj: inputs are rows
            r = torch.arange(head * hd, (head + 1) * hd).unsqueeze(1) * p.shape[1]
            out[name] = (r + torch.arange(p.shape[1]).unsqueeze(0)).reshape(-1)
            continue
        if "q_proj" in name:
            rows, nrows = range(head * hd, (head + 1) * hd), heads * hd
        elif "k_proj" in name or "v_proj" in name:
            rows, nrows = range(kvh * hd, (kvh + 1) * hd), kv * hd
        elif "o_proj" in name and leaf == "weight":
            if p.shape[-1] != heads * hd:
                continue
            r = torch.arange(p.shape[0]).unsqueeze(1) * p.shape[1]
            c = torch.arange(head * hd, (head + 1) * hd).unsqueeze(0)
            out[name] = (r + c).reshape(-1)
            continue
        else:
            continue
        if p.shape[0] != nrows:
            continue
        cols = p.shape[1] if p.dim() == 2 else 1
        r = torch.tensor(list(rows)).unsqueeze(1) * cols
        out[name] = (r + torch.arange(cols).unsqueeze(0)).reshape(-1)
    if not out:
        raise UserError(f"restrict=layer:{layer}/head:{head} matches no attention projection (q/k/v/o_proj or c_attn)")
    return out


def select_parameters(model, restrict=None) -> tuple[dict, str]:
    """Resolve ``restrict`` to ``{param name: flat index tensor or None (whole tensor)}`` and a description.

    ``restrict`` may be: ``None`` (every parameter with ``requires_grad``; all parameters if none has it),
    ``"adapter"`` (the PEFT adapter parameters), ``"layer:I"`` or an ``int`` (transformer block ``I``),
    ``"layer:I/head:H"`` or ``{"layer": I, "head": H}`` (the q/k/v rows and o_proj columns of one attention
    head; with grouped-query attention the shared k/v head moves too), a regular expression searched in the
    parameter names (optionally prefixed ``re:``), a list of names/patterns, or ``callable(name, param) ->
    bool``. Raises :class:`UserError` if nothing matches.
    """
    named = {n: p for n, p in model.named_parameters() if p.is_floating_point()}
    if not named:
        raise UserError(f"{type(model).__name__} has no floating-point parameters")
    desc = "all" if restrict is None else repr(restrict)
    if restrict is None:
        chosen = [n for n, p in named.items() if p.requires_grad] or list(named)
        if len(chosen) < len(named):
            desc = "requires_grad"
        return {n: None for n in chosen}, desc
    layer = head = None
    if isinstance(restrict, bool):
        raise UserError(f"restrict={restrict!r} is not a valid restriction")
    if isinstance(restrict, int):
        layer = restrict
    elif isinstance(restrict, Mapping):
        layer, head = restrict.get("layer"), restrict.get("head")
        if layer is None:
            raise UserError(f"restrict={dict(restrict)!r} needs a 'layer' key")
    elif isinstance(restrict, str):
        s = restrict.strip()
        m = _LAYER_RE.match(s)
        if s in ("adapter", "lora", "peft"):
            chosen = [n for n in named if _is_adapter_param(model, n)]
            if not chosen:
                raise UserError(f"restrict={restrict!r}: {type(model).__name__} has no PEFT adapter parameters")
            return {n: None for n in chosen}, "adapter"
        if m:
            layer, head = int(m.group(1)), (int(m.group(2)) if m.group(2) is not None else None)
        else:
            pat = s[3:] if s.startswith("re:") else s
            try:
                rx = re.compile(pat)
            except re.error as e:
                raise UserError(f"restrict={restrict!r} is not a valid regular expression: {e}") from None
            chosen = [n for n in named if rx.search(n)]
            if not chosen:
                raise UserError(f"restrict={restrict!r} matches no parameter of {type(model).__name__}")
            return {n: None for n in chosen}, f"pattern:{pat}"
    elif callable(restrict):
        chosen = [n for n, p in named.items() if restrict(n, p)]
        if not chosen:
            raise UserError(f"restrict callable matches no parameter of {type(model).__name__}")
        return {n: None for n in chosen}, "callable"
    elif isinstance(restrict, Iterable):
        pats = [str(x) for x in restrict]
        chosen = [n for n in named if any(n == p or re.search(p, n) for p in pats)]
        if not chosen:
            raise UserError(f"restrict={pats!r} matches no parameter of {type(model).__name__}")
        return {n: None for n in chosen}, f"names:{len(chosen)}"
    else:
        raise UserError(f"restrict of type {type(restrict).__name__} is not supported")
    if head is not None:
        return _head_selection(model, int(layer), int(head), named), f"layer:{layer}/head:{head}"
    lay = _layer_regex(int(layer))
    chosen = [n for n in named if lay.search(n) and not _is_adapter_param(model, n)]
    if not chosen:
        chosen = [n for n in named if lay.search(n)]
    if not chosen:
        raise UserError(f"restrict=layer:{layer} matches no parameter of {type(model).__name__}")
    return {n: None for n in chosen}, f"layer:{layer}"


# ---------------------------------------------------------------------------------------------------------
# Data


class _Data:
    """A fixed seeded partition of the data into equal-size batches, pre-gathered as ``[n_batches, bs, ...]``."""

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
                raise UserError("data must be a tensor, a tuple of tensors, or a dataset with 'input_ids'") from None
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
        nb = N // bs
        perm = torch.randperm(N, generator=gen)[: nb * bs].view(nb, bs) if nb > 1 else torch.arange(bs)[None]
        self.single, self.N, self.bs, self.nb = single, N, bs, nb
        self.tb = tuple(t[perm] for t in tensors)

    def batch(self, b: int):
        return self.tb[0][b] if self.single else tuple(t[b] for t in self.tb)

    def stacked(self, idx):
        return self.tb[0][idx] if self.single else tuple(t[idx] for t in self.tb)


# ---------------------------------------------------------------------------------------------------------
# The functional problem: loss as a function of the flat moving-parameter vector


class _Problem:
    def __init__(self, model, loss_fn, selection: dict):
        import torch

        self.model, self.loss_fn = model, loss_fn
        named = dict(model.named_parameters())
        self.sels: list[_Sel] = []
        for name, idx in selection.items():
            p = named[name]
            full = p.detach().reshape(-1).clone()
            self.sels.append(_Sel(name, p.shape, idx, full, int(p.numel() if idx is None else idx.numel())))
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
        ts = [v if s.idx is None else s.full.index_put((s.idx,), v).view(s.shape) for s, v in zip(self.sels, vals)]
        saved = [(mod, attr, mod._parameters[attr]) for mod, attr, _ in self.slots]
        try:
            for mod, attr, i in self.slots:
                mod._parameters[attr] = ts[i]
            return self.loss_fn(self.model, batch)
        finally:
            for mod, attr, q in saved:
                mod._parameters[attr] = q


_PATH_CACHE: dict[tuple, tuple[str, str]] = {}
# vmap's fallback notice for ops without a batching rule (e.g. CPU flash attention): the path choice already
# measured the cost, so the notice is noise.
warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")


def _make_steppers(prob: _Problem, data: _Data, C: int, shared_batches: bool):
    import torch
    from torch.func import vmap

    shared = data.nb == 1 or shared_batches
    # vmap only the forward; one ordinary backward of sum_c loss_c gives every chain's gradient (the chains
    # do not interact), which is cheaper than vmap(grad(...)) and numerically identical.
    vfwd = vmap(prob.loss, in_dims=(0, None if shared else 0), randomness="different")
    bufs = {}

    def vmap_step(theta, bidx):
        batch = data.batch(int(bidx[0])) if shared else data.stacked(bidx)
        leaves = prob.leaves(theta)
        losses = vfwd(leaves, batch)
        gs = torch.autograd.grad(losses.sum(), leaves)
        grads = bufs.get("g")
        if grads is None or grads.shape != theta.shape:
            grads = bufs["g"] = torch.empty_like(theta)
        prob.write_grads(gs, grads)
        return grads, losses.detach()

    def loop_step(theta, bidx):
        grads = bufs.get("g")
        if grads is None or grads.shape != theta.shape:
            grads = bufs["g"] = torch.empty_like(theta)
        losses = torch.empty(C, dtype=theta.dtype)
        for c, b in enumerate(bidx.tolist()):
            leaves = prob.leaves(theta[c])
            loss = prob.loss(leaves, data.batch(b))
            gs = torch.autograd.grad(loss, leaves)
            prob.write_grads(gs, grads[c])
            losses[c] = loss.detach()
        return grads, losses

    return {"vmap": vmap_step, "loop": loop_step}


def _choose_path(path: str, steppers, prob, C, data, model) -> tuple[str, str]:
    import torch

    if path in ("vmap", "loop"):
        return path, "forced"
    if path != "auto":
        raise UserError(f"path must be 'auto', 'vmap' or 'loop', got {path!r}")
    key = (type(model).__module__ + "." + type(model).__qualname__, prob.D, C, data.bs, data.nb == 1)
    if key in _PATH_CACHE:
        p, why = _PATH_CACHE[key]
        return p, f"cached ({why})"
    theta = prob.theta0.unsqueeze(0).repeat(C, 1)
    bidx = torch.zeros(C, dtype=torch.long)
    times = {}
    for name in ("vmap", "loop"):
        try:
            with warnings.catch_warnings():  # e.g. "no batching rule for sdpa": the timing decides anyway
                warnings.simplefilter("ignore")
                steppers[name](theta, bidx)  # warm-up
                t0, k = time.perf_counter(), 0
                while k < 3 or (time.perf_counter() - t0 < 0.05 and k < 50):
                    steppers[name](theta, bidx)
                    k += 1
            times[name] = (time.perf_counter() - t0) / k
        except Exception as e:  # noqa: BLE001 - vmap is unsupported by many models; the loop always works
            if name == "loop":
                raise
            times[name] = None
            vmap_err = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    if times["vmap"] is None:
        choice = ("loop", f"measured: vmap unsupported ({vmap_err}); loop {times['loop'] * 1e3:.3g} ms/step")
    else:
        best = "vmap" if times["vmap"] <= times["loop"] else "loop"
        choice = (best, f"measured: vmap {times['vmap'] * 1e3:.3g} ms/step, loop {times['loop'] * 1e3:.3g} ms/step")
    _PATH_CACHE[key] = choice
    return choice


# ---------------------------------------------------------------------------------------------------------
# Convergence diagnostics


def rhat(chains) -> float:
    """Split R-hat (Gelman et al.; Vehtari et al. 2021 without rank-normalisation) of a chains x draws array."""
    x = np.asarray(chains, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 4:
        return float("nan")
    h = x.shape[1] // 2
    s = np.concatenate([x[:, :h], x[:, -h:]], axis=0)
    m, n = s.shape
    means, vars_ = s.mean(1), s.var(1, ddof=1)
    W, B = vars_.mean(), n * means.var(ddof=1)
    if W <= 0:
        return float("nan")
    return float(math.sqrt(((n - 1) / n * W + B / n) / W))


def ess(chains) -> float:
    """Effective sample size over all chains (multi-chain autocorrelation, Geyer's initial positive sequence)."""
    x = np.asarray(chains, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 4:
        return float("nan")
    m, n = x.shape
    xc = x - x.mean(1, keepdims=True)
    f = np.fft.rfft(xc, n=2 * n, axis=1)
    acov = np.fft.irfft(f * np.conj(f), axis=1)[:, :n] / n
    W = (acov[:, 0] * n / (n - 1)).mean()
    if W <= 0:
        return float("nan")
    var_plus = (n - 1) / n * W + (x.mean(1).var(ddof=1) if m > 1 else 0.0)
    rho = 1.0 - (W - acov.mean(0)) / var_plus
    rho[0] = 1.0
    total, t = 0.0, 0
    while t + 1 < n:
        pair = rho[t] + rho[t + 1]
        if pair < 0:
            break
        total += pair
        t += 2
    tau = max(-1.0 + 2.0 * total, 1.0 / math.log10(max(m * n, 10)))
    return float(m * n / tau)


# ---------------------------------------------------------------------------------------------------------
# The estimator


def estimate_llc(
    model,
    loss_fn: Callable,
    data,
    *,
    n: int,
    nbeta: float | None = None,
    step_size: float,
    localization: float,
    num_chains: int,
    num_draws: int,
    num_burnin: int = 0,
    batch_size: int | None = None,
    restrict=None,
    seed: int = 0,
    precondition: str | None = None,
    rmsprop_alpha: float = 0.99,
    rmsprop_eps: float = 0.1,
    path: str = "auto",
    mala: bool = True,
    mala_every: int | None = None,
    shared_batches: bool = True,
    explode_threshold: float | None = None,
    progress: bool = False,
) -> LLCResult:
    """Estimate the (weight-restricted) local learning coefficient of ``model`` at its current weights ``w*``.

    ``loss_fn(model, batch)`` returns the scalar mean loss of a batch; ``data`` is a tensor (batch = rows),
    a tuple of tensors (batch = tuple of rows) or a dataset with ``input_ids`` (batch = the ids tensor).
    ``n`` is the dataset size in the posterior, ``nbeta`` defaults to :func:`default_nbeta` (``n / log n``).
    ``restrict`` picks the parameters that move (see :func:`select_parameters`); the rest stay frozen.
    ``precondition="rmsprop"`` scales each coordinate's step by ``1 / (sqrt(V) + rmsprop_eps)`` (V the
    running mean of squared loss gradients). ``path``: ``"auto"`` (measure and cache), ``"vmap"``, ``"loop"``.
    The model's weights are never modified. Raises :class:`LLCDivergenceError` on NaN/inf or loss explosion.
    """
    import torch

    for k, v in (("num_chains", num_chains), ("num_draws", num_draws)):
        if not isinstance(v, int | np.integer) or v < 1:
            raise UserError(f"{k} must be a positive integer, got {v!r}")
    if num_burnin < 0:
        raise UserError(f"num_burnin must be >= 0, got {num_burnin}")
    if not (step_size > 0 and math.isfinite(step_size)):
        raise UserError(f"step_size must be a positive number, got {step_size!r}")
    if localization < 0:
        raise UserError(f"localization must be >= 0, got {localization!r}")
    if precondition not in (None, "rmsprop"):
        raise UserError(f"precondition must be None or 'rmsprop', got {precondition!r}")
    nb = default_nbeta(n) if nbeta is None else float(nbeta)
    if not nb > 0:
        raise UserError(f"nbeta must be positive, got {nbeta!r}")
    C, T = int(num_chains), int(num_burnin) + int(num_draws)
    eps, gamma = float(step_size), float(localization)
    t_start = time.perf_counter()

    selection, desc = select_parameters(model, restrict)
    gen = torch.Generator().manual_seed(int(seed))
    dat = _Data(data, batch_size, gen)

    grad_flags = {n_: p.requires_grad for n_, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        prob = _Problem(model, loss_fn, selection)
        # The pre-drawn batch schedule: identical for both paths.
        if dat.nb == 1:
            sched = torch.zeros(T, C, dtype=torch.long)
        elif shared_batches:  # every chain sees the same batch at a step (as devinterp does): fewer L_B(w*)
            sched = torch.randint(dat.nb, (T, 1), generator=gen).repeat(1, C)
        else:
            sched = torch.randint(dat.nb, (T, C), generator=gen)
        used = torch.unique(sched)
        star = torch.full((dat.nb,), float("nan"), dtype=torch.float64)
        with torch.no_grad():
            for b in used.tolist():
                val = loss_fn(model, dat.batch(b))
                if not isinstance(val, torch.Tensor) or val.numel() != 1:
                    shape = tuple(val.shape) if isinstance(val, torch.Tensor) else type(val).__name__
                    raise ValueError(f"loss_fn must return a scalar mean loss, got {shape}")
                star[b] = float(val)
        if not torch.isfinite(star[used]).all():
            raise UserError("the loss at w* is NaN/inf: check the model, data and loss_fn")
        init_loss = float(star[used].mean())
        star_f = star.to(prob.theta0.dtype)
        thresh = explode_threshold if explode_threshold is not None else max(20.0, 10.0 * abs(init_loss))

        steppers = _make_steppers(prob, dat, C, shared_batches)
        chosen, why = _choose_path(path, steppers, prob, C, dat, model)
        step = steppers[chosen]

        theta0 = prob.theta0
        theta = theta0.unsqueeze(0).repeat(C, 1)
        dtype = theta.dtype
        # Preallocated [C, D] buffers: large per-step temporaries would each cost an allocation and page faults.
        other = torch.empty_like(theta)  # the previous state (for MALA), overwritten by the next state
        diff, drift, noise = torch.empty_like(theta), torch.empty_like(theta), torch.empty_like(theta)
        rbuf = torch.empty_like(theta) if mala else None
        V = torch.zeros_like(theta) if precondition else None
        P = torch.empty_like(theta) if precondition else None
        Psq = torch.empty_like(theta) if precondition else None
        losses_tr = torch.empty(T, C, dtype=dtype)
        diffs_tr = torch.empty(T, C, dtype=dtype)
        acc_tr = torch.full((T, C), float("nan"), dtype=dtype)
        U_p = nz_sq = None
        # MALA acceptance on every k-th transition: a diagnostic, so a subsample suffices for large models
        k_mala = int(mala_every) if mala_every else (1 if C * prob.D <= 1_000_000 else 10)
        sqrt_eps = math.sqrt(eps)
        it = range(T)
        if progress and sys.stderr.isatty():
            from tqdm import tqdm

            it = tqdm(it, desc="SGLD", leave=False)
        check_every = 10
        t_loop = time.perf_counter()
        for t in it:
            bidx = sched[t]
            grads, losses = step(theta, bidx)
            losses_tr[t] = losses
            d = losses - star_f[bidx]
            diffs_tr[t] = d
            torch.sub(theta, theta0, out=diff)
            torch.mul(grads, nb, out=drift).add_(diff, alpha=gamma)  # grad of U = nb L + gamma/2 |w - w*|^2
            if V is not None:
                V.mul_(rmsprop_alpha).addcmul_(grads, grads, value=1 - rmsprop_alpha)
                torch.div(V, 1 - rmsprop_alpha ** (t + 1), out=P).sqrt_().add_(rmsprop_eps).reciprocal_()
            need_now = mala and t % k_mala == 0 and U_p is not None
            need_next = mala and (t + 1) % k_mala == 0
            if need_now or need_next:
                U = d * nb + (0.5 * gamma) * torch.linalg.vector_norm(diff, dim=1).square()
                if need_now:  # log q(w_prev | w) with the current drift; forward term from the noise
                    torch.sub(other, theta, out=rbuf)
                    if P is None:
                        rbuf.add_(drift, alpha=0.5 * eps)
                        log_rev = -torch.linalg.vector_norm(rbuf, dim=1).square() / (2 * eps)
                    else:
                        rbuf.addcmul_(P, drift, value=0.5 * eps)
                        log_rev = -rbuf.square_().div_(P).sum(1) / (2 * eps)
                    acc_tr[t] = ((U_p - U) + log_rev + 0.5 * nz_sq).clamp(max=0).exp()
                U_p = U if need_next else None
            torch.randn(theta.shape, generator=gen, dtype=dtype, out=noise)
            if need_next:
                nz_sq = torch.linalg.vector_norm(noise, dim=1).square()
            new = other
            if P is None:
                torch.add(theta, drift, alpha=-0.5 * eps, out=new).add_(noise, alpha=sqrt_eps)
            else:
                torch.addcmul(theta, P, drift, value=-0.5 * eps, out=new)
                new.addcmul_(torch.sqrt(P, out=Psq), noise, value=sqrt_eps)
            other, theta = theta, new
            if (t + 1) % check_every == 0 or t == T - 1:
                lo = (t // check_every) * check_every
                w = diffs_tr[lo : t + 1]
                bad = ~torch.isfinite(w) | (w > thresh)
                if bad.any():
                    tt, cc = (int(v) for v in bad.nonzero()[0])
                    val = float(w[tt, cc])
                    what = "the loss became NaN/inf" if not math.isfinite(val) else (
                        f"the loss rose {val:.3g} above L(w*)={init_loss:.4g}")
                    raise LLCDivergenceError(
                        f"SGLD diverged at step {lo + tt} (chain {cc}): {what} with step_size={eps:g}; "
                        f"try step_size={eps / 10:g} (or a larger localization)"
                    )
        loop_s = time.perf_counter() - t_loop
    finally:
        for n_, p in model.named_parameters():
            p.requires_grad_(grad_flags.get(n_, True))

    B = int(num_burnin)
    loss_trace = losses_tr[B:].T.double().numpy()
    llc_trace = (diffs_tr[B:].T.double() * nb).numpy()
    per_chain = llc_trace.mean(1)
    mean = float(per_chain.mean())
    std = float(per_chain.std(ddof=1)) if C > 1 else 0.0
    acc = acc_tr[max(B, 1):].double().numpy()
    mala_mean = float(np.nanmean(acc)) if mala and np.isfinite(acc).any() else float("nan")
    r_hat, n_eff = rhat(llc_trace), ess(llc_trace)
    frac_neg = float((llc_trace < 0).mean())
    warn = []
    if mean < 0:
        warn.append("negative LLC: w* is not a local minimum of this loss (or the step size is too large); "
                        "for points on a path use self_kl_loss_fn")
    if math.isfinite(r_hat) and r_hat > 1.1:
        warn.append(f"R-hat {r_hat:.2f} > 1.1: chains disagree; use more draws/burn-in or a larger step size")
    if math.isfinite(mala_mean) and mala_mean < 0.5:
        warn.append(f"MALA acceptance {mala_mean:.2f} < 0.5: the step size is probably too large")
    total_s = time.perf_counter() - t_start
    diagnostics = {
        "path": chosen,
        "path_reason": why,
        "restrict": desc,
        "num_params_moving": prob.D,
        "num_params_total": int(sum(p.numel() for p in model.parameters())),
        "n": int(n),
        "nbeta": nb,
        "step_size": eps,
        "localization": gamma,
        "num_chains": C,
        "num_draws": int(num_draws),
        "num_burnin": B,
        "batch_size": dat.bs,
        "num_batches": dat.nb,
        "seed": int(seed),
        "precondition": precondition,
        "init_loss": init_loss,
        "loss": getattr(loss_fn, "llc_loss_name", getattr(loss_fn, "__name__", type(loss_fn).__name__)),
        "variance_reduction": "paired minibatch: n_beta * (L_B(w_t) - L_B(w*)), same batch B, cached L_B(w*)",
        "mala_acceptance": mala_mean,
        "mala_every": k_mala if mala else None,
        "shared_batches": bool(shared_batches),
        "mala_acceptance_per_chain": [float(np.nanmean(col)) if np.isfinite(col).any() else float("nan")
                                      for col in acc.T] if mala else [],
        "rhat": r_hat,
        "ess": n_eff,
        "frac_negative_draws": frac_neg,
        "llc_per_draw_mean_trace_first_last_quarter": [
            float(llc_trace[:, : max(1, llc_trace.shape[1] // 4)].mean()),
            float(llc_trace[:, -max(1, llc_trace.shape[1] // 4):].mean()),
        ],
        "seconds": total_s,
        "sampling_seconds": loop_s,
        "draws_per_s": C * T / loop_s if loop_s > 0 else float("nan"),
        "warnings": warn,
    }
    return LLCResult(mean, std, per_chain.tolist(), loss_trace, diagnostics, llc_trace)


# ---------------------------------------------------------------------------------------------------------
# Calibration


def _stationary(llc_trace: np.ndarray) -> bool:
    q = max(1, llc_trace.shape[1] // 4)
    a, b = llc_trace[:, q : 2 * q].mean(), llc_trace[:, -q:].mean()
    spread = llc_trace[:, -q:].std() / math.sqrt(max(1, llc_trace[:, -q:].size / 10)) + 1e-12
    return abs(b - a) <= max(0.1 * abs(b), 3 * spread)


def calibrate(
    model,
    loss_fn,
    data,
    *,
    n: int,
    step_sizes=(1e-5, 1e-4, 1e-3),
    nbetas=None,
    localization: float = 100.0,
    num_chains: int = 2,
    num_draws: int = 100,
    num_burnin: int = 0,
    batch_size: int | None = None,
    restrict=None,
    seed: int = 0,
    plot_path: str | Path | None = None,
    **kwargs,
) -> dict:
    """Sweep step size x n_beta, recommend a setting and (if ``plot_path``) plot the LLC traces as a PNG.

    Rule: drop diverged, negative and non-stationary settings (last-quarter mean differs from the
    second-quarter mean); among the rest take the largest step size whose MALA acceptance is >= 0.9 (else the
    highest acceptance), preferring the default n_beta on ties.
    """
    nb0 = default_nbeta(n)
    nbetas = [nb0] if nbetas is None else [float(b) for b in nbetas]
    grid = []
    traces = {}
    for nbv in nbetas:
        for eps in step_sizes:
            row = {"step_size": float(eps), "nbeta": nbv}
            try:
                res = estimate_llc(model, loss_fn, data, n=n, nbeta=nbv, step_size=eps, localization=localization,
                                   num_chains=num_chains, num_draws=num_draws, num_burnin=num_burnin,
                                   batch_size=batch_size, restrict=restrict, seed=seed, **kwargs)
            except LLCDivergenceError as e:
                row.update(diverged=True, error=str(e), llc=None)
                grid.append(row)
                continue
            d = res.diagnostics
            row.update(diverged=False, llc=res.mean, llc_std=res.std, mala_acceptance=d["mala_acceptance"],
                       rhat=d["rhat"], frac_negative_draws=d["frac_negative_draws"],
                       stationary=_stationary(res.llc_trace))
            traces[(nbv, float(eps))] = res.llc_trace
            grid.append(row)
    ok = [r for r in grid if not r["diverged"] and r["llc"] > 0 and r["stationary"]]
    rec = None
    if ok:
        good = [r for r in ok if (r["mala_acceptance"] or 0) >= 0.9]
        if good:
            rec = max(good, key=lambda r: (r["step_size"], -abs(math.log(r["nbeta"] / nb0))))
        else:
            rec = max(ok, key=lambda r: (r["mala_acceptance"] or 0, r["step_size"]))
    out = {"grid": grid, "recommended": rec, "default_nbeta": nb0,
           "rule": "largest non-diverged, positive, stationary step size with MALA acceptance >= 0.9"}
    if plot_path is not None:
        out["figure"] = str(plot_traces(traces, plot_path, title="LLC calibration: n_beta x step size"))
    return out


def plot_traces(traces: dict, path, title: str = "") -> Path:
    """``traces``: ``{(nbeta, step_size) or label: chains x draws array}`` -> one subplot each, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..results import save_figure

    keys = list(traces)
    cols = min(4, max(1, len(keys)))
    rows = max(1, math.ceil(len(keys) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    for ax, k in zip(axes.flat, keys):
        tr = np.asarray(traces[k])
        for c in range(tr.shape[0]):
            ax.plot(tr[c], lw=0.7)
        ax.axhline(tr.mean(), color="k", lw=0.8, ls="--")
        label = f"nβ={k[0]:.3g}, ε={k[1]:.1e}" if isinstance(k, tuple) else str(k)
        ax.set_title(f"{label}\nλ̂={tr.mean():.3g}", fontsize=8)
        ax.set_xlabel("draw", fontsize=7)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    p = save_figure(fig, path)
    plt.close(fig)
    return p


# ---------------------------------------------------------------------------------------------------------
# Losses for language models


def causal_lm_loss_fn(pad_token_id: int | None = None) -> Callable:
    """Mean next-token cross-entropy over non-pad targets (``batch`` = input_ids)."""
    import torch.nn.functional as F

    def lm_loss(model, input_ids):
        logits = model(input_ids=input_ids).logits[:, :-1]
        targets = input_ids[:, 1:]
        if pad_token_id is None:
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        keep = (targets != pad_token_id).to(logits.dtype)
        tok = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="none")
        return (tok * keep.reshape(-1)).sum() / keep.sum().clamp_min(1)

    lm_loss.llc_loss_name = "lm_cross_entropy"
    return lm_loss


def self_kl_loss_fn(reference, input_ids=None, *, attention_mask=None, pad_token_id=None, chunk: int = 64):
    """The self-KL loss ``K(w) = mean_tokens KL(p_ref(.|x_<t) || p_w(.|x_<t))`` and its data.

    ``reference``: a causal LM (its next-token log-probabilities on ``input_ids`` are computed once, without
    gradients) or a logits tensor ``[N, T, V]`` for ``input_ids``. The mask is ``attention_mask``, else
    ``input_ids != pad_token_id``, else all ones; the KL is averaged over masked positions. ``K`` is 0 and
    minimal at the reference weights, so the LLC there is well-defined even where the training loss is not at a
    minimum (e.g. a point ``w0 + t * delta`` on an edit path). Returns ``(loss_fn, data)`` for :func:`estimate_llc`.
    """
    import torch

    if input_ids is None:
        raise UserError("self_kl_loss_fn needs input_ids (the prompts the KL is averaged over)")
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
            raise UserError(f"reference logits {tuple(reference.shape)} do not match input_ids {tuple(ids.shape)}")
        ref = torch.log_softmax(reference.detach().float(), -1)
    else:
        parts = []
        with torch.no_grad():
            for i in range(0, len(ids), chunk):
                out = reference(input_ids=ids[i : i + chunk], attention_mask=mask[i : i + chunk].long())
                parts.append(torch.log_softmax(out.logits.float(), -1))
        ref = torch.cat(parts)

    def self_kl(model, batch):
        x, m, ref_logp = batch
        logp = torch.log_softmax(model(input_ids=x, attention_mask=m.long()).logits.float(), -1)
        kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
        return (kl * m).sum() / m.sum().clamp_min(1.0)

    self_kl.llc_loss_name = "self_kl"
    return self_kl, (ids, mask, ref)


# ---------------------------------------------------------------------------------------------------------
# Uses: trajectories and paths


def llc_over_checkpoints(checkpoints, loss_fn, data, *, n: int, load: Callable | None = None,
                         progress: bool = False, **llc_kwargs) -> list[tuple[Any, LLCResult]]:
    """LLC at each checkpoint of a training trajectory.

    ``checkpoints``: models, folders (loaded with ``load`` or ``AutoModelForCausalLM.from_pretrained``) or
    ``(step, model_or_folder)`` pairs. Returns ``[(step, LLCResult)]`` (step = position if not given).
    """
    items = list(checkpoints)
    if not items:
        raise UserError("no checkpoints given")
    if load is None:
        def load(p):
            from transformers import AutoModelForCausalLM

            return AutoModelForCausalLM.from_pretrained(str(p)).eval()
    out = []
    it = items
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        it = tqdm(items, desc="checkpoints", leave=False)
    for i, item in enumerate(it):
        step, ck = item if isinstance(item, tuple) else (i, item)
        model = load(ck) if isinstance(ck, str | Path) else ck
        out.append((step, estimate_llc(model, loss_fn, data, n=n, **llc_kwargs)))
    return out


def adapter_path(peft_model) -> tuple[dict, dict]:
    """``(origin, delta)`` for the path ``w0 + t * delta`` that scales a LoRA adapter by ``t``.

    ``delta W = scale * B A`` is linear in ``B``, so scaling every ``lora_B`` by ``t`` walks exactly along
    ``W0 + t * delta W``: origin = zeros for the ``lora_B`` tensors, delta = their trained values.
    """
    delta = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_B" in n}
    if not delta:
        raise UserError("the model has no lora_B parameters (is it a PEFT LoRA model?)")
    return {n: v.new_zeros(v.shape) for n, v in delta.items()}, delta


def llc_along_path(model, delta: dict, ts, loss_fn: Callable | None = None, *, loss_fn_factory=None, data=None,
                   n: int, origin: dict | None = None, attention_mask=None, pad_token_id=None,
                   **llc_kwargs) -> list[dict]:
    """LLC at ``w0 + t * delta`` for each ``t`` in ``ts``.

    ``w0`` is the model's current weights (or ``origin`` for the named tensors); ``delta`` maps parameter
    names to tensors. The loss at each point is, in order of precedence: ``loss_fn_factory(model_at_point)``
    (returning ``loss_fn`` or ``(loss_fn, data)``); ``loss_fn`` (a fixed loss: NOT minimised at the point, so
    SGLD drifts downhill and the estimate is meaningless unless the point is a minimum); by default the self-KL
    loss (:func:`self_kl_loss_fn`) on ``data`` = input_ids, which is minimised (=0) at every point. The model's
    weights are restored afterwards. Returns ``[{"t", "llc", "llc_std", "loss", "result"}]``.
    """
    import torch

    named = dict(model.named_parameters())
    missing = [k for k in delta if k not in named]
    if missing:
        raise UserError(f"delta names not in the model: {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    if origin:
        bad = [k for k in origin if k not in delta]
        if bad:
            raise UserError(f"origin names not in delta: {bad[:3]}")
    saved = {k: named[k].detach().clone() for k in delta}
    base = {k: (origin[k] if origin and k in origin else saved[k]).detach() for k in delta}
    out = []
    try:
        for t in ts:
            with torch.no_grad():
                for k, d in delta.items():
                    named[k].copy_(base[k] + float(t) * d.to(base[k].dtype))
            if loss_fn_factory is not None:
                made = loss_fn_factory(model)
                lf, dat = made if isinstance(made, tuple) else (made, data)
                which = getattr(lf, "llc_loss_name", "factory")
            elif loss_fn is not None:
                lf, dat, which = loss_fn, data, "task (fixed loss; the point need not be a minimum)"
            else:
                if data is None:
                    raise UserError("llc_along_path needs data (input_ids for the default self-KL loss)")
                lf, dat = self_kl_loss_fn(model, data, attention_mask=attention_mask, pad_token_id=pad_token_id)
                which = "self_kl"
            res = estimate_llc(model, lf, dat, n=n, **llc_kwargs)
            res.diagnostics["path_t"] = float(t)
            res.diagnostics["loss"] = which
            out.append({"t": float(t), "llc": res.mean, "llc_std": res.std, "loss": which, "result": res})
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                named[k].copy_(v)
    return out


# ---------------------------------------------------------------------------------------------------------
# Developmental stages


def critical_points(xs, ys, sigma: float = 1.0) -> dict:
    """Critical points of the Gaussian-smoothed curve ``ys(xs)`` (smoothing over checkpoint index).

    Returns ``{"smoothed", "slope", "boundaries": [x at each sign change of the slope], "kinds": ["max"|"min"]}``:
    the stage boundaries of developmental interpretability (Hoogland et al. 2024) are where the LLC stops
    rising or falling.
    """
    from scipy.ndimage import gaussian_filter1d

    xs = np.asarray(xs, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    if len(xs) != len(ys) or len(xs) == 0:
        raise ValueError("xs and ys must be non-empty and of equal length")
    sm = gaussian_filter1d(ys, sigma, mode="nearest") if sigma > 0 and len(ys) > 2 else ys.copy()
    slope = np.gradient(sm) if len(sm) > 1 else np.zeros_like(sm)
    bounds, kinds = [], []
    for i in range(1, len(slope)):
        a, b = slope[i - 1], slope[i]
        if a > 0 >= b or a < 0 <= b:
            j = i if abs(b) <= abs(a) else i - 1
            if 0 < j < len(xs) - 1 and (not bounds or bounds[-1] != xs[j]):
                bounds.append(float(xs[j]))
                kinds.append("max" if a > 0 else "min")
    return {"smoothed": sm.tolist(), "slope": slope.tolist(), "boundaries": bounds, "kinds": kinds}
