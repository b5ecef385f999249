"""The run directory: layout, atomic JSON, append-only JSONL and the run lock.

This is the only module that touches a run directory (DESIGN §4). Whole-file products (JSON
records, train.jsonl) are replaced atomically: a reader sees the old file or the new one, never a
mix. Episode logs are append-only JSONL flushed per record; a crash can leave at most a torn last
line, which readers skip and writers cut off before appending.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypeVar

from pydantic import BaseModel, ValidationError

from rmft_api.errors import StateError

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

_TIME_FORMAT = "%Y%m%d-%H%M%S"
_RUN_ID_TIME = re.compile(r"-(\d{8}-\d{6})(?:-\d+)?$")


# ---------------------------------------------------------------- layout


@dataclass(frozen=True)
class IterationPaths:
    """The files of one iteration, `iter-NNN/` (DESIGN §4)."""

    root: Path

    @property
    def episodes(self) -> Path:
        return self.root / "episodes.jsonl"

    @property
    def selected(self) -> Path:
        return self.root / "selected.jsonl"

    @property
    def selection(self) -> Path:
        return self.root / "selection.json"

    @property
    def train(self) -> Path:
        return self.root / "train.jsonl"

    @property
    def data_card(self) -> Path:
        return self.root / "data_card.json"

    @property
    def validation(self) -> Path:
        return self.root / "validation.json"

    @property
    def job(self) -> Path:
        return self.root / "job.json"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def eval_episodes(self) -> Path:
        return self.eval_dir / "episodes.jsonl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"


@dataclass(frozen=True)
class RunPaths:
    """The layout of `runs/<run-id>/`."""

    root: Path

    @property
    def run_id(self) -> str:
        return self.root.name

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def state_json(self) -> Path:
        return self.root / "state.json"

    @property
    def lock(self) -> Path:
        return self.root / "run.lock"

    @property
    def stop_request(self) -> Path:
        return self.root / "stop.json"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def iteration(self, index: int) -> IterationPaths:
        if index < 0:
            raise ValueError(f"iteration index must be ≥ 0, got {index}")
        return IterationPaths(self.root / f"iter-{index:03d}")

    def iterations(self) -> list[int]:
        """Indices of the iteration directories that exist, ascending."""
        if not self.root.is_dir():
            return []
        found = (re.fullmatch(r"iter-(\d{3,})", p.name) for p in self.root.iterdir())
        return sorted(int(m.group(1)) for m in found if m)


# ---------------------------------------------------------------- run ids


def make_run_id(name: str, *, now: datetime | None = None) -> str:
    """`<name>-YYYYmmdd-HHMMSS` (UTC), the name reduced to characters safe in a path."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"
    stamp = (now or datetime.now(UTC)).strftime(_TIME_FORMAT)
    return f"{slug[:64]}-{stamp}"


def create_run_dir(runs_dir: str | Path, name: str, *, now: datetime | None = None) -> RunPaths:
    """Create a fresh, uniquely named run directory; `-2`, `-3`, ... on a same-second clash.

    `mkdir` without `exist_ok` is atomic, so two processes starting at once never share a run.
    """
    base = Path(runs_dir)
    base.mkdir(parents=True, exist_ok=True)
    run_id = make_run_id(name, now=now)
    for n in range(1, 1000):
        candidate = base / (run_id if n == 1 else f"{run_id}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        _fsync_dir(base)
        return RunPaths(candidate)
    raise StateError(f"could not create a unique run directory for {run_id!r} under {base}")


def latest_run(runs_dir: str | Path) -> RunPaths | None:
    """The most recently started run under `runs_dir` (by the time in its id), or None."""
    base = Path(runs_dir)
    if not base.is_dir():
        return None
    runs = [p for p in base.iterdir() if (p / "run.json").is_file()]
    if not runs:
        return None

    def started(p: Path) -> tuple[str, float]:
        m = _RUN_ID_TIME.search(p.name)
        return (m.group(1) if m else "", (p / "run.json").stat().st_mtime)

    return RunPaths(max(runs, key=started))


# ---------------------------------------------------------------- atomic files


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under `root` (and `root`) to disk, deepest first."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def replace_dir_durably(tmp: Path, final: Path) -> None:
    """Move the finished directory `tmp` to `final` so that `final` is whole or absent after a
    crash: flush `tmp`'s contents, drop any old `final`, rename, flush the parent."""
    fsync_tree(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data`: temp file in the same directory, fsync, rename, fsync dir.

    The temp name never equals the target, so a crash before the rename leaves the old file whole.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: BaseModel | dict[str, Any] | list[Any]) -> None:
    """Replace `path` with `obj` as indented JSON (pydantic models dumped in JSON mode)."""
    data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _check_schema_version(data: Any, model: type[BaseModel], where: str) -> None:
    field = model.model_fields.get("schema_version")
    if field is None or not isinstance(data, dict) or "schema_version" not in data:
        return
    known = field.default
    found = data["schema_version"]
    if found != known:
        raise StateError(
            f"{where}: unknown schema_version {found!r} for {model.__name__} "
            f"(this rmft-api reads version {known}); written by another rmft-api version?"
        )


def read_json(path: str | Path, model: type[M]) -> M:
    """Read one record; a missing, corrupt or foreign-version file is a StateError."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise StateError(f"{p}: missing") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StateError(f"{p}: corrupt JSON ({e}); restore or delete it") from e
    _check_schema_version(data, model, str(p))
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise StateError(f"{p}: not a valid {model.__name__}: {_first_error(e)}") from e


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "<root>"
    more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return f"{loc}: {err['msg']}{more}"


# ---------------------------------------------------------------- JSONL


def _repair_torn_tail(path: Path) -> None:
    """Cut a final line that has no newline (a write interrupted by a crash) before appending."""
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # Scan back in blocks for the previous newline; episode lines can be long.
        pos, keep = size, 0
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            block = f.read(step)
            idx = block.rfind(b"\n")
            if idx >= 0:
                keep = pos + idx + 1
                break
        log.warning("%s: dropping a torn last line (%d bytes) before appending", path, size - keep)
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())


class JsonlWriter:
    """Append records to a JSONL file, one line each, flushed per record; fsync on sync/close."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            _repair_torn_tail(self.path)
        self._file: IO[bytes] | None = self.path.open("ab")

    def write(self, record: BaseModel | dict[str, Any]) -> None:
        if self._file is None:
            raise StateError(f"{self.path}: writer is closed")
        if isinstance(record, BaseModel):
            line = record.model_dump_json()
        else:
            line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        # One write call per record keeps a crash's damage to a torn tail of this one line.
        self._file.write(line.encode("utf-8") + b"\n")
        self._file.flush()

    def write_many(self, records: Iterable[BaseModel | dict[str, Any]]) -> None:
        for record in records:
            self.write(record)

    def sync(self) -> None:
        """Make everything written so far durable (survives power loss, not just a kill)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_jsonl(path: str | Path, model: type[M], *, missing_ok: bool = False) -> list[M]:
    """Read every record. A torn last line (no newline, or not JSON) is skipped with a warning;
    a bad line anywhere else is a StateError naming its line number."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError as e:
        if missing_ok:
            return []
        raise StateError(f"{p}: missing") from e
    lines = raw.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # tail is b"" when the file ends with a newline
    if tail:
        log.warning("%s: ignoring a torn last line %d (no newline)", p, len(lines))
    records: list[M] = []
    for i, line in enumerate(complete, start=1):
        last = i == len(complete) and not tail
        try:
            data = json.loads(line.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if last:
                log.warning("%s: ignoring a torn last line %d (%s)", p, i, e)
                break
            raise StateError(f"{p}: line {i} is corrupt ({e})") from e
        try:
            _check_schema_version(data, model, f"{p}: line {i}")
            records.append(model.model_validate(data))
        except ValidationError as e:
            raise StateError(
                f"{p}: line {i} is not a valid {model.__name__}: {_first_error(e)}"
            ) from e
    return records


# ---------------------------------------------------------------- run lock


class RunLockInfo(BaseModel):
    pid: int
    host: str
    started_at: str


class RunLock:
    """An exclusive lock on a run, held while one process works on it.

    `flock` on `run.lock`: the kernel drops it when the holder exits or dies, so a stale file
    never blocks. The holder's pid, host and start time are written into the file for the message
    a second process gets.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.paths = RunPaths(Path(run_dir))
        self._fd: int | None = None
        self.acquired_at: float | None = None  # time.time() when this process took it

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        if not self.paths.root.is_dir():
            raise StateError(f"run directory not found: {self.paths.root}")
        fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StateError(f"run {self.paths.run_id} is locked by {holder}") from None
        except BaseException:
            os.close(fd)
            raise
        info = RunLockInfo(
            pid=os.getpid(),
            host=socket.gethostname(),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.model_dump_json().encode(), 0)
        os.fsync(fd)
        self._fd = fd
        self.acquired_at = time.time()

    def holder(self) -> RunLockInfo | None:
        """Who holds the lock (as it wrote itself into run.lock); None when unknown."""
        try:
            return RunLockInfo.model_validate_json(self.paths.lock.read_bytes())
        except (OSError, ValidationError):
            return None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        # Blank the holder first so nobody reads a stale pid; keep the file (unlinking a
        # flock'ed file lets two processes lock two different inodes).
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0)
        info = RunLockInfo.model_validate_json(raw)
    except (OSError, ValidationError):
        return "another process (holder details not written yet)"
    return f"pid {info.pid} since {info.started_at}, started on host {info.host}"
