"""README.md's Python example works as written: run against `edgeplex demo`, with only the ring
path replaced by the demo's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import WATCHDOG, need


def test_readme_python_example_runs(ring_dir: Path):
    readme = (Path(need("EDGEPLEX_ROOT")) / "README.md").read_text()
    m = re.search(r"<!-- readme:python-example.*?-->\n```python\n(.*?)```", readme, re.S)
    assert m, "README.md has no python example block"
    code = m.group(1)
    assert len(code.strip().splitlines()) == 5, code
    assert '"/dev/shm/edgeplex/cam0/cam0.ring"' in code
    ring = ring_dir / "cam0" / "cam0.ring"
    code = code.replace('"/dev/shm/edgeplex/cam0/cam0.ring"', repr(str(ring)))
    # The example starts first and waits for the ring (wait=60), as in a pod.
    example = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    demo = subprocess.Popen([need("EDGEPLEX_BIN"), "demo", "--duration", "30", "--ring-dir",
                             str(ring_dir), "--metrics-listen", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={k: v for k, v in os.environ.items()
                                 if not k.startswith("EDGEPLEX_LOG")})
    try:
        assert example.stdout is not None
        lines = []
        for line in example.stdout:
            lines.append(line.split())
            if len(lines) == 3:
                break
        assert len(lines) == 3, f"example exited: {example.wait(timeout=WATCHDOG)}"
        for seq, mean, intact in lines:
            # intact may be False: a first numpy reduction on a loaded machine can take longer
            # than the writer needs to lap the slot, which is what the example prints it for.
            assert int(seq) >= 0 and 0 < float(mean) < 255 and intact in ("True", "False"), lines
        assert any(l[2] == "True" for l in lines), lines
        assert [int(l[0]) for l in lines] == sorted(int(l[0]) for l in lines)
    finally:
        example.kill()
        demo.kill()
        example.wait()
        demo.wait()
