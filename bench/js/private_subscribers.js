'use strict';
/*
 * The subscribers of broadcast-from-database driven by bench/private.py,
 * phase (2).
 *
 * Opens --subscribers V2 sockets (RawClient from client.js, apikey in --url
 * a JWT with role `authenticated`) and joins each to --topic with
 * {"config":{"private":true}}: the join runs the RLS read check, and the
 * channel then receives what realtime.send() writes to realtime.messages
 * for that topic (docs/protocol.md §4.4). Then it prints {"event":"ready"}.
 *
 * A delivery is a binary kind-4 frame (docs/protocol.md §2.3: 4, topic_len, event_len,
 * metadata_len, encoding, topic, event, metadata, payload). The bench writer
 * sends jsonb_build_object('i', <sequence number>, 't', <CLOCK_MONOTONIC ns>,
 * 'w', <writer>), which PostgreSQL prints as {"i": 12, "t": 2460000000000,
 * "w": 0, "id": "<uuid>"} (jsonb orders keys by length, then bytes). Per
 * delivery the receive loop reads only the digits of "i" and "w" (and of "t"
 * on the first --latency-subscribers sockets) without parsing the JSON, and
 * gives i to the socket's StreamCheck (client.js) on lane w: each writer
 * sends its numbers in increasing order, one transaction after the other, so
 * the report knows every missing, repeated, unexpected and out-of-order
 * message of every socket. The first delivery of each socket is
 * JSON.parse'd in full and checked (topic, event, encoding, meta.id equal to
 * payload.id).
 *
 * Latency: "t" is the writer's time.monotonic_ns() before its statement; the
 * receive time is process.hrtime.bigint(), the same kernel clock, so the
 * difference needs no anchoring.
 *
 * --fault duplicate-loss falsifies what socket 0 records, for the bench's
 * own tests (tests/test_bench_checks.py): its 3rd delivery is taken for a
 * second copy of its 2nd, as if the server had repeated one message and lost
 * another.
 *
 * Stdin takes one command per line:
 *   mark <name>         print {"event":"mark", name, delivered, generator_cpu_pct, generator_elu}
 *   expect <json>       {"total": n, "timeout_s": s, "grace_ms": g}: wait until
 *                       every open socket holds each i in [0, n) (or the
 *                       timeout), then g ms more for late extras, and print
 *                       {"event":"result", ...} with the verification
 *                       (verifyStreams in client.js)
 *   latency <json>      {"from_ns": a, "to_ns": b}: print {"event":"latency", ...}
 *                       percentiles over messages whose "t" lies in [a, b]
 *   quit                close every socket and exit
 * Every --progress-ms it prints {"event":"progress","delivered":n}.
 */

const { performance } = require('perf_hooks');
const {
  RawClient,
  SERVE_DEFAULTS,
  StreamCheck,
  emit,
  joinAll,
  logger,
  percentiles,
  runMain,
  scriptOptions,
  serveCommands,
  sleep,
  verifyStreams,
  waitUntil,
} = require('./client');

const DEFAULTS = {
  url: '',
  subscribers: 100,
  topic: 'realtime:bench:room',
  event: 'e',
  latencySubscribers: 5,
  fault: '', // '' | duplicate-loss (see above)
  joinConcurrency: 50,
  connectTimeout: 30, // seconds, per handshake and join reply
  ...SERVE_DEFAULTS,
};

const PRIVATE_JOIN = { config: { private: true, broadcast: { self: false, ack: false } } };
const KEY_I = Buffer.from('"i":');
const KEY_T = Buffer.from('"t":');
const KEY_W = Buffer.from('"w":');

const log = logger('private_subscribers');

/** The non-negative integer whose digits follow `key` (and spaces) at or after `from`; -1 if none. */
function intAfter(buf, key, from, end) {
  const k = buf.indexOf(key, from);
  if (k < 0 || k >= end) return -1;
  let i = k + key.length;
  while (i < end && buf[i] === 0x20) i++;
  let v = 0;
  const start = i;
  for (; i < end; i++) {
    const d = buf[i] - 48;
    if (d < 0 || d > 9) break;
    v = v * 10 + d;
  }
  return i > start ? v : -1;
}

class Subscriber extends RawClient {
  constructor(index, sink, opt, latency) {
    super(sink);
    this.index = index;
    this.opt = opt;
    this.latency = latency; // null, or the shared sample arrays {t, d, n}
    this.stream = new StreamCheck(0);
    this.badFrames = 0;
    this.seen = 0; // deliveries read so far
    this.previous = null; // --fault: the [i, w] of the delivery before
    this.checkedFirst = false;
  }

  /** Read "i", "w" (and "t") of one kind-4 frame: check i on lane w, record the delay since t. */
  _onBroadcast(buf, p, end) {
    const payloadAt = p + 5 + buf[p + 1] + buf[p + 2] + buf[p + 3];
    if (!this.checkedFirst) {
      this.checkedFirst = true;
      this.checkFull(buf, p, end);
    }
    let seq = intAfter(buf, KEY_I, payloadAt, end);
    let lane = intAfter(buf, KEY_W, payloadAt, end);
    if (this.index === 0 && this.opt.fault === 'duplicate-loss') {
      if (++this.seen === 3) [seq, lane] = this.previous;
      this.previous = [seq, lane];
    }
    if (seq < 0 || lane < 0) {
      this.badFrames++;
      this._note('delivery without "i" or "w": ' + buf.toString('utf8', payloadAt, Math.min(end, payloadAt + 200)));
    } else {
      this.stream.addOnLane(seq, lane);
    }
    const lat = this.latency;
    if (lat !== null) {
      const t = intAfter(buf, KEY_T, payloadAt, end);
      if (t >= 0) {
        if (this._now < 0) this._now = Number(process.hrtime.bigint()); // ns, the writer's clock
        lat.push(t, this._now - t);
      }
    }
  }

  /** JSON-parse one delivery and check it against docs/protocol.md §4.4 (V2 kind 4, encoding 1, meta.id). */
  checkFull(buf, p, end) {
    const topicLen = buf[p + 1];
    const eventLen = buf[p + 2];
    const metaLen = buf[p + 3];
    const encoding = buf[p + 4];
    let at = p + 5;
    const topic = buf.toString('utf8', at, (at += topicLen));
    const event = buf.toString('utf8', at, (at += eventLen));
    const metaText = buf.toString('utf8', at, (at += metaLen));
    const payloadText = buf.toString('utf8', at, end);
    const problems = [];
    if (topic !== this.opt.topic) problems.push(`topic ${topic}`);
    if (event !== this.opt.event) problems.push(`event ${event}`);
    if (encoding !== 1) problems.push(`encoding ${encoding}`);
    try {
      const meta = JSON.parse(metaText);
      const payload = JSON.parse(payloadText);
      if (typeof meta.id !== 'string' || meta.id.length !== 36) problems.push('meta.id');
      if (payload.id !== meta.id) problems.push('payload.id != meta.id');
      if (![payload.i, payload.t, payload.w].every(Number.isInteger)) problems.push('payload i/t/w');
    } catch (e) {
      problems.push('bad JSON');
    }
    if (problems.length) {
      this.badFrames++;
      this._note(`first delivery: ${problems.join(', ')}: ${metaText} ${payloadText.slice(0, 200)}`);
    }
  }
}

/** Latency samples: (t ns, delay ns) pairs in growing Float64Arrays. */
class Samples {
  constructor() {
    this.t = new Float64Array(1 << 16);
    this.d = new Float64Array(1 << 16);
    this.n = 0;
  }

  push(t, d) {
    if (this.n === this.t.length) {
      const t2 = new Float64Array(this.t.length * 2);
      const d2 = new Float64Array(this.d.length * 2);
      t2.set(this.t);
      d2.set(this.d);
      this.t = t2;
      this.d = d2;
    }
    this.t[this.n] = t;
    this.d[this.n] = d;
    this.n++;
  }

  /** The `latency` command's figures, in ms, over messages whose t lies in [fromNs, toNs]. */
  summary(fromNs, toNs) {
    const picked = [];
    for (let k = 0; k < this.n; k++) if (this.t[k] >= fromNs && this.t[k] <= toNs) picked.push(this.d[k] / 1e6);
    return percentiles(Float64Array.from(picked).sort());
  }
}

/** The `expect` command: wait until every open socket holds each i in [0, total), then verify every socket. */
async function expect(subs, sink, arg) {
  const { total, timeout_s: timeoutS, grace_ms: graceMs } = JSON.parse(arg);
  const t = performance.now();
  const drained = await waitUntil(() => subs.every((s) => s.closed || s.stream.unique >= total), timeoutS * 1000, 20);
  const drainS = (performance.now() - t) / 1000;
  await sleep(graceMs); // anything arriving now is an extra copy or was never sent
  const notes = [];
  for (let i = 0; i < subs.length; i++) for (const note of subs[i].notes) if (notes.length < 10) notes.push(`#${i}: ${note}`);
  return {
    event: 'result',
    drained,
    drain_s: drainS,
    delivered: sink.delivered,
    expected: total * subs.length,
    verification: verifyStreams(subs, total),
    notes,
  };
}

async function main() {
  const opt = scriptOptions(DEFAULTS);
  if (opt === null) return 2;
  if (!['', 'duplicate-loss'].includes(opt.fault)) {
    emit({ event: 'error', error: `unknown --fault ${opt.fault}` });
    return 2;
  }
  const sink = { delivered: 0, latency: null, wake: null };
  const samples = new Samples();
  const subs = [];
  for (let i = 0; i < opt.subscribers; i++) {
    subs.push(new Subscriber(i, sink, opt, i < opt.latencySubscribers ? samples : null));
  }
  const t0 = performance.now();
  const { joined, failure } = await joinAll(subs, 'subscriber', PRIVATE_JOIN, opt);
  if (failure !== null) {
    emit({ event: 'error', stage: 'subscribe', error: `${failure} (${joined} of ${subs.length} joined)` });
    for (const s of subs) s.close();
    return 1;
  }
  const subscribeS = (performance.now() - t0) / 1000;
  log(`${subs.length} subscribers joined ${opt.topic} (private) in ${subscribeS.toFixed(2)} s`);
  emit({ event: 'ready', subscribers: subs.length, subscribe_s: subscribeS, hrtime_ns: process.hrtime.bigint().toString() });
  const commands = {
    expect: (arg) => expect(subs, sink, arg),
    latency: (arg) => {
      const { from_ns: fromNs, to_ns: toNs } = JSON.parse(arg);
      return { event: 'latency', ...samples.summary(fromNs, toNs) };
    },
  };
  await serveCommands(opt, { sink, clients: subs, commands, log });
  return 0;
}

runMain(main, 100);
