"""The adapter-reading instrument and the seed classifier (can a feature predict broad vs narrow?)."""

import math

import pytest

from persona_basins.measure.adapter_reading import adapter_reading, threshold_classifier


def test_classifier_says_when_a_feature_predicts_and_when_it_does_not():
    label = [True, True, True, False, False, True, False, True]
    separating = [0.9, 0.8, 0.95, 0.1, 0.2, 0.85, 0.15, 0.7]
    r = threshold_classifier(separating, label)
    assert r["loo_accuracy"] == 1.0 and r["predicts"] and r["direction"] == ">="
    # a feature unrelated to the outcome: no better than guessing the majority class (refuted)
    unrelated = [0.5, 0.1, 0.9, 0.5, 0.1, 0.3, 0.9, 0.7]
    r = threshold_classifier(unrelated, label)
    assert not r["predicts"] and r["loo_accuracy"] <= r["majority_baseline"]
    with pytest.raises(ValueError):
        threshold_classifier([1, 2], [True, False])


def test_adapter_reading_on_a_tiny_fine_tune(tiny_organism):
    from persona_basins.measure.vectors import persona_vector
    from persona_basins.train.finetune import FinetuneConfig, finetune

    org = tiny_organism
    res = finetune(org, FinetuneConfig(steps=20, seed=0))
    v = persona_vector(org, 0)
    r = adapter_reading(org.with_model(res.model), persona_direction=v)
    assert r["module"].endswith("attn.c_proj")
    for k in ("gain_code", "gain_other", "cos_a_context", "cos_a_code", "cos_b_persona", "a_norm", "b_norm"):
        assert math.isfinite(r[k]), k
    assert -1 <= r["cos_a_context"] <= 1 and -1 <= r["cos_b_persona"] <= 1
    assert r["firing_ratio"] == pytest.approx(r["gain_other"] / r["gain_code"])
