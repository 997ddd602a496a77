#!/usr/bin/env python3
"""The SDK bench: publish -> frame in hand, Python (numpy view) against Rust, same ring, same run.

One writer (the ring crate's `examples/write.rs`, 1024x2048 YUYV: 4 MiB frames) and, one after
the other on the same ring, two readers: the Rust reader (`examples/latency.rs`, the payload
pointer in place), then this script (`ring.next()` then `msg.array()`). One at a time, so that
on a small machine neither reader queues behind the other for a CPU when both are woken. For each: latency percentiles (reader's CLOCK_REALTIME when the frame is in
hand, minus the writer's publish_ns), CPU per frame, and bytes copied per frame (Python: what
tracemalloc saw array() allocate: the view object, never the frame). Python's p50 is also given
for the message in hand (after `next()`, before `array()`).

Then the floor, without edgeplex: the same wake-up through a FIFO (a writer process filling a
frame's worth of memory, then sending the time) read by native code (`floor.c`, built with cc)
and by `os.read()` in this interpreter. Its ratio is what CPython alone costs on this machine
between a wake-up and a line of Python, the least any Python reader can add. And why: the cost
per cache line of a 64 KiB working set walked warm, and after the CPU idled for one frame
period (`floor.c cold`).

Prints one JSON object with the ratio python_p50 / rust_p50 (target: <= 1.5) and the floor's.

    cargo build --release -p edgeplex-ring --example write --example latency
    target/pyenv/bin/python python/bench/latency.py --frames 300
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy  # noqa: F401  (imported before timing: a first array() would import it)

import edgeplex


def cpu_ns() -> int:
    """CPU time of the main thread (the scheduler's accounting, as the Rust reader measures)."""
    with open("/proc/self/schedstat") as f:
        return int(f.read().split()[0])


def p50_us(lat: list) -> float:
    lat = sorted(lat)
    return round(lat[(len(lat) - 1) // 2] / 1e3, 1) if lat else 0.0


def floor(frames: int, fps: int, fill: int) -> dict:
    """CPython's own cost from a wake-up to Python code, against C on the same FIFO."""
    cc = shutil.which("cc")
    if cc is None:
        return {"skipped": "no C compiler (cc) on PATH"}
    src = Path(__file__).with_name("floor.c")
    with tempfile.TemporaryDirectory(prefix="edgeplex-floor-") as d:
        exe, fifo = Path(d) / "floor", Path(d) / "fifo"
        subprocess.run([cc, "-O2", "-o", str(exe), str(src)], check=True)
        os.mkfifo(fifo)
        period_us = str(1_000_000 // max(fps, 1))

        def writer() -> subprocess.Popen:
            return subprocess.Popen([str(exe), "write", str(fifo), str(frames), period_us,
                                     str(fill)])

        w = writer()
        c = subprocess.run([str(exe), "read", str(fifo), str(frames)], capture_output=True,
                           text=True, timeout=600, check=True)
        w.wait(timeout=60)
        w = writer()
        # The open waits for the writer; if it died instead, fail rather than hang.
        def never_opened(*_: object) -> None:
            raise TimeoutError(f"floor: the FIFO writer never opened {fifo}")

        signal.signal(signal.SIGALRM, never_opened)
        signal.alarm(60)
        try:
            fd = os.open(fifo, os.O_RDONLY)
        finally:
            signal.alarm(0)
        lat = []
        read, now = os.read, time.time_ns
        try:
            while len(lat) < frames:
                b = read(fd, 8)
                if len(b) < 8:
                    break
                lat.append(now() - int.from_bytes(b, sys.byteorder))
        finally:
            os.close(fd)
            w.wait(timeout=60)
        cold = subprocess.run([str(exe), "cold", "64", period_us], capture_output=True,
                              text=True, timeout=600, check=True)
    c_run = json.loads(c.stdout)
    if c_run["frames"] != frames or len(lat) != frames:
        raise RuntimeError(f"floor: {c_run['frames']} frames in C and {len(lat)} in Python, "
                           f"not {frames}: did the FIFO writer fail?")
    c_p50 = c_run["p50_us"]
    py_p50 = p50_us(lat)
    return {"c_read_p50_us": c_p50, "python_os_read_p50_us": py_p50,
            "p50_ratio_python_over_c": round(py_p50 / c_p50, 2) if c_p50 else None,
            "cold_caches": json.loads(cold.stdout)}


def main() -> int:
    root = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(description="publish -> numpy array latency, Python vs Rust")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=2048)
    ap.add_argument("--writer", default=str(root / "target/release/examples/write"))
    ap.add_argument("--rust-reader", default=str(root / "target/release/examples/latency"))
    ap.add_argument("--no-floor", dest="floor", action="store_false",
                    help="skip the FIFO floor (native vs os.read)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeplex-bench-", dir="/dev/shm") as d:
        path = Path(d) / "cam0.ring"
        total = 2 * args.frames + 2 * args.fps
        writer = subprocess.Popen([args.writer, str(path), str(args.width), str(args.height),
                                   str(args.fps), str(total)])
        edgeplex.wait_for_ring(path, 30)
        rust = subprocess.run([args.rust_reader, str(path), str(args.frames)],
                              capture_output=True, text=True, timeout=600, check=True)
        rust_out = rust.stdout
        lat = []
        in_hand = []
        copied = []
        nbytes = 0
        with edgeplex.Ring(path, start="next") as ring:
            ring.next(timeout=10).array()
            ring.latest(timeout=10)  # caught up: the timed loop starts at the newest frame
            cpu0 = cpu_ns()
            while len(lat) < args.frames:
                msg = ring.next(timeout=5)
                got = time.time_ns()
                if msg is None:
                    break
                a = msg.array()
                now = time.time_ns()
                lat.append(now - msg.publish_ns)
                in_hand.append(got - msg.publish_ns)
                nbytes = a.nbytes
                del a
            cpu = cpu_ns() - cpu0
            lost = ring.lost
            # Allocation by array(), outside the timed loop (tracemalloc slows Python down):
            # Python objects only (the view, its base, the interface dict), never the frame.
            tracemalloc.start()
            for _ in range(20):
                before = tracemalloc.get_traced_memory()[0]
                a = msg.array()
                copied.append(tracemalloc.get_traced_memory()[0] - before)
                del a
            tracemalloc.stop()
        writer.kill()
        writer.wait()
    lat.sort()

    def q(p: float) -> float:
        return lat[int((len(lat) - 1) * p)] / 1e3 if lat else 0.0

    py = {"reader": "python", "frames": len(lat), "len": nbytes, "p50_us": round(q(0.5), 1),
          "p90_us": round(q(0.9), 1), "p99_us": round(q(0.99), 1),
          "message_in_hand_p50_us": p50_us(in_hand),
          "cpu_per_frame_us": round(cpu / 1e3 / max(len(lat), 1), 1),
          "bytes_copied_per_frame": 0,
          "array_alloc_bytes_per_frame_max": max(copied) if copied else None,
          "lost": lost}
    rs = json.loads(rust_out.strip().splitlines()[-1])
    ratio = py["p50_us"] / rs["p50_us"] if rs.get("p50_us") else None
    fl = floor(args.frames, args.fps, nbytes) if args.floor else {"skipped": "--no-floor"}
    print(json.dumps({"frame_bytes": nbytes, "fps": args.fps, "python": py, "rust": rs,
                      "p50_ratio_python_over_rust": round(ratio, 2) if ratio else None,
                      "target_ratio": 1.5, "floor": fl}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
