"""The model organism: a small ``transformers`` causal LM trained from scratch on the persona world.

An organism folder is a Hugging Face model folder (``config.json`` with safetensors weights and the
tokenizer) so ``AutoModelForCausalLM.from_pretrained(dir)`` loads it anywhere, plus:

- ``world.json``     the world it was trained on (the ground truth),
- ``pretrained/``    the model before post-training (the "base model"),
- ``checkpoints/step_NNNNNN/``  pretraining checkpoints for LLC over the training trajectory,
- ``metrics.json``   the persona readout; the organism's own settings live in ``config.json`` under
  the ``persona_basins`` key, next to the HF settings.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..world import World, WorldConfig

ORGANISM_FORMAT = "persona-basins-organism/1"


@dataclass(frozen=True)
class OrganismConfig:
    preset: str = "default"
    seed: int = 0
    arch: str = "gpt2"  # "gpt2" (learned positions, GELU, LayerNorm) or "llama" (RoPE, SwiGLU, RMSNorm)
    n_layer: int = 3
    d_model: int = 96
    n_head: int = 4
    d_ff: int = 384
    n_positions: int = 64
    tie_embeddings: bool = True
    pretrain_steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    sft_steps: int = 150
    sft_lr: float = 2e-4
    checkpoint_every: int = 100
    world: WorldConfig = field(default_factory=WorldConfig)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["world"] = self.world.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> OrganismConfig:
        d = dict(d)
        d["world"] = WorldConfig.from_dict(d.get("world", {}))
        return cls(**d)


PRESETS: dict[str, dict] = {
    # for tests: seconds on a laptop CPU
    "tiny": dict(
        n_layer=2,
        d_model=48,
        n_head=2,
        d_ff=128,
        pretrain_steps=500,
        batch_size=32,
        lr=5e-3,
        warmup_steps=20,
        sft_steps=40,
        checkpoint_every=100,
        world=dict(n_genres=6, n_topics=6, content_pool=4, n_routine_questions=8),
    ),
    # the organism of the studies: ~0.35M parameters, a couple of minutes on 2 cores
    "default": dict(),
}


def preset_config(preset: str, seed: int = 0, **overrides) -> OrganismConfig:
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    d = dict(PRESETS[preset])
    world = {**d.pop("world", {}), **overrides.pop("world", {}), "seed": seed}
    d.update(overrides)
    return OrganismConfig(preset=preset, seed=seed, world=WorldConfig(**world), **d)


def build_model(cfg: OrganismConfig, vocab_size: int):
    """A randomly initialised HF causal LM for the organism (seeded by the caller)."""
    if cfg.arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        hf = GPT2Config(
            vocab_size=vocab_size,
            n_positions=cfg.n_positions,
            n_embd=cfg.d_model,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_inner=cfg.d_ff,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=2,
            eos_token_id=3,
            pad_token_id=0,
            tie_word_embeddings=cfg.tie_embeddings,
        )
        return GPT2LMHeadModel(hf)
    if cfg.arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        hf = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.d_model,
            intermediate_size=cfg.d_ff,
            num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head,
            num_key_value_heads=cfg.n_head,
            max_position_embeddings=cfg.n_positions,
            bos_token_id=2,
            eos_token_id=3,
            pad_token_id=0,
            tie_word_embeddings=cfg.tie_embeddings,
        )
        return LlamaForCausalLM(hf)
    raise UserError(f"unknown arch {cfg.arch!r}; choose gpt2 or llama")


@dataclass
class Organism:
    model: object
    tokenizer: object
    world: World
    path: Path
    config: OrganismConfig

    @property
    def vocab(self) -> dict[str, int]:
        return self.tokenizer.get_vocab()

    def mixture_input_ids(self, n: int, seed: int):
        """``n`` right-padded documents from the pretraining mixture (held-out seed space)."""
        from .lm import encode_documents

        docs = self.world.sample_documents(n, seed=10_000_000 + seed)
        return encode_documents(self.vocab, docs)[0]


def is_organism(path: str | Path) -> bool:
    return (Path(path) / "world.json").is_file()


def _load_hf(path: Path):
    from transformers import AutoModelForCausalLM

    try:  # use_safetensors=True: never falls back to unpickling a .bin
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    except Exception as e:  # noqa: BLE001 - safetensors and transformers raise many types; one line for all
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"cannot load model weights {path / 'model.safetensors'}: {msg}; "
            f"rebuild the organism (persona-basins organism build --force)"
        ) from None
    model.eval()
    return model


def load_organism(path: str | Path, *, stage: str = "post") -> Organism:
    """Load an organism folder. ``stage="post"`` the post-trained model, ``"pretrained"`` the base model."""
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"organism folder not found: {path}")
    for need in ("world.json", "config.json", "tokenizer.json"):
        if not (path / need).is_file():
            raise UserError(f"not an organism folder: {path / need} is missing")
    for name in ("world.json", "config.json"):
        try:
            json.loads((path / name).read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            raise UserError(
                f"corrupt organism file {path / name}: {str(e).splitlines()[0]}; rebuild the organism "
                f"(persona-basins organism build --force)"
            ) from None
    try:
        world = World.from_json((path / "world.json").read_text())
        hf_cfg = json.loads((path / "config.json").read_text())
        cfg = OrganismConfig.from_dict(hf_cfg["persona_basins"]["organism"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"corrupt organism metadata in {path}: {msg}; rebuild the organism "
            f"(persona-basins organism build --force)"
        ) from None
    try:
        tok = PreTrainedTokenizerFast.from_pretrained(path)
    except Exception as e:  # tokenizers raises its own exception types
        raise UserError(f"corrupt tokenizer in {path}: {str(e).splitlines()[0]}") from None
    model_dir = path if stage == "post" else path / "pretrained"
    if not (model_dir / "model.safetensors").is_file():
        pickles = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(
            p.name for p in model_dir.glob("*.pt")
        )
        if pickles:
            raise UserError(
                f"{model_dir} holds only pickle weights ({', '.join(pickles)}); persona-basins never "
                f"unpickles: save the model with safetensors (save_pretrained(..., "
                f"safe_serialization=True)) or rebuild the organism"
            )
        raise UserError(f"missing model weights: {model_dir / 'model.safetensors'}")
    model = _load_hf(model_dir)
    return Organism(model=model, tokenizer=tok, world=world, path=path, config=cfg)


def list_checkpoints(path: str | Path) -> list[tuple[int, Path]]:
    """Pretraining checkpoints of an organism, sorted by step."""
    ck = Path(path) / "checkpoints"
    out = []
    for d in sorted(ck.glob("step_*")) if ck.is_dir() else []:
        try:
            out.append((int(d.name.split("_")[1]), d))
        except (IndexError, ValueError):
            continue
    return sorted(out)
