"""The Python SDK against real writers: the library's Writer in a child process, and
`edgeplex demo`. Nothing here sleeps to wait for something: every wait is for an event (a
message, a writer's answer, a process's exit), bounded by a timeout that only fails a hang."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import edgeplex
from conftest import MARK, WATCHDOG, c_reader, cat_lines, demo_ring, edgeplex as run_edgeplex, need

FRAME_4MIB = dict(width=1024, height=2048)


def drain(ring: edgeplex.Ring, timeout: float = 0.3):
    """Every message until none comes for `timeout` seconds."""
    out = []
    while (m := ring.next(timeout=timeout)) is not None:
        out.append(m)
    return out


def test_messages_match_ring_cat(ring_dir: Path):
    demo = run_edgeplex("demo", "--duration", "1.5", "--width", "64", "--height", "48",
                        "--ring-dir", str(ring_dir), "--metrics-listen", "")
    assert demo.returncode == 0, demo.stderr
    for stream in ("cam0", "gps0"):
        path = demo_ring(ring_dir, stream)
        cat = [l for l in cat_lines(path, "--from", "oldest", "--idle-timeout", "0.3")
               if "event" not in l]
        assert len(cat) >= 3, cat
        with edgeplex.Ring(path, start="oldest") as ring:
            ours = []
            for m in drain(ring):
                data = m.bytes()
                flat = m.array().reshape(-1) if m.array().ndim == 1 else None
                ours.append(dict(seq=m.seq, epoch=m.epoch, len=len(m), capture_ns=m.capture_ns,
                                 device_seq=m.device_seq, flags=m.flags,
                                 lost_before=m.lost_before,
                                 fnv1a64=f"{edgeplex.fnv1a64(data):016x}"))
                # The view hashes like the copy (for the video ring: the whole stride-aware view
                # spans the payload, since the demo's stride is exactly 2 * width).
                assert edgeplex.fnv1a64(np.ascontiguousarray(m.array()).tobytes()) == \
                    edgeplex.fnv1a64(data)
                assert flat is None or flat.nbytes == len(m)
            keys = ["seq", "epoch", "len", "capture_ns", "device_seq", "flags", "lost_before",
                    "fnv1a64"]
            assert ours == [{k: l[k] for k in keys} for l in cat]
            assert not ring.writer_alive


def test_array_is_a_zero_copy_view_of_the_slot(ring_dir: Path, start_writer):
    path = ring_dir / "cam0" / "cam0.ring"
    w = start_writer(path, slots=2, fill="uniform", **FRAME_4MIB)
    w.command("publish 1")
    with edgeplex.Ring(path, start="oldest") as ring:
        g = ring.geometry
        assert (g.kind, g.width, g.height, g.fourcc, g.stride, g.slots) == \
            ("video", 1024, 2048, "YUYV", 2048, 2)
        msg = ring.next(timeout=WATCHDOG)
        assert msg is not None and msg.seq == 0
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        a = msg.array()
        b = msg.array()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
        assert grown < 64 * 1024, f"array() allocated {grown} bytes for a 4 MiB frame"
        assert a.shape == (2048, 1024, 2) and a.dtype == np.uint8
        assert a.ctypes.data == msg.address
        assert not a.flags.owndata and not a.flags.writeable
        assert np.shares_memory(a, b)
        # Each call gives a new array object (views of one cached array per slot): reshaping
        # one in place leaves the next call's shape alone.
        assert a is not b
        b.shape = (-1,)
        assert msg.array().shape == (2048, 1024, 2) and b.ctypes.data == msg.address
        with pytest.raises(ValueError):
            a.setflags(write=True)
        with pytest.raises(ValueError):
            a[0, 0, 0] = 1
        assert int(a[0, 0, 0]) == 0 and int(a[-1, -1, -1]) == 0 and msg.intact()
        # Lap the slot: the view shows the writer's new bytes (it is the slot itself, not a
        # copy), and the message knows it is no longer intact.
        w.command("publish 2")
        assert int(a[0, 0, 0]) == 2 and int(a[-1, -1, -1]) == 2
        assert not msg.intact()
        with pytest.raises(edgeplex.LappedError, match="message 0 was overwritten"):
            msg.bytes()
        # The view keeps the file mapped after the ring is closed and the writer is gone.
    w.stop()
    del msg
    assert int(a[5, 5, 1]) == 2


def check_own_slot(m: edgeplex.Message, shape: tuple) -> None:
    """The message's array() is its own slot's payload (uniform fill: seq % 251)."""
    a = m.array()
    assert a.shape == shape and a.ctypes.data == m.address, f"message {m.seq}: another slot"
    assert m.intact() and int(a.min()) == int(a.max()) == m.seq % 251, f"message {m.seq}"
    b = m.array()
    assert b is not a and np.shares_memory(a, b) and b.shape == shape


def test_each_message_gets_its_own_slot_also_from_a_view_made_before_the_wait(
        ring_dir: Path, start_writer):
    """next() and latest() make the view of the slot they expect the next message in before
    they wait (Views::prepare); the message takes it only if it landed there."""
    path = ring_dir / "pre.ring"
    w = start_writer(path, slots=3, width=64, height=48, fill="uniform")
    with edgeplex.Ring(path, start="next") as ring:
        # One message in each slot, each asked for as an array: every slot has its array.
        for _ in range(3):
            w.command("publish 1")
            check_own_slot(ring.next(timeout=WATCHDOG), (48, 64, 2))
        used, wasted = ring._prepared_views
        # The writer one message ahead: next() finds each where it guessed.
        for _ in range(6):
            w.command("publish 1")
            check_own_slot(ring.next(timeout=WATCHDOG), (48, 64, 2))
        assert ring._prepared_views == (used + 6, wasted)
        # Two ahead: latest() skips one and lands one slot past the guess, every time.
        for _ in range(3):
            w.command("publish 2")
            m = ring.latest(timeout=WATCHDOG)
            assert m is not None and m.lost_before == 1
            check_own_slot(m, (48, 64, 2))
        assert ring._prepared_views == (used + 6, wasted + 3)
    w.stop()


def test_views_follow_a_geometry_change_met_while_waiting(ring_dir: Path, start_writer):
    """A view prepared for the old file is never handed to a message of the new one, and the
    old file is unmapped once its own messages are gone, even if one was asked for an array
    after the reader moved on."""
    path = ring_dir / "cam0" / "cam0.ring"

    def old_mappings() -> list:
        with open("/proc/self/maps") as f:
            return [l for l in f if str(path) in l and l.rstrip().endswith("(deleted)")]

    first = start_writer(path, width=64, height=48, slots=4, fill="uniform")
    with edgeplex.Ring(path, start="next") as ring:
        for _ in range(6):
            first.command("publish 1")
            check_own_slot(ring.next(timeout=WATCHDOG), (48, 64, 2))
        first.command("publish 1")
        old = ring.next(timeout=WATCHDOG)
        used, wasted = ring._prepared_views
        assert used == 3, "the second lap's messages were guessed"
        first.stop()
        resized = start_writer(path, width=32, height=16, slots=4, fill="uniform")
        for _ in range(6):
            resized.command("publish 1")
            check_own_slot(ring.next(timeout=WATCHDOG), (16, 32, 2))
        assert ring.reopened == 1
        # The old file's guess was dropped at the reopen, not counted; the new file's second
        # lap is guessed again.
        assert ring._prepared_views == (used + 2, wasted)
        assert old_mappings(), "the old message keeps its file mapped"
        # The first array() is the view made before its wait; the second one looks for the
        # slot's array, finds none since the reopen, and must not cache the one it makes.
        assert old.array().shape == old.array().shape == (48, 64, 2)
        del old
        assert old_mappings() == [], "the old file stays mapped for nobody"
    resized.stop()


def test_torn_data_never_passes_intact(ring_dir: Path, start_writer):
    path = ring_dir / "torn.ring"
    w = start_writer(path, slots=2, width=512, height=512, fill="uniform")
    assert w.proc.stdin is not None
    w.proc.stdin.write("flood 4\n")
    w.proc.stdin.flush()
    checked = torn = intact = 0
    with edgeplex.Ring(path, start="next") as ring:
        while checked < 100_000:  # bounded by the flood: next() times out once it ends
            m = ring.next(timeout=1)
            if m is None:
                break
            a = m.array()
            lo = int(a.min())
            if checked % 4 == 0:
                # A consumer that is slow now and then (a model): the writer, still flooding,
                # laps the slot between the two halves of this use.
                time.sleep(0.001)
            hi = int(a.max())
            uniform = lo == hi == m.seq % 251
            ok = m.intact()
            checked += 1
            if not uniform:
                assert not ok, f"message {m.seq} passed intact() with torn data"
                torn += 1
            intact += ok
        lost = ring.lost
    w.expect("published")
    w.stop()
    print(f"2-slot flood: {checked} checked, {torn} torn caught, {intact} intact, {lost} lost")
    assert intact > 0, "no message was read intact"
    assert torn > 0, "the writer never lapped a message in use: the test proved nothing"


def test_writer_restart_and_geometry_change_are_followed(ring_dir: Path, start_writer):
    path = ring_dir / "cam0" / "cam0.ring"
    first = start_writer(path, width=64, height=48, slots=32)
    assert first.ready["epoch"] == "1"
    with edgeplex.Ring(path, start="oldest") as ring:
        first.command("publish 4")
        first.stop()
        assert not ring.writer_alive
        restarted = start_writer(path, width=64, height=48, slots=32)
        assert restarted.ready == {"epoch": "2", "head": "4"}
        restarted.command("publish 4")
        restarted.stop()
        resized = start_writer(path, width=32, height=16, slots=32)
        assert resized.ready["epoch"] == "3"
        resized.command("publish 4")
        got = drain(ring)
        assert [m.seq for m in got] == list(range(12))
        assert [m.epoch for m in got] == [1] * 4 + [2] * 4 + [3] * 4
        assert [m.device_seq for m in got] == [0, 1, 2, 3] * 3, "restarts with each writer"
        assert [m.array().shape for m in got] == [(48, 64, 2)] * 8 + [(16, 32, 2)] * 4
        assert all(m.lost_before == 0 for m in got) and ring.lost == 0
        assert ring.reopened == 1 and ring.writer_alive
        assert (ring.geometry.width, ring.geometry.height) == (32, 16)
        # The old file's messages are still readable through their own mapping.
        assert got[0].intact() and got[0].array().shape == (48, 64, 2)
        resized.stop()


def test_a_reader_waits_for_a_ring_not_yet_created(ring_dir: Path, start_writer):
    path = ring_dir / "cam0" / "cam0.ring"
    result = {}

    def wait():
        try:
            with edgeplex.Ring(path, start="oldest", wait=WATCHDOG) as ring:
                result["geometry"] = edgeplex.wait_for_ring(path, 1)
                result["seq"] = ring.next(timeout=WATCHDOG).seq
        except Exception as e:  # reported below
            result["error"] = e

    t = threading.Thread(target=wait)
    t.start()
    with pytest.raises(edgeplex.RingNotFoundError):
        edgeplex.wait_for_ring(path, 0.05)
    assert not path.exists()
    w = start_writer(path)
    w.command("publish 1")
    t.join(WATCHDOG)
    assert not t.is_alive() and "error" not in result, result
    assert result["seq"] == 0 and result["geometry"].fourcc == "YUYV"
    w.stop()


def test_waiting_releases_the_gil(ring_dir: Path, start_writer):
    path = ring_dir / "idle.ring"
    w = start_writer(path)
    with edgeplex.Ring(path, start="next") as ring:
        done = threading.Event()
        t = threading.Thread(target=lambda: (ring.next(timeout=1.0), done.set()))
        t.start()
        spins = 0
        while not done.is_set():
            spins += 1  # runs only if the waiting thread let go of the GIL
        t.join()
        assert spins > 1000
        # A second thread may ask for counters while one waits (no deadlock on the reader).
        t = threading.Thread(target=lambda: ring.next(timeout=0.5))
        t.start()
        assert ring.lost == 0
        t.join()
    w.stop()


def test_latest_skips_to_the_newest(ring_dir: Path, start_writer):
    path = ring_dir / "cam0.ring"
    w = start_writer(path, slots=16)
    w.command("publish 10")
    with edgeplex.Ring(path, start="oldest") as ring:
        m = ring.latest(timeout=1)
        assert (m.seq, m.lost_before) == (9, 9)
        assert ring.latest(timeout=0) is None
        w.command("publish 1")
        assert ring.latest(timeout=WATCHDOG).seq == 10
        assert ring.lost == 9
    w.stop()


def test_four_readers_agree_on_every_hash(ring_dir: Path, start_writer, tmp_path: Path):
    path = ring_dir / "cam0" / "cam0.ring"
    n = 40
    w = start_writer(path, slots=64, width=320, height=240)
    env = dict(os.environ, EDGEPLEX_SDK_READER=str(path), EDGEPLEX_SDK_COUNT=str(n))
    rust = subprocess.Popen([need("EDGEPLEX_TEST_EXE"), "reader_child", "--exact",
                             "--nocapture", "--test-threads=1"],
                            stdout=subprocess.PIPE, text=True, env=env)
    cat = subprocess.Popen([need("EDGEPLEX_BIN"), "ring", "cat", str(path), "--from", "oldest",
                            "--meta", "--hash", "--count", str(n)],
                           stdout=subprocess.PIPE, text=True)
    c_exe = c_reader(tmp_path)
    c = c_exe and subprocess.Popen([str(c_exe), str(path), str(n), "oldest"],
                                   stdout=subprocess.PIPE, text=True)
    # Publish while all of them read (paced, so each reader also waits on the futex).
    assert w.proc.stdin is not None
    w.proc.stdin.write(f"publish {n} 200\n")
    w.proc.stdin.flush()
    py = []
    with edgeplex.Ring(path, start="oldest") as ring:
        while len(py) < n:
            m = ring.next(timeout=WATCHDOG)
            py.append((m.seq, len(m), f"{edgeplex.fnv1a64(m.bytes()):016x}"))
    w.expect("published")

    def parse(out: str, marked: bool):
        rows = []
        for line in out.splitlines():
            if marked:
                if MARK not in line:
                    continue
                line = line.split(MARK, 1)[1]
            d = json.loads(line)
            if "event" not in d:
                rows.append((d["seq"], d["len"], d["fnv1a64"]))
        return rows

    rust_out, _ = rust.communicate(timeout=WATCHDOG)
    cat_out, _ = cat.communicate(timeout=WATCHDOG)
    assert rust.returncode == 0 and cat.returncode == 0
    expected = [(s, 320 * 240 * 2, h) for s, _, h in py]
    assert [s for s, _, _ in py] == list(range(n))
    assert len({h for _, _, h in py}) == n, "every frame differs"
    assert parse(rust_out, True) == expected
    assert parse(cat_out, False) == expected
    if c:
        c_out, _ = c.communicate(timeout=WATCHDOG)
        assert c.returncode == 0
        assert parse(c_out, False) == expected
    elif os.environ.get("CI"):
        pytest.fail("the C reader must take part in CI")
    w.stop()


def test_errors_are_the_cli_messages(ring_dir: Path):
    missing = ring_dir / "nope" / "nope.ring"
    cli = run_edgeplex("ring", "cat", str(missing))
    assert cli.returncode == 66
    with pytest.raises(edgeplex.RingNotFoundError) as e:
        edgeplex.Ring(missing)
    assert cli.stderr.strip() == f"edgeplex: {e.value}"
    junk = ring_dir / "junk.ring"
    junk.write_bytes(b"EDGEPLXR" + b"\0" * 100)
    cli = run_edgeplex("ring", "cat", str(junk))
    with pytest.raises(edgeplex.RingCorruptError) as e:
        edgeplex.Ring(junk)
    assert cli.stderr.strip() == f"edgeplex: {e.value}"
    with pytest.raises(ValueError, match="start must be"):
        edgeplex.Ring(junk, start="middle")


def test_to_bgr_needs_opencv_only_when_called(ring_dir: Path, start_writer):
    path = ring_dir / "cam0.ring"
    w = start_writer(path)
    w.command("publish 1")
    with edgeplex.Ring(path, start="oldest") as ring:
        m = ring.next(timeout=WATCHDOG)
        try:
            import cv2  # noqa: F401
        except ImportError:
            with pytest.raises(ImportError, match="opencv-python-headless"):
                edgeplex.to_bgr(m, ring.geometry)
        else:
            assert edgeplex.to_bgr(m, ring.geometry).shape == (48, 64, 3)
    w.stop()


def test_motion_example_measures_the_demo_camera(ring_dir: Path):
    demo = subprocess.Popen([need("EDGEPLEX_BIN"), "demo", "--duration", "5", "--width", "160",
                             "--height", "120", "--ring-dir", str(ring_dir), "--metrics-listen", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        script = Path(need("EDGEPLEX_ROOT")) / "docs/examples/motion.py"
        # It starts before the ring exists and waits for it (globbing would race the agent).
        path = ring_dir / "cam0" / "cam0.ring"
        out = subprocess.run([os.sys.executable, str(script), str(path), "--seconds", "2.5",
                              "--wait", "30"], capture_output=True, text=True, timeout=WATCHDOG)
    finally:
        demo.wait(timeout=WATCHDOG)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(l) for l in out.stdout.splitlines()]
    assert len(lines) >= 2, out.stdout
    busy = [l for l in lines if l["frames"] > 0]
    assert busy, lines
    # The test pattern's bars move every frame: brightness is mid-grey-ish, motion is not zero.
    assert all(0 < l["brightness"] < 255 for l in busy)
    assert any(l["motion"] > 0 for l in busy)
