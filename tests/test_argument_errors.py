"""An ArgumentError names its argument's flag on the command line and the plain argument from Python."""

import argparse
import pickle

import pytest

from persona_basins.cli import build_parser, error_text, main
from persona_basins.errors import ArgumentError, UserError
from persona_basins.results import prepare_out_dir


def test_library_callers_get_the_argument_name(tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(ArgumentError, match=r"^out .*/f exists and is not a directory$") as caught:
        prepare_out_dir(tmp_path / "f")
    assert caught.value.argument == "out" and isinstance(caught.value, UserError)
    copy = pickle.loads(pickle.dumps(caught.value))  # crosses worker processes whole
    assert (copy.argument, copy.problem, str(copy)) == ("out", caught.value.problem, str(caught.value))


def test_cli_prints_the_flag_of_the_command_that_ran(tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    argv = ["organism", "build", "--preset", "tiny", "--out", str(tmp_path / "f")]
    assert main(argv) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"persona-basins: error: --out {tmp_path / 'f'} exists and is not a directory"
    )


def test_flag_is_looked_up_on_the_subcommand_parser():
    parser = build_parser()
    args = parser.parse_args(["llc", "trajectory", "--em", "runs/em", "--out", "r"])
    error = ArgumentError("em_run", "runs/em: no plain adapters")
    assert error_text(error, args, parser) == "error: --em-run runs/em: no plain adapters"
    # a command without that flag, or no parser at all: the argument's own name
    assert (
        error_text(ArgumentError("band", "must be two numbers"), args, parser)
        == "error: band must be two numbers"
    )
    assert (
        error_text(error, argparse.Namespace(em_run="runs/em")) == "error: em_run runs/em: no plain adapters"
    )
