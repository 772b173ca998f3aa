// Channels on a real redis-server: a replica holds Redis subscriptions only for the channels its
// clients want (and lets go after the linger); every subscriber of 1,000 channels gets each event of
// its channels once and in order through killed subscriptions and a Redis restart; idle channels
// expire; every key of a channel carries its {channel} hash tag.
import { once } from 'node:events'
import { createRequire } from 'node:module'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { CHANNEL_IDLE_GRACE_MS } from '../../lib/channels.js'
import { compareIds } from '../../lib/event.js'
import { checkEveryChannel, subscriber } from '../support/channels.js'
import { build, connect, httpStatus, startRedis, waitFor, type TestApp, type TestClient, type TestRedis } from '../support/helper.js'

type Tap = Test

const require = createRequire(import.meta.url)
const keySlot = require('cluster-key-slot') as (key: string) => number

/** An ioredis client on the test's own redis-server, closed at teardown. */
function redisClient (t: Tap, redis: TestRedis): Redis {
  const client = new Redis(redis.url, { maxRetriesPerRequest: 3 })
  client.on('error', () => {})
  t.teardown(() => client.disconnect())
  return client
}

/** A replica (the plugin in a Fastify app) on the test's Redis, once it is ready to serve. */
async function replica (t: Tap, options: Parameters<typeof build>[1]): Promise<TestApp> {
  const app = await build(t, options)
  await waitFor(async () => await httpStatus(`${app.url}/readyz`) === 200, 30_000, 'the replica to be ready')
  return app
}

/** The pub/sub channels the server has subscribers for, canaries left out. */
async function liveChannels (redis: Redis): Promise<string[]> {
  const channels = await redis.call('PUBSUB', 'CHANNELS', 'fanout:*') as string[]
  return channels.filter((c) => !/^fanout:\{guest\}:canary:/.test(c)).sort()
}

async function numsub (redis: Redis, channel: string): Promise<number> {
  const reply = await redis.call('PUBSUB', 'NUMSUB', channel) as [string, number]
  return Number(reply[1])
}

/** `cmdstat_<command>` calls from INFO commandstats (0 if the command was never run). */
async function commandCalls (redis: Redis, command: string): Promise<number> {
  const info = await redis.info('commandstats')
  return Number(new RegExp(`^cmdstat_${command}:calls=(\\d+)`, 'm').exec(info)?.[1] ?? 0)
}

/** Subscriber connections by how many channels each holds (CLIENT LIST TYPE pubsub), sorted. */
async function subscriberCounts (redis: Redis): Promise<number[]> {
  const list = await redis.call('CLIENT', 'LIST', 'TYPE', 'pubsub') as string
  return list.split('\n').filter(Boolean).map((line) => Number(/ sub=(\d+)/.exec(line)?.[1])).sort((a, b) => a - b)
}

/** How many members a hub has on channels of the default namespace (`''`). */
const defaultNamespaceSubs = (app: TestApp) => app.app.fanout.snapshot().namespaces['']?.subscriptions ?? 0

t.test('a replica subscribes in Redis only to the channels its clients want, and lets go after the linger', async (t) => {
  const redis = await startRedis(t)
  const r = redisClient(t, redis)
  const A = await replica(t, { redisUrl: redis.url })
  const B = await replica(t, { redisUrl: redis.url })

  const a12 = await subscriber(t, A, ['a1', 'a2'])
  const a1 = await subscriber(t, A, ['a1']) // a second client of a1 on A: still one Redis subscription
  const b1 = await subscriber(t, B, ['b1'])
  t.same(await liveChannels(r), ['fanout:{a1}:live', 'fanout:{a2}:live', 'fanout:{b1}:live', 'fanout:{guest}:live'],
    'PUBSUB CHANNELS: the guest channel and exactly the channels some client wants')
  t.equal(await numsub(r, 'fanout:{a1}:live'), 1, 'a1: one subscriber connection (A\'s), for two clients')
  t.equal(await numsub(r, 'fanout:{a2}:live'), 1, 'a2: A\'s')
  t.equal(await numsub(r, 'fanout:{b1}:live'), 1, 'b1: B\'s')
  t.equal(await numsub(r, 'fanout:{guest}:live'), 2, 'guest: both replicas (the /guest route)')
  // A: guest, its canary, a1, a2; B: guest, its canary, b1.
  t.same(await subscriberCounts(r), [3, 4], 'one subscriber connection per replica, holding only its own channels')

  // Events reach exactly the subscribers of their channel.
  const id = await B.app.fanout.publish('a2', { type: 'chat', text: 'to a2' })
  await a12.until((c) => c.json('chat').length === 1, 10_000, 'the a2 event')
  t.match(a12.json('chat'), [{ id, channel: 'a2', text: 'to a2' }], 'published on B, delivered by A')
  t.same([...a1.json('chat'), ...b1.json('chat')], [], 'no one else got it')

  // Leave and come back within the linger: no UNSUBSCRIBE, no SUBSCRIBE.
  const a3 = await subscriber(t, A, ['a3'])
  const unsubscribes = await commandCalls(r, 'unsubscribe')
  const subscribes = await commandCalls(r, 'subscribe')
  const membersBefore = defaultNamespaceSubs(A)
  a12.socket.send(JSON.stringify({ type: 'unsubscribe', channel: 'a1' })) // one leaves a1, keeping a2
  a1.socket.close() // the other goes away
  await a12.until((c) => c.json('unsubscribed').length === 1, 10_000, 'unsubscribed')
  t.match(a12.json('unsubscribed'), [{ channel: 'a1' }])
  await waitFor(() => defaultNamespaceSubs(A) === membersBefore - 2, 10_000, 'A to see both a1 clients leave')
  const back = await subscriber(t, A, ['a1']) // a reload: a new connection, the same channel
  // a3 leaves after a1 came back: once a3's subscription is gone, a1's linger (which started
  // earlier) would have run out too, had the rejoin not cancelled it.
  a3.socket.close()
  t.ok(await waitFor(async () => await numsub(r, 'fanout:{a3}:live') === 0, 15_000, 'a3 to be unsubscribed'), 'a3 unsubscribed after its linger')
  t.equal(await commandCalls(r, 'unsubscribe'), unsubscribes + 1, 'one UNSUBSCRIBE (a3\'s); none for a1, rejoined within the linger')
  t.equal(await commandCalls(r, 'subscribe'), subscribes, 'and no SUBSCRIBE for the rejoin')
  t.equal(await numsub(r, 'fanout:{a1}:live'), 1, 'a1 still subscribed, once')
  t.equal(await numsub(r, 'fanout:{a2}:live'), 1, 'a2 too: its client stayed')
  const again = await A.app.fanout.publish('a1', { type: 'chat', text: 'still here' })
  await back.until((c) => c.json('chat').length === 1, 10_000, 'the a1 event')
  t.match(back.json('chat'), [{ id: again, channel: 'a1' }], 'the rejoined client gets a1\'s events')

  // The last clients of a1 and a2 leave: gone from Redis after the linger.
  back.socket.close()
  a12.socket.close()
  t.ok(await waitFor(async () => await numsub(r, 'fanout:{a1}:live') === 0 && await numsub(r, 'fanout:{a2}:live') === 0, 15_000, 'a1 and a2 to be unsubscribed'),
    'a1 and a2 unsubscribed once their clients left')
  t.same(await liveChannels(r), ['fanout:{b1}:live', 'fanout:{guest}:live'], 'left: the guest channel and B\'s b1')
  t.equal(await numsub(r, 'fanout:{b1}:live'), 1, 'B\'s b1 untouched')
  t.equal(A.app.fanout.snapshot().brokerStats.channelsJoined, 1, 'A holds the guest channel alone')
})

t.test('1,000 channels, 100 clients on 2 replicas: each event once and in order per channel through CLIENT KILL and a Redis restart', async (t) => {
  const redis = await startRedis(t, { aof: true })
  const A = await replica(t, { redisUrl: redis.url, canaryIntervalMs: 200 })
  const B = await replica(t, { redisUrl: redis.url, canaryIntervalMs: 200 })
  const replicas = [A, B]

  const CHANNELS = 1000
  const PER_CLIENT = 20
  const CLIENTS = 100
  // Client i is on replica i % 2; clients 2b and 2b+1 share their 20 channels, so every channel
  // has one subscriber on each replica.
  const channelsOf = (i: number) => Array.from({ length: PER_CLIENT }, (_, k) => `room:${(Math.floor(i / 2) * PER_CLIENT + k) % CHANNELS}`)
  const clients: TestClient[] = []
  for (let i = 0; i < CLIENTS; i += 10) {
    clients.push(...await Promise.all(Array.from({ length: 10 }, (_, j) => subscriber(t, replicas[(i + j) % 2], channelsOf(i + j)))))
  }
  t.equal(new Set(clients.flatMap((_, i) => channelsOf(i))).size, CHANNELS, `${CHANNELS} channels subscribed`)
  const r = redisClient(t, redis)
  t.equal((await liveChannels(r)).length, CHANNELS + 1, 'each subscribed in Redis (and guest)')

  // One publisher; a few thousand events over the channels, in rounds; faults among them.
  const EVENTS = 4000
  const ROUND = 100
  const sent = new Map<string, Array<Promise<string>>>() // per channel, in publish order
  let killed = ''
  for (let n = 0; n < EVENTS; n++) {
    const channel = `room:${(n * 7919) % CHANNELS}`
    const list = sent.get(channel) ?? []
    list.push(A.app.fanout.publish(channel, { type: 'chat', n }))
    sent.set(channel, list)
    if (n % ROUND !== ROUND - 1) continue
    const round = (n + 1) / ROUND
    if (round === 10 || round === 20) killed = await redis.cli('CLIENT', 'KILL', 'TYPE', 'pubsub')
    if (round === 10) t.equal(killed, '2', 'both replicas\' subscriber connections killed inside Redis')
    if (round === 30) {
      await redis.stop('SIGKILL')
      await sleep(200) // the outage: publishes wait in the outbox
      await redis.start() // same port, same dir, AOF
    }
    await sleep(10) // rounds spread the publishes over the faults; no condition hangs on it
  }
  const expected = new Map<string, string[]>()
  for (const [channel, list] of sent) expected.set(channel, await Promise.all(list))
  const all = [...expected.values()].flat()
  t.equal(all.length, EVENTS, 'every publish confirmed')
  t.equal(new Set(all).size, EVENTS, 'no id given twice')
  t.ok([...expected.values()].every((ids) => ids.every((id, i) => i === 0 || compareIds(id, ids[i - 1]) > 0)), 'per channel, ids grow in publish order')
  for (const [channel, ids] of expected) {
    const stream = await r.xrange(`fanout:{${channel}}:events`, '-', '+')
    if (stream.length !== ids.length || stream.some(([id], i) => id !== ids[i])) t.fail(`${channel}: the history is not exactly the confirmed events`)
  }

  // Everyone ends with every event of their channels, once and in order, or was told of a gap.
  const { exact, told } = await checkEveryChannel(t, clients, channelsOf, expected)
  // AOF with appendfsync always, and subscriptions repaired from the streams: nothing is lost, so
  // no client has reason to be told of a gap.
  t.same(told, [], 'no gap: nothing was lost')
  t.equal(exact, CLIENTS * PER_CLIENT, `every (client, channel): every event exactly once, in order (${exact})`)
  for (const replica of replicas) {
    const stats = replica.app.fanout.snapshot().brokerStats
    t.ok(stats.repairs > 0, `the replica repaired its channels after the faults (repairs ${stats.repairs})`)
  }
})

/** Every key under `pattern`, and its PTTL. */
async function ttls (redis: Redis, pattern: string): Promise<Map<string, number>> {
  const keys: string[] = []
  for await (const batch of redis.scanStream({ match: pattern, count: 1000 })) keys.push(...batch as string[])
  const pipeline = redis.pipeline()
  for (const key of keys) pipeline.pttl(key)
  const replies = await pipeline.exec() ?? []
  return new Map(keys.map((key, i) => [key, Number(replies[i][1])]))
}

const kindOf = (key: string) => /^fanout:\{[^}]+\}:(events|meta|publisher|once|live|canary|lease)/.exec(key)?.[1] ?? 'other'

t.test('idle channels cost nothing: with a history age every key expires; with 0 only publisher records do', async (t) => {
  for (const historyAgeMs of [1000, 0]) {
    await t.test(`historyAgeMs ${historyAgeMs}`, async (t) => {
      const redis = await startRedis(t)
      const r = redisClient(t, redis)
      const A = await replica(t, { redisUrl: redis.url, historyAgeMs })
      const watcher = await subscriber(t, A, ['busy:1'])
      const COUNT = 2000
      const ids = await Promise.all(Array.from({ length: COUNT }, (_, i) => A.app.fanout.publish(`idle:${i}`, { type: 'note', i })))
      t.equal(new Set(ids).size, COUNT, `${COUNT} channels, one event each`)
      const keys = await ttls(r, 'fanout:{idle:*')
      const byKind = new Map<string, number[]>()
      for (const [key, ttl] of keys) byKind.set(kindOf(key), [...byKind.get(kindOf(key)) ?? [], ttl])
      t.same([...byKind.keys()].sort(), ['events', 'meta', 'publisher'], 'each channel has its events, meta and publisher record, nothing else')
      for (const kind of byKind.keys()) t.equal(byKind.get(kind)?.length, COUNT, `${COUNT} ${kind} keys`)
      const limit = historyAgeMs + CHANNEL_IDLE_GRACE_MS
      for (const kind of ['events', 'meta']) {
        const values = byKind.get(kind) ?? []
        if (historyAgeMs > 0) t.ok(values.every((ttl) => ttl > 0 && ttl <= limit), `${kind}: every key expires, within historyAgeMs + 10 min (${Math.min(...values)}..${Math.max(...values)} ms)`)
        else t.ok(values.every((ttl) => ttl === -1), `${kind}: no expiry (kept by count alone)`)
      }
      const records = byKind.get('publisher') ?? []
      t.ok(records.every((ttl) => ttl > 0 && ttl <= (historyAgeMs > 0 ? limit : 86_400_000)), `publisher records expire (${Math.min(...records)}..${Math.max(...records)} ms)`)

      // Published to channels no one subscribes to: one stream entry each, delivered to nobody, without error.
      const lengths = await Promise.all(Array.from({ length: COUNT }, (_, i) => r.xlen(`fanout:{idle:${i}}:events`)))
      t.ok(lengths.every((n) => n === 1), 'one stream entry per channel')
      t.equal(await numsub(r, 'fanout:{idle:0}:live'), 0, 'no one subscribed in Redis')
      t.same((await liveChannels(r)).filter((c) => c.startsWith('fanout:{idle:')), [], 'no replica subscribed to them')
      const busy = await A.app.fanout.publish('busy:1', { type: 'note', i: -1 })
      await watcher.until((c) => c.json('note').length > 0, 10_000, 'the busy event')
      t.match(watcher.json('note'), [{ id: busy, channel: 'busy:1' }], 'a subscriber of another channel got only its own')
      t.equal(A.app.fanout.snapshot().channelErrors, 0, 'no channel error')
      t.equal(A.logs.find(/publish/).filter((l) => Number(l.level) >= 40).length, 0, 'no publish warning logged')
    })
  }
})

t.test('every key of a channel carries its {channel} hash tag: one slot per channel', async (t) => {
  const redis = await startRedis(t)
  const r = redisClient(t, redis)
  const API_KEY = 'test-key-0123456789abcdef'
  const A = await replica(t, { redisUrl: redis.url, publishApiKey: API_KEY })
  const names = ['room:42', 'a:b:c', 'user.alice@example.com', '0', 'ns_1-x.y', 'x'.repeat(128)]
  const watcher = await subscriber(t, A, names)
  for (const name of names) {
    await A.app.fanout.publish(name, { type: 'note' })
    const res = await fetch(`${A.url}/publish/${name}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json', 'idempotency-key': `k.${name.length}` },
      body: JSON.stringify({ type: 'note', via: 'http' })
    })
    t.equal(res.status, 202, `${name.slice(0, 20)}: HTTP publish accepted`)
  }
  const keys: string[] = []
  for await (const batch of r.scanStream({ match: 'fanout:*', count: 1000 })) keys.push(...batch as string[])
  for (const name of names) {
    const own = keys.filter((key) => key.startsWith(`fanout:{${name}}:`)).sort()
    t.same(own.map(kindOf).sort(), ['events', 'meta', 'once', 'publisher'],
      `${name.slice(0, 20)}: its events, meta, idempotency record and the replica's publisher record`)
    const slot = keySlot(name)
    t.ok(own.every((key) => keySlot(key) === slot), `${name.slice(0, 20)}: all in slot ${slot}, the slot of its name`)
  }
  const tagged = /^fanout:\{([A-Za-z0-9_.:@-]{1,128})\}:/
  t.same(keys.filter((key) => !tagged.test(key)), [], 'no key without a {channel} tag')
  t.same([...new Set(keys.map((key) => tagged.exec(key)?.[1]))].sort(), [...names].sort(), 'and no other channels (nothing was published on guest)')
  await watcher.until((c) => c.json('note').length === names.length * 2, 10_000, 'both events of each channel')
})

// Channel names are up to 128 characters, past Fastify's default maxParamLength (100), at which a
// `:channel` route parameter answers 414.
t.test('HTTP publish to a valid channel name of 100 to 128 characters', async (t) => {
  const API_KEY = 'test-key-0123456789abcdef'
  const A = await build(t, { publishApiKey: API_KEY }) // the in-memory broker: the route, not Redis, is at issue
  for (const length of [100, 101, 128]) {
    const res = await fetch(`${A.url}/publish/${'x'.repeat(length)}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'note' })
    })
    t.equal(res.status, 202, `a ${length}-character name is accepted`)
  }
})

t.test('a channel whose first placement is slow: its subscribers are answered only once it is placed, and get every event after their place', async (t) => {
  const redis = await startRedis(t)
  // The replica's own Redis user may not HMGET, the command that finds a channel's place: its
  // first placement retries, as it does while a Cluster fails over.
  await redis.cli('ACL', 'SETUSER', 'slow', 'on', '>slow-secret', '~*', '&*', '+@all', '-hmget')
  const slow = await build(t, { redisUrl: `redis://slow:slow-secret@127.0.0.1:${redis.port}` })
  const publisher = await replica(t, { redisUrl: redis.url })
  const channel = 'news:slow'
  const history: string[] = []
  for (let n = 0; n < 2; n++) history.push(await publisher.app.fanout.publish(channel, { type: 'chat', n }))

  const client = await subscriber(t, slow, [], 1000)
  client.socket.send(JSON.stringify({ type: 'subscribe', channel }))
  await waitFor(() => slow.logs.lines.some((l) => l.msg === 'could not read the history stream yet; retrying' && l.channel === channel), 10_000, 'the placement to fail')
  // The subscriber connection comes back meanwhile: a second repair of the same channel is asked for.
  const pubsubIds = async (): Promise<string[]> => (await redis.cli('CLIENT', 'LIST', 'TYPE', 'pubsub')).split('\n')
    .filter((l) => l.includes(' user=slow ')).flatMap((l) => /^id=(\d+)/.exec(l)?.[1] ?? [])
  const before = await pubsubIds()
  t.equal(before.length, 1, 'the replica has one subscriber connection')
  await redis.cli('CLIENT', 'KILL', 'TYPE', 'pubsub', 'USER', 'slow')
  await waitFor(async () => (await pubsubIds()).some((id) => !before.includes(id)), 10_000, 'the subscriber to reconnect')
  await sleep(200) // and subscribe again
  for (let n = 2; n < 5; n++) history.push(await publisher.app.fanout.publish(channel, { type: 'chat', n }))
  await sleep(200) // what this replica hears of them meanwhile, it holds

  await redis.cli('ACL', 'SETUSER', 'slow', '+hmget')
  await client.until((c) => c.json('subscribed').length > 0, 10_000, 'subscribed')
  for (let n = 5; n < 7; n++) history.push(await publisher.app.fanout.publish(channel, { type: 'chat', n }))
  const { position } = client.json('subscribed')[0] as { position: string }
  const after = history.filter((id) => compareIds(id, position) > 0)
  await client.until((c) => c.json('chat').length >= after.length, 10_000, 'the events after its place').catch(() => {})
  t.same(client.json('chat').map((e) => e.id), after, `every event after the place it was told (${position}), once and in order`)
})

t.test('a SUBSCRIBE Redis refuses is tried again: the client waiting for its channel gets it once Redis takes it', async (t) => {
  const redis = await startRedis(t)
  const channel = 'news:refused'
  // The replica's user may subscribe to the guest channel's canary, not yet to this channel.
  await redis.cli('ACL', 'SETUSER', 'narrow', 'on', '>narrow-secret', '~*', '+@all', 'resetchannels', '&fanout:{guest}:*')
  const narrow = await replica(t, { redisUrl: `redis://narrow:narrow-secret@127.0.0.1:${redis.port}` })
  const publisher = await replica(t, { redisUrl: redis.url })
  const client = await subscriber(t, narrow, [], 1000)
  client.socket.send(JSON.stringify({ type: 'subscribe', channel }))
  await waitFor(() => narrow.logs.lines.some((l) => l.msg === 'subscribing failed; retrying' && l.first === channel), 10_000, 'the SUBSCRIBE to be refused')
  t.equal(client.json('subscribed').length, 0, 'not subscribed while Redis refuses')

  await redis.cli('ACL', 'SETUSER', 'narrow', `&fanout:{${channel}}:*`)
  await client.until((c) => c.json('subscribed').length > 0, 15_000, 'subscribed once Redis takes it')
  const id = await publisher.app.fanout.publish(channel, { type: 'chat', n: 1 })
  await client.until((c) => c.json('chat').length > 0, 10_000, 'the event')
  t.same(client.json('chat').map((e) => e.id), [id], 'then its events, live')
})

t.test('a channel Redis keeps refusing: the waiting client is told unavailable, and the replica lets the channel go', async (t) => {
  const redis = await startRedis(t)
  const channel = 'news:never'
  await redis.cli('ACL', 'SETUSER', 'narrow', 'on', '>narrow-secret', '~*', '+@all', 'resetchannels', '&fanout:{guest}:*')
  const narrow = await replica(t, { redisUrl: `redis://narrow:narrow-secret@127.0.0.1:${redis.port}` })
  const joined = (): number => Number(narrow.app.fanout.snapshot().brokerStats.channelsJoined)
  const before = joined()
  const client = await subscriber(t, narrow, [], 1000)
  client.socket.send(JSON.stringify({ type: 'subscribe', channel }))
  await client.until((c) => c.json('error').length > 0, 20_000, 'an answer')
  t.same(client.json('error').map(({ code, channel }) => ({ code, channel })), [{ code: 'unavailable', channel }], 'told: unavailable, try again')
  t.equal(client.json('subscribed').length, 0, 'not subscribed')
  t.equal(joined(), before + 1, 'the replica still wants the channel right after')
  await waitFor(() => joined() === before, 10_000, 'the replica to let the channel go')
})

t.test('a reconnect while Redis refuses one channel: that channel is not told subscribed, the others are', async (t) => {
  const redis = await startRedis(t)
  const refused = 'news:refused'
  const allowed = 'news:allowed'
  await redis.cli('ACL', 'SETUSER', 'narrow', 'on', '>narrow-secret', '~*', '+@all', 'resetchannels', '&fanout:{guest}:*', `&fanout:{${allowed}}:*`)
  const narrow = await replica(t, { redisUrl: `redis://narrow:narrow-secret@127.0.0.1:${redis.port}` })
  const client = await subscriber(t, narrow, [allowed], 10_000)
  client.socket.send(JSON.stringify({ type: 'subscribe', channel: refused }))
  await waitFor(() => narrow.logs.lines.some((l) => l.msg === 'subscribing failed; retrying' && l.first === refused), 10_000, 'the SUBSCRIBE to be refused')
  // The subscriber connection comes back: one SUBSCRIBE for every channel wanted, the refused one among them.
  await redis.cli('CLIENT', 'KILL', 'TYPE', 'pubsub', 'USER', 'narrow')
  await client.until((c) => c.json('error').length > 0, 20_000, 'an answer for the refused channel')
  t.same(client.json('subscribed').map((m) => m.channel), [allowed], 'only the channel Redis took was told subscribed')
  t.same(client.json('error').map(({ code, channel }) => ({ code, channel })), [{ code: 'unavailable', channel: refused }], 'the refused one: unavailable')
  const publisher = await replica(t, { redisUrl: redis.url })
  const id = await publisher.app.fanout.publish(allowed, { type: 'chat', n: 1 })
  await client.until((c) => c.json('chat').length > 0, 10_000, 'the allowed channel\'s event')
  t.same(client.json('chat').map((e) => e.id), [id], 'the allowed channel still delivers after the reconnect')
})

t.test('/guest while Redis refuses the guest channel: closed 1013 (try again later), logged', async (t) => {
  const redis = await startRedis(t)
  // The canary's channels only: the replica is ready, but the guest stream's SUBSCRIBE is refused.
  await redis.cli('ACL', 'SETUSER', 'narrow', 'on', '>narrow-secret', '~*', '+@all', 'resetchannels', '&fanout:{guest}:canary:*')
  const narrow = await replica(t, { redisUrl: `redis://narrow:narrow-secret@127.0.0.1:${redis.port}` })
  const client = await connect(t, `${narrow.ws}/guest`)
  const [code, reason] = await once(client.socket, 'close') as [number, Buffer]
  t.same({ code, reason: reason.toString() }, { code: 1013, reason: 'channel unavailable' }, 'closed: try again later')
  t.ok(narrow.logs.lines.some((l) => l.msg === 'subscribe failed: the guest channel is unavailable now'), 'logged')
})
