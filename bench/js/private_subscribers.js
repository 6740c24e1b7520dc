'use strict';
/*
 * The subscribers of broadcast-from-database driven by bench/private.py,
 * phase (2).
 *
 * Opens --subscribers V2 sockets (RawClient from client.js, apikey in --url
 * a JWT with role `authenticated`) and joins each to --topic with
 * {"config":{"private":true}}: the join runs the RLS read check, and the
 * channel then receives what realtime.send() writes to realtime.messages
 * for that topic (spec §4.4). Then it prints {"event":"ready"}.
 *
 * A delivery is a binary kind-4 frame (spec §2.3: 4, topic_len, event_len,
 * metadata_len, encoding, topic, event, metadata, payload). The bench writer
 * sends jsonb_build_object('i', <sequence number>, 't', <CLOCK_MONOTONIC ns>),
 * which PostgreSQL prints as {"i": 12, "t": 2460000000000, "id": "<uuid>"}
 * (jsonb orders keys by length, then bytes). Per delivery the receive loop
 * reads only the digits of "i" (and of "t" on the first --latency-subscribers
 * sockets) without parsing the JSON, and marks i in a per-socket bitmap, so
 * the report knows every missing and duplicated message of every socket. The
 * first delivery of each socket is JSON.parse'd in full and checked (topic,
 * event, encoding, meta.id equal to payload.id).
 *
 * Latency: "t" is the writer's time.monotonic_ns() before its statement; the
 * receive time is process.hrtime.bigint(), the same kernel clock, so the
 * difference needs no anchoring.
 *
 * Stdin takes one command per line:
 *   mark <name>         print {"event":"mark", name, delivered, generator_cpu_pct, generator_elu}
 *   expect <json>       {"total": n, "timeout_s": s}: wait until every open
 *                       socket holds each i in [0, n) (or the timeout), then
 *                       print {"event":"result", ...}: missing, duplicates,
 *                       out of range, bad frames, closed sockets
 *   latency <json>      {"from_ns": a, "to_ns": b}: print {"event":"latency", ...}
 *                       percentiles over messages whose "t" lies in [a, b]
 *   quit                close every socket and exit
 * Every --progress-ms it prints {"event":"progress","delivered":n}.
 */

const readline = require('readline');
const { performance } = require('perf_hooks');
const { RawClient, parseArgs, pool } = require('./client');

const DEFAULTS = {
  url: '',
  subscribers: 100,
  topic: 'realtime:bench:room',
  event: 'e',
  latencySubscribers: 5,
  joinConcurrency: 50,
  connectTimeout: 30, // seconds, per handshake and join reply
  progressMs: 50,
  heartbeatInterval: 25, // seconds (spec 1.5)
};

const KIND_USER_BROADCAST = 4;
const MAX_NOTES = 5;
const KEY_I = Buffer.from('"i":');
const KEY_T = Buffer.from('"t":');

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function log(msg) {
  process.stderr.write(`private_subscribers: ${msg}\n`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

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

/** A growable bitmap of sequence numbers: which messages a socket received. */
class Seen {
  constructor() {
    this.bits = new Uint8Array(1 << 16);
    this.unique = 0;
    this.duplicates = 0;
  }

  add(i) {
    const byte = i >>> 3;
    if (byte >= this.bits.length) {
      let size = this.bits.length;
      while (size <= byte) size *= 2;
      const bigger = new Uint8Array(size);
      bigger.set(this.bits);
      this.bits = bigger;
    }
    const mask = 1 << (i & 7);
    if (this.bits[byte] & mask) this.duplicates++;
    else {
      this.bits[byte] |= mask;
      this.unique++;
    }
  }

  /** Count of i in [0, total) that were not received. */
  missing(total) {
    let have = 0;
    const full = total >>> 3;
    const bits = this.bits;
    for (let b = 0; b < full && b < bits.length; b++) {
      let v = bits[b];
      while (v) {
        v &= v - 1;
        have++;
      }
    }
    for (let i = full * 8; i < total; i++) if (this.has(i)) have++;
    return total - have;
  }

  has(i) {
    const byte = i >>> 3;
    return byte < this.bits.length && (this.bits[byte] & (1 << (i & 7))) !== 0;
  }

  /** The first few missing i in [0, total). */
  firstMissing(total, limit) {
    const out = [];
    for (let i = 0; i < total && out.length < limit; i++) if (!this.has(i)) out.push(i);
    return out;
  }
}

class Subscriber extends RawClient {
  constructor(index, sink, opt, latency) {
    super(sink);
    this.index = index;
    this.opt = opt;
    this.latency = latency; // null, or the shared sample arrays {t, d, n}
    this.seen = new Seen();
    this.maxI = -1;
    this.badFrames = 0;
    this.checkedFirst = false;
  }

  /** The receive loop of RawClient, reading "i" (and "t") of each kind-4 frame. */
  _onData(chunk) {
    let buf = chunk;
    if (this._rest !== null) {
      buf = Buffer.concat([this._rest, chunk]);
      this._rest = null;
    }
    const n = buf.length;
    let i = 0;
    let count = 0;
    let now = -1;
    while (i + 2 <= n) {
      const b0 = buf[i];
      let len = buf[i + 1];
      let p = i + 2;
      if (len === 126) {
        if (i + 4 > n) break;
        len = (buf[i + 2] << 8) | buf[i + 3];
        p = i + 4;
      } else if (len === 127) {
        if (i + 10 > n) break;
        len = buf.readUInt32BE(i + 2) * 2 ** 32 + buf.readUInt32BE(i + 6);
        p = i + 10;
      } else if (len > 127) {
        this._protocolError('server frame is masked');
        return;
      }
      if (p + len > n) break;
      const op = b0 & 0x0f;
      const end = p + len;
      if (b0 === 0x82 && buf[p] === KIND_USER_BROADCAST) {
        count++;
        const payloadAt = p + 5 + buf[p + 1] + buf[p + 2] + buf[p + 3];
        if (!this.checkedFirst) {
          this.checkedFirst = true;
          this.checkFull(buf, p, end);
        }
        const seq = intAfter(buf, KEY_I, payloadAt, end);
        if (seq < 0) {
          this.badFrames++;
          this._note('delivery without "i": ' + buf.toString('utf8', payloadAt, Math.min(end, payloadAt + 200)));
        } else {
          this.seen.add(seq);
          if (seq > this.maxI) this.maxI = seq;
        }
        const lat = this.latency;
        if (lat !== null) {
          const t = intAfter(buf, KEY_T, payloadAt, end);
          if (t >= 0) {
            if (now < 0) now = Number(process.hrtime.bigint());
            lat.push(t, now - t);
          }
        }
      } else if ((b0 & 0x80) === 0 || op === 0) {
        this._protocolError('fragmented frames are not supported by the bench client');
        return;
      } else {
        this._onControl(op, Buffer.from(buf.subarray(p, end)));
      }
      i = end;
    }
    if (i < n) this._rest = Buffer.from(buf.subarray(i)); // a copy: buf is reused
    if (count !== 0) {
      this.count += count;
      this.sink.delivered += count;
    }
  }

  /** JSON-parse one delivery and check it against spec §4.4 (V2 kind 4, encoding 1, meta.id). */
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
      if (!Number.isInteger(payload.i) || !Number.isInteger(payload.t)) problems.push('payload i/t');
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

  summary(fromNs, toNs) {
    const picked = [];
    for (let k = 0; k < this.n; k++) if (this.t[k] >= fromNs && this.t[k] <= toNs) picked.push(this.d[k] / 1e6);
    const a = Float64Array.from(picked).sort();
    const n = a.length;
    const q = (p) => (n ? a[Math.min(n - 1, Math.floor(p * n))] : null);
    let sum = 0;
    for (let k = 0; k < n; k++) sum += a[k];
    return {
      count: n,
      p50_ms: q(0.5),
      p90_ms: q(0.9),
      p99_ms: q(0.99),
      p999_ms: q(0.999),
      max_ms: n ? a[n - 1] : null,
      min_ms: n ? a[0] : null,
      mean_ms: n ? sum / n : null,
    };
  }
}

function usageProbe() {
  return { t: performance.now(), cpu: process.cpuUsage(), elu: performance.eventLoopUtilization() };
}

async function waitAll(subs, total, timeoutMs) {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    let done = true;
    for (const s of subs) {
      if (!s.closed && s.seen.unique < total) {
        done = false;
        break;
      }
    }
    if (done) return true;
    if (performance.now() > deadline) return false;
    await sleep(20);
  }
}

async function main() {
  let opt;
  try {
    opt = parseArgs(process.argv.slice(2), DEFAULTS);
  } catch (err) {
    emit({ event: 'error', error: err.message });
    return 2;
  }
  if (!opt.url) {
    emit({ event: 'error', error: '--url is required' });
    return 2;
  }
  const sink = { delivered: 0, latency: null, wake: null };
  const samples = new Samples();
  const subs = [];
  for (let i = 0; i < opt.subscribers; i++) {
    subs.push(new Subscriber(i, sink, opt, i < opt.latencySubscribers ? samples : null));
  }
  const t0 = performance.now();
  let firstError = null;
  let joined = 0;
  const timeoutMs = opt.connectTimeout * 1000;
  await pool(subs.length, opt.joinConcurrency, async (i) => {
    if (firstError !== null) return;
    try {
      await subs[i].open(opt.url, timeoutMs);
      await subs[i].join(opt.topic, { config: { private: true, broadcast: { self: false, ack: false } } }, timeoutMs);
      joined++;
    } catch (err) {
      if (firstError === null) firstError = `subscriber ${i}: ${err.message}`;
    }
  });
  if (firstError !== null) {
    emit({ event: 'error', stage: 'subscribe', error: `${firstError} (${joined} of ${subs.length} joined)` });
    for (const s of subs) s.close();
    return 1;
  }
  const subscribeS = (performance.now() - t0) / 1000;
  log(`${subs.length} subscribers joined ${opt.topic} (private) in ${subscribeS.toFixed(2)} s`);
  emit({ event: 'ready', subscribers: subs.length, subscribe_s: subscribeS, hrtime_ns: process.hrtime.bigint().toString() });

  let lastProgress = -1;
  const progress = setInterval(() => {
    if (sink.delivered !== lastProgress) {
      lastProgress = sink.delivered;
      emit({ event: 'progress', delivered: sink.delivered });
    }
  }, opt.progressMs);
  const hb = setInterval(() => {
    for (const s of subs) s.heartbeat();
  }, opt.heartbeatInterval * 1000);

  let markProbe = usageProbe();
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    const [cmd, ...rest] = line.trim().split(' ');
    const arg = rest.join(' ');
    if (cmd === 'mark') {
      const now = usageProbe();
      const wallMs = now.t - markProbe.t;
      const cpuMs = (now.cpu.user - markProbe.cpu.user + now.cpu.system - markProbe.cpu.system) / 1000;
      emit({
        event: 'mark',
        name: arg,
        delivered: sink.delivered,
        generator_cpu_pct: wallMs > 0 ? (100 * cpuMs) / wallMs : null,
        generator_elu: performance.eventLoopUtilization(now.elu, markProbe.elu).utilization,
      });
      markProbe = now;
    } else if (cmd === 'expect') {
      const { total, timeout_s: timeoutS } = JSON.parse(arg);
      const t = performance.now();
      const drained = await waitAll(subs, total, timeoutS * 1000);
      const drainS = (performance.now() - t) / 1000;
      await sleep(200); // anything arriving now would be a duplicate or out of range
      let missing = 0;
      let short = 0;
      let duplicates = 0;
      let outOfRange = 0;
      let badFrames = 0;
      let closed = 0;
      const notes = [];
      for (let i = 0; i < subs.length; i++) {
        const s = subs[i];
        const m = s.seen.missing(total);
        if (m > 0) {
          missing += m;
          short++;
          if (notes.length < 10) notes.push(`#${i}: ${m} missing, first ${s.seen.firstMissing(total, 5).join(',')}`);
        }
        duplicates += s.seen.duplicates;
        outOfRange += Math.max(0, s.seen.unique - (total - m));
        badFrames += s.badFrames;
        if (s.closed) closed++;
        for (const note of s.notes) if (notes.length < 10) notes.push(`#${i}: ${note}`);
      }
      emit({
        event: 'result',
        drained,
        drain_s: drainS,
        delivered: sink.delivered,
        expected: total * subs.length,
        missing,
        subscribers_short: short,
        duplicates,
        out_of_range: outOfRange,
        bad_frames: badFrames,
        subscribers_closed: closed,
        per_subscriber_min: Math.min(...subs.map((s) => s.count)),
        per_subscriber_max: Math.max(...subs.map((s) => s.count)),
        notes,
      });
    } else if (cmd === 'latency') {
      const { from_ns: fromNs, to_ns: toNs } = JSON.parse(arg);
      emit({ event: 'latency', ...samples.summary(fromNs, toNs) });
    } else if (cmd === 'quit') {
      break;
    } else if (cmd !== '') {
      log(`unknown command ${cmd}`);
    }
  }
  clearInterval(progress);
  clearInterval(hb);
  rl.close();
  for (const s of subs) s.close();
  return 0;
}

main().then(
  (code) => setTimeout(() => process.exit(code), 100),
  (err) => {
    emit({ event: 'error', error: String((err && err.stack) || err) });
    process.exit(1);
  },
);
