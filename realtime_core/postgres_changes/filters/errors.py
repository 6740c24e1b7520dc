"""The errors of Postgres Changes params and filters, with upstream's texts."""

from __future__ import annotations

__all__ = ["FilterError", "FilterParseError", "SubscriptionParamsError"]


class SubscriptionParamsError(ValueError):
    """Params upstream's parse_subscription_params/1 refuses; str() is the exact client text.

    Pushed as a `postgres_changes` system error and not retried (upstream
    `realtime_channel.ex handle_info(:postgres_subscribe)`)."""


class FilterParseError(SubscriptionParamsError):
    """A `filter` that does not parse: "Error parsing `filter` params: <reason>"."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Error parsing `filter` params: {reason}")
        self.reason = reason


class FilterError(ValueError):
    """A parsed filter that upstream's trigger `subscription_check_filters()` rejects.

    str() is the PostgreSQL error message upstream reports after "Exception: ".
    `sqlstate` is "P0001" for the trigger's own `raise exception` texts, or the
    code of PostgreSQL's error for a value that does not cast (e.g. "22P02")."""

    def __init__(self, message: str, sqlstate: str = "P0001", detail: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.detail = detail
