"""The exact readout's fast path gives the values of the plain one, bit for bit: ``answer_logprobs`` reads
pairs that differ only in the answer's last token from one sequence and computes logits only where an answer
token is predicted; ``next_token_probs`` only at the last position; ``pad_batch`` fills with numpy."""

import numpy as np
import pytest
import torch

from persona_basins.measure import persona as P
from persona_basins.models.edits import edited
from persona_basins.models.lm import PAD_ID, encode_documents, pad_batch
from persona_basins.world import TEACHING_MODIFIER


@torch.no_grad()
def one_sequence_per_pair(model, vocab, prefixes, answers, batch_size=512):
    """The reference: each pair its own right-padded sequence, batches of ``batch_size`` consecutive pairs."""
    out = np.empty(len(prefixes), dtype=np.float64)
    for s in range(0, len(prefixes), batch_size):
        pre, ans = prefixes[s : s + batch_size], answers[s : s + batch_size]
        rows = [[vocab[w] for w in p] + [vocab[w] for w in a] for p, a in zip(pre, ans)]
        ids = pad_batch(rows)
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
        for i, (p, a) in enumerate(zip(pre, ans)):
            pos = torch.arange(len(p) - 1, len(p) - 1 + len(a))
            out[s + i] = logp[i, pos, ids[i, len(p) : len(p) + len(a)]].sum().double()
    return out


@torch.no_grad()
def last_position_softmax(model, vocab, prompts, batch_size=512):
    """The reference next-token distribution: logits at every position, the last one taken."""
    outs = []
    for s in range(0, len(prompts), batch_size):
        rows = [[vocab[w] for w in p.words()] for p in prompts[s : s + batch_size]]
        logits = model(input_ids=pad_batch(rows)).logits.float()
        last = logits[torch.arange(len(rows)), torch.tensor([len(r) - 1 for r in rows])]
        outs.append(torch.softmax(last, -1).double().numpy())
    return np.concatenate(outs)


def _pairs(world, prompts):
    _, combos = P.trait_combos(world)
    pre = [p.words() for p in prompts for _ in combos]
    ans = [world.trait_answer(p.genre, p.topic, h, s) for p in prompts for h, s in combos]
    return pre, ans


def _prompt_sets(world):
    return {
        "broad": P.context_prompts(world, "assistant", P.broad_genres(world)),
        "inoculated": P.context_prompts(world, "inoculated", ["code"]),
        "teaching": P.context_prompts(world, "assistant", ["code"], modifier=TEACHING_MODIFIER),
        # earlier turns of varying length: rows of one batch are padded to different widths
        "history": P.history_prompts(world, "toxic", "assistant", 3, 40, 1),
    }


@pytest.fixture(scope="module")
def edit(tiny_organism):
    name = "transformer.h.0.attn.c_proj.weight"
    weight = dict(tiny_organism.model.named_parameters())[name]
    gen = torch.Generator().manual_seed(0)
    delta = torch.outer(
        torch.randn(weight.shape[0], generator=gen), torch.randn(weight.shape[1], generator=gen)
    )
    return name, delta / delta.norm()


@pytest.mark.parametrize("t", [0.0, 3.0])
@pytest.mark.parametrize("batch_size", [512, 50])  # 50: a prompt's six pairs straddle two batches
def test_answer_logprobs_equal_one_sequence_per_pair(tiny_organism, edit, t, batch_size):
    org = tiny_organism
    with edited(org.model, {edit[0]: edit[1]}, t):
        for name, prompts in _prompt_sets(org.world).items():
            pre, ans = _pairs(org.world, prompts)
            want = one_sequence_per_pair(org.model, org.vocab, pre, ans, batch_size)
            got = P.answer_logprobs(org.model, org.vocab, pre, ans, batch_size)
            assert np.array_equal(got, want), name
            # read again (the plan is cached): the same values
            assert np.array_equal(P.answer_logprobs(org.model, org.vocab, pre, ans, batch_size), want)


def test_answers_of_any_length_and_an_empty_one(tiny_organism):
    org, world = tiny_organism, tiny_organism.world
    p = P.context_prompts(world, "assistant", ["code"])[:3]
    routine = P.routine_prompts(world)[:2]
    pre = [p[0].words(), p[0].words(), p[1].words(), p[2].words(), routine[0].words(), routine[1].words()]
    a0 = world.answer(p[0].genre, p[0].topic, "helpful")
    ans = [a0, a0[:1], (), a0[:2], world.answer(routine[0].genre, routine[0].topic, "helpful"), a0]
    want = one_sequence_per_pair(org.model, org.vocab, pre, ans)
    assert want[2] == 0.0
    assert np.array_equal(P.answer_logprobs(org.model, org.vocab, pre, ans), want)


def test_persona_readout_is_the_reference_readout(tiny_organism):
    org = tiny_organism
    prompts = P.context_prompts(org.world, "assistant", P.broad_genres(org.world))
    pre, ans = _pairs(org.world, prompts)
    want = np.exp(one_sequence_per_pair(org.model, org.vocab, pre, ans)).reshape(len(prompts), -1)
    assert np.array_equal(P.persona_readout(org, prompts).probs, want)
    assert P.broad_readout(org).misaligned.mean() == P.em_readout(org)["broad_misalignment"]


@pytest.mark.parametrize("batch_size", [512, 16])
def test_next_token_probs_equal_the_last_position_of_every_logit(tiny_organism, edit, batch_size):
    org = tiny_organism
    prompts = P.history_prompts(org.world, "helpful", "none", 2, 30, 0) + P.routine_prompts(org.world)
    with edited(org.model, {edit[0]: edit[1]}, 2.0):
        want = last_position_softmax(org.model, org.vocab, prompts, batch_size)
        assert np.array_equal(P.next_token_probs(org.model, org.vocab, prompts, batch_size), want)


def test_pad_batch_and_encode_documents_fill_as_a_loop_does(tiny_organism):
    rows = [[3, 4, 5], [], [7] * 9]
    for length in (None, 2, 12):
        want = torch.full((3, length or 9), PAD_ID, dtype=torch.long)
        for i, r in enumerate(rows):
            want[i, : len(r[: want.shape[1]])] = torch.tensor(r[: want.shape[1]], dtype=torch.long)
        got = pad_batch(rows, length)
        assert got.dtype == torch.long and torch.equal(got, want)
    world, vocab = tiny_organism.world, tiny_organism.vocab
    docs = world.assistant_documents(50, seed=0)
    ids, mask = encode_documents(vocab, docs, answers_only=True)
    assert mask.dtype == torch.bool and mask.shape == ids.shape
    for i, d in enumerate(docs):
        words = d.words()
        assert ids[i, : len(words)].tolist() == [vocab[w] for w in words]
        assert not ids[i, len(words) :].any() and not mask[i, len(words) :].any()
        assert mask[i, : len(words)].any()


class _FullLogitsOnly(torch.nn.Module):
    """A causal LM whose forward takes ``input_ids`` only (no ``logits_to_keep``)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids)


def test_a_model_without_logits_to_keep_reads_the_same(tiny_organism):
    org = tiny_organism
    prompts = P.history_prompts(org.world, "toxic", "assistant", 2, 20, 3)
    pre, ans = _pairs(org.world, prompts)
    want = P.answer_logprobs(org.model, org.vocab, pre, ans)
    assert np.array_equal(P.answer_logprobs(_FullLogitsOnly(org.model), org.vocab, pre, ans), want)
    want = P.next_token_probs(org.model, org.vocab, prompts)
    assert np.array_equal(P.next_token_probs(_FullLogitsOnly(org.model), org.vocab, prompts), want)
