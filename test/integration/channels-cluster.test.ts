// Channels on a real 3-primary Redis Cluster: channels spread over every shard, each replica holds
// sharded subscriptions (SSUBSCRIBE) only for channels its clients want, and a primary SIGKILLed
// mid-conversation costs no subscriber an event of its channels, nor gives it one twice.
import { createRequire } from 'node:module'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { compareIds } from '../../lib/event.js'
import { checkEveryChannel, subscriber } from '../support/channels.js'
import { build, httpStatus, waitFor, type TestApp, type TestClient } from '../support/helper.js'
import { ask, startCluster, type HostPort } from '../support/redis-topology.js'

type Tap = Test

const require = createRequire(import.meta.url)
const keySlot = require('cluster-key-slot') as (key: string) => number

async function replica (t: Tap, redisClusterNodes: string): Promise<TestApp> {
  // WAIT 1: a publish is confirmed once a replica has it, so the failover cannot take back an
  // event a publisher was told is published (what "every confirmed event" below relies on).
  const app = await build(t, { redisClusterNodes, canaryIntervalMs: 200, redisWaitReplicas: 1 })
  await waitFor(async () => await httpStatus(`${app.url}/readyz`) === 200, 60_000, 'the replica to be ready')
  return app
}

/** The primaries now, by CLUSTER SLOTS of the first live node that answers: each with its slot ranges. */
async function primaries (nodes: HostPort[]): Promise<Array<HostPort & { ranges: Array<[number, number]> }>> {
  for (const node of nodes) {
    const slots = await ask(node, ['CLUSTER', 'SLOTS'], 1000).catch(() => undefined) as Array<[number, number, [string, number]]> | undefined
    if (!Array.isArray(slots)) continue
    const byPort = new Map<number, HostPort & { ranges: Array<[number, number]> }>()
    for (const [from, to, [host, port]] of slots) {
      const primary = byPort.get(port) ?? { host, port, ranges: [] }
      primary.ranges.push([from, to])
      byPort.set(port, primary)
    }
    return [...byPort.values()].sort((a, b) => a.port - b.port)
  }
  throw new Error('no cluster node answers')
}

const owns = (primary: { ranges: Array<[number, number]> }, slot: number) => primary.ranges.some(([from, to]) => slot >= from && slot <= to)

/** Every key under `pattern` on one node (SCAN: on a Cluster node, only its own keys). */
async function scan (node: HostPort, pattern: string): Promise<string[]> {
  const keys: string[] = []
  let cursor = '0'
  do {
    const [next, batch] = await ask(node, ['SCAN', cursor, 'MATCH', pattern, 'COUNT', 1000]) as [string, string[]]
    keys.push(...batch)
    cursor = next
  } while (cursor !== '0')
  return keys
}

t.test('a primary killed mid-conversation: every subscriber of 200 channels gets each event once, in order', async (t) => {
  // Two replicas per primary: after the failover the promoted one still has a replica to WAIT for.
  const cluster = await startCluster(t, { primaries: 3, replicasPerPrimary: 2, nodeTimeoutMs: 1000 })
  const nodeList = cluster.nodes.map((n) => `${n.host}:${n.port}`).join(',')
  const A = await replica(t, nodeList)
  const B = await replica(t, nodeList)
  const replicas = [A, B]

  const CHANNELS = 200
  const PER_CLIENT = 10
  const CLIENTS = 40
  // Client i on replica i % 2; clients 2b and 2b+1 share their 10 channels: one subscriber of each
  // channel on each replica.
  const channelsOf = (i: number) => Array.from({ length: PER_CLIENT }, (_, k) => `room:${(Math.floor(i / 2) * PER_CLIENT + k) % CHANNELS}`)
  const clients: TestClient[] = []
  for (let i = 0; i < CLIENTS; i += 10) {
    clients.push(...await Promise.all(Array.from({ length: 10 }, (_, j) => subscriber(t, replicas[(i + j) % 2], channelsOf(i + j), 60_000))))
  }
  const channels = [...new Set(clients.flatMap((_, i) => channelsOf(i)))]
  t.equal(channels.length, CHANNELS, `${CHANNELS} channels subscribed`)
  const before = await primaries(cluster.nodes)
  t.equal(before.length, 3, 'three primaries')
  const perPrimary = before.map((p) => channels.filter((c) => owns(p, keySlot(c))).length)
  t.ok(perPrimary.every((n) => n > 0), `the channels spread over all three primaries (${perPrimary.join(' / ')})`)

  /** Sharded pub/sub channels on every live primary, canaries apart; the canaries' count too. */
  const shardChannels = async () => {
    const live: string[] = []
    let canaries = 0
    for (const p of await primaries(cluster.nodes)) {
      const list = await ask(p, ['PUBSUB', 'SHARDCHANNELS', 'fanout:*']) as string[]
      for (const name of list) {
        if (/^fanout:\{guest\}:canary:/.test(name)) canaries++
        else live.push(name)
      }
    }
    return { live: live.sort(), canaries }
  }
  const wanted = [...channels.map((c) => `fanout:{${c}}:live`), 'fanout:{guest}:live'].sort()
  const beforeKill = await shardChannels()
  t.same(beforeKill.live, wanted, 'PUBSUB SHARDCHANNELS over the primaries: exactly the channels some client wants, and guest')
  t.equal(beforeKill.canaries, 2, 'and each replica\'s canary')

  // One publisher, publishing continuously: the busy channel often, the others in turn. One
  // publish at a time: several in flight on different shards never confirm (see the last test).
  const BUSY = 'room:0'
  const expected = new Map<string, string[]>() // per channel, the confirmed ids in publish order
  const errors: string[] = []
  let confirmed = 0
  const run = { stop: false }
  const publishing = (async () => {
    for (let n = 0; !run.stop; n++) {
      const channel = n % 3 === 0 ? BUSY : channels[(n * 37) % CHANNELS]
      try {
        const id = await A.app.fanout.publish(channel, { type: 'chat', n })
        expected.set(channel, [...expected.get(channel) ?? [], id])
        confirmed++
      } catch (err) {
        errors.push((err as Error).message)
      }
    }
  })()
  t.teardown(() => { run.stop = true })

  await waitFor(() => confirmed >= 300, 60_000, '300 events confirmed')
  const slot = keySlot(BUSY)
  const victim = await cluster.ownerOfSlot(slot)
  await cluster.kill(victim, 'SIGKILL')
  const atKill = confirmed
  const busyAtKill = expected.get(BUSY)?.length ?? 0
  const successor = await cluster.waitForFailover(slot, victim, 60_000)
  t.not(successor.port, victim.port, `slot ${slot} (${BUSY}) failed over from ${victim.port} to ${successor.port}`)
  await waitFor(() => confirmed >= atKill + 300, 60_000, '300 more events confirmed after the kill')
  run.stop = true
  await publishing
  t.same(errors, [], 'every publish confirmed')
  t.ok([...expected.values()].every((ids) => ids.every((id, i) => i === 0 || compareIds(id, ids[i - 1]) > 0)), 'per channel, ids grow in publish order')
  const busyTotal = expected.get(BUSY)?.length ?? 0
  t.ok(busyAtKill > 50 && busyTotal - busyAtKill > 50, `the busy channel had events on both sides of the kill (${busyAtKill} + ${busyTotal - busyAtKill})`)

  // Everyone ends with every event of their channels, once and in order, or was told of a gap.
  const { exact, told } = await checkEveryChannel(t, clients, channelsOf, expected)
  // Confirmed only once a replica had them (WAIT): the promoted replica holds every one, and the
  // subscriptions moved to it repair from its streams. Nothing is lost, so no one is told of a gap.
  t.same(told, [], 'no gap: nothing was lost')
  t.equal(exact, CLIENTS * PER_CLIENT, `every (client, channel): every event exactly once, in order (${exact})`)

  for (const r of replicas) {
    const repairs = r.app.fanout.snapshot().brokerStats.repairs
    t.ok(repairs > 0, `the replica resubscribed on the new primary and repaired from the streams (repairs ${repairs})`)
  }

  // After the failover: still only wanted channels, on the primaries that are left.
  const after = await shardChannels()
  t.same(after.live, wanted, 'PUBSUB SHARDCHANNELS after the failover: exactly the wanted channels, and guest')
  t.equal(after.canaries, 2, 'and each replica\'s canary')

  // Publishes spread over every primary: each holds stream keys of its channels.
  const streams = []
  for (const p of await primaries(cluster.nodes)) streams.push((await scan(p, 'fanout:{room:*}:events')).length)
  t.equal(streams.length, 3, 'three primaries after the failover')
  t.ok(streams.every((n) => n > 0), `stream keys on every primary (${streams.join(' / ')})`)
  t.equal(streams.reduce((a, b) => a + b, 0), [...expected.values()].filter((ids) => ids.length > 0).length, 'one stream per channel published on')
})

// ioredis refuses one pipeline whose keys live on different primaries ("All keys in the pipeline
// should belong to the same slots allocation group"): the outbox sends a pipeline per primary
// (lib/redis/slot-pipelines.ts), or these publishes would be retried forever, never confirmed.
t.test('concurrent publishes on channels of different primaries are all confirmed', async (t) => {
  const cluster = await startCluster(t, { primaries: 3, replicasPerPrimary: 0 })
  const A = await build(t, { redisClusterNodes: cluster.nodes.map((n) => `${n.host}:${n.port}`).join(',') })
  await waitFor(async () => await httpStatus(`${A.url}/readyz`) === 200, 60_000, 'the replica to be ready')
  const channels = Array.from({ length: 30 }, (_, i) => `room:${i}`)
  const owners = new Set((await primaries(cluster.nodes)).flatMap((p, i) => channels.some((c) => owns(p, keySlot(c))) ? [i] : []))
  t.equal(owners.size, 3, 'the channels are on all three primaries')
  const all = Promise.allSettled(channels.map((channel) => A.app.fanout.publish(channel, { type: 'chat' })))
  const outcome = await Promise.race([all, sleep(15_000, 'not confirmed within 15 s' as const)])
  t.not(outcome, 'not confirmed within 15 s', 'Redis answered every publish')
  if (Array.isArray(outcome)) t.ok(outcome.every((r) => r.status === 'fulfilled'), 'every publish confirmed')
  const refused = A.logs.find(/redis refused a publish/).map((l) => String(l.err))
  t.same([...new Set(refused)], [], 'no publish refused')
})
