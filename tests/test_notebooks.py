"""The notebooks of notebooks/ run top to bottom (nbclient, a real kernel) against a server seeded
with traffic from the official Python client and an RLS policy; any error fails the test."""

from __future__ import annotations

from pathlib import Path

import nbformat
import psycopg
import pytest
from conftest import MS, ROOT, admin_token, messages_policy
from console_traffic import Traffic, until
from nbclient import NotebookClient

pytestmark = [pytest.mark.pg, pytest.mark.slow]

NOTEBOOKS = ROOT / "notebooks"


def outputs(notebook: nbformat.NotebookNode) -> str:
    """Every text the notebook's cells printed or displayed."""
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(texts)


@pytest.fixture(scope="module")
def seeded(server):
    with psycopg.connect(server.database_url, autocommit=True) as db:
        messages_policy(db, "select", "realtime.topic() = 'audit:open'")
    with Traffic(server) as traffic:
        traffic.join("audit:open", key="alice", meta={"online": True})
        traffic.join("audit:open")
        traffic.broadcast("audit:open", "hello", {})
        until(lambda: traffic.received, "the seeded broadcast")
        yield traffic


@pytest.mark.parametrize("name", sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")))
def test_the_notebook_runs_without_error(name: str, seeded, server, monkeypatch):
    monkeypatch.setenv("REALTIME_SERVER_URL", server.http_url)
    monkeypatch.setenv("REALTIME_ADMIN_TOKEN", admin_token())
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel imports this checkout's console package
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = NotebookClient(
        notebook, timeout=int(120_000 * MS), kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    text = outputs(notebook)
    assert f"{server.http_url}: tenants" in text  # the setup cell found the server
    if name == "usage_and_cost_report":
        assert "egress this cycle:" in text and "Not visible to the server:" in text  # the egress cells ran
    if name == "rls_policy_audit":
        assert "allow" in text and "deny" in text  # audit:open is readable, the other topics are not


def test_there_are_the_three_notebooks():
    assert {p.name for p in Path(NOTEBOOKS).glob("*.ipynb")} >= {
        "usage_and_cost_report.ipynb",
        "rls_policy_audit.ipynb",
        "capacity_plan.ipynb",
    }
