"""The example consumer (`docs/examples/motion.py` on this package) in a real container, reading
the rings of an `edgeplex demo` on the host through a read-only bind mount, as the unprivileged
user the example image uses (65532), with no capabilities and a read-only root.

No base image can be pulled on the machines this runs on, so `python/Containerfile` (FROM
python:3.12-slim) cannot be built here. This test builds the closest thing: a root filesystem
holding exactly this interpreter, its standard library, the installed `edgeplex` and numpy, the
shared libraries `ldd` names for them, and the example, each at its own path, run by podman
(`--rootfs`). What it shows is what the Deployment relies on: the wheel works inside a
container, the writer's futex wakes a reader in another mount namespace, and a ring owned by the
agent is readable by a non-root consumer.

Without podman the test is skipped, except in CI (`CI` set), where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy
import pytest

import edgeplex
from conftest import WATCHDOG, need

CONTAINERS_CONF = """[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""


def podman_or_skip() -> str:
    """podman with runc (CONTAINERS_CONF asks for it: crun fails here on setrlimit and on
    hybrid cgroups)."""
    podman = shutil.which("podman")
    if podman is None or shutil.which("runc") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must provide podman and runc (.ci/run installs them)")
        pytest.skip("podman or runc is not installed (apt-get install podman runc)")
    return podman


def mirror(root: Path, path: Path) -> None:
    """Copy a file or a tree to the same absolute path under `root`, as files (a symlink such
    as the loader's /lib64/ld-linux-x86-64.so.2 becomes a copy of what it points to)."""
    dest = root / Path(os.path.normpath(path)).relative_to("/")
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        shutil.copytree(path, dest, symlinks=False,
                        ignore=shutil.ignore_patterns("__pycache__", "test", "tests", "idlelib",
                                                      "tkinter", "ensurepip", "site-packages"))
    else:
        shutil.copy2(path.resolve(), dest)


def needed_libraries(files: list) -> tuple:
    """Every shared library `ldd` resolves for `files` (the dynamic loader included), and the
    names of those it cannot find."""
    libs, missing = set(), set()
    for f in files:
        out = subprocess.run(["ldd", str(f)], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            parts = line.split()
            if "not found" in line:
                missing.add(f"{parts[0]} (for {f})")
                continue
            path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
            if path.startswith("/"):
                libs.add(Path(path))
    return libs, missing


def stage(root: Path) -> tuple:
    """The consumer's root filesystem; returns the interpreter and the PYTHONPATH inside it
    (numpy's site-packages, and the package's own directory if it is elsewhere, as after an
    editable `maturin develop`)."""
    python = Path(os.path.realpath(sys.executable))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(numpy.__file__).resolve().parent.parent
    mirror(root, python)
    mirror(root, stdlib)
    package = Path(edgeplex.__file__).resolve().parent
    packages = [package, site / "numpy", site / "numpy.libs"]
    for p in packages:
        if p.exists():
            mirror(root, p)
    binaries = [python] + [f for d in [stdlib] + packages if d.exists()
                           for f in d.rglob("*.so*") if f.is_file()]
    libs, missing = needed_libraries(binaries)
    assert not missing, f"ldd cannot find {sorted(missing)}: the container would not start"
    for lib in libs:
        mirror(root, lib)
    example = root / "opt/edgeplex/motion.py"
    example.parent.mkdir(parents=True)
    shutil.copy2(Path(need("EDGEPLEX_ROOT")) / "docs/examples/motion.py", example)
    for d in [root] + [p for p in root.rglob("*") if p.is_dir()]:
        d.chmod(0o755)
    return python, ":".join(dict.fromkeys([str(site), str(package.parent)]))


def test_motion_consumer_runs_in_a_container(ring_dir: Path, tmp_path: Path):
    podman = podman_or_skip()
    conf = tmp_path / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    root = tmp_path / "rootfs"
    root.mkdir()
    python, pythonpath = stage(root)
    ring_dir.chmod(0o755)
    name = f"edgeplex-motion-{os.getpid()}"
    env = dict(os.environ, CONTAINERS_CONF=str(conf))
    # The agent runs until the consumer is done (stopped with SIGTERM, as on a node), however
    # slowly the container starts; the consumer waits for the ring if it comes first (--wait).
    demo = subprocess.Popen([need("EDGEPLEX_BIN"), "demo", "--duration", str(WATCHDOG * 3),
                             "--width", "160", "--height", "120", "--ring-dir", str(ring_dir),
                             "--metrics-listen", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        out = subprocess.run(
            [podman, "run", "--rm", "--name", name, "--network", "none", "--cap-drop=all",
             "--user", "65532:65532", "--read-only", "--rootfs",
             "-v", f"{ring_dir}:/rings:ro", "-e", f"PYTHONPATH={pythonpath}",
             "-e", "EDGEPLEX_RING_CAM0=/rings/cam0/cam0.ring", str(root),
             str(python), "-s", "/opt/edgeplex/motion.py", "/rings/cam0/cam0.ring",
             "--seconds", "3.5", "--wait", "30"],
            capture_output=True, text=True, timeout=WATCHDOG * 2, env=env)
    finally:
        try:
            subprocess.run([podman, "rm", "--force", "--ignore", name], capture_output=True,
                           env=env, timeout=WATCHDOG)
            demo.terminate()
            _, demo_err = demo.communicate(timeout=WATCHDOG)
        finally:
            if demo.poll() is None:
                demo.kill()
            shutil.rmtree(root)  # about 130 MB
    assert demo.returncode == 0, demo_err
    assert out.returncode == 0, f"podman run: {out.returncode}\n{out.stderr}"
    lines = [json.loads(l) for l in out.stdout.splitlines()]
    busy = [l for l in lines if l["frames"] > 0]
    assert len(busy) >= 2, out.stdout
    # The demo's bars move every frame: brightness is mid-grey-ish, motion is not zero, and a
    # consumer this fast keeps up.
    assert all(0 < l["brightness"] < 255 for l in busy)
    assert any(l["motion"] > 0 for l in busy)
    assert sum(l["frames"] for l in busy) >= 30, lines
