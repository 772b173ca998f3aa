// Issue 4: delivery guarantees through pub/sub drops, a Redis restart and a replica crash; drain,
// heartbeat, and resume past the history. Real redis-server, replicas (dist/server.js) and worker
// (dist/worker.js): run `npx tsc -p tsconfig.json` first.
import { once } from 'node:events'
import { connect as netConnect } from 'node:net'
import t from 'tap'
import { startCluster } from '../../cluster.js'
import {
  build, connect, httpStatus, metricValue, redisProxy, startRedis, startServer, startWorker, streamEntries, tempDir,
  waitFor, type TestClient
} from '../support/helper.js'

type Tap = Parameters<typeof startRedis>[0]

async function replica (t: Tap, redisUrl: string, env: Record<string, string> = {}) {
  const server = await startServer(t, { REDIS_URL: redisUrl, CANARY_INTERVAL_MS: '200', ...env })
  await waitFor(async () => await httpStatus(`${server.url}/readyz`) === 200, 10_000, 'the replica to be ready')
  return server
}

const eventIds = (client: TestClient) => client.events().map((e) => e.id)

/** One client as its user sees it: one socket after another, resuming with the last id it got. */
class Subscriber {
  readonly sockets: TestClient[] = []
  constructor (readonly name: string, readonly control: boolean) {}

  async connect (t: Tap, ws: string, since?: string): Promise<TestClient> {
    const url = since === undefined ? `${ws}/guest` : `${ws}/guest?since=${since}`
    const socket = await connect(t, url, this.control ? { protocols: ['fanout.v1'] } : {})
    this.sockets.push(socket)
    return socket
  }

  get current (): TestClient { return this.sockets[this.sockets.length - 1] }
  ids (): string[] { return this.sockets.flatMap(eventIds) }
}

t.test('nothing lost through killed subscribers, a Redis restart and a replica crash', async (t) => {
  const redis = await startRedis(t, { aof: true })
  const replicas = await Promise.all([0, 1, 2].map(() => replica(t, redis.url)))
  const subscribers = replicas.flatMap((_, i) => [new Subscriber(`replica ${i + 1} fanout.v1`, true), new Subscriber(`replica ${i + 1} plain`, false)])
  await Promise.all(subscribers.map((s, i) => s.connect(t, replicas[Math.floor(i / 2)].ws)))
  const COUNT = 240
  const worker = startWorker(t, { REDIS_URL: redis.url, GUEST_COUNT: String(COUNT), GUEST_MIN_DELAY_MS: '10', GUEST_MAX_DELAY_MS: '30' })
  const everyoneHas = (n: number) => waitFor(() => subscribers.every((s) => s.ids().length >= n), 20_000, `${n} events everywhere`)

  await everyoneHas(30)
  t.equal(await redis.cli('CLIENT', 'KILL', 'TYPE', 'pubsub'), '3', 'every replica\'s subscriber connection killed inside Redis')

  await everyoneHas(70)
  const lastBeforeRestart = (await redis.cli('XREVRANGE', 'fanout:{guest}:events', '+', '-', 'COUNT', '1')).split('\n')[0]
  await redis.stop('SIGKILL')
  await redis.start() // same port, same dir, AOF
  await waitFor(async () => (await Promise.all(replicas.map((r) => httpStatus(`${r.url}/readyz`)))).every((s) => s === 200), 15_000, 'replicas ready again')

  await everyoneHas(120)
  await replicas[0].kill('SIGKILL')
  const moved = subscribers.slice(0, 2)
  for (const s of moved) {
    await s.current.closed
    await s.connect(t, replicas[1].ws, s.ids()[s.ids().length - 1])
  }

  t.same(await worker.exited, { code: 0, signal: null }, 'the worker published all its events and exited 0')
  const stream = await streamEntries(redis.url)
  const ids = stream.map((e) => e.id)
  for (const s of subscribers) await waitFor(() => s.ids().length >= ids.length, 15_000, `${s.name} to catch up`)
  for (const s of subscribers) t.same(s.ids(), ids, `${s.name}: every event exactly once, in order`)

  t.equal(new Set(stream.map((e) => e.body)).size, COUNT, 'every event the worker made is in the history')
  t.same(stream.map((e) => e.seq), stream.map((_, i) => i + 1), 'seq is contiguous in id order: no event lost or reordered')
  const bodies = stream.map((e) => JSON.parse(e.body) as { ts: number })
  t.ok(bodies.every((b, i) => i === 0 || b.ts >= bodies[i - 1].ts), 'ids follow the order the worker made the events')
  t.ok(ids.indexOf(lastBeforeRestart) > 0 && ids.indexOf(lastBeforeRestart) < ids.length - 1, 'ids kept growing across the Redis restart')
  const [resume] = moved[0].current.json('resume')
  t.match(resume, { type: 'resume', lost: false }, 'the fanout.v1 client was told what it recovered')
  t.same(moved[1].current.notEvents(), [], 'the plain client got events only')
})

t.test('resume while the replica\'s subscriber lags: replayed events that then arrive live are not sent twice', async (t) => {
  const redis = await startRedis(t)
  const proxy = await redisProxy(t, redis.port)
  const server = await replica(t, proxy.url, { CANARY_INTERVAL_MS: '2000' }) // the lag stays under the canary's limit
  const live = await connect(t, `${server.ws}/guest`)
  const publish = async (count: number) => t.same(await startWorker(t, { REDIS_URL: redis.url, GUEST_COUNT: String(count), GUEST_MIN_DELAY_MS: '0', GUEST_MAX_DELAY_MS: '2' }).exited, { code: 0, signal: null })
  await publish(5)
  await live.until((c) => c.events().length === 5, 10_000, '5 events')

  const lag = proxy.holdSubscribers()
  t.equal(lag.count, 1)
  await publish(5) // in the history, not yet heard by the replica
  const since = eventIds(live)[4]
  const resumed = await connect(t, `${server.ws}/guest?since=${since}`, { protocols: ['fanout.v1'] })
  await resumed.until((c) => c.json('resume').length === 1, 10_000, 'the replay')
  t.equal(resumed.events().length, 5, 'replayed from the history')
  lag.release() // the same five now arrive live
  await live.until((c) => c.events().length === 10, 10_000, 'the held events')
  await publish(3)
  const ids = (await streamEntries(redis.url)).map((e) => e.id)
  await live.until((c) => c.events().length === 13, 10_000, '3 more')
  await resumed.until((c) => c.events().length >= 8, 10_000, 'the live events')
  t.same(eventIds(live), ids)
  t.same(eventIds(resumed), ids.slice(5), 'the resumed client: each event once')
})

t.test('SIGTERM: clients closed with 1012, spread over DRAIN_MS, then exit 0', async (t) => {
  const redis = await startRedis(t)
  const DRAIN_MS = 2000
  const server = await replica(t, redis.url, { DRAIN_MS: String(DRAIN_MS) })
  const clients = await Promise.all(Array.from({ length: 8 }, (_, i) => connect(t, `${server.ws}/guest`, i % 2 === 0 ? { protocols: ['fanout.v1'] } : {})))
  const closes = clients.map((c) => c.closed.then((close) => ({ ...close, at: Date.now() })))
  const late = netConnect(server.port, '127.0.0.1') // connected now, its handshake sent during the drain
  t.teardown(() => late.destroy())
  await once(late, 'connect')
  const exited = server.kill('SIGTERM')
  await Promise.race(closes)
  const newcomer = await connect(t, `${server.ws}/guest`, { open: false })
  await t.rejects(newcomer.opened, /ECONNREFUSED/, 'draining: new connections are refused, so a load balancer fails over')
  let answer = ''
  late.on('data', (data: Buffer) => { answer += data.toString() })
  late.write(handshake(server.port))
  const closedFirst = await Promise.race([once(late, 'close').then(() => true), exited.then(() => false)])
  t.match(answer, /^HTTP\/1\.1 503 /, 'a handshake already on its way gets 503…')
  t.ok(closedFirst, '…and the replica closes its socket (not just its own exit)')
  const closed = await Promise.all(closes)
  t.same(closed.map((c) => c.code), Array(8).fill(1012), 'every client: 1012 service restart')
  const times = closed.map((c) => c.at)
  t.ok(Math.max(...times) - Math.min(...times) >= DRAIN_MS / 2, `closes spread over the window (${Math.max(...times) - Math.min(...times)} ms)`)
  // close-with-grace exits 1 at its hard stop (DRAIN_MS + 5 s): 0 means the drain finished first.
  t.same(await exited, { code: 0, signal: null }, 'exit 0, inside DRAIN_MS + 5 s, the server\'s own hard stop')
  t.notMatch(server.output(), /killed by timeout/)
  t.ok(server.logs().some((l) => l.msg === 'broker state changed' && l.state === 'closed'), 'Redis closed before exit')
})

function handshake (port: number): string {
  return `GET /guest HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n'
}

t.test('rolling restart behind nginx: a drained replica\'s clients resume through nginx, nothing lost', async (t) => {
  const redis = await startRedis(t, { aof: true })
  const output: string[] = []
  const cluster = await startCluster({
    port: 0,
    host: '127.0.0.1',
    redisUrl: redis.url,
    env: {
      ...process.env,
      GUEST_COUNT: '150',
      GUEST_MIN_DELAY_MS: '10',
      GUEST_MAX_DELAY_MS: '30',
      DRAIN_MS: '1000',
      CANARY_INTERVAL_MS: '200',
      UPLOAD_DIR: tempDir(t, 'fanout-uploads-'),
      UPLOAD_MIN_FREE_BYTES: '0',
      METRICS_INTERVAL_MS: '0',
      LOG_LEVEL: 'warn'
    },
    log: (line) => output.push(line)
  })
  t.teardown(() => cluster.stop())
  const ws = cluster.url.replace('http', 'ws')
  const subscribers: Subscriber[] = []
  for (let i = 0; i < 6; i++) {
    const s = new Subscriber(`client ${i + 1}`, i % 2 === 1)
    await s.connect(t, ws, '0-0') // the whole history, then live
    subscribers.push(s)
  }
  await waitFor(() => subscribers.every((s) => s.ids().length >= 30), 20_000, '30 events everywhere')

  const [draining] = cluster.replicas
  const codes: number[] = []
  const reconnects: Array<Promise<unknown>> = []
  let watching = true
  t.teardown(() => { watching = false }) // runs before cluster.stop(): no reconnecting then
  for (const s of subscribers) {
    s.current.closed.then(({ code }) => {
      if (!watching) return
      codes.push(code)
      reconnects.push(s.connect(t, ws, s.ids()[s.ids().length - 1]))
    }, () => {})
  }
  draining.process.kill('SIGTERM')
  const [exitCode] = await once(draining.process, 'exit')
  t.equal(exitCode, 0, 'the drained replica exited 0')
  t.same(codes, [1012, 1012], 'its two clients were closed with 1012, through nginx')
  const reconnected = await Promise.allSettled(reconnects)
  t.same(reconnected.map((r) => r.status), ['fulfilled', 'fulfilled'], 'each reconnect opened at once: nginx failed over from the draining replica')

  await waitFor(() => output.some((l) => /^worker +\| exited \(code 0\)/.test(l)), 30_000, 'the worker to finish')
  const ids = (await streamEntries(redis.url)).map((e) => e.id)
  t.equal(ids.length, 150)
  for (const s of subscribers) await waitFor(() => s.ids().length >= ids.length, 10_000, `${s.name} to catch up`)
  for (const s of subscribers) t.same(s.ids(), ids, `${s.name}: every event exactly once, in order`)
})

/** A peer that completes the WebSocket handshake and then never answers anything. */
async function silentPeer (port: number) {
  const socket = netConnect(port, '127.0.0.1')
  let received = Buffer.alloc(0)
  socket.on('data', (data: Buffer) => { received = Buffer.concat([received, data]) })
  socket.on('error', () => {})
  const closed = new Promise<number>((resolve) => socket.once('close', () => resolve(Date.now())))
  const sentAt = Date.now() // before the server could have counted this client
  socket.write(handshake(port))
  await waitFor(() => received.includes('\r\n\r\n'), 5000, 'the handshake answer')
  const head = received.subarray(0, received.indexOf('\r\n\r\n')).toString()
  return { socket, head, sentAt, closed, frames: () => received.subarray(head.length + 4) }
}

t.test('heartbeat: a peer that stops answering pings is terminated and counted', async (t) => {
  const HEARTBEAT_MS = 300
  const { url, port, ws } = await build(t, { heartbeatMs: HEARTBEAT_MS })
  const healthy = await connect(t, `${ws}/guest`)
  const peer = await silentPeer(port)
  t.teardown(() => peer.socket.destroy())
  t.match(peer.head, /^HTTP\/1\.1 101 /, 'the silent peer is a WebSocket client')
  const closedAt = await peer.closed
  t.ok(closedAt - peer.sentAt >= HEARTBEAT_MS, 'not before it had a ping to answer')
  t.equal(peer.frames()[0], 0x89, 'the server pinged it (a ping frame)')
  t.equal(await metricValue(url, 'fanout_heartbeat_timeouts_total'), 1, 'counted in /metrics')
  t.equal(await metricValue(url, 'fanout_connections'), 1, 'the client that answers stays')
  t.equal(healthy.socket.readyState, healthy.socket.OPEN)
})

t.test('since older than the history: what is held, then live; fanout.v1 is told lost: true', async (t) => {
  const redis = await startRedis(t)
  const server = await replica(t, redis.url)
  const live = await connect(t, `${server.ws}/guest`)
  const history = { REDIS_URL: redis.url, HISTORY_SIZE: '20', GUEST_MIN_DELAY_MS: '0', GUEST_MAX_DELAY_MS: '2' }
  t.same(await startWorker(t, { ...history, GUEST_COUNT: '300' }).exited, { code: 0, signal: null })
  await live.until((c) => c.events().length === 300, 10_000, '300 events')
  const since = eventIds(live)[0]
  const held = (await streamEntries(redis.url)).map((e) => e.id)
  t.ok(held.length < 300 && !held.includes(since), `the history (${held.length} events) no longer has ${since}`)

  const control = await connect(t, `${server.ws}/guest?since=${since}`, { protocols: ['fanout.v1'] })
  const plain = await connect(t, `${server.ws}/guest?since=${since}`)
  for (const c of [control, plain]) await c.until((c) => c.events().length >= held.length, 10_000, 'the replay')
  t.match(control.json('resume'), [{ type: 'resume', since, replayed: held.length, lost: true }], 'fanout.v1: resume says events were lost')

  t.same(await startWorker(t, { ...history, GUEST_COUNT: '5' }).exited, { code: 0, signal: null })
  await live.until((c) => c.events().length === 305, 10_000, '5 more')
  const expected = [...held, ...eventIds(live).slice(300)]
  for (const c of [control, plain]) await c.until((c) => c.events().length >= expected.length, 10_000, 'the live events')
  t.same(eventIds(control), expected, 'fanout.v1: what the history held, then live, once each')
  t.same(eventIds(plain), expected, 'plain: the same events')
  t.same(plain.notEvents(), [], 'plain: no control message, it just continues')
})
