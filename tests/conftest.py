"""Shared fixtures: one tiny organism per test session (built once, seconds)."""

import os

import pytest
import torch

torch.set_num_threads(1)  # the test machine has 2 cores; one thread per process avoids oversubscription
os.environ.setdefault("TQDM_DISABLE", "1")


# The slow end-to-end tests (each ~10 s or more on this 2-core machine: whole demos, kill-and-resume runs,
# real Ray clusters, calibrations, browser renders of a real demo). `pytest -m "not slow"` is the fast subset
# to run while working; `make test` runs everything. Marked here by node id so the list is in one place.
SLOW_TESTS = (
    "tests/test_demo.py::",
    "tests/test_browser.py::test_real_tiny_demo_study_renders",
    "tests/test_browser.py::test_sliders_move_the_view_as_python_says",
    "tests/test_robustness.py::test_demo_sigkill_then_resume_is_byte_identical",
    "tests/test_robustness.py::test_em_sigkill_and_sigterm_then_resume_is_byte_identical",
    "tests/test_robustness.py::test_build_sigterm_message_does_not_promise_a_resume",
    "tests/test_robustness.py::test_bad_input_or_fault[build-full-disk]",
    "tests/test_robustness.py::test_bad_input_or_fault[llc-rerun-on-full-disk-keeps-the-old-record]",
    "tests/test_organism.py::test_same_seed_gives_byte_identical_metrics",
    "tests/test_landscape.py::test_landscape_llc_agrees_with_estimate_llc",
    "tests/test_basins.py::test_cli_basins_smoke_and_bad_inputs",
    "tests/test_adapter_reading.py::",
    "tests/test_em.py::test_em_run_folder_has_its_figure_and_log_and_feeds_basins",
    "tests/test_eigenform.py::test_a_process_that_cannot_move_gets_no",
    "tests/test_llc.py::test_calibrate_recommends_and_plots",
    "tests/test_schema.py::test_real_tiny_demo_study_validates",
    "tests/test_demo_workers.py::test_two_workers_give_the_numbers_of_one",
    "tests/test_export_chat.py::",
    "tests/test_browser.py::test_verdict_panel_leads_the_real_tiny_demo",
    "tests/test_schema.py::test_a_broken_study_names_the_key",  # these two share the session's tiny demo
    "tests/test_ray_cluster.py::",  # ray start --head and worker nodes, a node lost mid-unit: ~70 s
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(SLOW_TESTS):
            item.add_marker(pytest.mark.slow)


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
    """One finished tiny demo on the session organism (in-process: --workers 1, one thread): the reference run
    that the demo tests compare resumed, killed and pooled runs against. Read it; a test that changes it must
    restore it."""
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
                "--no-calibrated-llc",  # minutes each; tests/test_demo.py's demo_run covers it
                "--workers",
                "1",
            ]
        )
        == 0
    )
    return out
