import json
import shutil

import pytest
import torch

from persona_basins.cli import main
from persona_basins.models.organism import list_checkpoints, load_organism, preset_config


def test_tiny_build_is_a_loadable_hf_model_folder(tiny_organism_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tiny_organism_dir
    for f in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "world.json",
        "metrics.json",
        "pretrained/model.safetensors",
    ):
        assert (d / f).is_file(), f
    model = AutoModelForCausalLM.from_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    ids = tok("<bos> <sys> you are the assistant <user> code topic1 <asst>", return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape[-1] == len(tok)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["persona_basins"]["organism"]["preset"] == "tiny"


def test_checkpoints_every_k_steps(tiny_organism_dir):
    cfg = preset_config("tiny")
    steps = [s for s, _ in list_checkpoints(tiny_organism_dir)]
    assert steps == list(range(cfg.checkpoint_every, cfg.pretrain_steps + 1, cfg.checkpoint_every))


def test_metrics_have_the_readout_keys(tiny_organism_dir):
    m = json.loads((tiny_organism_dir / "metrics.json").read_text())
    for k in (
        "aligned_rate",
        "in_context_persona_acc",
        "toxic_recoverable",
        "routine_overlap",
        "wellformed_rate",
    ):
        assert 0.0 <= m[k] <= 1.0, k
    # the tiny organism learns the format (well above chance of 1/|V|^3)
    assert m["wellformed_rate"] > 0.2


def test_same_seed_gives_byte_identical_metrics(tiny_organism_dir, tmp_path):
    from persona_basins.studies.organism import build_organism

    out = tmp_path / "again"
    build_organism(preset_config("tiny", seed=0), out, progress=False, log=lambda *_: None)
    assert (out / "metrics.json").read_bytes() == (tiny_organism_dir / "metrics.json").read_bytes()
    a = load_organism(out).model.state_dict()
    b = load_organism(tiny_organism_dir).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rebuild_same_settings_reuses_and_other_settings_refuse(tiny_organism_dir, tmp_path, capsys):
    out = tmp_path / "org"
    shutil.copytree(tiny_organism_dir, out)
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert main(["organism", "build", "--preset", "tiny", "--seed", "0", "--out", str(out)]) == 0
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    capsys.readouterr()
    assert main(["organism", "build", "--preset", "tiny", "--seed", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds another organism" in err and "--force" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["organism", "build", "--preset", "huge", "--out", "{tmp}/x"], "argument --preset"),
        (["organism", "build", "--preset", "tiny", "--out", "/proc/nope/x"], "--out /proc/nope/x cannot"),
        (["organism", "report", "{tmp}/missing"], "organism folder not found"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(argv, needle, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not any(p.name.startswith(".x.building") for p in tmp_path.iterdir())


def test_out_with_other_files_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["organism", "build", "--preset", "tiny", "--out", str(tmp_path)]) == 2
    assert "already holds other files" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("damage", ["weights", "world", "config"])
def test_report_on_corrupt_organism(tiny_organism_dir, tmp_path, damage, capsys):
    d = tmp_path / "org"
    shutil.copytree(tiny_organism_dir, d)
    if damage == "weights":
        (d / "model.safetensors").write_bytes(b"not a safetensors file")
    elif damage == "world":
        (d / "world.json").write_text("{broken")
    else:
        (d / "config.json").unlink()
    assert main(["organism", "report", str(d)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("persona-basins: error:") and len(err.splitlines()) == 1


def test_report_prints_and_writes(tiny_organism_dir, tmp_path, capsys):
    d = tmp_path / "org"
    shutil.copytree(tiny_organism_dir, d)
    assert main(["organism", "report", str(d)]) == 0
    assert "aligned_rate" in capsys.readouterr().out
    rep = json.loads((d / "report.json").read_text())
    met = json.loads((d / "metrics.json").read_text())
    assert rep["aligned_rate"] == pytest.approx(met["aligned_rate"], abs=1e-9)
