"""The small shared API of the studies: ``StudyResult``, ``Organism.with_model`` and the list flag types."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from persona_basins.commands.args import int_or_auto, name_list, number_list
from persona_basins.results import StudyResult


def test_study_result_is_frozen_with_empty_figure_data():
    result = StudyResult(Path("run"), {"x": 1})
    assert result.figure_data == {} and result.run_dir == Path("run") and result.metrics == {"x": 1}
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.metrics = {}  # type: ignore[misc]
    assert StudyResult(None, {}).figure_data is not StudyResult(None, {}).figure_data  # no shared default


def test_with_model_shares_the_organism_and_clears_the_fingerprint(tiny_organism):
    import copy

    org = tiny_organism
    other = copy.deepcopy(org.model)
    state = org.with_model(other)
    assert state.model is other and org.model is not other  # the original is untouched
    assert state.world is org.world and state.tokenizer is org.tokenizer and state.config is org.config
    assert state.vocab == org.vocab and state.path == org.path
    assert state.fingerprint == ""  # it names the built weights, which `other` need not be


def test_list_flag_types():
    assert number_list(2)("0,0.5, 1") == [0.0, 0.5, 1.0]
    assert number_list(2, 2)("1,2") == [1.0, 2.0]
    for parse, text in (
        (number_list(2), "1"),
        (number_list(2, 2), "1,2,3"),
        (number_list(positive=True), "1e-5,0"),
        (number_list(), "1,nan"),
        (number_list(), "a,b"),
        (name_list(("all", "layer")), "all,head"),
        (name_list(), " , "),
        (int_or_auto(1), "0"),
        (int_or_auto(1), "many"),
    ):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
    assert name_list(("all", "layer"))("layer, all") == ["layer", "all"]
    assert int_or_auto(1)("auto") == "auto" and int_or_auto(1)("3") == 3
