// A forked process of the channels scenario (bench/channels.ts), by BENCH_ROLE:
// - `client`: holds many WebSocket clients of one system, each subscribed to a few channels, counts
//   the events they receive and their publish-to-receipt latency (as bench/client.ts does);
// - `publisher`: publishes a given sequence of channels at a fixed rate, each system its own way.
import { mkdirSync, writeFileSync } from 'node:fs'
import { Agent, request as httpRequest } from 'node:http'
import { Session } from 'node:inspector/promises'
import { join } from 'node:path'
import { Emitter } from '@socket.io/redis-emitter'
import { createShardedAdapter } from '@socket.io/redis-adapter'
import { Redis } from 'ioredis'
import { Server } from 'socket.io'
import { WebSocket } from 'ws'
import { fanoutPublisher, histogram, nowMs, record, serve, sleep } from './common.js'
import { eventBody, FANOUT_PREFIX } from './systems.js'

/** The systems of the channels scenario (bench/channels.ts CHANNEL_SYSTEMS). */
type System = 'fanout' | 'fanout-cluster' | 'floor' | 'socketio' | 'socketio-sharded' | 'nchan'
const isSocketIo = (system: System): boolean => system === 'socketio' || system === 'socketio-sharded'

// ---------------------------------------------------------------------------------------------
// Clients

const TS_FIELD = Buffer.from('"ts":')
const SUBSCRIBED = Buffer.from('"type":"subscribed"')
const ERROR = Buffer.from('"type":"error"')
const JOINED = Buffer.from('42["joined"')

interface Client { socket: WebSocket, channels: string[], acked: number, closed: boolean }
const clients: Client[] = []
let hist = histogram()
let received = 0
let lastAt = 0
const errors = new Set<string>()

function onEvent (data: Buffer): void {
  const at = data.indexOf(TS_FIELD)
  if (at < 0) return
  const now = nowMs()
  received++
  lastAt = now
  record(hist, now - parseFloat(data.toString('latin1', at + TS_FIELD.length, at + TS_FIELD.length + 24)))
}

/** Opens one client; resolves once it is connected (fanout, Socket.IO) or subscribed at connect (Nchan). */
function open (system: System, base: string, channels: string[]): Promise<Client> {
  return new Promise((resolve, reject) => {
    const url = system === 'nchan' ? `${base}?c=${channels.join(',')}` : base
    const socket = system === 'fanout' || system === 'fanout-cluster'
      ? new WebSocket(url, 'fanout.v1', { perMessageDeflate: false, skipUTF8Validation: true })
      : new WebSocket(url, { perMessageDeflate: false, skipUTF8Validation: true })
    const client: Client = { socket, channels, acked: 0, closed: false }
    let ready = false
    const fail = (err: Error): void => { if (!ready) reject(err) }
    const joined = (): void => { ready = true; clients.push(client); resolve(client) }
    socket.once('error', fail)
    socket.on('error', () => {})
    socket.once('unexpected-response', (_req, res) => fail(new Error(`HTTP ${res.statusCode}`)))
    socket.once('close', () => {
      client.closed = true
      if (!ready) fail(new Error('closed during the handshake'))
    })
    if (isSocketIo(system)) {
      socket.on('message', (data: Buffer) => {
        const kind = data[0]
        if (kind === 0x34 && data[1] === 0x32) {
          if (data.indexOf(JOINED) === 0) client.acked += channels.length
          else onEvent(data)
        } else if (kind === 0x32) socket.send('3')
        else if (kind === 0x30) socket.send('40')
        else if (kind === 0x34 && data[1] === 0x30 && !ready) joined()
      })
    } else {
      socket.on('message', (data: Buffer) => {
        if (data.indexOf(SUBSCRIBED) >= 0) client.acked++
        else if (data.indexOf(ERROR) >= 0) errors.add(data.toString().slice(0, 200))
        else onEvent(data)
      })
      socket.once('open', () => {
        if (system === 'nchan') client.acked = channels.length // subscribed by its URL
        joined()
      })
    }
  })
}

async function connect (system: System, urls: string[], assigned: Array<{ index: number, channels: string[] }>, concurrency: number): Promise<Record<string, unknown>> {
  let next = 0
  const failed: number[] = []
  const why = new Set<string>()
  const worker = async (): Promise<void> => {
    while (next < assigned.length) {
      const i = next++
      try {
        await open(system, urls[i % urls.length], assigned[i].channels)
      } catch (err) {
        failed.push(assigned[i].index)
        why.add((err as Error).message)
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, assigned.length) }, worker))
  return { connected: assigned.length - failed.length, failed, errors: [...why].slice(0, 5) }
}

/** Every open client asks for its channels: `subscribe` commands (fanout.v1) or one `join` (Socket.IO). */
async function subscribe (system: System, timeoutMs: number): Promise<Record<string, unknown>> {
  for (const client of clients) {
    if (client.closed) continue
    if (isSocketIo(system)) client.socket.send(`42${JSON.stringify(['join', client.channels])}`)
    else if (system !== 'nchan') for (const channel of client.channels) client.socket.send(JSON.stringify({ type: 'subscribe', channel }))
    // Let the socket's writes go out in bounded turns, not 100,000 queued at once.
    if (clients.indexOf(client) % 500 === 499) await sleep(1)
  }
  const want = (): number => clients.reduce((sum, c) => sum + (c.closed ? 0 : c.channels.length), 0)
  const have = (): number => clients.reduce((sum, c) => sum + (c.closed ? 0 : Math.min(c.acked, c.channels.length)), 0)
  const deadline = Date.now() + timeoutMs
  while (have() < want() && Date.now() < deadline) await sleep(50)
  return { subscriptions: have(), wanted: want() }
}

// ---------------------------------------------------------------------------------------------
// Publisher

type Publish = (channel: string, body: ReturnType<typeof eventBody>) => Promise<unknown>

async function publisherFor (system: System): Promise<Publish> {
  const redisUrl = process.env.REDIS_URL ?? ''
  // The product's own publish path: the outbox, one Lua call per event, pipelined (the floor's too).
  if (system === 'fanout' || system === 'fanout-cluster' || system === 'floor') return await fanoutPublisher(redisUrl, FANOUT_PREFIX)
  if (system === 'nchan') {
    const base = process.env.BENCH_PUBLISH_URL as string
    const agent = new Agent({ keepAlive: true, maxSockets: 16 })
    return (channel, body) => new Promise((resolve, reject) => {
      const req = httpRequest(`${base}/${channel}`, { method: 'POST', agent, headers: { 'content-type': 'application/json' } }, (res) => {
        res.resume()
        res.once('end', () => (res.statusCode ?? 0) < 300 ? resolve(undefined) : reject(new Error(`Nchan publish: HTTP ${res.statusCode}`)))
      })
      req.once('error', reject)
      req.end(JSON.stringify(body))
    })
  }
  const redis = new Redis(redisUrl)
  if (system === 'socketio') {
    const emitter = new Emitter(redis)
    return async (channel, body) => emitter.to(channel).emit('ev', body)
  }
  // The redis-emitter does not speak the sharded adapter's protocol: a Socket.IO server that
  // serves no one, with the same adapter, emits to the room (one SPUBLISH to the room's channel).
  const io = new Server({ adapter: createShardedAdapter(redis, redis.duplicate()) })
  return async (channel, body) => { io.to(channel).emit('ev', body) }
}

const role = process.env.BENCH_ROLE
const system = process.env.BENCH_SYSTEM as System
// BENCH_PUBLISHER_PROFILE=DIR: a publisher records a CPU profile of itself, written on `close`.
const profileDir = role === 'publisher' ? process.env.BENCH_PUBLISHER_PROFILE : undefined
const profiler = profileDir === undefined ? undefined : new Session()
if (profiler) {
  profiler.connect()
  await profiler.post('Profiler.enable')
  await profiler.post('Profiler.start')
}
const publish = role === 'publisher' ? await publisherFor(system) : undefined
let publishFailures = 0

async function run (channels: string[], rate: number): Promise<Record<string, unknown>> {
  if (publish === undefined) throw new Error('not a publisher')
  const startedAt = nowMs()
  const pending: Array<Promise<unknown>> = []
  for (let i = 0; i < channels.length; i++) {
    const due = startedAt + (i * 1000) / rate
    const wait = due - nowMs()
    if (wait > 1) await sleep(wait)
    pending.push(publish(channels[i], eventBody(nowMs())).catch((err: Error) => { publishFailures++; errors.add(err.message) }))
  }
  await Promise.all(pending)
  return { startedAt, endedAt: nowMs(), published: channels.length - publishFailures, failed: publishFailures, errors: [...errors].slice(0, 5) }
}

serve(async (request) => {
  switch (request.op) {
    case 'connect':
      return connect(system, request.urls as string[], request.clients as Array<{ index: number, channels: string[] }>, request.concurrency as number)
    case 'subscribe':
      return subscribe(system, request.timeoutMs as number)
    case 'publish':
      publishFailures = 0
      return run(request.channels as string[], request.rate as number)
    case 'reset':
      hist = histogram()
      received = 0
      lastAt = 0
      return {}
    case 'count':
      return { received }
    case 'stats':
      return { received, lastAt, hist, closed: clients.filter((c) => c.closed).length, errors: [...errors].slice(0, 5) }
    case 'close':
      if (profiler && profileDir) {
        const { profile } = await profiler.post('Profiler.stop')
        mkdirSync(profileDir, { recursive: true })
        writeFileSync(join(profileDir, `${system}-publisher-${process.pid}.cpuprofile`), JSON.stringify(profile))
      }
      for (const client of clients) client.socket.terminate()
      await sleep(50)
      return {}
    default:
      throw new Error(`unknown op ${request.op}`)
  }
})
// Exit through process.exit on SIGTERM, so a publisher under --cpu-prof writes its profile.
process.once('SIGTERM', () => process.exit(0))
process.send?.({ id: 0, ready: true })
