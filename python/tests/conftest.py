"""Fixtures of the Python SDK tests: real writer processes and the other readers.

Run by `cargo test --test python_sdk` (tests/python_sdk.rs), which passes the paths below in the
environment: EDGEPLEX_BIN (the edgeplex binary), EDGEPLEX_TEST_EXE (the Rust test binary, whose
`writer_child` and `reader_child` are the library's writer and reader), EDGEPLEX_C_LIB
(libedgeplex_ring_c.a), EDGEPLEX_ROOT (the checkout) and EDGEPLEX_EXAMPLES (the ring crate's
examples, for the bench).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

MARK = "EDGEPLEX>"
WATCHDOG = 60


def need(var: str) -> str:
    value = os.environ.get(var)
    if not value:
        pytest.fail(f"{var} is not set: run these tests with `cargo test --test python_sdk`")
    return value


class WriterChild:
    """The library's Writer in its own process (tests/python_sdk.rs, writer_child)."""

    def __init__(self, path: Path, *, width: int = 64, height: int = 48, slots: int = 16,
                 fill: str = "pattern") -> None:
        env = dict(os.environ, EDGEPLEX_SDK_WRITER=str(path), EDGEPLEX_SDK_WIDTH=str(width),
                   EDGEPLEX_SDK_HEIGHT=str(height), EDGEPLEX_SDK_SLOTS=str(slots),
                   EDGEPLEX_SDK_FILL=fill)
        self.proc = subprocess.Popen(
            [need("EDGEPLEX_TEST_EXE"), "writer_child", "--exact", "--nocapture",
             "--test-threads=1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ready = self.expect("ready")

    def expect(self, word: str) -> dict:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if MARK in line:
                rest = line.split(MARK, 1)[1].split()
                assert rest[0] == word, line
                return dict(kv.split("=") for kv in rest[1:])
        raise AssertionError(f"writer child exited before '{word}': {self.proc.wait()}")

    def command(self, cmd: str) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return int(self.expect("published")["head"])

    def stop(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        assert self.proc.wait(timeout=WATCHDOG) == 0


@pytest.fixture
def ring_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="edgeplex-pytest-", dir="/dev/shm") as d:
        yield Path(d)


@pytest.fixture
def writers() -> Iterator[List[WriterChild]]:
    started: List[WriterChild] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


@pytest.fixture
def start_writer(writers):
    def start(path: Path, **kw) -> WriterChild:
        w = WriterChild(path, **kw)
        writers.append(w)
        return w
    return start


def edgeplex(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPLEX_LOG")}
    return subprocess.run([need("EDGEPLEX_BIN"), *args], capture_output=True, text=True,
                          timeout=WATCHDOG, env=env, **kw)


def demo_ring(ring_dir: Path, stream: str) -> Path:
    """Where `edgeplex demo` put a stream's ring (<dir>/S.ring, or <dir>/S/S.ring)."""
    found = sorted(glob.glob(f"{ring_dir}/**/{stream}.ring", recursive=True))
    assert found, f"no {stream}.ring under {ring_dir}: {list(ring_dir.rglob('*'))}"
    return Path(found[0])


def cat_lines(path: Path, *args: str) -> List[dict]:
    out = edgeplex("ring", "cat", str(path), "--meta", "--hash", *args)
    assert out.returncode == 0, out.stderr
    return [json.loads(l) for l in out.stdout.splitlines()]


def c_reader(build_dir: Path) -> Optional[Path]:
    """examples/read.c built with cc against libedgeplex_ring_c.a, or None (outside CI) when
    the library has not been built."""
    lib = Path(need("EDGEPLEX_C_LIB"))
    if not lib.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{lib} missing: cargo test --workspace builds it")
        return None
    root = Path(need("EDGEPLEX_ROOT")) / "crates/edgeplex-ring-c"
    exe = build_dir / "read-c"
    subprocess.run(["cc", "-std=c11", "-Wall", "-Werror", "-I", str(root / "include"),
                    str(root / "examples/read.c"), str(lib), "-lpthread", "-ldl", "-lm",
                    "-o", str(exe)], check=True, timeout=WATCHDOG)
    return exe
