'use strict';
/*
 * The Postgres Changes subscribers driven by bench/postgres_changes.py.
 *
 * Opens N V2 connections with the `ws` library, one JWT each (read from
 * --tokens, one per line: connection i uses line i), joins every connection
 * to --topic with config.postgres_changes = [{event, schema, table}] and its
 * token as access_token (spec §6.2), and waits for the `system` message
 * `Subscribed to PostgreSQL` on every connection. Then it prints
 * {"event":"ready"} and counts `postgres_changes` deliveries (spec §6.6).
 *
 * Per delivery, without parsing the JSON (the frame is a V2 array with a
 * fixed prefix, spec 2.2; the record's fields come in attnum order):
 *   - the frame must start with [null,null,"<topic>","postgres_changes",
 *     {"ids":[<this connection's subscription id>],"data":
 *   - with --owner-check, record.owner must be this connection's `sub`
 *     ("user<i>"): an RLS table whose policy shows each subscriber its own
 *     rows;
 *   - with --latency, record.body holds the writer's CLOCK_MONOTONIC time in
 *     ns (Python time.monotonic_ns()); the receive time is
 *     process.hrtime.bigint(), the same kernel clock, so no anchoring or
 *     NTP drift enters the difference (the two processes share one machine).
 * The first delivery on each connection is also JSON.parse'd in full and
 * checked (ids, schema, table, type, record fields) as a cross-check of the
 * byte-level reading.
 *
 * Stdin takes one command per line:
 *   mark <name>      print {"event":"mark", name, delivered, cpu, elu}
 *   expect <json>    {"counts": [per connection], "timeout_s": s}: wait until
 *                    every open connection received its count (or the
 *                    timeout), then print {"event":"result", ...} with the
 *                    shortfall, excess, wrong owners and latency samples
 *   quit             close every connection and exit
 * Stdout carries JSON lines only; every --progress-ms it prints
 * {"event":"progress","delivered":n} so the writer can bound its lead.
 * Progress and errors go to stderr.
 */

const fs = require('fs');
const readline = require('readline');
const { performance } = require('perf_hooks');
const WebSocket = require('ws');
const { parseArgs, pool } = require('./client');

const DEFAULTS = {
  url: '', // ws://host:port/socket/websocket?vsn=2.0.0 (apikey is appended)
  tokens: '', // file with one JWT per line
  subscribers: 0, // 0 = one per token
  topic: 'realtime:bench',
  schema: 'public',
  table: 'items',
  event: 'INSERT',
  latency: false,
  ownerCheck: false,
  joinConcurrency: 50,
  connectTimeout: 30, // seconds, per handshake, join reply and system message
  progressMs: 50,
  heartbeatInterval: 25, // seconds (spec 1.5)
};

const MAX_NOTES = 5;

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function log(msg) {
  process.stderr.write(`pg_subscribers: ${msg}\n`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Index of `needle` in `buf` at or after `from`, or -1. */
function find(buf, needle, from) {
  return buf.indexOf(needle, from);
}

/** Whether buf[at ..] starts with `prefix`. */
function startsAt(buf, prefix, at) {
  if (at + prefix.length > buf.length) return false;
  return buf.compare(prefix, 0, prefix.length, at, at + prefix.length) === 0;
}

const OWNER = Buffer.from('"owner":"');
const BODY = Buffer.from('"body":"');
const RECORD = Buffer.from('"record":{');

class Subscriber {
  constructor(index, token, opt, stats) {
    this.index = index;
    this.token = token;
    this.opt = opt;
    this.stats = stats; // shared: {delivered, latency: [] | null}
    this.sub = `user${index}`;
    this.ownerValue = Buffer.from(`user${index}"`);
    this.ws = null;
    this.id = null; // the subscription id from the join reply
    this.deliveryPrefix = null; // bytes every delivery to this connection starts with
    this.count = 0;
    this.wrongOwner = 0;
    this.badFrames = 0; // postgres_changes frames whose ids or shape were wrong
    this.checkedFirst = false;
    this.closed = false;
    this.closeCode = null;
    this.notes = [];
    this._ref = 0;
    this._pending = new Map(); // ref -> {resolve, reject}
    this._subscribed = null; // {resolve, reject} until the system message
  }

  note(what) {
    if (this.notes.length < MAX_NOTES) this.notes.push(what);
  }

  nextRef() {
    this._ref += 1;
    return String(this._ref);
  }

  open(timeoutMs) {
    const url = `${this.opt.url}${this.opt.url.includes('?') ? '&' : '?'}apikey=${encodeURIComponent(this.token)}`;
    return new Promise((resolve, reject) => {
      let settled = false;
      const ws = new WebSocket(url, { perMessageDeflate: false, handshakeTimeout: timeoutMs, skipUTF8Validation: true });
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
      ws.on('error', (err) => fail(err));
      ws.on('open', () => {
        settled = true;
        this.ws = ws;
        resolve();
      });
      ws.on('close', (code, reason) => {
        this.closed = true;
        this.closeCode = code;
        if (code !== 1000 && code !== 1005) this.note(`closed ${code} ${reason}`);
        const err = new Error(`socket closed (code ${code})`);
        for (const p of this._pending.values()) p.reject(err);
        this._pending.clear();
        if (this._subscribed !== null) this._subscribed.reject(err);
        fail(err);
      });
      ws.on('message', (data, isBinary) => this.onMessage(data, isBinary));
    });
  }

  send(arr) {
    this.ws.send(JSON.stringify(arr));
  }

  /** Join with postgres_changes; resolve once `Subscribed to PostgreSQL` arrived. */
  async join(timeoutMs) {
    const opt = this.opt;
    const ref = this.nextRef();
    const payload = {
      config: {
        broadcast: { self: false, ack: false },
        presence: { enabled: false },
        private: false,
        postgres_changes: [{ event: opt.event, schema: opt.schema, table: opt.table }],
      },
      access_token: this.token,
    };
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no join reply or system message within ${timeoutMs} ms`)), timeoutMs);
    });
    const subscribed = new Promise((resolve, reject) => {
      this._subscribed = { resolve, reject };
    });
    subscribed.catch(() => {}); // awaited below; avoid an unhandled rejection if the reply fails first
    const reply = new Promise((resolve, reject) => this._pending.set(ref, { resolve, reject }));
    this.send([ref, ref, opt.topic, 'phx_join', payload]);
    try {
      const msg = await Promise.race([reply, timeout]);
      const body = msg[4] || {};
      if (body.status !== 'ok') throw new Error(`join refused: ${JSON.stringify(msg).slice(0, 300)}`);
      const entries = (body.response && body.response.postgres_changes) || [];
      if (entries.length !== 1 || !Number.isInteger(entries[0].id)) {
        throw new Error(`join reply without one postgres_changes id: ${JSON.stringify(body).slice(0, 300)}`);
      }
      this.id = entries[0].id;
      this.deliveryPrefix = Buffer.from(
        `[null,null,${JSON.stringify(opt.topic)},"postgres_changes",{"ids":[${this.id}],"data":`,
      );
      await Promise.race([subscribed, timeout]);
    } finally {
      clearTimeout(timer);
      this._subscribed = null;
    }
  }

  heartbeat() {
    if (!this.closed && this.ws !== null) this.send([null, this.nextRef(), 'phoenix', 'heartbeat', {}]);
  }

  onMessage(data, isBinary) {
    const prefix = this.deliveryPrefix;
    if (!isBinary && prefix !== null && startsAt(data, prefix, 0)) {
      this.onDelivery(data, prefix.length);
      return;
    }
    if (isBinary) {
      this.note(`binary frame of kind ${data[0]} (${data.length} bytes)`);
      return;
    }
    const text = data.toString('utf8');
    let msg;
    try {
      msg = JSON.parse(text);
    } catch (e) {
      this.note('bad JSON: ' + text.slice(0, 200));
      return;
    }
    if (!Array.isArray(msg) || msg.length < 5) {
      this.note('not a V2 array: ' + text.slice(0, 200));
      return;
    }
    const [, ref, topic, event, payload] = msg;
    if (event === 'phx_reply' && ref !== null && this._pending.has(ref)) {
      const p = this._pending.get(ref);
      this._pending.delete(ref);
      p.resolve(msg);
      return;
    }
    if (event === 'phx_reply' && topic === 'phoenix') return; // heartbeat replies
    if (event === 'system' && payload && payload.extension === 'postgres_changes') {
      if (this._subscribed !== null) {
        if (payload.status === 'ok' && payload.message === 'Subscribed to PostgreSQL') this._subscribed.resolve();
        else this._subscribed.reject(new Error(`subscription failed: ${JSON.stringify(payload).slice(0, 300)}`));
      } else {
        this.note('late system message: ' + text.slice(0, 200));
      }
      return;
    }
    if (event === 'postgres_changes') {
      // A delivery that does not carry exactly this connection's id.
      this.count++;
      this.stats.delivered++;
      this.badFrames++;
      this.note('unexpected delivery: ' + text.slice(0, 300));
      return;
    }
    if (event === 'presence_state') return;
    this.note(text.slice(0, 300));
  }

  onDelivery(data, dataAt) {
    this.count++;
    const stats = this.stats;
    stats.delivered++;
    if (!this.checkedFirst) {
      this.checkedFirst = true;
      this.checkFull(data);
    }
    let at = dataAt;
    if (this.opt.ownerCheck || stats.latency !== null) {
      at = find(data, RECORD, at);
      if (at < 0) {
        this.badFrames++;
        this.note('delivery without record: ' + data.toString('utf8', 0, 300));
        return;
      }
    }
    if (this.opt.ownerCheck) {
      const o = find(data, OWNER, at);
      if (o < 0 || !startsAt(data, this.ownerValue, o + OWNER.length)) {
        this.wrongOwner++;
        if (this.wrongOwner === 1) this.note(`row of another owner: ${data.toString('utf8', 0, 400)}`);
      }
    }
    if (stats.latency !== null) {
      const recv = process.hrtime.bigint();
      const b = find(data, BODY, at);
      if (b < 0) return;
      const start = b + BODY.length;
      const end = data.indexOf(0x22, start); // closing quote
      const digits = data.toString('latin1', start, end);
      if (/^\d+$/.test(digits)) stats.latency.push([digits, Number(recv - BigInt(digits))]);
    }
  }

  /** JSON.parse one delivery and check the data object (spec §6.5, §6.6). */
  checkFull(data) {
    let msg;
    try {
      msg = JSON.parse(data.toString('utf8'));
    } catch (e) {
      this.badFrames++;
      this.note('delivery is not JSON: ' + data.toString('utf8', 0, 300));
      return;
    }
    const p = msg[4] || {};
    const d = p.data || {};
    const problems = [];
    if (msg[0] !== null || msg[1] !== null) problems.push('join_ref/ref not null');
    if (!Array.isArray(p.ids) || p.ids.length !== 1 || p.ids[0] !== this.id) problems.push('ids');
    if (d.schema !== this.opt.schema || d.table !== this.opt.table) problems.push('schema/table');
    if (d.type !== 'INSERT') problems.push('type');
    if (d.errors !== null) problems.push('errors');
    if (!d.record || typeof d.record.id !== 'number' || typeof d.record.owner !== 'string') problems.push('record');
    if (!Array.isArray(d.columns) || d.columns.map((c) => c.name).join(',') !== 'id,owner,body') problems.push('columns');
    if (typeof d.commit_timestamp !== 'string') problems.push('commit_timestamp');
    if (problems.length) {
      this.badFrames++;
      this.note(`first delivery: ${problems.join(', ')}: ${data.toString('utf8', 0, 400)}`);
    }
  }

  close() {
    if (this.ws !== null && !this.closed) this.ws.close(1000);
  }
}

function usageProbe() {
  return { t: performance.now(), cpu: process.cpuUsage(), elu: performance.eventLoopUtilization() };
}

async function waitCounts(subs, counts, timeoutMs) {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    let done = true;
    for (let i = 0; i < subs.length; i++) {
      if (!subs[i].closed && subs[i].count < counts[i]) {
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
  if (!opt.url || !opt.tokens) {
    emit({ event: 'error', error: '--url and --tokens are required' });
    return 2;
  }
  const tokens = fs.readFileSync(opt.tokens, 'utf8').split('\n').filter((l) => l.trim() !== '');
  const n = opt.subscribers > 0 ? opt.subscribers : tokens.length;
  if (n > tokens.length) {
    emit({ event: 'error', error: `${n} subscribers but only ${tokens.length} tokens` });
    return 2;
  }
  const stats = { delivered: 0, latency: opt.latency ? [] : null };
  const subs = [];
  for (let i = 0; i < n; i++) subs.push(new Subscriber(i, tokens[i], opt, stats));
  const timeoutMs = opt.connectTimeout * 1000;
  const t0 = performance.now();
  let firstError = null;
  let joined = 0;
  await pool(n, opt.joinConcurrency, async (i) => {
    if (firstError !== null) return;
    try {
      await subs[i].open(timeoutMs);
      await subs[i].join(timeoutMs);
      joined++;
    } catch (err) {
      if (firstError === null) firstError = `subscriber ${i}: ${err.message}`;
    }
  });
  if (firstError !== null) {
    emit({ event: 'error', stage: 'subscribe', error: `${firstError} (${joined} of ${n} subscribed)` });
    for (const s of subs) s.close();
    return 1;
  }
  const subscribeS = (performance.now() - t0) / 1000;
  log(`${n} subscribers on ${opt.schema}.${opt.table} subscribed in ${subscribeS.toFixed(2)} s`);
  emit({
    event: 'ready',
    subscribers: n,
    subscribe_s: subscribeS,
    ids: [...new Set(subs.map((s) => s.id))],
    // CLOCK_MONOTONIC now, for the orchestrator's clock check
    hrtime_ns: process.hrtime.bigint().toString(),
  });

  let lastProgress = -1;
  const progress = setInterval(() => {
    if (stats.delivered !== lastProgress) {
      lastProgress = stats.delivered;
      emit({ event: 'progress', delivered: stats.delivered });
    }
  }, opt.progressMs);
  const hb = setInterval(() => {
    for (const s of subs) s.heartbeat();
  }, opt.heartbeatInterval * 1000);

  let markProbe = usageProbe();
  const rl = readline.createInterface({ input: process.stdin });
  const finish = () => {
    clearInterval(progress);
    clearInterval(hb);
    rl.close();
    for (const s of subs) s.close();
  };
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
        delivered: stats.delivered,
        // since the previous mark
        generator_cpu_pct: wallMs > 0 ? (100 * cpuMs) / wallMs : null,
        generator_elu: performance.eventLoopUtilization(now.elu, markProbe.elu).utilization,
      });
      markProbe = now;
    } else if (cmd === 'expect') {
      const { counts, timeout_s: timeoutS } = JSON.parse(arg);
      const t = performance.now();
      const drained = await waitCounts(subs, counts, timeoutS * 1000);
      // Anything still arriving after the drain would be excess: give it a moment.
      await sleep(200);
      let shortfall = 0;
      let excess = 0;
      let short = 0;
      let closed = 0;
      let wrongOwner = 0;
      let badFrames = 0;
      const notes = [];
      for (let i = 0; i < subs.length; i++) {
        const s = subs[i];
        if (s.count < counts[i]) {
          shortfall += counts[i] - s.count;
          short++;
        } else if (s.count > counts[i]) excess += s.count - counts[i];
        if (s.closed) closed++;
        wrongOwner += s.wrongOwner;
        badFrames += s.badFrames;
        for (const note of s.notes) if (notes.length < 10) notes.push(`#${i}: ${note}`);
      }
      emit({
        event: 'result',
        drained,
        drain_s: (performance.now() - t) / 1000,
        delivered: stats.delivered,
        expected: counts.reduce((a, b) => a + b, 0),
        shortfall,
        subscribers_short: short,
        excess,
        wrong_owner: wrongOwner,
        bad_frames: badFrames,
        subscribers_closed: closed,
        per_subscriber_min: Math.min(...subs.map((s) => s.count)),
        per_subscriber_max: Math.max(...subs.map((s) => s.count)),
        notes,
        latency_samples: stats.latency,
      });
    } else if (cmd === 'quit') {
      break;
    } else if (cmd !== '') {
      log(`unknown command ${cmd}`);
    }
  }
  finish();
  return 0;
}

main().then(
  (code) => {
    // Let close frames go out before exiting.
    setTimeout(() => process.exit(code), 100);
  },
  (err) => {
    emit({ event: 'error', error: String((err && err.stack) || err) });
    process.exit(1);
  },
);
