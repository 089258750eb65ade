"""The LLC estimator: localised SGLD batched over chains (the kernel) and :func:`estimate_llc` around it.

    lambda_hat = n_beta * (E_w[L(w)] - L(w*)),   w ~ exp(-n_beta L_n(w) - (gamma / 2) ||w - w*||^2)

The posterior is sampled by SGLD (optionally RMSProp-preconditioned); every chain starts at ``w*``. The
draw's loss is the minibatch loss of the SGLD step's own forward pass (no extra evaluation pass).

Variance reduction (unbiased): each draw's contribution is ``n_beta * (L_B(w_t) - L_B(w*))`` - the same
minibatch ``B`` evaluated at the draw and at ``w*``. Batches come from one fixed, seeded partition of the data
into equal-size batches, drawn uniformly at random each step, so ``E_B[L_B(w*)] = L_n(w*)`` exactly and the
paired difference has the same expectation as ``L_B(w_t) - L_n(w*)`` while the shared minibatch noise cancels.
``L_B(w*)`` is computed once per distinct batch that the pre-drawn schedule uses (a forward pass without
gradients, cached), never once per step.

Execution: all chains are one ``[chains, params]`` tensor; the model is called functionally with the moving
parameters swapped in. ``execution="vmap"`` evaluates all chains' losses in one ``torch.func.vmap``-batched
forward and gets every chain's gradient from one backward of their sum; ``"loop"`` runs the model's own
forward/backward once per chain; ``"auto"`` times both on the first call for a model class (and size) and
caches the faster. Both consume the same pre-drawn batch schedule and noise, so they give the same numbers up
to floating-point rounding. See ``docs/LLC.md``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ...errors import UserError
from ...progress import track
from .config import SamplerConfig, config_from_kwargs
from .diagnostics import DrawTrace, GateConfig, MalaAcceptance, convergence, mala_summary
from .problem import BatchPartition, FunctionalLoss
from .selection import select_parameters

__all__ = ["LLCResult", "LLCDivergenceError", "estimate_llc"]


class LLCDivergenceError(UserError):
    """SGLD diverged (NaN/inf or loss explosion); the message names a step size to try."""


@dataclass
class LLCResult:
    """``mean``/``std`` over chains, ``per_chain`` estimates, ``loss_trace`` (chains x draws) of the draws'
    minibatch losses, ``llc_trace`` (chains x draws) of ``n_beta * (L_B(w_t) - L_B(w*))``, diagnostics, and
    the equilibrium gates: ``converged`` (all gates passed), ``reasons`` (the failed ones), ``mcse`` (Monte
    Carlo standard error of the mean, from the ESS) and ``interval`` (mean +- 1.96 MCSE, floored at 0).

    ``mean`` is the estimate only when the gates passed, else None with ``withheld_reason`` saying why;
    ``unchecked_mean`` is the mean of the draws either way (for calibration grids and estimator benchmarks,
    which report it next to its gates, never as an estimate)."""

    unchecked_mean: float
    std: float
    per_chain: list[float]
    loss_trace: np.ndarray
    diagnostics: dict
    llc_trace: np.ndarray = field(default=None, repr=False)
    converged: bool = False
    reasons: list[str] = field(default_factory=list)
    mcse: float = float("nan")
    interval: tuple[float, float] | None = None
    distance_trace: np.ndarray = field(default=None, repr=False)

    @property
    def mean(self) -> float | None:
        """The estimate if the gates passed, else None (withheld: see ``withheld_reason``)."""
        return self.unchecked_mean if self.converged else None

    @property
    def value(self) -> float | None:
        """The same as ``mean``."""
        return self.mean

    @property
    def withheld_reason(self) -> str | None:
        """None for an estimate; else the failed gates, as one line."""
        return None if self.converged else "; ".join(self.reasons) or "the equilibrium gates failed"

    def to_dict(self, traces: bool = True) -> dict:
        out = {
            "llc": self.mean,
            "unchecked_llc": self.unchecked_mean,
            "llc_std": self.std,
            "per_chain": list(self.per_chain),
            "converged": self.converged,
            "reasons": list(self.reasons),
            "mcse": self.mcse,
            "interval": None if self.interval is None else list(self.interval),
            "diagnostics": self.diagnostics,
        }
        if traces:
            out["loss_trace"] = np.asarray(self.loss_trace).tolist()
            out["llc_trace"] = None if self.llc_trace is None else np.asarray(self.llc_trace).tolist()
        return out


# ---------------------------------------------------------------------------------------------------------
# Gradients of all chains: vmap or loop

_EXECUTION_CACHE: dict[tuple, tuple[str, str]] = {}
# vmap's fallback notice for ops without a batching rule (e.g. CPU flash attention): the execution choice
# already measured the cost, so the notice is noise.
warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")


def _make_steppers(prob: FunctionalLoss, data: BatchPartition, C: int, shared_batches: bool):
    import torch
    from torch.func import vmap

    shared = data.n_batches == 1 or shared_batches
    # vmap only the forward; one ordinary backward of sum_c loss_c gives every chain's gradient (the chains
    # do not interact), which is cheaper than vmap(grad(...)) and numerically identical.
    vfwd = vmap(prob.loss, in_dims=(0, None if shared else 0), randomness="different")
    bufs = {}

    # bidx: the step's batch index per chain on the CPU (a list: no device sync) and on the device
    def vmap_step(theta, bidx, bidx_dev):
        batch = data.batch(bidx[0]) if shared else data.stacked(bidx_dev)
        leaves = prob.leaves(theta)
        losses = vfwd(leaves, batch)
        gs = torch.autograd.grad(losses.sum(), leaves)
        grads = bufs.get("g")
        if grads is None or grads.shape != theta.shape:
            grads = bufs["g"] = torch.empty_like(theta)
        prob.write_grads(gs, grads)
        return grads, losses.detach()

    def loop_step(theta, bidx, bidx_dev):
        grads = bufs.get("g")
        if grads is None or grads.shape != theta.shape:
            grads = bufs["g"] = torch.empty_like(theta)
        losses = torch.empty(theta.shape[0], dtype=theta.dtype, device=theta.device)
        for c, b in enumerate(bidx):
            leaves = prob.leaves(theta[c])
            loss = prob.loss(leaves, data.batch(b))
            gs = torch.autograd.grad(loss, leaves)
            prob.write_grads(gs, grads[c])
            losses[c] = loss.detach()
        return grads, losses

    return {"vmap": vmap_step, "loop": loop_step}


def _choose_execution(execution: str, steppers, prob, C, data, model) -> tuple[str, str]:
    import torch

    if execution in ("vmap", "loop"):
        return execution, "forced"
    key = (
        type(model).__module__ + "." + type(model).__qualname__,
        prob.D,
        C,
        data.bs,
        data.n_batches == 1,
        str(prob.theta0.device),
    )
    if key in _EXECUTION_CACHE:
        p, why = _EXECUTION_CACHE[key]
        return p, f"cached ({why})"
    theta = prob.theta0.unsqueeze(0).repeat(C, 1)
    bidx, bidx_dev = [0] * C, torch.zeros(C, dtype=torch.long, device=theta.device)
    times = {}
    for name in ("vmap", "loop"):
        try:
            with warnings.catch_warnings():  # e.g. "no batching rule for sdpa": the timing decides anyway
                warnings.simplefilter("ignore")
                steppers[name](theta, bidx, bidx_dev)  # warm-up
                t0, k = time.perf_counter(), 0
                while k < 3 or (time.perf_counter() - t0 < 0.05 and k < 50):
                    steppers[name](theta, bidx, bidx_dev)
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
        choice = (
            best,
            f"measured: vmap {times['vmap'] * 1e3:.3g} ms/step, loop {times['loop'] * 1e3:.3g} ms/step",
        )
    _EXECUTION_CACHE[key] = choice
    return choice


# ---------------------------------------------------------------------------------------------------------
# The SGLD kernel


def chain_seeds(seed: int, num_chains: int) -> list[int]:
    """One noise seed per chain, derived from ``seed`` and the chain's index only (never from how the chains
    are split over processes), so a chain draws the same noise whatever the worker count."""
    return [
        int(s.generate_state(1, dtype=np.uint64)[0] >> 1)
        for s in np.random.SeedSequence(seed).spawn(num_chains)
    ]


def _run_chains(
    step,
    prob: FunctionalLoss,
    sched,
    star,
    cfg: SamplerConfig,
    nbeta: float,
    seeds,
    thresh: float,
    init_loss: float,
    progress: bool,
    chain_offset: int = 0,
):
    """Run ``sched.shape[1]`` chains from ``w*`` for ``sched.shape[0]`` steps (``sched``: CPU batch indices;
    ``seeds``: one noise seed per chain). Every tensor lives on the device of the moving parameters."""
    import torch

    T, C = sched.shape
    eps, gamma = cfg.step_size, cfg.localization
    theta0 = prob.theta0
    theta = theta0.unsqueeze(0).repeat(C, 1)
    dtype, device = theta.dtype, theta.device
    gens = [torch.Generator(device=device).manual_seed(int(sd)) for sd in seeds]
    sched_dev = sched.to(device)
    sched_list = sched.tolist()
    # Preallocated [C, D] buffers: large per-step temporaries would each cost an allocation and page faults.
    other = torch.empty_like(theta)  # the previous state (for MALA), overwritten by the next state
    diff, drift, noise = torch.empty_like(theta), torch.empty_like(theta), torch.empty_like(theta)
    V = torch.zeros_like(theta) if cfg.precondition else None
    P = torch.empty_like(theta) if cfg.precondition else None
    Psq = torch.empty_like(theta) if cfg.precondition else None
    losses_tr = DrawTrace(T, C, dtype=dtype, device=device)
    diffs_tr = DrawTrace(T, C, dtype=dtype, device=device)
    dist_tr = DrawTrace(T, C, dtype=dtype, device=device)
    # MALA acceptance on every k-th transition: a diagnostic, so a subsample suffices for large models
    k_mala = cfg.mala_every or (1 if C * prob.D <= 1_000_000 else 10)
    mala = (
        MalaAcceptance(
            T, C, every=k_mala, step_size=eps, nbeta=nbeta, localization=gamma, dtype=dtype, device=device
        )
        if cfg.mala
        else None
    )
    sqrt_eps = math.sqrt(eps)
    alpha = cfg.rmsprop_alpha
    it = track(range(T), "SGLD", unit="steps", enabled=progress)
    check_every = 10
    for t in it:
        bidx_dev = sched_dev[t]
        grads, losses = step(theta, sched_list[t], bidx_dev)
        losses_tr.update(t, losses)
        d = losses - star[bidx_dev]
        diffs_tr.update(t, d)
        torch.sub(theta, theta0, out=diff)
        dist_tr.update(t, torch.linalg.vector_norm(diff, dim=1))
        torch.mul(grads, nbeta, out=drift).add_(diff, alpha=gamma)  # grad of U = nb L + gamma/2 |w - w*|^2
        if V is not None:
            V.mul_(alpha).addcmul_(grads, grads, value=1 - alpha)
            torch.div(V, 1 - alpha ** (t + 1), out=P).sqrt_().add_(cfg.rmsprop_eps).reciprocal_()
        if mala is not None:
            mala.before_noise(t, theta=theta, previous=other, drift=drift, diff=diff, dloss=d, precond=P)
        for c, g in enumerate(gens):
            torch.randn(theta.shape[1:], generator=g, dtype=dtype, device=device, out=noise[c])
        if mala is not None:
            mala.after_noise(t, noise)
        new = other
        if P is None:
            torch.add(theta, drift, alpha=-0.5 * eps, out=new).add_(noise, alpha=sqrt_eps)
        else:
            torch.addcmul(theta, P, drift, value=-0.5 * eps, out=new)
            new.addcmul_(torch.sqrt(P, out=Psq), noise, value=sqrt_eps)
        other, theta = theta, new
        if (t + 1) % check_every == 0 or t == T - 1:
            lo = (t // check_every) * check_every
            w = diffs_tr.values[lo : t + 1]
            bad = ~torch.isfinite(w) | (w > thresh)
            if bad.any():
                tt, cc = (int(v) for v in bad.nonzero()[0])
                val = float(w[tt, cc])
                what = (
                    "the loss became NaN/inf"
                    if not math.isfinite(val)
                    else (f"the loss rose {val:.3g} above L(w*)={init_loss:.4g}")
                )
                raise LLCDivergenceError(
                    f"SGLD diverged at step {lo + tt} (chain {cc + chain_offset}): {what} "
                    f"with step_size={eps:g}; "
                    f"try step_size={eps / 10:g} (or a larger localization)"
                )
    return {
        "loss": losses_tr.values,
        "diff": diffs_tr.values,
        "dist": dist_tr.values,
        "acc": None if mala is None else mala.acc,
        "mala_every": k_mala,
    }


# ---------------------------------------------------------------------------------------------------------
# Chains over worker processes (CPU): each worker runs a contiguous block of chains with one thread and writes
# its draws into shared-memory tensors; nothing is pickled (the model is inherited by fork).


def _worker(a: int, b: int, kernel_args: tuple, out: dict, conn) -> None:
    import torch

    torch.set_num_threads(1)
    try:
        step, prob, sched, star, cfg, nb, seeds, thresh, init_loss = kernel_args
        res = _run_chains(
            step, prob, sched[:, a:b], star, cfg, nb, seeds[a:b], thresh, init_loss, False, chain_offset=a
        )
        for k, v in out.items():
            if res.get(k) is not None:
                v[:, a:b] = res[k]
        conn.send_bytes(b"ok")
    except LLCDivergenceError as e:
        conn.send_bytes(b"D" + str(e).encode())
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises
        conn.send_bytes(b"E" + f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".encode())
    finally:
        conn.close()


def _run_workers(workers: int, kernel_args: tuple, mala: bool) -> dict:
    import multiprocessing as mp

    import torch

    step, prob, sched, *_ = kernel_args
    T, C = sched.shape
    dtype = prob.theta0.dtype
    keys = ("loss", "diff", "dist") + (("acc",) if mala else ())
    out = {k: torch.full((T, C), float("nan"), dtype=dtype).share_memory_() for k in keys}
    blocks = [blk for blk in np.array_split(np.arange(C), workers) if len(blk)]
    ctx = mp.get_context("fork")
    procs = []
    for blk in blocks:
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(
            target=_worker, args=(int(blk[0]), int(blk[-1]) + 1, kernel_args, out, w), daemon=True
        )
        p.start()
        w.close()
        procs.append((p, r))
    msgs = []
    for p, r in procs:
        try:
            msgs.append(r.recv_bytes())
        except EOFError:
            msgs.append(b"Eworker process ended without a result")
        p.join()
    for m in msgs:
        if m.startswith(b"D"):
            raise LLCDivergenceError(m[1:].decode())
    for m in msgs:
        if m != b"ok":
            raise RuntimeError(f"LLC worker failed: {m[1:].decode()}")
    return {**out, "acc": out.get("acc")}


def _available_cores() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _step_seconds(step, prob, C: int) -> float:
    import torch

    theta = prob.theta0.unsqueeze(0).repeat(C, 1)
    bidx, bidx_dev = [0] * C, torch.zeros(C, dtype=torch.long, device=theta.device)
    step(theta, bidx, bidx_dev)
    t0, k = time.perf_counter(), 0
    while k < 3 or (time.perf_counter() - t0 < 0.05 and k < 30):
        step(theta, bidx, bidx_dev)
        k += 1
    return (time.perf_counter() - t0) / k


def _choose_workers(requested, step, prob, C: int, T: int) -> tuple[int, str]:
    """``requested`` workers, or for ``"auto"``: split the chains over the idle cores (cores minus the load
    average of other work) when one worker's share of the chains steps clearly faster than all chains in one
    process and sampling is long enough to repay starting the processes (measured, like the execution
    choice)."""
    if requested != "auto":
        return int(requested), "given"
    if prob.theta0.device.type != "cpu":
        return 1, "not on the CPU: the batched path"
    import os

    cores = _available_cores()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    free = cores - max(0.0, load - 1.0)  # the load average counts this process too
    W = min(C, cores, max(1, int(free + 0.5)))
    if W < 2:
        return 1, f"{cores} core(s), load average {load:.1f}, {C} chain(s): no idle core for a second worker"
    t_all = _step_seconds(step, prob, C)
    t_part = _step_seconds(step, prob, -(-C // W))
    if T * t_all < 1.0:
        return (
            1,
            f"measured: {T * t_all:.2g} s of sampling in one process is too short to repay {W} processes",
        )
    if t_part * 1.15 < t_all:
        return (
            W,
            f"measured: {C} chains {t_all * 1e3:.3g} ms/step, {-(-C // W)} chains {t_part * 1e3:.3g} ms/step",
        )
    return 1, (
        f"measured: {C} chains {t_all * 1e3:.3g} ms/step, {-(-C // W)} chains {t_part * 1e3:.3g} ms/step "
        f"(batching wins)"
    )


# ---------------------------------------------------------------------------------------------------------
# The estimator


def estimate_llc(
    model,
    loss_fn: Callable,
    data,
    *,
    n: int,
    config: SamplerConfig | None = None,
    restrict=None,
    gates: GateConfig | None = None,
    progress: bool = False,
    **sampler_kwargs,
) -> LLCResult:
    """Estimate the (weight-restricted) local learning coefficient of ``model`` at its current weights ``w*``.

    ``loss_fn(model, batch)`` returns the scalar mean loss of a batch; ``data`` is a tensor (batch = rows),
    a tuple of tensors (batch = tuple of rows) or a dataset with ``input_ids`` (batch = the ids tensor).
    ``n`` is the dataset size in the posterior. ``config`` holds the sampler settings
    (:class:`SamplerConfig`); sampler settings may also be given as keyword arguments (``step_size=...``,
    ``num_chains=...``; the old ``path=`` is ``execution=``), which override ``config``. ``restrict`` picks
    the parameters that move (see :func:`select_parameters`); the rest stay frozen. ``gates``: the
    equilibrium thresholds (:class:`GateConfig`); the result's ``converged``/``reasons`` say whether they
    passed. The model's weights are never modified. Raises :class:`LLCDivergenceError` on NaN/inf or loss
    explosion.
    """
    import torch

    cfg = config_from_kwargs(config, sampler_kwargs)
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 2:
        raise UserError(f"n (the dataset size in the posterior) must be an integer >= 2, got {n!r}")
    nb = cfg.resolved_nbeta(n)
    C, B = cfg.num_chains, cfg.num_burnin
    T = B + cfg.num_draws
    t_start = time.perf_counter()

    selection, desc = select_parameters(model, restrict)
    named = list(model.parameters())
    device = named[0].device if named else torch.device("cpu")
    if cfg.device is not None and torch.device(cfg.device) != device:
        raise UserError(
            f"the model is on {device} but SamplerConfig.device is {cfg.device!r}: move the model "
            f"first (model.to({cfg.device!r}))"
        )
    # The data partition and the batch schedule are CPU bookkeeping from one generator; each chain's noise
    # comes from its own generator on the model's device (see chain_seeds).
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    dat = BatchPartition(data, cfg.batch_size, gen).to(device)

    grad_flags = {n_: p.requires_grad for n_, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        prob = FunctionalLoss(model, loss_fn, selection)
        # The pre-drawn batch schedule: identical for both executions.
        if dat.n_batches == 1:
            sched = torch.zeros(T, C, dtype=torch.long, device="cpu")
        elif (
            cfg.shared_batches
        ):  # every chain sees the same batch at a step (as devinterp does): fewer L_B(w*)
            sched = torch.randint(dat.n_batches, (T, 1), generator=gen, device="cpu").repeat(1, C)
        else:
            sched = torch.randint(dat.n_batches, (T, C), generator=gen, device="cpu")
        used = torch.unique(sched)
        star = torch.full((dat.n_batches,), float("nan"), dtype=torch.float64, device="cpu")
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
        star_f = star.to(device=device, dtype=prob.theta0.dtype)
        thresh = (
            cfg.explode_threshold if cfg.explode_threshold is not None else max(20.0, 10.0 * abs(init_loss))
        )

        steppers = _make_steppers(prob, dat, C, cfg.shared_batches)
        workers = cfg.workers
        if workers != "auto":
            workers = min(int(workers), C)
        if workers != 1 and device.type != "cpu":
            raise UserError(
                f"workers={cfg.workers} runs chains in CPU processes; on {device} use workers=1 "
                f"(the batched path)"
            )
        c_block = C if workers in (1, "auto") else -(-C // workers)
        chosen, why = _choose_execution(cfg.execution, steppers, prob, c_block, dat, model)
        workers, workers_why = _choose_workers(workers, steppers[chosen], prob, C, T)
        seeds = chain_seeds(cfg.seed, C)
        t_loop = time.perf_counter()
        if workers > 1:
            kernel_args = (steppers[chosen], prob, sched, star_f, cfg, nb, seeds, thresh, init_loss)
            tr = _run_workers(workers, kernel_args, cfg.mala)
            tr["mala_every"] = cfg.mala_every or (1 if c_block * prob.D <= 1_000_000 else 10)
        else:
            tr = _run_chains(
                steppers[chosen], prob, sched, star_f, cfg, nb, seeds, thresh, init_loss, progress
            )
        loop_s = time.perf_counter() - t_loop
    finally:
        for n_, p in model.named_parameters():
            p.requires_grad_(grad_flags.get(n_, True))

    def draws(v, scale=1.0):
        a = v[B:].T.double().cpu().numpy()
        return a * scale if scale != 1.0 else a

    loss_trace = draws(tr["loss"])
    llc_trace = draws(tr["diff"], nb)
    per_chain = llc_trace.mean(1)
    mean = float(per_chain.mean())
    std = float(per_chain.std(ddof=1)) if C > 1 else 0.0
    dist_trace = draws(tr["dist"])
    mala_mean, mala_per_chain = mala_summary(tr["acc"], B) if tr["acc"] is not None else (float("nan"), [])
    k_mala = tr["mala_every"]
    frac_neg = float((llc_trace < 0).mean())
    correlated = cfg.shared_batches and dat.n_batches > 1
    gate = convergence(
        llc_trace, dist_trace, correlated_chains=correlated, mala_acceptance=mala_mean, gates=gates
    )
    se = gate["mcse"]
    interval = (max(0.0, mean - 1.96 * se), max(0.0, mean + 1.96 * se)) if math.isfinite(se) else None
    warn = []
    if mean < 0:
        warn.append(
            "negative LLC: w* is not a local minimum of this loss (or the step size is too large); "
            "for points on a path use self_kl_loss_fn"
        )
    if not gate["converged"]:
        warn.append("not at equilibrium: " + "; ".join(gate["reasons"]))
    total_s = time.perf_counter() - t_start
    diagnostics = {
        "path": chosen,
        "path_reason": why,
        "workers": workers,
        "workers_reason": workers_why,
        "device": str(device),
        "restrict": desc,
        "num_params_moving": prob.D,
        "num_params_total": int(sum(p.numel() for p in model.parameters())),
        "n": int(n),
        "nbeta": nb,
        "step_size": cfg.step_size,
        "localization": cfg.localization,
        "num_chains": C,
        "num_draws": cfg.num_draws,
        "num_burnin": B,
        "batch_size": dat.bs,
        "num_batches": dat.n_batches,
        "seed": cfg.seed,
        "precondition": cfg.precondition,
        "init_loss": init_loss,
        "loss": getattr(loss_fn, "llc_loss_name", getattr(loss_fn, "__name__", type(loss_fn).__name__)),
        "variance_reduction": "paired minibatch: n_beta * (L_B(w_t) - L_B(w*)), same batch B, cached L_B(w*)",
        "mala_acceptance": mala_mean,
        "mala_every": k_mala if cfg.mala else None,
        "shared_batches": cfg.shared_batches,
        "mala_acceptance_per_chain": mala_per_chain,
        "rhat": gate["rhat"],
        "ess": gate["ess_bulk"],
        "ess_bulk": gate["ess_bulk"],
        "ess_tail": gate["ess_tail"],
        "mcse": se,
        "mcse_method": gate["mcse_method"],
        "ess_method": gate["ess_method"],
        "stationarity_z": gate["stationarity_z"],
        "distance_z": gate["distance_z"],
        "distance_from_wstar_first_last_half": [
            float(dist_trace[:, : dist_trace.shape[1] // 2].mean()),
            float(dist_trace[:, dist_trace.shape[1] // 2 :].mean()),
        ],
        "converged": gate["converged"],
        "reasons": gate["reasons"],
        "frac_negative_draws": frac_neg,
        "llc_per_draw_mean_trace_first_last_quarter": [
            float(llc_trace[:, : max(1, llc_trace.shape[1] // 4)].mean()),
            float(llc_trace[:, -max(1, llc_trace.shape[1] // 4) :].mean()),
        ],
        "seconds": total_s,
        "sampling_seconds": loop_s,
        "draws_per_s": C * T / loop_s if loop_s > 0 else float("nan"),
        "warnings": warn,
    }
    return LLCResult(
        mean,
        std,
        per_chain.tolist(),
        loss_trace,
        diagnostics,
        llc_trace,
        converged=gate["converged"],
        reasons=list(gate["reasons"]),
        mcse=se,
        interval=interval,
        distance_trace=dist_trace,
    )
