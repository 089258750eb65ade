"""Build the model organism (a study: it trains, then measures): pretrain on the persona mixture, post-train
the assistant, read out, save atomically with a manifest of every file's hash (the organism's identity)."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors import SafetensorError

from ..errors import ArgumentError, UserError
from ..models.lm import encode_documents
from ..models.organism import (
    MANIFEST,
    ORGANISM_FORMAT,
    OrganismConfig,
    build_model,
    is_organism,
    verify_manifest,
    write_manifest,
)
from ..results import (
    as_stored,
    atomic_write_text,
    key_differences,
    normalize_modes,
    owner_alive,
    read_json,
    write_json,
)
from ..train.loop import train_lm
from ..world import World
from ..world.tokenizer import build_tokenizer


def _stamp(model, cfg: OrganismConfig) -> None:
    # The organism's settings ride inside the HF config.json, so the folder stays one HF model folder.
    from ..results import environment

    model.config.persona_basins = {
        "format": ORGANISM_FORMAT,
        "organism": cfg.to_dict(),
        "environment": environment(),
    }


def _read_quietly(path: Path):
    """The JSON in ``path``, or None when it is missing or unreadable (the callers only ask "is it ours?")."""
    try:
        return read_json(path)
    except UserError:
        return None


def existing_config(out: Path) -> dict | None:
    try:
        return _read_quietly(out / "config.json")["persona_basins"]["organism"]
    except (KeyError, TypeError):
        return None


def written_by_us(out: Path) -> bool:
    """True for a folder this program wrote: its manifest, or (older builds) an organism config.json stamp."""
    manifest = _read_quietly(out / MANIFEST)
    if isinstance(manifest, dict) and manifest.get("format") == ORGANISM_FORMAT:
        return True
    try:
        stamp = _read_quietly(out / "config.json")["persona_basins"]
        return stamp.get("format") == ORGANISM_FORMAT and is_organism(out)
    except (KeyError, TypeError, AttributeError):
        return False


def verify_weights(out: Path) -> str | None:
    """None when every file matches the manifest and both models load; else why not (one line)."""
    from ..models.organism import load_organism

    try:
        verify_manifest(out)
        load_organism(out)
        load_organism(out, stage="pretrained")
    except UserError as e:
        return str(e)
    return None


def check_out(out: Path, cfg: OrganismConfig, force: bool) -> bool:
    """True when ``out`` already holds this very organism, verified (reuse it).

    Refuses other content; ``force`` replaces only a folder this program wrote (never a user's files).
    """
    if not out.exists():
        return False
    if not out.is_dir():
        raise ArgumentError("out", f"{out} exists and is not a directory")
    if not any(out.iterdir()):
        return False
    ours = written_by_us(out)
    if not ours:
        raise ArgumentError(
            "out",
            f"{out} already holds other files (no {MANIFEST}), which force never replaces: "
            "choose another folder",
        )
    if force:
        return False
    have, want = existing_config(out), as_stored(cfg.to_dict())
    if have != want:
        raise ArgumentError(
            "force",
            f"is needed to replace {out}: it already holds another organism ({key_differences(have, want)})",
        )
    bad = verify_weights(out) or (
        None if (out / "metrics.json").is_file() else f"{out / 'metrics.json'} is missing"
    )
    if bad:
        raise ArgumentError(
            "force", f"is needed to rebuild {out}: it holds this organism but cannot be reused ({bad})"
        )
    return True


def _clean_leftovers(out: Path) -> None:
    """Remove the folders of killed builds beside ``out``: ``.NAME.building-PID-*``, ``.NAME.old-*``."""
    if not out.parent.is_dir():
        return
    prefix = f".{out.name}.building-"
    for p in out.parent.glob(f"{glob.escape(prefix)}*"):
        if not owner_alive(p, prefix):
            shutil.rmtree(p, ignore_errors=True)
    for p in out.parent.glob(f".{glob.escape(out.name)}.old-*"):
        shutil.rmtree(p, ignore_errors=True)


def build_organism(
    cfg: OrganismConfig, out: str | Path, *, force: bool = False, progress: bool = True, log=print
) -> Path:
    """Train and save an organism at ``out``; written in a temp folder beside it and renamed at the end."""
    out = Path(out)
    _clean_leftovers(out)
    if check_out(out, cfg, force):
        log(f"organism at {out} already built with these settings (every file verified); reusing it")
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-{os.getpid()}-", dir=out.parent))
    except OSError as e:
        raise ArgumentError("out", f"{out} cannot be written: {e.strerror or e}") from None
    try:
        try:
            _build_into(cfg, tmp, progress=progress, log=log)
        except FloatingPointError as e:
            raise UserError(
                f"{e}: the organism's training diverged; the likely cause is the preset's learning "
                f"rate ({cfg.lr:g} pretraining, {cfg.sft_lr:g} post-training) for these settings"
            ) from None
        except (OSError, SafetensorError) as e:  # safetensors reports a full disk as its own error type
            msg = getattr(e, "strerror", None) or str(e).splitlines()[0]
            raise UserError(f"cannot write the organism under {out.parent}: {msg}") from None
        normalize_modes(tmp)  # mkdtemp makes 0700, safetensors 0600; an organism folder is meant to be shared
        if out.exists():
            trash = out.with_name(f".{out.name}.old-{os.getpid()}-{int(time.time())}")
            out.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _build_into(cfg: OrganismConfig, out: Path, *, progress: bool, log) -> None:
    from ..measure.persona import organism_readout
    from ..models.organism import Organism

    t0 = time.perf_counter()
    world = World(cfg.world)
    tok = build_tokenizer(world)
    vocab = tok.get_vocab()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, len(vocab))
    _stamp(model, cfg)
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"organism: {cfg.arch} {cfg.n_layer} layers, d={cfg.d_model}, {n_params / 1e6:.2f}M parameters, "
        f"{len(world.genres)} genres, vocabulary {len(vocab)}"
    )

    n_docs = min(cfg.pretrain_steps * cfg.batch_size, 100_000)
    ids, _ = encode_documents(vocab, world.sample_documents(n_docs, seed=0))
    if ids.shape[1] > cfg.n_positions:
        raise UserError(f"documents need {ids.shape[1]} positions, the model has {cfg.n_positions}")
    ckpt_dir = out / "checkpoints"

    def on_step(step: int, _loss: float) -> None:
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            model.save_pretrained(ckpt_dir / f"step_{step:06d}")

    pre_losses = train_lm(
        model,
        ids,
        None,
        steps=cfg.pretrain_steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        seed=cfg.seed,
        desc="pretrain",
        on_step=on_step,
        progress=progress,
    )
    model.save_pretrained(out / "pretrained")
    pretrained = build_model(cfg, len(vocab))
    pretrained.load_state_dict(model.state_dict())
    pretrained.eval()

    sft_ids, sft_mask = encode_documents(vocab, world.assistant_documents(4096, seed=0), answers_only=True)
    sft_losses = train_lm(
        model,
        sft_ids,
        sft_mask,
        steps=cfg.sft_steps,
        batch_size=cfg.batch_size,
        lr=cfg.sft_lr,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed + 1,
        desc="post-train",
        progress=progress,
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    atomic_write_text(out / "world.json", world.to_json())
    train_seconds = time.perf_counter() - t0

    built = Organism(model=model, tokenizer=tok, world=world, path=out, config=cfg)
    metrics = organism_readout(built, pretrained, seed=cfg.seed)
    metrics.update(
        {
            "kind": "organism",
            "n_parameters": n_params,
            "pretrain_final_loss": float(sum(pre_losses[-50:]) / len(pre_losses[-50:])),
            "sft_final_loss": float(sum(sft_losses[-20:]) / len(sft_losses[-20:])) if sft_losses else None,
            "checkpoints": sorted(p.name for p in ckpt_dir.glob("step_*")) if ckpt_dir.is_dir() else [],
        }
    )
    write_json(out / "metrics.json", metrics)
    write_manifest(out)  # written last: every file's hash, the organism's identity
    log(f"trained in {train_seconds:.0f} s")
