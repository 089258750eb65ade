"""The behavioural-overlap study: the aligned organism against the organism + an EM adapter."""

from __future__ import annotations

from pathlib import Path


def run_degeneracy(organism: str | Path, adapter: str | Path, out: str | Path, *, epsilon: float = 0.05,
                   max_probes: int = 600, k_max: int = 1000, seed: int = 0) -> dict:
    """``persona-basins degeneracy``: the overlap zone and boundary probes; writes the run folder and returns
    ``{zone, boundary, run}``."""
    import torch

    from ..measure.degeneracy import boundary_search, overlap_zone
    from ..models.edits import adapter_on_copy
    from ..models.organism import load_organism
    from ..results import RunDir

    org = load_organism(organism)
    em = adapter_on_copy(org.model, adapter)
    run = RunDir(out, "degeneracy", {
        "organism": str(Path(organism).resolve()), "adapter": str(Path(adapter).resolve()),
        "epsilon": epsilon, "max_probes": max_probes, "k_max": k_max, "seed": seed,
        "state_a": "aligned (organism)", "state_b": "EM (organism + adapter)", "alpha": 0.05, "power": 0.95})
    run.write_config()
    with torch.no_grad():
        zone = overlap_zone(org.model, em, org.world, org.vocab, epsilon=epsilon)
        bs = boundary_search(org.model, em, org.world, org.vocab, epsilon=epsilon, max_probes=max_probes,
                             seed=seed, k_max=k_max)
    run.write_metrics({"zone": zone, "boundary": bs})
    return {"zone": zone, "boundary": bs, "run": run}
