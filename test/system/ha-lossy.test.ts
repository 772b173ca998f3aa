// Issue 18: a lossy failover, as a managed Redis makes one. The replication link stalls (a proxy
// holds back what the primary sends), events are acknowledged and delivered live, then the primary
// dies and its replica, which never received them, is promoted behind the same address. No worker
// remembers them: the loss is found from what was delivered (or from the ids a publisher was
// given), declared once, and every client it affects is told: a live one with a `gap` after the
// last event the history kept, one that was away with `lost: true` on its resume.
import t, { type Test } from 'tap'
import { WebSocket } from 'ws'
import { createClient } from '../../client/index.js'
import { ask } from '../support/redis-topology.js'
import { connect, httpStatus, metricValue, run, startServer, tempDir, waitFor, type TestClient } from '../support/helper.js'
import { freePort } from '../support/free-port.js'
import { tcpProxy } from '../support/tcp-proxy.js'

t.setTimeout(300_000)

const KEY = 'lossy-failover-test-key'
const HOST = '127.0.0.1'

type Server = Awaited<ReturnType<typeof startServer>>

async function redisNode (t: Test, extra: string[] = []) {
  const port = await freePort()
  const dir = tempDir(t, 'fanout-lossy-')
  const proc = run(t, 'redis-server', ['--port', String(port), '--bind', HOST, '--dir', dir, '--save', '', '--appendonly', 'no', ...extra], {}, dir)
  await waitFor(async () => await ask({ host: HOST, port }, ['PING']).catch(() => '') === 'PONG', 10_000, `redis-server on ${port}`)
  return { host: HOST, port, proc }
}

async function publish (server: Server, channel: string, n: number): Promise<string> {
  const res = await fetch(`${server.url}/publish/${channel}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
    body: JSON.stringify({ type: 'news', n })
  })
  const body = await res.json() as { id?: string }
  if (res.status !== 202 || typeof body.id !== 'string') throw new Error(`publish ${n}: ${res.status} ${JSON.stringify(body)}`)
  return body.id
}

async function subscribe (t: Test, server: Server, channel: string, resume: { since?: string, epoch?: string } = {}): Promise<TestClient> {
  const client = await connect(t, `${server.ws}/stream`, { protocols: ['fanout.v1'] })
  client.socket.send(JSON.stringify({ type: 'subscribe', channel, ...resume }))
  await client.until((c) => c.json('subscribed').length > 0 || c.json('error').length > 0, 30_000, 'subscribed')
  return client
}

const news = (client: TestClient, channel: string) => client.json('news').filter((e) => e.channel === channel)

/**
 * A primary, a replica that replicates through a proxy that can stall, and the app's Redis address
 * as a proxy that a failover moves to the replica. `promote` kills the primary and moves it.
 */
async function lossyRedis (t: Test) {
  const primary = await redisNode(t)
  const link = await tcpProxy(t, primary.port)
  const replica = await redisNode(t, ['--replicaof', HOST, String(link.port)])
  await waitFor(async () => String(await ask(replica, ['INFO', 'replication']).catch(() => '')).includes('master_link_status:up'), 15_000, 'the replica to sync')
  const endpoint = await tcpProxy(t, primary.port)
  return {
    url: endpoint.url,
    primary,
    replica,
    stallReplication: () => link.stall(),
    async promote () {
      await primary.proc.kill('SIGKILL')
      t.equal(await ask(replica, ['REPLICAOF', 'NO', 'ONE']), 'OK', 'the replica promoted')
      endpoint.retarget(replica.port)
    }
  }
}

async function ready (servers: Server[]): Promise<void> {
  await waitFor(async () => (await Promise.all(servers.map((s) => httpStatus(`${s.url}/readyz`)))).every((s) => s === 200), 60_000, 'every replica ready')
}

async function lossesDeclared (servers: Server[]): Promise<number> {
  let sum = 0
  for (const server of servers) sum += Number(await metricValue(server.url, 'fanout_broker_stat{name="lossesDeclared"}'))
  return sum
}

t.test('events delivered live, then lost with the primary and the publisher: found from what was delivered', async (t) => {
  const redis = await lossyRedis(t)
  const env = { REDIS_URL: redis.url, PUBLISH_API_KEY: KEY, CANARY_INTERVAL_MS: '300' }
  const [a, b, publisher] = [await startServer(t, env), await startServer(t, env), await startServer(t, env)]
  await ready([a, b, publisher])
  const channel = 'news:lossy'
  const live = await subscribe(t, a, channel)
  const away = await subscribe(t, b, channel)

  const kept: string[] = []
  for (let n = 1; n <= 10; n++) kept.push(await publish(publisher, channel, n))
  await away.until((c) => news(c, channel).length === 10, 10_000, '10 events')
  await waitFor(async () => Number(await ask(redis.replica, ['XLEN', `fanout:{${channel}}:events`])) === 10, 10_000, 'the replica to hold the first 10')
  const { epoch } = news(away, channel)[9] as { epoch: string }
  away.socket.terminate()

  redis.stallReplication()
  const lost: string[] = []
  for (let n = 11; n <= 24; n++) lost.push(await publish(publisher, channel, n))
  await live.until((c) => news(c, channel).length === 24, 10_000, '24 events live')
  t.equal(Number(await ask(redis.replica, ['XLEN', `fanout:{${channel}}:events`])), 10, 'the replica never received the 14 acknowledged since the stall')

  // The publisher that was given their ids dies with the primary: only what was delivered is left.
  await publisher.kill('SIGKILL')
  await redis.promote()
  await ready([a, b])

  await live.until((c) => c.json('gap').length > 0, 30_000, 'a gap notice at the live client')
  t.same(live.json('gap').map(({ channel, after, reason }) => ({ channel, after, reason })),
    [{ channel, after: kept[9], reason: 'history_reset' }], 'the live client is told: events after the last one the history kept may be gone')
  t.equal(await lossesDeclared([a, b]), 1, 'the loss declared once, however many replicas found it')

  const after: string[] = []
  for (let n = 25; n <= 29; n++) after.push(await publish(b, channel, n))
  await live.until((c) => news(c, channel).length === 29, 10_000, 'the 5 events after the failover')
  t.same(news(live, channel).map((e) => e.id), [...kept, ...lost, ...after], 'the live client: every event once, in order')
  t.ok(news(live, channel).slice(24).every((e) => e.epoch !== epoch), 'the events after the loss belong to a new epoch')

  const back = await subscribe(t, b, channel, { since: kept[9], epoch })
  const [subscribed] = back.json('subscribed')
  t.equal(subscribed.lost, true, 'the client that was away resumes with lost: true (it lacks the 14 and cannot get them)')
  await back.until((c) => news(c, channel).length === 5, 10_000, 'the events after the failover')
  t.same(news(back, channel).map((e) => e.id), after, 'then every event the history holds after its place')
})

t.test('events nobody received, lost with the primary: found by the publisher that was given their ids', async (t) => {
  const redis = await lossyRedis(t)
  const env = { REDIS_URL: redis.url, PUBLISH_API_KEY: KEY, CANARY_INTERVAL_MS: '300' }
  const [publisher, other] = [await startServer(t, env), await startServer(t, env)]
  await ready([publisher, other])
  const channel = 'news:unheard'

  const kept: string[] = []
  for (let n = 1; n <= 5; n++) kept.push(await publish(publisher, channel, n))
  await waitFor(async () => Number(await ask(redis.replica, ['XLEN', `fanout:{${channel}}:events`])) === 5, 10_000, 'the replica to hold the first 5')
  redis.stallReplication()
  for (let n = 6; n <= 10; n++) await publish(publisher, channel, n)

  await redis.promote()
  await ready([publisher, other])
  // Another replica writes at once, on the history that lacks them: ids and sequence go on as if nothing was lost.
  const after = await publish(other, channel, 11)
  await waitFor(async () => await lossesDeclared([publisher, other]) === 1, 30_000, 'the publisher to find its newest event gone').catch(() => {})
  t.equal(await lossesDeclared([publisher, other]), 1, 'the publisher declared the loss')

  const client = await subscribe(t, other, channel, { since: kept[4] })
  t.equal(client.json('subscribed')[0].lost, true, 'a resume from the last event the history kept: lost: true')
  await client.until((c) => news(c, channel).length === 1, 10_000, 'the event after the failover')
  t.equal(news(client, channel)[0].id, after, 'then the event after the failover')
})

t.test('a publish whose reply was lost, written again after a lossy failover: recognised by its uid, delivered once', async (t) => {
  const redis = await lossyRedis(t)
  // The publisher's own way to Redis, where the replies get lost.
  const publisherLink = await tcpProxy(t, redis.primary.port)
  const publisher = await startServer(t, { REDIS_URL: publisherLink.url, PUBLISH_API_KEY: KEY, CANARY_INTERVAL_MS: '300' })
  const a = await startServer(t, { REDIS_URL: redis.url, CANARY_INTERVAL_MS: '300' })
  await ready([publisher, a])
  const channel = 'news:again'
  const live = await subscribe(t, a, channel)
  // A client of the library, through a link this test cuts: away while the repeat is written, then back.
  const clientLink = await tcpProxy(t, a.port)
  const library = createClient({ url: `ws://127.0.0.1:${clientLink.port}/stream`, WebSocket })
  t.teardown(() => library.close())
  const held: Array<{ id: string, uid?: string, n: number }> = []
  let placed = false
  library.subscribe<{ type: 'news', n: number }>(channel, { onEvent: (e) => held.push({ id: e.id, uid: e.uid, n: e.n }), onSubscribed: () => { placed = true } })
  await waitFor(() => placed, 10_000, 'the library client subscribed')

  for (let n = 1; n <= 5; n++) await publish(publisher, channel, n)
  await waitFor(() => held.length === 5, 10_000, 'the library client to hold 5')
  await waitFor(async () => Number(await ask(redis.replica, ['XLEN', `fanout:{${channel}}:events`])) === 5, 10_000, 'the replica to hold the first 5')

  // Event 6 runs on the primary and is delivered live; its reply never reaches the publisher.
  redis.stallReplication()
  publisherLink.stall()
  const sixth = publish(publisher, channel, 6)
  await live.until((c) => news(c, channel).length === 6, 10_000, 'event 6 live')
  await waitFor(() => held.length === 6, 10_000, 'the library client to hold event 6')
  const original = news(live, channel)[5] as { id: string, uid: string }
  t.match(original.uid, /^[\w-]{12}\.\d+\.\d+$/, `events carry the publisher's uid (${original.uid})`)
  clientLink.retarget(await freePort()) // nothing listens there: the library client is away

  await redis.promote()
  publisherLink.retarget(redis.replica.port)
  const again = await sixth
  t.not(again, original.id, `the retried publish was written again, under a new id (${again} after ${original.id})`)
  await waitFor(async () => await ask(redis.replica, ['XRANGE', `fanout:{${channel}}:events`, again, again]).then((r) => String(r).includes(original.uid)), 10_000, 'the repeat in the history, with the same uid')
  for (let n = 7; n <= 8; n++) await publish(publisher, channel, n)
  await live.until((c) => news(c, channel).length >= 8, 15_000, 'events 7 and 8')

  t.same(news(live, channel).map((e) => e.n), [1, 2, 3, 4, 5, 6, 7, 8], 'the live client: each event once, the repeat not delivered')
  t.equal(Number(await metricValue(a.url, 'fanout_broker_stat{name="repeatsDropped"}')), 1, 'the replica counted the repeat it held back')
  await live.until((c) => c.json('gap').length > 0, 30_000, 'a gap notice at the live client')
  t.same(live.json('gap').map(({ after, reason }) => ({ after, reason })), [{ after: news(live, channel)[4].id, reason: 'history_reset' }],
    'and the live client is told the history lost what followed event 5 (event 6 under its first id)')

  clientLink.retarget(a.port)
  await waitFor(() => held.length >= 8, 60_000, 'the library client back, with events 7 and 8')
  t.same(held.map((e) => e.n), [1, 2, 3, 4, 5, 6, 7, 8], 'the library client resumed past the repeat: it had event 6, under the same uid')
})
