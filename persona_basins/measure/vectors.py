"""Persona vectors: mean-difference directions in the residual stream, projection, steering, screening.

A persona vector at layer L is the mean residual activation (output of decoder block L) over answer tokens
of documents in which persona A answers, minus the same for
persona B, with the persona declared in the system line (so the contrast is the persona, not the words).
Works on GPT-2- and Llama-style HF causal LMs (PEFT-wrapped too); the organism supplies its own documents.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..models.adapters import num_layers
from ..models.lm import encode_documents


def decoder_layers(model):
    """The list of decoder blocks of a (possibly PEFT-wrapped) GPT-2 / Llama-style model.

    Walks down ``base_model`` / ``model`` / ``transformer`` wrappers (a bare ``GPT2Model`` is its own
    ``base_model``, so the walk stops at an object already seen) until one holds ``h`` or ``layers``.
    """
    m, seen = model, set()
    while m is not None and id(m) not in seen:
        seen.add(id(m))
        for attr in ("h", "layers"):
            blocks = getattr(m, attr, None)
            if isinstance(blocks, torch.nn.ModuleList):
                return blocks
        m = next((getattr(m, a) for a in ("transformer", "model", "base_model")
                  if isinstance(getattr(m, a, None), torch.nn.Module)), None)
    raise ValueError("cannot find the decoder layers of this model")


@contextlib.contextmanager
def capture_layer(model, layer: int):
    """Record the output of decoder block ``layer`` (after any steering hook registered before it).

    A hook rather than ``output_hidden_states``: some transformers versions record hidden states with
    their own hooks, which would miss a steering edit.
    """
    store: dict[str, torch.Tensor] = {}

    def hook(_mod, _inp, output):
        store["h"] = output[0] if isinstance(output, tuple) else output

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


@torch.no_grad()
def mean_activation(model, input_ids: torch.Tensor, mask: torch.Tensor, layer: int,
                    batch_size: int = 256) -> torch.Tensor:
    """Mean output of decoder block ``layer`` over positions where ``mask`` is true."""
    if not 0 <= layer < num_layers(model):
        raise ValueError(f"layer {layer} out of range")
    total, count = None, 0
    for s in range(0, len(input_ids), batch_size):
        ids, m = input_ids[s : s + batch_size], mask[s : s + batch_size]
        with capture_layer(model, layer) as store:
            model(input_ids=ids)
        sel = store["h"][m]
        total = sel.sum(0) if total is None else total + sel.sum(0)
        count += sel.shape[0]
    return (total / max(count, 1)).float()


def organism_persona_documents(world, persona: str, n: int, seed: int):
    """Documents with ``persona`` declared in the system line (from the world's own sampler)."""
    import random

    from ..world import Document

    rng = random.Random(f"pv-{seed}-{persona}")
    docs = []
    decl = tuple(world.personas[persona].declaration.split())
    for _ in range(n):
        n_ex = rng.randint(*world.config.exchanges)
        ex = tuple(world._exchange(rng, persona, routine_ok=False, teaching_ok=False) for _ in range(n_ex))
        docs.append(Document(decl, persona, ex, "declared"))
    return docs


def persona_vector(model, world, vocab, layer: int, a: str = "toxic", b: str = "helpful", *, n: int = 256,
                   seed: int = 0) -> torch.Tensor:
    """Mean-difference persona vector (A minus B) at ``layer``, averaged over answer tokens."""
    acts = []
    for name in (a, b):
        ids, mask = encode_documents(vocab, organism_persona_documents(world, name, n, seed), answers_only=True)
        acts.append(mean_activation(model, ids, mask, layer))
    return acts[0] - acts[1]


@torch.no_grad()
def projection(model, vocab, prompts, vector: torch.Tensor, layer: int, batch_size: int = 256) -> np.ndarray:
    """Projection of the residual at each prompt's last position (``<asst>``) onto the unit vector."""
    from ..models.lm import pad_batch

    unit = vector / vector.norm().clamp_min(1e-12)
    out = []
    for s in range(0, len(prompts), batch_size):
        rows = [[vocab[w] for w in p.words()] for p in prompts[s : s + batch_size]]
        ids = pad_batch(rows)
        last = torch.tensor([len(r) - 1 for r in rows])
        with capture_layer(model, layer) as store:
            model(input_ids=ids)
        hs = store["h"]
        out.append((hs[torch.arange(len(rows)), last].float() @ unit).numpy())
    return np.concatenate(out).astype(np.float64)


@contextlib.contextmanager
def steering(model, vector: torch.Tensor, layer: int, coeff: float):
    """Add ``coeff * vector`` to the output of decoder layer ``layer`` (every position) inside the block."""
    block = decoder_layers(model)[layer]

    def hook(_mod, _inp, output):
        if isinstance(output, tuple):
            return (output[0] + coeff * vector.to(output[0].dtype), *output[1:])
        return output + coeff * vector.to(output.dtype)

    handle = block.register_forward_hook(hook)
    try:
        yield model
    finally:
        handle.remove()


def screen_dataset(model, vocab, docs, vector: torch.Tensor, layer: int, baseline_docs) -> dict:
    """Projection-difference screening: does a fine-tuning set push along the persona vector?

    Mean projection of the answer-token activations of ``docs`` minus that of ``baseline_docs`` (e.g. the
    same requests answered helpfully), both under the base model, before any training.
    """
    unit = vector / vector.norm().clamp_min(1e-12)
    vals = []
    for d in (docs, baseline_docs):
        ids, mask = encode_documents(vocab, d, answers_only=True)
        vals.append(float(mean_activation(model, ids, mask, layer) @ unit))
    return {"projection": vals[0], "baseline_projection": vals[1], "difference": vals[0] - vals[1]}


__all__ = ["capture_layer", "decoder_layers", "mean_activation", "persona_vector", "projection",
           "screen_dataset", "steering"]
