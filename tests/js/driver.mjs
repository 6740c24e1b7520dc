// A line-oriented driver of @supabase/realtime-js for the Python tests (tests/jsclient.py).
//
// stdin: one JSON command per line. stdout: one JSON event per line, nothing else
// (console.log is sent to stderr so that library chatter cannot corrupt the stream).
//
// Every command may carry "id"; it is echoed in the command's result:
//   {"ev":"result","id":..,"value":<json>}   or   {"ev":"result","id":..,"error":"<message>"}
// Commands run as they arrive, so a slow one (an acked send) does not hold up the next;
// the synchronous part of each runs in arrival order.
//
// Commands:
//   {"op":"client","name":"c1","url":"ws://…/socket","params":{…},"options":{…}}
//       new RealtimeClient(url, {...options, params, transport: ws}). Option extras:
//       "logger": true logs every library log line as {"ev":"log",...};
//       "accessToken": "<jwt>" installs an accessToken callback returning that token
//       (change it later with {"op":"raw","client":"c1","expr":"setAccessToken('…')"});
//       "host": "<name>" sends that Host header (a tenant's, e.g. "tenantb.localhost") while
//       connecting to the URL's address, through a ws subclass as transport.
//       Socket open/close/error and heartbeat statuses become events "socket" / "heartbeat".
//   {"op":"supabase","name":"s1","url":"http://…","key":"<jwt>","options"?:{…}}
//       createClient(url, key, options) from @supabase/supabase-js (imported on first use, so
//       the other commands need only realtime-js). Its realtime client is client "s1" (same
//       socket events as "client"), and channels of "s1" are made by supabase.channel().
//       Without a global WebSocket (Node < 22) the ws package is passed as realtime.transport.
//   {"op":"channel","client":"c1","name":"ch1","topic":"room","config":{…}}
//   {"op":"on","channel":"ch1","type":"broadcast"|"presence"|"system"|"postgres_changes"|…,"filter":{…}}
//       every callback call becomes {"ev":<type>,"channel":"ch1","filter":{…},"payload":…}
//       (presence events also carry "state", the channel's presenceState() after the event)
//   {"op":"subscribe","channel":"ch1","timeout"?:ms}
//       status callbacks become {"ev":"status","channel":"ch1","status":…,"error":msg|null}
//   {"op":"send","channel":"ch1","message":{…},"opts"?:{…}}    value: "ok" | "error" | "timed out"
//   {"op":"httpSend","channel":"ch1","event":…,"payload":…,"opts"?:{…}}   value or error
//   {"op":"track","channel":"ch1","payload":{…}}   {"op":"untrack","channel":"ch1"}
//   {"op":"presenceState","channel":"ch1"}
//   {"op":"setAuth","client":"c1","token":…|null}
//   {"op":"unsubscribe","channel":"ch1"}   {"op":"removeChannel","channel":"ch1"}
//   {"op":"disconnect","client":"c1","code"?:…,"reason"?:…}   {"op":"connect","client":"c1"}
//   {"op":"raw","client"?:"c1","channel"?:"ch1","expr":"client.isConnected()"}
//       evaluates a JS expression with `client`, `channel`, `socket` (the Phoenix socket) in scope
//   {"op":"exit"}
//
// Binary values: {"binary_b64":"…"} anywhere in a command becomes an ArrayBuffer; an
// ArrayBuffer (or typed array) in an event becomes {"binary_b64":"…","class":"ArrayBuffer"}.
// Uncaught errors and unhandled rejections are reported as {"ev":"error",...}.

import readline from 'node:readline'
import { RealtimeClient } from '@supabase/realtime-js'
import WebSocket from 'ws'

console.log = (...args) => console.error(...args)
console.info = (...args) => console.error(...args)

const clients = new Map() // name -> {client, setAccessToken, channelSource}
const channels = new Map() // name -> {channel, client}

function encodeValue(value, seen = new Set()) {
  if (value === undefined) return null
  if (value === null || typeof value !== 'object') {
    return typeof value === 'function' || typeof value === 'symbol' ? String(value) : value
  }
  if (value instanceof ArrayBuffer) {
    return { binary_b64: Buffer.from(value).toString('base64'), class: 'ArrayBuffer' }
  }
  if (ArrayBuffer.isView(value)) {
    const bytes = Buffer.from(value.buffer, value.byteOffset, value.byteLength)
    return { binary_b64: bytes.toString('base64'), class: value.constructor.name }
  }
  if (value instanceof Error) {
    return { error: value.message, name: value.name }
  }
  if (seen.has(value)) return '[circular]'
  seen.add(value)
  let out
  if (Array.isArray(value)) {
    out = value.map((v) => encodeValue(v, seen))
  } else {
    out = {}
    for (const [k, v] of Object.entries(value)) {
      if (typeof v !== 'function') out[k] = encodeValue(v, seen)
    }
  }
  seen.delete(value)
  return out
}

function decodeValue(value) {
  if (value === null || typeof value !== 'object') return value
  if (Array.isArray(value)) return value.map(decodeValue)
  if (typeof value.binary_b64 === 'string' && Object.keys(value).length === 1) {
    const buf = Buffer.from(value.binary_b64, 'base64')
    return buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength)
  }
  const out = {}
  for (const [k, v] of Object.entries(value)) out[k] = decodeValue(v)
  return out
}

function emit(event) {
  process.stdout.write(JSON.stringify(encodeValue(event)) + '\n')
}

function errorMessage(err) {
  if (err instanceof Error) return err.message
  if (err && typeof err === 'object' && 'message' in err) return String(err.message)
  return err == null ? null : String(err)
}

function getClient(name) {
  const entry = clients.get(name)
  if (!entry) throw new Error(`no client named ${JSON.stringify(name)}`)
  return entry.client
}

function getChannel(name) {
  const entry = channels.get(name)
  if (!entry) throw new Error(`no channel named ${JSON.stringify(name)}`)
  return entry.channel
}

// The ws package takes request headers in its options; Host among them reaches a tenant by
// name without a DNS entry for it.
function transportFor(host) {
  if (host === undefined) return WebSocket
  return class extends WebSocket {
    constructor(address, protocols, options) {
      super(address, protocols, { ...(options ?? {}), headers: { ...(options?.headers ?? {}), host } })
    }
  }
}

function makeClient(cmd) {
  const name = cmd.name
  if (clients.has(name)) throw new Error(`client ${name} already exists`)
  const { logger, accessToken, host, ...options } = decodeValue(cmd.options ?? {})
  let currentToken = accessToken
  const clientOptions = {
    ...options,
    params: decodeValue(cmd.params ?? {}),
    transport: transportFor(host),
    heartbeatCallback: (status, latency) =>
      emit({ ev: 'heartbeat', client: name, status, latency: latency ?? null }),
  }
  if (logger) {
    clientOptions.logger = (kind, msg, data) => emit({ ev: 'log', client: name, kind, msg, data })
  }
  if (accessToken !== undefined) {
    clientOptions.accessToken = async () => currentToken
  }
  const client = new RealtimeClient(cmd.url, clientOptions)
  register(name, client, client, (token) => {
    currentToken = token
  })
  return null
}

async function makeSupabase(cmd) {
  const name = cmd.name
  if (clients.has(name)) throw new Error(`client ${name} already exists`)
  const { createClient } = await import('@supabase/supabase-js')
  const options = decodeValue(cmd.options ?? {})
  if (typeof globalThis.WebSocket === 'undefined') {
    options.realtime = { transport: WebSocket, ...options.realtime }
  }
  const supabase = createClient(cmd.url, cmd.key, options)
  register(name, supabase.realtime, supabase, undefined)
  return supabase.realtime.endpointURL()
}

// Socket events of `client` become "socket" events; channels are made by channelSource.channel().
function register(name, client, channelSource, setAccessToken) {
  client.socketAdapter.onOpen(() => emit({ ev: 'socket', client: name, state: 'open' }))
  client.socketAdapter.onClose((event) =>
    emit({
      ev: 'socket',
      client: name,
      state: 'close',
      code: event?.code ?? null,
      reason: event?.reason ?? null,
      wasClean: event?.wasClean ?? null,
    })
  )
  client.socketAdapter.onError((error) =>
    emit({ ev: 'socket', client: name, state: 'error', error: errorMessage(error) ?? 'error' })
  )
  clients.set(name, { client, setAccessToken, channelSource })
}

function makeChannel(cmd) {
  if (channels.has(cmd.name)) throw new Error(`channel ${cmd.name} already exists`)
  const client = getClient(cmd.client)
  const { channelSource } = clients.get(cmd.client)
  const channel = channelSource.channel(cmd.topic, { config: decodeValue(cmd.config ?? {}) })
  channels.set(cmd.name, { channel, client })
  return channel.topic
}

function listen(cmd) {
  const channel = getChannel(cmd.channel)
  const name = cmd.channel
  const type = cmd.type
  const filter = cmd.filter ?? {}
  channel.on(type, filter, (payload) => {
    const event = { ev: type, channel: name, filter, payload: payload ?? null }
    if (type === 'presence') event.state = channel.presenceState()
    emit(event)
  })
  return null
}

function subscribe(cmd) {
  const name = cmd.channel
  const channel = getChannel(name)
  const callback = (status, err) =>
    emit({ ev: 'status', channel: name, status, error: err ? errorMessage(err) : null })
  if (cmd.timeout !== undefined) channel.subscribe(callback, cmd.timeout)
  else channel.subscribe(callback)
  return null
}

async function raw(cmd) {
  const client = cmd.client !== undefined ? getClient(cmd.client) : undefined
  const channel = cmd.channel !== undefined ? getChannel(cmd.channel) : undefined
  const socket = client?.socketAdapter?.getSocket()
  const setAccessToken = cmd.client !== undefined ? clients.get(cmd.client).setAccessToken : undefined
  const fn = new Function(
    'client',
    'channel',
    'socket',
    'setAccessToken',
    `return (${cmd.expr})`
  )
  return await fn(client, channel, socket, setAccessToken)
}

const handlers = {
  client: makeClient,
  supabase: makeSupabase,
  channel: makeChannel,
  on: listen,
  subscribe,
  send: (cmd) => getChannel(cmd.channel).send(decodeValue(cmd.message), cmd.opts ?? {}),
  httpSend: (cmd) =>
    getChannel(cmd.channel).httpSend(cmd.event, decodeValue(cmd.payload), cmd.opts ?? {}),
  track: (cmd) => getChannel(cmd.channel).track(decodeValue(cmd.payload ?? {}), cmd.opts ?? {}),
  untrack: (cmd) => getChannel(cmd.channel).untrack(cmd.opts ?? {}),
  presenceState: (cmd) => getChannel(cmd.channel).presenceState(),
  setAuth: (cmd) => getClient(cmd.client).setAuth(cmd.token ?? null),
  unsubscribe: (cmd) =>
    cmd.timeout !== undefined
      ? getChannel(cmd.channel).unsubscribe(cmd.timeout)
      : getChannel(cmd.channel).unsubscribe(),
  removeChannel: (cmd) => {
    const entry = channels.get(cmd.channel)
    if (!entry) throw new Error(`no channel named ${JSON.stringify(cmd.channel)}`)
    return entry.client.removeChannel(entry.channel)
  },
  disconnect: (cmd) => getClient(cmd.client).disconnect(cmd.code, cmd.reason),
  connect: (cmd) => {
    getClient(cmd.client).connect()
    return null
  },
  raw,
  exit: async () => {
    for (const { client } of clients.values()) {
      try {
        await Promise.race([client.disconnect(), new Promise((r) => setTimeout(r, 500))])
      } catch {}
    }
    emit({ ev: 'result', id: null, value: 'bye' })
    process.exit(0)
  },
}

async function run(cmd) {
  const id = cmd.id ?? null
  const handler = handlers[cmd.op]
  try {
    if (!handler) throw new Error(`unknown op ${JSON.stringify(cmd.op)}`)
    const value = await handler(cmd)
    emit({ ev: 'result', id, op: cmd.op, value: value ?? null })
  } catch (err) {
    emit({ ev: 'result', id, op: cmd.op, error: errorMessage(err) ?? 'error' })
  }
}

process.on('uncaughtException', (err) =>
  emit({ ev: 'error', kind: 'uncaughtException', message: errorMessage(err), stack: err?.stack ?? null })
)
process.on('unhandledRejection', (err) =>
  emit({ ev: 'error', kind: 'unhandledRejection', message: errorMessage(err), stack: err?.stack ?? null })
)

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
lines.on('line', (line) => {
  if (!line.trim()) return
  let cmd
  try {
    cmd = JSON.parse(line)
  } catch (err) {
    emit({ ev: 'error', kind: 'badCommand', message: errorMessage(err), line })
    return
  }
  run(cmd)
})
lines.on('close', () => process.exit(0))

emit({ ev: 'ready', node: process.version })
