'use strict';
/*
 * The fan-out load generator driven by bench/fanout.py.
 *
 * Connects S subscribers (at most --join-concurrency handshakes at a time),
 * joins each to --topic with broadcast self:false, then connects one
 * publisher that joins the same topic, and runs one phase:
 *
 *   throughput  the publisher sends kind-3 broadcasts as fast as the
 *               in-flight window allows: sent minus the average received per
 *               subscriber stays under the window, and no open subscriber
 *               lags more than twice that. The window holds --window-ms of
 *               deliveries at the rate of the last 250 ms, and at least
 *               --window-deliveries (a fixed --window, in broadcasts,
 *               overrides both). After --warmup seconds, deliveries (kind-4
 *               frames received by the subscribers) are counted for
 *               --duration seconds.
 *   latency     the publisher sends --rate broadcasts per second; each
 *               payload carries its send time, and every delivery during
 *               the --duration seconds after --warmup is one latency sample.
 *
 * Publisher and subscribers live in this one process, so the send and
 * receive timestamps come from the same clock.
 *
 * Every broadcast carries a sequence number, 1, 2, ... (makePayload in
 * client.js). After the window the generator waits until every open
 * subscriber has seen the last one (or the drain timeout), then --grace-ms
 * more for late extras, and checks that each subscriber received exactly
 * 1 .. sent, once each, in order (StreamCheck in client.js), and that the
 * publisher (broadcast self: false) received none. The result's
 * `verification` holds the outcome and one entry per subscriber that did
 * not; bench/fanout.py makes a run that is not exact an error.
 *
 * Stdout carries JSON lines only: {"event":"mark","name":"measure_start"}
 * and {"event":"mark","name":"measure_end"} around the measured window (the
 * orchestrator samples the server's CPU there), then one result object
 * {"event":"result", ...} or {"event":"error", ...} as the last line.
 * Progress goes to stderr.
 *
 * The generator reports its own CPU use and event-loop utilisation over the
 * window: near 100 % of a core it may be the bottleneck, not the server.
 */

const { performance } = require('perf_hooks');
const {
  BROADCAST_JOIN,
  CLIENTS,
  LatencyRecorder,
  emit,
  logger,
  makePayload,
  makeUserBroadcast,
  joinAll,
  nowUs,
  runMain,
  scriptOptions,
  sleep,
  startHeartbeats,
  usageProbe,
  verifyStreams,
  waitUntil,
  writeDigits,
  writeTimestamp,
} = require('./client');

const SEQ_DIGITS = 10;

const DEFAULTS = {
  url: '',
  subUrls: '', // comma-separated: subscribers spread over these (a cluster's nodes); empty: --url
  subscribers: 1000,
  phase: 'throughput',
  duration: 5,
  warmup: 1,
  rate: 0, // latency phase: broadcasts per second
  // Throughput phase, in-flight window. A server that coalesces writes
  // needs a deep pipeline: realtime-core reached ~1 M deliveries/s at
  // S = 1000 with 50,000 in flight and ~4 M with 200,000, while Node ws gave
  // the same figure with either; a window sized in time fits both.
  window: 0, // broadcasts in flight, fixed; 0 = adaptive as below
  windowDeliveries: 50000, // the adaptive window's floor, in deliveries
  windowMs: 250, // the adaptive window: this many ms of deliveries at the recent rate
  windowMax: 4000000, // the adaptive window's ceiling, in deliveries
  maxBuffered: 65536, // publisher socket bytes queued before it pauses
  topic: 'realtime:bench',
  event: 'bench',
  payloadBytes: 100,
  joinConcurrency: 200,
  connectTimeout: 60, // seconds, per handshake and per join reply
  drainTimeout: 5, // seconds to wait for in-flight deliveries after the window
  graceMs: 250, // after the drain: how long late extra copies have to show up
  heartbeatInterval: 25, // seconds (docs/protocol.md §1.5, realtime-js HEARTBEAT_INTERVAL)
  client: 'raw', // raw | ws
  burn: 0, // throughput phase: share of the generator's core to waste (headroom check)
};

const log = logger('loadgen');

/** Snapshot of wall time, this process's CPU and event-loop use, and the deliveries so far. */
function probe(sink) {
  return { ...usageProbe(), delivered: sink.delivered };
}

function usage(a, b) {
  const wallMs = b.t - a.t;
  const cpuMs = (b.cpu.user - a.cpu.user + b.cpu.system - a.cpu.system) / 1000;
  return {
    wall_s: wallMs / 1000,
    generator_cpu_pct: (100 * cpuMs) / wallMs,
    generator_cpu_user_pct: (100 * (b.cpu.user - a.cpu.user)) / 1000 / wallMs,
    generator_elu: performance.eventLoopUtilization(b.elu, a.elu).utilization,
    delivered: b.delivered - a.delivered,
    deliveries_per_s: ((b.delivered - a.delivered) * 1000) / wallMs,
  };
}

async function connectAll(opt, sink) {
  const Client = CLIENTS[opt.client];
  if (Client === undefined) throw new Error(`--client must be raw or ws, not ${opt.client}`);
  const subs = Array.from({ length: opt.subscribers }, () => new Client(sink));
  const timeoutMs = opt.connectTimeout * 1000;
  const t0 = performance.now();
  const { joined, failure } = await joinAll(subs, 'subscriber', BROADCAST_JOIN, opt);
  if (failure !== null) {
    for (const c of subs) c.close();
    const e = new Error(`${failure} (${joined} of ${opt.subscribers} joined)`);
    e.joined = joined;
    throw e;
  }
  const pubSink = { delivered: 0, latency: null, wake: null };
  const pub = new Client(pubSink);
  await pub.open(opt.url, timeoutMs);
  const joinRef = await pub.join(opt.topic, BROADCAST_JOIN, timeoutMs);
  return { subs, pub, joinRef, connectS: (performance.now() - t0) / 1000 };
}

/** Check what every subscriber received against 1 .. sent after the run (see the header). */
function tally(subs, pub, sent) {
  const notes = [];
  for (const c of subs) for (const n of c.notes) if (notes.length < 5) notes.push(n);
  const verification = { sent, ...verifyStreams(subs, sent) };
  // broadcast self: false, so the publisher's own messages are excess
  verification.publisher_received = pub.count;
  verification.publisher_closed = pub.closed;
  if (pub.count !== 0 || pub.closed) verification.exact = false;
  return { verification, notes };
}

/** Bytes of one kind-4 payload (docs/protocol.md §2.3) as subscribers receive it, without the WebSocket header. */
function frameBytes(opt) {
  return 5 + Buffer.byteLength(opt.topic) + Buffer.byteLength(opt.event) + opt.payloadBytes;
}

/**
 * Wait until every open subscriber has seen sequence number `sent`, the
 * last one (or timeout), then graceMs more so that late extra copies are
 * counted too. Resolves whether the last one reached them all.
 */
async function drain(subs, sent, timeoutMs, graceMs) {
  const done = await waitUntil(() => subs.every((c) => c.closed || c.stream.highest >= sent), timeoutMs, 10);
  await sleep(graceMs);
  return done;
}

async function runThroughput(opt, ctx, sink) {
  const { subs, pub } = ctx;
  const S = subs.length;
  const fixed = opt.window > 0;
  const floor = Math.max(4, Math.ceil(opt.windowDeliveries / S));
  // Per subscriber, at most ~1 MB in flight: realtime-core disconnects a
  // subscriber whose backlog passes 4 MB (slow consumer, docs/design.md §2), and the
  // bench measures fan-out, not that policy.
  const perSubscriber = Math.floor(1_000_000 / (frameBytes(opt) + 2));
  const ceiling = Math.max(floor, Math.min(perSubscriber, Math.ceil(opt.windowMax / S)));
  let window = fixed ? opt.window : floor;
  let windowPeak = window;
  const history = []; // [time ms, delivered] every 20 ms, the last 250 ms
  const payload = makePayload(opt.payloadBytes);
  const frame = makeUserBroadcast(ctx.joinRef, ctx.joinRef, opt.topic, opt.event, payload);
  let sent = 0;
  let running = true;
  let scheduled = false;
  let minOpen = 0; // refreshed every 20 ms: the slowest open subscriber's count

  const pump = () => {
    scheduled = false;
    if (!running || pub.closed) return;
    const limit = Math.min(sink.delivered / S + window, minOpen + 2 * window);
    while (sent < limit && pub.bufferedAmount < opt.maxBuffered) {
      sent++;
      writeDigits(frame.buf, frame.seqOffset, sent, SEQ_DIGITS);
      writeTimestamp(frame.buf, frame.tsOffset, nowUs());
      pub.sendBinary(frame.buf);
    }
  };
  sink.wake = () => {
    if (!scheduled) {
      scheduled = true;
      setImmediate(pump);
    }
  };
  const refresh = setInterval(() => {
    let m = Infinity;
    for (const c of subs) if (!c.closed && c.count < m) m = c.count;
    minOpen = m === Infinity ? sent : m;
    if (!fixed) {
      const now = performance.now();
      history.push([now, sink.delivered]);
      while (history.length > 2 && now - history[0][0] > 250) history.shift();
      const [t, d] = history[0];
      if (now - t >= 100) {
        const rate = ((sink.delivered - d) * 1000) / (now - t); // deliveries/s
        window = Math.min(ceiling, Math.max(floor, Math.ceil((rate * opt.windowMs) / 1000 / S)));
        if (window > windowPeak) windowPeak = window;
      }
    }
    sink.wake(); // also restarts the publisher once its socket buffer drained
  }, 20);

  // --burn F: spin F of every 10 ms, taking that share of the generator's
  // core away, to check that the measured rate does not depend on it.
  const burner =
    opt.burn > 0
      ? setInterval(() => {
          const until = performance.now() + 10 * opt.burn;
          while (performance.now() < until);
        }, 10)
      : null;
  sink.wake();
  await sleep(opt.warmup * 1000);
  const a = probe(sink);
  const sentA = sent;
  emit({ event: 'mark', name: 'measure_start' });
  await sleep(opt.duration * 1000);
  const b = probe(sink);
  const sentB = sent;
  emit({ event: 'mark', name: 'measure_end' });
  running = false;
  clearInterval(refresh);
  if (burner !== null) clearInterval(burner);
  sink.wake = null;
  // What is still in flight drains at about the measured rate.
  const rate = ((b.delivered - a.delivered) * 1000) / (b.t - a.t);
  const inFlight = sent * S - sink.delivered;
  const drainMs = Math.max(opt.drainTimeout * 1000, rate > 0 ? (3000 * inFlight) / rate : 0);
  const drained = await drain(subs, sent, drainMs, opt.graceMs);
  return {
    window_broadcasts: window,
    window_peak_broadcasts: windowPeak,
    window_peak_deliveries: windowPeak * S,
    burn: opt.burn,
    sent,
    sent_per_s: ((sentB - sentA) * 1000) / (b.t - a.t),
    drained,
    ...usage(a, b),
    ...tally(subs, pub, sent),
  };
}

async function runLatency(opt, ctx, sink) {
  const { subs, pub } = ctx;
  const S = subs.length;
  const rate = opt.rate;
  if (!(rate > 0)) throw new Error('--rate (broadcasts per second) is required for the latency phase');
  const payload = makePayload(opt.payloadBytes);
  const frame = makeUserBroadcast(ctx.joinRef, ctx.joinRef, opt.topic, opt.event, payload);
  const totalS = opt.warmup + opt.duration;
  const t0 = nowUs();
  const measureFromUs = opt.warmup * 1e6; // relative to t0
  // Timestamps are absolute (nowUs(), the process's clock), as receivers read them.
  sink.latency = new LatencyRecorder(t0 + measureFromUs, Math.ceil(rate * opt.duration * S * 1.1));
  let sent = 0;
  let late = 0; // sends more than 5 ms behind schedule: the generator fell behind
  let a = null;
  let b = null;
  let sentA = 0;
  let sentB = 0;

  await new Promise((resolve) => {
    const tick = () => {
      const elapsedUs = nowUs() - t0;
      if (a === null && elapsedUs >= measureFromUs) {
        a = probe(sink);
        sentA = sent;
        emit({ event: 'mark', name: 'measure_start' });
      }
      if (elapsedUs >= totalS * 1e6) {
        b = probe(sink);
        sentB = sent;
        emit({ event: 'mark', name: 'measure_end' });
        resolve();
        return;
      }
      const due = Math.floor((elapsedUs / 1e6) * rate) + 1;
      while (sent < due && !pub.closed) {
        const now = nowUs();
        if (now - t0 - (sent / rate) * 1e6 > 5000) late++;
        writeDigits(frame.buf, frame.seqOffset, sent + 1, SEQ_DIGITS);
        writeTimestamp(frame.buf, frame.tsOffset, now);
        pub.sendBinary(frame.buf);
        sent++;
      }
      const nextUs = (sent / rate) * 1e6;
      setTimeout(tick, Math.max(0, (nextUs - (nowUs() - t0)) / 1000));
    };
    tick();
  });
  const drained = await drain(subs, sent, opt.drainTimeout * 1000, opt.graceMs);
  const lat = sink.latency.summary();
  sink.latency = null;
  return {
    rate,
    target_deliveries_per_s: rate * S,
    sent,
    sent_per_s: ((sentB - sentA) * 1000) / (b.t - a.t),
    late_sends: late,
    drained,
    latency: lat,
    p50_ms: lat.p50_ms,
    p99_ms: lat.p99_ms,
    ...usage(a, b),
    ...tally(subs, pub, sent),
  };
}

async function main() {
  const opt = scriptOptions(DEFAULTS);
  if (opt === null) return 2;
  const sink = { delivered: 0, latency: null, wake: null };
  let ctx;
  try {
    ctx = await connectAll(opt, sink);
  } catch (err) {
    emit({ event: 'error', stage: 'connect', error: err.message, joined: err.joined });
    return 1;
  }
  log(`${opt.subscribers} subscribers + 1 publisher joined in ${ctx.connectS.toFixed(2)} s`);
  const hb = startHeartbeats([...ctx.subs, ctx.pub], opt.heartbeatInterval * 1000);
  let result;
  try {
    if (opt.phase === 'throughput') result = await runThroughput(opt, ctx, sink);
    else if (opt.phase === 'latency') result = await runLatency(opt, ctx, sink);
    else throw new Error(`--phase must be throughput or latency, not ${opt.phase}`);
  } catch (err) {
    emit({ event: 'error', stage: opt.phase, error: err.message });
    return 1;
  } finally {
    clearInterval(hb);
  }
  emit({
    event: 'result',
    phase: opt.phase,
    client: opt.client,
    subscribers: opt.subscribers,
    duration_s: opt.duration,
    warmup_s: opt.warmup,
    payload_bytes: opt.payloadBytes,
    connect_s: ctx.connectS,
    publisher_closed: ctx.pub.closed,
    publisher_notes: ctx.pub.notes,
    ...result,
  });
  return 0;
}

runMain(main);
