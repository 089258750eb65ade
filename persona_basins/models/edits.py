"""Weight edits: the one home for reading LoRA deltas, walking ``w0 + t * delta`` and loading adapters.

Every study that perturbs a model does it through this module:

- :func:`lora_deltas` / :func:`single_lora_delta`: ``dW = scaling * B A`` of a PEFT LoRA model, written in the
  storage layout of the base module's ``.weight`` (``out x in`` for ``nn.Linear``, ``in x out`` for GPT-2's
  ``Conv1D``), keyed by the *parameter* name in the base model (``transformer.h.0.attn.c_proj.weight``);
- :func:`lora_b_path`: the same walk in adapter coordinates (``dW`` is linear in ``B``, so scaling every
  ``lora_B`` by ``t`` walks exactly along ``W0 + t dW``);
- :func:`edited`: a context manager that sets named parameters to ``w0 + t * delta`` and restores them
  exactly; :func:`merged_copy`: a copy of the model with the edit made permanent (same arithmetic);
- :func:`layer_of`: the decoder-layer index inside a parameter or module name;
- :func:`load_adapter` / :func:`adapter_on_copy`: a saved adapter on a model, refused with a one-line error
  when it was trained on another base model (checked against the persona-basins fingerprint when the adapter
  has one, else against what PEFT records and the shapes its weights need). Never unpickles: ``.bin``
  (pickle) adapters are refused.
"""

from __future__ import annotations

import contextlib
import copy
import re
from pathlib import Path

import torch

from ..errors import UserError

PEFT_PREFIXES = ("base_model.model.", "base_model.")
FINGERPRINT_FILE = "persona_basins_base.json"
_LAYER_RE = re.compile(r"\.(?:h|layers)\.(\d+)\.")


# --- names --------------------------------------------------------------------------------------------------
def base_name(name: str) -> str:
    """A name inside a PEFT-wrapped model with PEFT's prefix removed (the name in the base model)."""
    for prefix in PEFT_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def layer_of(name: str) -> int:
    """The decoder-layer index inside a module or parameter name such as ``transformer.h.0.mlp.c_proj``."""
    m = _LAYER_RE.search(f".{name}.")
    if not m:
        raise UserError(f"cannot tell the layer of {name!r}")
    return int(m.group(1))


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


# --- weight layout ------------------------------------------------------------------------------------------
def is_conv1d(module) -> bool:
    return type(module).__name__ == "Conv1D"


def out_in_dims(module) -> tuple[int, int]:
    """(output dim, input dim) of a Linear (weight out x in) or GPT-2 Conv1D (weight in x out)."""
    w = module.weight
    return (w.shape[1], w.shape[0]) if is_conv1d(module) else (w.shape[0], w.shape[1])


def to_storage(module, delta_out_in: torch.Tensor) -> torch.Tensor:
    """A delta written as ``out x in`` (the math convention) in the module's weight layout."""
    return delta_out_in.t().contiguous() if is_conv1d(module) else delta_out_in


def plain_module(model, module_name: str):
    """The ``nn.Linear`` / ``Conv1D`` named ``module_name`` (refuse a LoRA-wrapped one)."""
    import torch.nn as nn

    try:
        mod = model.get_submodule(module_name)
    except AttributeError:
        raise UserError(f"module {module_name!r} not found in the model") from None
    if hasattr(mod, "lora_A") or not (isinstance(mod, nn.Linear) or is_conv1d(mod)):
        raise UserError(
            f"module {module_name!r} is not a plain Linear/Conv1D (pass the base model, not a "
            f"PEFT-wrapped one)"
        )
    return mod


# --- reading deltas -----------------------------------------------------------------------------------------
def lora_deltas(peft_model, adapter: str | None = None) -> dict[str, torch.Tensor]:
    """``{parameter name in the base model: dW}`` for every LoRA module, in the base weight's own layout."""
    from peft.tuners.lora import LoraLayer

    adapter = adapter or getattr(peft_model, "active_adapter", "default")
    out = {}
    for name, mod in peft_model.named_modules():
        if isinstance(mod, LoraLayer) and adapter in getattr(mod, "lora_A", {}):
            key = f"{base_name(name)}.weight"
            w = mod.get_base_layer().weight
            with torch.no_grad():
                d = mod.get_delta_weight(adapter).detach().clone().float()
            if d.shape != w.shape and d.T.shape == w.shape:
                d = d.T.contiguous()
            if d.shape != w.shape:
                raise UserError(f"LoRA delta of {key} has shape {tuple(d.shape)}, weight {tuple(w.shape)}")
            out[key] = d
    if not out:
        raise UserError("the model has no LoRA modules (is it a PEFT LoRA model?)")
    return out


def single_lora_delta(peft_model) -> tuple[str, torch.Tensor]:
    """``(module name, dW)`` of a one-module adapter (the module's name in the base model)."""
    deltas = lora_deltas(peft_model)
    if len(deltas) != 1:
        raise UserError(f"expected an adapter on exactly one module, found {len(deltas)}")
    ((pname, delta),) = deltas.items()
    return pname[: -len(".weight")], delta


def lora_b_path(peft_model) -> tuple[dict, dict]:
    """``(origin, delta)`` over the ``lora_B`` parameters: zeros and their trained values."""
    delta = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_B" in n}
    if not delta:
        raise UserError("the model has no lora_B parameters (is it a PEFT LoRA model?)")
    return {n: v.new_zeros(v.shape) for n, v in delta.items()}, delta


# --- applying deltas ----------------------------------------------------------------------------------------
def _params(model, names) -> dict:
    named = dict(model.named_parameters())
    missing = [k for k in names if k not in named]
    if missing:
        raise UserError(f"parameters not in the model: {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    return {k: named[k] for k in names}


def _check_plain(model, names) -> None:
    """A weight edit is made on the base model, never through a LoRA-wrapped module."""
    for pname in names:
        mod_name = pname.rsplit(".", 1)[0]
        with contextlib.suppress(AttributeError):
            if hasattr(model.get_submodule(mod_name), "lora_A"):
                raise UserError(f"module {mod_name!r} is LoRA-wrapped: pass the base model, not a PEFT one")


def _set(params: dict, w0: dict, deltas: dict, t: float) -> None:
    # One arithmetic for every edit (w0 + t * delta, rounded once per product), so a scan, an LLC path and a
    # merged copy at the same t hold bit-identical weights.
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(w0[k] + float(t) * deltas[k].to(p.dtype))


@contextlib.contextmanager
def edited(
    model, deltas: dict[str, torch.Tensor], t: float, *, origin: dict[str, torch.Tensor] | None = None
):
    """Inside the block each named parameter is ``origin + t * delta`` (origin: its current value); the
    parameters are restored exactly afterwards, also on error."""
    params = _params(model, deltas)
    _check_plain(model, deltas)
    for k, d in deltas.items():
        if tuple(d.shape) != tuple(params[k].shape):
            raise UserError(f"delta shape {tuple(d.shape)} does not match {k} {tuple(params[k].shape)}")
    if origin:
        bad = [k for k in origin if k not in deltas]
        if bad:
            raise UserError(f"origin names not in delta: {bad[:3]}")
    saved = {k: p.detach().clone() for k, p in params.items()}
    w0 = {k: (origin[k] if origin and k in origin else saved[k]).detach() for k in deltas}
    try:
        _set(params, w0, deltas, t)
        yield model
    finally:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(saved[k])


def merged_copy(model, deltas: dict[str, torch.Tensor], t: float):
    """A copy of ``model`` with ``t * dW`` added to each named parameter (``t = 0``: the model, exactly)."""
    m = copy.deepcopy(model)
    if t != 0:
        params = _params(m, deltas)
        _set(params, {k: p.detach().clone() for k, p in params.items()}, deltas, t)
    m.eval()
    return m


def clean_base(peft_model):
    """A copy of the model a PEFT model wraps, without any adapter layer."""
    m = copy.deepcopy(peft_model)
    return m.unload() if hasattr(m, "unload") else m.get_base_model()


# --- loading adapters ---------------------------------------------------------------------------------------
def base_fingerprint(model) -> dict:
    """What an adapter must match: architecture, shape, and a checksum of the embedding weights."""
    from .adapters import num_layers

    emb = model.get_input_embeddings().weight.detach()
    return {
        "model_type": getattr(model.config, "model_type", None),
        "vocab_size": int(emb.shape[0]),
        "hidden_size": int(emb.shape[1]),
        "num_layers": num_layers(model),
        "embedding_checksum": float(torch.round(emb.double().abs().sum() * 1e4) / 1e4),
    }


def write_fingerprint(adapter_dir: Path, base_model) -> None:
    from ..results import write_json

    write_json(Path(adapter_dir) / FINGERPRINT_FILE, base_fingerprint(base_model))


def _read_json_file(path: Path, what: str) -> dict:
    from ..results import read_json

    try:
        return read_json(path, expect=dict)
    except UserError as e:
        raise UserError(f"malformed {what}: {e}") from None


def _adapter_tensors_shapes(adapter_dir: Path) -> dict[str, tuple]:
    """Tensor shapes from the safetensors header, read without loading (and refusing) anything else."""
    from safetensors import safe_open

    st = adapter_dir / "adapter_model.safetensors"
    if not st.is_file():
        if (adapter_dir / "adapter_model.bin").is_file():
            raise UserError(
                f"adapter {adapter_dir} has only adapter_model.bin (a pickle, never loaded here); "
                f"re-save it with safetensors (PEFT's save_pretrained default)"
            )
        raise UserError(f"adapter {adapter_dir} has no adapter_model.safetensors")
    try:
        with safe_open(str(st), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error types for a bad header or a truncated file
        raise UserError(f"corrupt adapter weights {st}: {str(e).splitlines()[0]}") from None
    return shapes


def _check_shapes(base_model, shapes: dict[str, tuple], adapter_dir: Path) -> None:
    """Each lora_A reads the module's input width, each lora_B writes its output width."""
    for key, shape in shapes.items():
        m = re.match(r"^(?:base_model\.model\.)?(.*)\.lora_([AB])(?:\.[^.]+)?\.weight$", key)
        if not m:
            continue
        mod_name, which = m.group(1), m.group(2)
        try:
            mod = base_model.get_submodule(mod_name)
        except AttributeError:
            raise UserError(
                f"adapter {adapter_dir} adapts {mod_name!r}, which this model does not have"
            ) from None
        if not hasattr(mod, "weight") or getattr(mod.weight, "ndim", 0) != 2:
            continue
        d_out, d_in = out_in_dims(mod)
        ok = shape[1] == d_in if which == "A" else shape[0] == d_out
        if len(shape) != 2 or not ok:
            raise UserError(
                f"adapter {adapter_dir} does not fit this model: {key} has shape {shape}, the "
                f"module {mod_name} maps {d_in} -> {d_out}"
            )


def verify_adapter(base_model, adapter_dir: str | Path) -> None:
    """Refuse (one-line :class:`UserError`) an adapter folder that was not trained on ``base_model``."""
    adapter_dir = Path(adapter_dir)
    cfg_file = adapter_dir / "adapter_config.json"
    if not cfg_file.is_file():
        raise UserError(f"not a PEFT adapter folder: {cfg_file} is missing")
    cfg = _read_json_file(cfg_file, "adapter config")
    shapes = _adapter_tensors_shapes(adapter_dir)
    fp_file = adapter_dir / FINGERPRINT_FILE
    if fp_file.is_file():
        want = _read_json_file(fp_file, "base-model fingerprint")
        have = base_fingerprint(base_model)
        diff = [k for k in want if want[k] != have.get(k)]
        if diff:
            raise UserError(
                f"adapter {adapter_dir} was trained on another base model (differs in: {', '.join(diff)})"
            )
    else:
        # An ordinary PEFT adapter: what PEFT records, then the shapes its weights need.
        recorded = cfg.get("base_model_name_or_path")
        ours = getattr(base_model.config, "_name_or_path", None) or getattr(base_model, "name_or_path", None)
        if recorded and ours and Path(str(recorded)).name != Path(str(ours)).name:
            raise UserError(
                f"adapter {adapter_dir} was trained on {recorded!r}, not {ours!r} "
                f"(base_model_name_or_path in adapter_config.json)"
            )
    _check_shapes(base_model, shapes, adapter_dir)


def _check_keys_match_config(peft_model, adapter_dir: Path, adapter_name: str) -> None:
    """Every tensor the adapter's config creates is in its weights file, and nothing else is.

    PEFT builds the LoRA modules from ``adapter_config.json`` and loads the weights non-strictly: a file whose
    keys name another layer or module would leave ``lora_B`` at zero, a silent unadapted model.
    """
    from peft import get_peft_model_state_dict

    expected = set(get_peft_model_state_dict(peft_model, adapter_name=adapter_name))
    stored = set(_adapter_tensors_shapes(adapter_dir))
    if expected == stored:
        return
    missing, extra = sorted(expected - stored), sorted(stored - expected)
    what = [f"lacks {base_name(missing[0])!r}"] if missing else []
    what += [f"holds {base_name(extra[0])!r}"] if extra else []
    raise UserError(
        f"adapter {adapter_dir}: adapter_model.safetensors does not match its adapter_config.json (it "
        f"{' and '.join(what)}; {len(missing)} missing, {len(extra)} unexpected): refusing what would load "
        f"as a zero adapter"
    )


def load_adapter(base_model, adapter_dir: str | Path, *, adapter_name: str = "default"):
    """Wrap ``base_model`` (in place) with a saved PEFT adapter after :func:`verify_adapter`; the weights
    file must hold exactly the tensors its config creates (see :func:`_check_keys_match_config`)."""
    from peft import PeftModel

    verify_adapter(base_model, adapter_dir)
    try:
        model = PeftModel.from_pretrained(base_model, Path(adapter_dir), adapter_name=adapter_name)
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        raise UserError(f"adapter {adapter_dir} does not fit this model: {str(e).splitlines()[0]}") from None
    try:
        _check_keys_match_config(model, Path(adapter_dir), adapter_name)
    except UserError:
        with contextlib.suppress(Exception):  # give the caller its base model back without the LoRA layers
            model.unload()
        raise
    return model


def adapter_on_copy(base_model, adapter_dir: str | Path):
    """A saved adapter on a copy of ``base_model`` (the base model itself stays clean), in eval mode."""
    model = load_adapter(copy.deepcopy(base_model), adapter_dir)
    model.eval()
    return model


__all__ = [
    "FINGERPRINT_FILE",
    "adapter_on_copy",
    "base_fingerprint",
    "base_name",
    "clean_base",
    "edited",
    "is_conv1d",
    "is_peft",
    "layer_of",
    "load_adapter",
    "lora_b_path",
    "lora_deltas",
    "merged_copy",
    "out_in_dims",
    "plain_module",
    "single_lora_delta",
    "to_storage",
    "verify_adapter",
    "write_fingerprint",
]
