'use strict';
/*
 * The reference fan-out server for bench/fanout.py: Node + `ws`, written the
 * way a fair, idiomatic ws application would be.
 *
 * It speaks the subset of the Phoenix V2 protocol that the load generator
 * uses (docs/protocol.md §2.2–2.4), so loadgen.js drives it and realtime-core alike:
 *   - text [join_ref, ref, topic, "phx_join", payload]  -> ok reply
 *     {"postgres_changes": []}, and the socket joins the topic;
 *   - text [null, ref, "phoenix", "heartbeat", {}]      -> ok reply on "phoenix";
 *   - text phx_leave                                    -> ok reply, socket leaves;
 *   - binary kind 3 (user_broadcast_push) on a joined topic -> ONE kind-4
 *     user_broadcast Buffer, built once and sent to every other member
 *     (broadcast self: false).
 * No authentication, presence or database: it is the cost of the fan-out
 * alone.
 *
 * --fault NAME breaks it on purpose, so that tests/test_bench_checks.py can
 * show that bench/fanout.py rejects a server that does not deliver exactly
 * what was sent (the counts of broadcasts are over the whole process):
 *   duplicate  every broadcast goes twice to every member;
 *   drop       broadcast 17 goes to nobody;
 *   reorder    broadcast 17 goes out after broadcast 18 (or 20 ms later);
 *   close      the 3rd, 13th, 23rd ... joined socket is closed (1011) 50 ms
 *              after its join reply.
 *
 * Usage: node ws_server.js PORT [HOST] [--fault NAME]   (prints "listening <port>" when ready)
 */

const { WebSocketServer } = require('ws');

const argv = process.argv.slice(2);
const faultAt = argv.indexOf('--fault');
const fault = faultAt >= 0 ? argv.splice(faultAt, 2)[1] : null;
if (fault !== null && !['duplicate', 'drop', 'reorder', 'close'].includes(fault)) {
  process.stderr.write(`ws_server: unknown fault ${fault}\n`);
  process.exit(2);
}
const port = Number(argv[0] || 0);
const host = argv[1] || '127.0.0.1';
const FAULT_AT = 17; // the broadcast that drop and reorder act on
let broadcasts = 0; // kind-3 broadcasts fanned out so far
let joins = 0; // phx_join requests answered so far
let held = null; // reorder: {members, out, sender, timer} of the broadcast held back

const topics = new Map(); // topic -> Set of sockets
const OK_JOIN = { status: 'ok', response: { postgres_changes: [] } };
const OK_EMPTY = { status: 'ok', response: {} };
const SEND_OPTS = { binary: true, compress: false };

function reply(ws, joinRef, ref, topic, payload) {
  ws.send(JSON.stringify([joinRef, ref, topic, 'phx_reply', payload]));
}

function onText(ws, data) {
  let msg;
  try {
    msg = JSON.parse(data.toString('utf8'));
  } catch {
    return; // docs/protocol.md §1.5: malformed frames are dropped, the socket stays open
  }
  if (!Array.isArray(msg) || msg.length < 5) return;
  const [joinRef, ref, topic, event] = msg;
  if (topic === 'phoenix' && event === 'heartbeat') {
    reply(ws, null, ref, 'phoenix', OK_EMPTY);
  } else if (event === 'phx_join') {
    let members = topics.get(topic);
    if (members === undefined) topics.set(topic, (members = new Set()));
    members.add(ws);
    ws.joined.add(topic);
    reply(ws, joinRef, ref, topic, OK_JOIN);
    if (fault === 'close' && ++joins % 10 === 3) setTimeout(() => ws.close(1011, 'fault: close'), 50);
  } else if (event === 'phx_leave') {
    leave(ws, topic);
    reply(ws, joinRef, ref, topic, OK_EMPTY);
  } else if (!ws.joined.has(topic)) {
    reply(ws, null, ref, topic, { status: 'error', response: { reason: 'unmatched topic' } });
  }
}

function onBinary(ws, data) {
  // kind 3: kind, join_ref_len, ref_len, topic_len, event_len, metadata_len,
  // encoding, then join_ref, ref, topic, event, metadata, payload (docs/protocol.md §2.3)
  if (data.length < 7 || data[0] !== 3) return;
  const jrLen = data[1];
  const refLen = data[2];
  const topicLen = data[3];
  const eventLen = data[4];
  const metaLen = data[5];
  const encoding = data[6];
  const topicAt = 7 + jrLen + refLen;
  const payloadAt = topicAt + topicLen + eventLen + metaLen;
  if (payloadAt > data.length) return;
  const topic = data.toString('utf8', topicAt, topicAt + topicLen);
  const members = topics.get(topic);
  if (members === undefined || !ws.joined.has(topic)) return;

  // kind 4: kind, topic_len, event_len, metadata_len, encoding, topic, event,
  // metadata (none: upstream drops it on re-broadcast, docs/protocol.md §4.1), payload.
  // Built once for every receiver.
  const out = Buffer.allocUnsafe(5 + topicLen + eventLen + (data.length - payloadAt));
  out[0] = 4;
  out[1] = topicLen;
  out[2] = eventLen;
  out[3] = 0;
  out[4] = encoding;
  data.copy(out, 5, topicAt, topicAt + topicLen + eventLen);
  data.copy(out, 5 + topicLen + eventLen, payloadAt);

  if (fault === null) {
    for (const peer of members) {
      if (peer !== ws && peer.readyState === 1) peer.send(out, SEND_OPTS);
    }
  } else {
    faultySend(members, out, ws);
  }
}

/** The fan-out of one broadcast under --fault (see the header). */
function faultySend(members, out, sender) {
  broadcasts++;
  if (fault === 'drop' && broadcasts === FAULT_AT) return;
  if (fault === 'reorder' && broadcasts === FAULT_AT) {
    held = { members: [...members], out, sender, timer: setTimeout(release, 20) };
    return;
  }
  for (const peer of members) {
    if (peer === sender || peer.readyState !== 1) continue;
    peer.send(out, SEND_OPTS);
    if (fault === 'duplicate') peer.send(out, SEND_OPTS);
  }
  if (held !== null) release();
}

/** reorder: send the broadcast held back. */
function release() {
  if (held === null) return;
  clearTimeout(held.timer);
  for (const peer of held.members) {
    if (peer !== held.sender && peer.readyState === 1) peer.send(held.out, SEND_OPTS);
  }
  held = null;
}

function leave(ws, topic) {
  const members = topics.get(topic);
  if (members !== undefined) {
    members.delete(ws);
    if (members.size === 0) topics.delete(topic);
  }
  ws.joined.delete(topic);
}

const wss = new WebSocketServer({
  host,
  port,
  perMessageDeflate: false, // upstream and realtime-core do not compress either
  clientTracking: false, // membership lives in `topics`
  maxPayload: 5_000_000, // docs/protocol.md §1.1
  backlog: 4096,
});

wss.on('connection', (ws) => {
  ws.joined = new Set();
  ws.on('message', (data, isBinary) => (isBinary ? onBinary(ws, data) : onText(ws, data)));
  ws.on('close', () => {
    for (const topic of ws.joined) leave(ws, topic);
  });
  ws.on('error', () => {});
});

wss.on('listening', () => {
  process.stdout.write(`listening ${wss.address().port}\n`);
});

wss.on('error', (err) => {
  process.stderr.write(`ws_server: ${err.message}\n`);
  process.exit(1);
});

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => process.exit(0));
}
