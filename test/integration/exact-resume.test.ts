// Issue 9: a replica that reaches Redis late, and `since` at its edges, against a real
// redis-server, worker and replica process.
import { once } from 'node:events'
import type { IncomingMessage } from 'node:http'
import t, { type Test } from 'tap'
import { WebSocket } from 'ws'
import {
  connect, httpStatus, startRedis, startServer, startWorker, waitFor, type Proc, type TestClient, type TestRedis
} from '../support/helper.js'

const ids = (client: TestClient) => client.events().map((e) => e.id)

function confirmedIds (worker: Proc): string[] {
  return worker.logs().filter((l) => l.msg === 'published').map((l) => String(l.id))
}

function worker (t: Test, redis: TestRedis, count: number, delay = ['0', '3']) {
  return startWorker(t, { REDIS_URL: redis.url, GUEST_COUNT: String(count), GUEST_MIN_DELAY_MS: delay[0], GUEST_MAX_DELAY_MS: delay[1], LOG_LEVEL: 'debug' })
}

t.test('a replica that reaches Redis late refuses clients until it has a place in the stream, then misses nothing', async (t) => {
  const redis = await startRedis(t)
  await redis.stop()
  const server = await startServer(t, { REDIS_URL: redis.url, CANARY_INTERVAL_MS: '200' })
  t.equal(await httpStatus(`${server.url}/readyz`), 503, 'not ready while Redis is unreachable')
  const early = new WebSocket(`${server.ws}/guest`)
  early.on('error', () => {})
  t.teardown(() => early.terminate())
  const [, refusal] = await once(early, 'unexpected-response') as [unknown, IncomingMessage]
  t.equal(refusal.statusCode, 503, 'a client is refused with 503 rather than promised events it would miss')
  t.equal(refusal.headers['retry-after'], '2', 'with Retry-After')

  await redis.start()
  const publisher = worker(t, redis, 300, ['5', '15'])
  // Admitted as soon as the replica is placed; from then on every event must come.
  const client = await waitFor(() => connect(t, `${server.ws}/guest`, { protocols: ['fanout.v1'] }).catch(() => undefined),
    30_000, 'the replica to admit clients') as TestClient
  const fromStart = await connect(t, `${server.ws}/guest?since=0-0`, { protocols: ['fanout.v1'] })
  t.same(await publisher.exited, { code: 0, signal: null })
  const confirmed = confirmedIds(publisher)
  await fromStart.until((c) => ids(c).length >= confirmed.length, 20_000, 'every event')
  t.same(ids(fromStart), confirmed, 'since=0-0: every event the worker published, in order')
  await client.until((c) => ids(c).at(-1) === confirmed.at(-1), 20_000, 'the last event')
  const got = ids(client)
  t.ok(got.length > 0, `the early-admitted client got ${got.length} events`)
  t.same(got, confirmed.slice(confirmed.indexOf(got[0])), 'everything from its first event on, with no gap')
})

t.test('since at its edges: 0-0, an hour ahead, more digits than a double holds, malformed', async (t) => {
  const redis = await startRedis(t)
  const server = await startServer(t, { REDIS_URL: redis.url, CANARY_INTERVAL_MS: '200' })
  await waitFor(async () => await httpStatus(`${server.url}/readyz`) === 200, 30_000, 'ready')
  const first = worker(t, redis, 20)
  t.same(await first.exited, { code: 0, signal: null })
  const before = confirmedIds(first)

  const all = await connect(t, `${server.ws}/guest?since=0-0`, { protocols: ['fanout.v1'] })
  await all.until((c) => c.json('resume').length === 1, 10_000, 'the resume')
  t.same(ids(all), before, '0-0: the whole history')
  t.match(all.json('resume')[0], { since: '0-0', replayed: 20, lost: false, clamped: false })

  const hourAhead = `${Number(before[19].split('-')[0]) + 3_600_000}-0`
  const ahead = await connect(t, `${server.ws}/guest?since=${hourAhead}`, { protocols: ['fanout.v1'] })
  const huge = await connect(t, `${server.ws}/guest?since=9999999999999999-9999999999999999`, { protocols: ['fanout.v1'] })
  const plainAhead = await connect(t, `${server.ws}/guest?since=${hourAhead}`)
  for (const c of [ahead, huge]) {
    await c.until((x) => x.json('resume').length === 1, 10_000, 'the resume')
    t.match(c.json('resume')[0], { replayed: 0, lost: false, clamped: true }, 'ahead of the history: clamped to the newest, and said so')
  }
  const second = worker(t, redis, 5)
  t.same(await second.exited, { code: 0, signal: null })
  const after = confirmedIds(second)
  for (const c of [ahead, huge, plainAhead]) {
    await c.until((x) => ids(x).length >= 5, 10_000, 'the next events')
    t.same(ids(c), after, 'the live events after the newest arrive: the client is not silenced')
  }

  t.equal((await fetch(`${server.url}/guest?since=12-x`)).status, 400, 'a malformed since: 400 before any upgrade')
  const bad = await connect(t, `${server.ws}/guest?since=1-2-3`, { open: false })
  await t.rejects(bad.opened, /unexpected response 400/)
})
