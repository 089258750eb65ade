"""Run folders and the one run store: every command writes a run folder with ``config.json``,
``metrics.json`` and figures; every result that resumes is built once under its key (:func:`get_or_run`).

Writes are atomic (temp file or folder beside the target, then a rename) so an interrupted command never
leaves a half-written file behind, and every JSON file read back goes through :func:`read_json`.
"""

from __future__ import annotations

import errno
import glob
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ArgumentError, UserError


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


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_json(path: str | Path, *, recover: str | None = None, expect: type | None = None) -> Any:
    """The one reader of every JSON file the program reads back: any failure is a one-line UserError naming
    the file (and ``recover``, how to get past it, e.g. "delete it and rerun to recompute that unit").

    Missing, unreadable, not UTF-8, malformed, nested too deeply (``RecursionError``), an integer too long to
    convert (``ValueError``), too large for memory: all one line. ``expect`` (e.g. ``dict``) also refuses
    another top-level type.
    """
    path = Path(path)
    hint = f"; {recover}" if recover else ""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: missing file{hint}") from None
    except IsADirectoryError:
        raise UserError(f"{path}: a folder, not a JSON file{hint}") from None
    except MemoryError:
        raise UserError(f"{path}: too large to read{hint}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror or e}){hint}") from None
    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}){hint}") from None
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path}: malformed JSON (line {e.lineno}, column {e.colno}: {e.msg}){hint}"
        ) from None
    except RecursionError:
        raise UserError(f"{path}: malformed JSON (nested too deeply){hint}") from None
    except MemoryError:
        raise UserError(f"{path}: too large to read{hint}") from None
    except ValueError as e:  # an integer literal longer than Python converts
        raise UserError(f"{path}: malformed JSON ({_first_line(e).split(';')[0]}){hint}") from None
    if expect is not None and not isinstance(obj, expect):
        wanted = "an object" if expect is dict else f"a {expect.__name__}"
        raise UserError(f"{path}: malformed (top level is {type(obj).__name__}, expected {wanted}){hint}")
    return obj


def as_stored(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, NaN becomes None): what a stored key is
    compared with."""
    return json.loads(json.dumps(_clean(obj), allow_nan=False))


def prepare_out_dir(out: str | Path) -> Path:
    """Create ``out`` (and parents) or fail with a one-line error if it cannot be written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArgumentError("out", f"{out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ArgumentError("out", f"{out} cannot be written: {e.strerror or e}") from None
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


# --- hidden work folders beside a target --------------------------------------------------------------------
# A temp folder is named ``.NAME.<tag>-PID-RANDOM`` beside the folder NAME it will become, on the same
# filesystem (so the final rename is atomic). A later call removes those whose process is gone.


def _hidden_beside(folder: Path, tag: str) -> list[Path]:
    if not folder.parent.is_dir():
        return []
    return sorted(folder.parent.glob(f".{glob.escape(folder.name)}.{tag}-*"))


def owner_alive(leftover: Path, prefix: str) -> bool:
    """Whether the process whose id follows ``prefix`` in the leftover's name (``PID-...``) still runs."""
    try:
        pid = int(leftover.name[len(prefix) :].split("-", 1)[0])
    except ValueError:
        return False
    if pid == os.getpid():
        return False  # ours, from an earlier call that could not clean up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _dead_leftovers(folder: Path, tag: str) -> list[Path]:
    prefix = f".{folder.name}.{tag}-"
    return [p for p in _hidden_beside(folder, tag) if not owner_alive(p, prefix)]


def _make_temp_beside(folder: Path, tag: str) -> Path:
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{folder.name}.{tag}-{os.getpid()}-", dir=folder.parent))
    except OSError as e:
        raise UserError(f"cannot write to {folder.parent}: {e.strerror or e}") from None


def _remove_tree(path: Path) -> None:
    """Remove ``path`` by renaming it aside first, so no reader sees it half deleted."""
    trash = path.with_name(f".{path.name}.old-{os.getpid()}-{os.urandom(4).hex()}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


# --- the run store ------------------------------------------------------------------------------------------
KEY_FILE = "key.json"


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix or "(the whole key)": obj}


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if value is not _ABSENT else "absent"
    return text if len(text) <= 24 else text[:20] + "..."


_ABSENT = object()


def key_differences(have: Any, want: Any, *, limit: int = 3) -> str:
    """The settings in which two keys differ, as flat dotted names with their values:
    ``finetune.steps 5 -> 6, organism "3fa1..." -> "9b0c..." and 2 more``."""
    flat_have, flat_want = _flatten(have), _flatten(want)
    names = sorted(
        n for n in {*flat_have, *flat_want} if flat_have.get(n, _ABSENT) != flat_want.get(n, _ABSENT)
    )
    shown = [
        f"{n} {_short(flat_have.get(n, _ABSENT))} -> {_short(flat_want.get(n, _ABSENT))}"
        for n in names[:limit]
    ]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(shown) + more


FORCE_REMEDY = "--force recomputes it, or use another --out"


def is_finished(
    folder: str | Path,
    key: dict,
    *,
    force: bool = False,
    key_file: str = KEY_FILE,
    remedy: str = FORCE_REMEDY,
) -> bool:
    """True when ``folder`` holds a finished result with this very ``key`` (reuse it); False when there is
    nothing to reuse (no folder, an empty one, or ``force`` on a folder this program wrote).

    A folder holding another key is a one-line :class:`UserError` naming the settings that differ and then
    ``remedy`` (how to get past it: a caller without ``--force`` says what it offers instead); a folder
    without ``key_file`` is not ours and is refused even with ``force``.
    """
    folder = Path(folder)
    if not folder.exists():
        return False
    if not folder.is_dir():
        raise UserError(f"{folder} exists and is not a folder")
    stored = folder / key_file
    if not stored.exists():
        if not any(folder.iterdir()):
            return False
        raise UserError(
            f"{folder} holds files without {key_file} (an older version's or someone else's); refusing to "
            f"replace them: use another --out or delete {folder}"
        )
    if force:
        return False
    have = read_json(stored, recover=f"delete {folder} and rerun to recompute it (or pass --force)")
    want = as_stored(key)
    if have == want:
        return True
    raise UserError(f"{folder} holds a result from other settings ({key_differences(have, want)}); {remedy}")


def get_or_run(
    folder: str | Path,
    key: dict,
    build: Callable[[Path], Any],
    *,
    force: bool = False,
    key_file: str = KEY_FILE,
    remedy: str = FORCE_REMEDY,
) -> Path:
    """The one run store: ``folder`` holding ``key`` (everything its contents depend on), built once.

    If ``folder/key_file`` equals ``key`` (as stored JSON) the folder is returned as it is (resume). If it
    holds another key: a one-line :class:`UserError` naming the settings that differ; ``force`` deletes the
    folder (only when it holds our key file: never a user's files) and rebuilds. Otherwise ``build(tmp)``
    fills a temp folder beside ``folder`` (same filesystem), the key file is written last, and the temp
    folder is renamed into place. If another process finished the same key first, theirs is kept and ours
    dropped. Temp folders of killed runs are removed on the next call. ``remedy``: as for
    :func:`is_finished`.
    """
    folder = Path(folder)
    for leftover in _dead_leftovers(folder, "tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
    if is_finished(folder, key, force=force, key_file=key_file, remedy=remedy):
        return folder
    stored = as_stored(key)
    if force and (folder / key_file).exists():
        _remove_tree(folder)
    tmp = _make_temp_beside(folder, "tmp")
    try:
        build(tmp)
        write_json(tmp / key_file, stored)  # written last: its presence marks the result finished
        normalize_modes(tmp)  # mkdtemp makes 0700, safetensors 0600; results are meant to be shared
        try:
            os.rename(tmp, folder)  # onto a missing or an empty folder
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise UserError(f"cannot write {folder}: {e.strerror or e}") from None
            if not is_finished(folder, key, key_file=key_file, remedy=remedy):  # a concurrent run's key
                raise UserError(f"cannot write {folder}: another process is writing it") from None
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent run finished the same key first: keep it
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


# --- the --out rule and run folders -------------------------------------------------------------------------
RUN_MARKER = ".persona_basins_run.json"  # the kind of a run folder whose record is not written yet
RECORD = frozenset({"config.json", "metrics.json", "timing.json", "figures"})  # replaced together
KIND_FILES = ("config.json", "metrics.json", RUN_MARKER, "study.json", "sweep.json")  # where a kind is kept
ORGANISM_FILES = ("world.json", "persona_basins_manifest.json")


def recorded_kind(folder: str | Path) -> str | None:
    """The kind of run recorded in ``folder`` (``config.json``, ``metrics.json``, ...), or None.

    A record file that cannot be read, when no other names the kind, is a one-line UserError naming it.
    """
    folder = Path(folder)
    damaged = None
    for name in KIND_FILES:
        if (folder / name).is_file():
            try:
                obj = read_json(folder / name, recover="delete it, or choose another --out")
            except UserError as e:
                damaged = damaged or e
                continue
            if isinstance(obj, dict) and isinstance(obj.get("kind"), str):
                return obj["kind"]
    if damaged is not None:
        raise damaged
    return None


def check_out_dir(out: str | Path, kind: str) -> None:
    """The one rule for every command's ``--out``: a missing or empty folder, or a run of the same ``kind``
    (which the new run replaces as one unit or resumes). An organism, a run of another kind or files this
    program did not write are refused with one line, before anything is written."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise ArgumentError("out", f"{out} exists and is not a directory")
    if any((out / name).exists() for name in ORGANISM_FILES):
        raise ArgumentError("out", f"{out} holds an organism; choose another folder")
    found = recorded_kind(out)
    if found == kind:
        return
    if found is not None:
        raise ArgumentError(
            "out", f"{out} holds a run of another kind ({found}, not {kind}); choose another folder"
        )
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    if visible:
        shown = ", ".join(visible[:3]) + (" ..." if len(visible) > 3 else "")
        raise ArgumentError(
            "out", f"{out} holds files this program did not write ({shown}); choose another folder"
        )


def _dir_mode() -> int:
    fmode = _file_mode()
    return fmode | ((fmode & 0o444) >> 2)


class _FolderLock:
    """An exclusive lock on a folder (flock on its descriptor; released by the OS if the process dies)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.folder, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing releases the lock


def recover_swaps(folder: str | Path) -> None:
    """Finish or undo the record swaps of killed runs beside ``folder`` (see :func:`replace_record`)."""
    folder = Path(folder)
    for stage in _dead_leftovers(folder, "swap"):
        if not folder.exists():  # killed between the two renames: the stage is the complete new folder
            os.rename(stage, folder)
            continue
        for entry in stage.iterdir():  # killed while moving the work over: move it back
            if entry.name not in RECORD and not (folder / entry.name).exists():
                os.rename(entry, folder / entry.name)
        shutil.rmtree(stage, ignore_errors=True)
    for old in _dead_leftovers(folder, "old"):
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)


def replace_record(folder: Path, files: dict[str, Any]) -> None:
    """Write the JSON ``files`` as the record of run ``folder``, replacing the old record as one unit.

    The new record is written in a folder beside (a full disk or a file-size limit stops here, with the old
    folder untouched); then, under a lock, the work the run wrote into ``folder`` (units, adapters) moves
    into it, and two renames swap it in. The old record and figures are dropped together.
    """
    stage = _make_temp_beside(folder, "swap")
    try:
        for name, obj in files.items():
            write_json(stage / name, obj)
        os.chmod(stage, _dir_mode())
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    try:
        with _FolderLock(folder.parent):
            if folder.is_dir():
                for entry in sorted(folder.iterdir()):
                    if entry.name not in RECORD:
                        os.rename(entry, stage / entry.name)
                old = folder.with_name(f".{folder.name}.old-{os.getpid()}-{os.urandom(4).hex()}")
                os.rename(folder, old)
                os.rename(stage, folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(stage, folder)
    except OSError as e:
        recover_swaps(folder)  # put the work back where it was
        shutil.rmtree(stage, ignore_errors=True)
        raise UserError(f"cannot write the run folder {folder}: {e.strerror or e}") from None


class RunDir:
    """A run folder: ``config.json`` (what was asked), ``metrics.json`` (what was measured), ``timing.json``
    (wall-clock times, which differ run to run), figures, and any work the study keeps there (units).

    ``--out`` follows :func:`check_out_dir` (checked when the RunDir is made, before anything is written).
    The record (config, metrics, timing) is written by :meth:`write_metrics` as one unit beside the folder
    and swapped in, so a failure never leaves a new config beside old metrics, and a folder that did not
    exist before never holds a config without results. ``config.json`` records the torch version and
    thread count besides the settings. Used as a context manager, a folder this run created is removed
    again if the command fails before writing into it.
    """

    def __init__(self, path: str | Path, kind: str, config: dict):
        self._path = Path(path)
        self.kind = kind
        self.config = dict(config)
        self._ready = False
        self._created = False
        self._marked = False
        recover_swaps(self._path)
        check_out_dir(self._path, kind)
        if self._path.exists():
            self._make()  # an existing folder: check now that it can be written
        else:
            _check_can_create(self._path)  # created on first use: a command failing before leaves nothing

    def _make(self) -> Path:
        if not self._ready:
            existed = self._path.exists()
            prepare_out_dir(self._path)
            self._created, self._ready = not existed, True
            if recorded_kind(self._path) is None:  # claim it: a killed run's folder resumes as this kind
                write_json(self._path / RUN_MARKER, {"kind": self.kind})
                self._marked = True
        return self._path

    @property
    def path(self) -> Path:
        """The folder (created here on first use)."""
        return self._make()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or not self._marked:
            return
        # only a folder holding nothing but our claim is cleaned: never anything the run wrote
        if [p.name for p in self._path.iterdir()] == [RUN_MARKER]:
            (self._path / RUN_MARKER).unlink()
            if self._created:
                self._path.rmdir()

    def config_record(self) -> dict:
        return {"kind": self.kind, **self.config, "environment": environment()}

    def write_metrics(self, metrics: dict) -> Path:
        kept, timing = split_timing(dict(metrics))
        files = {"config.json": self.config_record(), "metrics.json": {"kind": self.kind, **kept}}
        if timing is not None:
            files["timing.json"] = {"kind": self.kind, **timing}
        replace_record(self.path, files)
        return self.path / "metrics.json"

    def figure_path(self, name: str) -> Path:
        (self.path / "figures").mkdir(exist_ok=True)
        return self.path / "figures" / name


def save_figure(fig, path: str | Path) -> Path:
    """Save a matplotlib figure atomically as PNG."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


@dataclass(frozen=True)
class StudyResult:
    """What every study's ``run_*`` returns: the run folder it wrote (None when it wrote none), the metrics as
    written to ``metrics.json`` (or the study's summary when it writes no folder), and the data its command's
    figures are drawn from (empty when the metrics are enough)."""

    run_dir: Path | None
    metrics: dict
    figure_data: dict = field(default_factory=dict)
