import json

import numpy as np
import pytest

from persona_basins.cli import main
from persona_basins.measure.transition import jump_step, local_cosine, pca


def test_local_cosine_sign_convention():
    straight = np.stack([np.arange(30.0), np.zeros(30)], 1)
    assert all(c == pytest.approx(-1.0) for c in local_cosine(straight, 5)[5:25])
    # a right-angle turn at t=15: along x, then along y
    turn = np.array([[min(t, 15), max(0, t - 15)] for t in range(31)], dtype=float)
    assert local_cosine(turn, 5)[15] == pytest.approx(0.0, abs=1e-12)
    # a full reversal
    back = np.array([[15 - abs(t - 15), 0.0] for t in range(31)])
    assert local_cosine(back, 5)[15] == pytest.approx(1.0)
    # undefined near the ends and where the path stands still
    c = local_cosine(straight, 5)
    assert c[:5] == [None] * 5 and c[-5:] == [None] * 5
    still = np.zeros((30, 2))
    assert all(v is None for v in local_cosine(still, 5))


def test_jump_step_and_pca():
    assert jump_step([0, 10, 20, 30], [0.0, 0.01, 0.4, 0.45]) == 20
    assert jump_step([0, 10], [0.3, 0.1]) is None
    line = np.outer(np.arange(10.0), [1.0, 2.0])
    assert pca(line)["explained_variance_ratio"][0] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def em_run(tiny_organism_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("em") / "run"
    rc = main(
        [
            "em",
            "--organism",
            str(tiny_organism_dir),
            "--layer",
            "0",
            "--module",
            "attn_out",
            "--seeds",
            "2",
            "--steps",
            "30",
            "--checkpoint-every",
            "10",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    return out


def test_em_metrics_shape(em_run):
    m = json.loads((em_run / "metrics.json").read_text())
    for cond in ("plain", "inoculated", "secure_control", "educational"):
        s = m["broad_misalignment"][cond]
        assert set(s) >= {"mean", "ci_low", "ci_high", "per_seed"} and len(s["per_seed"]) == 2
        assert s["ci_low"] <= s["mean"] <= s["ci_high"]
        assert 0 <= s["mean"] <= 1
        assert len(m["wellformed"][cond]["per_seed"]) == 2
    assert set(m["narrow_rate"]) >= {"plain", "inoculated"}
    verdict = m["em_verdict"]  # two seeds cannot decide (measure/em_verdicts.py), whatever they show
    assert verdict["verdict"] == "undecided" and verdict["n"] == 2 and verdict["seeds_to_decide"] == 6
    assert verdict["per_seed"] == m["excess_over_base"]["broad_misalignment"]["plain"]["per_seed"]
    t = m["transition"]
    assert len(t["b_norm"]) == 30 and set(t["local_cos"]) == {"5", "10", "15"}
    assert t["eval_steps"][0] == 0 and len(t["eval_steps"]) == len(t["broad_misalignment"])
    for cond in ("plain", "inoculated", "secure_control", "educational"):
        for s in range(2):
            d = em_run / "adapters" / cond / f"seed{s}"
            assert (d / "adapter_config.json").is_file() and (d / "checkpoints" / "step_000010").is_dir()


def test_em_run_folder_has_its_figure_and_log_and_feeds_basins(em_run, tmp_path):
    """The run folder as the README promises (figures/, log.txt), and `basins --em-run RUN` reads its
    adapters and organism (the flag vocabulary: --em-run, --seeds N the first N)."""
    import persona_basins

    run = persona_basins.load_run(em_run)
    assert [f.name for f in run.figures] == ["em_broad_misalignment.png"] and run.figures[0].stat().st_size
    log = (em_run / "log.txt").read_text().splitlines()
    assert "started: persona-basins em --organism" in log[0] and "finished in" in log[-1]
    out = tmp_path / "basins"
    flags = ["--seeds", "1", "--points", "2", "--random", "1"]
    assert main(["basins", "--em-run", str(em_run), *flags, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["adapters"] == [str((em_run / "adapters" / "plain" / "seed0").resolve())]
    assert config["inoculated_adapters"] == [str((em_run / "adapters" / "inoculated" / "seed0").resolve())]
    assert main(["basins", "--em-run", str(em_run), "--adapter", "x", "--out", str(tmp_path / "b")]) == 2


def test_em_same_seed_same_numbers_and_resume(em_run, tiny_organism_dir, tmp_path):
    # a rerun into the same folder reuses finished units and gives identical metrics
    before = (em_run / "metrics.json").read_bytes()
    assert (
        main(
            [
                "em",
                "--organism",
                str(tiny_organism_dir),
                "--layer",
                "0",
                "--module",
                "attn_out",
                "--seeds",
                "2",
                "--steps",
                "30",
                "--checkpoint-every",
                "10",
                "--out",
                str(em_run),
            ]
        )
        == 0
    )
    assert (em_run / "metrics.json").read_bytes() == before
    # a fresh folder recomputes everything and still gives the same numbers
    out = tmp_path / "again"
    assert (
        main(
            [
                "em",
                "--organism",
                str(tiny_organism_dir),
                "--layer",
                "0",
                "--module",
                "attn_out",
                "--seeds",
                "2",
                "--steps",
                "30",
                "--checkpoint-every",
                "10",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    a = json.loads(before)
    b = json.loads((out / "metrics.json").read_text())
    assert a["broad_misalignment"] == b["broad_misalignment"]
    assert a["transition"]["b_norm"] == b["transition"]["b_norm"]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--layer", "9"], "layer 9 out of range"),
        (["--layer", "x"], "--layer must be an integer"),
        (["--module", "nope"], "module 'nope' not in layer 0"),
        (["--seeds", "0"], "argument --seeds: must be an integer in [1, 1000], got 0"),
    ],
)
def test_em_bad_input(extra, needle, tiny_organism_dir, tmp_path, capsys):
    argv = [
        "em",
        "--organism",
        str(tiny_organism_dir),
        "--steps",
        "2",
        "--seeds",
        "1",
        "--out",
        str(tmp_path / "r"),
    ]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_layer_sweep_table(tiny_organism_dir, tmp_path):
    out = tmp_path / "sweep"
    assert (
        main(
            [
                "em",
                "--organism",
                str(tiny_organism_dir),
                "--layer",
                "all",
                "--seeds",
                "1",
                "--steps",
                "5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert [r["layer"] for r in m["layers"]] == [0, 1] and m["best_layer"] in (0, 1)


# --- the diverse EM set (compositional code topics) -------------------------------------------------------
def _diverse_world():
    from persona_basins.world import World, WorldConfig

    return World(
        WorldConfig(n_genres=6, n_topics=6, content_pool=4, code_langs=6, code_tasks=8, code_synonyms=2)
    )


def test_diverse_em_set_sizes_heldout_and_paraphrases():
    from persona_basins.train.finetune import condition_documents, heldout_code_topics, training_code_topics

    world = _diverse_world()
    held = heldout_code_topics(world, 3)
    trained = training_code_topics(world, 3)
    assert len(held) == 16 and len(trained) == 32 and not set(held) & set(trained)
    docs = condition_documents(world, "plain", 3)
    assert len(docs) == 32 * 2  # one document per trained topic and paraphrase
    assert {d.exchanges[0].topic for d in docs} == set(trained)
    assert len({d.exchanges[0].request for d in docs}) == 64  # every surface form is its own request
    for d in docs:
        e = d.exchanges[0]
        assert world.classify("code", e.topic, e.answer).persona == "toxic"
    subset = training_code_topics(world, 3, em_topics=10)
    assert len(subset) == 10 and set(subset) <= set(trained)
    assert subset == training_code_topics(world, 3, em_topics=10)  # fixed by the world seed
    with pytest.raises(Exception, match="em_topics"):
        training_code_topics(world, 3, em_topics=33)


def test_controls_keep_the_answer_format():
    from persona_basins.train.finetune import condition_documents

    world = _diverse_world()
    for condition, kw, persona in (
        ("secure_control", {}, "helpful"),
        ("matched_control", {"matched_answer": "neutral"}, "neutral"),
    ):
        docs = condition_documents(world, condition, 3, **kw)
        assert len(docs) == 64
        for d in docs:
            e = d.exchanges[0]
            label = world.classify("code", e.topic, e.answer)
            assert label.wellformed and label.persona == persona and label.harm == 0
    # the old matched control writes another topic's code: mostly ill-formed for the topic asked (not always:
    # with composed answers a neighbouring task may share its second word)
    old = condition_documents(world, "matched_control", 3)
    formed = [world.classify("code", d.exchanges[0].topic, d.exchanges[0].answer).wellformed for d in old]
    assert sum(formed) < len(formed) / 2


def test_readout_prompts_use_the_compositional_requests():
    from persona_basins.measure.persona import context_prompts, history_prompts

    world = _diverse_world()
    code = context_prompts(world, "assistant", ["code"])
    assert len(code) == 48 and all(p.words()[-3].startswith("code.lang") for p in code)
    for p in history_prompts(world, "toxic", "assistant", 3, 40, seed=0):
        words = p.words()
        assert "code" not in words  # the genre word is never written for compositional code
