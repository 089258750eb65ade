"""Persona vectors: layer lookup (plain / PEFT / bare models), capture, steering, projection, screening."""

import copy

import pytest
import torch

from persona_basins.measure.vectors import (
    VECTOR_METHODS,
    capture_layer,
    content_words,
    decoder_layers,
    lexical_cosine,
    lexical_direction,
    matched_answer_documents,
    mean_activation,
    mean_last_position,
    persona_request_prompts,
    persona_vector,
    projection,
    screen_dataset,
    steering,
)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=40,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ).eval()


def test_decoder_layers_plain_peft_and_bare_models(tiny_organism):
    from peft import get_peft_model

    from persona_basins.models.adapters import lora_config

    gpt = tiny_organism.model
    n = gpt.config.n_layer
    assert decoder_layers(gpt) is gpt.transformer.h
    assert decoder_layers(gpt.transformer) is gpt.transformer.h  # bare GPT2Model (used to loop forever)
    peft = get_peft_model(copy.deepcopy(gpt), lora_config(gpt, module="mlp_out", layer=0))
    assert len(decoder_layers(peft)) == n
    llama = _tiny_llama()
    assert decoder_layers(llama) is llama.model.layers and decoder_layers(llama.model) is llama.model.layers
    pl = get_peft_model(copy.deepcopy(llama), lora_config(llama, module="mlp_out", layer=1))
    assert len(decoder_layers(pl)) == 3
    with pytest.raises(ValueError):
        decoder_layers(torch.nn.Linear(2, 2))


def test_capture_matches_hidden_states_and_is_removed(tiny_organism):
    model = tiny_organism.model
    ids = torch.randint(7, 40, (2, 6))
    with torch.no_grad():
        ref = model(input_ids=ids, output_hidden_states=True).hidden_states
    hooks = dict(
        decoder_layers(model)[0]._forward_hooks
    )  # transformers installs (and keeps) hooks of its own
    with torch.no_grad():
        with capture_layer(model, 0) as store:
            model(input_ids=ids)
    assert torch.allclose(store["h"], ref[1], atol=1e-6)  # output of block 0
    assert dict(decoder_layers(model)[0]._forward_hooks) == hooks


def test_steering_shifts_the_layer_output_exactly_and_unhooks(tiny_organism):
    model = tiny_organism.model
    ids = torch.randint(7, 40, (2, 6))
    v = torch.randn(model.config.n_embd)
    hooks = dict(decoder_layers(model)[0]._forward_hooks)
    with torch.no_grad():
        base_logits = model(input_ids=ids).logits
        with capture_layer(model, 0) as plain:
            model(input_ids=ids)
        with steering(model, v, 0, 2.5), capture_layer(model, 0) as steered:
            model(input_ids=ids)
        with steering(model, v, 0, 0.0):
            zero = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert torch.allclose(steered["h"] - plain["h"], 2.5 * v.expand_as(plain["h"]), atol=1e-5)
    assert torch.allclose(zero, base_logits) and torch.equal(after, base_logits)
    assert dict(decoder_layers(model)[0]._forward_hooks) == hooks


def test_persona_vector_antisymmetric_and_projection_scale_free(tiny_organism):
    from persona_basins.measure.persona import context_prompts

    org = tiny_organism
    v = persona_vector(org, 1, "toxic", "helpful", n=16)
    w = persona_vector(org, 1, "helpful", "toxic", n=16)
    assert v.shape == (org.model.config.n_embd,) and v.norm() > 0
    assert torch.allclose(v, -w, atol=1e-6)
    assert persona_vector(org, 1, "toxic", "toxic", n=8).abs().max() == 0
    prompts = context_prompts(org.world, "assistant")[:10]
    p = projection(org.model, org.vocab, prompts, v, 1)
    assert p.shape == (10,)
    assert projection(org.model, org.vocab, prompts, 3 * v, 1) == pytest.approx(p, abs=1e-5)
    assert projection(org.model, org.vocab, prompts, -v, 1) == pytest.approx(-p, abs=1e-5)
    # the declared toxic persona sits further along the vector than the declared helpful one
    tox = projection(org.model, org.vocab, context_prompts(org.world, "toxic"), v, 1).mean()
    helpful = projection(org.model, org.vocab, context_prompts(org.world, "helpful"), v, 1).mean()
    assert tox > helpful


def test_screen_dataset_and_mean_activation(tiny_organism):
    from persona_basins.measure.vectors import organism_persona_documents
    from persona_basins.models.lm import encode_documents

    org = tiny_organism
    v = torch.randn(org.model.config.n_embd)
    docs = organism_persona_documents(org.world, "toxic", 8, 0)
    same = screen_dataset(org.model, org.vocab, docs, v, 0, docs)
    assert same["difference"] == pytest.approx(0.0, abs=1e-6)
    ids, mask = encode_documents(org.vocab, docs, answers_only=True)
    with pytest.raises(ValueError):
        mean_activation(org.model, ids, mask, org.model.config.n_layer)
    # batching does not change the mean
    a = mean_activation(org.model, ids, mask, 0, batch_size=3)
    b = mean_activation(org.model, ids, mask, 0, batch_size=256)
    assert torch.allclose(a, b, atol=1e-5)


def test_every_method_antisymmetric_and_the_old_one_kept(tiny_organism):
    org = tiny_organism
    for m in VECTOR_METHODS:
        v = persona_vector(org, 0, "toxic", "helpful", n=8, method=m)
        w = persona_vector(org, 0, "helpful", "toxic", n=8, method=m)
        assert v.norm() > 0 and torch.allclose(v, -w, atol=1e-6), m
        assert persona_vector(org, 0, "toxic", "toxic", n=8, method=m).abs().max() < 1e-6
    with pytest.raises(ValueError):
        persona_vector(org, 0, n=8, method="words")
    # "request" reads the <asst> position, which projection() reads too: the mean projection gap is |v|
    v = persona_vector(org, 1, method="request")
    gap = (
        projection(org.model, org.vocab, persona_request_prompts(org.world, "toxic"), v, 1).mean()
        - projection(org.model, org.vocab, persona_request_prompts(org.world, "helpful"), v, 1).mean()
    )
    assert gap == pytest.approx(float(v.norm()), rel=1e-4)
    ps = persona_request_prompts(org.world, "toxic")
    assert torch.allclose(
        mean_last_position(org.model, org.vocab, ps, 1, batch_size=7),
        mean_last_position(org.model, org.vocab, ps, 1),
        atol=1e-5,
    )


def test_matched_answer_documents_differ_only_in_the_declaration(tiny_organism):
    world = tiny_organism.world
    a, b = matched_answer_documents(world, "toxic", "helpful", 9, seed=1)
    assert len(a) == len(b) == 9
    for x, y in zip(a, b):
        assert x.exchanges == y.exchanges
        assert x.system == tuple(world.personas["toxic"].declaration.split())
        assert y.system == tuple(world.personas["helpful"].declaration.split())
    personas = {e.persona for d in a for e in d.exchanges}
    assert personas == {"toxic", "helpful"}  # both personas' answers, on both sides


def test_lexical_cosine_reads_the_harmful_minus_helpful_words(tiny_organism):
    org = tiny_organism
    harm, good = content_words(org.world, 1), content_words(org.world, 0)
    assert harm and good and not set(harm) & set(good)
    assert any(w.startswith("code.insecure") for w in harm) and any(w.startswith("code.secure") for w in good)
    lex = lexical_direction(org)
    assert lexical_cosine(lex, org) == pytest.approx(1.0, abs=1e-6)
    assert lexical_cosine(-3 * lex, org) == pytest.approx(-1.0, abs=1e-6)
    # a vector orthogonal to the lexical direction has cosine 0
    r = torch.randn(lex.shape, generator=torch.Generator().manual_seed(0))
    r = r - (r @ lex) / (lex @ lex) * lex
    assert lexical_cosine(r, org) == pytest.approx(0.0, abs=1e-5)
