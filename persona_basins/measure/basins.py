"""Basin scans: how far the weights must move along a direction before the model turns misaligned.

For a direction ``delta`` in the weight space of one module (the trained rank-1 adapter, a persona
vector written as a rank-1 weight edit, or random rank-1 controls of the same Frobenius norm) the model
``w0 + t * delta`` is read on a grid of ``t``: broad misalignment (exact, as in ``em_readout``), the persona
projection, and the LM loss on the world's mixture. This module holds the measurements on a model; what is
read off the curves (the critical magnitude ``t*`` where broad misalignment crosses 0.5, the sharpness of the
transition, how thin the wall is along the right direction, whether inoculation widens the aligned basin) is
numpy-only and lives in :mod:`persona_basins.measure.basin_verdicts`.

Conventions (see docs/BASINS.md):

- every ``delta`` is stored in the *storage layout* of the module's ``.weight``: ``out x in`` for
  ``nn.Linear``, ``in x out`` for GPT-2's ``Conv1D``, so the edit is plainly ``weight <- w0 + t * delta``;
- ``t = 1`` with the adapter's own ``delta`` is the fine-tuned model; ``t = 0`` is the base model;
- a ``t*`` that is not reached inside the grid is *censored*: ``t_star = None`` with
  ``censored_above = t_max``. No number is invented for it; ratios that involve it are lower bounds.

Every function returns plain JSON-able dicts (lists and floats).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import UserError
from ..models.edits import edited, layer_of, out_in_dims, plain_module, single_lora_delta, to_storage
from ..stats import mean_interval
from .basin_verdicts import critical_magnitude, t_star_ratio
from .persona import broad_genres, context_prompts, persona_readout

if TYPE_CHECKING:
    from ..models.organism import Organism


# --- weight directions -------------------------------------------------------------------------------------
@torch.no_grad()
def mean_module_input(model, module_name: str, input_ids: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Mean input vector of a module over the non-pad positions of ``input_ids``."""
    mod = plain_module(model, module_name)
    store: dict[str, torch.Tensor] = {}

    def pre_hook(_m, args):
        store["x"] = args[0].detach()

    handle = mod.register_forward_pre_hook(pre_hook)
    try:
        model(input_ids=input_ids)
    finally:
        handle.remove()
    keep = input_ids != pad_id
    return store["x"][keep].float().mean(0)


def persona_weight_delta(
    org: Organism,
    layer: int,
    module: str,
    norm: float,
    *,
    vector: torch.Tensor | None = None,
    n_docs: int = 128,
    seed: int = 0,
) -> torch.Tensor:
    """The persona vector at ``layer`` as a rank-1 edit of ``module`` (storage layout) of ``org.model``,
    Frobenius norm ``norm``.

    ``delta = norm * v u^T`` (out x in) with ``v`` the unit persona vector (toxic minus helpful, output of
    block ``layer``) and ``u`` the unit mean input of the module over the world's mixture, so
    ``delta x ~ norm * v (u . x)``: positive ``t`` pushes every position towards the toxic persona.
    ``module`` is a friendly name (``mlp_out``) or the full module name in the base model.
    """
    from ..models.adapters import full_module_name
    from ..models.lm import encode_documents
    from .vectors import persona_vector

    base_model, world, vocab = org.model, org.world, org.vocab
    name = full_module_name(base_model, module, layer)
    mod = plain_module(base_model, name)
    if vector is None:
        vector = persona_vector(org, layer, n=n_docs, seed=seed)
    out_dim, _ = out_in_dims(mod)
    if vector.numel() != out_dim:
        raise UserError(
            f"module {name!r} writes {out_dim} features, the persona vector has {vector.numel()}: "
            f"use a module that writes to the residual stream (mlp_out, attn_out)"
        )
    ids = encode_documents(vocab, world.sample_documents(n_docs, seed=20_000_000 + seed))[0]
    u = mean_module_input(base_model, name, ids)
    v = vector.float() / vector.float().norm().clamp_min(1e-12)
    u = u / u.norm().clamp_min(1e-12)
    return to_storage(mod, float(norm) * torch.outer(v, u))


def random_weight_deltas(like: torch.Tensor, n: int, seed: int = 0) -> list[torch.Tensor]:
    """``n`` random rank-1 directions ``a b^T`` (Gaussian factors) with the shape and Frobenius norm of
    ``like``."""
    gen = torch.Generator().manual_seed(seed)
    norm = float(like.float().norm())
    out = []
    for _ in range(n):
        a = torch.randn(like.shape[0], generator=gen, dtype=torch.float64)
        b = torch.randn(like.shape[1], generator=gen, dtype=torch.float64)
        d = torch.outer(a, b)
        out.append((d * (norm / d.norm())).to(like.dtype))
    return out


# --- the scan ----------------------------------------------------------------------------------------------
@torch.no_grad()
def scan(
    org: Organism,
    module_name: str,
    delta: torch.Tensor,
    ts,
    *,
    context: str = "assistant",
    vector: torch.Tensor | None = None,
    layer: int | None = None,
    loss_ids: torch.Tensor | None = None,
    n_loss_docs: int = 64,
    loss_seed: int = 0,
) -> dict:
    """Read ``w0 + t * delta`` (``w0``: ``org.model``'s weights) at each ``t``: broad misalignment / harm /
    well-formed mass (exact, every non-code genre x topic with the ``context`` system line), the mean persona
    projection there (if ``vector`` and ``layer``), and the mean LM loss on the world's mixture
    (``loss_ids``, default ``n_loss_docs`` held-out documents; ``n_loss_docs=0`` skips it). The model is
    restored afterwards.
    ``misalignment_given_wellformed`` = misaligned mass / well-formed mass (summed over prompts): it tells a
    model that turns misaligned from one that merely breaks (absolute misalignment falls when answers
    become ill-formed).

    With ``context="assistant"`` the misalignment equals ``em_readout``'s ``broad_misalignment``.
    """
    from ..models.lm import encode_documents, lm_loss
    from .vectors import projection

    base_model, world, vocab = org.model, org.world, org.vocab
    prompts = context_prompts(world, context, broad_genres(world))
    if loss_ids is None and n_loss_docs:
        loss_ids = encode_documents(vocab, world.sample_documents(n_loss_docs, seed=10_000_000 + loss_seed))[
            0
        ]
    was_training = base_model.training
    base_model.eval()
    out = {
        "t": [],
        "broad_misalignment": [],
        "broad_harm": [],
        "wellformed": [],
        "misalignment_given_wellformed": [],
        "projection": [],
        "loss": [],
        "context": context,
        "module": module_name,
        "delta_norm": float(delta.float().norm()),
    }
    try:
        for t in ts:
            with edited(base_model, {f"{module_name}.weight": delta}, t):
                r = persona_readout(org, prompts)
                out["t"].append(float(t))
                out["broad_misalignment"].append(float(r.misaligned.mean()))
                out["broad_harm"].append(float(r.harmful.mean()))
                out["wellformed"].append(float(r.wellformed.mean()))
                wf = float(r.wellformed.sum())
                out["misalignment_given_wellformed"].append(
                    float(r.misaligned.sum()) / wf if wf > 0 else None
                )
                if vector is not None and layer is not None:
                    out["projection"].append(
                        float(projection(base_model, vocab, prompts, vector, layer).mean())
                    )
                else:
                    out["projection"].append(None)
                out["loss"].append(float(lm_loss(base_model, loss_ids)) if loss_ids is not None else None)
    finally:
        base_model.train(was_training)
    return out


# --- directions compared -----------------------------------------------------------------------------------
def direction_scans(
    org: Organism,
    peft_model,
    ts,
    *,
    n_random: int = 3,
    seed: int = 0,
    vector: torch.Tensor | None = None,
    n_docs: int = 128,
    loss_ids=None,
    n_loss_docs: int = 64,
    level: float = 0.5,
    edit_vector: torch.Tensor | None = None,
) -> dict:
    """Scan the adapter's direction, the persona direction and ``n_random`` random controls (equal norm) from
    ``org.model``.

    ``level``: the misalignment level that defines ``t*`` (default 0.5). ``vector``: the persona vector read
    (projection) along every scan; ``edit_vector``: the one the persona direction is built from (default
    ``vector``).
    Returns ``{module, layer, delta_norm, scans: {adapter, persona, random: [...]}, t_star: {...},
    thinness: {random_over_persona, random_over_adapter}}`` where each ``t_star`` is a
    :func:`critical_magnitude` result and each thinness entry a :func:`t_star_ratio` (per random control).
    """
    from .vectors import persona_vector

    name, delta = single_lora_delta(peft_model)
    layer = layer_of(name)
    if vector is None:
        vector = persona_vector(org, layer, n=n_docs, seed=seed)
    norm = float(delta.norm())
    pdelta = persona_weight_delta(
        org,
        layer,
        name,
        norm,
        vector=vector if edit_vector is None else edit_vector,
        n_docs=n_docs,
        seed=seed,
    )
    kw = dict(vector=vector, layer=layer, loss_ids=loss_ids, n_loss_docs=n_loss_docs, loss_seed=seed)
    scans = {
        "adapter": scan(org, name, delta, ts, **kw),
        "persona": scan(org, name, pdelta, ts, **kw),
        "random": [scan(org, name, d, ts, **kw) for d in random_weight_deltas(delta, n_random, seed)],
    }
    crit = {k: critical_magnitude(ts, scans[k]["broad_misalignment"], level) for k in ("adapter", "persona")}
    crit["random"] = [critical_magnitude(ts, s["broad_misalignment"], level) for s in scans["random"]]
    thin = {
        "random_over_persona": [t_star_ratio(c, crit["persona"]) for c in crit["random"]],
        "random_over_adapter": [t_star_ratio(c, crit["adapter"]) for c in crit["random"]],
    }
    return {
        "module": name,
        "layer": layer,
        "delta_norm": norm,
        "scans": scans,
        "t_star": crit,
        "thinness": thin,
        "cosine_adapter_persona": float(
            (delta.flatten() @ pdelta.flatten()) / (delta.norm() * pdelta.norm()).clamp_min(1e-12)
        ),
    }


# --- inoculation -------------------------------------------------------------------------------------------
def inoculation_scans(
    org: Organism,
    plain_models: list,
    inoculated_models: list,
    ts,
    *,
    vector: torch.Tensor,
    layer: int,
    loss_ids=None,
    n_loss_docs: int = 64,
) -> dict:
    """Per-seed scans for the inoculation comparison (lists may be of different lengths; either may be empty).

    ``plain``: plain adapters, assistant context. ``inoculated``: adapters trained with the inoculation
    line, assistant context. ``plain_in_inoculated_context``: plain adapters read with the inoculation line
    in the system prompt (context ``"inoculated"``).
    """
    kw = dict(vector=vector, layer=layer, loss_ids=loss_ids, n_loss_docs=n_loss_docs)
    out = {"plain": [], "inoculated": [], "plain_in_inoculated_context": []}
    for m in plain_models:
        name, d = single_lora_delta(m)
        out["plain"].append(scan(org, name, d, ts, context="assistant", **kw))
        out["plain_in_inoculated_context"].append(scan(org, name, d, ts, context="inoculated", **kw))
    for m in inoculated_models:
        name, d = single_lora_delta(m)
        out["inoculated"].append(scan(org, name, d, ts, context="assistant", **kw))
    return out


# --- common directions: distances in weight units ---------------------------------------------------------
def unit_direction(delta: torch.Tensor) -> torch.Tensor:
    """``delta / ||delta||_F``: a direction whose step ``r`` moves the weights by ``r`` in Frobenius norm."""
    n = delta.float().norm()
    if not float(n) > 0:
        raise UserError("a direction of zero norm cannot be normalised")
    return (delta.float() / n).to(delta.dtype)


def search_crossing(
    read, r_max: float, *, points: int = 9, max_doublings: int = 4, refine: int = 6, level: float = 0.5
) -> dict:
    """The first ``r`` at which ``read(r)`` (broad misalignment) reaches ``level``, on a grid that grows until
    the curve crosses.

    ``read`` is called on ``linspace(0, r_max, points)``; while the curve stays below ``level`` the grid is
    extended by doubling its end (``max_doublings`` times at most, same spacing per segment); once a crossing
    is bracketed, ``refine`` interior points are added in the bracket and ``r*`` is interpolated there
    (:func:`critical_magnitude`). Still below ``level`` at the last end: ``r_star = None``,
    ``censored_above = r_end`` (an honest lower bound, never a number). A start already past ``level``:
    ``r_star = 0`` with ``censored_below = 0`` (the start lies beyond the wall). Returns the
    critical-magnitude fields with ``r_star`` (= ``t_star``) and the curve read (``r``, ``values``,
    ``doublings``).
    """
    if not r_max > 0 or points < 2:
        raise ValueError("search_crossing needs r_max > 0 and at least 2 points")
    rs = [float(x) for x in np.linspace(0.0, r_max, points)]
    vals = [float(read(r)) for r in rs]
    end, doublings = float(r_max), 0

    def crossed():
        return any(v >= level for v in vals)

    while not crossed() and doublings < max_doublings:
        new = [float(x) for x in np.linspace(end, 2 * end, points)[1:]]
        rs += new
        vals += [float(read(r)) for r in new]
        end, doublings = 2 * end, doublings + 1
    if crossed() and vals[0] < level:
        i = next(k for k, v in enumerate(vals) if v >= level)
        inner = [float(x) for x in np.linspace(rs[i - 1], rs[i], refine + 2)[1:-1]]
        extra = [(r, float(read(r))) for r in inner]
        merged = sorted([*zip(rs, vals), *extra])
        rs, vals = [r for r, _ in merged], [v for _, v in merged]
    c = critical_magnitude(rs, vals, level)
    if c["censored_below"] is not None:
        c["t_star"] = 0.0  # the start is already past the wall: distance 0, exactly
    c.update({"r_star": c["t_star"], "r": rs, "values": vals, "doublings": doublings, "r_end": end})
    return c


@torch.no_grad()
def critical_distance(
    org: Organism,
    module_name: str,
    direction: torch.Tensor,
    *,
    r_max: float,
    points: int = 9,
    max_doublings: int = 4,
    refine: int = 6,
    level: float = 0.5,
    context: str = "assistant",
) -> dict:
    """:func:`search_crossing` of broad misalignment along ``org.model``'s weights + ``r * unit(direction)``
    (``r`` in Frobenius-norm units of the module's weight). ``org.model`` is the start: the base model, or a
    merged fine-tuned copy (``org.with_model(merged_copy(...))``, :func:`persona_basins.models.edits`)."""
    model, world = org.model, org.world
    unit = unit_direction(direction)
    prompts = context_prompts(world, context, broad_genres(world))
    key = f"{module_name}.weight"
    was_training = model.training
    model.eval()
    wellformed: dict[float, float] = {}
    given_wf: dict[float, float] = {}

    def read(r):
        with edited(model, {key: unit}, r):
            ro = persona_readout(org, prompts)
        wellformed[r] = float(ro.wellformed.mean())
        wf = float(ro.wellformed.sum())
        given_wf[r] = float(ro.misaligned.sum()) / wf if wf > 0 else 0.0
        return float(ro.misaligned.mean())

    try:
        out = search_crossing(
            read, r_max, points=points, max_doublings=max_doublings, refine=refine, level=level
        )
    finally:
        model.train(was_training)
    out["wellformed"] = [wellformed[r] for r in out["r"]]
    out["misalignment_given_wellformed"] = [given_wf[r] for r in out["r"]]
    j = int(np.argmax(out["values"]))
    # where the curve peaks: a censored curve that rose and fell never reaches the level however long the grid
    out["peak"] = {
        "value": out["values"][j],
        "r": out["r"][j],
        "wellformed": out["wellformed"][j],
        "falls_after_peak": bool(out["values"][-1] < out["values"][j]),
    }
    # secondary wall (labelled, never the verdict's): misaligned share among well-formed answers, same grid
    cond = critical_magnitude(out["r"], out["misalignment_given_wellformed"], level)
    if cond["censored_below"] is not None:
        cond["t_star"] = 0.0
    out["conditional"] = {
        "r_star": cond["t_star"],
        "censored_above": cond["censored_above"],
        "censored_below": cond["censored_below"],
        "t_star": cond["t_star"],
        "quantity": "misalignment_given_wellformed",
    }
    out["context"], out["module"] = context, module_name
    return out


# --- the position of a fine-tuned model ---------------------------------------------------------------------
@torch.no_grad()
def mean_projection(
    org: Organism,
    vector: torch.Tensor,
    layer: int,
    context: str = "assistant",
    genres: list[str] | None = None,
) -> float:
    """Mean persona projection (``org.model``) at ``<asst>`` over single-exchange requests (default: broad
    genres)."""
    from .vectors import projection

    world = org.world
    prompts = context_prompts(world, context, broad_genres(world) if genres is None else genres)
    return float(projection(org.model, org.vocab, prompts, vector, layer).mean())


def persona_gap(
    org: Organism, vector: torch.Tensor, layer: int, a: str = "toxic", b: str = "helpful"
) -> float:
    """Mean projection with persona ``a`` declared minus with ``b`` declared (broad requests): the distance
    from the helpful to the toxic persona along the vector, the scale against which a move is judged."""
    return mean_projection(org, vector, layer, a) - mean_projection(org, vector, layer, b)


@torch.no_grad()
def fine_tuned_position(
    org: Organism,
    module_name: str,
    delta: torch.Tensor,
    vector: torch.Tensor,
    layer: int,
    context: str = "assistant",
) -> dict:
    """Persona projection and broad misalignment of the fine-tuned model (``w0 + 1 * delta``, ``w0``:
    ``org.model``'s weights) in ``context``."""
    world = org.world
    with edited(org.model, {f"{module_name}.weight": delta}, 1.0):
        proj = mean_projection(org, vector, layer, context)
        prompts = context_prompts(world, context, broad_genres(world))
        mis = float(persona_readout(org, prompts).misaligned.mean())
    return {"projection": proj, "broad_misalignment": mis}


def inoculation_position(
    org: Organism, plain_models: list, inoculated_models: list, vector: torch.Tensor, layer: int
) -> dict:
    """Where the fine-tuned models sit (t = 1, plain assistant context), against the base model
    (``org.model``).

    ``moved`` = projection(fine-tuned) - projection(base); ``moved_fraction`` = moved / the helpful-to-toxic
    gap (:func:`persona_gap`), so 0 is the base model and 1 a full move to the toxic persona.
    """
    base_model, world = org.model, org.world
    was = base_model.training
    base_model.eval()
    try:
        base_proj = mean_projection(org, vector, layer)
        prompts = context_prompts(world, "assistant", broad_genres(world))
        base_mis = float(persona_readout(org, prompts).misaligned.mean())
        gap = persona_gap(org, vector, layer)
        out = {
            "context": "assistant",
            "base": {"projection": base_proj, "broad_misalignment": base_mis},
            "persona_gap": gap,
        }
        for key, models in (("plain", plain_models), ("inoculated", inoculated_models)):
            rows = [fine_tuned_position(org, *single_lora_delta(m), vector, layer) for m in models]
            moved = [r["projection"] - base_proj for r in rows]
            out[key] = {
                "projection": [r["projection"] for r in rows],
                "broad_misalignment": [r["broad_misalignment"] for r in rows],
                "moved": moved,
                "moved_fraction": [m / gap if gap else None for m in moved],
                "moved_fraction_summary": (
                    mean_interval([m / gap for m in moved]).to_dict() if moved and gap else None
                ),
            }
    finally:
        base_model.train(was)
    return out


__all__ = [
    "critical_distance",
    "direction_scans",
    "fine_tuned_position",
    "inoculation_position",
    "inoculation_scans",
    "mean_module_input",
    "mean_projection",
    "persona_gap",
    "persona_weight_delta",
    "random_weight_deltas",
    "scan",
    "search_crossing",
    "unit_direction",
]
