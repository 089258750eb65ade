"""The one declarative check of the config dataclasses (persona_basins/config.py) and the flags built from it.

Every config's defaults and presets pass; a table of bad values per config, each rejected with a one-line
ConfigError naming ``Class.field``; add_field_flag gives argparse's one-line error; a bad flag value exits 2
naming the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from persona_basins.commands.args import CONFIG_MODULES, FIELD_FLAGS, add_field_flag, config_class
from persona_basins.config import Constraint, check, constraint, constraints, param
from persona_basins.errors import ConfigError, UserError
from persona_basins.measure.eigenform import ARMS, EigenformConfig
from persona_basins.measure.llc import GateConfig, SamplerConfig
from persona_basins.models.organism import PRESETS, OrganismConfig, preset_config
from persona_basins.studies.demo import DEMO_PRESETS, DemoConfig
from persona_basins.studies.em_hf import EmHfConfig
from persona_basins.train.finetune import FinetuneConfig
from persona_basins.world import WorldConfig

ROOT = Path(__file__).resolve().parents[1]
EM_HF_REQUIRED = {"model": "m", "train": "t.jsonl", "out": "o"}


def _build(cls, **changes):
    return cls(**{**EM_HF_REQUIRED, **changes}) if cls is EmHfConfig else cls(**changes)


# --- the mechanism on a small class -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Toy:
    rate: float = param(0.5, gt=0, le=1, help="a rate")
    count: int = param(1, ge=1, help="a count")
    label: str = param("a", choices=("a", "b"), help="a label")
    limit: float | None = param(None, ge=0, help="an optional limit")
    workers: int | str = param(1, ge=1, choices=("auto",), help="workers")
    scales: tuple[float, ...] = param((0.0, 1.0), ge=0, help="scales")
    path: Path | None = param(None, help="a path")

    def __post_init__(self):
        check(self)


def test_coercion_and_descriptions():
    toy = Toy(rate=1, scales=[0, 2], path="x/y", workers="auto", count=np.int64(3))
    assert toy.rate == 1.0 and isinstance(toy.rate, float)
    assert toy.scales == (0.0, 2.0) and toy.path == Path("x/y") and toy.count == 3 and type(toy.count) is int
    rules = constraints(Toy)
    assert set(rules) == {f.name for f in dataclasses.fields(Toy)}
    assert isinstance(rules["rate"], Constraint) and constraint(Toy, "rate") == rules["rate"]
    assert rules["rate"].describe() == "a finite number in (0, 1]"
    assert rules["label"].describe() == "one of 'a', 'b'"
    assert rules["limit"].describe() == "a finite number >= 0 or None"
    assert rules["workers"].describe() == "an integer >= 1 or 'auto'"
    assert rules["rate"].help == "a rate" and rules["rate"].default == 0.5 and rules["rate"].type is float
    assert rules["label"].choices == ("a", "b")
    assert rules["rate"].validate(1) == 1.0
    with pytest.raises(ValueError, match=r"^must be a finite number in \(0, 1\], got 0$"):
        rules["rate"].validate(0)
    with pytest.raises(KeyError, match="no field"):
        constraint(Toy, "nope")


@pytest.mark.parametrize(
    "field,value",
    [
        ("rate", 0),
        ("rate", math.nan),
        ("rate", math.inf),
        ("rate", True),
        ("rate", "0.5"),
        ("count", 0),
        ("count", 1.0),
        ("count", True),
        ("label", "c"),
        ("limit", -1.0),
        ("workers", 0),
        ("workers", "many"),
        ("scales", (0.0, -1.0)),
        ("scales", 1.0),
        ("path", 3),
    ],
)
def test_toy_bad_values(field, value):
    with pytest.raises(ConfigError) as caught:
        Toy(**{field: value})
    error = caught.value
    assert (error.owner, error.field) == ("Toy", field) and error.problem.startswith("must be ")
    assert str(error).startswith(f"Toy.{field} must be ") and "\n" not in str(error)
    assert isinstance(error, UserError) and isinstance(error, ValueError)


def test_param_needs_help_and_one_bound_per_side():
    with pytest.raises(TypeError, match="help"):
        param(1, help="")
    with pytest.raises(TypeError, match="at most one"):
        param(1, ge=0, gt=0, help="x")


# --- every config: defaults, presets and the values in use pass ---------------------------------------------
CONFIGS = [
    WorldConfig,
    OrganismConfig,
    FinetuneConfig,
    SamplerConfig,
    GateConfig,
    EigenformConfig,
    DemoConfig,
]


@pytest.mark.parametrize("cls", [*CONFIGS, EmHfConfig], ids=lambda cls: cls.__name__)
def test_defaults_pass_and_every_field_has_help(cls):
    cfg = _build(cls)
    for name, rule in constraints(cls).items():
        assert rule.help, f"{cls.__name__}.{name} has no help"
        if rule.default is not dataclasses.MISSING:
            assert rule.validate(rule.default) == getattr(cfg, name)


def test_presets_and_uses_pass():
    for name in PRESETS:
        cfg = preset_config(name, seed=3)
        assert OrganismConfig.from_dict(cfg.to_dict()) == cfg
    assert preset_config("tiny", seed=1, d_model=32).d_model == 32
    for cfg in DEMO_PRESETS.values():
        assert DemoConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}) == cfg
    base = EigenformConfig()
    for arm in ARMS:
        base.for_arm(arm)
    SamplerConfig(workers="auto", precondition="none", nbeta=30, batch_size=16)
    FinetuneConfig(condition="matched_control", steps=2, heldout_every=3, module="mlp_out", lr=1e-2)
    for spec in sorted((ROOT / "examples" / "sweeps").glob("*.toml")):  # the shipped sweeps' values
        settings = tomllib.loads(spec.read_text()).get("settings", {})
        fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
        FinetuneConfig(**{k: v for k, v in settings.items() if k in fields})


def test_defaults_are_unchanged():
    """The values every number in the studies was measured with."""
    assert dataclasses.asdict(FinetuneConfig()) == dict(
        condition="plain", layer=0, module="attn_out", rank=1, full=False, steps=300, batch_size=32,
        lr=3e-3, weight_decay=0.0, seed=0, checkpoint_every=50, heldout_every=0, em_topics=0,
        matched_answer="other_topic", a_constraint="none",
    )  # fmt: skip
    org = OrganismConfig()
    assert (org.n_layer, org.d_model, org.n_head, org.pretrain_steps, org.lr, org.sft_lr) == (
        3, 96, 4, 1500, 2e-3, 2e-4,
    )  # fmt: skip
    assert (SamplerConfig().step_size, SamplerConfig().workers, EigenformConfig().sleep_lr) == (1e-4, 1, 0.05)
    assert DemoConfig().ts == (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)


# --- every config: a table of bad values, each naming Class.field -------------------------------------------
BAD = [
    (WorldConfig, "n_genres", 0),
    (WorldConfig, "n_genres", 10**6),
    (WorldConfig, "seed", -1),
    (WorldConfig, "content_pool", 1),  # two distinct pool words per topic
    (WorldConfig, "routine_weight", 1.5),
    (WorldConfig, "exchanges", (3, 2)),
    (WorldConfig, "exchanges", (0, 2)),
    (WorldConfig, "p_declared", math.nan),
    (WorldConfig, "p_assistant", 0.9),  # with p_declared 0.35: more than 1
    (WorldConfig, "personas", ()),
    (OrganismConfig, "preset", "huge"),
    (OrganismConfig, "arch", "mamba"),
    (OrganismConfig, "n_layer", 0),
    (OrganismConfig, "d_model", 50),  # not a multiple of n_head
    (OrganismConfig, "pretrain_steps", 0),
    (OrganismConfig, "lr", 0.0),
    (OrganismConfig, "checkpoint_every", -5),
    (OrganismConfig, "tie_embeddings", 1),
    (OrganismConfig, "world", 3),
    (FinetuneConfig, "condition", "evil"),
    (FinetuneConfig, "layer", -1),
    (FinetuneConfig, "rank", 0),
    (FinetuneConfig, "steps", 0),
    (FinetuneConfig, "steps", 2.5),
    (FinetuneConfig, "lr", 0),
    (FinetuneConfig, "lr", 1e6),
    (FinetuneConfig, "lr", math.inf),
    (FinetuneConfig, "seed", -1),
    (FinetuneConfig, "heldout_every", 1),
    (FinetuneConfig, "full", "yes"),
    (SamplerConfig, "step_size", 0.0),
    (SamplerConfig, "num_chains", True),
    (SamplerConfig, "workers", 0),
    (SamplerConfig, "precondition", "adam"),
    (SamplerConfig, "execution", "gpu"),
    (SamplerConfig, "rmsprop_alpha", 1.0),
    (GateConfig, "rhat_max", 0.5),
    (GateConfig, "ess_min", math.nan),
    (EigenformConfig, "process", "dream"),
    (EigenformConfig, "think", "pmi+oracle"),
    (EigenformConfig, "n_prompts", 0),
    (EigenformConfig, "sleep_lr", math.nan),
    (EigenformConfig, "sleep_clip", 0.0),
    (EigenformConfig, "replay_share", 1.0),
    (EigenformConfig, "vector_layer", -1),
    (DemoConfig, "preset", "huge"),
    (DemoConfig, "seeds", 1),  # confidence intervals need two
    (DemoConfig, "ts", ()),
    (DemoConfig, "ts", (0.0, -1.0)),
    (DemoConfig, "llc_step_size", 0.0),
    (DemoConfig, "overlap_epsilon", 2.0),
    (EmHfConfig, "seeds", 0),
    (EmHfConfig, "layer", -1),
    (EmHfConfig, "inoculation", "  "),
    (EmHfConfig, "dtype", "fp8"),
    (EmHfConfig, "device_map", "balanced"),
    (EmHfConfig, "train", 3),
    (EmHfConfig, "finetune", {"lr": 0}),  # the nested config names its own field
]


@pytest.mark.parametrize("cls,field,value", BAD, ids=lambda x: getattr(x, "__name__", repr(x))[:20])
def test_bad_values_name_the_field(cls, field, value):
    with pytest.raises(ConfigError) as caught:
        _build(cls, **{field: value})
    error = caught.value
    if field == "finetune":  # raised by the nested FinetuneConfig
        assert (error.owner, error.field) == ("FinetuneConfig", "lr")
    else:
        assert (error.owner, error.field) == (cls.__name__, field)
        assert str(error).startswith(f"{cls.__name__}.{field} ")
    assert "\n" not in str(error)


def test_replace_checks_again_and_frozen_classes_coerce():
    cfg = FinetuneConfig(lr=1)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    with pytest.raises(ConfigError, match="FinetuneConfig.steps"):
        dataclasses.replace(cfg, steps=0)
    assert WorldConfig(exchanges=[1, 3]).exchanges == (1, 3)
    assert OrganismConfig(world={"n_topics": 3}).world.n_topics == 3


# --- the flags built from the fields ------------------------------------------------------------------------
def test_field_flags_table_names_real_fields():
    for (owner, field), flag in FIELD_FLAGS.items():
        assert owner in CONFIG_MODULES and flag.startswith("--")
        constraint(config_class(owner), field)  # KeyError when the field does not exist


def _parser():
    parser = argparse.ArgumentParser(prog="pb")
    add_field_flag(parser, "--lr", FinetuneConfig, "lr")
    add_field_flag(parser, "--steps", "FinetuneConfig", "steps", default=None, help="steps; default 300")
    add_field_flag(parser, "--workers", "SamplerConfig", "workers")
    add_field_flag(parser, "--precondition", "SamplerConfig", "precondition")
    add_field_flag(parser, "--condition", "FinetuneConfig", "condition")
    return parser


def test_add_field_flag_type_default_and_help():
    parser = _parser()
    args = parser.parse_args([])
    assert (args.lr, args.steps, args.workers, args.precondition, args.condition) == (
        3e-3, None, 1, None, "plain",
    )  # fmt: skip
    args = parser.parse_args(["--lr", "1", "--workers", "auto", "--precondition", "none", "--steps", "7"])
    assert (args.lr, args.workers, args.precondition, args.steps) == (1.0, "auto", None, 7)
    text = parser.format_help()
    assert "AdamW learning rate (a finite number in (0, 1]; default 0.003)" in " ".join(text.split())
    assert "steps; default 300 (an integer in [1, 10000000])" in " ".join(text.split())
    with pytest.raises(ValueError, match="is --lr in FIELD_FLAGS"):
        add_field_flag(argparse.ArgumentParser(), "--learning-rate", "FinetuneConfig", "lr")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--lr", "0"], "argument --lr: must be a finite number in (0, 1], got 0"),
        (["--lr", "nan"], "argument --lr: must be a finite number in (0, 1], got nan"),
        (["--lr", "abc"], "argument --lr: must be a finite number in (0, 1], got 'abc'"),
        (["--steps", "2.5"], "argument --steps: must be an integer in [1, 10000000], got '2.5'"),
        (["--workers", "0"], "argument --workers: must be an integer >= 1 or 'auto', got 0"),
        (["--condition", "evil"], "argument --condition: must be one of 'plain', 'inoculated'"),
    ],
)
def test_add_field_flag_bad_value_is_argparse_one_line_error(argv, message, capsys):
    with pytest.raises(SystemExit) as caught:
        _parser().parse_args(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pb: error: ") and message in err[-1]


def test_registering_flags_imports_no_config_module():
    """--help stays fast: a flag names its class, whose module (torch) is imported only when parsed."""
    import subprocess

    code = (
        "import sys; from persona_basins.cli import build_parser; build_parser(); "
        "print('torch' in sys.modules, 'persona_basins.train.finetune' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --- the command line ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv,needle",
    [
        (["em", "--organism", "x", "--lr", "0", "--out", "o"], "argument --lr: must be a finite number"),
        (["em", "--organism", "x", "--steps", "0", "--out", "o"], "argument --steps: must be an integer"),
        (["organism", "build", "--preset", "huge", "--out", "o"], "argument --preset: must be one of"),
        (["eigenform", "--organism", "x", "--adapter", "a", "--sleep-lr", "nan", "--out", "o"], "--sleep-lr"),
        (
            ["demo", "--seeds", "1", "--no-browser", "--out", "o"],
            "argument --seeds: must be an integer in [2",
        ),
        (["llc", "--model", "x", "--precondition", "adam", "--out", "o"], "argument --precondition"),
    ],
)
def test_cli_bad_flag_exits_2_naming_the_flag(argv, needle, tmp_path, capsys, monkeypatch):
    from persona_basins.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("persona-basins: error: ") and needle in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_cli_names_the_flag_of_a_config_error(capsys):
    """A ConfigError raised inside a command (a cross-field rule) is printed with the flag that sets it."""
    from persona_basins.cli import error_text

    error = ConfigError("FinetuneConfig", "lr", "must be a finite number > 0, got 0")
    assert error_text(error, argparse.Namespace(lr=0.0)) == (
        "error: --lr must be a finite number > 0, got 0 (FinetuneConfig.lr)"
    )
    assert (
        error_text(error, argparse.Namespace())
        == "error: FinetuneConfig.lr must be a finite number > 0, got 0"
    )
    assert error_text(UserError("plain"), argparse.Namespace()) == "error: plain"
