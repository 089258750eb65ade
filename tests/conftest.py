"""Shared fixtures: one tiny organism per test session (built once, seconds)."""

import os

import pytest
import torch

torch.set_num_threads(1)  # the test machine has 2 cores; one thread per process avoids oversubscription
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored afterwards (a test or CLI call may have changed it)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def cli_error(capsys):
    """Run the CLI expecting a user error: exit 2 and one stderr line; returns that line."""
    from persona_basins.cli import main

    def run(argv):
        capsys.readouterr()
        rc = main(argv)
        text = capsys.readouterr().err.strip()
        assert rc == 2 and text.startswith("persona-basins: error:") and "\n" not in text, text
        return text

    return run


@pytest.fixture(scope="session")
def tiny_organism_dir(tmp_path_factory):
    from persona_basins.models.organism import preset_config
    from persona_basins.studies.organism import build_organism

    out = tmp_path_factory.mktemp("organism") / "tiny"
    build_organism(preset_config("tiny", seed=0), out, progress=False, log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def tiny_organism(tiny_organism_dir):
    from persona_basins.models.organism import load_organism

    return load_organism(tiny_organism_dir)


@pytest.fixture(scope="session")
def tiny_demo_run(tiny_organism_dir, tmp_path_factory):
    """One finished tiny demo on the session organism (in-process, one thread): the reference run that the
    demo tests compare resumed and killed runs against. Read it; a test that changes it must restore it."""
    from persona_basins.cli import main

    out = tmp_path_factory.mktemp("demo-shared") / "run"
    assert (
        main(
            [
                "demo",
                "--preset",
                "tiny",
                "--organism",
                str(tiny_organism_dir),
                "--out",
                str(out),
                "--no-browser",
            ]
        )
        == 0
    )
    return out
