"""The Streamlit console (streamlit's AppTest) against running servers seeded with traffic from the
official Python client: every page renders, the figures shown are the admin API's, the forms
give the API's answers, and failures show a message instead of a traceback."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import jwt as pyjwt
import pandas as pd
import psycopg
import pytest
import streamlit.config
from cluster import cluster_env, needs_redis, nodes
from conftest import (
    ADMIN_SECRET,
    MS,
    admin_headers,
    admin_token,
    make_token,
    messages_policy,
    published_table,
    scratch_database,
)
from console_traffic import Traffic, until
from psycopg import sql
from streamlit.testing.v1 import AppTest

from console import ui
from console.client import AdminApiError, AdminClient, parse_prometheus
from console.live_tail import TailReader

APP = str(Path(__file__).resolve().parent.parent / "console" / "app.py")
PAGES = {
    "overview": "Overview",
    "channels": "Channels",
    "inspector": "Inspector",
    "presence": "Presence",
    "nodes": "Nodes",
    "replication": "Replication",
    "rls_tester": "RLS tester",
    "usage": "Usage & pricing",
    "settings": "Settings",
}
TOPIC = "console:room"
TIMEOUT = 30_000 * MS

Open = Callable[..., AppTest]


@pytest.fixture
def console(monkeypatch: pytest.MonkeyPatch) -> Iterator[Open]:
    """Open the console on a page, for a server URL and admin token, bound to `address`."""
    before = streamlit.config.get_option("server.address")

    def open_page(url: str, token: str | None = None, page: str = "overview", address: str = "127.0.0.1") -> AppTest:
        monkeypatch.setenv("REALTIME_SERVER_URL", url)
        monkeypatch.setenv("REALTIME_ADMIN_TOKEN", admin_token() if token is None else token)
        streamlit.config.set_option("server.address", address)
        at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
        if page != "overview":
            at.switch_page(f"../pages/{page}.py").run()
        return at

    yield open_page
    streamlit.config.set_option("server.address", before)


@pytest.fixture(scope="module")
def seeded(server) -> Iterator[Traffic]:
    """The session's server with two clients on TOPIC (alice present) and one broadcast between them."""
    with Traffic(server) as traffic:
        traffic.join(TOPIC, key="alice", meta={"status": "online"})
        traffic.join(TOPIC, key="bob")
        traffic.broadcast(TOPIC, "hello", {"n": 1})
        until(lambda: (TOPIC, "hello", {"n": 1}) in traffic.received, "the seeded broadcast")
        yield traffic


@pytest.fixture
def admin(server) -> Iterator[AdminClient]:
    with AdminClient(server.http_url, admin_token()) as client:
        yield client


def tenant_of(admin: AdminClient) -> str:
    return admin.tenants()[0].id


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def table(at: AppTest, *columns: str) -> pd.DataFrame:
    """The first table on the page with these columns (AppTest does not expose dataframes' keys)."""
    frames = [d.value for d in at.dataframe if set(columns) <= set(d.value.columns)]
    assert frames, f"no table with columns {columns}"
    return frames[0]


def settled(read: Callable[[], dict[str, str]], render: Callable[[], AppTest]) -> tuple[AppTest, dict[str, str]]:
    """The page rendered while the API's figures stayed the same (read before and after), and
    those figures: a connection another test closed may still be going away."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        before = read()
        at = render()
        if read() == before:
            return at, before
        assert time.monotonic() < deadline, "the figures never settled"


def quiet(at: AppTest) -> None:
    """No traceback and no error message on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_prometheus_text_becomes_rows_with_labels():
    text = '# HELP x help\n# TYPE x gauge\nx 3\ny{tenant="a\\"b",le="+Inf"} 1.5\n'
    frame = parse_prometheus(text)
    assert list(frame["metric"]) == ["x", "y"]
    assert list(frame["value"]) == [3.0, 1.5]
    assert frame["labels"][1] == {"tenant": 'a"b', "le": "+Inf"}  # escapes undone


@pytest.mark.parametrize(
    ("address", "local"),
    [
        *[(None, False), ("", False), ("0.0.0.0", False), ("10.1.2.3", False), ("::", False), ("example.org", False)],
        *[("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True)],
    ],
)
def test_only_a_loopback_address_counts_as_local(address, local):
    before = streamlit.config.get_option("server.address")
    streamlit.config.set_option("server.address", address)
    try:
        assert ui.loopback() is local
    finally:
        streamlit.config.set_option("server.address", before)


# -- every page, on a server with traffic -------------------------------------------------------


@pytest.mark.pg
@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_renders_its_title_without_error(page, seeded, server, console):
    at = console(server.http_url, page=page)
    quiet(at)
    assert [t.value for t in at.title] == [PAGES[page]]


@pytest.mark.pg
def test_the_overview_shows_the_admin_apis_figures(seeded, server, admin, console):
    tenant = tenant_of(admin)

    def figures() -> dict[str, str]:
        view, cluster, bill = admin.tenant(tenant), admin.cluster(), admin.bill(tenant)
        # A single process is a cluster of one: its count and the cluster's are the same.
        assert cluster.tenants[tenant]["connections"] == view.counts["connections"]
        return {
            "Connections now": f"{cluster.tenants[tenant]['connections']:,}",
            "Peak connections this cycle": f"{bill.quota['peak_connections']['used']:,}",
            "Messages this cycle": f"{bill.quota['messages']['used']:,}",
        }

    at, expected = settled(figures, lambda: console(server.http_url))
    quiet(at)
    assert {label: metrics(at)[label] for label in expected} == expected
    assert int(expected["Connections now"]) >= 2


@pytest.mark.pg
def test_the_channels_and_presence_pages_show_the_seeded_channel(seeded, server, admin, console):
    tenant = tenant_of(admin)
    at = console(server.http_url, page="channels")
    quiet(at)
    channels = table(at, "topic", "subscribers", "fan_out")
    row = channels[channels["topic"] == TOPIC].iloc[0]
    assert row["subscribers"] == admin.channel(tenant, TOPIC).subscribers == 2
    assert row["presence"] == 1
    assert at.selectbox(key="channel-picked").value == (TOPIC, False)
    assert metrics(at)["Subscribers"] == "2"
    [node] = admin.nodes()
    assert row["nodes"] == f"{node.id}: 2"
    subscribers = table(at, "connection", "join_ref")
    assert subscribers.columns[0] == "node" and set(subscribers["node"]) == {node.id}
    assert sorted(subscribers["connection"]) == sorted(
        s["connection"] for s in admin.channel(tenant, TOPIC).subscriber_list
    )

    at = console(server.http_url, page="presence")
    quiet(at)
    members = table(at, "key", "status")
    assert list(members["key"]) == ["alice"] and list(members["status"]) == ["online"]


@pytest.mark.pg
def test_the_nodes_page_shows_a_single_process_as_a_cluster_of_one(seeded, server, admin, console):
    tenant = tenant_of(admin)
    at = console(server.http_url, page="nodes")
    quiet(at)
    nodes = table(at, "id", "alive", "address", "pid", "uptime")
    assert list(nodes["pid"]) == [server.proc.pid] and list(nodes["alive"]) == [True]
    assert nodes["address"].iloc[0].endswith(f":{server.port}")
    assert metrics(at)["Live nodes"] == "1" and metrics(at)["Dead nodes"] == "0"
    assert any("single process" in i.value for i in at.info)
    assert any("--workers 2 --redis" in c.value for c in at.code)
    [node] = admin.nodes()
    connections = table(at, "node", "id", "client_library")
    assert set(connections["node"]) == {node.id}
    assert set(seeded_connections(admin, tenant)) <= set(connections["id"])


def seeded_connections(admin: AdminClient, tenant: str) -> list[str]:
    return [s["connection"] for s in admin.channel(tenant, TOPIC).subscriber_list]


@needs_redis
@pytest.mark.pg
@pytest.mark.redis
def test_the_nodes_page_shows_every_node_of_a_cluster_and_their_connections(pg_dsn, console):
    with (
        scratch_database(pg_dsn) as url,
        nodes(url, cluster_env(), 2) as (first, second),
        AdminClient(first.http_url, admin_token()) as admin,
        Traffic(first) as here,
        Traffic(second) as there,
    ):
        until(lambda: [n.alive for n in admin.nodes()] == [True, True], "two live nodes")
        here.join(TOPIC)
        there.join(TOPIC)
        tenant = tenant_of(admin)
        ids = {n.pid: n.id for n in admin.nodes()}
        until(lambda: len({c.node for c in admin.cluster_connections(tenant)}) == 2, "both nodes' connections")
        at = console(first.http_url, page="nodes")
        quiet(at)
        shown = table(at, "id", "alive", "pid")
        assert dict(zip(shown["pid"], shown["id"], strict=True)) == ids and all(shown["alive"])
        assert metrics(at)["Live nodes"] == "2"
        assert not any("single process" in i.value for i in at.info)
        assert set(table(at, "node", "id", "client_library")["node"]) == set(ids.values())

        at = console(first.http_url, page="channels")
        quiet(at)
        row = table(at, "topic", "nodes").set_index("topic").loc[TOPIC]
        assert row["subscribers"] == 2
        assert row["nodes"] == ", ".join(f"{node}: 1" for node in sorted(ids.values()))
        assert sorted(table(at, "connection", "join_ref")["node"]) == sorted(ids.values())


@pytest.mark.pg
def test_the_usage_page_shows_the_bill_and_usage(seeded, server, admin, console):
    tenant = tenant_of(admin)

    def figures() -> dict[str, str]:
        bill = admin.bill(tenant)
        return {
            "Messages so far": f"{bill.quota['messages']['used']:,}",
            "Peak connections": f"{bill.quota['peak_connections']['used']:,}",
        }

    at, expected = settled(figures, lambda: console(server.http_url, page="usage"))
    quiet(at)
    assert {label: metrics(at)[label] for label in expected} == expected
    usage = admin.usage(tenant)
    assert usage.total["messages"]["broadcast"] >= 2  # the seeded broadcast: 1 sent + 1 delivered
    assert {b.label for b in at.get("download_button")} >= {"Download bill.csv", "Download usage-by-day.csv"}


@pytest.mark.pg
def test_the_usage_page_shows_egress_and_the_channels_that_drive_the_bill(seeded, server, admin, console):
    tenant = tenant_of(admin)

    def figures() -> dict[str, str]:
        attribution = admin.attribution(tenant, period="cycle")
        row = next(t for t in attribution.topics if t["topic"] == TOPIC)
        return {"messages": str(row["messages"]), "egress_bytes": str(row["egress_bytes"])}

    at, expected = settled(figures, lambda: console(server.http_url, page="usage"))
    quiet(at)
    topics = table(at, "topic", "egress_bytes", "usd")
    shown = topics[topics["topic"] == TOPIC].iloc[0]
    assert {"messages": str(shown["messages"]), "egress_bytes": str(shown["egress_bytes"])} == expected
    assert int(expected["egress_bytes"]) > 0 and list(topics["usd"]) == sorted(topics["usd"], reverse=True)
    assert "Download attribution-topics.csv" in {b.label for b in at.get("download_button")}
    assert any("Egress this cycle" in str(chart.proto) for chart in at.get("plotly_chart"))


@pytest.mark.pg
def test_the_what_if_estimator_gives_the_apis_answer(server, admin, console):
    at = console(server.http_url, page="usage")
    at.number_input(key="in-concurrent_clients").set_value(20_000)
    at.number_input(key="in-messages_per_client_per_minute").set_value(30.0)
    at.button(key="FormSubmitter:what-if-Estimate").click().run()
    quiet(at)
    inputs = {n.key.removeprefix("in-"): n.value for n in at.number_input if n.key.startswith("in-")}
    expected = admin.pricing_estimate(**inputs)
    shown = metrics(at)
    assert shown["Estimated messages per month"] == f"{expected.messages_per_month['all']:,}"
    assert shown["Cheapest plan"] == (expected.cheapest_plan or "none fits")
    assert [w.value for w in at.warning] == list(expected.warnings)
    for swept in at.selectbox(key="sweep").options:  # a chart of cost against each input, in range
        at.selectbox(key="sweep").select(swept).run()
        quiet(at)
        assert at.get("plotly_chart"), swept


# -- the inspector -------------------------------------------------------------------------------


@pytest.mark.pg
def test_a_test_broadcast_reaches_the_subscribers(seeded, server, console):
    at = console(server.http_url, page="inspector")
    at.text_input(key="send-topic").input(TOPIC)
    at.text_input(key="send-event").input("from-console")
    at.text_area(key="send-payload").input('{"x": 1}')
    at.button(key="FormSubmitter:send-Broadcast to all clients").click().run()
    quiet(at)
    assert [s.value for s in at.success] == [f"Broadcast 'from-console' on {TOPIC}: delivered to 2 socket(s)."]
    until(lambda: seeded.received.count((TOPIC, "from-console", {"x": 1})) == 2, "both clients got it")


@pytest.mark.pg
def test_a_payload_that_is_not_a_json_object_is_refused_on_the_page(seeded, server, console):
    at = console(server.http_url, page="inspector")
    at.text_area(key="send-payload").input("[1, 2")
    at.button(key="FormSubmitter:send-Broadcast to all clients").click().run()
    assert not at.exception
    assert at.error[0].value.startswith("The payload is not valid JSON")


@pytest.mark.pg
def test_the_live_tail_shows_a_broadcast_as_it_is_delivered(seeded, server, admin, console):
    at = console(server.http_url, page="inspector")
    at.text_input(key="tail-topic").input(TOPIC)
    at.button(key="FormSubmitter:tail-Listen").click().run()
    quiet(at)
    admin.broadcast(tenant_of(admin), TOPIC, "tailed", {"seen": True})

    def tailed() -> list[dict]:
        at.run()
        frames = [t.value for t in at.table if "kind" in t.value.columns]
        return frames[0][frames[0]["event"] == "tailed"].to_dict("records") if frames else []

    [row] = until(tailed, "the broadcast in the tail")
    assert (row["kind"], row["payload"]) == ("broadcast", '{"seen": true}')
    at.button(key="FormSubmitter:tail-Stop").click().run()
    assert "Press Listen" in at.info[0].value


@pytest.mark.pg
def test_a_stopped_tail_ends_at_once_and_a_refused_one_says_why(seeded, server, admin):
    reader = TailReader(server.http_url, admin_token(), tenant_of(admin), TOPIC, idle_seconds=3600)
    assert reader.wait_connected(TIMEOUT)
    reader.stop()  # the reading thread is blocked on its socket: stop() closes it
    until(lambda: not reader.running, "the stopped tail's end", timeout=2_000 * MS)
    assert reader.error is None
    refused = TailReader(server.http_url, admin_token(), "no-such-tenant", TOPIC)
    until(lambda: not refused.running, "the refused tail's end")
    assert refused.error == "404 not found"


@pytest.mark.pg
def test_a_tail_nobody_reads_ends_by_itself(seeded, server, admin):
    reader = TailReader(server.http_url, admin_token(), tenant_of(admin), TOPIC, idle_seconds=0.5)
    assert reader.wait_connected(TIMEOUT)
    until(lambda: not reader.running, "the idle tail's end")
    assert reader.error is None


@pytest.mark.pg
def test_a_delivery_trace_explains_a_self_false_broadcast(server, admin, console):
    tenant = tenant_of(admin)
    with Traffic(server) as traffic:
        traffic.join("console:traced", token=make_token("authenticated", sub="tracee"))
        at = console(server.http_url, page="inspector")
        at.text_input(key="trace-topic").input("console:traced")
        at.text_input(key="trace-who").input("tracee")
        at.button(key="FormSubmitter:trace-Start trace").click().run()
        quiet(at)
        started = at.session_state.trace_started
        traffic.broadcast("console:traced", "own", {})  # sent by the tracee, whose channel has self: false

        def decisions() -> list[dict]:
            at.run()
            frames = [d.value for d in at.dataframe if "reason" in d.value.columns]
            return frames[0].to_dict("records") if frames else []

        [decision] = until(decisions, "the trace's decision")
        assert (decision["event"], decision["delivered"], decision["reason"]) == ("own", False, "self")
        assert decision["why"].startswith("a broadcast with `self: false`")
        assert [d["reason"] for d in admin.trace(tenant, started["id"]).decisions] == ["self"]
        at.button(key="trace-stop").click().run()
        quiet(at)
        assert at.session_state.trace_started is None
        with pytest.raises(AdminApiError) as gone:
            admin.trace(tenant, started["id"])
        assert gone.value.status == 404


# -- RLS tester ----------------------------------------------------------------------------------


@pytest.mark.pg
def test_the_rls_tester_shows_allow_and_deny_as_the_api_does(server, admin, console):
    with psycopg.connect(server.database_url, autocommit=True) as db:
        messages_policy(db, "select", "realtime.topic() = 'rls:open'")
    tenant = tenant_of(admin)
    for topic, expected in (("rls:open", "allow"), ("rls:closed", "deny")):
        at = console(server.http_url, page="rls_tester")
        at.text_input(key="rls-topic").input(topic)
        at.button(key="FormSubmitter:rls-check-Check read and write").click().run()
        quiet(at)
        [result] = [t.value for t in at.table]
        read = result[(result["extension"] == "broadcast") & (result["action"] == "read")].iloc[0]
        assert read["result"] == expected
        api = admin.check_authorization(tenant, topic, role="authenticated", action="read")
        assert api.allowed == (expected == "allow")
        if expected == "allow":
            policies = table(at, "name", "using")
            assert "realtime.topic()" in policies.iloc[0]["using"]
        history = table(at, "at", "subject")
        assert history.iloc[0]["broadcast read"] == expected


@pytest.mark.pg
def test_the_rls_tester_mints_a_token_and_keeps_a_history(server, console):
    at = console(server.http_url, page="rls_tester")
    at.radio(key="rls-mode").set_value("Mint a test JWT").run()
    at.text_input(key="rls-sub").input("user-7")
    at.text_area(key="rls-claims").input('{"team": 3}')
    at.button(key="FormSubmitter:rls-check-Check read and write").click().run()
    at.button(key="FormSubmitter:rls-check-Check read and write").click().run()
    quiet(at)
    claims = pyjwt.decode(at.session_state.rls_minted, options={"verify_signature": False})
    assert (claims["sub"], claims["team"], claims["role"]) == ("user-7", 3, "authenticated")
    assert len(table(at, "at", "subject")) == 2
    at.text_area(key="rls-claims").input("{not json")
    at.button(key="FormSubmitter:rls-check-Check read and write").click().run()
    assert not at.exception and at.error[0].value.startswith("Claims is not valid JSON")


@pytest.mark.pg
def test_the_visibility_check_names_why_a_row_is_not_delivered(cdc, db, console):
    name = published_table(db, "id int primary key, owner text")
    ident = sql.Identifier(name)
    db.execute(sql.SQL("alter table {} enable row level security").format(ident))
    db.execute(
        sql.SQL(
            "create policy own on {} for select to authenticated"
            " using (owner = current_setting('request.jwt.claims', true)::jsonb ->> 'sub')"
        ).format(ident)
    )
    db.execute(sql.SQL("insert into {} values (1, 'alice')").format(ident))
    for sub, delivered in (("alice", True), ("mallory", False)):
        at = console(cdc.http_url, page="rls_tester")
        at.radio(key="rls-mode").set_value("Role + claims").run()
        at.text_input(key="rls-sub").input(sub)
        at.text_input(key="pg-table").input(name)
        at.button(key="FormSubmitter:pg-check-Would the subject get it?").click().run()
        assert not at.exception
        if delivered:
            assert at.success[0].value.startswith("Delivered")
        else:
            assert at.error[0].value.startswith("Not delivered: rls")
        with AdminClient(cdc.http_url, admin_token()) as admin:
            api = admin.check_postgres_changes(
                tenant_of(admin), name, role="authenticated", claims={"sub": sub}, primary_key={"id": 1}
            )
        assert api.delivered is delivered


# -- settings, audit, read-only ------------------------------------------------------------------


@pytest.mark.pg
def test_saving_settings_needs_the_confirmation_and_shows_studio_warnings(server_factory, console):
    server = server_factory()
    with AdminClient(server.http_url, admin_token()) as api:
        tenant = tenant_of(api)
        at = console(server.http_url, page="settings")
        quiet(at)
        field = next(n for n in at.number_input if n.label.startswith("max concurrent users"))
        field.set_value(60_000)
        at.button(key="FormSubmitter:settings-Save").click().run()
        assert at.warning[0].value.startswith("Tick the confirmation first")
        assert api.tenant(tenant).limits["effective"]["max_concurrent_users"] != 60_000

        next(c for c in at.checkbox if c.label.startswith("I understand")).check()
        at.button(key="FormSubmitter:settings-Save").click().run()
        assert not at.exception
        assert at.success, [e.value for e in at.error]
        assert "max_concurrent_users is 60000, above Supabase Studio's bound of 50000" in [w.value for w in at.warning]
        assert api.tenant(tenant).limits["effective"]["max_concurrent_users"] == 60_000
        audit = table(at, "action", "target")
        assert audit.iloc[0]["action"] == api.audit(limit=1)[0].action


@pytest.mark.pg
def test_a_read_only_token_disables_every_write_control(seeded, server, console):
    token = admin_token(admin="read")
    for page in ("settings", "inspector", "rls_tester", "replication", "channels"):
        at = console(server.http_url, token=token, page=page)
        quiet(at)
        assert any("read-only" in i.value for i in at.info), page
        writes = [b for b in at.button if b.key and b.key.startswith("FormSubmitter:") and "tail-" not in b.key]
        assert writes and all(b.disabled for b in writes), page


# -- operator actions, publication, organisation, tenants, empty server ---------------------------


@pytest.mark.pg
def test_disconnecting_a_connection_and_shutting_a_channel_down_take_effect(server, admin, console):
    tenant = tenant_of(admin)
    with Traffic(server) as traffic:
        for topic in ("console:kick", "console:close"):
            traffic.join(topic)
        at = console(server.http_url, page="channels")
        at.selectbox(key="channel-picked").set_value(("console:kick", False)).run()
        [conn] = [s["connection"] for s in admin.channel(tenant, "console:kick").subscriber_list]
        disconnect = at.button(key="FormSubmitter:disconnect-Disconnect")
        disconnect.click().run()
        assert at.warning[0].value == "Tick the confirmation first."  # nothing done without it
        assert conn in {c.id for c in admin.connections(tenant, limit=500)}
        at.checkbox[0].check()
        at.button(key="FormSubmitter:disconnect-Disconnect").click().run()
        quiet(at)
        assert at.success[0].value.startswith(f"Disconnected {conn}: close code")
        until(lambda: conn not in {c.id for c in admin.connections(tenant, limit=500)}, "the disconnect")

        at = console(server.http_url, page="channels")
        at.selectbox(key="channel-picked").set_value(("console:close", False)).run()
        next(c for c in at.checkbox if c.label.startswith("Shut console:close down")).check()
        at.button(key="FormSubmitter:shutdown-Shut the channel down").click().run()
        quiet(at)
        assert at.success[0].value == "Shut down: 1 subscribers were sent 'Server requested disconnect'"


@pytest.mark.pg
def test_the_replication_page_adds_and_removes_a_publication_table(cdc, db, console):
    name = f"pub_{secrets.token_hex(4)}"
    db.execute(sql.SQL("create table {} (id int primary key)").format(sql.Identifier(name)))
    with AdminClient(cdc.http_url, admin_token()) as api:
        tenant = tenant_of(api)
        for action, present in (("add", True), ("remove", False)):
            at = console(cdc.http_url, page="replication")
            at.text_input(key="publication-table").input(name)
            at.radio(key="publication-action").set_value(action)
            at.button(key="FormSubmitter:publication-Apply").click().run()
            quiet(at)
            tables = {t["table"] for t in api.replication(tenant).publication["tables"]}
            assert (name in tables) is present
            shown = table(at, "schema", "table", "subscribers") if present else None
            assert shown is None or name in set(shown["table"])
        at.text_input(key="publication-table").input("no_such_table")
        at.radio(key="publication-action").set_value("add")
        at.button(key="FormSubmitter:publication-Apply").click().run()
        assert not at.exception and at.error[0].value.startswith("The server refused the request (422): table:")


@pytest.mark.pg
def test_an_organisations_bill_is_shown_with_its_tenants(server_factory, console):
    server = server_factory()
    with AdminClient(server.http_url, admin_token()) as api:
        tenant = tenant_of(api)
        api.update_settings(tenant, organization="acme")
        at = console(server.http_url, page="usage")
        quiet(at)
        assert [s.value for s in at.subheader if s.value.startswith("Organisation")] == ["Organisation acme"]
        org = api.organization_bill("acme")
        assert metrics(at)["Organisation projected"] == f"${org.projected['monthly_usd']:,.2f}"
        assert list(table(at, "tenant", "messages")["tenant"]) == [tenant]


@pytest.mark.pg
def test_the_tenant_picker_switches_between_tenants(server_factory, console):
    server = server_factory()
    body = {"tenant": {"external_id": "second", "jwt_secret": "second-secret-" + "s" * 40}}
    created = httpx.post(f"{server.http_url}/api/tenants", json=body, headers=admin_headers(), timeout=30)
    assert created.status_code == 201, created.text
    at = console(server.http_url, page="settings")
    picker = at.sidebar.selectbox(key="tenant")
    assert sorted(picker.options) == sorted(t.id for t in AdminClient(server.http_url, admin_token()).tenants())
    picker.set_value("second").run()
    quiet(at)
    assert at.session_state.tenant == "second"
    assert at.caption[0].value.startswith("Plan ")


@pytest.mark.pg
def test_on_an_empty_server_every_page_says_what_will_appear_and_how(server_factory, console):
    server = server_factory()
    for page in PAGES:
        at = console(server.http_url, page=page)
        quiet(at)
        assert at.info, page
        if page not in ("settings", "inspector"):  # the inspector's snippet is in its tail tab, shown too
            assert at.code, page


# -- failures ------------------------------------------------------------------------------------


def test_an_unreachable_server_is_reported_on_every_page(console):
    for page in PAGES:
        at = console("http://127.0.0.1:9", page=page)
        assert not at.exception
        assert "does not answer /healthcheck" in at.error[0].value


@pytest.mark.pg
def test_a_wrong_token_is_reported_as_refused(server, console):
    wrong = pyjwt.encode({"sub": "x", "iat": int(time.time())}, ADMIN_SECRET + "-not", algorithm="HS256")
    for page in ("overview", "usage"):
        at = console(server.http_url, token=wrong, page=page)
        assert not at.exception
        assert "refused the admin token (403)" in at.error[0].value


@pytest.mark.pg
def test_off_loopback_the_console_asks_for_the_token_once(server, console):
    at = console(server.http_url, address="0.0.0.0")
    assert not at.exception
    assert [t.value for t in at.title] == ["realtime-core console"]  # the environment's token is not used
    at.text_input[0].input(admin_token())
    at.button[0].click().run()
    quiet(at)
    assert [t.value for t in at.title] == ["Overview"]
    at.switch_page("../pages/usage.py").run()
    assert [t.value for t in at.title] == ["Usage & pricing"]
