"""The SDK bench (`python/bench/latency.py`) still runs and reports what it claims to. Behaviour
only: the figures are for a person to read (speed lives in benches, not in tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import WATCHDOG, need


def test_the_latency_bench_runs_and_reports_every_figure():
    examples = Path(need("EDGEPLEX_EXAMPLES"))
    writer, reader = examples / "write", examples / "latency"
    if not (writer.exists() and reader.exists()):
        how = f"{writer} or {reader} is missing: build them with cargo test --workspace"
        if os.environ.get("CI"):
            pytest.fail(how)
        pytest.skip(how)
    bench = Path(need("EDGEPLEX_ROOT")) / "python/bench/latency.py"
    out = subprocess.run(
        [sys.executable, str(bench), "--frames", "12", "--fps", "100", "--width", "64",
         "--height", "48", "--writer", str(writer), "--rust-reader", str(reader)],
        capture_output=True, text=True, timeout=WATCHDOG, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    py, rs, fl = report["python"], report["rust"], report["floor"]
    assert report["frame_bytes"] == 64 * 48 * 2
    assert py["frames"] == rs["frames"] == 12, report
    assert py["len"] == rs["len"] == 64 * 48 * 2
    # Zero copy: array() allocates Python objects only, far less than a frame.
    assert py["bytes_copied_per_frame"] == 0
    assert 0 < py["array_alloc_bytes_per_frame_max"] < 64 * 48 * 2
    for p in ("p50_us", "message_in_hand_p50_us", "cpu_per_frame_us"):
        assert py[p] > 0, (p, report)
    assert rs["p50_us"] > 0 and report["p50_ratio_python_over_rust"] > 0
    assert fl["c_read_p50_us"] > 0 and fl["python_os_read_p50_us"] > 0, fl
    cold = fl["cold_caches"]
    assert cold["kib"] == 64 and cold["sleep_us"] == 10_000, cold
    assert cold["warm_ns_per_line"] > 0 and cold["idle_ns_per_line"] > 0, cold
