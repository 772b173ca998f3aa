// Issue 3: Redis fan-out across replicas, with real redis-server, real replicas (dist/server.js),
// the real worker (dist/worker.js) and real nginx in front. Run `npx tsc -p tsconfig.json` first.
import { existsSync } from 'node:fs'
import { readdir, readFile } from 'node:fs/promises'
import { connect as netConnect } from 'node:net'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { startCluster } from '../../cluster.js'
import {
  connect, freePort, holds, httpStatus, metricValue, missing, redisProxy, run, startRedis, startServer, startWorker,
  streamEntries, tempDir, waitFor, type TestClient
} from '../support/helper.js'

type Tap = Parameters<typeof startRedis>[0]

const FAST = { GUEST_MIN_DELAY_MS: '0', GUEST_MAX_DELAY_MS: '5' }
const STEADY = { GUEST_MIN_DELAY_MS: '10', GUEST_MAX_DELAY_MS: '30' }

/** A replica subscribed to `redisUrl`, with a fast canary, ready to deliver. */
async function replica (t: Tap, redisUrl: string, env: Record<string, string> = {}) {
  const server = await startServer(t, { REDIS_URL: redisUrl, CANARY_INTERVAL_MS: '200', ...env })
  await waitFor(async () => await httpStatus(`${server.url}/readyz`) === 200, 10_000, 'the replica to be ready')
  return server
}

const ids = (client: TestClient) => client.events().map((e) => e.id)

t.test('three replicas, one worker: every client of every replica gets every event once, in order', async (t) => {
  const redis = await startRedis(t)
  const replicas = await Promise.all([1, 2, 3].map(() => replica(t, redis.url)))
  const clients = await Promise.all(replicas.flatMap((r) => [
    connect(t, `${r.ws}/guest`),
    connect(t, `${r.ws}/guest`, { protocols: ['fanout.v1'] })
  ]))
  const worker = startWorker(t, { REDIS_URL: redis.url, GUEST_COUNT: '50', ...FAST })
  t.same(await worker.exited, { code: 0, signal: null }, 'the worker exits 0 after GUEST_COUNT events')
  const stream = (await streamEntries(redis.url)).map((e) => e.id)
  t.equal(stream.length, 50, 'the worker published exactly GUEST_COUNT events')
  for (const client of clients) await client.until((c) => c.events().length >= 50, 10_000, '50 events')
  for (const [i, client] of clients.entries()) t.same(ids(client), stream, `client ${i} has the stream's events, once each, in order`)
  for (const r of replicas) t.equal(await metricValue(r.url, 'fanout_events_in_total'), 50, 'each replica took each event once')
  t.same(clients.flatMap((c) => c.notEvents()), [], 'no control message without a reason, nothing but events')
})

t.test('a replica with REDIS_URL and no worker publishes nothing (PUBLISHER is off with Redis)', async (t) => {
  const redis = await startRedis(t)
  const server = await replica(t, redis.url, FAST)
  const client = await connect(t, `${server.ws}/guest`)
  // With these delays an in-process publisher would have sent dozens of events by now.
  await sleep(1000)
  t.equal(client.events().length, 0, 'no event delivered')
  t.equal(await redis.cli('EXISTS', 'fanout:{guest}:events'), '0', 'nothing written to the history stream')
  t.equal(await httpStatus(`${server.url}/readyz`), 200, 'while the replica is ready (its canary goes round)')
})

t.test('through nginx: clients are spread over the replicas, receive every event and upload', async (t) => {
  const redis = await startRedis(t)
  const uploadDir = tempDir(t, 'fanout-uploads-')
  const output: string[] = []
  const cluster = await startCluster({
    port: 0,
    host: '127.0.0.1',
    redisUrl: redis.url,
    env: { ...process.env, ...STEADY, GUEST_COUNT: '40', UPLOAD_DIR: uploadDir, UPLOAD_MIN_FREE_BYTES: '0', CANARY_INTERVAL_MS: '200', METRICS_INTERVAL_MS: '0', LOG_LEVEL: 'warn' },
    log: (line) => output.push(line)
  })
  t.teardown(() => cluster.stop())
  t.equal(cluster.replicas.length, 3)
  const ws = cluster.url.replace('http', 'ws')
  t.equal(await httpStatus(`${cluster.url}/readyz`), 200, '/readyz answers through nginx')

  // since=0-0: the whole history first, then live, so every client can be held to the whole stream.
  const origin = { origin: cluster.url }
  const clients: TestClient[] = []
  for (let i = 0; i < 6; i++) {
    clients.push(await connect(t, `${ws}/guest?since=0-0`, { headers: origin, protocols: i % 2 === 0 ? [] : ['fanout.v1'] }))
  }
  const perReplica = await Promise.all(cluster.replicas.map((r) => metricValue(`http://127.0.0.1:${r.port}`, 'fanout_connections')))
  t.same(perReplica, [2, 2, 2], 'nginx spread the six sockets over the three replicas')

  const foreign = await connect(t, `${ws}/guest`, { headers: { origin: 'http://elsewhere.example' }, open: false })
  await t.rejects(foreign.opened, /unexpected response 403/, 'a foreign Origin is still refused: nginx passes Host through')

  const png = Buffer.concat([Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex'), Buffer.alloc(256, 9)])
  clients[1].socket.send(png)
  await clients[1].until((c) => c.json('ack').length === 1, 10_000, 'the upload ack')
  const [ack] = clients[1].json('ack')
  t.same(await readFile(join(uploadDir, String(ack.id))), png, 'the upload is on disk, byte for byte')
  t.same((await readdir(uploadDir)).filter((f) => !f.startsWith('.')), [ack.id])

  await waitFor(() => output.some((l) => /^worker +\| exited \(code 0\)/.test(l)), 20_000, 'the worker to publish GUEST_COUNT events')
  const stream = (await streamEntries(redis.url)).map((e) => e.id)
  t.equal(stream.length, 40)
  for (const client of clients) await client.until((c) => c.events().length >= 40, 10_000, '40 events')
  for (const [i, client] of clients.entries()) t.same(ids(client), stream, `client ${i} has every event once, in order`)
})

t.test('Redis down: /readyz 503; Redis back: 200, delivery resumes, the outbox arrives in order', async (t) => {
  // No AOF: Redis comes back empty, and replicas and worker must cope with that too.
  const redis = await startRedis(t)
  const server = await replica(t, redis.url)
  const client = await connect(t, `${server.ws}/guest`)
  const worker = startWorker(t, { REDIS_URL: redis.url, ...STEADY, METRICS_INTERVAL_MS: '100' })
  await client.until((c) => c.events().length >= 10, 10_000, 'events before the outage')

  // The outage starts with writes paused: the stream is then every event Redis took before it
  // (the worker keeps what it could not write); once the client has all of them, kill Redis.
  const killedAt = Date.now()
  await redis.cli('CLIENT', 'PAUSE', '10000', 'WRITE')
  const beforeOutage = (await streamEntries(redis.url)).map((e) => e.id)
  await client.until((c) => ids(c).includes(beforeOutage[beforeOutage.length - 1]), 10_000, 'what Redis took before the outage')
  await redis.stop('SIGKILL')
  await waitFor(async () => await httpStatus(`${server.url}/readyz`) === 503, 5000, '/readyz to turn 503')
  // Let the worker make events while Redis is gone: they wait in its outbox. It may also hold a
  // few made just before the pause, hence 13 for the 10 asserted below.
  await waitFor(() => worker.logs().some((l) => l.msg === 'metrics' && Number(l.outboxLength) >= 13), 10_000, 'outbox to fill')
  const restartedAt = Date.now()
  await redis.start()
  await waitFor(async () => await httpStatus(`${server.url}/readyz`) === 200, 10_000, '/readyz to turn 200 again')
  await waitFor(async () => (await streamEntries(redis.url)).length >= 30, 10_000, 'events after the restart')
  t.same(await worker.kill('SIGTERM'), { code: 0, signal: null }, 'SIGTERM stops the worker with 0')
  t.notOk(worker.logs().some((l) => l.msg === 'published GUEST_COUNT events: done'), 'the worker says it stopped, not that it finished')

  const after = (await streamEntries(redis.url)).map((e) => e.id)
  await client.until((c) => ids(c).includes(after[after.length - 1]), 10_000, 'the last event')
  const got = client.events()
  t.ok(beforeOutage.length >= 10, `events from before the outage (${beforeOutage.length})`)
  t.same(got.map((e) => e.id), [...beforeOutage, ...after], 'every event Redis took before the outage, then exactly what it holds now, once each')
  const outbox = got.filter((e) => e.ts > killedAt && e.ts < restartedAt)
  t.ok(outbox.length >= 10, `events made during the outage arrived (${outbox.length})`)
  t.ok(got.every((e, i) => i === 0 || e.ts >= got[i - 1].ts), 'in the order the worker made them')
})

t.test('a subscriber connection killed inside Redis: the replica resubscribes, nothing is lost', async (t) => {
  const redis = await startRedis(t)
  const server = await replica(t, redis.url)
  const client = await connect(t, `${server.ws}/guest`)
  const worker = startWorker(t, { REDIS_URL: redis.url, GUEST_COUNT: '100', ...STEADY })
  await client.until((c) => c.events().length >= 20, 10_000, 'events before the kill')
  const subscribers = async () => (await redis.cli('CLIENT', 'LIST', 'TYPE', 'pubsub')).split('\n').filter(Boolean).map((l) => /id=(\d+)/.exec(l)?.[1])
  const [before] = await subscribers()
  t.equal(await redis.cli('CLIENT', 'KILL', 'TYPE', 'pubsub'), '1', 'the one subscriber was killed')
  t.ok(await holds(async () => { const now = await subscribers(); return now.length === 1 && now[0] !== before }), 'subscribed again on a new connection')
  t.same(await worker.exited, { code: 0, signal: null })
  const stream = (await streamEntries(redis.url)).map((e) => e.id)
  t.equal(stream.length, 100)
  await client.until((c) => c.events().length >= 100, 10_000, 'all 100 events')
  t.same(ids(client), stream, 'every event once, in order')
})

t.test('a deaf subscriber (connected, silent): the canary catches it, the replica resubscribes and repairs', async (t) => {
  const redis = await startRedis(t)
  // The proxy holds back what Redis sends the subscriber, and never lets it go: the connection
  // stays open and silent, as behind a middlebox that dropped the flow.
  const proxy = await redisProxy(t, redis.port)
  const server = await replica(t, proxy.url)
  const client = await connect(t, `${server.ws}/guest`)
  const worker = startWorker(t, { REDIS_URL: redis.url, GUEST_COUNT: '100', ...STEADY })
  await client.until((c) => c.events().length >= 20, 10_000, 'events before')
  // /readyz, asked back to back from before the subscriber goes deaf until it is ready again.
  const readiness: number[] = []
  const polling = { on: true }
  const poller = (async () => { while (polling.on) readiness.push(await httpStatus(`${server.url}/readyz`)) })()
  t.equal(proxy.holdSubscribers().count, 1, 'the replica\'s subscriber connection went deaf')
  await waitFor(() => server.logs().some((l) => l.msg === 'canary did not come back: reconnecting the subscriber'), 10_000, 'the canary to notice')
  await waitFor(() => readiness.at(-1) === 200, 10_000, 'ready again')
  polling.on = false
  await poller
  t.ok(readiness.includes(503), `readiness dropped meanwhile: /readyz answered 503 (${readiness.filter((s) => s === 503).length} of ${readiness.length} times)`)
  t.same(await worker.exited, { code: 0, signal: null })
  const stream = (await streamEntries(redis.url)).map((e) => e.id)
  await client.until((c) => c.events().length >= 100, 10_000, 'all 100 events')
  t.same(ids(client), stream, 'what went unheard was repaired from the stream: every event once, in order')
  t.ok(Number(await metricValue(server.url, 'fanout_broker_stat{name="resubscribes"}')) >= 1, 'counted in /metrics')
})

t.test('worker: REDIS_URL missing → a clear message and exit 1; SIGTERM → exit 0', async (t) => {
  const lonely = startWorker(t, { REDIS_URL: undefined })
  t.same(await lonely.exited, { code: 1, signal: null })
  t.match(lonely.output(), /REDIS_URL \(or REDIS_SENTINELS, or REDIS_CLUSTER_NODES\) is not set/)
  t.notMatch(lonely.output(), /\n\s+at /, 'no stack trace')

  const redis = await startRedis(t)
  const worker = startWorker(t, { REDIS_URL: redis.url, ...STEADY })
  await waitFor(async () => (await streamEntries(redis.url)).length >= 5, 10_000, 'some events')
  t.same(await worker.kill('SIGTERM'), { code: 0, signal: null })
})

t.test('docker-compose.yml is valid and has the scaled topology', { skip: missing('docker-compose') }, async (t) => {
  const quiet = run(t, 'docker-compose', ['-f', 'docker-compose.yml', 'config', '-q'])
  t.same(await quiet.exited, { code: 0, signal: null }, quiet.output())
  const services = run(t, 'docker-compose', ['-f', 'docker-compose.yml', 'config', '--services'])
  await services.exited
  t.same(services.output().trim().split('\n').sort(), ['app', 'lb', 'redis', 'worker'])
  const full = run(t, 'docker-compose', ['-f', 'docker-compose.yml', 'config'])
  await full.exited
  t.match(full.output(), /replicas: 3/)
  t.match(full.output(), /condition: service_healthy/)
})

t.test('npm run cluster: Redis, worker, replicas and nginx; a client receives through nginx; SIGTERM stops it all', async (t) => {
  const port = await freePort()
  const cluster = run(t, process.execPath, ['dist/cluster.js'], {
    ...STEADY,
    PORT: String(port),
    HOST: '127.0.0.1',
    CLUSTER_REPLICAS: '2',
    REDIS_URL: undefined,
    UPLOAD_DIR: tempDir(t, 'fanout-uploads-'),
    LOG_LEVEL: 'warn',
    METRICS_INTERVAL_MS: '0'
  })
  t.teardown(() => cluster.kill('SIGTERM'))
  await waitFor(() => cluster.output().includes('| ready:') || cluster.child.exitCode !== null, 30_000, 'the cluster to start')
  const replicas = [.../replicas on (.*)/.exec(cluster.output())?.[1].matchAll(/:(\d+)/g) ?? []].map((m) => Number(m[1]))
  t.equal(replicas.length, 2, 'CLUSTER_REPLICAS replicas')
  const redisPort = Number(/private Redis at redis:\/\/127\.0\.0\.1:(\d+)/.exec(cluster.output())?.[1])
  const dir = /data in (\S+)/.exec(cluster.output())?.[1]
  t.ok(dir !== undefined && existsSync(dir), 'a private Redis in a temp dir')
  const client = await connect(t, `ws://127.0.0.1:${port}/guest`)
  await client.until((c) => c.events().length >= 5, 10_000, 'events through nginx')
  t.equal(await httpStatus(`http://127.0.0.1:${port}/readyz`), 200)

  t.same(await cluster.kill('SIGTERM'), { code: 0, signal: null }, 'SIGTERM: exit 0')
  t.equal((await client.closed).code, 1012, 'clients were told: service restart')
  t.notOk(existsSync(String(dir)), 'temp dir removed')
  const accepts = (p: number) => new Promise<boolean>((resolve) => {
    const socket = netConnect(p, '127.0.0.1').once('connect', () => { socket.destroy(); resolve(true) }).once('error', () => resolve(false))
  })
  for (const p of [port, ...replicas, redisPort]) t.notOk(await accepts(p), `nothing listens on ${p} any more`)
})
