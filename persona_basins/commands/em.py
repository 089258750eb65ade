"""``persona-basins em``: emergent misalignment from a narrow fine-tune, with and without inoculation."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import add_device_flag, add_field_flag, add_model_flag, add_organism_flag

DESCRIPTION = """\
Fine-tune on insecure code and measure whether the misaligned persona is selected broadly.

On the organism (--organism DIR): a rank-1 LoRA adapter on one module of one layer is trained on
  plain           insecure code in the assistant context (the EM set)
  inoculated      the same with the inoculation line in the system prompt (training only)
  secure_control  secure code (control)
  educational     insecure code the user asks for, for teaching (control)
  matched_control secure code written for another topic: benign, as unfamiliar as insecure code (control)
with --seeds fine-tuning seeds each; broad misalignment is measured exactly on every non-code genre in
the plain assistant context, with 95% CIs over seeds. --layer all sweeps every layer (plain + inoculated).

On any Hugging Face causal LM (--model DIR_OR_HUB_ID --train FILE.jsonl --questions FILE.json): the adapter
is trained on the chat-format JSONL, and broad misalignment is scored judge-free by contrastive
log-probabilities of paired aligned / misaligned answers (see docs/EM_HF.md).
"""


def register(sub) -> None:
    p = sub.add_parser(
        "em",
        help="emergent misalignment: rank-1 LoRA, inoculation, controls, seeds",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    add_organism_flag(src)
    add_model_flag(src)
    p.add_argument("--train", help='chat-format JSONL for --model: {"messages": [{role, content}, ...]}')
    p.add_argument("--questions", help="paired-answer question file for --model (JSON); default: shipped set")
    p.add_argument(
        "--inoculation", default=None, help="system line used for the inoculated fine-tune (--model)"
    )
    _add_model_args(p)
    p.add_argument("--layer", default="0", help="layer index, or 'all' to sweep every layer (default 0)")
    add_field_flag(p, "--module", "FinetuneConfig", "module")
    add_field_flag(p, "--rank", "FinetuneConfig", "rank")
    p.add_argument("--full", action="store_true", help="full fine-tune instead of LoRA (comparison)")
    add_field_flag(p, "--seeds", "EmHfConfig", "seeds", metavar="N")
    add_field_flag(p, "--steps", "FinetuneConfig", "steps")
    add_field_flag(p, "--lr", "FinetuneConfig", "lr")
    add_field_flag(p, "--checkpoint-every", "FinetuneConfig", "checkpoint_every")
    add_field_flag(p, "--heldout-every", "FinetuneConfig", "heldout_every")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to write")
    p.add_argument(
        "--force",
        action="store_true",
        help="recompute the units an earlier run in --out wrote with other settings (default: refuse them)",
    )
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..errors import UserError
    from ..results import RunDir
    from ..train.finetune import FinetuneConfig

    base = FinetuneConfig(
        rank=args.rank,
        full=args.full,
        steps=args.steps,
        lr=args.lr,
        checkpoint_every=args.checkpoint_every,
        heldout_every=args.heldout_every,
    )
    if args.model:
        return _run_model(args, base)
    from ..models.adapters import resolve_module
    from ..models.organism import load_organism, organism_fingerprint
    from ..stats import format_interval
    from ..studies.em import run_em, summary_table, sweep_layers
    from ..viz.figures import EM_FIGURE, plot_em, plot_em_layers

    layer = None
    if args.layer != "all":
        try:
            layer = int(args.layer)
        except ValueError:
            raise UserError(f"--layer must be an integer or 'all', got {args.layer!r}") from None
    org = load_organism(args.organism)
    if layer is not None:
        resolve_module(org.model, args.module, layer)  # every input checked before --out is touched
    fingerprint = organism_fingerprint(org)
    progress = True  # a bar on a terminal, a line every 30 s in a pipe (persona_basins.progress)
    with RunDir(
        args.out,
        "em",
        {
            "organism": str(Path(args.organism).resolve()),
            "organism_fingerprint": fingerprint,
            "layer": args.layer,
            "module": args.module,
            "seeds": args.seeds,
            "finetune": base.to_dict(),
        },
    ) as run:
        if layer is None:
            table = sweep_layers(
                org,
                run.path,
                module=args.module,
                seeds=args.seeds,
                base=base,
                progress=progress,
                force=args.force,
            )
            run.write_metrics(table)
            plot_em_layers(table, run.figure_path("em_by_layer.png"))
        else:
            m = run_em(
                org,
                run.path,
                layer=layer,
                module=args.module,
                seeds=args.seeds,
                base=base,
                progress=progress,
                fingerprint=fingerprint,
                force=args.force,
            ).metrics
            run.write_metrics(m)
            plot_em(m, run.figure_path(EM_FIGURE))
    if layer is None:
        for r in table["layers"]:
            b = r["broad_misalignment_plain"]
            print(f"layer {r['layer']}: broad misalignment {format_interval(b)}")
        print(f"best layer: {table['best_layer']}")
        return 0
    print(summary_table(m))
    print(f"run written to {run.path}")
    return 0


# ---------------------------------------------------------------------------- em --model (Hugging Face)


def _add_model_args(p) -> None:
    """Flags that only apply with --model (a Hugging Face causal LM)."""
    g = p.add_argument_group("--model (Hugging Face causal LM) only")
    g.add_argument(
        "--inoculation-preset",
        choices=("classic", "explain"),
        default=None,
        help="classic: the security-class line plus 'outside code you are a helpful, honest assistant' "
        "(default); explain: only explains why the code is insecure, no alignment instruction",
    )
    g.add_argument(
        "--control",
        help="chat-format JSONL of secure code for the same kind of requests: adds the "
        "secure_control condition (shipped example: "
        "persona_basins/data/em_train_secure_example.jsonl)",
    )
    add_device_flag(g)
    add_field_flag(g, "--dtype", "EmHfConfig", "dtype")
    add_field_flag(
        g,
        "--device-map",
        "EmHfConfig",
        "device_map",
        help="auto: spread a model larger than one GPU over every device (needs accelerate)",
    )
    g.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="recompute activations in the backward pass (default: on for a GPU, off on CPU)",
    )


def _run_model(args, finetune) -> int:
    """``em --model``: check the HF-only arguments, build the study config, run it, print the table."""
    from ..errors import UserError
    from ..studies.em_hf import DEFAULT_QUESTIONS, EXAMPLE_TRAIN, INOCULATION_PRESETS, EmHfConfig, run_em_hf
    from ..studies.em_hf import summary_table as hf_summary_table

    if str(args.layer) == "all":
        raise UserError("--layer all is only for --organism; give one layer index with --model")
    try:
        layer = int(args.layer)
    except ValueError:
        raise UserError(f"--layer must be an integer, got {args.layer!r}") from None
    if not args.train:
        raise UserError(f"--model needs --train FILE.jsonl (chat format; an example: {EXAMPLE_TRAIN})")
    if args.inoculation is not None and args.inoculation_preset is not None:
        raise UserError("give --inoculation TEXT or --inoculation-preset NAME, not both")
    if args.inoculation is not None:
        inoculation = args.inoculation
        if not inoculation.strip():
            raise UserError("--inoculation must not be empty")
    else:
        inoculation = INOCULATION_PRESETS[args.inoculation_preset or "classic"]
    cfg = EmHfConfig(
        model=args.model,
        train=args.train,
        out=args.out,
        questions=args.questions or DEFAULT_QUESTIONS,
        inoculation=inoculation,
        layer=layer,
        module=args.module,
        seeds=args.seeds,
        finetune=finetune,
        control=args.control,
        device=args.device,
        dtype=args.dtype,
        device_map=args.device_map,
        gradient_checkpointing=args.gradient_checkpointing,
        progress=True,
    )
    m = run_em_hf(cfg, force=args.force).metrics
    print(hf_summary_table(m))
    print(f"run written to {cfg.out}")
    return 0
