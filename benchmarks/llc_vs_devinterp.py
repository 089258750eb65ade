"""Benchmark: persona_basins.measure.llc.estimate_llc against devinterp 2.0.1 (one run each).

    .venv/bin/python benchmarks/llc_vs_devinterp.py  # writes benchmarks/results/llc_vs_devinterp.json
    .venv/bin/python benchmarks/llc_vs_devinterp.py --only a  # rerun cases whose name starts with "a"

devinterp is never a dependency of persona-basins. Where it is installed beside persona-basins (``pip install
devinterp==2.0.1`` into ``.venv``, as on this machine) it runs in a subprocess of this interpreter; otherwise
this script installs it into its own virtual environment
(``$PB_DEVINTERP_VENV``, default ``~/.cache/persona-basins/devinterp-venv``) that sees the project's packages
through a ``.pth`` file, so pip only adds devinterp and its extra dependencies there and never touches
``.venv``. devinterp runs in a subprocess of that environment; if it cannot be installed the JSON says so and
ours is still timed.

Cases (same model weights, data, chains, draws, batch, step size, n_beta and localisation for both):
  (a) analytic: reduced-rank regression y = B A x (M=4, N=3, H=2, r=1; 14 parameters), 8 chains x 1000 draws,
      batch 100, step 1e-4, gamma 1, n = 10000. Three interleaved repeats (ours, devinterp, ours, ...):
      the speedup is reported per repeat and as the ratio of the medians.
  (b) Llama-style HF model (LlamaConfig, random init, 4 layers, d=128, ~0.8M params) on random token data,
      4 chains x 100 draws, batch 32 x 32 tokens, step 1e-4, gamma 100, n = 1024 sequences; one run each.
Both sides run single-threaded (torch.set_num_threads(1)): on this 2-core machine shared with other jobs, a
2-thread fwd+bwd of the Llama took 400 ms against 112 ms with 1 thread (OpenMP barriers wait for a
descheduled thread), and a model as small as (a) gains nothing from intra-op threads.
Time to a trustworthy number: the seconds until the MCSE of λ̂ is <= 5% of λ̂ (``time_to_mcse``), from each
tool's per-draw λ trace scored with the same ArviZ MCSE (of the chain-averaged trace), extrapolated from the
run as 1/sqrt(draws); target >= 3x (the paired minibatch difference lowers the per-draw variance).
Draws/s counts chain-draws (chains x draws / wall seconds of the whole call, setup included). For (b) also:
the achieved FLOP/s (model FLOPs of one forward+backward, counted by torch's FlopCounterMode, times steps per
second) as a fraction of this machine's measured fp32 matmul FLOP/s.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "llc_vs_devinterp.json"
DEVINTERP_VERSION = "2.0.1"

# devinterp 2.0.1 runs every chain in one process, so its only parallel setting is the thread count. On this
# 2-core machine under load it is fastest single-threaded: on case (a) 2 threads gave 16.5 / 19.7 draws/s
# against 209 / 270 with 1 thread (two repeats, load average 8-9), so the 2-thread run is not repeated (it
# would take ~20x longer on the Llama). Ours: 1 or 2 worker processes of one thread each, the faster counts.
CASES = {
    "a_analytic_rrr": dict(
        kind="rrr",
        repeats=3,
        num_chains=8,
        num_draws=1000,
        batch_size=100,
        step_size=1e-4,
        localization=1.0,
        n=10_000,
        threads=1,
        seed=0,
        ours_workers=[1, 2],
        devinterp_threads=[1],
    ),
    "b_llama_0.8M": dict(
        kind="llama",
        num_chains=4,
        num_draws=100,
        batch_size=32,
        seq_len=32,
        step_size=1e-4,
        localization=100.0,
        n=1024,
        threads=1,
        seed=0,
        vocab=512,
        d=128,
        layers=4,
        heads=4,
        intermediate=256,
        ours_workers=[1, 2],
        devinterp_threads=[1],
    ),
}


# ----------------------------------------------------------------------------------------------------------
# Shared problem construction (runs in both environments; only torch/transformers needed)


def build_problem(spec: dict, workdir: Path):
    """Create the model and data once and save them, so both sides load identical tensors."""
    import torch

    torch.manual_seed(spec["seed"])
    if spec["kind"] == "rrr":
        sys.path.insert(0, str(ROOT))
        from persona_basins.measure.llc.analytic import rrr_case

        case = rrr_case(4, 3, 2, 1, n=spec["n"], seed=spec["seed"])
        torch.save(
            {"state": case.model.state_dict(), "x": case.data[0], "y": case.data[1]}, workdir / "prob.pt"
        )
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(
            vocab_size=spec["vocab"],
            hidden_size=spec["d"],
            intermediate_size=spec["intermediate"],
            num_hidden_layers=spec["layers"],
            num_attention_heads=spec["heads"],
            num_key_value_heads=spec["heads"],
            max_position_embeddings=spec["seq_len"] * 2,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(cfg).eval()
        model.save_pretrained(workdir / "llama")
        gen = torch.Generator().manual_seed(spec["seed"])
        ids = torch.randint(0, spec["vocab"], (spec["n"], spec["seq_len"]), generator=gen)
        torch.save({"ids": ids}, workdir / "prob.pt")


def load_problem(spec: dict, workdir: Path):
    import torch

    blob = torch.load(workdir / "prob.pt")
    if spec["kind"] == "rrr":
        sys.path.insert(0, str(ROOT))
        from persona_basins.measure.llc.analytic import DeepLinear

        model = DeepLinear([4, 2, 3])
        model.load_state_dict(blob["state"])
        return model, (blob["x"], blob["y"])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(workdir / "llama").eval()
    return model, blob["ids"]


# ----------------------------------------------------------------------------------------------------------
# devinterp side (runs inside the devinterp environment)


def devinterp_worker(spec_path: str) -> None:
    import torch
    from datasets import Dataset
    from devinterp.slt.llc import llc

    spec = json.loads(Path(spec_path).read_text())
    workdir = Path(spec["workdir"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    model, data = load_problem(spec, workdir)
    nbeta = spec["n"] / math.log(spec["n"])
    if spec["kind"] == "rrr":
        x, y = data
        # devinterp's datasets carry input_ids: encode each example's index twice ([i, i]) and look the
        # example up in the loss; the per-"token" loss (batch, 1) is the example's loss.
        ds = Dataset.from_dict({"input_ids": [[i, i] for i in range(len(x))]}).with_format("torch")

        def loss_fn(m, input_ids):
            idx = input_ids[:, 0]
            return 0.5 * ((m(x[idx]) - y[idx]) ** 2).sum(-1, keepdim=True)
    else:
        ds = Dataset.from_dict({"input_ids": data.tolist()}).with_format("torch")
        loss_fn = None
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        res = llc(
            model,
            ds,
            {},
            lr=spec["step_size"],
            n_beta=nbeta,
            num_chains=spec["num_chains"],
            num_draws=spec["num_draws"],
            batch_size=spec["batch_size"],
            localization=spec["localization"],
            num_burnin_steps=0,
            loss_fn=loss_fn,
            init_seed=spec["seed"],
            output_path=Path(tmp) / "s.zarr",
        )
        llc_mean = float(res["llc_mean"].values)
        llc_std = float(res["llc_std"].values)
        # the per-draw λ trace (chains x steps), scored in the parent with the same MCSE as ours
        trace = (nbeta * (res["loss_trace"].values - float(res["init_loss"].values))).tolist()
    sec = time.perf_counter() - t0
    draws = spec["num_chains"] * spec["num_draws"]
    print(
        json.dumps(
            {
                "llc": llc_mean,
                "llc_std": llc_std,
                "seconds": sec,
                "draws_per_s": draws / sec,
                "threads": torch.get_num_threads(),
                "llc_trace": trace,
            }
        )
    )


def devinterp_python() -> tuple[str | None, str]:
    """The devinterp environment's python, creating it on first use. Returns (python or None, note)."""
    venv = Path(
        os.environ.get("PB_DEVINTERP_VENV", Path.home() / ".cache" / "persona-basins" / "devinterp-venv")
    )
    here = [
        sys.executable,
        "-c",
        f"import importlib.metadata as m; assert m.version('devinterp') == '{DEVINTERP_VERSION}'",
    ]
    if subprocess.run(here, capture_output=True).returncode == 0:  # installed beside persona-basins
        return sys.executable, f"devinterp {DEVINTERP_VERSION} in this environment ({sys.prefix})"
    py = venv / "bin" / "python"
    probe = [
        str(py),
        "-c",
        f"import devinterp, importlib.metadata as m; assert m.version('devinterp') == '{DEVINTERP_VERSION}'",
    ]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return str(py), f"devinterp {DEVINTERP_VERSION} in {venv}"
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True
        )
        site = subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        parent = subprocess.run(
            [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        Path(site, "_persona_basins_parent.pth").write_text(parent + "\n")
        r = subprocess.run(
            [str(py), "-m", "pip", "install", "-q", f"devinterp=={DEVINTERP_VERSION}"],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if r.returncode != 0:
            return None, "pip install devinterp failed: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"could not create the devinterp environment: {e}"
    if subprocess.run(probe, capture_output=True).returncode != 0:
        return None, "devinterp installed but does not import"
    return str(py), f"devinterp {DEVINTERP_VERSION} installed in {venv}"


# ----------------------------------------------------------------------------------------------------------
# Our side


def matmul_flops(threads: int | None = None, size: int = 1024, seconds: float = 2.0) -> float:
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best = 0.0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        dt = (time.perf_counter() - t0) / 5
        best = max(best, 2 * size**3 / dt)
    torch.set_num_threads(old)
    return best


def model_flops_per_step(model, loss_fn, batch) -> float:
    """FLOPs of one forward + backward of one chain (FlopCounterMode counts matmuls/attention)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    params = [p for p in model.parameters()]
    with FlopCounterMode(display=False) as fc:
        loss = loss_fn(model, batch)
        torch.autograd.grad(loss, params)
    return float(fc.get_total_flops())


MCSE_TARGET = 0.05  # the trustworthy number: MCSE <= 5% of λ̂


def time_to_mcse(trace, seconds: float) -> dict:
    """Seconds until the MCSE of the mean is <= 5% of λ̂, from one run of ``seconds`` with ``trace`` (chains x
    draws of the per-draw λ): the MCSE is that of the chain-averaged trace (ArviZ, the estimator our gates use
    when chains share minibatches, valid for independent chains too) and shrinks as 1/sqrt(draws), so the
    draws needed are ``draws * (MCSE / (0.05 λ̂))^2``; the whole run's seconds are counted per draw (setup
    included, which overstates the time of both tools alike)."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from persona_basins.measure.llc.diagnostics import mcse

    x = np.asarray(trace, dtype=np.float64)
    mean, se = float(x.mean()), mcse(x.mean(0))
    draws = x.shape[1]
    if not (mean > 0 and math.isfinite(se)):
        return {"mcse_same_estimator": se, "seconds_to_mcse_5pct": None}
    needed = draws * (se / (MCSE_TARGET * mean)) ** 2
    return {
        "mcse_same_estimator": se,
        "relative_mcse": se / mean,
        "draws_to_mcse_5pct": needed,
        "seconds_to_mcse_5pct": seconds * needed / draws,
        "reached_in_run": se <= MCSE_TARGET * mean,
    }


def run_ours(spec: dict, workdir: Path) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from persona_basins.measure.llc import SamplerConfig, causal_lm_loss_fn, estimate_llc
    from persona_basins.measure.llc.analytic import mse_loss

    old = torch.get_num_threads()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    model, data = load_problem(spec, workdir)
    loss_fn = mse_loss if spec["kind"] == "rrr" else causal_lm_loss_fn(None)
    cfg = SamplerConfig(
        step_size=spec["step_size"],
        localization=spec["localization"],
        num_chains=spec["num_chains"],
        num_draws=spec["num_draws"],
        batch_size=spec["batch_size"],
        seed=spec["seed"],
    )
    # The first call for a model class measures vmap vs loop and caches the choice (reported separately).
    t0 = time.perf_counter()
    estimate_llc(model, loss_fn, data, n=spec["n"], config=cfg.replace(num_draws=2, workers=1))
    first_call_s = time.perf_counter() - t0
    draws = spec["num_chains"] * spec["num_draws"]
    settings = {}
    for w in spec.get("ours_workers", [1]):  # each worker runs one thread; the numbers do not depend on w
        t0 = time.perf_counter()
        res = estimate_llc(model, loss_fn, data, n=spec["n"], config=cfg.replace(workers=w))
        sec = time.perf_counter() - t0
        d = res.diagnostics
        settings[f"workers={w}"] = {
            **time_to_mcse(res.llc_trace, sec),
            "llc": res.unchecked_mean,
            "llc_std": res.std,
            "mcse": res.mcse,
            "converged": res.converged,
            "reasons": res.reasons,
            "seconds": sec,
            "draws_per_s": draws / sec,
            "path": d["path"],
            "path_reason": d["path_reason"],
            "workers": d["workers"],
            "mala_acceptance": d["mala_acceptance"],
            "rhat": d["rhat"],
            "ess_bulk": d["ess_bulk"],
        }
    best = max(settings, key=lambda k: settings[k]["draws_per_s"])
    out = {
        **settings[best],
        "best_setting": best,
        "settings": settings,
        "first_call_seconds_incl_path_measurement": first_call_s,
        "threads": torch.get_num_threads(),
    }
    if spec["kind"] == "llama":
        batch = data[: spec["batch_size"]]
        f = model_flops_per_step(model, loss_fn, batch)
        peak = matmul_flops(threads=spec.get("threads"))
        achieved = f * out["draws_per_s"]
        out.update(
            flops_per_chain_step=f,
            achieved_flops_per_s=achieved,
            matmul_peak_flops_per_s=peak,
            flop_fraction_of_matmul_peak=achieved / peak,
            num_params=sum(p.numel() for p in model.parameters()),
        )
    torch.set_num_threads(old)
    return out


def main() -> int:
    import torch

    results = {
        "devinterp_version": DEVINTERP_VERSION,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "cases": {},
    }
    py, note = devinterp_python()
    results["devinterp"] = {"available": py is not None, "note": note}
    print(note, flush=True)
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    if only and OUT.is_file():
        results["cases"] = json.loads(OUT.read_text()).get("cases", {})
    for name, spec in CASES.items():
        if only and not name.startswith(only):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            spec = {**spec, "workdir": str(workdir)}
            build_problem(spec, workdir)
            entry = {"spec": {k: v for k, v in spec.items() if k != "workdir"}, "repeats": []}
            for _rep in range(spec.get("repeats", 1)):
                ours = run_ours(spec, workdir)
                print(name, "ours", json.dumps(ours), flush=True)
                row = {"ours": ours}
                if py is not None:
                    # devinterp 2.0.1 runs its chains in one process: its best setting is a thread count
                    dvs, r = {}, None
                    for th in spec.get("devinterp_threads", [spec.get("threads", 1)]):
                        sp = workdir / "spec.json"
                        sp.write_text(json.dumps({**spec, "threads": th}))
                        r = subprocess.run(
                            [py, __file__, "--devinterp-worker", str(sp)],
                            capture_output=True,
                            text=True,
                            timeout=1800,
                        )
                        if r.returncode != 0:
                            break
                        got = json.loads(r.stdout.strip().splitlines()[-1])
                        got.update(time_to_mcse(got.pop("llc_trace"), got["seconds"]))
                        dvs[f"threads={th}"] = got
                    if r is not None and r.returncode == 0:
                        best = max(dvs, key=lambda k: dvs[k]["draws_per_s"])
                        dv = {**dvs[best], "best_setting": best, "settings": dvs}
                        row["devinterp"] = dv
                        row["speedup_draws_per_s"] = ours["draws_per_s"] / dv["draws_per_s"]
                        if ours.get("seconds_to_mcse_5pct") and dv.get("seconds_to_mcse_5pct"):
                            row["speedup_time_to_mcse_5pct"] = (
                                dv["seconds_to_mcse_5pct"] / ours["seconds_to_mcse_5pct"]
                            )
                        print(
                            name,
                            "devinterp",
                            json.dumps(dv),
                            f"speedup {row['speedup_draws_per_s']:.2f}x",
                            flush=True,
                        )
                    else:
                        err = (r.stderr.strip().splitlines() or ["?"])[-1]
                        row["devinterp"] = {"error": err}
                        print(name, "devinterp failed:", err, flush=True)
                entry["repeats"].append(row)
            entry["ours"] = entry["repeats"][0]["ours"]
            ok = [r for r in entry["repeats"] if "speedup_draws_per_s" in r]
            if ok:
                med = lambda xs: sorted(xs)[len(xs) // 2]
                entry["devinterp"] = ok[0]["devinterp"]
                entry["ours_draws_per_s_median"] = med([r["ours"]["draws_per_s"] for r in ok])
                entry["devinterp_draws_per_s_median"] = med([r["devinterp"]["draws_per_s"] for r in ok])
                entry["speedup_draws_per_s"] = (
                    entry["ours_draws_per_s_median"] / entry["devinterp_draws_per_s_median"]
                )
                entry["speedup_per_repeat"] = [r["speedup_draws_per_s"] for r in ok]
                timed = [r["speedup_time_to_mcse_5pct"] for r in ok if "speedup_time_to_mcse_5pct" in r]
                if timed:
                    entry["speedup_time_to_mcse_5pct_median"] = med(timed)
                    entry["speedup_time_to_mcse_5pct_per_repeat"] = timed
            results["cases"][name] = entry
    results["loadavg_end"] = os.getloadavg()
    results["targets"] = {
        "a_analytic_rrr": ">= 10x draws/s",
        "b_llama_0.8M": ">= 2x draws/s",
        "time_to_mcse_5pct": ">= 3x (seconds until MCSE <= 5% of λ̂, the same estimator on both traces)",
    }
    sys.path.insert(0, str(ROOT))
    from persona_basins.results import write_json

    write_json(OUT, results)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--devinterp-worker":
        devinterp_worker(sys.argv[2])
    else:
        sys.exit(main())
