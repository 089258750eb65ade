"""One flag vocabulary: every subcommand's parser (cli.build_parser) names the shared things with the same
flag, metavar, type and default, and no help text shows a default for a required flag."""

import argparse

import pytest

from persona_basins.cli import build_parser, main
from persona_basins.commands.args import DEFAULT_THREADS, DTYPES


def _parsers(parser, name="persona-basins"):
    """(command name, parser) for the top parser and every subcommand, nested ones too."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


PARSERS = dict(_parsers(build_parser()))
COMMANDS = {name: p for name, p in PARSERS.items() if name != "persona-basins"}


def _flags(parser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def _reads(action, text):
    """What the flag makes of ``text`` (its type and choices), or ``"refused"``."""
    try:
        value = action.type(text) if action.type else text
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return "refused"
    if action.choices is not None and value not in action.choices:
        return "refused"
    return value


# flag -> (metavar, what some texts read as); a flag that means one thing reads the same text the same way
SHARED = {
    "--organism": ("DIR", {"runs/organism": "runs/organism"}),
    "--model": ("DIR_OR_HUB_ID", {"Qwen/Qwen2.5-0.5B-Instruct": "Qwen/Qwen2.5-0.5B-Instruct"}),
    "--adapter": ("DIR", {"runs/em/adapters/plain/seed0": "runs/em/adapters/plain/seed0"}),
    "--em-run": ("RUN", {"runs/em": "runs/em"}),
    "--seeds": ("N", {"3": 3, "0": "refused", "two": "refused", "1.5": "refused"}),
    "--threads": ("N", {"2": 2, "0": "refused"}),
    "--device": ("DEVICE", {"cuda:1": "cuda:1"}),
    "--dtype": ("DTYPE", {**{d: d for d in DTYPES}, "fp64": "refused"}),
}
DEFAULTS = {"--device": "auto", "--dtype": "auto"}


def _uses(flag):
    return [(name, _flags(p)[flag]) for name, p in PARSERS.items() if flag in _flags(p)]


@pytest.mark.parametrize("flag", sorted(SHARED))
def test_a_shared_flag_has_one_metavar_type_and_default(flag):
    metavar, reads = SHARED[flag]
    uses = _uses(flag)
    assert uses, f"no command has {flag}"
    for name, action in uses:
        assert action.metavar == metavar, f"{name} {flag}: metavar {action.metavar!r}"
        for text, want in reads.items():
            assert _reads(action, text) == want, f"{name} {flag} reads {text!r} as {_reads(action, text)!r}"
        if flag in DEFAULTS:
            assert action.default == DEFAULTS[flag], f"{name} {flag}: default {action.default!r}"


def test_the_old_spellings_are_aliases_of_the_new_flags():
    for name, parser in PARSERS.items():
        flags = _flags(parser)
        if "--em" in flags:
            assert flags["--em"] is flags["--em-run"], name


def test_threads_works_before_and_after_every_subcommand():
    parser = build_parser()
    argv = ["em", "--organism", "o", "--out", "r"]
    assert parser.parse_args(argv).threads == DEFAULT_THREADS
    assert parser.parse_args(["--threads", "3", *argv]).threads == 3
    assert parser.parse_args([*argv, "--threads", "2"]).threads == 2
    assert parser.parse_args(["llc", "path", "--em-run", "r", "--out", "o", "--threads", "4"]).threads == 4
    for name, parser in COMMANDS.items():
        assert "--threads" in _flags(parser), f"{name} has no --threads"


def test_required_flags_show_no_default():
    for name, parser in PARSERS.items():
        text = parser.format_help()
        assert "(default: None)" not in text, f"{name} --help shows (default: None)"
        for action in parser._actions:
            if action.required and action.option_strings:
                assert "default" not in (action.help or "").lower(), f"{name} {action.option_strings[0]}"


def test_seeds_is_a_count_everywhere():
    for name, action in _uses("--seeds"):
        assert "first k" not in (action.help or "").lower(), name
        assert action.nargs is None and action.type is not None, name


def test_every_documented_flag_exists():
    """A help that names a flag (`--seq-len ... for --data`) names one of its command's flags, or one of
    another command it names on purpose."""
    import re

    elsewhere = {"--checkpoint-every"}  # llc trajectory: an em run trained with em's --checkpoint-every
    for name, parser in COMMANDS.items():
        flags = _flags(parser)
        for action in parser._actions:
            for mentioned in re.findall(r"(--[a-z][a-z-]*)", action.help or ""):
                assert mentioned in flags or mentioned in elsewhere, f"{name} {action.dest}: {mentioned}"


def test_sweep_plot_help_is_the_plot_help(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "plot", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: persona-basins sweep plot") and "--x AXIS" in out and "--backend" not in out


def test_llc_accepts_an_organism_and_hub_ids(tmp_path):
    parser = build_parser()
    args = parser.parse_args(["llc", "--organism", "runs/org", "--out", str(tmp_path / "r")])
    assert args.organism == "runs/org" and args.model is None and args.dtype == "auto"
    args = parser.parse_args(["llc", "--model", "gpt2", "--data", "d.txt", "--out", "r"])
    assert args.model == "gpt2" and args.device == "auto"
    args = parser.parse_args(["llc", "trajectory", "--em", "runs/em", "--out", "r", "--seeds", "2"])
    assert args.em_run == "runs/em" and args.seeds == 2


def test_llc_refuses_a_missing_local_folder_but_not_a_hub_id(tmp_path):
    from persona_basins.errors import UserError
    from persona_basins.studies.llc import load_target

    with pytest.raises(UserError, match="^model folder not found"):
        load_target(tmp_path / "nope")
    with pytest.raises(UserError, match=r"^data \(a text file\) is required"):
        load_target("some-org/some-model")  # a hub id: only --data is missing


def test_the_dtype_names_are_the_loaders():
    from persona_basins.models.hf import DTYPE_CHOICES

    assert DTYPES == DTYPE_CHOICES
