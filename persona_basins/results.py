"""The one result schema: every command writes a run folder with ``config.json``, ``metrics.json`` and figures.

Writes are atomic (temp file in the same folder, then ``os.replace``) so an interrupted command never leaves
a half-written file behind.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import UserError


def _clean(obj: Any) -> Any:
    """Make an object JSON-safe: numpy scalars/arrays to Python, NaN/inf to None."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if np is not None:
        if isinstance(obj, np.ndarray):
            return _clean(obj.tolist())
        if isinstance(obj, np.generic):
            return _clean(obj.item())
    if hasattr(obj, "tolist") and not isinstance(obj, str | bytes):  # torch tensors
        return _clean(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _file_mode() -> int:
    """0666 minus the umask (0644 with the usual umask): what ``open()`` would give, not mkstemp's 0600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def normalize_modes(root: str | Path) -> None:
    """Files 0644 and folders 0755 (with the usual umask) under ``root``: safetensors and mkdtemp write 0600 /
    0700, which would make a shared organism or run folder unreadable to the rest of a team."""
    root = Path(root)
    fmode = _file_mode()
    dmode = fmode | ((fmode & 0o444) >> 2)  # x wherever r
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, dmode)
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                os.chmod(p, fmode)


def jsonable(obj: Any) -> Any:
    """``obj`` as it will be written: numpy/torch values to Python, NaN/inf to None."""
    return _clean(obj)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temp file beside ``path``, then rename: readers see the old file or the new one.

    A full disk, a read-only folder or a file-size limit is a one-line :class:`UserError` naming the file;
    the temp file is removed.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except OSError as e:
        _unlink_quietly(tmp)
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return path


def _unlink_quietly(tmp) -> None:
    if tmp is not None:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically, with sorted keys so equal results give byte-identical files."""
    text = json.dumps(_clean(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def read_json(path: str | Path, *, recover: str | None = None) -> Any:
    """Read a JSON file; missing or malformed is a one-line UserError naming the file (and ``recover``,
    how to get past it, e.g. "delete it and rerun to recompute that unit")."""
    path = Path(path)
    hint = f"; {recover}" if recover else ""
    if not path.is_file():
        raise UserError(f"missing file: {path}{hint}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"malformed JSON in {path}: {e}{hint}") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}{hint}") from None


def prepare_out_dir(out: str | Path) -> Path:
    """Create ``out`` (and parents) or fail with a one-line error if it cannot be written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to --out {out}: {e.strerror or e}") from None
    return out


def environment() -> dict:
    """What besides the settings changes the last digits: torch version and its intra-op thread count."""
    import platform

    env = {"python": platform.python_version()}
    try:
        import torch

        env.update(torch_version=torch.__version__, torch_threads=torch.get_num_threads())
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return env


def _is_timing_key(key: str) -> bool:
    k = key.lower()
    return k == "seconds" or k.endswith("_seconds") or k.startswith("seconds_") or k.startswith("elapsed")


def split_timing(obj: Any) -> tuple[Any, Any]:
    """``(metrics without timing fields, the timing fields in the same nesting or None)``.

    Wall-clock times differ on every run; kept out of ``metrics.json`` so equal results compare byte for byte.
    """
    if isinstance(obj, dict):
        kept, timing = {}, {}
        for k, v in obj.items():
            if isinstance(k, str) and _is_timing_key(k):
                timing[k] = v
                continue
            kv, tv = split_timing(v)
            kept[k] = kv
            if tv is not None:
                timing[k] = tv
        return kept, (timing or None)
    if isinstance(obj, list | tuple):
        kept, timing = [], {}
        for i, v in enumerate(obj):
            kv, tv = split_timing(v)
            kept.append(kv)
            if tv is not None:
                timing[str(i)] = tv
        return kept, (timing or None)
    return obj, None


def _check_can_create(out: Path) -> None:
    """Check up front that ``out`` can be created and written, leaving nothing behind: the folders made for
    the check are removed again (the run creates them on first use)."""
    missing = []
    p = out
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        prepare_out_dir(out)
    finally:
        for d in missing:  # deepest first
            try:
                d.rmdir()
            except OSError:
                pass


class RunDir:
    """A run folder: ``config.json`` (what was asked), ``metrics.json`` (what was measured), ``timing.json``
    (wall-clock times, which differ run to run), figures.

    ``config.json`` is written together with ``metrics.json`` (so a failed command leaves no folder holding a
    config without results); it records the torch version and thread count besides the settings. Used as a
    context manager, a folder this run created is removed again if the command fails before writing into it.
    """

    def __init__(self, path: str | Path, kind: str, config: dict):
        self._path = Path(path)
        self._ready = False
        self._created = False
        if self._path.exists():
            self._make()  # an existing folder: check now that it can be written
        else:
            _check_can_create(
                self._path
            )  # created on first use, so a command failing before that leaves nothing
        self.kind = kind
        self.config = dict(config)
        self._config_pending = False

    def _make(self) -> Path:
        if not self._ready:
            existed = self._path.exists()
            prepare_out_dir(self._path)
            self._created, self._ready = not existed, True
        return self._path

    @property
    def path(self) -> Path:
        """The folder (created here on first use)."""
        return self._make()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self._created:
            try:
                self._path.rmdir()  # only if still empty: never removes anything the run wrote
            except OSError:
                pass

    def config_record(self) -> dict:
        return {"kind": self.kind, **self.config, "environment": environment()}

    def write_config(self) -> None:
        """Mark the config for writing; it lands on disk with the metrics (see the class docstring)."""
        self._config_pending = True

    def write_metrics(self, metrics: dict) -> Path:
        kept, timing = split_timing(dict(metrics))
        write_json(self.path / "config.json", self.config_record())
        self._config_pending = False
        if timing is not None:
            write_json(self.path / "timing.json", {"kind": self.kind, **timing})
        elif (self.path / "timing.json").is_file():
            (self.path / "timing.json").unlink()  # a stale one from an earlier run
        return write_json(self.path / "metrics.json", {"kind": self.kind, **kept})

    def figure_path(self, name: str) -> Path:
        (self.path / "figures").mkdir(exist_ok=True)
        return self.path / "figures" / name


def save_figure(fig, path: str | Path) -> Path:
    """Save a matplotlib figure atomically as PNG."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())
