"""Which parameters move: resolve a ``restrict`` specification to flat index sets (see
:func:`select_parameters`).

Layer membership comes from the one place that knows layer names,
:func:`persona_basins.models.edits.layer_of`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from ...errors import UserError
from ...models.edits import layer_of

__all__ = ["select_parameters"]

_RESTRICT_LAYER_RE = re.compile(r"^layers?[:=]?(\d+)(?:[./,: ]+heads?[:=]?(\d+))?$")


def _in_layer(name: str, i: int) -> bool:
    try:
        return layer_of(name) == i
    except UserError:
        return False


def _adapter_names(model) -> list[str]:
    cfg = getattr(model, "peft_config", None)
    return list(cfg) if isinstance(cfg, Mapping) else []


def _is_adapter_param(model, name: str) -> bool:
    for a in _adapter_names(model):
        if f".{a}." in name or name.endswith(f".{a}"):
            return True
    return "lora_" in name


def _attn_geometry(model):
    cfg = getattr(model, "config", None)
    if cfg is None and hasattr(model, "get_base_model"):
        cfg = model.get_base_model().config
    heads = getattr(cfg, "num_attention_heads", None)
    if not heads:
        raise UserError(
            "head restriction needs a model config with num_attention_heads (Llama-style attention)"
        )
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return int(heads), int(kv), int(hd)


def _head_selection(model, layer: int, head: int, named: dict) -> dict:
    import torch

    with torch.device("cpu"):  # index arithmetic on the CPU whatever the default device; moved later
        return _head_indices(model, layer, head, named)


def _head_indices(model, layer: int, head: int, named: dict) -> dict:
    import torch

    heads, kv, hd = _attn_geometry(model)
    if not 0 <= head < heads:
        raise UserError(f"head {head} out of range: the model has {heads} attention heads per layer")
    kvh = head // max(1, heads // kv)
    out = {}
    for name, p in named.items():
        if not _in_layer(name, layer) or _is_adapter_param(model, name):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in ("weight", "bias"):
            continue
        if "c_attn" in name:  # GPT-2: fused q|k|v, Conv1D weight [d, 3d] (outputs are columns)
            d = p.shape[-1] // 3
            cols = torch.cat([torch.arange(j * d + head * hd, j * d + (head + 1) * hd) for j in range(3)])
            if p.dim() == 1:
                out[name] = cols
            else:
                out[name] = (torch.arange(p.shape[0]).unsqueeze(1) * p.shape[1] + cols.unsqueeze(0)).reshape(
                    -1
                )
            continue
        if "attn.c_proj" in name and leaf == "weight" and p.dim() == 2:  # GPT-2 output proj: inputs are rows
            r = torch.arange(head * hd, (head + 1) * hd).unsqueeze(1) * p.shape[1]
            out[name] = (r + torch.arange(p.shape[1]).unsqueeze(0)).reshape(-1)
            continue
        if "q_proj" in name:
            rows, nrows = range(head * hd, (head + 1) * hd), heads * hd
        elif "k_proj" in name or "v_proj" in name:
            rows, nrows = range(kvh * hd, (kvh + 1) * hd), kv * hd
        elif "o_proj" in name and leaf == "weight":
            if p.shape[-1] != heads * hd:
                continue
            r = torch.arange(p.shape[0]).unsqueeze(1) * p.shape[1]
            c = torch.arange(head * hd, (head + 1) * hd).unsqueeze(0)
            out[name] = (r + c).reshape(-1)
            continue
        else:
            continue
        if p.shape[0] != nrows:
            continue
        cols = p.shape[1] if p.dim() == 2 else 1
        r = torch.tensor(list(rows)).unsqueeze(1) * cols
        out[name] = (r + torch.arange(cols).unsqueeze(0)).reshape(-1)
    if not out:
        raise UserError(
            f"restrict=layer:{layer}/head:{head} matches no attention projection (q/k/v/o_proj or c_attn)"
        )
    return out


def select_parameters(model, restrict=None) -> tuple[dict, str]:
    """Resolve ``restrict`` to ``{param name: flat index tensor or None (whole tensor)}`` and a description.

    ``restrict`` may be: ``None`` (every parameter with ``requires_grad``; all parameters if none has it),
    ``"adapter"`` (the PEFT adapter parameters), ``"layer:I"`` or an ``int`` (transformer block ``I``),
    ``"layer:I/head:H"`` or ``{"layer": I, "head": H}`` (the q/k/v rows and o_proj columns of one attention
    head; with grouped-query attention the shared k/v head moves too), a regular expression searched in the
    parameter names (optionally prefixed ``re:``), a list of names/patterns, or ``callable(name, param) ->
    bool``. Raises :class:`UserError` if nothing matches.
    """
    named = {n: p for n, p in model.named_parameters() if p.is_floating_point()}
    if not named:
        raise UserError(f"{type(model).__name__} has no floating-point parameters")
    desc = "all" if restrict is None else repr(restrict)
    if restrict is None:
        chosen = [n for n, p in named.items() if p.requires_grad] or list(named)
        if len(chosen) < len(named):
            desc = "requires_grad"
        return {n: None for n in chosen}, desc
    layer = head = None
    if isinstance(restrict, bool):
        raise UserError(f"restrict={restrict!r} is not a valid restriction")
    if isinstance(restrict, int):
        layer = restrict
    elif isinstance(restrict, Mapping):
        layer, head = restrict.get("layer"), restrict.get("head")
        if layer is None:
            raise UserError(f"restrict={dict(restrict)!r} needs a 'layer' key")
    elif isinstance(restrict, str):
        s = restrict.strip()
        m = _RESTRICT_LAYER_RE.match(s)
        if s in ("adapter", "lora", "peft"):
            chosen = [n for n in named if _is_adapter_param(model, n)]
            if not chosen:
                raise UserError(
                    f"restrict={restrict!r}: {type(model).__name__} has no PEFT adapter parameters"
                )
            return {n: None for n in chosen}, "adapter"
        if m:
            layer, head = int(m.group(1)), (int(m.group(2)) if m.group(2) is not None else None)
        else:
            pat = s[3:] if s.startswith("re:") else s
            try:
                rx = re.compile(pat)
            except re.error as e:
                raise UserError(f"restrict={restrict!r} is not a valid regular expression: {e}") from None
            chosen = [n for n in named if rx.search(n)]
            if not chosen:
                raise UserError(f"restrict={restrict!r} matches no parameter of {type(model).__name__}")
            return {n: None for n in chosen}, f"pattern:{pat}"
    elif callable(restrict):
        chosen = [n for n, p in named.items() if restrict(n, p)]
        if not chosen:
            raise UserError(f"restrict callable matches no parameter of {type(model).__name__}")
        return {n: None for n in chosen}, "callable"
    elif isinstance(restrict, Iterable):
        pats = [str(x) for x in restrict]
        chosen = [n for n in named if any(n == p or re.search(p, n) for p in pats)]
        if not chosen:
            raise UserError(f"restrict={pats!r} matches no parameter of {type(model).__name__}")
        return {n: None for n in chosen}, f"names:{len(chosen)}"
    else:
        raise UserError(f"restrict of type {type(restrict).__name__} is not supported")
    if head is not None:
        return _head_selection(model, int(layer), int(head), named), f"layer:{layer}/head:{head}"
    chosen = [n for n in named if _in_layer(n, int(layer)) and not _is_adapter_param(model, n)]
    if not chosen:
        chosen = [n for n in named if _in_layer(n, int(layer))]
    if not chosen:
        raise UserError(f"restrict=layer:{layer} matches no parameter of {type(model).__name__}")
    return {n: None for n in chosen}, f"layer:{layer}"
