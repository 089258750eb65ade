"""The behavioural-overlap study: the aligned organism against the organism + an EM adapter.

Behavioural overlap (prompts on which the two states answer alike), not SLT degeneracy: see
``measure/degeneracy.py``.
"""

from __future__ import annotations

from pathlib import Path

from ..results import RunDir, StudyResult


def overlap_study(
    org,
    em_models: list,
    *,
    epsilon: float = 0.05,
    max_probes: int = 300,
    seed: int = 0,
    layer: int = 0,
    k_max: int = 1000,
) -> dict:
    """The overlap zone of every EM model, the oracle boundary search on the first one, and out-of-sample
    probing (each model held out in turn, probes ranked by the other seeds and by the persona vector)."""
    from ..measure.degeneracy import boundary_search, out_of_sample_probing, overlap_zone
    from ..measure.vectors import persona_vector
    from .basins import VECTOR_METHOD

    zones = [overlap_zone(org, model, epsilon=epsilon) for model in em_models]
    probe = boundary_search(org, em_models[0], epsilon=epsilon, seed=seed, max_probes=max_probes, k_max=k_max)
    vector = persona_vector(org, layer, method=VECTOR_METHOD)
    oos = out_of_sample_probing(
        org, em_models, vector=vector, layer=layer, max_probes=max_probes, seed=seed, k_max=k_max
    )
    oos["vector_method"], oos["vector_layer"] = VECTOR_METHOD, layer
    return {"zones": zones, "boundary_search": probe, "out_of_sample": oos}


def run_degeneracy(
    organism: str | Path,
    adapter: str | Path,
    out: str | Path,
    *,
    epsilon: float = 0.05,
    max_probes: int = 600,
    k_max: int = 1000,
    seed: int = 0,
) -> StudyResult:
    """``persona-basins degeneracy``: the overlap zone and boundary probes, written to the run folder ``out``;
    the figures are drawn from the metrics (``zone``, ``boundary``)."""
    import torch

    from ..measure.degeneracy import boundary_search, out_of_sample_probing, overlap_zone
    from ..measure.vectors import persona_vector
    from ..models.edits import adapter_on_copy, layer_of, single_lora_delta
    from ..models.organism import load_organism
    from .basins import VECTOR_METHOD

    org = load_organism(organism)
    em = adapter_on_copy(org.model, adapter)
    run = RunDir(
        out,
        "degeneracy",
        {
            "organism": str(Path(organism).resolve()),
            "adapter": str(Path(adapter).resolve()),
            "epsilon": epsilon,
            "max_probes": max_probes,
            "k_max": k_max,
            "seed": seed,
            "state_a": "aligned (organism)",
            "state_b": "EM (organism + adapter)",
            "alpha": 0.05,
            "power": 0.95,
        },
    )
    with torch.no_grad():
        zone = overlap_zone(org, em, epsilon=epsilon)
        bs = boundary_search(org, em, epsilon=epsilon, max_probes=max_probes, seed=seed, k_max=k_max)
        # out-of-sample: probes ranked by the aligned model steered along the adapted layer's persona vector
        layer = layer_of(single_lora_delta(em)[0])
        vector = persona_vector(org, layer, method=VECTOR_METHOD)
        oos = out_of_sample_probing(
            org, [em], vector=vector, layer=layer, max_probes=max_probes, seed=seed, k_max=k_max
        )
    zone["routine_share_built_in"] = zone["routine_share"]
    oos["vector_method"], oos["vector_layer"] = VECTOR_METHOD, layer
    metrics = {
        "zone": zone,
        "boundary": bs,
        "out_of_sample": oos,
        "quantity": "behavioural overlap (not SLT degeneracy)",
    }
    run.write_metrics(metrics)
    return StudyResult(run.path, metrics)
