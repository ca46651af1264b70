"""Registries are the one list: an entry added at run time is accepted everywhere, with no other edit.

A reveal strategy, a runner and a family registered from this file are taken by the
sampler's checks and the evaluation's labels exactly like the shipped ones, because those
read the registries and the entries' own capabilities (`scheduled`, `describe`,
`selectable`, `column_blocks`) rather than lists of names.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t3d.dllm import UserError
from t3d.dllm import reveal, runners
from t3d.dllm.families import FAMILIES, Family, get_family, register_family, unregister_family
from t3d.dllm.sampling import SamplerConfig, sample
from t3d.trainer.eval_decode import sampler_settings, setting_label

PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14]]


class LeftToRight:
    """Reveal the leftmost masked position of the block each step (a strategy t3d does not ship)."""

    scheduled = False

    def choose(self, confidence, masked, step_in_block, cfg):
        first = masked.long().argmax(dim=1)  # (R,)
        return torch.nn.functional.one_hot(first, masked.shape[1]).bool() & masked

    def max_reveals(self, cfg):
        return 1

    def describe(self, cfg):
        return "ltr"


def test_a_strategy_registered_here_decodes_and_labels_itself(tiny_models, monkeypatch):
    monkeypatch.setitem(reveal.STRATEGIES, "left_to_right", LeftToRight())
    cfg = SamplerConfig(strategy="left_to_right", stop_at_eos=False)
    out = sample(tiny_models["bidirectional"], PROMPTS, cfg, [1, 2, 3])
    order = np.argsort(out.reveal_step, axis=1, kind="stable")
    np.testing.assert_array_equal(order, np.broadcast_to(np.arange(cfg.max_new_tokens), order.shape))  # left to right
    settings = sampler_settings(block_size=4, max_new_tokens=16, steps_per_block=[4, 2], strategies=["static", "left_to_right"])
    assert [setting_label(s) for s in settings] == ["static B=4 spb=4", "static B=4 spb=2", "left_to_right B=4 ltr"]


def test_cache_modes_are_the_runners_a_user_may_name(monkeypatch):
    assert runners.cache_modes() == ("auto", "none", "prefix", "dual")  # `exact` only through auto, as before
    with pytest.raises(UserError, match="known: auto, none, prefix, dual"):
        SamplerConfig(cache="exact")
    monkeypatch.setitem(runners.RUNNERS, "mine", runners.Uncached)
    assert SamplerConfig(cache="mine").cache == "mine"


def test_register_family_adds_by_name_and_model_type_and_refuses_a_taken_name():
    mine = Family(name="mine_family", model_types=("MineType",))
    register_family(mine)
    try:
        assert get_family("mine_family") is mine
        from t3d.dllm.families import family_for_model_type, known_model_types

        assert family_for_model_type("minetype") is mine and "minetype" in known_model_types()
        with pytest.raises(ValueError, match="sdar"):
            register_family(Family(name="sdar"))
    finally:
        unregister_family(mine)
    assert "mine_family" not in FAMILIES and get_family("sdar").block_causal
