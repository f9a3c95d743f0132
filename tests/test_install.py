"""The built wheel, installed in fresh virtualenvs with each set of extras.

Every command must work, or say in one line which extra it needs, with
exactly the extras installed; ``watch`` and ``serve`` are run for real where
the extras allow. The four virtualenvs are installed concurrently, reusing
pip's cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

import metricstream

from .support import free_port, scaled, wait_healthy

# Installing four virtualenvs from the package index takes a while, and the
# fixture's time counts against the first test's timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("none", "tui", "server", "all")
COMMANDS = ("serve", "proxy", "watch", "dashboard", "demo", "schema", "schema-js")
# The extra each command needs to run (the others need only the core).
NEEDS = {"serve": "server", "proxy": "proxy", "demo": "server", "dashboard": "tui"}
# Commands whose options come from the server package: without it, even their
# --help is the one line naming the extra (the proxy extra is the server's).
OPTIONS_FROM_SERVER = {"serve": "server", "proxy": "proxy"}
# What each install provides; the proxy extra is the server's under its own name.
INSTALLED = {
    "none": set(),
    "tui": {"tui"},
    "server": {"server", "proxy"},
    "all": {"server", "proxy", "tui"},
}


def pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        check=True,
        capture_output=True,
        timeout=scaled(600),
    )


@pytest.fixture(scope="module")
def venvs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A built wheel installed into one fresh virtualenv per set of extras."""
    work = tmp_path_factory.mktemp("install")
    pip("wheel", "--no-deps", "--wheel-dir", str(work / "dist"), str(ROOT))
    (wheel,) = (work / "dist").glob("metricstream-*.whl")
    assert wheel.name.startswith(f"metricstream-{metricstream.__version__}-")

    def install(extra: str) -> Path:
        target = work / extra
        # No pip inside: this interpreter's pip installs into it (--python).
        venv.create(target, with_pip=False, symlinks=True)
        requirement = str(wheel) if extra == "none" else f"metricstream[{extra}] @ {wheel.as_uri()}"
        pip("--python", str(target / "bin" / "python"), "install", "--quiet", requirement)
        return target

    with ThreadPoolExecutor(max_workers=len(EXTRAS)) as pool:
        return dict(zip(EXTRAS, pool.map(install, EXTRAS), strict=True))


def run(env_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("METRICSTREAM_", "COV"))}
    environ.pop("PYTHONPATH", None)
    return subprocess.run(
        [str(env_dir / "bin" / "metricstream"), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
        check=False,
        cwd=env_dir,  # not the source tree: only the installed package is importable
    )


@pytest.mark.parametrize("extra", EXTRAS)
def test_every_command_works_or_names_its_extra(venvs: dict[str, Path], extra: str) -> None:
    env_dir = venvs[extra]
    top = run(env_dir, "--help")
    assert top.returncode == 0, top.stderr
    for command in COMMANDS:
        assert command in top.stdout
    version = run(env_dir, "--version")
    assert version.stdout.strip() == f"metricstream {metricstream.__version__}"
    for command in COMMANDS:
        result = run(env_dir, command, "--help")
        if command not in OPTIONS_FROM_SERVER or "server" in INSTALLED[extra]:
            assert result.returncode == 0, f"{extra}: {command} --help: {result.stderr}"
            assert f"usage: metricstream {command}" in result.stdout
        else:
            assert_names_extra(result, OPTIONS_FROM_SERVER[command])
    # Running a command whose extra is missing says so, in one line.
    for command, needed in NEEDS.items():
        if needed not in INSTALLED[extra]:
            args = (
                ["ws://127.0.0.1:9/metrics/stream"] if command == "dashboard" else ["--port", "1"]
            )
            if command == "proxy":
                args += ["--upstream", "http://127.0.0.1:9"]
            assert_names_extra(run(env_dir, command, *args), needed)
    assert run(env_dir, "schema", "--compact").returncode == 0


def assert_names_extra(result: subprocess.CompletedProcess[str], extra: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"needs the '{extra}' extra" in lines[0]
    assert f"pip install 'metricstream[{extra}]'" in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("server_extra", ["server", "all"])
def test_serve_from_the_wheel_feeds_watch_from_a_core_only_install(
    venvs: dict[str, Path], server_extra: str
) -> None:
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("METRICSTREAM_", "COV"))}
    environ.pop("PYTHONPATH", None)
    proc = subprocess.Popen(
        [
            str(venvs[server_extra] / "bin" / "metricstream"),
            "serve",
            "--demo",
            "--port",
            str(port),
            "--interval",
            "0.2",
            "--token",
            "wheel-token",
        ],
        env=environ,
        cwd=venvs[server_extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, 60)
        # The page is shipped in the wheel (package data), and guarded.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            page = http.get("/", params={"token": "wheel-token"})
            assert page.status_code == 200
            assert "<script" in page.text
            assert http.get("/static/js/client.js").status_code == 200
        for client in ("none", "tui"):
            watched = run(
                venvs[client],
                "watch",
                f"ws://127.0.0.1:{port}/metrics/stream?token=wheel-token",
                "--type",
                "metrics_update",
                "--count",
                "2",
            )
            assert watched.returncode == 0, watched.stderr
            assert " metrics_update #" in watched.stdout.splitlines()[-1]
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=scaled(30))
    assert "wheel-token" not in stderr
    assert "Uvicorn running on" in stderr


def test_the_wheel_carries_the_license_and_no_development_extras(venvs: dict[str, Path]) -> None:
    (dist_info,) = (venvs["none"] / "lib").glob("python3*/site-packages/metricstream-*.dist-info")
    metadata = (dist_info / "METADATA").read_text()
    extras = {
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Provides-Extra:")
    }
    assert extras == {"server", "tui", "gpu", "proxy", "redis", "all"}
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert requires
    assert not [line for line in requires if "fakeai" in line or "pytest" in line]
    assert "License-Expression: MIT" in metadata
    licenses = list(dist_info.rglob("LICENSE"))
    assert licenses, "LICENSE is not in the wheel"
    assert "MIT License" in licenses[0].read_text()


def test_no_source_tree_leaks_into_the_installs(venvs: dict[str, Path]) -> None:
    code = "import metricstream, sys; print(metricstream.__file__)"
    result = subprocess.run(
        [str(venvs["none"] / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        cwd=venvs["none"],
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        timeout=scaled(60),
        check=True,
    )
    assert str(venvs["none"]) in result.stdout
    assert str(ROOT / "src") not in result.stdout
