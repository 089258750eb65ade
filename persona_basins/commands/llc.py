"""``persona-basins llc``: the local learning coefficient (SGLD), its calibration, and developmental stages."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Estimate the local learning coefficient (LLC) of a causal LM at its current weights by localised SGLD
(chains batched in one process; see docs/LLC.md).

  persona-basins llc --model DIR [--adapter DIR] [--restrict PATTERN] [--data FILE.txt] --out RUN
      DIR is any Hugging Face causal LM folder. For an organism folder the data are documents from its
      pretraining mixture; otherwise --data is a text file, one document per line. With --adapter (a PEFT
      adapter folder) only the adapter parameters move unless --restrict says otherwise.
      --restrict: 'adapter', 'layer:I', 'layer:I/head:H', or a regular expression over parameter names.
  persona-basins llc calibrate --model DIR ... --out RUN
      sweep step size x n_beta, recommend a setting, plot the traces.
  persona-basins llc stages --organism DIR --out RUN
      LLC over the organism's pretraining checkpoints; stage boundaries at the critical points of the
      smoothed LLC curve; per-layer and per-head weight-restricted LLC curves.
"""


def _add_sampler_args(p, *, draws=200, burnin=50, chains=4) -> None:
    g = p.add_argument_group("sampler")
    g.add_argument("--chains", type=int, default=chains, help=f"SGLD chains (default {chains})")
    g.add_argument("--draws", type=int, default=draws, help=f"draws per chain (default {draws})")
    g.add_argument("--burnin", type=int, default=burnin, help=f"burn-in steps per chain (default {burnin})")
    g.add_argument("--step-size", type=float, default=1e-4, help="SGLD step size epsilon (default 1e-4)")
    g.add_argument("--localization", type=float, default=100.0, help="localisation strength gamma (default 100)")
    g.add_argument("--nbeta", type=float, default=None, help="inverse temperature n*beta (default n / log n)")
    g.add_argument("--batch-size", type=int, default=16, help="SGLD minibatch size in documents (default 16)")
    g.add_argument("--n-docs", type=int, default=256, help="documents used as the dataset (default 256)")
    g.add_argument("--n", type=int, default=None, help="dataset size n in the posterior (default: --n-docs)")
    g.add_argument("--seq-len", type=int, default=64, help="max tokens per document for --data (default 64)")
    g.add_argument("--precondition", choices=["none", "rmsprop"], default="none", help="SGLD preconditioner")
    g.add_argument("--seed", type=int, default=0, help="seed for the data sample and the chains (default 0)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's; 1 is faster on a busy machine)")


def _add_model_args(p, required: bool = False) -> None:
    p.add_argument("--model", required=required, help="Hugging Face causal LM folder (or an organism folder)")
    p.add_argument("--adapter", help="PEFT adapter folder applied on top of --model")
    p.add_argument("--restrict", help="which parameters move: adapter | layer:I | layer:I/head:H | REGEX")
    p.add_argument("--data", help="text file, one document per line (required unless --model is an organism)")
    p.add_argument("--out", required=required, help="run folder to write")


def register(sub) -> None:
    p = sub.add_parser("llc", help="local learning coefficient (SGLD): estimate, calibrate, developmental stages",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_args(p)
    _add_sampler_args(p)
    p.set_defaults(func=_run_estimate)
    llc_sub = p.add_subparsers(dest="llc_command", metavar="{calibrate,stages}")

    c = llc_sub.add_parser("calibrate", help="sweep step size x n_beta and recommend a setting",
                           description="Sweep SGLD step size x n_beta, recommend a setting, plot the traces.")
    _add_model_args(c, required=True)
    _add_sampler_args(c, draws=100, burnin=0, chains=2)
    c.add_argument("--step-sizes", default="1e-5,3e-5,1e-4,3e-4,1e-3", help="comma-separated step sizes")
    c.add_argument("--nbetas", default=None, help="comma-separated n_beta values (default: n / log n)")
    c.set_defaults(func=_run_calibrate)

    s = llc_sub.add_parser("stages", help="LLC over pretraining checkpoints: stage boundaries, per-layer/head",
                           description="LLC over an organism's pretraining checkpoints. Stage boundaries are "
                                       "the critical points of the Gaussian-smoothed LLC curve; per-layer and "
                                       "per-head weight-restricted LLC curves are estimated alongside.")
    s.add_argument("--organism", required=True, help="organism folder (persona-basins organism build)")
    s.add_argument("--out", required=True, help="run folder to write")
    s.add_argument("--max-checkpoints", type=int, default=None, help="use at most this many (evenly spaced)")
    s.add_argument("--smooth", type=float, default=1.0, help="Gaussian smoothing width in checkpoints (default 1)")
    s.add_argument("--no-layers", action="store_true", help="skip the per-layer wrLLC curves")
    s.add_argument("--no-heads", action="store_true", help="skip the per-head wrLLC curves")
    _add_sampler_args(s, draws=100, burnin=20, chains=2)
    s.set_defaults(func=_run_stages)


# ------------------------------------------------------------------------------------------------------------


def _check_sampler_args(args) -> None:
    from ..errors import UserError

    if args.threads is not None:
        if args.threads < 1:
            raise UserError("--threads must be >= 1")
        import torch

        torch.set_num_threads(args.threads)

    for name in ("chains", "draws", "batch_size", "n_docs"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if args.burnin < 0:
        raise UserError("--burnin must be >= 0")
    if not args.step_size > 0:
        raise UserError("--step-size must be > 0")
    if args.n is not None and args.n < 2:
        raise UserError("--n must be >= 2")


def _read_text_ids(path: str, tokenizer, n_docs: int, seq_len: int):
    import torch

    from ..errors import UserError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--data file not found: {p}")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    if not lines:
        raise UserError(f"--data {p} has no non-empty lines")
    lines = lines[:n_docs]
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    rows = [tokenizer(t, add_special_tokens=True)["input_ids"][:seq_len] for t in lines]
    rows = [r for r in rows if len(r) >= 2]
    if not rows:
        raise UserError(f"--data {p}: every line tokenises to fewer than 2 tokens")
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, pad


def _load_target(args):
    """(model, loss_fn, input_ids, default_restrict, source description)."""
    from ..errors import UserError
    from ..measure.llc import causal_lm_loss_fn

    if not args.model:
        raise UserError("--model is required (or use `persona-basins llc stages --organism DIR`)")
    if not args.out:
        raise UserError("--out is required")
    path = Path(args.model)
    from ..models.organism import is_organism

    if is_organism(path):
        from ..models.lm import lm_loss
        from ..models.organism import load_organism

        org = load_organism(path)
        model, loss_fn = org.model, lm_loss
        ids = org.mixture_input_ids(args.n_docs, args.seed) if not args.data else None
        if args.data:
            ids, pad = _read_text_ids(args.data, org.tokenizer, args.n_docs, args.seq_len)
            loss_fn = causal_lm_loss_fn(pad)
        source = "organism mixture" if not args.data else f"text file {args.data}"
    else:
        if not path.is_dir():
            raise UserError(f"--model folder not found: {path}")
        if not args.data:
            raise UserError("--data FILE.txt is required when --model is not an organism folder")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            model = AutoModelForCausalLM.from_pretrained(path).eval()
            tok = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load model/tokenizer from {path}: {str(e).splitlines()[0]}") from None
        ids, pad = _read_text_ids(args.data, tok, args.n_docs, args.seq_len)
        loss_fn = causal_lm_loss_fn(pad)
        source = f"text file {args.data}"
    restrict = args.restrict
    if args.adapter:
        from peft import PeftModel

        if not Path(args.adapter).is_dir():
            raise UserError(f"--adapter folder not found: {args.adapter}")
        try:
            model = PeftModel.from_pretrained(model, args.adapter).eval()
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load adapter {args.adapter}: {str(e).splitlines()[0]}") from None
        restrict = restrict or "adapter"
    return model, loss_fn, ids, restrict, source


def _llc_kwargs(args, n: int) -> dict:
    return dict(n=n, nbeta=args.nbeta, step_size=args.step_size, localization=args.localization,
                num_chains=args.chains, num_draws=args.draws, num_burnin=args.burnin, batch_size=args.batch_size,
                seed=args.seed, precondition=None if args.precondition == "none" else args.precondition,
                progress=sys.stderr.isatty())


def _config(args) -> dict:
    return {k: v for k, v in vars(args).items() if k != "func"}


def _summary(res) -> dict:
    from ..stats import ci95

    return {"llc": {**ci95(res.per_chain), "std": res.std, "over": "chains"}, "per_chain": res.per_chain,
            "diagnostics": res.diagnostics}


def _run_estimate(args) -> int:
    from ..measure.llc import estimate_llc, plot_traces
    from ..results import RunDir

    _check_sampler_args(args)
    model, loss_fn, ids, restrict, source = _load_target(args)
    n = args.n or len(ids)
    run = RunDir(args.out, "llc", {**_config(args), "data_source": source, "restrict_used": restrict})
    run.write_config()
    res = estimate_llc(model, loss_fn, ids, restrict=restrict, **_llc_kwargs(args, n))
    fig = plot_traces({"loss (minibatch) per draw": res.loss_trace, "λ per draw = nβ(L_B(w) − L_B(w*))":
                       res.llc_trace}, run.figure_path("llc_trace.png"), title=f"LLC {args.model}")
    run.write_metrics({**_summary(res), "loss": res.diagnostics["loss"], "data_source": source,
                       "loss_trace": res.loss_trace, "llc_trace": res.llc_trace,
                       "figures": [str(fig.relative_to(run.path))]})
    print(f"LLC = {res.mean:.4g} ± {res.std:.2g} (chains={args.chains}, path={res.diagnostics['path']}, "
          f"MALA={res.diagnostics['mala_acceptance']:.2f}) -> {run.path}")
    for w in res.diagnostics["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def _floats(text: str, flag: str) -> list[float]:
    from ..errors import UserError

    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise UserError(f"{flag} must list positive numbers, got {text!r}")
    return vals


def _run_calibrate(args) -> int:
    from ..measure.llc import calibrate
    from ..results import RunDir

    _check_sampler_args(args)
    steps = _floats(args.step_sizes, "--step-sizes")
    nbetas = _floats(args.nbetas, "--nbetas") if args.nbetas else None
    model, loss_fn, ids, restrict, source = _load_target(args)
    n = args.n or len(ids)
    run = RunDir(args.out, "llc_calibrate", {**_config(args), "data_source": source, "restrict_used": restrict})
    run.write_config()
    kw = _llc_kwargs(args, n)
    for k in ("nbeta", "step_size"):
        kw.pop(k)
    out = calibrate(model, loss_fn, ids, step_sizes=steps, nbetas=nbetas, restrict=restrict,
                    plot_path=run.figure_path("calibration_traces.png"), **kw)
    out["figure"] = str(Path(out["figure"]).relative_to(run.path))
    run.write_metrics(out)
    rec = out["recommended"]
    if rec:
        print(f"recommended: step_size={rec['step_size']:g}, nbeta={rec['nbeta']:.4g} "
              f"(LLC {rec['llc']:.4g}, MALA {rec['mala_acceptance']:.2f}) -> {run.path}")
    else:
        print(f"no setting passed (all diverged, negative or non-stationary); see {run.path}")
    return 0


def _run_stages(args) -> int:
    import numpy as np

    from ..errors import UserError
    from ..measure.llc import critical_points, estimate_llc
    from ..models.lm import lm_loss
    from ..models.organism import list_checkpoints, load_organism
    from ..results import RunDir

    _check_sampler_args(args)
    org = load_organism(args.organism)
    cks = list_checkpoints(args.organism)
    if not cks:
        raise UserError(f"no pretraining checkpoints in {Path(args.organism) / 'checkpoints'}")
    if args.max_checkpoints is not None:
        if args.max_checkpoints < 1:
            raise UserError("--max-checkpoints must be >= 1")
        if len(cks) > args.max_checkpoints:
            keep = np.unique(np.linspace(0, len(cks) - 1, args.max_checkpoints).round().astype(int))
            cks = [cks[i] for i in keep]
    ids = org.mixture_input_ids(args.n_docs, args.seed)
    n = args.n or len(ids)
    kw = _llc_kwargs(args, n)
    kw["progress"] = False
    run = RunDir(args.out, "llc_stages", _config(args))
    run.write_config()
    from transformers import AutoModelForCausalLM

    cfg = org.model.config
    n_layers, n_heads = int(cfg.num_hidden_layers), int(cfg.num_attention_heads)
    comps = [("full", None)]
    if not args.no_layers:
        comps += [(f"layer:{i}", f"layer:{i}") for i in range(n_layers)]
    if not args.no_heads:
        comps += [(f"layer:{i}/head:{h}", f"layer:{i}/head:{h}") for i in range(n_layers) for h in range(n_heads)]
    curves = {name: [] for name, _ in comps}
    stds = {name: [] for name, _ in comps}
    diags = []
    it = cks
    if sys.stderr.isatty():
        from tqdm import tqdm

        it = tqdm(cks, desc="checkpoints")
    for step, folder in it:
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        for name, restrict in comps:
            res = estimate_llc(model, lm_loss, ids, restrict=restrict, **kw)
            curves[name].append(res.mean)
            stds[name].append(res.std)
            if name == "full":
                d = res.diagnostics
                diags.append({"step": step, "mala_acceptance": d["mala_acceptance"], "rhat": d["rhat"],
                              "path": d["path"], "frac_negative_draws": d["frac_negative_draws"],
                              "init_loss": d["init_loss"], "warnings": d["warnings"]})
    steps = [s for s, _ in cks]
    cp = critical_points(steps, curves["full"], sigma=args.smooth)
    figs = _plot_stages(run, steps, curves, stds, cp, n_layers, n_heads)
    run.write_metrics({
        "steps": steps, "llc": curves["full"], "llc_std": stds["full"], "smoothed": cp["smoothed"],
        "stage_boundaries": cp["boundaries"], "boundary_kinds": cp["kinds"],
        "per_layer": {k: v for k, v in curves.items() if k.startswith("layer:") and "/head:" not in k},
        "per_head": {k: v for k, v in curves.items() if "/head:" in k},
        "per_layer_boundaries": {k: critical_points(steps, v, sigma=args.smooth)["boundaries"]
                                 for k, v in curves.items() if k != "full" and "/head:" not in k},
        "diagnostics": diags, "figures": figs, "loss": "lm_cross_entropy",
    })
    print(f"LLC over {len(steps)} checkpoints; stage boundaries at steps {cp['boundaries']} -> {run.path}")
    return 0


def _plot_stages(run, steps, curves, stds, cp, n_layers, n_heads) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..results import save_figure

    figs = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    y, e = np.asarray(curves["full"]), np.asarray(stds["full"])
    ax.errorbar(steps, y, yerr=e, fmt="o-", ms=3, lw=1, label="LLC (± std over chains)")
    ax.plot(steps, cp["smoothed"], "k--", lw=1, label="smoothed")
    for b, k in zip(cp["boundaries"], cp["kinds"]):
        ax.axvline(b, color="tab:red" if k == "max" else "tab:green", lw=0.8, ls=":")
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("λ̂")
    ax.set_title("LLC over pretraining; dotted: stage boundaries", fontsize=9)
    ax.legend(fontsize=7)
    figs.append(save_figure(fig, run.figure_path("llc_stages.png")))
    plt.close(fig)
    layers = [k for k in curves if k.startswith("layer:") and "/head:" not in k]
    if layers:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for k in layers:
            ax.plot(steps, curves[k], "o-", ms=2, lw=1, label=k)
        ax.set_xlabel("pretraining step")
        ax.set_ylabel("wrLLC")
        ax.set_title("per-layer weight-restricted LLC", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
        figs.append(save_figure(fig, run.figure_path("llc_layers.png")))
        plt.close(fig)
    heads = [k for k in curves if "/head:" in k]
    if heads:
        fig, axes = plt.subplots(1, n_layers, figsize=(3 * n_layers, 3), squeeze=False)
        for i in range(n_layers):
            ax = axes[0, i]
            for h in range(n_heads):
                k = f"layer:{i}/head:{h}"
                if k in curves:
                    ax.plot(steps, curves[k], lw=1, label=f"head {h}")
            ax.set_title(f"layer {i}", fontsize=8)
            ax.tick_params(labelsize=6)
        axes[0, 0].legend(fontsize=6)
        fig.suptitle("per-head weight-restricted LLC", fontsize=9)
        figs.append(save_figure(fig, run.figure_path("llc_heads.png")))
        plt.close(fig)
    return [str(Path(f).relative_to(run.path)) for f in figs]
