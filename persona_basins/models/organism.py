"""The model organism: a small ``transformers`` causal LM trained from scratch on the persona world.

An organism folder is a Hugging Face model folder (``config.json`` with safetensors weights and the
tokenizer) so ``AutoModelForCausalLM.from_pretrained(dir)`` loads it anywhere, plus:

- ``world.json``     the world it was trained on (the ground truth),
- ``pretrained/``    the model before post-training (the "base model"),
- ``checkpoints/step_NNNNNN/``  pretraining checkpoints for LLC over the training trajectory,
- ``metrics.json``   the persona readout; the organism's own settings live in ``config.json`` under
  the ``persona_basins`` key, next to the HF settings,
- ``persona_basins_manifest.json``  written last: the SHA-256 of every other file (the organism's identity,
  checked on every load; :func:`organism_fingerprint` is a hash of it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..config import check, param
from ..errors import ConfigError, UserError
from ..world import World, WorldConfig

ORGANISM_FORMAT = "persona-basins-organism/1"
ARCHITECTURES = ("gpt2", "llama")


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


@dataclass(frozen=True)
class OrganismConfig:
    """The organism's architecture and training (saved in its ``config.json`` under ``persona_basins``)."""

    preset: str = param("default", choices=tuple(PRESETS), help="the preset these settings started from")
    seed: int = param(0, ge=0, le=2**32 - 1, help="world and training seed")
    arch: str = param(
        "gpt2",
        choices=ARCHITECTURES,
        help='"gpt2" (learned positions, GELU, LayerNorm) or "llama" (RoPE, SwiGLU, RMSNorm)',
    )
    n_layer: int = param(3, ge=1, help="transformer layers")
    d_model: int = param(96, ge=1, help="residual width (a multiple of n_head)")
    n_head: int = param(4, ge=1, help="attention heads")
    d_ff: int = param(384, ge=1, help="MLP hidden width")
    n_positions: int = param(64, ge=2, help="context length in tokens")
    tie_embeddings: bool = param(True, help="tie the input and output embeddings")
    pretrain_steps: int = param(1500, ge=1, le=10**7, help="pretraining steps")
    batch_size: int = param(64, ge=1, help="documents per training step")
    lr: float = param(2e-3, gt=0, le=1, help="pretraining peak learning rate (AdamW)")
    weight_decay: float = param(0.1, ge=0, help="AdamW weight decay")
    warmup_steps: int = param(50, ge=0, help="linear warm-up steps of the pretraining rate")
    sft_steps: int = param(150, ge=0, help="post-training steps (the assistant context made helpful)")
    sft_lr: float = param(2e-4, gt=0, le=1, help="post-training learning rate")
    checkpoint_every: int = param(100, ge=0, le=10**7, help="pretraining checkpoint interval (0: none)")
    world: WorldConfig = param(default_factory=WorldConfig, help="the world it is trained on")

    def __post_init__(self):
        check(self)
        if self.d_model % self.n_head:
            raise ConfigError(
                "OrganismConfig",
                "d_model",
                f"must be a multiple of n_head ({self.n_head}), got {self.d_model}",
            )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["world"] = self.world.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> OrganismConfig:
        d = dict(d)
        d["world"] = WorldConfig.from_dict(d.get("world", {}))
        return cls(**d)


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
    fingerprint: str = ""  # organism_fingerprint: the verified build manifest, when loaded from a folder

    @property
    def vocab(self) -> dict[str, int]:
        return self.tokenizer.get_vocab()

    def mixture_input_ids(self, n: int, seed: int):
        """``n`` right-padded documents from the pretraining mixture (held-out seed space)."""
        from .lm import encode_documents

        docs = self.world.sample_documents(n, seed=10_000_000 + seed)
        return encode_documents(self.vocab, docs)[0]

    def with_model(self, model) -> Organism:
        """The same organism (world, tokenizer, config, folder shared, not copied) around another weight state
        of it: a fine-tuned, adapted, edited or pretrained model. The fingerprint is cleared: it names the
        built weights, which ``model`` is not."""
        return dataclasses.replace(self, model=model, fingerprint="")


def is_organism(path: str | Path) -> bool:
    return (Path(path) / "world.json").is_file()


# --- identity: the build manifest ---------------------------------------------------------------------------
# The manifest, written last by `organism build`, records the SHA-256 of every file the build wrote: the
# weights (post-trained, pretrained, checkpoints), the HF config.json (the architecture: n_head, n_layer,
# activation_function, layer_norm_epsilon ..., and the organism settings under "persona_basins"), the
# tokenizer files, world.json and the readout. Loading verifies it, so a folder changed after the build is
# refused instead of giving other numbers; the fingerprint of a result's organism is a hash of it.
MANIFEST = "persona_basins_manifest.json"
MANIFEST_VERSION = 2  # 1 hashed only the two weight files
# what every complete manifest covers (a result depends on each of them)
IDENTITY_FILES = (
    "config.json",
    "model.safetensors",
    "pretrained/config.json",
    "pretrained/model.safetensors",
    "tokenizer.json",
    "world.json",
)
_REBUILD = "rebuild the organism (persona-basins organism build --force)"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: str | Path) -> dict:
    """Hash every file under ``folder`` into its manifest (the build calls this last)."""
    from ..results import write_json

    folder = Path(folder)
    files = sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST
    )
    manifest = {
        "format": ORGANISM_FORMAT,
        "manifest_version": MANIFEST_VERSION,
        "sha256": {rel: file_sha256(folder / rel) for rel in files},
    }
    write_json(folder / MANIFEST, manifest)
    return manifest


def verify_manifest(folder: str | Path) -> dict:
    """The organism's manifest after checking every file it lists; a one-line UserError when a file is
    missing or changed, or the manifest is missing, malformed or from an older version."""
    from ..results import read_json

    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise UserError(
            f"{folder} has no {MANIFEST} (not built by persona-basins, or unfinished); {_REBUILD}"
        )
    manifest = read_json(folder / MANIFEST, recover=_REBUILD, expect=dict)
    hashes = manifest.get("sha256")
    if manifest.get("manifest_version") != MANIFEST_VERSION or not isinstance(hashes, dict):
        raise UserError(
            f"{folder / MANIFEST} covers only the weights (written by an older version); {_REBUILD}"
        )
    missing = [rel for rel in IDENTITY_FILES if rel not in hashes]
    if missing:
        raise UserError(f"{folder / MANIFEST} does not list {', '.join(missing)}; {_REBUILD}")
    for rel, recorded in sorted(hashes.items()):
        f = folder / rel
        if not f.is_file():
            raise UserError(f"{f} is missing; {_REBUILD}")
        if file_sha256(f) != recorded:
            raise UserError(
                f"{f} does not match its recorded hash in {MANIFEST} (changed after the build); {_REBUILD}"
            )
    return manifest


def _manifest_fingerprint(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest["sha256"], sort_keys=True).encode()).hexdigest()


def organism_fingerprint(path_or_organism) -> str:
    """The identity of an organism: a SHA-256 over its verified build manifest (every file the build wrote,
    by relative path, so moving or copying the folder keeps it and any change to a file changes it).

    An :class:`Organism` from :func:`load_organism` carries the fingerprint verified when it was loaded; a
    folder is verified here.
    """
    if isinstance(path_or_organism, Organism):
        if not path_or_organism.fingerprint:
            raise UserError("this organism was not loaded from a built folder: it has no fingerprint")
        return path_or_organism.fingerprint
    path = Path(path_or_organism)
    if not path.is_dir():
        raise UserError(f"organism folder not found: {path}")
    if not is_organism(path):
        raise UserError(f"not an organism folder: {path / 'world.json'} is missing")
    return _manifest_fingerprint(verify_manifest(path))


def _load_hf(path: Path):
    from transformers import AutoModelForCausalLM

    try:  # use_safetensors=True: never falls back to unpickling a .bin
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    except Exception as e:  # noqa: BLE001 - safetensors and transformers raise many types; one line for all
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"cannot load model weights {path / 'model.safetensors'}: {msg}; {_REBUILD}"
        ) from None
    model.eval()
    return model


def _check_weights_present(model_dir: Path) -> None:
    if (model_dir / "model.safetensors").is_file():
        return
    pickles = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(p.name for p in model_dir.glob("*.pt"))
    if pickles:
        raise UserError(
            f"{model_dir} holds only pickle weights ({', '.join(pickles)}); persona-basins never "
            f"unpickles: save the model with safetensors (save_pretrained(..., "
            f"safe_serialization=True)) or rebuild the organism"
        )
    raise UserError(f"missing model weights: {model_dir / 'model.safetensors'}")


def load_organism(path: str | Path, *, stage: str = "post") -> Organism:
    """Load an organism folder. ``stage="post"`` the post-trained model, ``"pretrained"`` the base model.

    Every file the build wrote is checked against the manifest first (weights, architecture, tokenizer,
    world, settings): a folder changed after its build is a one-line UserError, never other numbers.
    """
    from transformers import PreTrainedTokenizerFast

    from ..results import read_json

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"organism folder not found: {path}")
    for need in ("world.json", "config.json", "tokenizer.json"):
        if not (path / need).is_file():
            raise UserError(f"not an organism folder: {path / need} is missing")
    model_dir = path if stage == "post" else path / "pretrained"
    _check_weights_present(model_dir)
    fingerprint = _manifest_fingerprint(verify_manifest(path))
    for name in ("world.json", "config.json"):
        read_json(path / name, recover=_REBUILD, expect=dict)
    try:
        world = World.from_json((path / "world.json").read_text(encoding="utf-8"))
        hf_cfg = read_json(path / "config.json", recover=_REBUILD, expect=dict)
        cfg = OrganismConfig.from_dict(hf_cfg["persona_basins"]["organism"])
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"corrupt organism metadata in {path}: {msg}; {_REBUILD}") from None
    try:
        tok = PreTrainedTokenizerFast.from_pretrained(path)
    except Exception as e:  # tokenizers raises its own exception types
        raise UserError(f"corrupt tokenizer in {path}: {str(e).splitlines()[0]}") from None
    model = _load_hf(model_dir)
    return Organism(model=model, tokenizer=tok, world=world, path=path, config=cfg, fingerprint=fingerprint)


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
