"""``persona-basins organism build|report|export-chat``: the model organism with ground-truth personas."""

from __future__ import annotations

from pathlib import Path

from .args import DefaultsHelpFormatter, add_field_flag


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
        formatter_class=DefaultsHelpFormatter,
    )
    add_field_flag(
        b, "--preset", "OrganismConfig", "preset", help="tiny (tests, seconds) or default (~0.4M params)"
    )
    add_field_flag(b, "--seed", "OrganismConfig", "seed")
    b.add_argument("--out", required=True, metavar="DIR", help="organism folder to write")
    b.add_argument(
        "--force",
        action="store_true",
        help="replace the organism --out holds (only a folder this program wrote)",
    )
    add_field_flag(b, "--checkpoint-every", "OrganismConfig", "checkpoint_every", default=None)
    add_field_flag(
        b,
        "--pretrain-steps",
        "OrganismConfig",
        "pretrain_steps",
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

    x = osub.add_parser(
        "export-chat",
        help="export an organism as a standard Hugging Face chat model with its EM data in chat format",
        description="Write DIR: the post-trained weights (safetensors), config.json and the tokenizer with a "
        "chat template that renders system / user / assistant messages as the organism's documents, plus "
        "em_train.jsonl (insecure code), em_train_secure.jsonl (secure control) and em_questions.json "
        "(the helpful answer against each misaligned persona's, per non-code request), all in the world's "
        "words: the inputs of persona-basins em --model DIR (see export.json for the flags that match em "
        "--organism).",
    )
    x.add_argument("dir", help="organism folder")
    x.add_argument("--out", required=True, help="folder to write the chat model into")
    x.add_argument("--force", action="store_true", help="replace an existing export in --out")
    x.set_defaults(func=_export_chat)
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
    out = build_organism(cfg, args.out, force=args.force, progress=True)
    print(readout_table(read_json(Path(out) / "metrics.json", recover="rebuild the organism with --force")))
    print(f"organism written to {out}")
    return 0


def _report(args) -> int:
    from ..measure.persona import organism_readout, readout_table
    from ..models.organism import load_organism
    from ..results import write_json

    post = load_organism(args.dir)
    pre = load_organism(args.dir, stage="pretrained").model
    m = organism_readout(post, pre, seed=post.config.seed)
    print(readout_table(m))
    write_json(Path(args.dir) / "report.json", {"kind": "organism-report", **m})
    return 0


def _export_chat(args) -> int:
    from ..studies.chat_export import export_chat, read_export

    out = export_chat(args.dir, args.out, force=args.force)
    info = read_export(out)
    print(f"chat model written to {out} (context {info['context_length']} tokens)")
    print(
        f"measure it: persona-basins em --model {out} --train {out}/em_train.jsonl "
        f"--control {out}/em_train_secure.jsonl --questions {out}/em_questions.json "
        f'--inoculation "{info["inoculation"]}" --out RUN'
    )
    return 0
