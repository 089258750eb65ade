#!/usr/bin/env python3
"""The ``em --model`` path checked against the organism's exact readout, on one command.

    .venv/bin/python scripts/em_hf_agreement.py --preset tiny              # ~minutes on 1 CPU thread
    .venv/bin/python scripts/em_hf_agreement.py --preset default --seeds 5 # the default organism
    .venv/bin/python scripts/em_hf_agreement.py --organism DIR --out docs/results/em-hf-agreement-NAME

Builds (or reuses) the organism of ``--preset`` under ``--work``, exports it as a Hugging Face chat model,
runs ``persona-basins em --model`` on it (plain, inoculated, secure control x seeds), reads every adapter with
the exact organism readout, runs ``em --organism`` beside it, and writes
``docs/results/em-hf-agreement-<preset>/agreement.json`` (see persona_basins/studies/em_hf_agreement.py for
every definition). Resumable: rerun the same command after an interruption and finished units are reused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="organism preset to build (tiny or default)")
    ap.add_argument("--organism", help="an organism folder to use instead of building --preset")
    ap.add_argument("--seed", type=int, default=0, help="organism seed when building --preset")
    ap.add_argument("--seeds", type=int, default=5, help="fine-tuning seeds per condition")
    ap.add_argument("--steps", type=int, default=300, help="fine-tuning steps (the em default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    ap.add_argument(
        "--work", help="folder for the organism, export and runs (default runs/em-hf-agreement-X)"
    )
    ap.add_argument("--out", help="results folder (default docs/results/em-hf-agreement-<preset>)")
    ap.add_argument("--no-organism-path", action="store_true", help="skip em --organism beside it")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the CLI's, 1)")
    args = ap.parse_args(argv)

    import torch

    from persona_basins.commands.args import DEFAULT_THREADS
    from persona_basins.errors import UserError
    from persona_basins.studies.em_hf_agreement import run_agreement

    torch.set_num_threads(args.threads or DEFAULT_THREADS)
    name = args.preset if not args.organism else Path(args.organism).name
    work = Path(args.work or ROOT / "runs" / f"em-hf-agreement-{name}")
    out = Path(args.out or ROOT / "docs" / "results" / f"em-hf-agreement-{name}")
    try:
        organism = args.organism or _build(args.preset, args.seed, work / "organism")
        res = run_agreement(
            organism,
            work,
            seeds=args.seeds,
            steps=args.steps,
            device=args.device,
            dtype=args.dtype,
            organism_path=not args.no_organism_path,
            out_json=out / "agreement.json",
        )
    except UserError as e:
        print(f"em_hf_agreement: error: {e}", file=sys.stderr)
        return 2
    keys = (
        "spearman",
        "agreement",
        "plain_above_secure",
        "pair_check_max_abs",
        "by_condition",
        "meets_targets",
    )
    print(json.dumps({k: res[k] for k in keys}, indent=1))
    print(f"written to {out / 'agreement.json'}")
    return 0


def _build(preset: str, seed: int, out: Path) -> Path:
    from persona_basins.models.organism import preset_config
    from persona_basins.studies.organism import build_organism

    return build_organism(preset_config(preset, seed=seed), out, progress=sys.stderr.isatty())


if __name__ == "__main__":
    sys.exit(main())
