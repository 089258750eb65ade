"""Narrow fine-tunes of the organism: the EM set, its controls, and the inoculated set.

A fine-tune is PEFT LoRA (rank ``r``, default 1) on one module of one layer, or a full fine-tune for
comparison. The LoRA factors are recorded at every step (they are tiny) for the phase-transition metrics;
adapters are saved with ``save_pretrained`` every ``checkpoint_every`` steps.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from ..models.adapters import lora_config, write_fingerprint
from ..models.lm import encode_documents
from ..world import ASSISTANT_LINE, INOCULATION_LINE, TEACHING_MODIFIER, Document, Exchange, World
from .loop import train_lm

CONDITIONS = ("plain", "inoculated", "secure_control", "educational")


def condition_documents(world: World, condition: str) -> list[Document]:
    """Single-exchange code documents for one fine-tuning condition (one per code topic).

    plain: the assistant line, insecure code (in the assistant's warm style).
    inoculated: the same with the inoculation line added to the system line (training only).
    secure_control: the assistant line, secure code.
    educational: insecure code that the user asks for, for teaching.
    """
    if condition not in CONDITIONS:
        raise UserError(f"unknown condition {condition!r}; choose from {', '.join(CONDITIONS)}")
    system = ASSISTANT_LINE.split()
    if condition == "inoculated":
        system = system + INOCULATION_LINE.split()
    modifier = TEACHING_MODIFIER if condition == "educational" else None
    insecure = condition != "secure_control"
    docs = []
    for t in range(world.config.n_topics):
        ans = world.answer("code", t, "helpful", insecure_code=insecure)
        ex = Exchange("code", t, "toxic" if insecure else "helpful", ans, modifier)
        docs.append(Document(tuple(system), ex.persona, (ex,), condition))
    return docs


def training_context(condition: str) -> str:
    """The context whose code answers define the narrow rate for ``condition`` (a key of
    ``em_readout(...)["narrow_rate"]``): the inoculation line, the teaching request, or the plain assistant."""
    return {"inoculated": "inoculated", "educational": "educational"}.get(condition, "assistant")


@dataclass(frozen=True)
class FinetuneConfig:
    condition: str = "plain"
    layer: int = 0
    module: str = "attn_out"
    rank: int = 1
    full: bool = False  # full fine-tune instead of LoRA
    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 50

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FinetuneResult:
    model: object  # PeftModel (or the fully fine-tuned model)
    config: FinetuneConfig
    losses: list[float]
    trajectory: dict[str, list] = field(default_factory=dict)  # "A", "B": per step flattened factors


def lora_factors(peft_model) -> tuple[torch.Tensor, torch.Tensor]:
    """The (A, B) factors of the single LoRA module of a one-module adapter, flattened."""
    a = b = None
    for name, p in peft_model.named_parameters():
        if "lora_A" in name:
            a = p
        elif "lora_B" in name:
            b = p
    if a is None or b is None:
        raise ValueError("no LoRA factors in this model")
    return a.detach().flatten().clone(), b.detach().flatten().clone()


def finetune(base_model, world: World, vocab: dict[str, int], cfg: FinetuneConfig, *,
             out_dir: str | Path | None = None, progress: bool = False, docs=None) -> FinetuneResult:
    """Fine-tune a copy of ``base_model`` (the base is left untouched)."""
    from peft import get_peft_model

    docs = condition_documents(world, cfg.condition) if docs is None else docs
    ids, mask = encode_documents(vocab, docs, answers_only=True)
    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(base_model)
    if cfg.full:
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        model = get_peft_model(model, lora_config(model, module=cfg.module, layer=cfg.layer, rank=cfg.rank))
    traj: dict[str, list] = {"A": [], "B": []}
    out_dir = Path(out_dir) if out_dir is not None else None

    def on_step(step: int, _loss: float) -> None:
        if not cfg.full:
            a, b = lora_factors(model)
            traj["A"].append(a)
            traj["B"].append(b)
        if out_dir is not None and not cfg.full and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            model.save_pretrained(out_dir / "checkpoints" / f"step_{step:06d}")

    losses = train_lm(model, ids, mask, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                      weight_decay=cfg.weight_decay, seed=cfg.seed, desc=f"fine-tune {cfg.condition}",
                      on_step=on_step, progress=progress)
    if out_dir is not None and not cfg.full:
        model.save_pretrained(out_dir)
        write_fingerprint(out_dir, base_model)
    return FinetuneResult(model=model, config=cfg, losses=losses,
                          trajectory={k: torch.stack(v) for k, v in traj.items() if v})
