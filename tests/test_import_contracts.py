"""The import contracts of pyproject.toml hold (scripts/test runs lint-imports too).

Layers net → protocol → core → tenant services → session → app → cli / HTTP
API, TYPE_CHECKING imports included, and no import cycle. The second test
checks that the contract can fail: a session module importing the App breaks it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
            "--no-cache",
        ],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contracts_are_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_a_channel_importing_the_app_breaks_the_layers(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "realtime_core", tmp_path / "realtime_core", ignore=shutil.ignore_patterns("__pycache__"))
    channel = tmp_path / "realtime_core" / "channel.py"
    source = channel.read_text()
    channel.write_text(
        source.replace("if TYPE_CHECKING:\n", "if TYPE_CHECKING:\n    from .app import App  # noqa: F401\n", 1)
    )
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "realtime_core.channel is not allowed to import realtime_core.app" in result.stdout
