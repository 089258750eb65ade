"""Persona vectors: mean-difference directions in the residual stream, projection, steering, screening.

A persona vector at layer L is a mean residual activation (output of decoder block L) under persona A
minus the same under persona B, the persona declared in the system line. Three ways to pick the positions
(``method``), because answer tokens differ between personas and a vector averaged over them can read the
*words* rather than the persona:

- ``"request"`` (default): the ``<asst>`` token of single-exchange prompts, every content genre x topic,
  identical except for the declared persona: the position before the answer, where the model holds the
  persona it is about to answer as but has not seen an answer word;
- ``"matched_answers"``: answer tokens of identical documents (the same exchanges, answered by A's and by
  B's persona in equal numbers) under A's and under B's declaration: the words are the same on both sides;
- ``"answer_tokens"``: the earlier vector, answer tokens of documents in which A and B each answer as
  themselves (kept for comparison; its answer words differ between the sides).

:func:`lexical_cosine` says how much of a vector is the words: its cosine with the mean input embedding of
the harmful content words minus that of the helpful ones (the difference between the two personas' answers).
Works on GPT-2- and Llama-style HF causal LMs (PEFT-wrapped too); the organism supplies its own documents.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..models.adapters import num_layers
from ..models.lm import encode_documents

if TYPE_CHECKING:
    from ..models.organism import Organism


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
        m = next(
            (
                getattr(m, a)
                for a in ("transformer", "model", "base_model")
                if isinstance(getattr(m, a, None), torch.nn.Module)
            ),
            None,
        )
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
def mean_activation(
    model, input_ids: torch.Tensor, mask: torch.Tensor, layer: int, batch_size: int = 256
) -> torch.Tensor:
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


VECTOR_METHODS = ("request", "matched_answers", "answer_tokens")


def persona_request_prompts(world, persona: str, genres: list[str] | None = None):
    """One single-exchange prompt per content genre x topic with ``persona`` declared in the system line."""
    from .persona import context_prompts

    return context_prompts(world, persona, genres)


@torch.no_grad()
def mean_last_position(model, vocab, prompts, layer: int, batch_size: int = 256) -> torch.Tensor:
    """Mean output of decoder block ``layer`` at each prompt's last position (its ``<asst>`` token)."""
    from ..models.lm import pad_batch

    if not 0 <= layer < num_layers(model):
        raise ValueError(f"layer {layer} out of range")
    total = None
    for s in range(0, len(prompts), batch_size):
        rows = [[vocab[w] for w in p.words()] for p in prompts[s : s + batch_size]]
        last = torch.tensor([len(r) - 1 for r in rows])
        with capture_layer(model, layer) as store:
            model(input_ids=pad_batch(rows))
        sel = store["h"][torch.arange(len(rows)), last].float().sum(0)
        total = sel if total is None else total + sel
    return total / max(len(prompts), 1)


def matched_answer_documents(world, a: str, b: str, n: int, seed: int):
    """``(docs under A's declaration, the same exchanges under B's declaration)``: ``n`` documents each, half
    of the exchanges answered by A's persona and half by B's, so both sides hold the same answer words."""
    from ..world import Document

    ex = [d.exchanges for d in organism_persona_documents(world, a, n - n // 2, seed)]
    ex += [d.exchanges for d in organism_persona_documents(world, b, n // 2, seed)]
    out = []
    for name in (a, b):
        decl = tuple(world.personas[name].declaration.split())
        out.append([Document(decl, name, e, "declared") for e in ex])
    return out[0], out[1]


def persona_vector(
    org: Organism,
    layer: int,
    a: str = "toxic",
    b: str = "helpful",
    *,
    n: int = 256,
    seed: int = 0,
    method: str = "request",
) -> torch.Tensor:
    """Mean-difference persona vector (A minus B) of ``org.model`` at ``layer`` (``method``: see the module
    doc).

    ``"request"`` uses the fixed grid of content requests (``n`` and ``seed`` are unused); the document
    methods use ``n`` sampled documents per side.
    """
    model, world, vocab = org.model, org.world, org.vocab
    if method == "request":
        return mean_last_position(
            model, vocab, persona_request_prompts(world, a), layer
        ) - mean_last_position(model, vocab, persona_request_prompts(world, b), layer)
    if method == "matched_answers":
        sides = matched_answer_documents(world, a, b, n, seed)
    elif method == "answer_tokens":
        sides = tuple(organism_persona_documents(world, name, n, seed) for name in (a, b))
    else:
        raise ValueError(f"unknown persona-vector method {method!r} (one of {', '.join(VECTOR_METHODS)})")
    acts = []
    for docs in sides:
        ids, mask = encode_documents(vocab, docs, answers_only=True)
        acts.append(mean_activation(model, ids, mask, layer))
    return acts[0] - acts[1]


def content_words(world, harm: int) -> list[str]:
    """Every content word the world writes with harm ``harm`` (all genres and topics, code included)."""
    content, _, _ = world._tables
    return sorted({w for (_, _, h), pair in content.items() if h == harm for w in pair})


@torch.no_grad()
def lexical_direction(org: Organism) -> torch.Tensor:
    """Mean input embedding (of ``org.model``) of the harmful content words minus that of the helpful ones."""
    emb = org.model.get_input_embeddings().weight.detach().float()
    vocab = org.vocab
    mean = [emb[[vocab[w] for w in content_words(org.world, h)]].mean(0) for h in (1, 0)]
    return mean[0] - mean[1]


def lexical_cosine(vector: torch.Tensor, org: Organism) -> float:
    """Cosine between ``vector`` and :func:`lexical_direction`: near 1 means the vector mostly points at the
    harmful answer words (with tied embeddings it then mainly raises their logits), near 0 that it does
    not."""
    lex = lexical_direction(org)
    v = vector.detach().float()
    return float((v @ lex) / (v.norm() * lex.norm()).clamp_min(1e-12))


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


@contextlib.contextmanager
def ablating_output(module, direction: torch.Tensor):
    """Project the unit vector of ``direction`` out of the output of ``module`` (every position):
    ``h - (h . u) u``; a zero direction projects nothing (the output is returned as it is)."""
    d = direction.detach().flatten().float()
    norm = float(d.norm())

    def project(h: torch.Tensor) -> torch.Tensor:
        u = (d / norm).to(h.dtype)
        return h - (h @ u)[..., None] * u

    def hook(_mod, _inp, output):
        if norm == 0.0:
            return output
        if isinstance(output, tuple):
            return (project(output[0]), *output[1:])
        return project(output)

    handle = module.register_forward_hook(hook)
    try:
        yield module
    finally:
        handle.remove()


@contextlib.contextmanager
def ablating(model, direction: torch.Tensor, layer: int):
    """:func:`ablating_output` on decoder layer ``layer`` of ``model``: ``direction`` projected out of the
    residual stream after that layer."""
    with ablating_output(decoder_layers(model)[layer], direction):
        yield model


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


__all__ = [
    "VECTOR_METHODS",
    "ablating",
    "ablating_output",
    "capture_layer",
    "content_words",
    "decoder_layers",
    "lexical_cosine",
    "lexical_direction",
    "matched_answer_documents",
    "mean_activation",
    "mean_last_position",
    "persona_request_prompts",
    "persona_vector",
    "projection",
    "screen_dataset",
    "steering",
]
