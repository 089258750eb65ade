"""Benchmark: seconds per gate-passing path point of the LLC on the organism, one core.

    .venv/bin/python benchmarks/llc_path_point.py                       # tiny and default organisms
    .venv/bin/python benchmarks/llc_path_point.py --organisms tiny      # one of them
    .venv/bin/python benchmarks/llc_path_point.py --default-dir DIR     # an organism built earlier
    .venv/bin/python benchmarks/llc_path_point.py --organisms tiny --tiny-dir RUN/organism \
        --adapter RUN/em/adapters/plain/seed0 --ends 0,2 --restricts module   # the demo's own path

A path point is ``w0 + t dW`` under the self-KL built at that point (0 and minimal there), over n = 1024
held-out documents of the pretraining mixture (the posterior's n; nβ = n / log n), moving the restriction
named (the attention output weight of layer 0, ``module``, or the whole layer 0, ``layer``). ``dW`` is a
random rank-1 direction of layer 0's attention output (Frobenius norm ``--delta-norm`` times the weight's);
the ends of the path are t = 0 and t = 1. With ``--adapter`` the path is that LoRA adapter's ``dW`` (the
demo's path: a plain EM fine-tune) and ``--ends`` names its ends (the tiny demo's LLC grid ends at t = 2).
For each organism x restriction x minibatch size:

1. calibrate at both ends (``measure.llc.calibrate``: RMSProp, γ 100 then 300, steps 1e-3 / 3e-4 / 1e-4 with
   refinement, 4 chains x (50 + 200) draws, lengthened when mixing is the only failure);
2. one setting for the curve: the setting recommended at both ends, or the more localised / smaller-step of
   the two, at the chain length that reaches the full gates' ESS at both ends;
3. that setting at both ends at full length: the seconds of each estimate (setup, L(w*), sampling) and its
   gates, and λ̂ at 2γ at both ends (the curve's γ-sensitivity).

"seconds per gate-passing point" is the full-length estimate's wall time when it passed (the calibration is
paid once per organism and restriction, and reported beside it). Writes benchmarks/results/llc_path_point.json
(merged per organism), with the load average seen.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "llc_path_point.json"
N_DOCS = 1024
RESTRICTS = {"module": r"^transformer\.h\.0\.attn\.c_proj\.weight$", "layer": "layer:0"}
CALIBRATION = {
    "step_sizes": (1e-4, 3e-4, 1e-3),
    "localizations": (100.0, 300.0),
    "preconditioners": ("rmsprop",),
}


def _organism_dir(preset: str, given: str | None) -> Path:
    folder = Path(given) if given else Path("/tmp/persona-basins-bench") / f"org-{preset}"
    if not (folder / "world.json").is_file():
        print(f"building the {preset} organism in {folder} ...", flush=True)
        cmd = [sys.executable, "-m", "persona_basins.cli", "organism", "build", "--preset", preset]
        subprocess.run([*cmd, "--seed", "0", "--out", str(folder)], check=True)
    return folder


def _point(org, pname: str, delta, t: float, n_docs: int, seq_len: int | None):
    """(model at w0 + t dW, self-KL loss, its data) over ``n_docs`` held-out documents."""
    from persona_basins.measure.llc import self_kl_loss_fn
    from persona_basins.models.edits import merged_copy

    ids = org.mixture_input_ids(n_docs, seed=123)
    if seq_len is not None:
        ids = ids[:, :seq_len]
    model = merged_copy(org.model, {pname: delta}, t)
    loss_fn, data = self_kl_loss_fn(model, ids, pad_token_id=0)
    return model, loss_fn, data


def _summary(res) -> dict:
    d = res.diagnostics
    return {
        "llc_unchecked": res.unchecked_mean,
        "llc": res.mean,
        "mcse": res.mcse,
        "passed": res.converged,
        "reasons": res.reasons,
        "rhat": d["rhat"],
        "ess_bulk": d["ess_bulk"],
        "ess_tail": d["ess_tail"],
        "mala_acceptance": d["mala_acceptance"],
        "seconds": d["seconds"],
        "ms_per_chain_step": 1e3
        * d["sampling_seconds"]
        / (d["num_chains"] * (d["num_draws"] + d["num_burnin"])),
        "execution": d["path"],
    }


def _common_setting(cals: list[dict]) -> dict | None:
    """One setting for the whole curve from the calibrations at its ends: the more localised, then the
    smaller step of the recommended ones (it passed where the pull was needed), drawn long enough for both."""
    recs = [c["recommended"] for c in cals]
    if any(r is None for r in recs):
        return None
    pick = max(recs, key=lambda r: (r["localization"], -r["step_size"]))
    draws = max(c["draws_for_gates"] for c in cals)
    return {**pick, "draws_for_gates": draws}


def _path_delta(org, delta_norm: float, adapter: str | None):
    """(parameter name, dW): a LoRA adapter's on its module, else a random rank-1 direction of layer 0's
    attention output with |dW| = ``delta_norm`` |W|."""
    from persona_basins.measure.basins import random_weight_deltas

    if adapter is not None:
        from persona_basins.models.edits import adapter_on_copy, single_lora_delta

        name, delta = single_lora_delta(adapter_on_copy(org.model, adapter))
        return f"{name}.weight", delta.detach()
    pname = "transformer.h.0.attn.c_proj.weight"
    weight = dict(org.model.named_parameters())[pname].detach()
    return pname, random_weight_deltas(weight * delta_norm, 1, seed=10_000)[0]


def measure(
    org, label, restrict_name, batch, seq_len, delta_norm, given=None, adapter=None, ends=(0.0, 1.0)
) -> dict:
    from persona_basins.measure.llc import SamplerConfig, calibrate, estimate_llc

    pname, delta = _path_delta(org, delta_norm, adapter)
    restrict = RESTRICTS[restrict_name]
    base = SamplerConfig(num_chains=4, num_draws=200, num_burnin=50, batch_size=batch, execution="loop")
    out = {"organism": label, "restrict": restrict_name, "restrict_spec": restrict, "batch_size": batch}
    out["seq_len"] = seq_len
    out["path"] = {"adapter": adapter, "ends": list(ends), "delta_norm": float(delta.norm()), "param": pname}
    cals, t0 = [], time.perf_counter()
    for t in ends if given is None else ():
        model, loss_fn, data = _point(org, pname, delta, t, N_DOCS, seq_len)
        log = lambda line: print(f"  {line}", flush=True)  # noqa: E731
        cal = calibrate(
            model, loss_fn, data, n=N_DOCS, config=base, restrict=restrict, log=log, **CALIBRATION
        )
        cal.pop("traces")
        cals.append(cal)
        rec = cal["recommended"]
        picked = rec and {k: rec[k] for k in ("step_size", "localization", "num_draws")}
        print(f"[{label} {restrict_name} b{batch}] t={t:g} calibrated: {picked}", flush=True)
    out["calibration_seconds"] = time.perf_counter() - t0
    out["calibration"] = [
        {
            "t": t,
            "recommended": c["recommended"],
            "draws_for_gates": c["draws_for_gates"],
            "next_settings": c["next_settings"],
            "grid": [
                {
                    k: r.get(k)
                    for k in ("step_size", "localization", "num_draws", "failure", "reasons", "seconds")
                }
                for r in c["grid"]
            ],
        }
        for t, c in zip(ends, cals)
    ]
    setting = _common_setting(cals) if given is None else None
    if given is not None:  # the setting named on the command line, not calibrated here
        step, gamma, draws, burnin = given.split(",")
        setting = {
            "step_size": float(step),
            "localization": float(gamma),
            "precondition": "rmsprop",
            "nbeta": None,
            "draws_for_gates": int(draws),
            "num_burnin": int(burnin),
            "source": "given (--setting), not calibrated on this organism",
        }
    out["setting"] = setting
    if setting is None:
        return out
    cfg = base.replace(
        step_size=setting["step_size"],
        localization=setting["localization"],
        precondition=setting["precondition"],
        nbeta=setting["nbeta"],
        num_draws=setting["draws_for_gates"],
        num_burnin=max(base.num_burnin, setting["num_burnin"]),
    )
    out["sampler"] = cfg.to_dict()
    points = []
    for t in ends:
        model, loss_fn, data = _point(org, pname, delta, t, N_DOCS, seq_len)
        row = {
            "t": t,
            "at_gamma": _summary(estimate_llc(model, loss_fn, data, n=N_DOCS, config=cfg, restrict=restrict)),
        }
        double = cfg.replace(localization=2 * cfg.localization)
        row["at_double_gamma"] = _summary(
            estimate_llc(model, loss_fn, data, n=N_DOCS, config=double, restrict=restrict)
        )
        points.append(row)
        a, b = row["at_gamma"], row["at_double_gamma"]
        print(
            f"[{label} {restrict_name} b{batch}] t={t:g}: {a['seconds']:.1f} s passed={a['passed']} "
            f"λ̂ {a['llc_unchecked']:.3g} (2γ: {b['llc_unchecked']:.3g}, passed={b['passed']})",
            flush=True,
        )
    out["points"] = points
    passing = [p["at_gamma"]["seconds"] for p in points if p["at_gamma"]["passed"]]
    out["seconds_per_gate_passing_point"] = sum(passing) / len(passing) if passing else None
    out["points_passed"] = f"{len(passing)} of {len(points)}"
    from persona_basins.measure.llc.calibration import localization_sensitivity

    out["gamma_sensitivity"] = localization_sensitivity(
        [p["at_gamma"]["llc"] for p in points], [p["at_double_gamma"]["llc"] for p in points]
    )
    return out


def step_costs(org, label: str, steps: int = 60) -> list[dict]:
    """Milliseconds per chain-step of the options that make an effective sample cheaper: minibatch size,
    document length, restriction, vmap vs loop (short chains at the calibrated kind of setting; the cost of
    a step does not depend on the step size)."""
    from persona_basins.measure.llc import SamplerConfig, estimate_llc

    pname = "transformer.h.0.attn.c_proj.weight"
    rows = []
    options = [
        (restrict, batch, seq_len, execution)
        for restrict in ("module", "layer")
        for batch in (4, 8)
        for seq_len in (None, 24)
        for execution in ("loop", "vmap")
    ]
    for restrict, batch, seq_len, execution in options:
        model, loss_fn, data = _point(org, pname, 0, 0.0, N_DOCS, seq_len)
        cfg = SamplerConfig(
            step_size=1e-4,
            localization=100.0,
            precondition="rmsprop",
            num_chains=4,
            num_draws=steps,
            batch_size=batch,
            execution=execution,
        )
        res = estimate_llc(model, loss_fn, data, n=N_DOCS, config=cfg, restrict=RESTRICTS[restrict])
        d = res.diagnostics
        ms = 1e3 * d["sampling_seconds"] / (4 * steps)
        tokens = int(data[1][:batch].sum()) if seq_len is None else batch * seq_len
        rows.append(
            {
                "organism": label,
                "restrict": restrict,
                "moving_params": d["num_params_moving"],
                "batch_size": batch,
                "seq_len": seq_len,
                "execution": execution,
                "ms_per_chain_step": ms,
                "tokens_per_step_approx": tokens,
            }
        )
        print(f"[{label}] {restrict} b{batch} seq {seq_len} {execution}: {ms:.1f} ms/chain-step", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--organisms", default="tiny,default")
    ap.add_argument("--tiny-dir")
    ap.add_argument("--default-dir")
    ap.add_argument("--restricts", default="module,layer")
    ap.add_argument("--batch-sizes", default="8")
    ap.add_argument("--seq-len", type=int, help="truncate documents to this many tokens (default: whole)")
    ap.add_argument("--delta-norm", type=float, default=0.25, help="|dW| as a fraction of |W| (default 0.25)")
    ap.add_argument("--adapter", help="the path of this LoRA adapter (e.g. a demo's plain EM seed) ")
    ap.add_argument("--ends", default="0,1", help="the path's two ends t (default 0,1)")
    ap.add_argument("--step-costs", action="store_true", help="only the ms per chain-step of each option")
    ap.add_argument(
        "--setting", help="skip calibration: STEP,GAMMA,DRAWS,BURNIN (RMSProp), e.g. one calibrated elsewhere"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from persona_basins.models.organism import load_organism

    previous = json.loads(OUT.read_text()) if OUT.is_file() else {}
    results = previous.get("results", {})
    load_start = os.getloadavg()
    for label in args.organisms.split(","):
        org = load_organism(_organism_dir(label, getattr(args, f"{label}_dir")))
        if args.step_costs:
            results.setdefault(f"{label}_step_costs", {})["rows"] = step_costs(org, label)
            results[f"{label}_step_costs"]["load_average"] = list(os.getloadavg())
            _write(results)
            continue
        rows, ends = [], tuple(float(t) for t in args.ends.split(","))
        key = f"{label}_adapter_path" if args.adapter else label
        for restrict_name in args.restricts.split(","):
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                rows.append(
                    measure(
                        org,
                        label,
                        restrict_name,
                        batch,
                        args.seq_len,
                        args.delta_norm,
                        args.setting,
                        args.adapter,
                        ends,
                    )
                )
                passing = [r.get("seconds_per_gate_passing_point") for r in rows]
                results[key] = {
                    "rows": rows,
                    "num_params": sum(p.numel() for p in org.model.parameters()),
                    "best_seconds_per_gate_passing_point": min((x for x in passing if x), default=None),
                    "load_average_start_end": [list(load_start), list(os.getloadavg())],
                    "when": time.strftime("%Y-%m-%d %H:%M"),
                }
                _write(results)  # after every row: a long run keeps what it measured
    print(f"-> {OUT}")
    return 0


def _write(results: dict) -> None:
    doc = {
        "what": "seconds per gate-passing LLC path point (self-KL, n = 1024 documents, one core)",
        "target": "<= 60 s per gate-passing point on the default organism on one core",
        "results": results,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": 1,
            "cores": os.cpu_count(),
        },
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1, default=str))


if __name__ == "__main__":
    raise SystemExit(main())
