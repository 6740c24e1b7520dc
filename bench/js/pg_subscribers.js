'use strict';
/*
 * The Postgres Changes subscribers driven by bench/postgres_changes.py.
 *
 * Opens N V2 connections with the `ws` library (WsClient from client.js),
 * one JWT each (read from --tokens, one per line: connection i uses line
 * i), joins every connection to --topic with config.postgres_changes =
 * [{event, schema, table}] and its token as access_token (docs/protocol.md §6.2), and
 * waits for the `system` message `Subscribed to PostgreSQL` on every
 * connection. Then it prints {"event":"ready"} and counts
 * `postgres_changes` deliveries (docs/protocol.md §6.6).
 *
 * Per delivery, without parsing the JSON (the frame is a V2 array with a
 * fixed prefix, docs/protocol.md §2.2; the record's fields come in attnum order, id
 * first):
 *   - the frame must start with [null,null,"<topic>","postgres_changes",
 *     {"ids":[<this connection's subscription id>],"data":
 *   - record.id is kept, in arrival order, for the `expect` command: the
 *     orchestrator checks that each connection received exactly the ids of
 *     the rows it may see, once each, in each writer's commit order
 *     (bench/_verify.py check_stream);
 *   - with --latency, record.body holds the writer's CLOCK_MONOTONIC time in
 *     ns (Python time.monotonic_ns()); the receive time is
 *     process.hrtime.bigint(), the same kernel clock, so no anchoring or
 *     NTP drift enters the difference (the two processes share one machine).
 * The first delivery on each connection is also JSON.parse'd in full and
 * checked (ids, schema, table, type, record fields) as a cross-check of the
 * byte-level reading.
 *
 * --fault NAME falsifies what connection 0 records, for the bench's own
 * tests (tests/test_bench_checks.py), as a faulty server would have sent it:
 *   duplicate-loss  its 3rd delivery is taken for a second copy of its 2nd
 *                   (the count stays right, one row is lost);
 *   reorder         its 2nd and 3rd deliveries swap places.
 *
 * Stdin takes one command per line:
 *   mark <name>      print {"event":"mark", name, delivered, cpu, elu}
 *   expect <json>    {"counts": [per connection], "timeout_s": s, "grace_ms": g}:
 *                    wait until every open connection received its count
 *                    (or the timeout), then g ms more for late extras, and
 *                    print {"event":"result", ...} with each connection's
 *                    record ids as runs [first, length, ...], whether the
 *                    server closed it, malformed frames, latency samples
 *   quit             close every connection and exit
 * Stdout carries JSON lines only; every --progress-ms it prints
 * {"event":"progress","delivered":n} so the writer can bound its lead.
 * Progress and errors go to stderr.
 */

const fs = require('fs');
const { performance } = require('perf_hooks');
const {
  SERVE_DEFAULTS,
  WsClient,
  emit,
  logger,
  poolUntilError,
  runMain,
  scriptOptions,
  serveCommands,
  sleep,
  waitUntil,
} = require('./client');

const DEFAULTS = {
  url: '', // ws://host:port/socket/websocket?vsn=2.0.0 (apikey is appended)
  tokens: '', // file with one JWT per line
  subscribers: 0, // 0 = one per token
  topic: 'realtime:bench',
  schema: 'public',
  table: 'items',
  event: 'INSERT',
  latency: false,
  fault: '', // '' | duplicate-loss | reorder (see above)
  joinConcurrency: 50,
  connectTimeout: 30, // seconds, per handshake, join reply and system message
  ...SERVE_DEFAULTS,
};

const log = logger('pg_subscribers');

/** Whether buf[at ..] starts with `prefix`. */
function startsAt(buf, prefix, at) {
  if (at + prefix.length > buf.length) return false;
  return buf.compare(prefix, 0, prefix.length, at, at + prefix.length) === 0;
}

const BODY = Buffer.from('"body":"');
const RECORD_ID = Buffer.from('"record":{"id":');

/** The non-negative integer whose digits start at buf[at]; -1 if none. */
function intAt(buf, at) {
  let v = 0;
  let i = at;
  for (; i < buf.length; i++) {
    const d = buf[i] - 48;
    if (d < 0 || d > 9) break;
    v = v * 10 + d;
  }
  return i > at ? v : -1;
}

/** One connection subscribed to the table; reads its deliveries without JSON.parse. */
class Subscriber extends WsClient {
  constructor(index, token, opt, sink, samples) {
    super(sink); // sink: {delivered}, shared by every connection
    this.index = index;
    this.token = token;
    this.opt = opt;
    this.samples = samples; // shared [body, delay ns] pairs, or null without --latency
    this.runs = []; // record.id of every delivery, in arrival order, as runs: [first, length, ...]
    this.faultSeen = 0; // --fault: deliveries seen by falsify()
    this.held = -1; // --fault: the id falsify() holds back or repeats
    this.id = null; // the subscription id from the join reply
    this.deliveryPrefix = null; // bytes every delivery to this connection starts with
    this.badFrames = 0; // postgres_changes frames whose ids or shape were wrong
    this.checkedFirst = false;
    this._subscribed = null; // {resolve, reject} until the system message
  }

  /** The --url with this connection's token as apikey. */
  url() {
    const url = this.opt.url;
    return `${url}${url.includes('?') ? '&' : '?'}apikey=${encodeURIComponent(this.token)}`;
  }

  /** Join with postgres_changes; resolve once `Subscribed to PostgreSQL` arrived. */
  async subscribe(timeoutMs) {
    const opt = this.opt;
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
    const reply = this.request(undefined, opt.topic, 'phx_join', payload, timeoutMs);
    reply.catch(() => {}); // raced below against the timeout, which may win
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

  _onClose(code, reason) {
    super._onClose(code);
    if (code !== 1000 && code !== 1005) this._note(`closed ${code} ${reason}`);
    if (this._subscribed !== null) this._subscribed.reject(new Error(`socket closed (code ${code})`));
  }

  _onTextFrame(data) {
    const prefix = this.deliveryPrefix;
    if (prefix !== null && startsAt(data, prefix, 0)) this.onDelivery(data, prefix.length);
    else super._onTextFrame(data);
  }

  _onBinaryFrame(data) {
    this._note(`binary frame of kind ${data[0]} (${data.length} bytes)`);
  }

  _onMessage(msg, text) {
    const [, , , event, payload] = msg;
    if (event === 'system' && payload && payload.extension === 'postgres_changes') {
      if (this._subscribed !== null) {
        if (payload.status === 'ok' && payload.message === 'Subscribed to PostgreSQL') this._subscribed.resolve();
        else this._subscribed.reject(new Error(`subscription failed: ${JSON.stringify(payload).slice(0, 300)}`));
      } else {
        this._note('late system message: ' + text.slice(0, 200));
      }
    } else if (event === 'postgres_changes') {
      // A delivery that does not carry exactly this connection's id.
      this.count++;
      this.sink.delivered++;
      this.badFrames++;
      this._note('unexpected delivery: ' + text.slice(0, 300));
    } else if (event !== 'presence_state') {
      super._onMessage(msg, text);
    }
  }

  onDelivery(data, dataAt) {
    this.count++;
    this.sink.delivered++;
    if (!this.checkedFirst) {
      this.checkedFirst = true;
      this.checkFull(data);
    }
    const at = data.indexOf(RECORD_ID, dataAt);
    const id = at < 0 ? this.parseId(data) : intAt(data, at + RECORD_ID.length);
    if (id < 0) {
      this.badFrames++;
      this._note('delivery without record.id: ' + data.toString('utf8', 0, 300));
      return;
    }
    if (this.index === 0 && this.opt.fault !== '') this.falsify(id);
    else this.record(id);
    const samples = this.samples;
    if (samples !== null) {
      const recv = process.hrtime.bigint();
      const b = data.indexOf(BODY, dataAt);
      if (b < 0) return;
      const start = b + BODY.length;
      const end = data.indexOf(0x22, start); // closing quote
      const digits = data.toString('latin1', start, end);
      if (/^\d+$/.test(digits)) samples.push([digits, Number(recv - BigInt(digits))]);
    }
  }

  /** Keep `id`, extending the last run when it follows it. */
  record(id) {
    const runs = this.runs;
    const n = runs.length;
    if (n !== 0 && runs[n - 2] + runs[n - 1] === id) runs[n - 1]++;
    else runs.push(id, 1);
  }

  /** --fault: record the 2nd and 3rd deliveries as the fault says. */
  falsify(id) {
    const n = ++this.faultSeen;
    if (this.opt.fault === 'duplicate-loss') {
      if (n === 2) this.held = id;
      this.record(n === 3 ? this.held : id);
    } else if (n === 2) {
      this.held = id; // reorder: after the 3rd
    } else {
      this.record(id);
      if (n === 3) this.record(this.held);
    }
  }

  /** record.id by JSON.parse, when it is not the record's first field; -1 without one. */
  parseId(data) {
    try {
      const record = JSON.parse(data.toString('utf8'))[4].data.record;
      return Number.isInteger(record.id) && record.id >= 0 ? record.id : -1;
    } catch (e) {
      return -1;
    }
  }

  /** JSON.parse one delivery and check the data object (docs/protocol.md §6.5, §6.6). */
  checkFull(data) {
    let msg;
    try {
      msg = JSON.parse(data.toString('utf8'));
    } catch (e) {
      this.badFrames++;
      this._note('delivery is not JSON: ' + data.toString('utf8', 0, 300));
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
      this._note(`first delivery: ${problems.join(', ')}: ${data.toString('utf8', 0, 400)}`);
    }
  }

  /** Close with 1000, letting the close frame go out (WsClient terminates). */
  close() {
    if (this.ws !== null && !this.closed) this.ws.close(1000);
  }
}

/** The `expect` command: wait until every open connection got its count, then report what each got. */
async function expect(subs, sink, samples, arg) {
  const { counts, timeout_s: timeoutS, grace_ms: graceMs } = JSON.parse(arg);
  const t = performance.now();
  const drained = await waitUntil(
    () => subs.every((s, i) => s.closed || s.count >= counts[i]),
    timeoutS * 1000,
    20,
  );
  const drainS = (performance.now() - t) / 1000;
  await sleep(graceMs); // anything arriving now is an extra copy or a row not expected
  const notes = [];
  for (let i = 0; i < subs.length; i++) for (const note of subs[i].notes) if (notes.length < 10) notes.push(`#${i}: ${note}`);
  return {
    event: 'result',
    drained,
    drain_s: drainS,
    delivered: sink.delivered,
    subscribers: subs.map((s) => ({
      ids: s.runs,
      closed: s.closed,
      close: s.closed ? s.notes.find((n) => n.startsWith('closed')) || `code ${s.closeCode}` : null,
      bad_frames: s.badFrames,
    })),
    notes,
    latency_samples: samples,
  };
}

async function main() {
  const opt = scriptOptions(DEFAULTS, ['url', 'tokens']);
  if (opt === null) return 2;
  if (!['', 'duplicate-loss', 'reorder'].includes(opt.fault)) {
    emit({ event: 'error', error: `unknown --fault ${opt.fault}` });
    return 2;
  }
  const tokens = fs.readFileSync(opt.tokens, 'utf8').split('\n').filter((l) => l.trim() !== '');
  const n = opt.subscribers > 0 ? opt.subscribers : tokens.length;
  if (n > tokens.length) {
    emit({ event: 'error', error: `${n} subscribers but only ${tokens.length} tokens` });
    return 2;
  }
  const sink = { delivered: 0, latency: null, wake: null };
  const samples = opt.latency ? [] : null;
  const subs = [];
  for (let i = 0; i < n; i++) subs.push(new Subscriber(i, tokens[i], opt, sink, samples));
  const timeoutMs = opt.connectTimeout * 1000;
  const t0 = performance.now();
  let joined = 0;
  const failure = await poolUntilError(n, opt.joinConcurrency, 'subscriber', async (i) => {
    await subs[i].open(subs[i].url(), timeoutMs);
    await subs[i].subscribe(timeoutMs);
    joined++;
  });
  if (failure !== null) {
    emit({ event: 'error', stage: 'subscribe', error: `${failure} (${joined} of ${n} subscribed)` });
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
  const commands = { expect: (arg) => expect(subs, sink, samples, arg) };
  await serveCommands(opt, { sink, clients: subs, commands, log });
  return 0;
}

// Lingers 100 ms so that close frames go out before exiting.
runMain(main, 100);
