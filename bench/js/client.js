'use strict';
/*
 * The bench's WebSocket clients, shared by loadgen.js and idle.js.
 *
 * Two implementations with one interface (open, join, sendText, sendBinary,
 * bufferedAmount, count, closed):
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
 * Both count a delivery per binary kind-4 frame (spec 2.3, user_broadcast)
 * into a shared `sink`: {delivered, latency, wake}. Text frames are V2 JSON
 * arrays [join_ref, ref, topic, event, payload] (spec 2.2); replies resolve
 * pending requests by ref, anything unexpected is kept in `notes` so the
 * report can show what the server sent.
 */

const net = require('net');
const crypto = require('crypto');
const { performance } = require('perf_hooks');
const WebSocket = require('ws');

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const KIND_USER_BROADCAST = 4;
// Offset of the 16 timestamp digits inside the broadcast payload, which
// starts with {"t":"  (see makePayload).
const TS_OFFSET = 6;
const TS_DIGITS = 16;
const MAX_NOTES = 5;

// ---------------------------------------------------------------- payloads

/**
 * Return a JSON payload of `size` bytes whose first field is a 16-digit
 * timestamp in microseconds: {"t":"0000001234567890","p":"xxxx..."}.
 * The digits sit at a fixed offset so receivers read them without parsing
 * JSON; writeTimestamp() overwrites them in place.
 */
function makePayload(size) {
  const head = '{"t":"' + '0'.repeat(TS_DIGITS) + '","p":"';
  const tail = '"}';
  const pad = Math.max(0, size - head.length - tail.length);
  return Buffer.from(head + 'x'.repeat(pad) + tail, 'utf8');
}

/** Write `us` (a non-negative integer) as 16 zero-padded digits at buf[offset]. */
function writeTimestamp(buf, offset, us) {
  let v = us;
  for (let i = offset + TS_DIGITS - 1; i >= offset; i--) {
    const d = v % 10;
    buf[i] = 48 + d;
    v = (v - d) / 10;
  }
}

/** Read the 16 digits written by writeTimestamp. */
function readTimestamp(buf, offset) {
  let v = 0;
  for (let i = offset; i < offset + TS_DIGITS; i++) v = v * 10 + (buf[i] - 48);
  return v;
}

/** Microseconds on the process's monotonic clock (the same clock for every socket). */
function nowUs() {
  return Math.round(performance.now() * 1000);
}

/**
 * Build a kind-3 user_broadcast_push frame body (spec 2.3) with an empty
 * metadata field and encoding 1 (JSON). Returns {buf, tsOffset}: overwrite
 * the timestamp at tsOffset before each send.
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
  return { buf, tsOffset: buf.length - payload.length + TS_OFFSET };
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
    const a = this.samples.subarray(0, this.n).sort();
    const q = (p) => (this.n ? a[Math.min(this.n - 1, Math.floor(p * this.n))] / 1000 : null);
    let sum = 0;
    for (let i = 0; i < this.n; i++) sum += a[i];
    return {
      count: this.n,
      p50_ms: q(0.5),
      p90_ms: q(0.9),
      p99_ms: q(0.99),
      p999_ms: q(0.999),
      max_ms: this.n ? a[this.n - 1] / 1000 : null,
      mean_ms: this.n ? sum / this.n / 1000 : null,
    };
  }
}

// ------------------------------------------------------------ shared logic

class BaseClient {
  constructor(sink) {
    this.sink = sink; // {delivered, latency: LatencyRecorder|null, wake: function|null}
    this.count = 0; // kind-4 frames received by this socket
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

  /** Handle one text frame: a V2 JSON array (spec 2.2). */
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

  /** Send a heartbeat (spec 1.5); the reply is not awaited. */
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
   * The receive loop: count kind-4 frames, read their timestamps when asked.
   * `chunk` may be READ_BUFFER itself: keep nothing of it past this call.
   */
  _onData(chunk) {
    let buf = chunk;
    if (this._rest !== null) {
      buf = Buffer.concat([this._rest, chunk]);
      this._rest = null;
    }
    const sink = this.sink;
    const lat = sink.latency;
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
      if (b0 === 0x82 && buf[p] === KIND_USER_BROADCAST) {
        count++;
        if (lat !== null) {
          // payload = after kind, 3 lengths, encoding, topic, event, metadata
          const ts = readTimestamp(buf, p + 5 + buf[p + 1] + buf[p + 2] + buf[p + 3] + TS_OFFSET);
          if (ts >= lat.fromUs) {
            if (now < 0) now = nowUs();
            lat.push(now - ts);
          }
        }
      } else if ((b0 & 0x80) === 0 || op === 0) {
        this._protocolError('fragmented frames are not supported by the bench client');
        return;
      } else {
        this._onControl(op, Buffer.from(buf.subarray(p, p + len)));
      }
      i = p + len;
    }
    if (i < n) this._rest = Buffer.from(buf.subarray(i)); // a copy: buf is reused
    if (count !== 0) {
      this.count += count;
      sink.delivered += count;
      if (sink.wake !== null) sink.wake();
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
      ws.on('close', (code) => {
        this.closed = true;
        this.closeCode = code;
        this._failPending(new Error(`socket closed (code ${code})`));
        fail(new Error(`socket closed during handshake (code ${code})`));
      });
      ws.on('message', (data, isBinary) => {
        if (!isBinary) {
          this._onText(data.toString('utf8'));
          return;
        }
        if (data[0] !== KIND_USER_BROADCAST) {
          this._note(`binary frame of kind ${data[0]} (${data.length} bytes)`);
          return;
        }
        const sink = this.sink;
        const lat = sink.latency;
        if (lat !== null) {
          const ts = readTimestamp(data, 5 + data[1] + data[2] + data[3] + TS_OFFSET);
          if (ts >= lat.fromUs) lat.push(nowUs() - ts);
        }
        this.count++;
        sink.delivered++;
        if (sink.wake !== null) sink.wake();
      });
    });
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
  CLIENTS,
  LatencyRecorder,
  RawClient,
  WsClient,
  makePayload,
  makeUserBroadcast,
  nowUs,
  parseArgs,
  pool,
  startHeartbeats,
  writeTimestamp,
};
