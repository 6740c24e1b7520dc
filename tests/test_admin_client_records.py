"""console/client.py's records for the answers other issues define (usage, bills, pricing,
replication, time series, channels), read from the contract's example shapes: named fields,
`extra` for the rest, and their DataFrames."""

from __future__ import annotations

from pricing_examples import PRO_BILL

from console.client import Bill, Channel, Estimate, PricingBill, Replication, TimeSeries, Usage

MESSAGES = {"broadcast": 3, "presence": 1, "postgres_changes": 0, "db_broadcast": 0, "rest": 2, "all": 6}


def test_usage_rows_per_day_or_hour():
    usage = Usage.from_json(
        {
            "tenant": "t",
            "from": "2026-12-01",
            "to": "2026-12-06",
            "days": [{"date": "2026-12-06", "messages": MESSAGES, "peak_connections": 4}],
            "total": {"messages": MESSAGES, "peak_connections": 4},
        }
    )
    assert (usage.from_, usage.to_dict()["from"]) == ("2026-12-01", "2026-12-01")
    frame = usage.to_frame()
    assert list(frame["messages.all"]) == [6] and list(frame["peak_connections"]) == [4]
    hourly = Usage.from_json({"tenant": "t", "from": "a", "to": "b", "hours": [{"hour": "h", "peak_connections": 1}]})
    assert hourly.days is None and list(hourly.to_frame()["hour"]) == ["h"]


def test_pricing_bill_and_estimate_tables():
    bill = PricingBill.from_json(PRO_BILL)
    assert bill.total_usd == 30.0 and list(bill.to_frame()["usd"]) == [10.0, 20.0]
    estimate = Estimate.from_json(
        {
            "messages_per_month": MESSAGES,
            "peak_connections": 1000,
            "plans": [{"plan": "pro", "monthly_usd": 40.0, "fits": True}, {"plan": "free", "fits": False}],
            "cheapest_plan": "pro",
            "warnings": [],
            "assumptions": ["…"],
            "new_field": 1,
        }
    )
    assert estimate.cheapest_plan == "pro" and estimate.extra == {"new_field": 1}
    assert list(estimate.to_frame()["plan"]) == ["pro", "free"]


def test_tenant_bill_lines_so_far_and_projected():
    lines = [{"item": "messages", "usd": 0.0}]
    bill = Bill.from_json(
        {"plan": "pro", "quota": {}, "so_far": {"lines": lines}, "projected": {"lines": lines}, "window": "1h"}
    )
    assert list(bill.to_frame()["bill"]) == ["so_far", "projected"]


def test_replication_timeseries_and_channel_frames():
    replication = Replication.from_json(
        {
            "slots": [{"name": "s", "kind": "postgres_changes", "active": True, "rows": {"seen": 1}}],
            "publication": {
                "name": "supabase_realtime",
                "tables": [{"schema": "public", "table": "t", "subscribers": 2}],
            },
            "messages": {"rows": 0, "bytes": 0, "partitions": 3, "oldest": None},
        }
    )
    assert list(replication.to_frame()["rows.seen"]) == [1]
    assert list(replication.tables_frame()["subscribers"]) == [2]
    series = TimeSeries.from_json(
        {
            "window": "10m",
            "step_seconds": 1,
            "timestamps": ["2026-12-06T07:00:00Z", "2026-12-06T07:00:01Z"],
            "series": {"connections": [1, 2], "joins": [0, 1]},
        }
    )
    frame = series.to_frame()
    assert list(frame.columns) == ["connections", "joins"] and str(frame.index.tz) == "UTC"
    channel = Channel.from_json(
        {
            "topic": "room",
            "private": False,
            "subscribers": 1,
            "presence": 0,
            "messages": {},
            "deliveries": {},
            "fan_out": None,
            "subscriber_list": [{"connection": "abc", "role": "anon", "sub": None}],
        }
    )
    assert list(channel.subscribers_frame()["connection"]) == ["abc"]
