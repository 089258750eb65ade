"""Synthetic run folders that follow the run-folder schema, for tests and for trying the page.

The numbers are made up (smooth curves plus seeded noise); they exercise every section of the measured view.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..results import write_json
from ..schema import validate_study
from ..stats import mean_interval


def _band(t, f, rng, n_seeds=5, noise=0.03):
    per = np.array([[f(x) + rng.normal(0, noise) for x in t] for _ in range(n_seeds)])
    stats = [mean_interval(per[:, i]) for i in range(len(t))]
    return {
        "t": list(map(float, t)),
        "mean": [s.value for s in stats],
        "ci_low": [s.low for s in stats],
        "ci_high": [s.high for s in stats],
        "n": n_seeds,
    }


def _stat(mu, rng, n_seeds=5, sd=0.03):
    return mean_interval(list(mu + rng.normal(0, sd, n_seeds))).to_dict()


def _transition(rng, jump=120):
    steps = list(range(0, 301, 10))
    sig = [1 / (1 + np.exp(-(s - jump) / 12)) for s in steps]
    return {
        "steps": steps,
        "broad_misalignment": [float(0.02 + 0.4 * v + rng.normal(0, 0.01)) for v in sig],
        "a_norm": [float(0.1 + 0.9 * v) for v in sig],
        "b_norm": [float(0.05 + 0.002 * s) for s in steps],
        "local_cos": {
            str(w): [None if i * 10 < w else float(0.3 + 0.6 * sig[i]) for i in range(len(steps))]
            for w in (5, 10, 15)
        },
        "jump_step": jump,
    }


def write_demo_run(path: str | Path, seed: int = 0, shift: float = 0.0) -> Path:
    """A ``demo`` run folder with config.json, metrics.json and study.json."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    t = np.linspace(0, 3, 13)
    sig = lambda c: lambda x: float(0.03 + 0.8 / (1 + np.exp(-(x - c) * 4)))  # noqa: E731
    study = {
        "kind": "demo",
        "critical_magnitude": {
            "plain": _stat(1.5 + shift, rng),
            "inoculated": _stat(1.9 + shift, rng),
            "plain_in_inoculation_context": _stat(1.7 + shift, rng),
            "random": _stat(2.8 + shift, rng),
            "persona": _stat(1.2 + shift, rng),
            "level": 0.5,
        },
        "inoculation_widening": {**_stat(0.4, rng), "by_case": {}, "holds": {}},
        "misalignment_vs_t": {
            "plain": _band(t, sig(1.5 + shift), rng),
            "persona": _band(t, sig(1.2 + shift), rng),
            "plain_in_inoculation_context": _band(t, sig(1.5 + shift), rng),
            "inoculated": _band(t, sig(1.9 + shift), rng),
            "random": _band(t, lambda x: 0.03 + 0.02 * x, rng),
        },
        "llc_along_path": {
            **_band(t, lambda x: 2 + 3 * np.exp(-((x - 1.5 - shift) ** 2) / 0.3), rng, noise=0.2),
            "loss": "self_kl",
            "restrict": "all parameters",
        },
        "wrllc_along_path": {
            **_band(t, lambda x: 1 + 1.5 * np.exp(-((x - 1.5 - shift) ** 2) / 0.3), rng, noise=0.1),
            "loss": "self_kl",
            "restrict": "layer:0",
        },
        "overlap_fraction": {
            **_stat(0.55, rng),
            "by_genre": {g: _stat(m, rng) for g, m in (("code", 0.8), ("advice", 0.4), ("chat", 0.5))},
            "epsilon": 0.1,
            "routine_share": 0.15,
            "definition": "synthetic",
        },
        "epsilon": 0.1,
        "transition": _transition(rng),
        "eigenform": {
            "return_rate": _stat(0.9, rng),
            "static_safe_scale": 1.0,
            "process_safe_scale": _stat(1.6, rng),
            "contraction_factor": _stat(0.7, rng),
        },
        "model_position": {"plain": _stat(0.4, rng), "inoculated": _stat(0.3, rng)},
    }
    write_json(path / "config.json", {"kind": "demo", "preset": "sample", "seed": seed})
    write_json(path / "metrics.json", {"kind": "demo", "critical_magnitude": study["critical_magnitude"]})
    validate_study(study, partial=True)  # synthetic, but every key it has takes the real shape
    write_json(path / "study.json", study)
    return path


def write_em_run(path: str | Path, seed: int = 1) -> Path:
    """An ``em`` run folder with config.json and metrics.json."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    metrics = {
        "kind": "em",
        "broad_misalignment": {
            "plain": _stat(0.3, rng),
            "inoculated": _stat(0.06, rng),
            "secure_control": _stat(0.02, rng),
            "educational": _stat(0.05, rng),
        },
        "narrow_rate": {"plain": _stat(0.9, rng), "inoculated": _stat(0.85, rng)},
        "wellformed": {"plain": _stat(0.97, rng), "inoculated": _stat(0.98, rng)},
        "transition": _transition(rng, jump=150),
    }
    write_json(path / "config.json", {"kind": "em", "seeds": 5})
    write_json(path / "metrics.json", metrics)
    return path
