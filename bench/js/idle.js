'use strict';
/*
 * Idle connections for the memory measurement of bench/fanout.py.
 *
 * Opens --connections sockets (at most --join-concurrency handshakes at a
 * time), joins each to --topic, prints {"event":"ready", ...} on stdout once
 * all are open and joined, then holds them, sending only a heartbeat every
 * --heartbeat-interval seconds per socket (the server closes sockets that
 * stay silent for 60 s, docs/protocol.md §1.5). It exits when stdin closes or on
 * SIGINT/SIGTERM, printing {"event":"done", ...} with the number of sockets
 * the server closed meanwhile. On failure it prints {"event":"error", ...}.
 */

const { BROADCAST_JOIN, CLIENTS, emit, joinAll, parseArgs, startHeartbeats } = require('./client');

const DEFAULTS = {
  url: '',
  connections: 5000,
  topic: 'realtime:idle',
  joinConcurrency: 200,
  connectTimeout: 60,
  heartbeatInterval: 25,
  client: 'raw',
};

async function main() {
  const opt = parseArgs(process.argv.slice(2), DEFAULTS);
  if (!opt.url) throw new Error('--url is required');
  const Client = CLIENTS[opt.client];
  const sink = { delivered: 0, latency: null, wake: null };
  const conns = Array.from({ length: opt.connections }, () => new Client(sink));
  const t0 = Date.now();
  const { joined, failure } = await joinAll(conns, 'connection', BROADCAST_JOIN, opt);
  if (failure !== null) {
    emit({ event: 'error', error: `${failure} (${joined} of ${opt.connections} joined)`, joined });
    process.exit(1);
  }
  const hb = startHeartbeats(conns, opt.heartbeatInterval * 1000);
  emit({ event: 'ready', connections: joined, connect_s: (Date.now() - t0) / 1000 });

  const finish = () => {
    clearInterval(hb);
    let closed = 0;
    const notes = [];
    for (const c of conns) {
      if (c.closed) closed++;
      for (const n of c.notes) if (notes.length < 5) notes.push(n);
    }
    emit({ event: 'done', connections: joined, closed_by_server: closed, notes });
    process.exit(0);
  };
  process.stdin.on('end', finish);
  process.stdin.on('close', finish);
  process.stdin.resume();
  process.on('SIGINT', finish);
  process.on('SIGTERM', finish);
}

main().catch((err) => {
  emit({ event: 'error', error: String((err && err.message) || err) });
  process.exit(1);
});
