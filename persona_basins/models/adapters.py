"""PEFT adapters: rank-r LoRA on one module of one layer, resolving friendly module names per architecture."""

from __future__ import annotations

from ..errors import UserError

# Friendly names -> module path inside a decoder layer, per model family.
MODULE_ALIASES = {
    "gpt2": {
        "mlp_out": "mlp.c_proj",
        "down_proj": "mlp.c_proj",
        "attn_out": "attn.c_proj",
        "o_proj": "attn.c_proj",
        "mlp_in": "mlp.c_fc",
        "qkv": "attn.c_attn",
    },
    "llama": {
        "mlp_out": "mlp.down_proj",
        "down_proj": "mlp.down_proj",
        "attn_out": "self_attn.o_proj",
        "o_proj": "self_attn.o_proj",
        "up_proj": "mlp.up_proj",
        "gate_proj": "mlp.gate_proj",
        "q_proj": "self_attn.q_proj",
        "k_proj": "self_attn.k_proj",
        "v_proj": "self_attn.v_proj",
    },
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
        raise UserError(
            f"module {module!r} not in layer {layer} of this {fam or 'model'}; "
            f"available: {', '.join(sorted(available))}"
        )
    return target


def full_module_name(model, module: str, layer: int) -> str:
    """The full name of a friendly ``module`` (``mlp_out``) of decoder layer ``layer``, e.g.
    ``transformer.h.0.mlp.c_proj``; a full module name of the model is returned as it is."""
    names = dict(model.named_modules())
    if module in names:
        return module
    target = resolve_module(model, module, layer)
    pat = LAYER_PATTERNS.get(model_family(model), "layers")
    tail = f".{pat}.{layer}.{target}"
    found = [n for n in names if f".{n}".endswith(tail)]
    if len(found) != 1:
        raise UserError(f"cannot locate {module!r} of layer {layer} in this model")
    return found[0]


def lora_config(model, *, module: str, layer: int | None, rank: int = 1, alpha: float | None = None):
    """PEFT LoraConfig for ``module`` of one layer (``layer=None``: every layer)."""
    from peft import LoraConfig

    fam = model_family(model)
    target = resolve_module(model, module, 0 if layer is None else layer)
    kw = {}
    if layer is not None:
        kw = {"layers_to_transform": [layer], "layers_pattern": LAYER_PATTERNS.get(fam, "layers")}
    return LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        lora_dropout=0.0,
        target_modules=[target],
        bias="none",
        task_type="CAUSAL_LM",
        fan_in_fan_out=(fam == "gpt2"),
        init_lora_weights=True,
        **kw,
    )


__all__ = [
    "LAYER_PATTERNS",
    "MODULE_ALIASES",
    "full_module_name",
    "layer_module_names",
    "lora_config",
    "model_family",
    "num_layers",
    "resolve_module",
]
