"""The seed's "Getting Started with Realtime" walkthrough, step by step, with @supabase/realtime-js.

Steps 3–5: a private channel `room:lobby:messages`, the two RLS policies of
step 4, messages through the client library, the REST API and database
triggers (`realtime.broadcast_changes` and `realtime.send`). The seed's
`realtime.send` example passes (topic, event, payload); upstream's signature
is (payload, event, topic, private), which is what runs here."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from conftest import MS, make_token
from jsclient import JsDriver

pytestmark = [pytest.mark.js, pytest.mark.pg]

STEP_4_POLICIES = """
CREATE POLICY "authenticated_users_can_receive" ON realtime.messages
  FOR SELECT TO authenticated USING (true);
CREATE POLICY "authenticated_users_can_send" ON realtime.messages
  FOR INSERT TO authenticated WITH CHECK (true);
"""

STEP_5_3_TRIGGERS = """
CREATE TABLE messages (
  id bigint generated always as identity primary key,
  room_id int not null,
  user_id text not null,
  content text,
  created_at timestamptz not null default now()
);

CREATE OR REPLACE FUNCTION broadcast_message_changes()
RETURNS TRIGGER AS $$
BEGIN
  PERFORM realtime.broadcast_changes(
    'room:' || COALESCE(NEW.room_id, OLD.room_id)::text || ':messages',
    TG_OP, TG_OP, TG_TABLE_NAME, TG_TABLE_SCHEMA, NEW, OLD
  );
  RETURN NULL;
END;
$$ LANGUAGE plpgsql SECURITY DEFINER;

CREATE TRIGGER messages_broadcast_trigger
  AFTER INSERT OR UPDATE OR DELETE ON messages
  FOR EACH ROW EXECUTE FUNCTION broadcast_message_changes();

CREATE OR REPLACE FUNCTION notify_message_activity()
RETURNS TRIGGER AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    PERFORM realtime.send(
      jsonb_build_object('message_id', NEW.id, 'user_id', NEW.user_id, 'room_id', NEW.room_id,
                         'created_at', NEW.created_at),
      'message_created',
      'room:' || NEW.room_id::text || ':notifications',
      true
    );
  END IF;
  RETURN NULL;
END;
$$ LANGUAGE plpgsql SECURITY DEFINER;

CREATE TRIGGER messages_notification_trigger
  AFTER INSERT ON messages
  FOR EACH ROW EXECUTE FUNCTION notify_message_activity();
"""


async def private_channel(js: JsDriver, name: str, url: str, token: str, topic: str, **config: Any) -> None:
    await js.client(name, url, token)
    await js.channel(name, name, topic, private=True, **config)
    await js.on(name, "broadcast", event="*")
    await js.subscribed(name)


async def broadcast(js: JsDriver, channel: str, since: int) -> dict[str, Any]:
    ev = await js.wait_for(lambda e: e["ev"] == "broadcast" and e["channel"] == channel, 5_000 * MS, since)
    return ev["payload"]


async def test_getting_started_walkthrough(cdc, db):
    alice = make_token("authenticated", sub="alice")
    bob = make_token("authenticated", sub="bob")
    async with JsDriver() as js:
        # Step 3 without step 4: a private channel needs a policy.
        await js.client("early", cdc.ws_url, alice)
        await js.channel("early", "early", "room:lobby:messages", private=True)
        status = await js.subscribe("early")
        assert status["status"] == "CHANNEL_ERROR"
        assert "Unauthorized: You do not have permissions to read" in status["error"]
        await js.request({"op": "removeChannel", "channel": "early"})

        # Step 4: the policies.
        db.execute(STEP_4_POLICIES)
        await private_channel(js, "alice", cdc.ws_url, alice, "room:lobby:messages")
        await private_channel(js, "bob", cdc.ws_url, bob, "room:lobby:messages")

        # Step 5.1: client libraries.
        mark = js.mark()
        message = {"type": "broadcast", "event": "message_sent", "payload": {"text": "Hello, world!"}}
        assert await js.request({"op": "send", "channel": "alice", "message": message}) == "ok"
        assert await broadcast(js, "bob", mark) == message

        # Step 5.2: the REST API, as a backend would call it.
        mark = js.mark()
        async with httpx.AsyncClient(base_url=cdc.http_url) as http:
            response = await http.post(
                "/realtime/v1/api/broadcast",
                headers={"apikey": alice, "Authorization": f"Bearer {alice}"},
                json={
                    "messages": [
                        {
                            "topic": "room:lobby:messages",
                            "event": "message_sent",
                            "payload": {"text": "from REST"},
                            "private": True,
                        }
                    ]
                },
            )
        assert response.status_code == 202
        assert (await broadcast(js, "bob", mark))["payload"] == {"text": "from REST"}

        # Step 5.3: database triggers.
        db.execute(STEP_5_3_TRIGGERS)
        await private_channel(js, "room", cdc.ws_url, bob, "room:1:messages")
        await private_channel(js, "notes", cdc.ws_url, bob, "room:1:notifications")
        mark = js.mark()
        db.execute("insert into messages (room_id, user_id, content) values (1, 'alice', 'hi there')")
        change = await broadcast(js, "room", mark)
        assert change["event"] == "INSERT"
        assert change["payload"]["operation"] == "INSERT"
        assert change["payload"]["record"]["content"] == "hi there"
        assert change["payload"]["old_record"] is None
        assert change["meta"]["id"] == change["payload"]["id"]
        note = await broadcast(js, "notes", mark)
        assert note["event"] == "message_created"
        assert note["payload"]["user_id"] == "alice" and note["payload"]["room_id"] == 1
