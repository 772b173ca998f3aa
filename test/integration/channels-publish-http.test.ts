// HTTP publishing, POST /publish/:channel: off without publishApiKey, the key checked, the channel
// and the body validated, 202 with the id and the event delivered; Idempotency-Key across two
// replicas on one redis-server (one event, one delivery, one id, sequential or concurrent); and
// per-channel order with two replicas publishing to one channel at once.
import t from 'tap'
import { build, connect, startRedis, waitFor, type TestApp, type TestClient } from '../support/helper.js'

type Tap = Parameters<typeof build>[0]
type Json = Record<string, unknown>

const KEY = 'test-publish-key_0123456789'

async function post (app: TestApp, channel: string, body: unknown, headers: Record<string, string> = { authorization: `Bearer ${KEY}` }): Promise<{ status: number, body: Json, headers: Headers }> {
  const response = await fetch(`${app.url}/publish/${channel}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body)
  })
  const text = await response.text()
  let parsed: Json = {}
  try { parsed = JSON.parse(text) } catch {}
  return { status: response.status, body: parsed, headers: response.headers }
}

async function replica (t: Tap, redisUrl: string): Promise<TestApp> {
  const app = await build(t, { redisUrl, publishApiKey: KEY })
  await waitFor(() => app.app.fanout.broker.synced, 10_000, 'the broker to reach Redis')
  return app
}

/** A subscriber of `channel` on /stream, once its subscription stands. */
async function subscriber (t: Tap, app: TestApp, channel: string): Promise<TestClient> {
  const client = await connect(t, `${app.ws}/stream?channel=${channel}`, { protocols: ['fanout.v1'] })
  await client.until((c) => c.json('subscribed').length === 1, 10_000, 'subscribed')
  return client
}

const eventsOf = (client: TestClient, channel: string): Json[] =>
  client.json().filter((m) => m.channel === channel && typeof m.epoch === 'string' && typeof m.id === 'string' && m.type !== 'subscribed')

/** Every event of a channel's history, page by page. */
async function history (app: TestApp, channel: string): Promise<Array<{ id: string, body: Json }>> {
  const replay = await app.app.fanout.history(channel, '0-0')
  const events: Array<{ id: string, body: Json }> = []
  for (let page = replay.first; page.length > 0; page = await replay.next()) {
    events.push(...page.map((e) => ({ id: e.id, body: JSON.parse(e.data.toString()) as Json })))
  }
  return events
}

t.test('off without publishApiKey: 404', async (t) => {
  const app = await build(t)
  t.equal((await post(app, 'room:1', { type: 'msg' })).status, 404, 'no route')
  t.equal((await post(app, 'room:1', { type: 'msg' }, {})).status, 404, 'no route, with or without a key')
})

t.test('the key, the channel and the body are checked; 202 with the id, and the event reaches a subscriber', async (t) => {
  const app = await build(t, { publishApiKey: KEY })
  const client = await subscriber(t, app, 'room:1')

  const none = await post(app, 'room:1', { type: 'msg' }, {})
  t.equal(none.status, 401, 'no key: 401')
  t.equal(none.headers.get('www-authenticate'), 'Bearer')
  for (const authorization of [`Bearer ${KEY}x`, `Bearer ${KEY.slice(0, -1)}`, `Bearer ${'x'.repeat(KEY.length)}`, KEY, `Basic ${KEY}`, 'Bearer ']) {
    t.equal((await post(app, 'room:1', { type: 'msg' }, { authorization })).status, 401, `a wrong key (${authorization.slice(0, 12)}…): 401`)
  }
  t.equal((await post(app, 'a%20b', { type: 'msg' }, {})).status, 401, 'the key is checked before anything else')

  const bad: Array<[string, string, unknown]> = [
    ['a channel with a space', 'a%20b', { type: 'msg' }],
    ['a channel with a slash inside', 'room%2F1', { type: 'msg' }],
    ['a body without "type"', 'room:1', { text: 'hi' }],
    ['an empty "type"', 'room:1', { type: '' }],
    ['a body with "id"', 'room:1', { type: 'msg', id: '1-1' }],
    ['a body with "channel"', 'room:1', { type: 'msg', channel: 'room:2' }],
    ['a body with "epoch"', 'room:1', { type: 'msg', epoch: 'x' }],
    ['a body that is not JSON', 'room:1', '{"type":'],
    ['a body that is an array', 'room:1', [{ type: 'msg' }]]
  ]
  for (const [what, channel, body] of bad) t.equal((await post(app, channel, body)).status, 400, `${what}: 400`)
  t.equal((await post(app, 'room:1', { type: 'msg' }, { authorization: `Bearer ${KEY}`, 'idempotency-key': 'bad key!' })).status, 400, 'a malformed Idempotency-Key: 400')
  t.same(await history(app, 'room:1'), [], 'nothing refused was published')

  const answer = await post(app, 'room:1', { type: 'msg', text: 'hello' })
  t.equal(answer.status, 202)
  t.match(answer.body, { id: /^\d+-\d+$/, channel: 'room:1' })
  t.same(Object.keys(answer.body).sort(), ['channel', 'id'], '{id, channel}')
  await client.until((c) => eventsOf(c, 'room:1').length === 1, 10_000, 'the event')
  t.match(eventsOf(client, 'room:1')[0], { id: answer.body.id, channel: 'room:1', type: 'msg', text: 'hello' }, 'the subscriber got it')
  t.same((await history(app, 'room:1')).map((e) => e.id), [answer.body.id], 'one event in the history')
  t.equal(app.app.fanout.snapshot().httpPublishes, 1, 'counted')
})

t.test('a channel name of any legal length can be published on; 129 characters is a bad name (400)', async (t) => {
  const app = await build(t, { publishApiKey: KEY })
  for (const n of [100, 101, 128]) {
    const channel = `long:${'x'.repeat(n - 5)}`
    const answer = await post(app, channel, { type: 'msg' })
    t.same({ status: answer.status, channel: answer.body.channel }, { status: 202, channel }, `${n} characters: 202`)
  }
  t.equal((await post(app, 'a'.repeat(129), { type: 'msg' })).status, 400, '129 characters: 400, a bad channel name')
})

t.test('a "type" that is not a string is refused, as over the socket, not turned into one', async (t) => {
  const app = await build(t, { publishApiKey: KEY })
  for (const type of [7, true, { a: 1 }]) {
    t.equal((await post(app, 'room:1', { type, text: 'x' })).status, 400, `"type": ${JSON.stringify(type)}: 400`)
  }
  t.same((await history(app, 'room:1')).map((e) => e.body.type), [], 'nothing was published')
})

t.test('Idempotency-Key across two replicas: one id, one event, one delivery', async (t) => {
  const redis = await startRedis(t)
  const [a, b] = [await replica(t, redis.url), await replica(t, redis.url)]
  const channel = 'orders:1'
  const onA = await subscriber(t, a, channel)
  const onB = await subscriber(t, b, channel)
  const send = (app: TestApp, key: string, n: number) => post(app, channel, { type: 'order', n }, { authorization: `Bearer ${KEY}`, 'idempotency-key': key })

  const first = await send(a, 'order-1', 1)
  const again = await send(b, 'order-1', 1)
  const third = await send(a, 'order-1', 1)
  t.same([first.status, again.status, third.status], [202, 202, 202])
  t.match(first.body, { id: /^\d+-\d+$/, channel })
  t.same([again.body, third.body], [first.body, first.body], 'replica A then B then A: the same id every time')

  const together = await Promise.all([send(a, 'order-2', 2), send(b, 'order-2', 2), send(a, 'order-2', 2), send(b, 'order-2', 2)])
  t.same(together.map((r) => r.status), [202, 202, 202, 202])
  t.ok(together.every((r) => r.body.id === together[0].body.id), `sent at once to both replicas: one id (${together.map((r) => r.body.id).join(' ')})`)
  t.not(together[0].body.id, first.body.id, 'another key: another event')

  const other = await send(b, 'order-3', 3)
  t.equal(other.status, 202)
  const expected = [first.body.id, together[0].body.id, other.body.id]
  for (const [name, client] of [['on A', onA], ['on B', onB]] as const) {
    await client.until((c) => eventsOf(c, channel).some((e) => e.id === other.body.id), 10_000, `${name}: the last event`)
    t.same(eventsOf(client, channel).map((e) => e.id), expected, `${name}: exactly one delivery per key, in order`)
  }
  const stored = await history(a, channel)
  t.same(stored.map((e) => e.id), expected, 'exactly one event per key in the history')
  t.same(stored.map((e) => e.body.n), [1, 2, 3])
  t.same((await history(b, channel)).map((e) => e.id), expected, 'the same history from the other replica')
})

t.test('two replicas publishing to one channel at once: ids strictly increasing, each publisher\'s events in its order', async (t) => {
  const redis = await startRedis(t)
  const replicas = [await replica(t, redis.url), await replica(t, redis.url)]
  const channel = 'race:1'
  const watcher = await subscriber(t, replicas[0], channel)
  const N = 150
  const returned = await Promise.all(replicas.map(async (app, p) => {
    // Half not awaited one by one (all in flight at once), half one after the other, half over HTTP.
    const burst = Promise.all(Array.from({ length: N / 2 }, (_, i) => app.app.fanout.publish(channel, { type: 'msg', p, n: i })))
    const ids = await burst
    for (let i = N / 2; i < N; i++) {
      if (i % 2 === 0) ids.push(await app.app.fanout.publish(channel, { type: 'msg', p, n: i }))
      else {
        const answer = await post(app, channel, { type: 'msg', p, n: i })
        if (answer.status !== 202) throw new Error(`HTTP publish: ${answer.status}`)
        ids.push(answer.body.id as string)
      }
    }
    return ids
  }))
  const stored = await history(replicas[1], channel)
  t.equal(stored.length, 2 * N, 'every event in the history')
  const ms = (id: string) => id.split('-').map(BigInt)
  const increasing = stored.every((e, i) => {
    if (i === 0) return true
    const [m1, s1] = ms(stored[i - 1].id)
    const [m2, s2] = ms(e.id)
    return m2 > m1 || (m2 === m1 && s2 > s1)
  })
  t.ok(increasing, 'ids strictly increasing')
  for (const p of [0, 1]) {
    const mine = stored.filter((e) => e.body.p === p)
    t.same(mine.map((e) => e.body.n), [...Array(N).keys()], `publisher ${p}: its events in its order`)
    t.same(mine.map((e) => e.id), returned[p], `publisher ${p}: the ids it was answered`)
  }
  await watcher.until((c) => eventsOf(c, channel).length === 2 * N, 20_000, 'every event live')
  t.same(eventsOf(watcher, channel).map((e) => e.id), stored.map((e) => e.id), 'a subscriber got them in the history\'s order')
})
