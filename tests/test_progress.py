"""Progress everywhere: a bar on a terminal; in a pipe or a log file a line every 30 s with the step, the
units done and an ETA (persona_basins.progress), checked on a fake clock."""

import io

import pytest

from persona_basins import progress


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(progress, "clock", fake)
    return fake


def test_a_pipe_gets_a_line_every_30_seconds_with_the_step_counts_and_eta(clock):
    pipe = io.StringIO()
    bar = progress.Progress(100, "pretrain", stream=pipe)
    for _ in range(10):
        clock.now += 2.0  # 10 steps in 20 s: not yet due
        bar.update()
    assert pipe.getvalue() == ""
    clock.now += 10.0
    bar.set_postfix(loss="1.234")
    bar.update()  # 11 steps in 30 s
    assert pipe.getvalue().splitlines() == [
        "[pretrain] 11/100 steps (11%), elapsed 30s, ETA 4m03s, loss=1.234"
    ]
    clock.now += 29.0
    bar.update()
    assert len(pipe.getvalue().splitlines()) == 1  # 29 s after the last line
    clock.now += 1.0
    bar.update(88)
    bar.close()
    lines = pipe.getvalue().splitlines()
    assert lines[1].startswith("[pretrain] 100/100 steps (100%), elapsed 1m00s, ETA 0s")
    assert lines[2] == "[pretrain] done: 100 steps in 1m00s"


def test_a_short_loop_or_a_disabled_one_is_silent(clock):
    pipe = io.StringIO()
    for _ in progress.track(range(5), "quick", stream=pipe):
        clock.now += 1.0
    for _ in progress.track(range(5), "off", enabled=False, stream=pipe):
        clock.now += 100.0
    assert pipe.getvalue() == ""


def test_track_counts_items_and_update_zero_reports_a_long_unit(clock):
    pipe = io.StringIO()
    seen = []
    for item in progress.track(["a", "b"], "em layer 0 attn_out", unit="fine-tunes", stream=pipe):
        clock.now += 45.0
        seen.append(item)
    assert seen == ["a", "b"]
    lines = pipe.getvalue().splitlines()
    assert lines[0] == "[em layer 0 attn_out] 1/2 fine-tunes (50%), elapsed 45s, ETA 45s"
    assert lines[-1] == "[em layer 0 attn_out] done: 2 fine-tunes in 1m30s"
    bar = progress.Progress(3, "sweep", unit="units", initial=1, stream=(pipe := io.StringIO()))
    clock.now += 31.0
    bar.update(0)  # nothing finished yet: the line still comes, with no ETA to give
    assert pipe.getvalue() == "[sweep] 1/3 units (33%), elapsed 31s, ETA unknown\n"


def test_unknown_totals_and_durations_read_plainly(clock):
    pipe = io.StringIO()
    bar = progress.Progress(None, "draws", unit="draws", stream=pipe)
    clock.now += 3700.0
    bar.update(7)
    assert pipe.getvalue() == "[draws] 7 draws, elapsed 1h01m\n"
    assert [progress.duration(s) for s in (0, 59.4, 60, 185, 7260)] == [
        "0s",
        "59s",
        "1m00s",
        "3m05s",
        "2h01m",
    ]


def test_lines_and_notes_go_to_the_log_file_once_the_run_folder_exists(clock, tmp_path, capsys):
    run = tmp_path / "run"
    with progress.log_to(run / "log.txt"):
        progress.log_line("started: persona-basins em")
        progress.note("[em] running ...")
        assert not run.exists()  # nothing is written before the command makes its folder
        run.mkdir()
        bar = progress.Progress(4, "em", unit="fine-tunes", stream=io.StringIO())
        clock.now += 31.0
        bar.update()
        bar.close()
    progress.note("after the run")
    log = (run / "log.txt").read_text().splitlines()
    messages = [line.split(" ", 2)[2] for line in log]  # after the date and time
    assert messages == [
        "started: persona-basins em",
        "[em] running ...",
        "[em] 1/4 fine-tunes (25%), elapsed 31s, ETA 1m33s",
        "[em] done: 1 fine-tunes in 31s",
    ]
    assert capsys.readouterr().err == "[em] running ...\nafter the run\n"


def test_a_log_whose_folder_never_appears_is_dropped(tmp_path):
    with progress.log_to(tmp_path / "never" / "log.txt"):
        progress.log_line("started")
    assert not (tmp_path / "never").exists()


def test_a_terminal_gets_a_bar_and_the_log_file_still_gets_the_lines(clock, tmp_path):
    terminal = Terminal()
    with progress.log_to(tmp_path / "log.txt"):
        bar = progress.Progress(10, "SGLD", stream=terminal)
        clock.now += 31.0
        bar.update(5)
        bar.close()
    assert "SGLD" in terminal.getvalue() and "ETA" not in terminal.getvalue()  # tqdm's bar, not our lines
    assert "[SGLD] 5/10 steps (50%), elapsed 31s, ETA 31s" in (tmp_path / "log.txt").read_text()


def test_the_training_loop_reports_in_a_pipe(clock, capsys):
    import torch

    from persona_basins.train.loop import train_lm

    class Tick(torch.nn.Module):  # a stand-in LM whose every step takes 31 s on the fake clock
        def __init__(self):
            super().__init__()
            self.logits = torch.nn.Parameter(torch.zeros(8))

        def forward(self, input_ids, **kwargs):
            clock.now += 31.0
            batch, width = input_ids.shape
            return type("Out", (), {"logits": self.logits.expand(batch, width, 8)})()

    ids = torch.tensor([[1, 2, 3, 4]] * 4)
    train_lm(Tick(), ids, None, steps=2, batch_size=2, lr=0.1, desc="post-train")
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("[post-train] 1/2 steps (50%), elapsed 31s, ETA 31s, loss=")
    assert err[-1] == "[post-train] done: 2 steps in 1m02s"


def test_each_command_logs_to_its_run_folder_but_a_failed_one_changes_nothing(tmp_path, capsys):
    import argparse

    from persona_basins import cli

    run = tmp_path / "run"
    run.mkdir()
    assert cli.main(["em", "--organism", str(tmp_path / "no-organism"), "--out", str(run)]) == 2
    assert not (run / "log.txt").exists()  # failed at once: nothing logged, no file changed
    args = argparse.Namespace(command="em", out=str(run))
    with cli._run_log(args, ["em", "--out", str(run)]):
        progress.note("[em] running ...")
    lines = [line.split(" ", 2)[2] for line in (run / "log.txt").read_text().splitlines()]
    assert lines[0] == f"started: persona-basins em --out {run}" and lines[1] == "[em] running ..."
    assert lines[2].startswith("finished in ") and lines[2].endswith(f"s: persona-basins em --out {run}")
    before = (run / "log.txt").read_text()
    with pytest.raises(RuntimeError), cli._run_log(args, ["em"]):
        raise RuntimeError("failed before it logged anything")
    assert (run / "log.txt").read_text() == before
    capsys.readouterr()
