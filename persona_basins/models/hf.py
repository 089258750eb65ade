"""One loader for Hugging Face causal LMs: a hub id or a local folder, on a device, in a dtype.

``load_causal_lm(ref, device="auto", dtype="auto", device_map=None) -> (model, tokenizer)``

- ``device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
- ``dtype``: ``auto`` (bfloat16 on a GPU that supports it, else float32), ``fp32``, ``bf16``, ``fp16``.
- ``device_map="auto"``: spread a model larger than one device over every GPU (and the CPU) with
  ``accelerate``, which is optional: without it this is a one-line error, not an import traceback.
- Weights are read from safetensors only (``use_safetensors=True``): a folder that holds only pickle files
  (``pytorch_model.bin``, ``*.pt``) is refused, never unpickled, and a truncated or corrupt safetensors file
  is a one-line error naming it. The tokenizer must be a fast (Rust) one: chat formatting locates the answer
  tokens by character offsets.
- The model comes back in eval mode with every parameter frozen (``requires_grad=False``) unless asked.

Every problem a user can fix is a :class:`~persona_basins.errors.UserError` with a one-line message.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import UserError

DTYPE_NAMES = {
    "fp32": "float32",
    "float32": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
}
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def looks_local(ref: str) -> bool:
    """A path (absolute, relative with ./, ~, or more than one '/') or an existing folder, not a hub id."""
    ref = str(ref)
    return ref.startswith(("/", "./", "../", "~", ".\\")) or ref.count("/") > 1 or Path(ref).exists()


def resolve_device(device: str | None = "auto"):
    """``auto`` -> ``cuda`` when a GPU is available, else ``cpu``; a named device is checked to exist."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"device {device!r}: no CUDA GPU is available (torch.cuda.is_available() is False)"
            )
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise UserError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif d.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"device {device!r}: MPS is not available on this machine")
    elif d.type != "cpu":
        raise UserError(f"unsupported device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    return d


def bf16_supported(device) -> bool:
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu"  # CPU kernels exist for bf16 (slow but correct); mps: not everywhere


def resolve_dtype(dtype: str | None = "auto", device=None):
    """``auto`` -> bfloat16 on a CUDA GPU that supports it, else float32 (CPU, older GPUs, MPS)."""
    import torch

    device = resolve_device("auto") if device is None else device
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" and bf16_supported(device) else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = DTYPE_NAMES.get(str(dtype).lower())
    if name is None:
        raise UserError(f"unknown dtype {dtype!r}; use {', '.join(DTYPE_CHOICES)}")
    out = getattr(torch, name)
    if out is torch.bfloat16 and not bf16_supported(device):
        raise UserError(f"dtype bf16 is not supported on {device}; use fp32 (or fp16)")
    return out


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def require_accelerate(what: str = "device_map='auto'") -> None:
    if importlib.util.find_spec("accelerate") is None:
        raise UserError(f"{what} needs the optional package accelerate (pip install accelerate)")


def check_model_folder(path: Path) -> None:
    """Refuse, with one line, a folder that cannot be a safetensors HF model (checked before
    transformers reads it)."""
    from safetensors import safe_open

    if not path.exists():
        raise UserError(f"model folder not found: {path}")
    if not path.is_dir():
        raise UserError(f"model path {path} is not a folder")
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a Hugging Face model folder: config.json is missing")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        from ..results import read_json

        try:
            shards = sorted(set(read_json(index)["weight_map"].values()))
        except (UserError, KeyError, TypeError, AttributeError):
            raise UserError(f"{index}: malformed safetensors index (expected a 'weight_map')") from None
        files = [path / s for s in shards]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UserError(
                f"{path}: safetensors shard(s) listed in the index are missing: {', '.join(missing)}"
            )
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise UserError(
                f"{path} holds only pickle weights ({', '.join(pickles[:3])}); persona-basins never "
                "unpickles: convert them to safetensors where you trust the file "
                "(model.save_pretrained(dir, safe_serialization=True))"
            )
        raise UserError(f"{path} has no model weights (expected model.safetensors)")
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as h:
                h.keys()
        except Exception as e:  # SafetensorError has no stable import path across versions
            raise UserError(f"corrupt safetensors file {f}: {_first_line(e)}") from None


def load_tokenizer(ref: str):
    """The fast tokenizer of a hub id or local folder (offsets are needed to locate answer tokens)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(ref, use_fast=True)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError, TypeError, AttributeError) as e:
        raise UserError(f"cannot load the tokenizer of {ref}: {_first_line(e)}") from None
    if not getattr(tok, "is_fast", False):
        raise UserError(
            f"the tokenizer of {ref} has no fast (Rust) version; character offsets are needed to "
            "locate the answer tokens"
        )
    return tok


def _dtype_kwarg() -> str:
    """transformers >= 4.56 calls the from_pretrained argument ``dtype`` (``torch_dtype`` before)."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def load_causal_lm(
    ref: str | Path,
    *,
    device: str | None = "auto",
    dtype=None,
    device_map: str | None = None,
    requires_grad: bool = False,
    tokenizer: bool = True,
):
    """``(model, tokenizer)`` for a hub id or local folder; see the module docstring for the arguments.

    ``dtype=None`` means ``auto``. With ``device_map`` the model is placed by accelerate and ``device`` is not
    used for the weights (inputs go to :func:`input_device`). ``tokenizer=False`` returns ``(model, None)``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    ref = str(ref)
    local = looks_local(ref)
    src = str(Path(ref).expanduser()) if local else ref
    if local:
        check_model_folder(Path(src))
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    kw = {_dtype_kwarg(): torch_dtype, "use_safetensors": True}
    if device_map is not None:
        if device_map != "auto":
            raise UserError(f"unknown device_map {device_map!r}; use 'auto' (or none)")
        require_accelerate()
        kw["device_map"] = "auto"
    tok = load_tokenizer(src) if tokenizer else None
    try:
        model = AutoModelForCausalLM.from_pretrained(src, **kw)
    except torch.cuda.OutOfMemoryError:
        raise UserError(f"model {ref} does not fit in GPU memory in {dtype_name(torch_dtype)}") from None
    except (OSError, ValueError, KeyError, RuntimeError, ImportError, TypeError, AttributeError) as e:
        msg = _first_line(e)
        if not local and "safetensors" in msg.lower():
            msg = f"no safetensors weights ({msg}); persona-basins never unpickles .bin files"
        raise UserError(f"cannot load model {ref}: {msg}") from None
    if device_map is None:
        try:
            model = model.to(dev)
        except torch.cuda.OutOfMemoryError:
            raise UserError(
                f"model {ref} ({param_count(model) / 1e9:.2f}B parameters, {dtype_name(torch_dtype)}) "
                f"does not fit on {dev}; try device_map 'auto' (needs accelerate) or dtype 'bf16'"
            ) from None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(requires_grad)
    return model, tok


def input_device(model):
    """Where the input ids go: the device of the input embeddings (with device_map, the first shard)."""
    return model.get_input_embeddings().weight.device


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")


def context_length(model) -> int | None:
    """Positions the model can read, from its config (``max_position_embeddings``, GPT-2's ``n_positions``,
    ...); None when the config names none."""
    cfg = getattr(model, "config", None)
    for key in CONTEXT_KEYS:
        value = getattr(cfg, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
