"""The fluency check's greedy continuations: decoding with the key/value cache (one new token
per step, left-padded prompts) gives the same tokens as re-running the whole sequence, with and
without per-row rank-one edits, for every supported family and the default model."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import FAMILIES
from tuner.metrics.fluency import greedy_continuations
from tuner.metrics.row_updates import RowUpdates
from tuner.plumbing.module_io import rewrite_weight

PROMPTS = ["The capital of France is", "Paris is in", "A", "The Eiffel Tower is located in the city of",
           "Which language", "Rome"]


def _edits(model, adapter, layer: int, n: int) -> RowUpdates:
    """n random rank-one updates, large enough to change what the model says."""
    weight = rewrite_weight(model, adapter, layer)
    d_out, d_in = (weight.shape if adapter.weight_layout == "out_in" else weight.shape[::-1])
    g = torch.Generator().manual_seed(1)
    lams = torch.randn(n, d_out, generator=g) * 3.0
    us = torch.randn(n, d_in, generator=g)
    return RowUpdates(model, adapter, layer, lams, us)


def _check(model, tok, adapter, layer: int) -> None:
    for edits in (None, _edits(model, adapter, layer, 3)):
        owner = [i % 3 for i in range(len(PROMPTS))] if edits is not None else None
        cached = greedy_continuations(model, tok, adapter, PROMPTS, edits=edits, prompt_fact=owner)
        whole = greedy_continuations(model, tok, adapter, PROMPTS, edits=edits, prompt_fact=owner, cache=False)
        assert cached == whole


@pytest.mark.parametrize("model_type", FAMILIES)
def test_cached_decoding_equals_whole_sequence_decoding(tiny_editor, model_type):
    ed = tiny_editor(model_type)
    _check(ed.model, ed.tok, ed.adapter, 1)


def test_cached_decoding_on_the_default_model(default_model):
    ed = default_model.editor(progress=False)
    _check(ed.model, ed.tok, ed.adapter, 1)
    # the edits change the continuations (the check above compares something)
    plain = greedy_continuations(ed.model, ed.tok, ed.adapter, PROMPTS)
    edited = greedy_continuations(ed.model, ed.tok, ed.adapter, PROMPTS, edits=_edits(ed.model, ed.adapter, 1, 3),
                                  prompt_fact=[i % 3 for i in range(len(PROMPTS))])
    assert plain != edited
