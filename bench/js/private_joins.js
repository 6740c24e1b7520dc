'use strict';
/*
 * The private-join load generator driven by bench/private.py, phase (1).
 *
 * Opens --connections V2 sockets (RawClient from client.js; the apikey in
 * --url is a JWT with role `authenticated`) and, on each, keeps up to
 * --outstanding phx_join requests in flight. Every join is to a topic no
 * other join used, realtime:<prefix><n>, with {"config":{"private":true}}:
 * each one makes the server run an RLS read check against realtime.messages
 * (docs/protocol.md §3.3 step 10, §7). A join is counted when its phx_reply arrives:
 * status ok, or error (the server delays error replies by
 * CHANNEL_ERROR_BACKOFF_MS, docs/protocol.md §3.3), or a timeout after --timeout-ms.
 * Joined channels stay joined: each join adds one channel to its socket.
 *
 * After --warmup seconds it prints {"event":"mark","name":"measure_start"},
 * counts replies for --duration seconds, prints the measure_end mark, stops
 * sending, waits for the joins still in flight (up to --timeout-ms), and
 * prints one {"event":"result", ...}: ok and error replies in the window and
 * in total, timeouts, a few error reasons, ok replies per second of the
 * window, the join round trip (request sent -> reply) percentiles of the
 * window, and the generator's own CPU over the window. Stdout carries JSON
 * lines only; progress goes to stderr.
 */

const { performance } = require('perf_hooks');
const {
  RawClient,
  cpuSince,
  emit,
  logger,
  percentiles,
  poolUntilError,
  runMain,
  scriptOptions,
  sleep,
  usageProbe,
} = require('./client');

const DEFAULTS = {
  url: '', // ws://127.0.0.1:PORT/socket/websocket?apikey=<jwt>&vsn=2.0.0
  connections: 20,
  outstanding: 50, // joins in flight per connection
  duration: 10,
  warmup: 1.5,
  prefix: 'bench:',
  timeoutMs: 15000, // per join; above the server's 5 s error backoff
  connectTimeout: 30, // seconds, per handshake
};

const MAX_REASONS = 5;

const log = logger('private_joins');

/** The join round trip's figures, in ms (bench/private.py reports no p999 or min). */
function roundtrip(latencies) {
  const out = percentiles(Float64Array.from(latencies).sort());
  delete out.p999_ms;
  delete out.min_ms;
  return out;
}

async function main() {
  const opt = scriptOptions(DEFAULTS);
  if (opt === null) return 2;
  const sink = { delivered: 0, latency: null, wake: null };
  const clients = [];
  const failure = await poolUntilError(opt.connections, 20, 'connection', async (i) => {
    const c = new RawClient(sink);
    await c.open(opt.url, opt.connectTimeout * 1000);
    clients[i] = c;
  });
  if (failure !== null) {
    emit({ event: 'error', stage: 'connect', error: failure });
    for (const c of clients) if (c) c.close();
    return 1;
  }
  log(`${clients.length} connections open`);

  // Counters. `phase` is 0 before the window, 1 inside it, 2 after it.
  let phase = 0;
  let sending = true;
  let next = 0; // topic counter, shared by every connection
  const total = { sent: 0, ok: 0, error: 0, timeout: 0, closed: 0 };
  const win = { sent: 0, ok: 0, error: 0, timeout: 0, closed: 0 };
  const reasons = [];
  const latencies = []; // ms, replies received in the window
  const perSecond = []; // ok replies per second of the window
  let windowStart = 0;

  const joinOnce = async (c) => {
    const n = next++;
    const topic = `realtime:${opt.prefix}${n}`;
    const t0 = performance.now();
    total.sent++;
    if (phase === 1) win.sent++;
    let kind;
    let reason = null;
    try {
      const reply = await c.request(undefined, topic, 'phx_join', { config: { private: true } }, opt.timeoutMs);
      const body = reply[4] || {};
      if (body.status === 'ok') kind = 'ok';
      else {
        kind = 'error';
        reason = JSON.stringify(body).slice(0, 300);
      }
    } catch (err) {
      if (c.closed) kind = 'closed';
      else kind = 'timeout';
      reason = err.message;
    }
    const t1 = performance.now();
    total[kind]++;
    if (phase === 1) {
      win[kind]++;
      if (kind === 'ok') {
        latencies.push(t1 - t0);
        const sec = Math.floor((t1 - windowStart) / 1000);
        while (perSecond.length <= sec) perSecond.push(0);
        perSecond[sec]++;
      }
    }
    if (reason !== null && reasons.length < MAX_REASONS) reasons.push(`${topic}: ${kind}: ${reason}`);
  };

  const loop = async (c) => {
    while (sending && !c.closed) await joinOnce(c);
  };
  const loops = [];
  for (const c of clients) for (let k = 0; k < opt.outstanding; k++) loops.push(loop(c));

  await sleep(opt.warmup * 1000);
  const p0 = usageProbe();
  windowStart = p0.t;
  phase = 1;
  emit({ event: 'mark', name: 'measure_start', ok: total.ok, sent: total.sent });
  await sleep(opt.duration * 1000);
  phase = 2;
  const p1 = usageProbe();
  emit({ event: 'mark', name: 'measure_end', ok: total.ok, sent: total.sent });
  // The last partial second of the window is dropped from perSecond.
  const fullSeconds = Math.floor((p1.t - p0.t) / 1000);
  sending = false;
  const t = performance.now();
  await Promise.all(loops);
  const settleS = (performance.now() - t) / 1000;
  const closed = clients.filter((c) => c.closed).length;
  const notes = [];
  for (let i = 0; i < clients.length; i++) for (const n of clients[i].notes) if (notes.length < 10) notes.push(`#${i}: ${n}`);
  emit({
    event: 'result',
    connections: clients.length,
    outstanding_per_connection: opt.outstanding,
    window_s: (p1.t - p0.t) / 1000,
    window: win,
    total,
    ok_per_s: win.ok / ((p1.t - p0.t) / 1000),
    ok_per_second: perSecond.slice(0, fullSeconds),
    join_roundtrip: roundtrip(latencies),
    reasons,
    notes,
    connections_closed: closed,
    settle_s: settleS,
    ...cpuSince(p0, p1),
  });
  for (const c of clients) c.close();
  return 0;
}

runMain(main, 100);
