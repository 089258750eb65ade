"""argparse ``type=`` helpers: NaN, inf and out-of-range values are refused up front, in one wording.

argparse turns the ``ArgumentTypeError`` raised here into ``persona-basins COMMAND: error: argument --lr:
must be ..., got ...`` on one line with exit code 2, so every flag names itself when it is wrong, before any
file is written or any model is loaded. A flag that sets a config field takes its type, default and help from
the field (:func:`add_field_flag`, the checks of :mod:`persona_basins.config`); any other numeric flag uses
the same check through :func:`finite_float` / :func:`int_in`::

    add_field_flag(p, "--lr", "FinetuneConfig", "lr")
    p.add_argument("--t-max", type=finite_float(0, None, lo_open=True), default=3.0)
"""

from __future__ import annotations

import argparse
import math

from ..config import Constraint


def _flag_rule(kind, **bounds) -> Constraint:
    """The constraint of a flag that is no config field (a function argument such as ``--t-max``)."""
    return Constraint("flag", "value", kind, None, "a flag", **bounds)


def finite_float(
    lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False
):
    """A finite float in [lo, hi] (``lo_open``/``hi_open``: the bound itself is excluded)."""
    low = {"gt": lo} if lo_open else {"ge": lo}
    high = {"lt": hi} if hi_open else {"le": hi}
    return _checking_type(_flag_rule(float, **low, **high), "number")


def int_in(lo: int | None = None, hi: int | None = None):
    """An integer in [lo, hi] (either bound may be None)."""
    return _checking_type(_flag_rule(int, ge=lo, le=hi), "integer")


def _checking_type(rule, name: str):
    """An argparse ``type=`` reading a flag's text as ``rule`` wants (``rule``: a Constraint, or a function
    giving it when first needed). A bad value raises ``ArgumentTypeError("must be ..., got ...")``."""

    def parse(text: str):
        wanted = rule if isinstance(rule, Constraint) else rule()
        value = _parse_text(text, wanted)
        try:
            return wanted.validate(value)
        except ValueError:
            shown = repr(text) if value is text else text  # as typed: "got 0", not "got 0.0"
            raise argparse.ArgumentTypeError(f"must be {wanted.describe()}, got {shown}") from None

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def _parse_text(text: str, rule: Constraint):
    """The flag's text read as the rule's type ("none" as None where allowed); left as text when it does not
    read as a number, so ``validate`` says what was wanted."""
    if rule.optional and text.strip().lower() == "none":
        return None
    for kind in rule.kinds:
        try:
            if kind is int:
                return int(text.strip(), 10)
            if kind is float:
                return float(text)
        except ValueError:
            continue
    return text


# Common ranges, so commands agree on them.
SEED = int_in(0, 2**32 - 1)  # torch / numpy seeds
PORT = int_in(0, 65535)
POSITIVE = finite_float(0, None, lo_open=True)
PROBABILITY = finite_float(0, 1)

# The package-wide torch intra-op thread default, fixed (never chosen from the machine's load at run time, so
# the last digits are reproducible: the thread count changes float summation order). Measured (docs/LLC.md):
# on the 2-core machine under load average 6-7, 4 chains x 40 draws of the tiny organism's LLC took 2.7-4.0 s
# with 1 thread and 44-50 s with 2 (OpenMP barriers wait for a descheduled thread); models this small gain
# nothing from intra-op threads even on a quiet machine.
DEFAULT_THREADS = 1
THREADS = int_in(1, 1024)
COUNT = int_in(1, 1000)  # --seeds: how many seeds (0 .. N-1), never a list

# --- the one flag vocabulary --------------------------------------------------------------------------------
# Every command names the same thing with the same flag, metavar, type and default (tests/test_flags.py walks
# every parser and checks): --organism DIR (an organism folder), --model DIR_OR_HUB_ID (any Hugging Face
# causal LM), --adapter DIR (a PEFT adapter folder), --em-run RUN (a finished `em` run), --seeds N (a count),
# --device and --dtype (default auto), --threads N (also after the subcommand).
ORGANISM_HELP = "organism folder (persona-basins organism build)"
MODEL_HELP = "Hugging Face causal LM: a hub id (Qwen/Qwen2.5-0.5B-Instruct) or a local folder"
DEVICE_HELP = "auto (cuda when available), cpu, cuda, cuda:N or mps (default auto)"
DTYPES = ("auto", "fp32", "bf16", "fp16")  # models.hf.DTYPE_CHOICES (not imported: --help stays fast)


def add_organism_flag(parser, *, required: bool = False, help: str = ORGANISM_HELP):
    return parser.add_argument("--organism", required=required, metavar="DIR", help=help)


def add_model_flag(parser, *, required: bool = False, help: str = MODEL_HELP):
    return parser.add_argument("--model", required=required, metavar="DIR_OR_HUB_ID", help=help)


def add_adapter_flag(parser, *, help: str, required: bool = False, repeat: bool = False):
    """``--adapter DIR``; with ``repeat`` it may be given once per seed (a list)."""
    more = {"action": "append"} if repeat else {}
    return parser.add_argument("--adapter", required=required, metavar="DIR", help=help, **more)


def add_em_run_flag(parser, *, help: str, required: bool = False):
    """``--em-run RUN`` (``--em`` kept as the old spelling of the same flag)."""
    return parser.add_argument("--em-run", "--em", dest="em_run", required=required, metavar="RUN", help=help)


def add_seeds_flag(parser, *, help: str, default=None):
    """``--seeds N``: a count of seeds 0 .. N-1 (the first N of a run that has more)."""
    return parser.add_argument("--seeds", type=COUNT, default=default, metavar="N", help=help)


def add_device_flag(parser, *, help: str = DEVICE_HELP):
    return parser.add_argument("--device", default="auto", metavar="DEVICE", help=help)


def add_dtype_flag(parser, *, auto: str):
    """``--dtype`` (default auto); ``auto`` says what auto resolves to for this command."""
    help = f"weights' dtype: {', '.join(DTYPES)}; auto: {auto} (default auto)"
    return parser.add_argument("--dtype", choices=DTYPES, default="auto", metavar="DTYPE", help=help)


def add_threads_flag(parser, *, default=DEFAULT_THREADS, help: str | None = None):
    """``--threads N``: before the subcommand (the global flag) or after it (``default=SUPPRESS``: given
    there, it replaces the global value; not given, the global value stands)."""
    help = help or (
        f"torch intra-op threads (default {DEFAULT_THREADS}, measured fastest for the organism on 2 cores; "
        f"recorded in config.json)"
    )
    return parser.add_argument("--threads", type=THREADS, default=default, metavar="N", help=help)


def add_threads_to_subcommands(parser) -> None:
    """``--threads`` on every subcommand parser (nested ones too), so ``em --threads 2`` works like
    ``--threads 2 em``."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for sub in set(action.choices.values()):
            if not any("--threads" in a.option_strings for a in sub._actions):
                add_threads_flag(
                    sub, default=argparse.SUPPRESS, help="torch threads (default: the global --threads, 1)"
                )
            add_threads_to_subcommands(sub)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` only where there is a default to show: never for a required flag, a ``None``
    default, a switch or a help that already names its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required or action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def number_list(min_count: int = 1, max_count: int | None = None, *, positive: bool = False):
    """Comma-separated finite numbers, ``min_count`` to ``max_count`` of them (each > 0 with ``positive``)."""
    count = f"{min_count}" if max_count == min_count else f"at least {min_count}"
    want = f"{count} comma-separated {'positive ' if positive else ''}finite numbers"

    def parse(text: str) -> list[float]:
        try:
            values = [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            values = []  # refused below, with the same message
        counted = min_count <= len(values) <= (max_count or len(values))
        if not counted or not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}")
        return values

    parse.__name__ = "numbers"
    return parse


def int_or_auto(lo: int | None = None, hi: int | None = None):
    """The word ``auto`` (left as it is), or an integer in [lo, hi]."""
    return _checking_type(_flag_rule(int | str, ge=lo, le=hi, choices=("auto",)), "integer or auto")


def name_list(allowed=None):
    """A comma-separated, non-empty list of names (each one of ``allowed``, when given)."""

    def parse(text: str) -> list[str]:
        names = [v.strip() for v in text.split(",") if v.strip()]
        if not names or (allowed is not None and any(v not in allowed for v in names)):
            some = f"some of {', '.join(allowed)}" if allowed is not None else "at least one name"
            raise argparse.ArgumentTypeError(f"must list {some}, got {text!r}")
        return names

    parse.__name__ = "names"
    return parse


# --- flags generated from config fields ---------------------------------------------------------------------
# (config class, field) -> the flag that sets it. The one place a field meets its flag: add_field_flag checks
# its flag against this table, and the CLI uses it to name the flag when a ConfigError reaches the top
# (``--lr must be a finite number > 0, got 0 (FinetuneConfig.lr)``).
FIELD_FLAGS: dict[tuple[str, str], str] = {
    # organism build
    ("OrganismConfig", "preset"): "--preset",
    ("OrganismConfig", "seed"): "--seed",
    ("OrganismConfig", "arch"): "--arch",
    ("OrganismConfig", "pretrain_steps"): "--pretrain-steps",
    ("OrganismConfig", "checkpoint_every"): "--checkpoint-every",
    # em (the organism and --model)
    ("FinetuneConfig", "rank"): "--rank",
    ("FinetuneConfig", "full"): "--full",
    ("FinetuneConfig", "steps"): "--steps",
    ("FinetuneConfig", "lr"): "--lr",
    ("FinetuneConfig", "checkpoint_every"): "--checkpoint-every",
    ("FinetuneConfig", "module"): "--module",
    ("FinetuneConfig", "layer"): "--layer",
    ("EmHfConfig", "model"): "--model",
    ("EmHfConfig", "train"): "--train",
    ("EmHfConfig", "out"): "--out",
    ("EmHfConfig", "questions"): "--questions",
    ("EmHfConfig", "inoculation"): "--inoculation",
    ("EmHfConfig", "layer"): "--layer",
    ("EmHfConfig", "module"): "--module",
    ("EmHfConfig", "seeds"): "--seeds",
    ("EmHfConfig", "control"): "--control",
    ("EmHfConfig", "device"): "--device",
    ("EmHfConfig", "dtype"): "--dtype",
    ("EmHfConfig", "device_map"): "--device-map",
    ("EmHfConfig", "gradient_checkpointing"): "--gradient-checkpointing",
    # llc
    ("SamplerConfig", "step_size"): "--step-size",
    ("SamplerConfig", "localization"): "--localization",
    ("SamplerConfig", "nbeta"): "--nbeta",
    ("SamplerConfig", "num_chains"): "--chains",
    ("SamplerConfig", "num_draws"): "--draws",
    ("SamplerConfig", "num_burnin"): "--burnin",
    ("SamplerConfig", "batch_size"): "--batch-size",
    ("SamplerConfig", "precondition"): "--precondition",
    ("SamplerConfig", "seed"): "--seed",
    ("SamplerConfig", "execution"): "--execution",
    ("SamplerConfig", "mala_every"): "--mala-every",
    ("SamplerConfig", "device"): "--device",
    ("SamplerConfig", "workers"): "--workers",
    # basins
    ("BasinsConfig", "t_max"): "--t-max",
    ("BasinsConfig", "points"): "--points",
    ("BasinsConfig", "level"): "--level",
    ("BasinsConfig", "random"): "--random",
    ("BasinsConfig", "seed"): "--seed",
    # eigenform
    ("EigenformConfig", "process"): "--process",
    ("EigenformConfig", "context"): "--context",
    ("EigenformConfig", "think"): "--think",
    ("EigenformConfig", "n_prompts"): "--prompts",
    ("EigenformConfig", "n_candidates"): "--candidates",
    ("EigenformConfig", "sleep_steps"): "--sleep-steps",
    ("EigenformConfig", "sleep_lr"): "--sleep-lr",
    ("EigenformConfig", "sleep_clip"): "--sleep-clip",
    # demo
    ("DemoConfig", "preset"): "--preset",
    ("DemoConfig", "seeds"): "--seeds",
    ("DemoConfig", "layer"): "--layer",
    ("DemoConfig", "module"): "--module",
}


# Where each config class lives, so a flag can name its class without importing it: the module (which often
# imports torch) is loaded only when the flag is parsed or its help is shown, and ``--help`` stays fast.
CONFIG_MODULES: dict[str, str] = {
    "WorldConfig": "persona_basins.world.world",
    "OrganismConfig": "persona_basins.models.organism",
    "FinetuneConfig": "persona_basins.train.finetune",
    "SamplerConfig": "persona_basins.measure.llc.config",
    "GateConfig": "persona_basins.measure.llc.diagnostics",
    "EigenformConfig": "persona_basins.measure.eigenform",
    "BasinsConfig": "persona_basins.studies.basins",
    "DemoConfig": "persona_basins.studies.demo",
    "EmHfConfig": "persona_basins.studies.em_hf.run",
}


def config_class(cls):
    """``cls`` itself, or the config class of that name (a key of ``CONFIG_MODULES``), imported now."""
    if isinstance(cls, type):
        return cls
    import importlib

    return getattr(importlib.import_module(CONFIG_MODULES[cls]), cls)


def _field_constraint(cls, field_name: str):
    from ..config import constraint

    return constraint(config_class(cls), field_name)


def field_type(cls, field_name: str):
    """An argparse ``type=`` that reads a flag's text as ``cls.field_name`` and checks it (``cls``: the class
    or its name). A bad value raises ``ArgumentTypeError`` with the field's ``must be ..., got ...`` text,
    which argparse prints as ``argument --lr: must be ...`` (exit 2)."""
    return _checking_type(lambda: _field_constraint(cls, field_name), field_name)


_FROM_FIELD = object()  # the flag's default is the field's


class FieldFlag(argparse.Action):
    """A flag that sets one config field. Its default and help are read from the field when first asked for
    (when its command parses or shows help), so registering it imports nothing."""

    def __init__(self, option_strings, dest, *, owner, field_name, default=_FROM_FIELD, help=None, **kwargs):
        self.owner, self.field_name = owner, field_name
        self._own_default = default is not _FROM_FIELD
        kwargs.setdefault("type", field_type(owner, field_name))
        super().__init__(option_strings, dest, default=default, help=help, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)

    def _resolve(self):
        rule = _field_constraint(self.owner, self.field_name)
        if not self._own_default:
            self._default = rule.default
        # the help formatter reads %(default)s etc. from vars(action), which does not see properties
        self.__dict__["default"] = self._default
        return rule

    @property
    def default(self):
        if self._default is _FROM_FIELD:
            self._resolve()
        return self._default

    @default.setter
    def default(self, value):
        self._default = value

    @property
    def help(self):
        """The given help (or the field's) and the field's range, then the field's default unless given."""
        if self._help is argparse.SUPPRESS:
            return self._help
        rule = self._resolve()
        wanted = rule.describe() if self._own_default else f"{rule.describe()}; default %(default)s"
        return f"{(self._help or rule.help).replace('%', '%%')} ({wanted})"  # argparse %-formats help

    @help.setter
    def help(self, value):
        self._help = value


def add_field_flag(parser, flag: str, cls, field_name: str, **argparse_kwargs):
    """``parser.add_argument(flag)`` for the config field ``cls.field_name``: type, default and help from it.

    ``cls`` is the config class or its name (a key of ``CONFIG_MODULES``: the module is imported only when
    the flag is parsed or its help shown). ``argparse_kwargs`` (``default=None`` for "the preset decides",
    ``metavar``, ``dest``, ``help``, ``required``) override what the field gives; a caller's ``default`` is
    not shown in the help (write it there). Boolean fields stay plain ``store_true`` flags (nothing to
    check)."""
    owner = cls if isinstance(cls, str) else cls.__name__
    known = FIELD_FLAGS.get((owner, field_name))
    if known is not None and known != flag:  # one flag per field, so an error message can name it
        raise ValueError(f"{owner}.{field_name} is {known} in FIELD_FLAGS, not {flag}")
    argparse_kwargs.setdefault("metavar", flag.lstrip("-").replace("-", "_").upper())
    return parser.add_argument(flag, action=FieldFlag, owner=owner, field_name=field_name, **argparse_kwargs)


def add_sampler_flags(parser, *, draws=200, burnin=50, chains=4) -> None:
    """The SGLD sampler flags of every `llc` command, in one group (their fields: :class:`SamplerConfig`)."""
    group = parser.add_argument_group("sampler")
    add = group.add_argument
    add("--chains", type=int_in(1, 4096), default=chains, help=f"SGLD chains (default {chains})")
    add("--draws", type=int_in(1, None), default=draws, help=f"draws per chain (default {draws})")
    add("--burnin", type=int_in(0, None), default=burnin, help=f"burn-in steps per chain (default {burnin})")
    add_field_flag(group, "--step-size", "SamplerConfig", "step_size")
    add_field_flag(group, "--localization", "SamplerConfig", "localization")
    add_field_flag(group, "--nbeta", "SamplerConfig", "nbeta")
    add("--batch-size", type=int_in(1, None), default=16, help="SGLD minibatch in documents (default 16)")
    add("--n-docs", type=int_in(1, None), default=256, help="documents in the dataset (default %(default)s)")
    add("--n", type=int_in(2, None), help="dataset size n in the posterior (default: --n-docs)")
    add_field_flag(group, "--precondition", "SamplerConfig", "precondition")
    add("--seed", type=SEED, default=0, help="seed for the data sample and the chains (default 0)")
    add("--independent-batches", action="store_true", help="each chain its own minibatches (default: shared)")
    add("--strict", action="store_true", help="an estimate failing the equilibrium gates is an error")
    # auto: measured from idle cores and step times; the numbers never depend on it
    add("--workers", type=int_or_auto(1), default="auto", help="CPU processes for the chains: N or auto")
    add_device_flag(group)
