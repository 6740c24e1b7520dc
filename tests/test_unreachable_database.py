"""An unreachable tenant database as the channel sees it: join refusals counted by code on
/metrics (upstream's realtime_channel_global_error), and a token refresh that cannot re-check
the read policies shutting the channel down with upstream's transient text."""

from __future__ import annotations

from typing import Any

from fakes import TOPIC, Client, give_services, make_token, phx_close, settle

from realtime_core.authorization import UNREACHABLE_TEXT
from realtime_core.errors import UnableToConnectToProject
from realtime_core.metrics import parse_samples


class UnreachableAuthorizer:
    """Reads fail as a pool with no way to the database does, once `down`."""

    def __init__(self, down: bool = True) -> None:
        self.down = down

    async def read(self, topic: str, claims: Any, headers: Any, extensions: Any) -> dict[str, bool]:
        if self.down:
            raise UnableToConnectToProject(UNREACHABLE_TEXT)
        return dict.fromkeys(extensions, True)


async def test_refused_joins_are_counted_by_code(app):
    give_services(app, authorizer=UnreachableAuthorizer())
    client = Client(app)
    client.join("realtime:", "1")
    client.join("realtime:", "2")
    client.join("realtime:private", "3", config={"private": True})
    await settle()
    reasons = [message[4]["response"]["reason"] for message in client.received()]
    assert reasons == [
        "TopicNameRequired: You must provide a topic name",
        "TopicNameRequired: You must provide a topic name",
        "UnableToConnectToProject: Realtime was unable to connect to the project database",
    ]
    del app.services["realtime-dev"]  # its stand-in authorizer keeps no latency histograms
    samples = parse_samples(app.metrics.render().decode())
    assert [s.value for s in samples if s.name == "realtime_channel_join_errors_total"] == [3]
    assert {s.labels["code"]: s.value for s in samples if s.name == "realtime_channel_global_error"} == {
        "TopicNameRequired": 2,
        "UnableToConnectToProject": 1,
    }


async def test_a_private_join_while_the_services_could_not_start_is_unreachable_not_unauthorized(app):
    app.services.pop("realtime-dev", None)
    app.service_errors["realtime-dev"] = "connection refused"  # as App._starting_failed records it
    client = Client(app)
    client.join(config={"private": True})
    await settle()
    [reply] = client.received()
    assert reply[4] == {"status": "error", "response": {"reason": f"UnableToConnectToProject: {UNREACHABLE_TEXT}"}}
    del app.service_errors["realtime-dev"]  # a tenant without a database at all: no policies to pass
    client.join("realtime:other", "2", config={"private": True})
    await settle()
    assert client.received()[-1][4]["response"]["reason"].startswith("Unauthorized: ")


async def test_a_token_refresh_while_the_database_is_unreachable_shuts_down_with_the_transient_text(app):
    authorizer = UnreachableAuthorizer(down=False)
    give_services(app, authorizer=authorizer)
    client = Client(app)
    client.join(config={"private": True})
    await settle()
    assert client.received()[0][4]["status"] == "ok"
    authorizer.down = True
    client.push("1", "2", TOPIC, "access_token", {"access_token": make_token(exp_in=7200)})
    await settle()
    payload = {"extension": "system", "status": "error", "message": UNREACHABLE_TEXT, "channel": "room"}
    assert client.received() == [["1", None, TOPIC, "system", payload], phx_close("1")]
