"""``persona-basins organism build|report``: the model organism with ground-truth personas."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .args import SEED, int_in


def register(sub) -> None:
    p = sub.add_parser(
        "organism",
        help="build the model organism or print its persona readout",
        description="The model organism: a small transformers causal LM trained from scratch on a synthetic "
        "persona world whose ground truth is known, so every answer can be labelled exactly.",
    )
    osub = p.add_subparsers(dest="organism_command", metavar="ACTION")

    b = osub.add_parser(
        "build",
        help="pretrain + post-train an organism and save it as a HF model folder",
        description="Pretrain on the persona mixture (checkpoints every k steps), post-train the assistant "
        "context to be helpful, save with save_pretrained (safetensors) plus tokenizer and world.json, and "
        "write the persona readout to metrics.json. Rerunning with the same settings reuses the folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    b.add_argument("--preset", default="default", help="tiny (tests, seconds) or default (~0.4M params)")
    b.add_argument("--seed", type=SEED, default=0, help="world and training seed")
    b.add_argument("--out", required=True, help="organism folder to write")
    b.add_argument(
        "--force",
        action="store_true",
        help="replace the organism --out holds (only a folder this program wrote)",
    )
    b.add_argument(
        "--checkpoint-every",
        type=int_in(0, 10**7),
        default=None,
        help="pretraining checkpoint interval (0: none)",
    )
    b.add_argument(
        "--pretrain-steps",
        type=int_in(1, 10**7),
        default=None,
        help="override the preset's pretraining steps",
    )
    b.set_defaults(func=_build)

    r = osub.add_parser(
        "report",
        help="print (and write) the persona readout of an organism",
        description="Load an organism folder, recompute its persona readout (aligned rate, in-context "
        "persona inference, toxic persona recoverable after post-training, routine overlap, well-formed "
        "rate), print it, and write it to DIR/report.json.",
    )
    r.add_argument("dir", help="organism folder")
    r.set_defaults(func=_report)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _build(args) -> int:
    from ..measure.persona import readout_table
    from ..models.organism import preset_config
    from ..results import read_json
    from ..studies.organism import build_organism

    overrides = {}
    if args.checkpoint_every is not None:
        overrides["checkpoint_every"] = args.checkpoint_every
    if args.pretrain_steps is not None:
        overrides["pretrain_steps"] = args.pretrain_steps
    cfg = preset_config(args.preset, seed=args.seed, **overrides)
    out = build_organism(cfg, args.out, force=args.force, progress=sys.stderr.isatty())
    print(readout_table(read_json(Path(out) / "metrics.json", recover="rebuild the organism with --force")))
    print(f"organism written to {out}")
    return 0


def _report(args) -> int:
    from ..measure.persona import organism_readout, readout_table
    from ..models.organism import load_organism
    from ..results import write_json

    post = load_organism(args.dir)
    pre = load_organism(args.dir, stage="pretrained").model
    m = organism_readout(pre, post.model, post.world, post.vocab, seed=post.config.seed)
    print(readout_table(m))
    write_json(Path(args.dir) / "report.json", {"kind": "organism-report", **m})
    return 0
