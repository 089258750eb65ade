"""The standing robustness suite: bad inputs and faults across every subcommand, kill-and-resume, server fuzz.

Every table case runs the CLI and asserts: the exit code, one stderr line starting ``persona-basins: error:``
(naming the problem: ``needle``), and no partial files (the case's folder holds exactly what it held before,
and no hidden temp / partial / building folder anywhere). Cases that fail on code owned by someone else are
``xfail(strict=False)`` with the owner and the item of issue 15 in the reason; they pass once fixed. The
counts (tried / handled / expected failures) are in docs/RELIABILITY.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_from_bytes

import pytest

from persona_basins.cli import main

ENV = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
CLI = [sys.executable, "-m", "persona_basins.cli"]
HIDDEN_PARTS = (".tmp", ".partial-", ".building-", ".old-", ".swap-", ".write-probe")


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def em_ref(tiny_organism_dir, tmp_path_factory):
    """A tiny finished em run (1 seed, 5 steps): adapters for the adapter commands, units to mismatch."""
    out = tmp_path_factory.mktemp("rob-em") / "run"
    assert (
        main(
            [
                "em",
                "--organism",
                str(tiny_organism_dir),
                "--seeds",
                "1",
                "--steps",
                "5",
                "--checkpoint-every",
                "5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def _copy_org(org: Path, dst: Path) -> Path:
    shutil.copytree(org, dst)
    return dst


def _perturb_weights(org_dir: Path) -> None:
    """Another organism of the same shape: one weight moved and the manifest rewritten, as a build of other
    weights would (the fingerprint must notice)."""
    from safetensors.torch import load_file, save_file

    from persona_basins.models.organism import write_manifest

    f = org_dir / "model.safetensors"
    sd = load_file(f)
    k = sorted(k for k in sd if k.endswith("c_proj.weight"))[0]
    sd[k] = sd[k] + 1e-3
    save_file(sd, f, metadata={"format": "pt"})
    write_manifest(org_dir)


def _snapshot(root: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _hidden_leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if any(h in p.name for h in HIDDEN_PARTS)]


# ------------------------------------------------------------------------------------------ case setups


def _write(rel, text):
    def setup(tmp, ctx):
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    return setup


def _org_copy(damage=None):
    def setup(tmp, ctx):
        d = _copy_org(ctx["org"], tmp / "org")
        if damage:
            damage(d)

    return setup


def _truncate(rel):
    def damage(d):
        f = d / rel
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    return damage


def _corrupt(rel, data=b"not a safetensors file"):
    return lambda d: (d / rel).write_bytes(data)


def _pickle_only(d):
    (d / "model.safetensors").rename(d / "pytorch_model.bin")


def _no_manifest(d):
    (d / "persona_basins_manifest.json").unlink()


def _config_without_stamp(d):
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("persona_basins")
    (d / "config.json").write_text(json.dumps(cfg))


def _em_copy(damage=None, other_organism=False):
    def setup(tmp, ctx):
        shutil.copytree(ctx["em"], tmp / "run")
        if other_organism:
            _perturb_weights(_copy_org(ctx["org"], tmp / "orgB"))
        if damage:
            damage(tmp / "run")

    return setup


def _legacy_unit(run):
    (run / "adapters" / "plain" / "seed0" / "key.json").unlink()  # as an older version wrote it


def _adapter_copy(damage):
    def setup(tmp, ctx):
        d = tmp / "adapter"
        shutil.copytree(
            ctx["em"] / "adapters" / "plain" / "seed0", d, ignore=shutil.ignore_patterns("checkpoints")
        )
        damage(d)

    return setup


def _foreign_peft(d):
    """An ordinary PEFT adapter (no fingerprint file) that says it was trained on another base model."""
    (d / "persona_basins_base.json").unlink()
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "openai-community/gpt2"
    (d / "adapter_config.json").write_text(json.dumps(cfg))


def _adapter_pickle(d):
    (d / "adapter_model.safetensors").rename(d / "adapter_model.bin")


def _run_folder(tmp, ctx):
    d = tmp / "run"
    d.mkdir()
    (d / "config.json").write_text('{"kind": "em"}')
    (d / "metrics.json").write_text('{"kind": "em"}')


def _port_in_use(tmp, ctx):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    ctx["keep"].append(s)
    return {"port": str(s.getsockname()[1])}


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _edit_json(rel, changes):
    """A valid JSON file with some values changed after the build (no corruption: only the hash notices)."""

    def damage(d):
        obj = json.loads((d / rel).read_text())
        obj.update(changes)
        (d / rel).write_text(json.dumps(obj))

    return damage


def _weights_only_manifest(d):
    """The manifest as an older version wrote it: the two weight files only."""
    f = d / "persona_basins_manifest.json"
    m = json.loads(f.read_text())
    weights = ("model.safetensors", "pretrained/model.safetensors")
    f.write_text(json.dumps({"format": m["format"], "sha256": {k: m["sha256"][k] for k in weights}}))


def _retarget_adapter(old, new):
    """The adapter's tensors renamed to another layer or module than its adapter_config.json names."""

    def damage(d):
        from safetensors.torch import load_file, save_file

        f = d / "adapter_model.safetensors"
        tensors = load_file(f)
        assert any(old in k for k in tensors), list(tensors)
        save_file({k.replace(old, new): v for k, v in tensors.items()}, f, metadata={"format": "pt"})

    return damage


def _fake_run(kind):
    def setup(tmp, ctx):
        d = tmp / "run"
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"kind": kind, "draws": 3}))
        (d / "metrics.json").write_text(json.dumps({"kind": kind, "llc": 1.0}))

    return setup


def _unit_file(rel, data):
    def damage(run):
        f = run / "adapters" / "inoculated" / "seed0" / rel
        if f.parent.name != "seed0":  # a folder where the file should be
            (run / "adapters" / "inoculated" / "seed0" / f.parent.name).unlink()
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)

    return damage


# ------------------------------------------------------------------------------------------------ table


@dataclass
class Case:
    id: str
    argv: list
    needle: str | None = None
    setup: object = None
    xfail: str | None = None
    rc: int = 2
    fsize: int | None = None  # run in a subprocess with this file-size limit (a "full disk")
    absent: tuple = ()  # paths (relative to the case folder) that must not exist afterwards


ORG, EM, ADP = "{org}", "{em}", "{em}/adapters/plain/seed0"
# Cases for items others own (lead: 2, 3, 6, 7 adapters, 8; llc helper: 7, 8) are in the table like the rest;
# those that fail today carry xfail with the owner and item.

CASES = [
    # --- cli
    Case("cli-unknown-command", ["bogus"], "invalid choice"),
    Case(
        "cli-unknown-flag", ["em", "--organism", ORG, "--out", "{tmp}/o", "--bogus"], "unrecognized arguments"
    ),
    # --- organism build
    Case(
        "build-unknown-preset",
        ["organism", "build", "--preset", "huge", "--out", "{tmp}/x"],
        "argument --preset",
        absent=("x",),
    ),
    Case("build-negative-seed", ["organism", "build", "--seed", "-1", "--out", "{tmp}/x"], "argument --seed"),
    Case("build-nan-seed", ["organism", "build", "--seed", "nan", "--out", "{tmp}/x"], "argument --seed"),
    Case(
        "build-zero-pretrain-steps",
        ["organism", "build", "--pretrain-steps", "0", "--out", "{tmp}/x"],
        "argument --pretrain-steps",
    ),
    Case(
        "build-negative-checkpoint-every",
        ["organism", "build", "--checkpoint-every", "-5", "--out", "{tmp}/x"],
        "argument --checkpoint-every",
    ),
    Case(
        "build-seed-too-big",
        ["organism", "build", "--seed", "99999999999", "--out", "{tmp}/x"],
        "argument --seed",
    ),
    Case(
        "build-unwritable-out",
        ["organism", "build", "--preset", "tiny", "--out", "/proc/nope/x"],
        "--out /proc/nope/x cannot be written",
    ),
    Case(
        "build-out-is-a-file",
        ["organism", "build", "--preset", "tiny", "--out", "{tmp}/f"],
        "not a directory",
        setup=_write("f", "mine"),
    ),
    Case(
        "build-force-on-user-folder",
        ["organism", "build", "--preset", "tiny", "--force", "--out", "{tmp}/mine"],
        "other files",
        setup=_write("mine/notes.txt", "keep me"),
    ),
    Case(
        "build-reuse-corrupt-weights",
        ["organism", "build", "--preset", "tiny", "--out", "{tmp}/org"],
        "does not match its recorded hash",
        setup=_org_copy(_truncate("model.safetensors")),
    ),
    Case(
        "build-reuse-without-manifest",
        ["organism", "build", "--preset", "tiny", "--out", "{tmp}/org"],
        "cannot be reused",
        setup=_org_copy(_no_manifest),
    ),
    Case(
        "build-other-organism-no-force",
        ["organism", "build", "--preset", "tiny", "--seed", "1", "--out", "{tmp}/org"],
        "another organism",
        setup=_org_copy(),
    ),
    Case(
        "build-full-disk",
        [
            "organism",
            "build",
            "--preset",
            "tiny",
            "--pretrain-steps",
            "20",
            "--checkpoint-every",
            "10",
            "--out",
            "{tmp}/x",
        ],
        "cannot write",
        fsize=100_000,
        absent=("x",),
    ),
    # --- organism report (and loading)
    Case("report-org-missing", ["organism", "report", "{tmp}/missing"], "organism folder not found"),
    Case(
        "report-org-corrupt-safetensors",
        ["organism", "report", "{tmp}/org"],
        "model.safetensors",
        setup=_org_copy(_corrupt("model.safetensors")),
    ),
    Case(
        "report-org-truncated-safetensors",
        ["organism", "report", "{tmp}/org"],
        "model.safetensors",
        setup=_org_copy(_truncate("model.safetensors")),
    ),
    Case(
        "report-org-pickle-only",
        ["organism", "report", "{tmp}/org"],
        "never unpickles",
        setup=_org_copy(_pickle_only),
    ),
    Case(
        "report-org-malformed-world",
        ["organism", "report", "{tmp}/org"],
        "world.json",
        setup=_org_copy(_corrupt("world.json", b"{broken")),
    ),
    Case(
        "report-org-config-without-stamp",
        ["organism", "report", "{tmp}/org"],
        "config.json does not match its recorded hash",
        setup=_org_copy(_config_without_stamp),
    ),
    Case(
        "report-org-pretrained-missing",
        ["organism", "report", "{tmp}/org"],
        "pretrained",
        setup=_org_copy(lambda d: (d / "pretrained" / "model.safetensors").unlink()),
    ),
    Case(
        "report-org-corrupt-tokenizer",
        ["organism", "report", "{tmp}/org"],
        "tokenizer",
        setup=_org_copy(_corrupt("tokenizer.json", b"\x00\x01garbage")),
    ),
    # --- em (organism)
    Case(
        "em-zero-seeds",
        ["em", "--organism", ORG, "--seeds", "0", "--out", "{tmp}/o"],
        "argument --seeds",
        absent=("o",),
    ),
    Case("em-nan-lr", ["em", "--organism", ORG, "--lr", "nan", "--out", "{tmp}/o"], "argument --lr"),
    Case("em-inf-lr", ["em", "--organism", ORG, "--lr", "inf", "--out", "{tmp}/o"], "argument --lr"),
    Case("em-negative-lr", ["em", "--organism", ORG, "--lr", "-1", "--out", "{tmp}/o"], "argument --lr"),
    Case("em-huge-lr", ["em", "--organism", ORG, "--lr", "1e6", "--out", "{tmp}/o"], "argument --lr"),
    Case(
        "em-negative-steps",
        ["em", "--organism", ORG, "--steps", "-3", "--out", "{tmp}/o"],
        "argument --steps",
    ),
    Case("em-zero-rank", ["em", "--organism", ORG, "--rank", "0", "--out", "{tmp}/o"], "argument --rank"),
    Case(
        "em-float-seeds", ["em", "--organism", ORG, "--seeds", "2.5", "--out", "{tmp}/o"], "argument --seeds"
    ),
    Case(
        "em-negative-checkpoint-every",
        ["em", "--organism", ORG, "--checkpoint-every", "-1", "--out", "{tmp}/o"],
        "argument --checkpoint-every",
        absent=("o",),
    ),
    Case(
        "em-organism-is-a-file",
        ["em", "--organism", "{tmp}/f", "--out", "{tmp}/o"],
        "organism folder not found",
        setup=_write("f", "x"),
        absent=("o",),
    ),
    Case(
        "em-organism-corrupt-weights",
        ["em", "--organism", "{tmp}/org", "--seeds", "1", "--out", "{tmp}/o"],
        "model.safetensors",
        setup=_org_copy(_truncate("model.safetensors")),
        absent=("o",),
    ),
    Case(
        "em-layer-out-of-range",
        ["em", "--organism", ORG, "--layer", "9", "--seeds", "1", "--out", "{tmp}/o"],
        "layer 9 out of range",
        absent=("o",),
    ),
    Case(
        "em-layer-not-int",
        ["em", "--organism", ORG, "--layer", "x", "--out", "{tmp}/o"],
        "--layer must be",
        absent=("o",),
    ),
    Case(
        "em-unknown-module",
        ["em", "--organism", ORG, "--module", "nope", "--seeds", "1", "--out", "{tmp}/o"],
        "module 'nope'",
        absent=("o",),
    ),
    Case(
        "em-organism-missing",
        ["em", "--organism", "{tmp}/missing", "--out", "{tmp}/o"],
        "organism folder not found",
        absent=("o",),
    ),
    Case(
        "em-out-is-a-file",
        ["em", "--organism", ORG, "--seeds", "1", "--steps", "5", "--out", "{tmp}/f"],
        "not a directory",
        setup=_write("f", "mine"),
    ),
    Case(
        "em-other-organisms-units",
        [
            "em",
            "--organism",
            "{tmp}/orgB",
            "--seeds",
            "1",
            "--steps",
            "5",
            "--checkpoint-every",
            "5",
            "--out",
            "{tmp}/run",
        ],
        "other settings (organism ",
        setup=_em_copy(other_organism=True),
    ),
    Case(
        "em-other-finetune-settings",
        [
            "em",
            "--organism",
            ORG,
            "--seeds",
            "1",
            "--steps",
            "6",
            "--checkpoint-every",
            "5",
            "--out",
            "{tmp}/run",
        ],
        "finetune.steps 5 -> 6",
        setup=_em_copy(),
    ),
    Case(
        "em-unit-without-key",
        [
            "em",
            "--organism",
            ORG,
            "--seeds",
            "1",
            "--steps",
            "5",
            "--checkpoint-every",
            "5",
            "--out",
            "{tmp}/run",
        ],
        "older version",
        setup=_em_copy(_legacy_unit),
    ),
    Case(
        "em-corrupt-unit-result",
        [
            "em",
            "--organism",
            ORG,
            "--seeds",
            "1",
            "--steps",
            "5",
            "--checkpoint-every",
            "5",
            "--out",
            "{tmp}/run",
        ],
        "delete the folder",
        setup=_em_copy(
            lambda r: (r / "adapters" / "inoculated" / "seed0" / "result.json").write_text("{oops")
        ),
    ),
    Case(
        "em-model-missing",
        ["em", "--model", "{tmp}/no-model", "--train", "{tmp}/t.jsonl", "--out", "{tmp}/o"],
        None,
        absent=("o",),
    ),
    # --- llc
    Case(
        "llc-nan-step-size",
        ["llc", "--model", ORG, "--step-size", "nan", "--out", "{tmp}/o"],
        "--step-size",
        absent=("o",),
    ),
    Case(
        "llc-zero-chains",
        ["llc", "--model", ORG, "--chains", "0", "--out", "{tmp}/o"],
        "--chains",
        absent=("o",),
    ),
    Case(
        "llc-foreign-peft-adapter",
        [
            "llc",
            "--model",
            ORG,
            "--adapter",
            "{tmp}/adapter",
            "--draws",
            "2",
            "--burnin",
            "1",
            "--chains",
            "1",
            "--out",
            "{tmp}/o",
        ],
        None,
        setup=_adapter_copy(_foreign_peft),
        absent=("o",),
    ),
    Case(
        "llc-truncated-adapter",
        ["llc", "--model", ORG, "--adapter", "{tmp}/adapter", "--out", "{tmp}/o"],
        None,
        setup=_adapter_copy(_truncate("adapter_model.safetensors")),
        absent=("o",),
    ),
    Case(
        "llc-pickle-adapter",
        ["llc", "--model", ORG, "--adapter", "{tmp}/adapter", "--out", "{tmp}/o"],
        None,
        setup=_adapter_copy(_adapter_pickle),
        absent=("o",),
    ),
    Case(
        "llc-malformed-fingerprint",
        ["llc", "--model", ORG, "--adapter", "{tmp}/adapter", "--out", "{tmp}/o"],
        None,
        setup=_adapter_copy(_corrupt("persona_basins_base.json", b"{nope")),
        absent=("o",),
    ),
    Case(
        "llc-stages-corrupt-checkpoint",
        [
            "llc",
            "stages",
            "--organism",
            "{tmp}/org",
            "--draws",
            "2",
            "--burnin",
            "1",
            "--chains",
            "1",
            "--out",
            "{tmp}/o",
        ],
        None,
        setup=_org_copy(_truncate("checkpoints/step_000100/model.safetensors")),
        absent=("o",),
    ),
    # --- basins / degeneracy / eigenform
    Case(
        "basins-adapter-missing",
        ["basins", "--organism", ORG, "--adapter", "{tmp}/none", "--out", "{tmp}/o"],
        None,
        absent=("o",),
    ),
    Case(
        "basins-nan-t-max",
        ["basins", "--organism", ORG, "--adapter", ADP, "--t-max", "nan", "--out", "{tmp}/o"],
        "--t-max",
        absent=("o",),
    ),
    Case(
        "basins-level-out-of-range",
        ["basins", "--organism", ORG, "--adapter", ADP, "--level", "2", "--out", "{tmp}/o"],
        "--level",
        absent=("o",),
    ),
    Case(
        "basins-negative-random",
        ["basins", "--organism", ORG, "--adapter", ADP, "--random", "-1", "--out", "{tmp}/o"],
        "--random",
        absent=("o",),
    ),
    Case(
        "degeneracy-negative-epsilon",
        ["degeneracy", "--organism", ORG, "--adapter", ADP, "--epsilon", "-0.1", "--out", "{tmp}/o"],
        "--epsilon",
        absent=("o",),
    ),
    Case(
        "degeneracy-nan-epsilon",
        ["degeneracy", "--organism", ORG, "--adapter", ADP, "--epsilon", "nan", "--out", "{tmp}/o"],
        "--epsilon",
        absent=("o",),
    ),
    Case(
        "eigenform-nan-sleep-lr",
        ["eigenform", "--organism", ORG, "--adapter", ADP, "--sleep-lr", "nan", "--out", "{tmp}/o"],
        "--sleep-lr",
        absent=("o",),
    ),
    Case(
        "eigenform-bad-ts",
        ["eigenform", "--organism", ORG, "--adapter", ADP, "--ts", "0,abc", "--out", "{tmp}/o"],
        None,
        absent=("o",),
    ),
    Case(
        "eigenform-diverging-sleep",
        [
            "eigenform",
            "--organism",
            ORG,
            "--adapter",
            ADP,
            "--fast",
            "--sleep-lr",
            "1e6",
            "--cycles",
            "2",
            "--seeds",
            "1",
            "--prompts",
            "16",
            "--ts",
            "1",
            "--out",
            "{tmp}/o",
        ],
        None,
        absent=("o",),
    ),
    # --- demo
    Case(
        "demo-organism-typo",
        ["demo", "--preset", "tiny", "--organism", "{tmp}/typo", "--no-browser", "--out", "{tmp}/d"],
        None,
        absent=("d/config.json",),
    ),
    Case(
        "demo-one-seed",
        ["demo", "--preset", "tiny", "--seeds", "1", "--no-browser", "--out", "{tmp}/d"],
        "--seeds",
        absent=("d",),
    ),
    Case(
        "demo-unknown-preset",
        ["demo", "--preset", "huge", "--no-browser", "--out", "{tmp}/d"],
        "argument --preset",
        absent=("d",),
    ),
    Case(
        "demo-nan-seeds",
        ["demo", "--preset", "tiny", "--seeds", "nan", "--no-browser", "--out", "{tmp}/d"],
        "--seeds",
        absent=("d",),
    ),
    Case(
        "demo-corrupt-step-file",
        ["demo", "--preset", "tiny", "--organism", ORG, "--no-browser", "--out", "{tmp}/d"],
        "steps/em/result.json: malformed JSON",
        setup=lambda tmp, ctx: _corrupt_demo_step(tmp, ctx),
    ),
    # --- explore / report / sweep
    Case("explore-port-too-big", ["explore", "--port", "70000", "--no-browser"], "argument --port"),
    Case("explore-port-negative", ["explore", "--port", "-1", "--no-browser"], "argument --port"),
    Case("explore-port-not-a-number", ["explore", "--port", "http", "--no-browser"], "argument --port"),
    Case("explore-run-missing", ["explore", "{tmp}/missing", "--no-browser"], "run folder not found"),
    Case(
        "explore-port-in-use",
        ["explore", "--port", "{port}", "--no-browser"],
        "cannot listen",
        setup=_port_in_use,
    ),
    Case(
        "report-run-missing",
        ["report", "{tmp}/missing", "--out", "{tmp}/r.html"],
        "run folder not found",
        absent=("r.html",),
    ),
    Case(
        "report-run-is-a-file",
        ["report", "{tmp}/f", "--out", "{tmp}/r.html"],
        "run folder not found",
        setup=_write("f", "x"),
        absent=("r.html",),
    ),
    Case(
        "report-out-is-dir",
        ["report", "{tmp}/run", "--out", "{tmp}/run"],
        "is a directory",
        setup=_run_folder,
    ),
    Case(
        "report-unwritable",
        ["report", "{tmp}/run", "--out", "/proc/nope/r.html"],
        "cannot write",
        setup=_run_folder,
    ),
    Case(
        "report-full-disk",
        ["report", "{tmp}/run", "--out", "{tmp}/r.html"],
        "cannot write",
        setup=_run_folder,
        fsize=20_000,
        absent=("r.html",),
    ),
    Case("sweep-spec-missing", ["sweep", "{tmp}/none.toml", "--out", "{tmp}/o"], None, absent=("o",)),
    Case(
        "sweep-spec-malformed",
        ["sweep", "{tmp}/bad.toml", "--out", "{tmp}/o"],
        None,
        setup=_write("bad.toml", "[[[ not toml"),
        absent=("o",),
    ),
    # --- issue 25, family 1: identity checked end to end (the manifest covers every file a result uses)
    *[
        Case(
            f"report-org-{name}-changed",
            ["organism", "report", "{tmp}/org"],
            "config.json does not match its recorded hash",
            setup=_org_copy(_edit_json("config.json", {field: value})),
        )
        for name, field, value in (
            ("n-head", "n_head", 4),
            ("n-layer", "n_layer", 1),
            ("activation", "activation_function", "relu"),
            ("layer-norm-eps", "layer_norm_epsilon", 1e-3),
        )
    ],
    Case(
        "build-reuse-changed-architecture",
        ["organism", "build", "--preset", "tiny", "--out", "{tmp}/org"],
        "cannot be reused",
        setup=_org_copy(_edit_json("config.json", {"n_head": 4})),
    ),
    Case(
        "report-org-tokenizer-config-changed",
        ["organism", "report", "{tmp}/org"],
        "tokenizer_config.json does not match",
        setup=_org_copy(_edit_json("tokenizer_config.json", {"model_max_length": 7})),
    ),
    Case(
        "report-org-world-changed",
        ["organism", "report", "{tmp}/org"],
        "world.json does not match",
        setup=_org_copy(_edit_json("world.json", {"edited": True})),
    ),
    Case(
        "em-org-pretrained-config-changed",
        ["em", "--organism", "{tmp}/org", "--seeds", "1", "--out", "{tmp}/o"],
        "pretrained/config.json does not match",
        setup=_org_copy(_edit_json("pretrained/config.json", {"n_head": 4})),
        absent=("o",),
    ),
    Case(
        "em-org-weights-only-manifest",
        ["em", "--organism", "{tmp}/org", "--seeds", "1", "--out", "{tmp}/o"],
        "older version",
        setup=_org_copy(_weights_only_manifest),
        absent=("o",),
    ),
    *[
        Case(
            f"{cmd}-adapter-keys-name-other-{what}",
            [cmd, flag, ORG, "--adapter", "{tmp}/adapter", "--out", "{tmp}/o"],
            needle,
            setup=_adapter_copy(_retarget_adapter(old, new)),
            absent=("o",),
        )
        for cmd, flag in (("llc", "--model"), ("basins", "--organism"))
        for what, old, new, needle in (
            # same shapes, another layer: PEFT would load it as a zero adapter
            ("layer", ".h.0.", ".h.1.", "does not match its adapter_config.json"),
            # another module: its shapes do not fit, or the model has no such module
            ("module", ".attn.c_proj.", ".mlp.c_proj.", "does not fit this model"),
            ("missing-module", ".attn.c_proj.", ".attn.q_proj.", "which this model does not have"),
        )
    ],
    # --- family 2: an --out holding another kind of run, an organism or foreign files is refused
    Case(
        "llc-out-is-em-run",
        ["llc", "--model", ORG, "--draws", "2", "--burnin", "1", "--chains", "1", "--out", "{tmp}/run"],
        "holds a run of another kind (em",
        setup=_em_copy(),
    ),
    Case(
        "basins-out-is-organism",
        ["basins", "--organism", ORG, "--adapter", ADP, "--out", "{tmp}/org"],
        "holds an organism",
        setup=_org_copy(),
    ),
    Case(
        "em-out-holds-foreign-files",
        ["em", "--organism", ORG, "--seeds", "1", "--steps", "5", "--out", "{tmp}/mine"],
        "did not write (notes.txt)",
        setup=_write("mine/notes.txt", "keep me"),
    ),
    Case(
        "demo-out-is-em-run",
        ["demo", "--preset", "tiny", "--organism", ORG, "--no-browser", "--out", "{tmp}/run"],
        "holds a run of another kind (em",
        setup=_em_copy(),
    ),
    Case(
        "eigenform-out-is-llc-run",
        ["eigenform", "--organism", ORG, "--adapter", ADP, "--fast", "--out", "{tmp}/run"],
        "holds a run of another kind (llc",
        setup=_fake_run("llc"),
    ),
    Case(
        "degeneracy-out-holds-foreign-files",
        ["degeneracy", "--organism", ORG, "--adapter", ADP, "--out", "{tmp}/mine"],
        "did not write",
        setup=_write("mine/data.csv", "a,b"),
    ),
    Case(
        "llc-rerun-on-full-disk-keeps-the-old-record",
        ["llc", "--model", ORG, "--draws", "3", "--burnin", "1", "--chains", "1", "--out", "{tmp}/run"],
        "cannot write",
        setup=_fake_run("llc"),
        fsize=2048,
    ),
    # --- family 3: every file read back goes through one guarded reader
    *[
        Case(
            f"em-unit-{name}",
            [
                "em",
                "--organism",
                ORG,
                "--seeds",
                "1",
                "--steps",
                "5",
                "--checkpoint-every",
                "5",
                "--out",
                "{tmp}/run",
            ],
            needle,
            setup=_em_copy(_unit_file(rel, data)),
        )
        for name, rel, data, needle in (
            (
                "key-nested-deep",
                "key.json",
                b"[" * 100_000 + b"]" * 100_000,
                "key.json: malformed JSON (nested",
            ),
            (
                "result-huge-int",
                "result.json",
                b'{"readout": ' + b"1" * 5000 + b"}",
                "result.json: malformed JSON",
            ),
            ("result-not-utf8", "result.json", b'{"readout": "\xff"}', "result.json: not UTF-8"),
            ("result-top-level-list", "result.json", b"[1, 2]", "top level is list"),
            ("key-is-a-folder", "key.json/x", b"{}", "key.json: a folder"),
        )
    ],
    Case(
        "llc-adapter-config-nested-deep",
        ["llc", "--model", ORG, "--adapter", "{tmp}/adapter", "--out", "{tmp}/o"],
        "adapter_config.json: malformed JSON (nested",
        setup=_adapter_copy(_corrupt("adapter_config.json", b"[" * 100_000 + b"]" * 100_000)),
        absent=("o",),
    ),
    Case(
        "demo-config-nested-deep",
        ["demo", "--preset", "tiny", "--organism", ORG, "--no-browser", "--out", "{tmp}/d"],
        "config.json: malformed JSON (nested",
        setup=_write("d/config.json", "[" * 100_000 + "]" * 100_000),
    ),
]


def _corrupt_demo_step(tmp, ctx):
    d = tmp / "d"
    (d / "steps" / "em").mkdir(parents=True)
    # a demo folder whose em step result was damaged (e.g. a disk problem), keyed for this very run
    from persona_basins.models.organism import organism_fingerprint
    from persona_basins.results import as_stored, write_json
    from persona_basins.studies.demo import DEMO_PRESETS, STUDY_FORMAT, step_key

    cfg = DEMO_PRESETS["tiny"]
    want = {
        "kind": "demo",
        "format": STUDY_FORMAT,
        **cfg.to_dict(),
        "organism": str(Path(ctx["org"]).resolve()),
    }
    write_json(d / "config.json", want)  # as the demo writes it
    write_json(
        d / "steps" / "em" / "key.json", step_key(as_stored(want), organism_fingerprint(ctx["org"]), "em")
    )
    (d / "steps" / "em" / "result.json").write_text('{"broad_misalignment": ')


def _params():
    out = []
    for c in CASES:
        marks = [pytest.mark.xfail(reason=c.xfail, strict=False)] if c.xfail else []
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


def test_the_table_is_big_enough():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    commands = {c.argv[0] for c in CASES}
    assert commands >= {
        "organism",
        "em",
        "llc",
        "basins",
        "degeneracy",
        "eigenform",
        "demo",
        "explore",
        "report",
        "sweep",
    }


def _run_limited(argv: list[str], fsize: int) -> tuple[int, str]:
    def limit():
        signal.signal(
            signal.SIGXFSZ, signal.SIG_IGN
        )  # a write past the limit fails with EFBIG, like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    r = subprocess.run(CLI + argv, preexec_fn=limit, env=ENV, capture_output=True, text=True, timeout=120)
    return r.returncode, r.stderr.strip()


@pytest.mark.parametrize("case", _params())
def test_bad_input_or_fault(case: Case, tiny_organism_dir, em_ref, tmp_path, capsys):
    ctx = {"org": tiny_organism_dir, "em": em_ref, "keep": []}
    subs = {"{org}": str(tiny_organism_dir), "{em}": str(em_ref), "{tmp}": str(tmp_path)}
    if case.setup:
        extra = case.setup(tmp_path, ctx) or {}
        subs.update({"{" + k + "}": v for k, v in extra.items()})
    argv = []
    for a in case.argv:
        for k, v in subs.items():
            a = a.replace(k, v)
        argv.append(a)
    before = _snapshot(tmp_path)
    try:
        if case.fsize:
            rc, err = _run_limited(argv, case.fsize)
        else:
            capsys.readouterr()
            rc = main(argv)
            err = capsys.readouterr().err.strip()
    finally:
        for s in ctx["keep"]:
            s.close()
    assert rc == case.rc, (rc, err)
    assert err.startswith("persona-basins: error:") and "\n" not in err, err
    assert "Traceback" not in err
    if case.needle:
        assert case.needle in err, err
    assert _snapshot(tmp_path) == before, "the failed command changed files"
    assert not _hidden_leftovers(tmp_path)
    for rel in case.absent:
        assert not (tmp_path / rel).exists(), f"{rel} left behind"


# ------------------------------------------------------------------------------ focused reliability tests


def test_killed_build_leftovers_are_cleaned_on_the_next_build(tiny_organism_dir, tmp_path, capsys):
    org = _copy_org(tiny_organism_dir, tmp_path / "org")
    dead = _dead_pid()
    stale = tmp_path / f".org.building-{dead}-abc123"
    (stale / "checkpoints").mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    old = tmp_path / ".org.old-1-2"
    old.mkdir()
    live = tmp_path / f".org.building-{os.getppid()}-live"  # a build still running (its process is alive)
    live.mkdir()
    assert main(["organism", "build", "--preset", "tiny", "--out", str(org)]) == 0
    assert "every file verified" in capsys.readouterr().out
    assert not stale.exists() and not old.exists() and live.exists()


def test_force_replaces_only_folders_this_program_wrote(tmp_path, capsys):
    from persona_basins.studies.organism import written_by_us

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"persona_basins": {"format": "persona-basins-organism/1"}}')
    assert not written_by_us(mine)  # a stamp without world.json is not an organism folder
    assert main(["organism", "build", "--preset", "tiny", "--force", "--out", str(mine)]) == 2
    assert (mine / "config.json").is_file()


def test_run_dir_config_with_metrics_timing_apart_and_environment(tmp_path):
    import torch

    from persona_basins.results import RunDir

    with pytest.raises(RuntimeError), RunDir(tmp_path / "failed", "x", {"a": 1}) as run:
        run.path  # noqa: B018 - the folder is made on first use
        raise RuntimeError("the measurement failed")
    assert not (tmp_path / "failed").exists()  # no folder holding only config.json

    run = RunDir(tmp_path / "ok", "x", {"a": 1})
    assert not (tmp_path / "ok" / "config.json").exists()
    run.write_metrics(
        {
            "v": 1.5,
            "seconds": 3.2,
            "llc": {"sampling_seconds": 1.0, "mean": 2.0},
            "rows": [{"seconds": 1}, {"x": 2}],
        }
    )
    m = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    t = json.loads((tmp_path / "ok" / "timing.json").read_text())
    c = json.loads((tmp_path / "ok" / "config.json").read_text())
    assert m == {"kind": "x", "v": 1.5, "llc": {"mean": 2.0}, "rows": [{}, {"x": 2}]}
    assert t == {"kind": "x", "seconds": 3.2, "llc": {"sampling_seconds": 1.0}, "rows": {"0": {"seconds": 1}}}
    assert c["environment"]["torch_threads"] == torch.get_num_threads()
    assert c["environment"]["torch_version"] == torch.__version__


def test_file_modes_are_shareable(tiny_organism_dir, em_ref):
    umask = os.umask(0)
    os.umask(umask)
    fmode, dmode = 0o666 & ~umask, 0o777 & ~umask
    for root in (tiny_organism_dir, em_ref):
        for p in [root, *root.rglob("*")]:
            want = dmode if p.is_dir() else fmode
            assert p.stat().st_mode & 0o777 == want, (p, oct(p.stat().st_mode & 0o777))


def test_em_config_names_the_organism_fingerprint(em_ref, tiny_organism_dir):
    from persona_basins.models.organism import organism_fingerprint

    c = json.loads((em_ref / "config.json").read_text())
    key = json.loads((em_ref / "adapters" / "plain" / "seed0" / "key.json").read_text())
    assert c["organism_fingerprint"] == key["organism"] == organism_fingerprint(tiny_organism_dir)
    assert len(key["organism"]) == 64


def test_em_divergence_names_the_learning_rate(tiny_organism, tmp_path, monkeypatch):
    from persona_basins.errors import UserError
    from persona_basins.studies import em as em_study

    def blow_up(*a, **k):
        raise FloatingPointError("fine-tune plain: loss became nan at step 3; lower the learning rate")

    monkeypatch.setattr(em_study, "finetune", blow_up)
    with pytest.raises(UserError, match=r"FinetuneConfig.lr 0.003 is the likely cause \(default 3e-3\)"):
        em_study.run_em(tiny_organism, tmp_path / "run", layer=0, module="attn_out", seeds=1, progress=False)
    assert not _hidden_leftovers(tmp_path)


# ----------------------------------------------------------------------------------- kill and resume


def _wait_for(path: Path, proc, timeout=240) -> None:
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)


def test_em_sigkill_and_sigterm_then_resume_is_byte_identical(tiny_organism_dir, em_ref, tmp_path):
    # the same settings as em_ref (run in-process with one thread; the subprocesses use one thread too)
    args = [
        "em",
        "--organism",
        str(tiny_organism_dir),
        "--seeds",
        "1",
        "--steps",
        "5",
        "--checkpoint-every",
        "5",
    ]
    out = tmp_path / "victim"
    cmd = CLI + args + ["--out", str(out)]
    units = [out / "adapters" / c / "seed0" for c in ("plain", "inoculated", "secure_control", "educational")]
    # 1. SIGKILL after the first unit: its folder stays, the unit being trained is a hidden partial
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(units[0] / "result.json", p)
    p.kill()
    p.wait()
    assert not (out / "metrics.json").exists() and not (out / "config.json").exists()
    # 2. rerun, SIGTERM after another unit: exit 130, the message promises a resume, nothing partial kept
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(units[1] / "result.json", p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "rerun with the same --out to resume" in err and "Traceback" not in err
    assert not _hidden_leftovers(out)
    # 3. the final rerun finishes; everything equals the uninterrupted run byte for byte
    assert subprocess.run(cmd, env=ENV, capture_output=True, timeout=300).returncode == 0
    assert (out / "metrics.json").read_bytes() == (em_ref / "metrics.json").read_bytes()
    for u in units:
        rel = u.relative_to(out)
        for f in ("result.json", "adapter_model.safetensors"):
            assert (u / f).read_bytes() == (em_ref / rel / f).read_bytes(), (rel, f)
    assert not _hidden_leftovers(out)


def test_build_sigterm_message_does_not_promise_a_resume(tmp_path):
    out = tmp_path / "org"
    p = subprocess.Popen(
        CLI + ["organism", "build", "--preset", "tiny", "--out", str(out)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while not list(tmp_path.glob(".org.building-*")) and time.time() < deadline:  # training has started
        time.sleep(0.02)
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "resume" not in err and "Traceback" not in err, err
    assert not out.exists() and not _hidden_leftovers(tmp_path)


def test_demo_sigkill_then_resume_is_byte_identical(tiny_organism_dir, tiny_demo_run, tmp_path):
    from persona_basins.results import split_timing

    out = tmp_path / "victim"
    cmd = CLI + [
        "demo",
        "--preset",
        "tiny",
        "--organism",
        str(tiny_organism_dir),
        "--no-browser",
        "--no-calibrated-llc",  # as the session's reference run
        "--out",
        str(out),
    ]
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(
        out / "em" / "adapters" / "inoculated" / "seed0" / "result.json", p
    )  # killed inside the em step
    p.kill()
    p.wait()
    assert not (out / "study.json").exists()
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for f in ("metrics.json", "em/metrics.json"):
        assert (out / f).read_bytes() == (tiny_demo_run / f).read_bytes(), f
    for f in (
        "em",
        "scans",
        "llc",
        "overlap",
        "eigenform",
    ):  # step results: equal apart from wall-clock fields
        a, b = (json.loads((d / "steps" / f / "result.json").read_text()) for d in (out, tiny_demo_run))
        assert split_timing(a)[0] == split_timing(b)[0], f
    assert not _hidden_leftovers(out)


# -------------------------------------------------------------------------------- explorer server fuzz


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    from persona_basins.viz.server import make_server

    run = tmp_path_factory.mktemp("fuzz") / "run"
    (run / "figures").mkdir(parents=True)
    (run / "config.json").write_text('{"kind": "em"}')
    (run / "metrics.json").write_text('{"kind": "em"}')
    (run / "figures" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (run.parent / "secret.png").write_bytes(b"secret")
    httpd, url = make_server([run], port=0)
    failures: list[str] = []
    httpd.handle_error = lambda request, addr: failures.append(f"unhandled error for {addr}")
    th = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    yield httpd, failures
    httpd.shutdown()
    httpd.server_close()


def _raw_get(port: int, target: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n" % port)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    return b"".join(chunks)


def _check_answer(resp: bytes, target: bytes) -> int:
    assert resp.startswith(b"HTTP/1.") and b"\r\n\r\n" in resp, (target, resp[:200])  # never silence
    head, body = resp.split(b"\r\n\r\n", 1)
    code = int(head.split(b" ", 2)[1])
    assert code in (200, 204, 400, 403, 404, 414), (target, head)
    assert b"content-security-policy: default-src 'none'" in head.lower(), head
    assert b"Traceback" not in body and b"secret" not in body
    return code


def test_server_answers_known_paths_with_csp(fuzz_server):
    httpd, failures = fuzz_server
    port = httpd.server_address[1]
    assert _check_answer(_raw_get(port, b"/"), b"/") == 200
    assert _check_answer(_raw_get(port, b"/runs/0/figures/a.png"), b"") == 200
    for bad in (
        b"/runs/0/figures/%2e%2e%2f%2e%2e%2fsecret.png",
        b"/runs/0/figures/..%5csecret.png",
        b"/runs/-1/figures/a.png",
        b"/runs/%D9%A1/figures/a.png",
        b"/runs/0/figures/a%00.png",
        b"/runs/0/figures/" + b"a" * 5000 + b".png",
        b"/%ff%fe",
        b"/runs/99999999999999999999/figures/a.png",
    ):
        assert _check_answer(_raw_get(port, bad), bad) in (400, 403, 404)
    assert not failures


def test_server_fuzzed_paths_never_traceback_or_silence(fuzz_server):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    httpd, failures = fuzz_server
    port = httpd.server_address[1]
    raw_bytes = st.binary(max_size=120).map(lambda b: bytes(c for c in b if c not in b" \r\n"))
    targets = st.one_of(
        raw_bytes.map(lambda b: b"/" + b),  # raw bytes in the request line (latin-1 decoded by http.server)
        st.binary(max_size=120).map(
            lambda b: b"/" + quote_from_bytes(b).encode()
        ),  # any bytes, percent-encoded
        st.binary(max_size=60).map(lambda b: b"/runs/0/figures/" + quote_from_bytes(b, safe="/.").encode()),
        st.text(max_size=40).map(
            lambda t: b"/runs/" + quote_from_bytes(t.encode("utf-8", "surrogatepass"), safe="/.%").encode()
        ),
    )

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )  # fixed examples, nothing written into the tree
    @given(targets)
    def one(target):
        _check_answer(_raw_get(port, target), target)

    one()
    assert not failures


# ------------------------------------------------------------------- the run store, run folders, the reader


def test_get_or_run_resumes_refuses_other_keys_and_forces(tmp_path):
    from persona_basins.errors import UserError
    from persona_basins.results import get_or_run

    built = []

    def build(tmp):
        built.append(tmp.name)
        (tmp / "result.json").write_text("{}")

    unit = tmp_path / "unit"
    key = {"steps": 5, "organism": {"fingerprint": "ab" * 32}, "ts": (0.0, 1.0)}
    assert get_or_run(unit, key, build) == unit
    assert get_or_run(unit, {**key, "ts": [0.0, 1.0]}, build) == unit and len(built) == 1  # as stored
    with pytest.raises(UserError, match=r"other settings \(organism.fingerprint .* steps 5 -> 6\); --force"):
        get_or_run(unit, {**key, "steps": 6, "organism": {"fingerprint": "cd" * 32}}, build)
    assert len(built) == 1 and json.loads((unit / "key.json").read_text())["steps"] == 5
    get_or_run(unit, {**key, "steps": 6}, build, force=True)
    assert len(built) == 2 and json.loads((unit / "key.json").read_text())["steps"] == 6
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="without key.json"):
        get_or_run(mine, key, build, force=True)  # --force never deletes what the program did not write
    assert (mine / "notes.txt").read_text() == "keep" and not _hidden_leftovers(tmp_path)


def test_get_or_run_cleans_killed_leftovers_and_keeps_a_concurrent_winner(tmp_path):
    from persona_basins.results import get_or_run

    unit = tmp_path / "unit"
    stale = tmp_path / f".unit.tmp-{_dead_pid()}-abc"
    stale.mkdir()
    live = tmp_path / f".unit.tmp-{os.getppid()}-live"  # another run still working (its process is alive)
    live.mkdir()
    key = {"seed": 1}

    def build_while_another_finishes(tmp):
        (tmp / "result.json").write_text('{"mine": true}')
        unit.mkdir()  # the other process renames its finished folder into place first
        (unit / "result.json").write_text('{"theirs": true}')
        (unit / "key.json").write_text(json.dumps(key))

    get_or_run(unit, key, build_while_another_finishes)
    assert json.loads((unit / "result.json").read_text()) == {"theirs": True}
    assert not stale.exists() and live.exists()
    live.rmdir()
    assert not _hidden_leftovers(tmp_path)


def test_run_dir_is_replaced_as_one_unit(tmp_path, monkeypatch):
    from persona_basins import results
    from persona_basins.errors import UserError

    run = tmp_path / "run"
    first = results.RunDir(run, "llc", {"draws": 3})
    first.write_metrics({"llc": 1.0, "seconds": 2.0})
    (first.path / "work").mkdir()  # what a study keeps in its folder (units) moves with the record
    (first.path / "work" / "unit.json").write_text("{}")
    before = _snapshot(run)
    real = results.write_json

    def fail_on_metrics(path, obj):
        if Path(path).name == "metrics.json":
            raise UserError(f"cannot write {path}: File too large")
        return real(path, obj)

    monkeypatch.setattr(results, "write_json", fail_on_metrics)
    with pytest.raises(UserError, match="File too large"):
        results.RunDir(run, "llc", {"draws": 4}).write_metrics({"llc": 2.0})
    assert _snapshot(run) == before and not _hidden_leftovers(tmp_path)  # the old record, whole
    monkeypatch.setattr(results, "write_json", real)
    results.RunDir(run, "llc", {"draws": 4}).write_metrics({"llc": 2.0})
    assert json.loads((run / "config.json").read_text())["draws"] == 4
    assert json.loads((run / "metrics.json").read_text()) == {"kind": "llc", "llc": 2.0}
    assert not (run / "timing.json").exists() and (run / "work" / "unit.json").is_file()
    assert not _hidden_leftovers(tmp_path)


def test_a_killed_record_swap_is_finished_or_undone_by_the_next_run(tmp_path):
    from persona_basins.results import RunDir

    dead = _dead_pid()
    run = tmp_path / "run"
    # killed between the two renames: the old folder is aside, the complete new one beside it
    stage = tmp_path / f".run.swap-{dead}-x"
    (stage / "adapters").mkdir(parents=True)
    (stage / "config.json").write_text('{"kind": "em"}')
    (stage / "metrics.json").write_text('{"kind": "em", "v": 2}')
    old = tmp_path / f".run.old-{dead}-y"
    old.mkdir()
    (old / "metrics.json").write_text('{"kind": "em", "v": 1}')
    RunDir(run, "em", {})
    assert json.loads((run / "metrics.json").read_text())["v"] == 2 and (run / "adapters").is_dir()
    # killed while moving the work over: the units go back into the folder
    stage = tmp_path / f".run.swap-{dead}-z"
    (stage / "units").mkdir(parents=True)
    (stage / "units" / "u.json").write_text("{}")
    (stage / "metrics.json").write_text('{"kind": "em", "v": 3}')
    RunDir(run, "em", {})
    assert (run / "units" / "u.json").is_file() and json.loads((run / "metrics.json").read_text())["v"] == 2
    assert not _hidden_leftovers(tmp_path)


@pytest.mark.parametrize(
    "data, needle",
    [
        (None, "missing file"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"a": ', "malformed JSON (line 1"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"n": ' + b"9" * 5000 + b"}", "malformed JSON (Exceeds the limit"),
        (b"[1]", "top level is list"),
        ("folder", "a folder, not a JSON file"),
    ],
    ids=["missing", "not-utf8", "truncated", "nested-deep", "huge-int", "not-an-object", "folder"],
)
def test_read_json_turns_every_failure_into_one_line(tmp_path, data, needle):
    from persona_basins.errors import UserError
    from persona_basins.results import read_json

    f = tmp_path / "metrics.json"
    if data == "folder":
        f.mkdir()
    elif data is not None:
        f.write_bytes(data)
    with pytest.raises(UserError) as e:
        read_json(f, recover="delete it", expect=dict)
    msg = str(e.value)
    assert needle in msg and str(f) in msg and msg.endswith("; delete it") and "\n" not in msg


def test_explorer_and_report_show_a_deeply_nested_file_as_a_per_run_error(tmp_path, capsys):
    from persona_basins.viz.runs import load_runs

    good, bad = tmp_path / "good", tmp_path / "bad"
    for d in (good, bad):
        d.mkdir()
        (d / "config.json").write_text('{"kind": "em"}')
    (good / "metrics.json").write_text('{"kind": "em", "v": 1}')
    (bad / "metrics.json").write_text("[" * 100_000 + "]" * 100_000)
    runs = load_runs([good, bad])
    assert runs[0]["metrics"] == {"kind": "em", "v": 1} and not runs[0]["errors"]
    assert runs[1]["metrics"] is None and any("nested too deeply" in e for e in runs[1]["errors"])
    assert main(["report", str(good), str(bad), "--out", str(tmp_path / "r.html")]) == 0
    assert "nested too deeply" in (tmp_path / "r.html").read_text()


def test_organism_fingerprint_is_the_verified_manifest(tiny_organism_dir, tiny_organism, tmp_path):
    from persona_basins.errors import UserError
    from persona_basins.models.organism import organism_fingerprint

    fp = organism_fingerprint(tiny_organism_dir)
    assert fp == organism_fingerprint(tiny_organism) and len(fp) == 64
    moved = _copy_org(tiny_organism_dir, tmp_path / "moved")
    assert organism_fingerprint(moved) == fp  # a copy or a move keeps the identity
    _perturb_weights(moved)  # other weights, legitimately built: another identity
    assert organism_fingerprint(moved) != fp
    _edit_json("config.json", {"n_head": 4})(moved)
    with pytest.raises(UserError, match="config.json does not match its recorded hash"):
        organism_fingerprint(moved)


def test_a_foreign_adapter_keeps_the_base_model_clean(tiny_organism, em_ref, tmp_path):
    import copy

    from persona_basins.errors import UserError
    from persona_basins.models.edits import load_adapter

    adapter = tmp_path / "adapter"
    shutil.copytree(
        em_ref / "adapters" / "plain" / "seed0", adapter, ignore=shutil.ignore_patterns("checkpoints")
    )
    _retarget_adapter(".h.0.", ".h.1.")(adapter)
    model = copy.deepcopy(tiny_organism.model)
    with pytest.raises(UserError, match="zero adapter"):
        load_adapter(model, adapter)
    assert not any("lora" in n for n, _ in model.named_parameters())
