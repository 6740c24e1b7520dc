"""Postgres Changes subscription params, row filters, and their evaluation.

cdc.py calls parse_params() on each `postgres_changes` entry of a join (pure;
a SubscriptionParamsError is pushed to the client as-is). Before writing a
subscription row it checks the filters against the table the way upstream's
trigger `realtime.subscription_check_filters()` does: validate() without I/O,
then validate_values() in the database (or both, in upstream's exact order,
with validate_subscription()). A FilterError is reported inside upstream's
"Unable to subscribe ... Exception: <message>" text.

dispatch.py builds one FilterEvaluator per (table, distinct conditions) from
load_columns(), and calls evaluate() once per batch of changes: one query
computes every condition for every change with PostgreSQL's own operators on
the column's type (upstream `check_equality_op`), so `1.50 = 1.5`
on numeric, jsonb equality, enum order and time zones all hold. Conditions
whose semantics a Python comparison reproduces exactly (integers, booleans,
uuids, text equality) skip the database. Every value reaches SQL as a query
parameter and every type name as a `psycopg.sql.Identifier`: no SQL text is
ever built from a client string.

One concern per module: errors, conditions (Condition and the operators),
parsing (params and `filter` strings), elixir (upstream's inspect/1 texts),
columns (the catalog), validation, execute (queries that keep the caller's
transaction), evaluator (the SQL evaluation) and fast_path (its Python part).
"""

from .columns import ColumnInfo, load_columns
from .conditions import MAX_IN_VALUES, OPERATORS, Condition, Event, Op
from .elixir import elixir_inspect
from .errors import FilterError, FilterParseError, SubscriptionParamsError
from .evaluator import FilterEvaluator, conditions_match
from .parsing import SubscriptionParams, parse_filter, parse_params
from .validation import validate, validate_subscription, validate_values

__all__ = [
    "MAX_IN_VALUES",
    "OPERATORS",
    "ColumnInfo",
    "Condition",
    "Event",
    "FilterError",
    "FilterEvaluator",
    "FilterParseError",
    "Op",
    "SubscriptionParams",
    "SubscriptionParamsError",
    "conditions_match",
    "elixir_inspect",
    "load_columns",
    "parse_filter",
    "parse_params",
    "validate",
    "validate_subscription",
    "validate_values",
]
