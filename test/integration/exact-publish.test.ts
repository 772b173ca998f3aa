// Issue 9: exactly-once publishing, at the level of the publish script and the broker's outbox.
// A real redis-server; a TCP proxy cuts the connection the moment Redis's replies come back.
import { once } from 'node:events'
import { connect as netConnect, createServer, type Socket } from 'node:net'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { compareIds } from '../../lib/event.js'
import { RedisBroker } from '../../lib/redis/broker.js'
import { PUBLISH_SCRIPT, streamKeys } from '../../lib/redis/stream.js'
import { startRedis, streamEntries, waitFor } from '../support/helper.js'

const keys = streamKeys('fanout:', 'guest')

type ScriptRedis = Redis & { fanoutPublish (...args: Array<string | number>): Promise<string> }

async function scriptClient (t: Test, url: string): Promise<ScriptRedis> {
  const redis = new Redis(url) as ScriptRedis
  t.teardown(() => redis.disconnect())
  redis.defineCommand('fanoutPublish', { numberOfKeys: 5, lua: PUBLISH_SCRIPT })
  return redis
}

/** One call of the publish script, as the outbox makes it. */
function publish (redis: ScriptRedis, counter: number, options: { floor?: string, epoch?: string, token?: string, publisher?: string, oldestPending?: number } = {}) {
  return redis.fanoutPublish(keys.events, keys.meta, keys.publisher(options.publisher ?? 'p1'), keys.lease, keys.idempotent(''),
    JSON.stringify({ type: 'guest', n: counter }), 1000, keys.channel, 'PUBLISH', counter,
    options.floor ?? '0-0', options.epoch ?? 'epochA', options.token ?? '', 5000, options.oldestPending ?? 1, 'guest', 0, '')
}

t.test('the publish script: a counter seen again returns its id; a skipped counter is refused', async (t) => {
  const redis = await startRedis(t)
  const client = await scriptClient(t, redis.url)
  const first = await publish(client, 1)
  const second = await publish(client, 2)
  t.equal(await publish(client, 1), first, 'a retry of counter 1 returns the id it got')
  t.equal(await publish(client, 2), second, 'and of counter 2')
  await t.rejects(publish(client, 4), /^ORDER/, 'counter 4 while 3 is pending: refused, nothing written')
  t.equal((await streamEntries(redis.url)).length, 2, 'two events in the history, not five')
  t.ok(await publish(client, 4, { oldestPending: 4 }), 'counter 4 once the publisher dropped 3: accepted')
  t.not(await publish(client, 1, { publisher: 'p2' }), first, 'another publisher\'s counter 1 is its own event')
  t.same((await streamEntries(redis.url)).map((e) => e.seq), [1, 2, 3, 4], 'seq contiguous')
})

t.test('the publish script: ids never go back or repeat when the keys vanish within a millisecond', async (t) => {
  const redis = await startRedis(t)
  const client = await scriptClient(t, redis.url)
  const ids: string[] = []
  for (let i = 1; i <= 300; i++) {
    const id = await publish(client, i, { floor: ids.at(-1), epoch: `e${i}`, oldestPending: i }) // one at a time: each the oldest pending
    ids.push(id)
    if (i % 3 === 0) await client.del(keys.events, keys.meta, keys.publisher('p1'))
  }
  t.ok(ids.every((id, i) => i === 0 || compareIds(id, ids[i - 1]) > 0), 'every id above the one before, across 100 resets')
  const stream = await streamEntries(redis.url)
  t.equal(stream.length, 0, 'the last reset left the history empty')
  const next = await publish(client, 301, { floor: ids.at(-1), epoch: 'eLast', oldestPending: 301 })
  t.ok(compareIds(next, ids[299]) > 0, 'the next id is still above')
  t.same((await streamEntries(redis.url)).map((e) => [e.seq, e.epoch]), [[1, 'eLast']], 'a reset history starts a new epoch at seq 1')
})

t.test('the publish script: keys evicted between two calls of one pipelined batch never repeat an id', async (t) => {
  const redis = await startRedis(t)
  const client = await scriptClient(t, redis.url)
  for (let round = 0; round < 50; round++) {
    // As allkeys-lru may do between two commands of one pipeline: the floor both carry is stale.
    const pipeline = client.pipeline() as unknown as { fanoutPublish (...args: Array<string | number>): unknown, del (...keys: string[]): unknown, exec (): Promise<Array<[Error | null, string]>> }
    const call = (counter: number) => pipeline.fanoutPublish(keys.events, keys.meta, keys.publisher(`r${round}`), keys.lease, keys.idempotent(''),
      JSON.stringify({ type: 'guest', n: counter }), 1000, keys.channel, 'PUBLISH', counter, '0-0', `e${round}-${counter}`, '', 5000, counter, 'guest', 0, '')
    call(1)
    pipeline.del(keys.events, keys.meta, keys.publisher(`r${round}`))
    call(2)
    const [[, first], , [, second]] = await pipeline.exec()
    if (compareIds(second, first) <= 0) {
      t.fail(`round ${round}: ${second} does not follow ${first}`)
      return
    }
  }
  t.pass('50 rounds: the second id always above the first')
})

t.test('the publish script: a record evicted while an earlier counter waits: the later one waits too, none dropped as stale', async (t) => {
  const redis = await startRedis(t)
  const client = await scriptClient(t, redis.url)
  await publish(client, 1)
  // Counter 2 was refused (OOM at maxmemory, as allkeys-lru can still answer); then the record went.
  await client.del(keys.publisher('p1'))
  await t.rejects(publish(client, 3, { oldestPending: 2 }), /^ORDER/, 'counter 3 while 2 is pending and the record is gone: refused, not published ahead of it')
  const two = await publish(client, 2, { oldestPending: 2 })
  const three = await publish(client, 3, { oldestPending: 2 })
  t.ok(compareIds(three, two) > 0, 'then 2 and 3 go, in order')
  t.same((await streamEntries(redis.url)).map((e) => (JSON.parse(e.body) as { n: number }).n), [1, 2, 3], 'the history holds each once, in the order they were made')
})

t.test('the publish script: a history behind the publisher\'s floor (lost writes) starts a new epoch', async (t) => {
  const redis = await startRedis(t)
  const client = await scriptClient(t, redis.url)
  const a = await publish(client, 1, { epoch: 'old' })
  await publish(client, 2, { floor: a, epoch: 'unused' })
  const [epoch, seq] = await client.hmget(keys.meta, 'epoch', 'seq')
  t.same([epoch, seq], ['old', '2'], 'the same history goes on while it holds the floor')
  // As after a failover to a replica that had not received the newest writes: the floor is ahead.
  const floor = `${Date.now() + 60_000}-0`
  const after = await publish(client, 3, { floor, epoch: 'new' })
  t.ok(compareIds(after, floor) > 0, 'the id is above the floor')
  t.same(await client.hmget(keys.meta, 'epoch', 'seq', 'start'), ['new', '1', after], 'a new epoch, from seq 1, starting at that id')
})

t.test('the publish script: fenced by the lease token', async (t) => {
  const redis = await startRedis(t)
  const client = await scriptClient(t, redis.url)
  await client.set(keys.lease, 'token-A')
  await t.rejects(publish(client, 1, { token: 'token-B' }), /^FENCED/, 'a publisher without the lease is refused')
  await t.rejects(publish(client, 1, { token: '' }).then(() => publish(client, 2, { token: 'nope' })), /^FENCED/)
  t.ok(await publish(client, 2, { token: 'token-A' }), 'the lease holder publishes')
  t.equal((await streamEntries(redis.url)).length, 2, 'the unfenced publish and the holder\'s')
})

/** A proxy to Redis that cuts the connection once, as the replies to a pipelined batch arrive. */
async function replyCutter (t: Test, redisPort: number) {
  let armed = false
  const sockets = new Set<Socket>()
  const server = createServer((client) => {
    const upstream = netConnect(redisPort, '127.0.0.1')
    for (const s of [client, upstream]) {
      sockets.add(s)
      s.on('error', () => {}).on('close', () => { client.destroy(); upstream.destroy() })
    }
    client.pipe(upstream)
    upstream.on('data', (d: Buffer) => {
      if (armed && (d.toString('latin1').match(/\$\d+\r\n\d{13}-\d+\r\n/g)?.length ?? 0) >= 5) {
        armed = false // Redis ran the batch; its replies are lost with the connection
        client.destroy()
        upstream.destroy()
        return
      }
      client.write(d)
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => { for (const s of sockets) s.destroy(); server.close() })
  return {
    url: `redis://127.0.0.1:${(server.address() as { port: number }).port}`,
    arm: () => { armed = true },
    fired: () => !armed
  }
}

t.test('the outbox: a pipelined batch whose replies are lost is retried without a second event', async (t) => {
  const redis = await startRedis(t)
  const proxy = await replyCutter(t, redis.port)
  const warnings: string[] = []
  const broker = new RedisBroker({
    target: { url: proxy.url },
    prefix: 'fanout:',
    rules: () => ({ historySize: 1000, historyAgeMs: 0 }),
    outboxSize: 1000,
    canaryIntervalMs: 1000,
    log: (level, fields, msg) => { if (level !== 'info') warnings.push(`${msg} ${String(fields.err)}`) }
  })
  t.teardown(() => broker.close())
  await waitFor(() => broker.state === 'ready', 10_000, 'the broker to connect')
  const warm = await Promise.all(Array.from({ length: 10 }, (_, n) => broker.publish('guest', { type: 'guest', n })))
  proxy.arm()
  const ids = [...warm, ...await Promise.all(Array.from({ length: 200 }, (_, n) => broker.publish('guest', { type: 'guest', n: n + 10 })))]
  t.ok(proxy.fired(), 'the connection was cut as Redis answered a batch')
  const stream = await streamEntries(redis.url)
  t.equal(stream.length, 210, 'each event once in the history')
  t.same(stream.map((e) => (JSON.parse(e.body) as { n: number }).n), Array.from({ length: 210 }, (_, n) => n), 'in the order they were published')
  t.same(ids, stream.map((e) => e.id), 'every publish resolved to the id its event has')
  // Each new event costs the script one HGET of the record, each retry of an event Redis had
  // already run two (the record, then its id): retries happened, and none made an event.
  const hgets = Number(/cmdstat_hget:calls=(\d+)/.exec(await redis.cli('INFO', 'commandstats'))?.[1])
  t.ok(hgets - 210 > 1, `${(hgets - 210) / 2} publishes were retried after their reply was lost, answered from the record`)
  t.same(warnings.filter((w) => /refused/.test(w)), [], 'no publish was refused')
})
