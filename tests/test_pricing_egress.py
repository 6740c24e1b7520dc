"""Egress in pricing (realtime_core/pricing.py): the egress line of a bill (included bytes,
prorated overage rounded to the cent, hard quotas), organisations (included once), projections,
enterprise figures, and the estimator's envelope per serializer, checked against frames built
independently with websockets' framing and against what a running server really sends."""

from __future__ import annotations

import asyncio
import json
import struct
from decimal import Decimal

import pytest
from conftest import MS, make_token
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader
from wire import V1, V2, RawClient, kind3
from wire import Frame as WireFrame

from realtime_core.plans import GB, PLANS, effective_plan
from realtime_core.pricing import (
    EGRESS_NOTE,
    ENVELOPE_EVENT,
    ENVELOPE_TOPIC,
    EstimateInputs,
    PricingOutOfRange,
    Usage,
    bill,
    envelope,
    estimate,
    organization_bill,
    project,
)

PRO, TEAM, FREE, CAPPED = PLANS["pro"], PLANS["team"], PLANS["free"], PLANS["pro_capped"]


def egress_line(b) -> dict:  # type: ignore[no-untyped-def]
    (line,) = [x for x in b.model_dump(mode="json")["lines"] if x["item"] == "egress"]
    return line


class TestEgressLine:
    def test_the_published_figures(self):
        assert [PLANS[n].included_egress_bytes for n in ("free", "pro_capped", "pro", "team")] == [
            5 * GB,
            250 * GB,
            250 * GB,
            250 * GB,
        ]
        assert {p.egress_usd_per_gb for p in PLANS.values()} == {0.09}
        assert GB == 10**9

    def test_exactly_at_the_included_bytes_nothing_is_billed(self):
        b = bill(PRO, 0, 0, 250 * GB)
        assert egress_line(b) == {
            "item": "egress",
            "used": 250 * GB,
            "included": 250 * GB,
            "overage": 0,
            "packages": None,
            "package_size": GB,
            "package_usd": 0.09,
            "usd": 0.0,
        }
        assert b.total_usd == 0 and not b.restricted

    def test_one_byte_over_is_prorated_not_a_package(self):
        b = bill(PRO, 0, 0, 250 * GB + 1)
        assert (b.lines[2].overage, b.lines[2].packages, b.lines[2].usd) == (1, None, 0)  # $9e-11: 0 cents
        assert bill(PRO, 0, 0, 251 * GB).lines[2].usd == Decimal("0.09")

    @pytest.mark.parametrize(
        ("over", "usd"),
        [
            (GB // 2, "0.05"),  # $0.045: half a cent rounds up
            (GB // 2 - 1, "0.04"),  # just under half a cent
            (3 * GB // 2, "0.14"),  # $0.135
            (GB // 9, "0.01"),  # $0.00999999999
            (100 * GB + 1, "9.00"),
            (10**18 - 250 * GB, "89999977.50"),
        ],
    )
    def test_the_overage_is_prorated_to_the_cent(self, over, usd):
        b = bill(TEAM, 0, 0, 250 * GB + over)
        assert b.lines[2].usd == Decimal(usd)
        assert b.total_usd == Decimal(usd) and b.monthly_usd == 599 + Decimal(usd)
        assert Decimal(repr(b.model_dump(mode="json")["total_usd"])) == Decimal(usd)

    def test_it_adds_to_messages_and_connections(self):
        b = bill(PRO, 8_500_000, 1_700, 260 * GB)
        assert [(x.item, x.usd) for x in b.lines] == [
            ("messages", 10),
            ("peak_connections", 20),
            ("egress", Decimal("0.90")),
        ]
        assert b.total_usd == Decimal("30.90") and b.monthly_usd == Decimal("55.90")

    def test_free_past_5_gb_is_restricted_and_bills_nothing(self):
        assert not bill(FREE, 0, 0, 5 * GB).restricted
        b = bill(FREE, 0, 0, 5 * GB + 1)
        assert b.restricted and b.total_usd == 0 and b.monthly_usd == 0
        assert (b.lines[2].overage, b.lines[2].usd) == (1, 0)
        assert bill(FREE, 0, 0, 10**18).total_usd == 0

    def test_pro_with_the_spend_cap_is_restricted_past_250_gb(self):
        assert not bill(CAPPED, 0, 0, 250 * GB).restricted
        b = bill(CAPPED, 0, 0, 250 * GB + 1)
        assert b.restricted and b.total_usd == 0

    def test_without_egress_the_bill_is_as_before(self):
        """Issue #11's example: two lines, no notes, the same answer."""
        plain = bill(PRO, 8_500_000, 1_700).model_dump(mode="json")
        assert [x["item"] for x in plain["lines"]] == ["messages", "peak_connections"]
        assert "notes" not in plain and plain["total_usd"] == 30.0

    def test_with_egress_the_bill_says_what_the_figure_covers(self):
        shown = bill(PRO, 0, 0, 0).model_dump(mode="json")
        assert shown["notes"] == [EGRESS_NOTE]
        assert "Realtime share" in EGRESS_NOTE and "organisation" in EGRESS_NOTE

    def test_a_negative_egress_is_refused(self):
        with pytest.raises(ValueError):
            bill(PRO, 0, 0, -1)

    def test_enterprise_egress_comes_from_the_tenant(self):
        plan = effective_plan("enterprise", {"included_egress_bytes": 10 * GB, "egress_usd_per_gb": 0.05})
        assert bill(plan, 0, 0, 30 * GB).lines[2].usd == 1
        # a numeric column reads back as a Decimal: the same price
        from_db = effective_plan("enterprise", {"egress_usd_per_gb": Decimal("0.07")})
        assert (from_db.included_egress_bytes, bill(from_db, 0, 0, 260 * GB).lines[2].usd) == (
            250 * GB,
            Decimal("0.70"),
        )
        assert effective_plan("pro", {"egress_usd_per_gb": 1.0}) is PRO  # only enterprise takes custom figures


class TestOrganisationEgress:
    def test_summed_and_included_once(self):
        b = organization_bill([(PRO, Usage(0, 0, 200 * GB)), (PRO, Usage(0, 0, 200 * GB))])
        line = egress_line(b)
        assert (line["used"], line["included"], line["overage"], line["usd"]) == (400 * GB, 250 * GB, 150 * GB, 13.5)
        assert b.base_fee_usd == 25

    def test_free_tenants_each_under_5_gb_but_not_together(self):
        b = organization_bill([(FREE, Usage(0, 0, 3 * GB)), (FREE, Usage(0, 0, 3 * GB))])
        assert b.restricted and b.total_usd == 0

    def test_a_tenant_without_egress_counts_nothing(self):
        b = organization_bill([(PRO, Usage(1, 1)), (PRO, Usage(1, 1, 251 * GB))])
        assert egress_line(b)["used"] == 251 * GB
        assert [x.item for x in organization_bill([(PRO, Usage(1, 1)), (PRO, Usage(1, 1))]).lines] == [
            "messages",
            "peak_connections",
        ]


class TestEgressProjection:
    def test_egress_runs_at_the_window_rate_like_messages(self):
        day = 86_400
        p = project(Usage(10, 5, 100 * GB), 1, 3_600, 10 * day, 30 * day, window_egress_bytes=GB)
        assert p == Usage(10 + 480, 5, 100 * GB + 480 * GB)

    def test_partial_bytes_round_up_and_no_egress_stays_none(self):
        assert project(Usage(0, 0, 0), 0, 3, 0, 1, window_egress_bytes=1).egress_bytes == 1
        assert project(Usage(0, 0), 5, 1, 0, 10, window_egress_bytes=7).egress_bytes is None
        with pytest.raises(ValueError):
            project(Usage(0, 0, 0), 0, 1, 0, 1, window_egress_bytes=-1)


# -- The estimator -----------------------------------------------------------------------

EXAMPLE = {
    "concurrent_clients": 1000,
    "channels_per_client": 2,
    "messages_per_client_per_minute": 6.0,
    "fanout": 10.0,
    "presence_updates_per_client_per_hour": 0.0,
    "presence_members_per_channel": 0.0,
    "db_changes_per_second": 5.0,
    "db_listeners": 200,
}


def websocket_frame(opcode: Opcode, body: bytes) -> bytes:
    """A server frame (unmasked, unfragmented, no extensions) as websockets writes it."""
    return Frame(opcode, body).serialize(mask=False, extensions=[])


def v1_body(payload: bytes) -> bytes:
    """A vsn 1.0.0 broadcast as upstream's JSON serializer writes it (docs/protocol.md §2.3)."""
    text = json.dumps(
        {
            "topic": ENVELOPE_TOPIC,
            "event": "broadcast",
            "payload": {"event": ENVELOPE_EVENT, "payload": "@", "type": "broadcast"},
            "ref": None,
        },
        separators=(",", ":"),
    )
    return text.replace('"@"', payload.decode()).encode()


def v2_body(payload: bytes) -> bytes:
    """A vsn 2.0.0 binary user broadcast (kind 4): 4, topic, event and metadata lengths, encoding
    (1 = JSON), topic, event, payload."""
    topic, event = ENVELOPE_TOPIC.encode(), ENVELOPE_EVENT.encode()
    return struct.pack("!5B", 4, len(topic), len(event), 0, 1) + topic + event + payload


def received(frame: bytes) -> Frame:
    """`frame` parsed by websockets' frame reader as a client reads it: one whole frame, no more."""
    reader = StreamReader()
    reader.feed_data(frame)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None, extensions=[])
    with pytest.raises(StopIteration) as done:
        next(parser)
    assert reader.at_eof()
    return done.value.value


def json_payload(size: int) -> bytes:
    return b"0" if size == 1 else b'"' + b"x" * (size - 2) + b'"'


class TestEnvelope:
    # 1 byte; under and over the 126-byte WebSocket length boundary; over the 65,536 one.
    @pytest.mark.parametrize("size", [1, 2, 50, 100, 125, 126, 200, 65_535, 65_600, 3_000 * 1024])
    def test_the_overhead_is_the_real_frames(self, size):
        payload = json_payload(size)
        expected = {
            "1.0.0": websocket_frame(Opcode.TEXT, v1_body(payload)),
            "2.0.0": websocket_frame(Opcode.BINARY, v2_body(payload)),
        }
        for vsn, frame in expected.items():  # websockets reads them back as one frame each
            assert received(frame).data == (v1_body(payload) if vsn == "1.0.0" else v2_body(payload))
        sent_as_json = b'{"type":"broadcast","event":"%s","payload":%s}' % (ENVELOPE_EVENT.encode(), payload)
        array = b'[null,null,"%s","broadcast",%s]' % (ENVELOPE_TOPIC.encode(), sent_as_json)
        assert json.loads(received(websocket_frame(Opcode.TEXT, array)).data)[4]["payload"] == json.loads(payload)
        e = envelope(size)
        assert [(f.vsn, f.frame_bytes, f.overhead_bytes) for f in e.frames] == [
            *((vsn, len(frame), len(frame) - size) for vsn, frame in expected.items()),
            ("2.0.0", len(websocket_frame(Opcode.TEXT, array)), len(websocket_frame(Opcode.TEXT, array)) - size),
        ]
        assert e.saving_bytes == len(expected["1.0.0"]) - len(expected["2.0.0"]) > 0
        assert (e.topic, e.event, e.payload_bytes) == (ENVELOPE_TOPIC, ENVELOPE_EVENT, size)

    def test_the_estimate_shows_it_with_or_without_a_payload_size(self):
        assert estimate(EstimateInputs(**EXAMPLE)).envelope == envelope(100)
        assert estimate(EstimateInputs(**EXAMPLE, payload_bytes=512)).envelope == envelope(512)


class TestEstimatedEgress:
    def test_without_a_payload_size_nothing_changes(self):
        e = estimate(EstimateInputs(**EXAMPLE))
        assert e.egress_bytes_per_month is None
        assert all([x.item for x in p.bill.lines] == ["messages", "peak_connections"] for p in e.plans)
        assert not any("egress" in a for a in e.assumptions)

    def test_deliveries_times_frames(self):
        e = estimate(EstimateInputs(**EXAMPLE, payload_bytes=100, hours_per_day=8.0))
        month = 8 * 3600 * 30
        broadcasts = 1000 * 6 * 60 * 8 * 30 * 10  # delivered: fan-out copies, none back to the sender
        changes = 5 * month * 200
        v1 = len(websocket_frame(Opcode.TEXT, v1_body(json_payload(100))))
        v2 = len(websocket_frame(Opcode.BINARY, v2_body(json_payload(100))))
        assert e.egress_bytes_per_month["1.0.0"]["broadcast"] == broadcasts * v1
        assert e.egress_bytes_per_month["2.0.0"]["broadcast"] == broadcasts * v2
        change_v1 = len(
            websocket_frame(
                Opcode.TEXT,
                b'{"topic":"%s","event":"postgres_changes","payload":%s,"ref":null}'
                % (ENVELOPE_TOPIC.encode(), json_payload(100)),
            )
        )
        assert e.egress_bytes_per_month["1.0.0"]["postgres_changes"] == changes * change_v1
        for kinds in e.egress_bytes_per_month.values():
            assert kinds["all"] == kinds["broadcast"] + kinds["presence"] + kinds["postgres_changes"]
        pro = next(p for p in e.plans if p.plan == "pro")
        (line,) = [x for x in pro.bill.lines if x.item == "egress"]
        assert line.used == e.egress_bytes_per_month["1.0.0"]["all"]  # priced with the clients' vsn
        assert pro.bill.notes == (EGRESS_NOTE,)
        assert any("Realtime share" in a for a in e.assumptions)

    def test_the_serializer_prices_the_egress(self):
        big = {**EXAMPLE, "payload_bytes": 2_000, "hours_per_day": 24.0}
        v1 = {p.plan: p for p in estimate(EstimateInputs(**big)).plans}
        v2 = {p.plan: p for p in estimate(EstimateInputs(**big, vsn="2.0.0")).plans}
        assert v2["pro"].monthly_usd < v1["pro"].monthly_usd

    def test_free_is_restricted_by_egress_alone(self):
        small = dict.fromkeys(EXAMPLE, 0) | {"concurrent_clients": 10, "db_changes_per_second": 0.0}
        small |= {"messages_per_client_per_minute": 0.0, "fanout": 0.0, "presence_updates_per_client_per_hour": 0.0}
        small |= {"presence_members_per_channel": 0.0, "db_listeners": 10, "db_changes_per_second": 0.001}
        base = estimate(EstimateInputs(**small, payload_bytes=1_000))
        free = next(p for p in base.plans if p.plan == "free")
        assert free.fits  # 26,784 changes of ~1 KB: far under 5 GB
        heavy = estimate(EstimateInputs(**small, payload_bytes=3_000 * 1024, hours_per_day=24.0))
        free = next(p for p in heavy.plans if p.plan == "free")
        assert heavy.messages_per_month["all"] <= 2_000_000
        assert not free.fits and free.restricted
        assert any(w.startswith("egress ") and "bytes exceed the hard quota" in w for w in free.warnings)

    def test_too_large_to_price_exactly_names_payload_bytes(self):
        huge = {**EXAMPLE, "concurrent_clients": 10**6, "fanout": 10.0**6, "messages_per_client_per_minute": 6000.0}
        with pytest.raises(PricingOutOfRange) as refused:
            estimate(EstimateInputs(**huge, payload_bytes=3_000 * 1024))
        assert refused.value.field == "payload_bytes"


# -- A running server sends exactly these frames -----------------------------------------


async def raw_broadcast(client: RawClient) -> str | bytes:
    """The next broadcast `client` receives, exactly as the server wrote its message."""
    while True:
        data = await asyncio.wait_for(client.ws.recv(), 10_000 * MS)
        if isinstance(data, bytes) or WireFrame.decode(data).event == "broadcast":
            return data


@pytest.mark.pg
@pytest.mark.parametrize("size", [1, 100, 200, 70_000])
async def test_a_server_sends_the_estimated_frames(server, size):  # type: ignore[no-untyped-def]
    """A broadcast of `size` payload bytes on the envelope's topic, received by a vsn 1.0.0 and
    a vsn 2.0.0 socket: each message with websockets' framing is the estimator's frame_bytes."""
    expected = {f.vsn: f.frame_bytes for f in envelope(size).frames[:2]}
    payload = json_payload(size).decode()
    clients = [await RawClient.open(server.socket_url(make_token(), vsn), vsn) for vsn in (V1, V2, V2)]
    try:
        for client in clients:
            await client.join(ENVELOPE_TOPIC, join_ref="1")
        v1, v2, sender = clients
        # realtime-js on vsn 2.0.0 sends channel.send() as a binary user broadcast push (kind 3)
        await sender.send(kind3(ENVELOPE_TOPIC, ENVELOPE_EVENT, payload.encode(), join_ref="1", ref="2"))
        text, data = await raw_broadcast(v1), await raw_broadcast(v2)
        # the same broadcast sent as JSON text (as a vsn 1.0.0 client sends it)
        body = {"type": "broadcast", "event": ENVELOPE_EVENT, "payload": json.loads(payload)}
        await sender.push(ENVELOPE_TOPIC, "broadcast", body, join_ref="1")
        array = await raw_broadcast(v2)
    finally:
        for client in clients:
            await client.close()
    assert isinstance(text, str) and isinstance(data, bytes) and isinstance(array, str)
    assert len(websocket_frame(Opcode.TEXT, array.encode())) == envelope(size).frames[2].frame_bytes
    assert len(websocket_frame(Opcode.TEXT, text.encode())) == expected["1.0.0"]
    assert data == v2_body(payload.encode())
    assert len(websocket_frame(Opcode.BINARY, data)) == expected["2.0.0"]


# -- Properties --------------------------------------------------------------------------

usages = st.builds(
    Usage,
    st.integers(0, 10**12),
    st.integers(0, 10**6),
    st.one_of(st.none(), st.integers(0, 10**15)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(PLANS.values())), usages), min_size=1, max_size=6))
def test_an_organisation_is_billed_once_on_its_sums(tenants):
    b = organization_bill(tenants)
    egress = [u.egress_bytes for _, u in tenants if u.egress_bytes is not None]
    plan = PLANS[b.plan]
    assert b == bill(
        plan,
        sum(u.messages for _, u in tenants),
        sum(u.peak_connections for _, u in tenants),
        sum(egress) if egress else None,
    )
    if egress:  # the included bytes once, whatever the number of tenants
        assert b.lines[2].included == plan.included_egress_bytes
        assert b.lines[2].overage == max(sum(egress) - plan.included_egress_bytes, 0)


@settings(max_examples=200, deadline=None)
@given(usages, st.integers(0, 10**9), st.integers(0, 10**12), st.integers(1, 10**7), st.integers(0, 10**7))
def test_a_projection_never_goes_below_the_usage_so_far(so_far, window_messages, window_egress, window, left):
    p = project(so_far, window_messages, window, 0, left, window_egress_bytes=window_egress)
    assert p.messages >= so_far.messages and p.peak_connections == so_far.peak_connections
    if so_far.egress_bytes is None:
        assert p.egress_bytes is None
    else:
        assert p.egress_bytes >= so_far.egress_bytes
        more = project(so_far, window_messages, window, 0, left, window_egress_bytes=window_egress + 1)
        assert more.egress_bytes >= p.egress_bytes
