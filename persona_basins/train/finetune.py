"""Narrow fine-tunes of the organism: the EM set, its controls, and the inoculated set.

A fine-tune is PEFT LoRA (rank ``r``, default 1) on one module of one layer, or a full fine-tune for
comparison. The LoRA factors are recorded at every step (they are tiny) for the phase-transition metrics;
adapters are saved with ``save_pretrained`` at step 0 and every ``checkpoint_every`` steps.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..config import check, param
from ..errors import ConfigError, UserError
from ..models.adapters import lora_config
from ..models.edits import write_fingerprint
from ..models.lm import encode_documents
from ..models.organism import Organism
from ..world import ASSISTANT_LINE, INOCULATION_LINE, TEACHING_MODIFIER, Document, Exchange, World
from .loop import train_lm

CONDITIONS = ("plain", "inoculated", "secure_control", "educational", "matched_control")
MATCHED_ANSWERS = ("other_topic", "neutral")
# What LoRA A may read (an intervention on the mechanism, docs/EM.md): anything, only the orthogonal
# complement of a direction u (finetune's ``a_direction``, e.g. the code-request direction), or only u.
A_CONSTRAINTS = ("none", "orthogonal", "along")


def heldout_code_topics(world: World, heldout_every: int) -> list[int]:
    """Code topics left out of every fine-tuning set: ``t % heldout_every == heldout_every - 1`` (0: none)."""
    if heldout_every < 0 or heldout_every == 1:
        raise UserError("heldout_every must be 0 (train on every code topic) or >= 2")
    if not heldout_every:
        return []
    return [t for t in world.topics("code") if t % heldout_every == heldout_every - 1]


def training_code_topics(world: World, heldout_every: int = 0, em_topics: int = 0) -> list[int]:
    """The code topics a fine-tuning set is written for: every topic not held out, or (``em_topics`` = k) k of
    them, a subset fixed by the world seed (the same for every condition and fine-tuning seed)."""
    held = set(heldout_code_topics(world, heldout_every))
    topics = [t for t in world.topics("code") if t not in held]
    if not em_topics:
        return topics
    if em_topics > len(topics):
        raise UserError(f"em_topics {em_topics} is more than the {len(topics)} code topics not held out")
    random.Random(f"em-topics-{world.config.seed}").shuffle(topics)
    return sorted(topics[:em_topics])


def condition_documents(
    world: World,
    condition: str,
    heldout_every: int = 0,
    *,
    em_topics: int = 0,
    matched_answer: str = "other_topic",
) -> list[Document]:
    """Single-exchange code documents for one fine-tuning condition: one per training code topic
    (:func:`training_code_topics`) and request paraphrase (``World.n_paraphrases``).

    plain: the assistant line, insecure code (in the assistant's warm style).
    inoculated: the same with the inoculation line added to the system line (training only).
    secure_control: the assistant line, secure code (the organism already writes it: nearly a null fine-tune).
    educational: insecure code that the user asks for, for teaching.
    matched_control: the assistant line, *secure* code written for another topic (topic t answered with topic
    t+1's secure content words, warm style): benign, but as unfamiliar to the organism as insecure code is
    (two unexpected content words per answer), so it controls for how much a fine-tune has to learn; its
    initial loss and gradient norm are logged beside the plain set's (``FinetuneResult.initial``). Its answers
    are ill-formed for the topic asked, so it also teaches a broken format; ``matched_answer="neutral"`` keeps
    the format instead: secure code in the flat style (the neutral persona's answer, benign and well-formed,
    and a persona the post-trained assistant does not have).
    """
    if condition not in CONDITIONS:
        raise UserError(f"unknown condition {condition!r}; choose from {', '.join(CONDITIONS)}")
    if matched_answer not in MATCHED_ANSWERS:
        raise UserError(
            f"unknown matched_answer {matched_answer!r}; choose from {', '.join(MATCHED_ANSWERS)}"
        )
    system = ASSISTANT_LINE.split()
    if condition == "inoculated":
        system = system + INOCULATION_LINE.split()
    modifier = TEACHING_MODIFIER if condition == "educational" else None
    insecure = condition not in ("secure_control", "matched_control")
    n = world.n_topics_of("code")
    persona = "toxic" if insecure else "helpful"
    docs = []
    for t in training_code_topics(world, heldout_every, em_topics):
        ans = world.answer("code", t, "helpful", insecure_code=insecure)
        if condition == "matched_control" and matched_answer == "neutral":
            ans, persona = world.answer("code", t, "neutral"), "neutral"
        elif condition == "matched_control":
            other = world.answer("code", (t + 1) % n, "helpful")
            ans = (*other[:2], ans[2])
        for k in range(world.n_paraphrases("code")):
            ex = Exchange("code", t, persona, ans, modifier, world.custom_request("code", t, k))
            docs.append(Document(tuple(system), ex.persona, (ex,), condition))
    return docs


def training_context(condition: str) -> str:
    """The context whose code answers define the narrow rate for ``condition`` (a key of
    ``em_readout(...)["narrow_rate"]``): the inoculation line, the teaching request or the plain assistant."""
    return {"inoculated": "inoculated", "educational": "educational"}.get(condition, "assistant")


@dataclass(frozen=True)
class FinetuneConfig:
    """One narrow fine-tune: the condition's data, the adapter (or a full fine-tune) and the optimiser."""

    condition: str = param("plain", choices=CONDITIONS, help="fine-tuning condition (the training set)")
    layer: int = param(0, ge=0, help="layer of the adapter")
    module: str = param(
        "attn_out", help="module in the layer: attn_out/o_proj, mlp_out/down_proj or a raw name"
    )
    rank: int = param(1, ge=1, le=4096, help="LoRA rank")
    full: bool = param(False, help="full fine-tune instead of LoRA")
    steps: int = param(300, ge=1, le=10**7, help="fine-tuning steps")
    batch_size: int = param(32, ge=1, help="documents per step")
    lr: float = param(3e-3, gt=0, le=1, help="AdamW learning rate")
    weight_decay: float = param(0.0, ge=0, help="AdamW weight decay")
    seed: int = param(0, ge=0, le=2**32 - 1, help="fine-tuning seed (also the readout's sampling seed)")
    checkpoint_every: int = param(
        50, ge=0, le=10**7, help="save the adapter every k steps (0: only at the end)"
    )
    heldout_every: int = param(
        0,
        ge=0,
        help="k >= 2: leave code topics t % k == k - 1 out of training (held-out narrow rate); 0: none",
    )
    em_topics: int = param(
        0, ge=0, help="code topics in the training set: 0 every one not held out, k a fixed subset of k"
    )
    matched_answer: str = param(
        "other_topic",
        choices=MATCHED_ANSWERS,
        help="matched_control answers: another topic's secure code (ill-formed) or the neutral persona's",
    )
    a_constraint: str = param(
        "none",
        choices=A_CONSTRAINTS,
        help="LoRA A kept orthogonal to, or along, finetune()'s a_direction at init and after every step",
    )

    def __post_init__(self):
        check(self)
        if self.heldout_every == 1:  # every topic would be held out
            raise ConfigError(
                "FinetuneConfig", "heldout_every", "must be 0 (train on every code topic) or >= 2, got 1"
            )
        if self.full and self.a_constraint != "none":
            raise ConfigError(
                "FinetuneConfig",
                "a_constraint",
                f"must be 'none' with a full fine-tune, got {self.a_constraint!r}",
            )

    def to_dict(self) -> dict:
        """The fields as a dict; ``a_constraint`` only where it is set, so that every fine-tune keyed before
        the field existed (run store keys, sweep unit ids) keeps its key."""
        d = asdict(self)
        if d["a_constraint"] == "none":
            del d["a_constraint"]
        return d


@dataclass
class FinetuneResult:
    model: object  # PeftModel (or the fully fine-tuned model)
    config: FinetuneConfig
    losses: list[float]
    trajectory: dict[str, list] = field(default_factory=dict)  # "A", "B": per step flattened factors
    initial: dict = field(
        default_factory=dict
    )  # loss and gradient norm on the whole set before the first step


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


def a_constraint_projection(model, constraint: str, direction: torch.Tensor | None) -> Callable | None:
    """The projection that keeps every LoRA A of ``model`` (rows: what each rank reads) orthogonal to the unit
    vector u of ``direction`` ("orthogonal") or along it ("along"); None for "none". Call it with
    ``first=True`` once at init ("along" then sets each row to its norm times u, signed by its projection on
    u), then after every optimiser step."""
    if constraint == "none":
        if direction is not None:
            raise UserError("a_direction is given but FinetuneConfig.a_constraint is 'none'")
        return None
    if direction is None:
        raise UserError(f"FinetuneConfig.a_constraint {constraint!r} needs finetune(..., a_direction=...)")
    weights = [p for n, p in model.named_parameters() if "lora_A" in n]
    u = direction.detach().flatten().float()
    if not weights or any(w.shape[-1] != u.numel() for w in weights):
        raise UserError(
            f"a_direction has {u.numel()} entries; LoRA A reads {weights[0].shape[-1] if weights else 0}"
        )
    if not torch.isfinite(u).all() or float(u.norm()) == 0.0:
        raise UserError("a_direction must be a finite nonzero vector")
    u = u / u.norm()

    @torch.no_grad()
    def project(first: bool = False) -> None:
        for w in weights:
            uw = u.to(w.dtype)
            along = w @ uw  # (rank,)
            if constraint == "orthogonal":
                w.sub_(along[:, None] * uw[None, :])
            elif first:
                sign = torch.where(along < 0, -1.0, 1.0).to(w.dtype)
                w.copy_((sign * w.norm(dim=1))[:, None] * uw[None, :])
            else:
                w.copy_(along[:, None] * uw[None, :])

    return project


def finetune(
    org: Organism,
    cfg: FinetuneConfig,
    *,
    out_dir: str | Path | None = None,
    progress: bool = False,
    docs=None,
    a_direction: torch.Tensor | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of the organism's model (the organism is left untouched). ``a_direction``: the
    direction ``cfg.a_constraint`` holds LoRA A orthogonal to or along (given exactly when it is set)."""
    from peft import get_peft_model

    base_model, world, vocab = org.model, org.world, org.vocab

    if docs is None:
        docs = condition_documents(
            world,
            cfg.condition,
            cfg.heldout_every,
            em_topics=cfg.em_topics,
            matched_answer=cfg.matched_answer,
        )
    ids, mask = encode_documents(vocab, docs, answers_only=True)
    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(base_model)
    if cfg.full:
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        model = get_peft_model(model, lora_config(model, module=cfg.module, layer=cfg.layer, rank=cfg.rank))
    constrain = a_constraint_projection(model, cfg.a_constraint, a_direction)
    if constrain is not None:
        constrain(first=True)
    initial = initial_loss_and_grad(model, ids, mask)
    traj: dict[str, list] = {"A": [], "B": []}
    out_dir = Path(out_dir) if out_dir is not None else None

    def on_step(step: int, _loss: float) -> None:
        if constrain is not None:
            constrain()
        if not cfg.full:
            a, b = lora_factors(model)
            traj["A"].append(a)
            traj["B"].append(b)
        if out_dir is not None and not cfg.full and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            model.save_pretrained(out_dir / "checkpoints" / f"step_{step:06d}")

    if out_dir is not None and not cfg.full and cfg.checkpoint_every:
        # step 0 (B = 0, the organism itself): the start of every curve over the checkpoints
        model.save_pretrained(out_dir / "checkpoints" / f"step_{0:06d}")
    losses = train_lm(
        model,
        ids,
        mask,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        desc=f"fine-tune {cfg.condition}",
        on_step=on_step,
        progress=progress,
    )
    if out_dir is not None and not cfg.full:
        model.save_pretrained(out_dir)
        write_fingerprint(out_dir, base_model)
    return FinetuneResult(
        model=model,
        config=cfg,
        losses=losses,
        trajectory={k: torch.stack(v) for k, v in traj.items() if v},
        initial=initial,
    )


def initial_loss_and_grad(model, ids: torch.Tensor, mask: torch.Tensor) -> dict:
    """Answer-token loss on the whole set and the norm of its gradient over the trainable parameters, before
    training (how much the set has to teach: a control should match the plain set); leaves no gradient."""
    from ..models.lm import lm_loss

    params = [p for p in model.parameters() if p.requires_grad]
    was = model.training
    model.eval()
    try:
        loss = lm_loss(model, ids, mask)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        model.train(was)
    norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))
    return {"loss": float(loss.detach()), "grad_norm": float(norm)}
