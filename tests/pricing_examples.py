"""The hosted service's published pricing examples, as the tests of the pricing model, its
endpoints and the console's client use them."""

from __future__ import annotations

__all__ = ["ESTIMATE_INPUTS", "PRO_BILL"]

# "A thousand clients, two channels each, a message every ten seconds, fan-out 10, 200 listeners of
# 5 database changes a second, 8 hours a day": the what-if estimator's worked example.
ESTIMATE_INPUTS = {
    "concurrent_clients": 1000,
    "channels_per_client": 2,
    "messages_per_client_per_minute": 6,
    "fanout": 10,
    "presence_updates_per_client_per_hour": 0,
    "presence_members_per_channel": 0,
    "db_changes_per_second": 5,
    "db_listeners": 200,
    "rls_visible_share": 1.0,
    "hours_per_day": 8,
    "days": 30,
}

# "8.5M messages and 1,700 peak connections on Pro": $10 + $20 over the base fee.
PRO_BILL = {
    "plan": "pro",
    "total_usd": 30.0,
    "base_fee_usd": 25.0,
    "restricted": False,
    "lines": [
        {"item": "messages", "included": 5000000, "overage": 3500000, "packages": 4, "usd": 10.0},
        {"item": "peak_connections", "included": 500, "overage": 1200, "packages": 2, "usd": 20.0},
    ],
}
