"""PEFT adapters: rank-r LoRA on one module of one layer, resolving friendly module names per architecture."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError

# Friendly names -> module path inside a decoder layer, per model family.
MODULE_ALIASES = {
    "gpt2": {"mlp_out": "mlp.c_proj", "down_proj": "mlp.c_proj", "attn_out": "attn.c_proj",
             "o_proj": "attn.c_proj", "mlp_in": "mlp.c_fc", "qkv": "attn.c_attn"},
    "llama": {"mlp_out": "mlp.down_proj", "down_proj": "mlp.down_proj", "attn_out": "self_attn.o_proj",
              "o_proj": "self_attn.o_proj", "up_proj": "mlp.up_proj", "gate_proj": "mlp.gate_proj",
              "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj"},
}
LAYER_PATTERNS = {"gpt2": "h", "llama": "layers"}


def model_family(model) -> str:
    mt = getattr(model.config, "model_type", "")
    if mt in MODULE_ALIASES:
        return mt
    return "llama" if any(n.endswith("self_attn.o_proj") for n, _ in model.named_modules()) else mt


def num_layers(model) -> int:
    cfg = model.config
    for k in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(cfg, k, None):
            return int(getattr(cfg, k))
    raise UserError("cannot tell how many layers the model has")


def layer_module_names(model, layer: int) -> list[str]:
    """Names (relative to the layer) of the linear modules in one decoder layer."""
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    fam = model_family(model)
    pat = LAYER_PATTERNS.get(fam, "layers")
    out = []
    for name, mod in model.named_modules():
        parts = name.split(".")
        if isinstance(mod, nn.Linear | Conv1D) and pat in parts:
            i = parts.index(pat)
            if i + 1 < len(parts) and parts[i + 1] == str(layer):
                out.append(".".join(parts[i + 2 :]))
    return out


def resolve_module(model, module: str, layer: int) -> str:
    n = num_layers(model)
    if not 0 <= layer < n:
        raise UserError(f"layer {layer} out of range: the model has layers 0..{n - 1}")
    fam = model_family(model)
    target = MODULE_ALIASES.get(fam, {}).get(module, module)
    available = layer_module_names(model, layer)
    if target not in available:
        raise UserError(f"module {module!r} not in layer {layer} of this {fam or 'model'}; "
                        f"available: {', '.join(sorted(available))}")
    return target


def lora_config(model, *, module: str, layer: int | None, rank: int = 1, alpha: float | None = None):
    """PEFT LoraConfig for ``module`` of one layer (``layer=None``: every layer)."""
    from peft import LoraConfig

    fam = model_family(model)
    target = resolve_module(model, module, 0 if layer is None else layer)
    kw = {}
    if layer is not None:
        kw = {"layers_to_transform": [layer], "layers_pattern": LAYER_PATTERNS.get(fam, "layers")}
    return LoraConfig(
        r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=0.0, target_modules=[target],
        bias="none", task_type="CAUSAL_LM", fan_in_fan_out=(fam == "gpt2"), init_lora_weights=True, **kw,
    )


def base_fingerprint(model) -> dict:
    """What an adapter must match: architecture, shape, and a checksum of the embedding weights."""
    import torch

    emb = model.get_input_embeddings().weight.detach()
    return {
        "model_type": getattr(model.config, "model_type", None),
        "vocab_size": int(emb.shape[0]),
        "hidden_size": int(emb.shape[1]),
        "num_layers": num_layers(model),
        "embedding_checksum": float(torch.round(emb.double().abs().sum() * 1e4) / 1e4),
    }


FINGERPRINT_FILE = "persona_basins_base.json"


def write_fingerprint(adapter_dir: Path, base_model) -> None:
    from ..results import write_json

    write_json(Path(adapter_dir) / FINGERPRINT_FILE, base_fingerprint(base_model))


def load_adapter(base_model, adapter_dir: str | Path, *, adapter_name: str = "default"):
    """Wrap ``base_model`` with a saved PEFT adapter; refuse an adapter trained on another base model."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    cfg_file = adapter_dir / "adapter_config.json"
    if not cfg_file.is_file():
        raise UserError(f"not a PEFT adapter folder: {cfg_file} is missing")
    fp_file = adapter_dir / FINGERPRINT_FILE
    if fp_file.is_file():
        want = json.loads(fp_file.read_text())
        have = base_fingerprint(base_model)
        diff = [k for k in want if want[k] != have.get(k)]
        if diff:
            raise UserError(f"adapter {adapter_dir} was trained on another base model (differs in: "
                            f"{', '.join(diff)})")
    try:
        return PeftModel.from_pretrained(base_model, adapter_dir, adapter_name=adapter_name)
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"adapter {adapter_dir} does not fit this model: {str(e).splitlines()[0]}") from None
