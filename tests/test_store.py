"""The run store: atomic JSON survives a kill, torn JSONL tails are skipped, the lock excludes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import BaseModel

from rmft_api.errors import StateError
from rmft_api.store import (
    JsonlWriter,
    RunLock,
    RunPaths,
    create_run_dir,
    latest_run,
    make_run_id,
    read_json,
    read_jsonl,
    write_json_atomic,
)


class Rec(BaseModel):
    schema_version: int = 1
    i: int
    text: str = ""


def _run(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# ---------------------------------------------------------------- layout and ids


def test_layout_names(tmp_path: Path) -> None:
    run = RunPaths(tmp_path / "r")
    it = run.iteration(3)
    assert it.root.name == "iter-003"
    assert it.eval_episodes == tmp_path / "r" / "iter-003" / "eval" / "episodes.jsonl"
    assert {run.run_json.name, run.state_json.name, run.lock.name} == {
        "run.json",
        "state.json",
        "run.lock",
    }
    for i in (0, 2, 10):
        run.iteration(i).root.mkdir(parents=True)
    (run.root / "iter-x").mkdir()
    assert run.iterations() == [0, 2, 10]


def test_run_ids_unique_and_latest(tmp_path: Path) -> None:
    t = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert make_run_id("my run/../x", now=t) == "my-run-..-x-20260301-120000"
    a = create_run_dir(tmp_path, "demo", now=t)
    b = create_run_dir(tmp_path, "demo", now=t)
    assert a.root != b.root and b.run_id.endswith("-2")
    later = create_run_dir(tmp_path, "aaa", now=datetime(2026, 3, 2, tzinfo=UTC))
    for r in (a, b, later):
        write_json_atomic(r.run_json, {"x": 1})
    latest = latest_run(tmp_path)
    assert latest is not None and latest.root == later.root
    assert latest_run(tmp_path / "none") is None


# ---------------------------------------------------------------- atomic JSON


def test_json_roundtrip_and_errors(tmp_path: Path) -> None:
    p = tmp_path / "a" / "rec.json"
    write_json_atomic(p, Rec(i=7, text="é"))
    assert read_json(p, Rec) == Rec(i=7, text="é")
    assert [q.name for q in p.parent.iterdir()] == ["rec.json"]  # no temp left behind

    p.write_text('{"schema_version": 1, "i": ')
    with pytest.raises(StateError, match="corrupt JSON"):
        read_json(p, Rec)
    p.write_text('{"schema_version": 2, "i": 1}')
    with pytest.raises(StateError, match="unknown schema_version 2"):
        read_json(p, Rec)
    p.write_text('{"schema_version": 1, "i": "x"}')
    with pytest.raises(StateError, match="not a valid Rec"):
        read_json(p, Rec)
    with pytest.raises(StateError, match="missing"):
        read_json(tmp_path / "nope.json", Rec)


def test_atomic_write_killed_before_rename_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_json_atomic(target, Rec(i=1))
    # The child writes a new version but is SIGKILLed at the moment it would rename.
    code = """
        import os, signal, sys
        from rmft_api import store
        def die(src, dst):
            assert os.path.basename(src) != os.path.basename(dst)
            os.kill(os.getpid(), signal.SIGKILL)
        store.os.replace = die
        store.write_json_atomic(sys.argv[1], {"schema_version": 1, "i": 2, "text": "x" * 100000})
    """
    proc = _run(code, str(target))
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    assert read_json(target, Rec) == Rec(i=1)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "state.json"]
    assert len(leftovers) == 1 and leftovers[0].endswith(".tmp")  # the fully written temp


def test_atomic_write_under_random_kills_is_never_torn(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_json_atomic(target, Rec(i=0))
    code = """
        import sys
        from rmft_api.store import write_json_atomic
        i = 0
        print("ready", flush=True)
        while True:
            i += 1
            write_json_atomic(sys.argv[1], {"schema_version": 1, "i": i, "text": "y" * 200000})
    """
    for delay in (0.05, 0.13, 0.31):
        proc = _run(code, str(target))
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        rec = read_json(target, Rec)  # always a whole version, never a mix
        assert rec.i == 0 or len(rec.text) == 200000


# ---------------------------------------------------------------- JSONL


def test_jsonl_append_and_torn_last_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "episodes.jsonl"
    with JsonlWriter(p) as w:
        w.write_many([Rec(i=0), Rec(i=1)])
        w.write({"schema_version": 1, "i": 2})
    assert [r.i for r in read_jsonl(p, Rec)] == [0, 1, 2]

    # A crash mid-write: part of a line, no newline.
    with p.open("ab") as f:
        f.write(b'{"schema_version": 1, "i": 3, "te')
    with caplog.at_level("WARNING"):
        assert [r.i for r in read_jsonl(p, Rec)] == [0, 1, 2]
    assert "torn last line" in caplog.text

    # Appending after the crash cuts the torn tail first, so the file stays readable.
    with JsonlWriter(p) as w:
        w.write(Rec(i=3))
    assert [r.i for r in read_jsonl(p, Rec)] == [0, 1, 2, 3]
    assert p.read_bytes().count(b"\n") == 4


def test_jsonl_invalid_last_line_with_newline_is_torn(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_text('{"schema_version": 1, "i": 0}\n{"schema_version": 1, "i"\n')
    assert [r.i for r in read_jsonl(p, Rec)] == [0]


def test_jsonl_corrupt_middle_line_is_named(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    good = '{"schema_version": 1, "i": 0}\n'
    p.write_text(good + '{"schema_version": 1, "i": \n' + good)
    with pytest.raises(StateError, match="line 2 is corrupt"):
        read_jsonl(p, Rec)
    p.write_text('{"schema_version": 1, "i": 0}\n{"schema_version": 1, "i": "zz"}\n')
    with pytest.raises(StateError, match="line 2 is not a valid Rec"):
        read_jsonl(p, Rec)
    p.write_text('{"schema_version": 9, "i": 0}\n')
    with pytest.raises(StateError, match="line 1: unknown schema_version 9"):
        read_jsonl(p, Rec)


def test_jsonl_missing(tmp_path: Path) -> None:
    assert read_jsonl(tmp_path / "none.jsonl", Rec, missing_ok=True) == []
    with pytest.raises(StateError, match="missing"):
        read_jsonl(tmp_path / "none.jsonl", Rec)


def test_jsonl_killed_writer_leaves_readable_prefix(tmp_path: Path) -> None:
    p = tmp_path / "episodes.jsonl"
    code = """
        import sys
        from rmft_api.store import JsonlWriter
        with JsonlWriter(sys.argv[1]) as w:
            i = 0
            while True:
                w.write({"schema_version": 1, "i": i, "text": "z" * 5000})
                if i == 50:
                    print("ready", flush=True)
                i += 1
    """
    proc = _run(code, str(p))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    recs = read_jsonl(p, Rec)
    assert len(recs) > 50 and [r.i for r in recs] == list(range(len(recs)))


# ---------------------------------------------------------------- lock


_HOLD = """
    import sys, time
    from rmft_api.store import RunLock
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
"""


def test_lock_excludes_second_process(tmp_path: Path) -> None:
    run = create_run_dir(tmp_path, "locked")
    holder = _run(_HOLD, str(run.root))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        # A second process is refused with who holds it.
        code = """
            import sys
            from rmft_api.errors import StateError
            from rmft_api.store import RunLock
            try:
                RunLock(sys.argv[1]).acquire()
            except StateError as e:
                print(e)
                sys.exit(3)
        """
        other = _run(code, str(run.root))
        out, err = other.communicate(timeout=60)
        assert other.returncode == 3, err
        assert f"run {run.run_id} is locked by pid {holder.pid} since" in out
        assert "started on host" in out
        # So is this process.
        with pytest.raises(StateError, match=f"pid {holder.pid}"):
            RunLock(run.root).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # The holder died without releasing: the kernel dropped the flock; the stale file is no bar.
    assert json.loads(run.lock.read_text())["pid"] == holder.pid
    with RunLock(run.root) as lock:
        assert lock.held
        assert json.loads(run.lock.read_text())["pid"] == os.getpid()
    assert not lock.held and run.lock.read_text() == ""
    with RunLock(run.root):  # released cleanly, can be taken again
        pass


def test_lock_needs_run_dir(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="not found"):
        RunLock(tmp_path / "missing").acquire()
