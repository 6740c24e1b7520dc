'use strict';
/*
 * What every script of bench/js shares: the WebSocket clients, and the
 * plumbing of a script driven by a Python orchestrator.
 *
 * Two client implementations with one interface (open, join, request,
 * sendText, sendBinary, bufferedAmount, count, closed):
 *
 * - RawClient speaks RFC 6455 itself on a net.Socket. Its receive loop reads
 *   two header bytes per frame, counts kind-4 frames and reads nothing else
 *   of them but the send timestamp when latency is recorded. It is the
 *   default because the generator must outrun the servers: a server that
 *   coalesces writes delivers several frames per TCP read, and ws's Receiver
 *   (a Writable stream that allocates and emits one Buffer per message)
 *   costs about four times more per frame than this loop. Measured against
 *   a coalescing Node server at S = 1000: 0.15 us of generator CPU per
 *   delivery and 3.4-3.9 M deliveries/s with RawClient; 0.6 us and a
 *   ceiling of 1.3 M/s with WsClient.
 * - WsClient uses the `ws` library (the same one the reference server uses),
 *   as a cross-check of RawClient (`--client ws`).
 *
 * Both count a delivery per binary kind-4 frame (docs/protocol.md §2.3, user_broadcast)
 * into a shared `sink`: {delivered, latency, wake}. Text frames are V2 JSON
 * arrays [join_ref, ref, topic, event, payload] (docs/protocol.md §2.2); replies resolve
 * pending requests by ref, anything unexpected is kept in `notes` so the
 * report can show what the server sent. A script that reads more of each
 * delivery extends a client and overrides one hook: RawClient._onBroadcast
 * (private_subscribers.js), WsClient._onTextFrame and _onMessage
 * (pg_subscribers.js).
 *
 * The plumbing: a script prints JSON lines on stdout (emit) and progress on
 * stderr (logger); scriptOptions() parses --key value options and runMain()
 * turns a failure into {"event":"error"}. Long-lived scripts answer stdin
 * commands through serveCommands() (bench/_node.py's NodeProcess is the
 * other end). usageProbe()/cpuSince() measure the script's own CPU, and
 * percentiles() summarises latency samples.
 */

const net = require('net');
const crypto = require('crypto');
const readline = require('readline');
const { performance } = require('perf_hooks');
const WebSocket = require('ws');

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const KIND_USER_BROADCAST = 4;
// Offsets of the 16 timestamp digits and of the 10 sequence-number digits
// inside the broadcast payload, {"t":"<t>","s":"<seq>","p":"xx.."} (see
// makePayload).
const TS_OFFSET = 6;
const TS_DIGITS = 16;
const SEQ_OFFSET = TS_OFFSET + TS_DIGITS + 7;
const SEQ_DIGITS = 10;
// A StreamCheck key this far past the first is garbage, not a sequence number.
const MAX_KEY_SPAN = 2 ** 31;
const MAX_NOTES = 5;

// The options serveCommands() reads, for a script's DEFAULTS.
const SERVE_DEFAULTS = {
  progressMs: 50,
  heartbeatInterval: 25, // seconds (docs/protocol.md §1.5)
};

// What loadgen.js and idle.js join with: public, no presence, broadcast self false.
const BROADCAST_JOIN = {
  config: {
    broadcast: { self: false, ack: false },
    presence: { enabled: false },
    private: false,
  },
};

// ------------------------------------------------------------------ script

/** Print one JSON line on stdout, the only thing a script writes there. */
function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

/** Return a function that prints `<name>: <msg>` on stderr. */
function logger(name) {
  return (msg) => process.stderr.write(`${name}: ${msg}\n`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Parse the script's options (see parseArgs) and check that the `required`
 * ones are set. On a failure print {"event":"error"} and return null: the
 * script's main() then returns exit status 2.
 */
function scriptOptions(defaults, required = ['url']) {
  let opt;
  try {
    opt = parseArgs(process.argv.slice(2), defaults);
  } catch (err) {
    emit({ event: 'error', error: err.message });
    return null;
  }
  if (required.some((key) => !opt[key])) {
    const names = required.map((key) => '--' + key.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase()));
    emit({ event: 'error', error: `${names.join(' and ')} ${names.length > 1 ? 'are' : 'is'} required` });
    return null;
  }
  return opt;
}

/**
 * Run the script's async main(), which resolves to an exit status. A thrown
 * error is printed as {"event":"error"} with its stack, exit status 1.
 * lingerMs > 0 waits that long before exiting, so close frames go out.
 */
function runMain(main, lingerMs = 0) {
  main().then(
    (code) => (lingerMs > 0 ? setTimeout(() => process.exit(code), lingerMs) : process.exit(code)),
    (err) => {
      emit({ event: 'error', error: String((err && err.stack) || err) });
      process.exit(1);
    },
  );
}

// ---------------------------------------------------------------- payloads

/**
 * Return a JSON payload of `size` bytes whose first fields are a 16-digit
 * timestamp in microseconds and a 10-digit sequence number:
 * {"t":"0000001234567890","s":"0000000017","p":"xxxx..."}. The digits sit at
 * fixed offsets so receivers read them without parsing JSON;
 * writeTimestamp() and writeDigits() overwrite them in place.
 */
function makePayload(size) {
  const head = '{"t":"' + '0'.repeat(TS_DIGITS) + '","s":"' + '0'.repeat(SEQ_DIGITS) + '","p":"';
  const tail = '"}';
  const pad = Math.max(0, size - head.length - tail.length);
  return Buffer.from(head + 'x'.repeat(pad) + tail, 'utf8');
}

/** Write `v` (a non-negative integer) as `digits` zero-padded digits at buf[offset]. */
function writeDigits(buf, offset, v, digits) {
  for (let i = offset + digits - 1; i >= offset; i--) {
    const d = v % 10;
    buf[i] = 48 + d;
    v = (v - d) / 10;
  }
}

/** Write `us` (a non-negative integer) as 16 zero-padded digits at buf[offset]. */
function writeTimestamp(buf, offset, us) {
  writeDigits(buf, offset, us, TS_DIGITS);
}

/** Read the 16 digits written by writeTimestamp. */
function readTimestamp(buf, offset) {
  let v = 0;
  for (let i = offset; i < offset + TS_DIGITS; i++) v = v * 10 + (buf[i] - 48);
  return v;
}

/** The sequence number of the payload at buf[payloadAt, end) (see makePayload); -1 when it has none. */
function readSeq(buf, payloadAt, end) {
  const at = payloadAt + SEQ_OFFSET;
  if (at + SEQ_DIGITS > end) return -1;
  // Two 5-digit halves, each checked once: a byte outside '0'..'9' makes
  // some (byte - 48) negative or (57 - byte) negative, so the OR is negative.
  const a0 = buf[at] - 48;
  const a1 = buf[at + 1] - 48;
  const a2 = buf[at + 2] - 48;
  const a3 = buf[at + 3] - 48;
  const a4 = buf[at + 4] - 48;
  const b0 = buf[at + 5] - 48;
  const b1 = buf[at + 6] - 48;
  const b2 = buf[at + 7] - 48;
  const b3 = buf[at + 8] - 48;
  const b4 = buf[at + 9] - 48;
  const bad =
    a0 | a1 | a2 | a3 | a4 | b0 | b1 | b2 | b3 | b4 |
    (9 - a0) | (9 - a1) | (9 - a2) | (9 - a3) | (9 - a4) | (9 - b0) | (9 - b1) | (9 - b2) | (9 - b3) | (9 - b4);
  if (bad < 0) return -1;
  const high = ((((a0 * 10 + a1) * 10 + a2) * 10 + a3) * 10 + a4);
  const low = ((((b0 * 10 + b1) * 10 + b2) * 10 + b3) * 10 + b4);
  return high * 100000 + low;
}

/** Microseconds on the process's monotonic clock (the same clock for every socket). */
function nowUs() {
  return Math.round(performance.now() * 1000);
}

/**
 * Build a kind-3 user_broadcast_push frame body (docs/protocol.md §2.3) with an empty
 * metadata field and encoding 1 (JSON) around a makePayload() payload.
 * Returns {buf, tsOffset, seqOffset}: overwrite the timestamp at tsOffset
 * and the sequence number at seqOffset before each send.
 */
function makeUserBroadcast(joinRef, ref, topic, event, payload) {
  const jr = Buffer.from(joinRef, 'utf8');
  const rf = Buffer.from(ref, 'utf8');
  const tp = Buffer.from(topic, 'utf8');
  const ev = Buffer.from(event, 'utf8');
  for (const f of [jr, rf, tp, ev]) {
    if (f.length > 255) throw new Error('kind-3 fields are limited to 255 bytes');
  }
  const head = Buffer.from([3, jr.length, rf.length, tp.length, ev.length, 0, 1]);
  const buf = Buffer.concat([head, jr, rf, tp, ev, payload]);
  const at = buf.length - payload.length;
  return { buf, tsOffset: at + TS_OFFSET, seqOffset: at + SEQ_OFFSET };
}

// ------------------------------------------------------------ stream check

/**
 * What one subscriber received of a numbered stream: keys first, first+1,
 * ... sent in increasing order on each lane (a lane is one sender whose
 * order is defined: the fan-out's publisher, one database writer).
 * summary(count) says whether exactly the keys first .. first+count-1
 * arrived, each once, in order on every lane, and if not, what went wrong.
 *
 * As long as every key is the next one (fan-out: a correct server), add()
 * costs one comparison. The first key out of that order switches to a
 * bitmap of the keys seen, which also tells duplicates from late arrivals.
 */
class StreamCheck {
  constructor(first) {
    this.first = first;
    this.next = first; // in order so far: keys first .. next-1 arrived, once each; NaN once not
    this.bits = null; // after the order broke: bit k set when key first+k arrived
    this.unique = 0; // keys in the bitmap
    this.high = first - 1; // the bitmap's highest key seen (in order: next - 1)
    this.laneHigh = []; // the bitmap's highest key seen per lane
    this.inOrder = 0; // once the bitmap exists: the keys that had arrived in order before it
    this.slow = 0; // arrivals that took the bitmap path (or had no key)
    this.duplicates = 0; // extra copies of keys already seen
    this.firstDuplicate = null; // {key, copies}
    this.outOfOrder = 0; // keys below the highest already seen on their lane
    this.firstOutOfOrder = null; // {key, after}
    this.invalid = 0; // arrivals without a usable key (below first, garbage)
    this.firstInvalid = null;
  }

  /** Record the arrival of `key` (-1: the frame had none) on the only lane. */
  add(key) {
    if (key === this.next) {
      this.next++;
      return;
    }
    this._add(key, 0);
  }

  /** Record the arrival of `key` on `lane` (one of several senders): always the bitmap. */
  addOnLane(key, lane) {
    this._add(key, lane);
  }

  _add(key, lane) {
    this.slow++;
    if (!Number.isInteger(key) || key < this.first || key - this.first >= MAX_KEY_SPAN) {
      this.invalid++;
      if (this.firstInvalid === null) this.firstInvalid = key;
      return;
    }
    if (this.bits === null) this._toBitmap();
    const k = key - this.first;
    const byte = k >>> 3;
    if (byte >= this.bits.length) {
      let size = this.bits.length;
      while (size <= byte) size *= 2;
      const bigger = new Uint8Array(size);
      bigger.set(this.bits);
      this.bits = bigger;
    }
    const mask = 1 << (k & 7);
    if (this.bits[byte] & mask) {
      this.duplicates++;
      if (this.firstDuplicate === null) this.firstDuplicate = { key, copies: 2 };
      else if (this.firstDuplicate.key === key) this.firstDuplicate.copies++;
      return;
    }
    this.bits[byte] |= mask;
    this.unique++;
    if (key > this.high) this.high = key;
    const laneHigh = this.laneHigh[lane];
    if (laneHigh !== undefined && key < laneHigh) {
      this.outOfOrder++;
      if (this.firstOutOfOrder === null) this.firstOutOfOrder = { key, after: laneHigh };
    } else {
      this.laneHigh[lane] = key;
    }
  }

  /** Leave the in-order fast path: mark first .. next-1 in a new bitmap. */
  _toBitmap() {
    const n = this.next - this.first;
    if (n > 0) {
      this.high = this.next - 1;
      this.laneHigh[0] = this.high; // only add() takes the fast path, on lane 0
    }
    this.bits = new Uint8Array(Math.max(8192, 2 * ((n >>> 3) + 1)));
    this.bits.fill(0xff, 0, n >>> 3);
    for (let k = n & ~7; k < n; k++) this.bits[k >>> 3] |= 1 << (k & 7);
    this.unique = n;
    this.inOrder = n;
    this.next = NaN; // never equal to a key: every add() takes the bitmap path from now on
  }

  /** Keys received: in order so far, then every later arrival. */
  get received() {
    return (this.bits === null ? this.next - this.first : this.inOrder) + this.slow;
  }

  /** The highest key seen. */
  get highest() {
    return this.bits === null ? this.next - 1 : this.high;
  }

  _has(k) {
    if (this.bits === null) return k < this.next - this.first;
    const byte = k >>> 3;
    return byte < this.bits.length && (this.bits[byte] & (1 << (k & 7))) !== 0;
  }

  /**
   * Compare with the keys first .. first+count-1, each expected once:
   * {received, missing, first_missing, duplicates, first_duplicate,
   * out_of_order, first_out_of_order, unexpected, first_unexpected}.
   * `unexpected` counts keys never sent (past the last, or garbage).
   */
  summary(count) {
    let have = 0;
    if (this.bits === null) {
      have = Math.min(this.next - this.first, count);
    } else {
      const bits = this.bits;
      const full = Math.min(count >>> 3, bits.length);
      for (let b = 0; b < full; b++) {
        let v = bits[b];
        while (v) {
          v &= v - 1;
          have++;
        }
      }
      for (let k = full * 8; k < count; k++) if (this._has(k)) have++;
    }
    const firstMissing = [];
    for (let k = 0; k < count && firstMissing.length < 5 && have + firstMissing.length < count; k++) {
      if (!this._has(k)) firstMissing.push(this.first + k);
    }
    const unique = this.bits === null ? this.next - this.first : this.unique;
    const beyond = unique - have; // keys past the last one sent
    let firstUnexpected = this.firstInvalid;
    if (beyond > 0) {
      let k = count;
      while (!this._has(k)) k++; // ends: `beyond` keys past count are in the bitmap
      firstUnexpected = this.first + k;
    }
    return {
      received: this.received,
      missing: count - have,
      first_missing: firstMissing,
      duplicates: this.duplicates,
      first_duplicate: this.firstDuplicate,
      out_of_order: this.outOfOrder,
      first_out_of_order: this.firstOutOfOrder,
      unexpected: beyond + this.invalid,
      first_unexpected: firstUnexpected,
    };
  }
}

/** Whether a StreamCheck summary shows exactly what was expected. */
function exact(summary) {
  return summary.missing === 0 && summary.duplicates === 0 && summary.out_of_order === 0 && summary.unexpected === 0;
}

/**
 * The verification of one run: how many `clients` received exactly keys
 * first .. first+count-1 (StreamCheck `stream` of each) and no malformed
 * frame (`badFrames`, where a script counts them), per-subscriber
 * extremes and totals, and one entry per subscriber that did not (or that
 * the server closed): its index, close code and summary. bench/_verify.py
 * turns those entries into diagnosis lines.
 */
function verifyStreams(clients, count) {
  let min = Infinity;
  let max = 0;
  let closed = 0;
  let exactCount = 0;
  const totals = { missing: 0, duplicates: 0, out_of_order: 0, unexpected: 0, bad_frames: 0 };
  const problems = [];
  for (let i = 0; i < clients.length; i++) {
    const c = clients[i];
    const s = { ...c.stream.summary(count), bad_frames: c.badFrames || 0 };
    if (s.received < min) min = s.received;
    if (s.received > max) max = s.received;
    for (const key of Object.keys(totals)) totals[key] += s[key];
    if (c.closed) closed++;
    if (exact(s) && s.bad_frames === 0 && !c.closed) {
      exactCount++;
    } else {
      const close = c.closed ? c.notes.find((n) => n.startsWith('close')) || `code ${c.closeCode}` : null;
      problems.push({ subscriber: i, closed: c.closed, close, ...s });
    }
  }
  return {
    exact: exactCount === clients.length,
    expected_per_subscriber: count,
    subscribers: clients.length,
    subscribers_exact: exactCount,
    subscribers_closed: closed,
    received_per_subscriber_min: clients.length ? min : 0,
    received_per_subscriber_max: max,
    ...totals,
    problems,
  };
}

// ----------------------------------------------------------- latency store

/** Latency samples in microseconds, kept in a growing Float64Array. */
class LatencyRecorder {
  constructor(fromUs, capacity) {
    this.fromUs = fromUs; // only messages sent at or after this time are recorded
    this.samples = new Float64Array(Math.max(1024, capacity));
    this.n = 0;
  }

  push(us) {
    if (this.n === this.samples.length) {
      const bigger = new Float64Array(this.samples.length * 2);
      bigger.set(this.samples);
      this.samples = bigger;
    }
    this.samples[this.n++] = us;
  }

  /** Return {count, p50_ms, p90_ms, p99_ms, p999_ms, max_ms, mean_ms}. */
  summary() {
    const out = percentiles(this.samples.subarray(0, this.n).sort(), 1000);
    delete out.min_ms; // loadgen.js's result has none
    return out;
  }
}

/**
 * Summarise `sorted` (a Float64Array sorted ascending) as {count, p50_ms,
 * p90_ms, p99_ms, p999_ms, max_ms, min_ms, mean_ms}, every value divided by
 * `divisor` (1000 turns microseconds into ms). Empty: null figures.
 */
function percentiles(sorted, divisor = 1) {
  const n = sorted.length;
  const q = (p) => (n ? sorted[Math.min(n - 1, Math.floor(p * n))] / divisor : null);
  let sum = 0;
  for (let i = 0; i < n; i++) sum += sorted[i];
  return {
    count: n,
    p50_ms: q(0.5),
    p90_ms: q(0.9),
    p99_ms: q(0.99),
    p999_ms: q(0.999),
    max_ms: n ? sorted[n - 1] / divisor : null,
    min_ms: n ? sorted[0] / divisor : null,
    mean_ms: n ? sum / n / divisor : null,
  };
}

// ------------------------------------------------------------- own usage

/** Snapshot of wall time, this process's CPU and its event-loop use. */
function usageProbe() {
  return { t: performance.now(), cpu: process.cpuUsage(), elu: performance.eventLoopUtilization() };
}

/** This process's CPU (% of one core) and event-loop utilisation between two probes. */
function cpuSince(a, b) {
  const wallMs = b.t - a.t;
  const cpuMs = (b.cpu.user - a.cpu.user + b.cpu.system - a.cpu.system) / 1000;
  return {
    generator_cpu_pct: wallMs > 0 ? (100 * cpuMs) / wallMs : null,
    generator_elu: performance.eventLoopUtilization(b.elu, a.elu).utilization,
  };
}

// ------------------------------------------------------------ shared logic

class BaseClient {
  constructor(sink) {
    this.sink = sink; // {delivered, latency: LatencyRecorder|null, wake: function|null}
    this.count = 0; // kind-4 frames received by this socket
    this.stream = new StreamCheck(1); // the sequence numbers of loadgen.js's broadcasts (makePayload)
    this.closed = false;
    this.closeCode = null;
    this.error = null;
    this.notes = []; // unexpected frames, first few
    this._ref = 0;
    this._pending = new Map(); // ref -> {resolve, reject, timer}
  }

  nextRef() {
    this._ref += 1;
    return String(this._ref);
  }

  _note(what) {
    if (this.notes.length < MAX_NOTES) this.notes.push(what);
  }

  /** Handle one text frame: a V2 JSON array (docs/protocol.md §2.2). */
  _onText(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch (e) {
      this._note('bad JSON text frame: ' + text.slice(0, 200));
      return;
    }
    if (!Array.isArray(msg) || msg.length < 5) {
      this._note('text frame is not a V2 array: ' + text.slice(0, 200));
      return;
    }
    this._onMessage(msg, text);
  }

  /** Handle one V2 message: resolve the request it replies to; note anything else. */
  _onMessage(msg, text) {
    const ref = msg[1];
    const event = msg[3];
    if (event === 'phx_reply' && ref !== null && this._pending.has(ref)) {
      const p = this._pending.get(ref);
      this._pending.delete(ref);
      clearTimeout(p.timer);
      p.resolve(msg);
      return;
    }
    // Heartbeat replies are expected and not awaited.
    if (event === 'phx_reply' && msg[2] === 'phoenix' && msg[4] && msg[4].status === 'ok') return;
    this._note(text.slice(0, 300));
  }

  _failPending(err) {
    for (const p of this._pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this._pending.clear();
  }

  /** Send [join_ref, ref, topic, event, payload] and resolve with the reply. */
  request(joinRef, topic, event, payload, timeoutMs) {
    const ref = this.nextRef();
    const jr = joinRef === undefined ? ref : joinRef;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(ref);
        reject(new Error(`no reply to ${event} on ${topic} within ${timeoutMs} ms`));
      }, timeoutMs);
      this._pending.set(ref, { resolve, reject, timer });
      this.sendText(JSON.stringify([jr, ref, topic, event, payload]));
    });
  }

  /** Join `topic`; resolve with the join_ref, or reject with the server's reply. */
  async join(topic, payload, timeoutMs) {
    const joinRef = String(this._ref + 1);
    const reply = await this.request(undefined, topic, 'phx_join', payload, timeoutMs);
    const body = reply[4] || {};
    if (body.status !== 'ok') {
      throw new Error(`join ${topic} refused: ${JSON.stringify(reply)}`);
    }
    this.joinRef = joinRef;
    return joinRef;
  }

  /** Send a heartbeat (docs/protocol.md §1.5); the reply is not awaited. */
  heartbeat() {
    if (!this.closed) this.sendText(JSON.stringify([null, this.nextRef(), 'phoenix', 'heartbeat', {}]));
  }
}

// ------------------------------------------------------------- RawClient

let maskPool = Buffer.alloc(0);
let maskPos = 0;

function maskKey(out, at) {
  if (maskPos + 4 > maskPool.length) {
    maskPool = crypto.randomBytes(64 * 1024);
    maskPos = 0;
  }
  maskPool.copy(out, at, maskPos, maskPos + 4);
  maskPos += 4;
}

/** Return a masked, final client frame (RFC 6455 5.2, 5.3). */
function clientFrame(opcode, payload) {
  const len = payload.length;
  const h = len < 126 ? 6 : len < 65536 ? 8 : 14;
  const out = Buffer.allocUnsafe(h + len);
  out[0] = 0x80 | opcode;
  if (len < 126) {
    out[1] = 0x80 | len;
  } else if (len < 65536) {
    out[1] = 0x80 | 126;
    out.writeUInt16BE(len, 2);
  } else {
    out[1] = 0x80 | 127;
    out.writeUInt32BE(Math.floor(len / 2 ** 32), 2);
    out.writeUInt32BE(len >>> 0, 6);
  }
  const m = h - 4;
  maskKey(out, m);
  const k0 = out[m];
  const k1 = out[m + 1];
  const k2 = out[m + 2];
  const k3 = out[m + 3];
  let i = 0;
  for (; i + 3 < len; i += 4) {
    out[h + i] = payload[i] ^ k0;
    out[h + i + 1] = payload[i + 1] ^ k1;
    out[h + i + 2] = payload[i + 2] ^ k2;
    out[h + i + 3] = payload[i + 3] ^ k3;
  }
  for (; i < len; i++) out[h + i] = payload[i] ^ out[m + (i & 3)];
  return out;
}

// One read buffer for every RawClient: onread callbacks run one at a time.
const READ_BUFFER = Buffer.allocUnsafe(256 * 1024);

class RawClient extends BaseClient {
  constructor(sink) {
    super(sink);
    this.socket = null;
    this._onHead = null; // handshake reader until the 101 response is complete
    this._rest = null; // bytes of an incomplete frame
    this._now = -1; // the receive time of the current read, once a hook read the clock
  }

  /** Connect and complete the opening handshake; reject with the HTTP answer if refused. */
  open(url, timeoutMs) {
    const u = new URL(url);
    const port = Number(u.port || 80);
    const host = u.hostname;
    const key = crypto.randomBytes(16).toString('base64');
    const expected = crypto.createHash('sha1').update(key + WS_GUID).digest('base64');
    const request =
      `GET ${u.pathname}${u.search} HTTP/1.1\r\n` +
      `Host: ${u.host}\r\n` +
      'Upgrade: websocket\r\nConnection: Upgrade\r\n' +
      `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`;
    return new Promise((resolve, reject) => {
      let settled = false;
      let head = null;
      // onread hands every read to _onRead in one shared buffer, without the
      // stream machinery (and the Buffer per read) behind 'data' events.
      const sock = net.connect({
        host,
        port,
        onread: { buffer: READ_BUFFER, callback: (n, buf) => this._onRead(n, buf) },
      });
      const fail = (err) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        sock.destroy();
        reject(err);
      };
      const timer = setTimeout(() => fail(new Error(`handshake timeout after ${timeoutMs} ms`)), timeoutMs);
      sock.setNoDelay(true);
      sock.on('connect', () => sock.write(request));
      this._onHead = (chunk) => {
        head = head === null ? Buffer.from(chunk) : Buffer.concat([head, chunk]);
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) {
          if (head.length > 65536) fail(new Error('handshake response too large'));
          return;
        }
        const lines = head.toString('latin1', 0, end).split('\r\n');
        if (!/^HTTP\/1\.1 101 /.test(lines[0])) {
          const body = head.toString('utf8', end + 4, Math.min(head.length, end + 404));
          fail(new Error(`handshake refused: ${lines[0]} ${body}`));
          return;
        }
        const accept = lines
          .map((l) => /^sec-websocket-accept:\s*(\S+)/i.exec(l))
          .find((m) => m !== null);
        if (!accept || accept[1] !== expected) {
          fail(new Error('handshake: bad Sec-WebSocket-Accept'));
          return;
        }
        settled = true;
        clearTimeout(timer);
        this._onHead = null;
        this.socket = sock;
        const rest = head.subarray(end + 4);
        if (rest.length) this._onData(rest);
        resolve(this);
      };
      sock.on('error', (err) => {
        this.error = this.error || err.message;
        fail(err);
      });
      sock.on('close', () => {
        this.closed = true;
        this._failPending(new Error(`socket closed (code ${this.closeCode})`));
        fail(new Error('socket closed during handshake'));
      });
    });
  }

  _onRead(nread, buf) {
    if (this._onHead !== null) this._onHead(buf.subarray(0, nread));
    else this._onData(buf.subarray(0, nread));
  }

  /**
   * The receive loop: count kind-4 frames and hand each to _onBroadcast.
   * `chunk` may be READ_BUFFER itself: keep nothing of it past this call.
   */
  _onData(chunk) {
    let buf = chunk;
    if (this._rest !== null) {
      buf = Buffer.concat([this._rest, chunk]);
      this._rest = null;
    }
    const sink = this.sink;
    const n = buf.length;
    let i = 0;
    let count = 0;
    this._now = -1; // one clock reading per read serves every frame in it
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
        this._onBroadcast(buf, p, end);
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
      sink.delivered += count;
      if (sink.wake !== null) sink.wake();
    }
  }

  /**
   * One kind-4 frame at buf[p, end), already counted: check its sequence
   * number, and record its latency when the sink asks for it. Subclasses
   * read other payloads; like _onData they keep nothing of `buf`.
   */
  _onBroadcast(buf, p, end) {
    // payload = after kind, 3 lengths, encoding, topic, event, metadata
    const payloadAt = p + 5 + buf[p + 1] + buf[p + 2] + buf[p + 3];
    this.stream.add(readSeq(buf, payloadAt, end));
    const lat = this.sink.latency;
    if (lat === null) return;
    const ts = readTimestamp(buf, payloadAt + TS_OFFSET);
    if (ts >= lat.fromUs) {
      if (this._now < 0) this._now = nowUs();
      lat.push(this._now - ts);
    }
  }

  _onControl(op, payload) {
    if (op === 1) {
      this._onText(payload.toString('utf8'));
    } else if (op === 2) {
      this._note(`binary frame of kind ${payload[0]} (${payload.length} bytes)`);
    } else if (op === 8) {
      this.closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
      this._note(`close ${this.closeCode} ${payload.subarray(2).toString('utf8')}`);
      if (!this.closed) this.socket.end(clientFrame(8, payload.subarray(0, 2)));
    } else if (op === 9) {
      this.socket.write(clientFrame(10, payload));
    }
  }

  _protocolError(what) {
    this.error = what;
    this._note(what);
    this.socket.destroy();
  }

  sendText(text) {
    this.socket.write(clientFrame(1, Buffer.from(text, 'utf8')));
  }

  sendBinary(buf) {
    this.socket.write(clientFrame(2, buf));
  }

  get bufferedAmount() {
    return this.socket.writableLength;
  }

  close() {
    if (this.socket !== null) this.socket.destroy();
  }
}

// -------------------------------------------------------------- WsClient

class WsClient extends BaseClient {
  constructor(sink) {
    super(sink);
    this.ws = null;
  }

  open(url, timeoutMs) {
    return new Promise((resolve, reject) => {
      let settled = false;
      const ws = new WebSocket(url, {
        perMessageDeflate: false,
        handshakeTimeout: timeoutMs,
        skipUTF8Validation: true,
      });
      ws.binaryType = 'nodebuffer';
      const fail = (err) => {
        if (settled) return;
        settled = true;
        ws.terminate();
        reject(err);
      };
      ws.on('unexpected-response', (req, res) => {
        let body = '';
        res.on('data', (c) => {
          if (body.length < 400) body += c.toString('utf8');
        });
        res.on('end', () => fail(new Error(`handshake refused: ${res.statusCode} ${body}`)));
      });
      ws.on('error', (err) => {
        this.error = this.error || err.message;
        fail(err);
      });
      ws.on('open', () => {
        settled = true;
        this.ws = ws;
        resolve(this);
      });
      ws.on('close', (code, reason) => {
        this._onClose(code, reason);
        fail(new Error(`socket closed during handshake (code ${code})`));
      });
      ws.on('message', (data, isBinary) => (isBinary ? this._onBinaryFrame(data) : this._onTextFrame(data)));
    });
  }

  /** The socket closed: fail the pending requests. */
  _onClose(code) {
    this.closed = true;
    this.closeCode = code;
    this._failPending(new Error(`socket closed (code ${code})`));
  }

  /** One text frame, a Buffer. */
  _onTextFrame(data) {
    this._onText(data.toString('utf8'));
  }

  /** One binary frame: count a kind-4 delivery, check its sequence number, record its latency when asked. */
  _onBinaryFrame(data) {
    if (data[0] !== KIND_USER_BROADCAST) {
      this._note(`binary frame of kind ${data[0]} (${data.length} bytes)`);
      return;
    }
    const payloadAt = 5 + data[1] + data[2] + data[3];
    this.stream.add(readSeq(data, payloadAt, data.length));
    const sink = this.sink;
    const lat = sink.latency;
    if (lat !== null) {
      const ts = readTimestamp(data, payloadAt + TS_OFFSET);
      if (ts >= lat.fromUs) lat.push(nowUs() - ts);
    }
    this.count++;
    sink.delivered++;
    if (sink.wake !== null) sink.wake();
  }

  sendText(text) {
    this.ws.send(text);
  }

  sendBinary(buf) {
    this.ws.send(buf, { binary: true, compress: false });
  }

  get bufferedAmount() {
    return this.ws.bufferedAmount;
  }

  close() {
    if (this.ws !== null) this.ws.terminate();
  }
}

// ----------------------------------------------------------------- helpers

/** Run worker(i) for i in [0, n) with at most `concurrency` running at once. */
async function pool(n, concurrency, worker) {
  let next = 0;
  const run = async () => {
    while (next < n) {
      const i = next++;
      await worker(i);
    }
  };
  const runners = [];
  for (let k = 0; k < Math.min(concurrency, n); k++) runners.push(run());
  await Promise.all(runners);
}

/**
 * Run worker(i) as pool() does, skipping the rest once one failed. Return
 * null, or the first failure as `<what> <i>: <message>`.
 */
async function poolUntilError(n, concurrency, what, worker) {
  let firstError = null;
  await pool(n, concurrency, async (i) => {
    if (firstError !== null) return;
    try {
      await worker(i);
    } catch (err) {
      if (firstError === null) firstError = `${what} ${i}: ${err.message}`;
    }
  });
  return firstError;
}

/** Open client `c` on `url` and join `topic`; close it and rethrow when either fails. */
async function openJoined(c, url, topic, payload, timeoutMs) {
  try {
    await c.open(url, timeoutMs);
    await c.join(topic, payload, timeoutMs);
  } catch (err) {
    c.close();
    throw err;
  }
  return c;
}

/**
 * Open every client of `clients` on opt.url and join it to opt.topic with
 * `payload`, at most opt.joinConcurrency at a time, each handshake and join
 * within opt.connectTimeout seconds, stopping at the first failure. Returns
 * {joined, failure}: how many joined, and null or the first failure as
 * `<what> <i>: <message>`.
 */
async function joinAll(clients, what, payload, opt) {
  const timeoutMs = opt.connectTimeout * 1000;
  let joined = 0;
  // --sub-urls: clients spread round-robin over several servers (the nodes of a cluster).
  const urls = opt.subUrls ? opt.subUrls.split(',') : [opt.url];
  const failure = await poolUntilError(clients.length, opt.joinConcurrency, what, async (i) => {
    await openJoined(clients[i], urls[i % urls.length], opt.topic, payload, timeoutMs);
    joined++;
  });
  return { joined, failure };
}

/** Resolve true once done() holds (checked every stepMs), false after timeoutMs. */
async function waitUntil(done, timeoutMs, stepMs) {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (done()) return true;
    if (performance.now() > deadline) return false;
    await sleep(stepMs);
  }
}

/**
 * Send a heartbeat on every open client whose last one is older than
 * intervalMs, checking once a second so heartbeats stay spread out.
 * Returns the timer; clear it with clearInterval.
 */
function startHeartbeats(clients, intervalMs) {
  return setInterval(() => {
    const now = Date.now();
    for (const c of clients) {
      if (c === undefined || c.closed) continue;
      if (c.lastHeartbeat === undefined) c.lastHeartbeat = now;
      else if (now - c.lastHeartbeat >= intervalMs) {
        c.lastHeartbeat = now;
        c.heartbeat();
      }
    }
  }, 1000);
}

/**
 * Answer the orchestrator's commands, one per stdin line, until `quit` or
 * the end of stdin; then close every client. Meanwhile print
 * {"event":"progress","delivered":n} every opt.progressMs while
 * sink.delivered moves, and send a heartbeat on every client every
 * opt.heartbeatInterval seconds (docs/protocol.md §1.5); see SERVE_DEFAULTS.
 *
 * `mark <name>` prints {"event":"mark", name, delivered, generator_cpu_pct,
 * generator_elu}, CPU since the previous mark. `<cmd> <arg>` prints what
 * `await commands[cmd](arg)` returns; other commands go to `log`.
 */
async function serveCommands(opt, { sink, clients, commands, log }) {
  let lastProgress = -1;
  const progress = setInterval(() => {
    if (sink.delivered !== lastProgress) {
      lastProgress = sink.delivered;
      emit({ event: 'progress', delivered: sink.delivered });
    }
  }, opt.progressMs);
  const hb = setInterval(() => {
    for (const c of clients) c.heartbeat();
  }, opt.heartbeatInterval * 1000);
  let markProbe = usageProbe();
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    const [cmd, ...rest] = line.trim().split(' ');
    const arg = rest.join(' ');
    if (cmd === 'mark') {
      const now = usageProbe();
      // CPU since the previous mark
      emit({ event: 'mark', name: arg, delivered: sink.delivered, ...cpuSince(markProbe, now) });
      markProbe = now;
    } else if (cmd === 'quit') {
      break;
    } else if (Object.hasOwn(commands, cmd)) {
      emit(await commands[cmd](arg));
    } else if (cmd !== '') {
      log(`unknown command ${cmd}`);
    }
  }
  clearInterval(progress);
  clearInterval(hb);
  rl.close();
  for (const c of clients) c.close();
}

/** Parse --key value / --flag arguments into an object with camelCase keys. */
function parseArgs(argv, defaults) {
  const out = { ...defaults };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    const key = a.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(key in defaults)) throw new Error(`unknown option ${a}`);
    const d = defaults[key];
    if (typeof d === 'boolean') {
      out[key] = true;
    } else {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      out[key] = typeof d === 'number' ? Number(v) : v;
      if (typeof d === 'number' && !Number.isFinite(out[key])) throw new Error(`${a}: not a number: ${v}`);
    }
  }
  return out;
}

const CLIENTS = { raw: RawClient, ws: WsClient };

module.exports = {
  BROADCAST_JOIN,
  CLIENTS,
  SERVE_DEFAULTS,
  LatencyRecorder,
  RawClient,
  StreamCheck,
  WsClient,
  cpuSince,
  emit,
  joinAll,
  logger,
  makePayload,
  makeUserBroadcast,
  nowUs,
  openJoined,
  parseArgs,
  percentiles,
  pool,
  poolUntilError,
  runMain,
  scriptOptions,
  serveCommands,
  sleep,
  startHeartbeats,
  usageProbe,
  verifyStreams,
  waitUntil,
  writeDigits,
  writeTimestamp,
};
