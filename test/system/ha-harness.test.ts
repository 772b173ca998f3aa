// Issue 10: the Sentinel and Cluster harness, and the ioredis 5.11 behaviour the broker builds on,
// established against real redis-server processes (docs/scaling.md, "Appendix: ioredis under failover, measured", has the findings). Each test
// prints its timings (kill -> writes succeed, kill -> subscriber receives) as tap comments.
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { Redis, type Cluster } from 'ioredis'
import { backoff, createRedis, type RedisTarget } from '../../lib/redis/connection.js'
import { waitFor } from '../support/helper.js'
import { ask, since, startCluster, startSentinels, type HostPort } from '../support/redis-topology.js'

// Seven topologies, each failed over once: ~100 s alone on two cores, more beside other test files.
t.setTimeout(360_000)

type Tap = Parameters<typeof startSentinels>[0]
type Client = Redis | Cluster

// Appends to a stream, counts, and publishes, like the broker's publish script; the keys share a
// hash tag so that on a Cluster they live in one slot. ARGV[2] is PUBLISH or SPUBLISH.
const SCRIPT = `
local n = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], '*', 'w', ARGV[1])
redis.call(ARGV[2], KEYS[1], ARGV[1])
return n
`
const STREAM = 'fanout:{guest}:events'
const META = 'fanout:{guest}:meta'

type Scripted = { haWrite (stream: string, meta: string, w: string, publish: string): Promise<number> }

function defineWrite (client: Client): Scripted {
  client.defineCommand('haWrite', { numberOfKeys: 2, lua: SCRIPT })
  return client as unknown as Scripted
}

/** Every event a client emits, with the time, so a test can print what happened in which order. */
function recordEvents (client: Client, clock: { zero: number }, names: string[]): Array<{ at: number, event: string }> {
  const log: Array<{ at: number, event: string }> = []
  for (const name of names) client.on(name, () => log.push({ at: Math.round(performance.now() - clock.zero), event: name }))
  return log
}

const EVENTS = ['connect', 'ready', 'close', 'reconnecting', 'end', 'error', 'sentinelError', 'failoverSubscribed',
  '+node', '-node', 'node error', '+subscriber', '-subscriber', 'subscribersReady', 'nodeError', 'refresh', 'moved']

/**
 * Writes one numbered event every `everyMs` through the script until stopped; keeps when each was
 * sent and when (if) it was acknowledged.
 */
class Writer {
  /** message -> when it was sent / acknowledged; messages are `<tag>:<n>`, unique per writer. */
  sent = new Map<string, number>()
  acked = new Map<string, number>()
  failures = 0
  #next = 1
  #stopped = false
  readonly done: Promise<void>

  constructor (client: Scripted, publish: 'PUBLISH' | 'SPUBLISH', tag = 'w', everyMs = 20) {
    this.done = (async () => {
      while (!this.#stopped) {
        const w = `${tag}:${this.#next++}`
        this.sent.set(w, performance.now())
        try {
          await client.haWrite(STREAM, META, w, publish)
          this.acked.set(w, performance.now())
        } catch {
          this.failures++
        }
        await sleep(everyMs)
      }
    })()
  }

  /** Ms from `zero` to the first acknowledgement of a write sent at or after `zero`. */
  backAfter (zero: number): number | undefined {
    let first: number | undefined
    for (const [w, ackedAt] of this.acked) {
      if ((this.sent.get(w) ?? 0) >= zero && (first === undefined || ackedAt < first)) first = ackedAt
    }
    return first === undefined ? undefined : Math.round(first - zero)
  }

  async stop (): Promise<void> {
    this.#stopped = true
    await this.done
  }
}

/** What a subscriber received: message -> when. */
function receiver (): { got: Map<string, number>, duplicates: () => number, on: (channel: unknown, message: unknown) => void } {
  const got = new Map<string, number>()
  let total = 0
  return {
    got,
    duplicates: () => total - got.size,
    on: (_channel, message) => {
      total++
      if (!got.has(String(message))) got.set(String(message), performance.now())
    }
  }
}

/** Ms from `zero` to the first message for a write that was sent at or after `zero`. */
function receivingAfter (got: Map<string, number>, writer: Writer, zero: number): number | undefined {
  let first: number | undefined
  for (const [w, at] of got) {
    if ((writer.sent.get(w) ?? -1) >= zero && (first === undefined || at < first)) first = at
  }
  return first === undefined ? undefined : Math.round(first - zero)
}

function close (t: Tap, client: Client): void {
  t.teardown(() => client.disconnect())
}

/** The `w` fields of the stream on one server. */
async function streamWrites (node: HostPort): Promise<Set<string>> {
  const entries = await ask(node, ['XRANGE', STREAM, '-', '+']) as Array<[string, string[]]>
  return new Set(entries.map(([, fields]) => fields[1]))
}

t.test('sentinel: the harness reports the primary, and a killed primary is replaced', async (t) => {
  const topo = await startSentinels(t, { replicas: 1, sentinels: 3, downAfterMs: 1000 })
  const primary = await topo.primary()
  t.same(primary, { host: topo.nodes[0].host, port: topo.nodes[0].port }, 'the sentinels name the first node as primary')
  t.same(await ask(topo.nodes[1], ['ROLE']).then((r) => (r as string[])[0]), 'slave', 'the second node replicates')
  const zero = performance.now()
  await topo.kill(primary)
  const next = await topo.waitForFailover(primary, 30_000)
  t.comment(`sentinel: SIGKILL -> every sentinel names the new primary: ${since(zero)} ms`)
  t.same(next, { host: topo.nodes[1].host, port: topo.nodes[1].port }, 'the replica was promoted')
  t.same(await topo.primary(), next, 'primary() follows the failover')
})

t.test('sentinel: ioredis command and subscriber connections follow a SIGKILLed primary', async (t) => {
  const topo = await startSentinels(t, { replicas: 1, sentinels: 3, downAfterMs: 1000 })
  const target: RedisTarget = { sentinels: topo.sentinels, name: topo.name }
  const clock = { zero: performance.now() }
  // As the broker's command connection: no offline queue, so a write fails fast instead of being
  // held and resent (a resent script could run twice).
  const cmd = createRedis(target, 'command', { enableOfflineQueue: false })
  const sub = createRedis(target, 'subscriber')
  close(t, cmd)
  close(t, sub)
  const cmdEvents = recordEvents(cmd, clock, EVENTS)
  const subEvents = recordEvents(sub, clock, EVENTS)
  const rx = receiver()
  sub.on('message', rx.on)
  await waitFor(() => cmd.status === 'ready' && sub.status === 'ready', 10_000, 'both connections ready')
  t.equal(await sub.subscribe(STREAM), 1, 'subscribed')
  t.equal(await cmd.call('CLIENT', 'GETNAME'), 'fanout-command', 'createRedis names the connection after its role')

  const writer = new Writer(defineWrite(cmd), 'PUBLISH')
  await waitFor(() => rx.got.size >= 10, 10_000, 'ten messages before the kill')
  const primary = await topo.primary()
  const [replica] = topo.nodes.filter((n) => n.port !== primary.port)
  const sha = (await ask(primary, ['SCRIPT', 'LOAD', SCRIPT])) as string
  t.same(await ask(replica, ['SCRIPT', 'EXISTS', sha]), [0], 'the replica has not got the script cached: after a failover EVALSHA meets NOSCRIPT')

  const zero = performance.now()
  clock.zero = zero
  cmdEvents.push({ at: 0, event: 'KILL' })
  subEvents.push({ at: 0, event: 'KILL' })
  await topo.kill(primary)
  const next = await topo.waitForFailover(primary, 30_000)
  const failoverMs = since(zero)
  try {
    await waitFor(() => writer.backAfter(zero) !== undefined, 20_000, 'a write sent after the kill to succeed')
    await waitFor(() => receivingAfter(rx.got, writer, zero) !== undefined, 20_000, 'the subscriber to receive again')
    await sleep(200)
  } finally {
    t.comment(`sentinel SIGKILL: sentinels agree on the new primary after ${failoverMs} ms; writes succeed again after ${writer.backAfter(zero) ?? 'never'} ms; ` +
      `the subscriber receives again after ${receivingAfter(rx.got, writer, zero) ?? 'never'} ms; ${writer.failures} writes failed meanwhile; ` +
      `status now: command ${cmd.status}, subscriber ${sub.status}; ${writer.sent.size - writer.acked.size - writer.failures} write(s) unanswered`)
    t.comment(`command connection events: ${JSON.stringify(cmdEvents)}`)
    t.comment(`subscriber connection events: ${JSON.stringify(subEvents)}`)
  }
  await writer.stop()
  t.ok(cmdEvents.some((e) => e.event === 'ready' && e.at > 0), 'the command connection emits ready again after the kill')
  t.ok(subEvents.some((e) => e.event === 'ready' && e.at > 0), 'the subscriber emits ready again after the kill')
  t.notOk([...cmdEvents, ...subEvents].some((e) => e.event === '+switch-master'), 'ioredis emits no +switch-master event to the application')

  const onNew = await streamWrites(next)
  const ackedAfter = [...writer.acked.keys()].filter((w) => (writer.sent.get(w) ?? 0) >= zero)
  t.ok(ackedAfter.length > 0 && ackedAfter.every((w) => onNew.has(w)), 'every write acknowledged after the kill is on the new primary (the script ran there despite NOSCRIPT)')
  const lost = [...writer.acked.keys()].filter((w) => !onNew.has(w))
  t.comment(`acknowledged before the kill but missing on the new primary (asynchronous replication): ${lost.length}`)
  // 'ready' is emitted before autoResubscribe sends SUBSCRIBE, and writes go over another
  // connection: what is published in between is missed, and only the stream can give it back.
  const subReady = zero + Math.max(...subEvents.filter((e) => e.event === 'ready').map((e) => e.at))
  const afterResubscribe = [...writer.acked.keys()].filter((w) => (writer.sent.get(w) ?? 0) >= subReady + 100)
  t.ok(afterResubscribe.length > 0 && afterResubscribe.every((w) => rx.got.has(w)),
    'autoResubscribe: the subscriber gets every write sent after it is back, without subscribing again')
  const missed = [...writer.acked.keys()].filter((w) => !rx.got.has(w))
  t.comment(`acknowledged writes the subscriber never received (the gap to repair from the stream): ${missed.length}`)
})

t.test('cluster: the harness builds six nodes and reports slot owners', async (t) => {
  const cluster = await startCluster(t, { primaries: 3, replicasPerPrimary: 1, nodeTimeoutMs: 1000 })
  t.equal(cluster.nodes.length, 6, 'six nodes')
  const slot = await cluster.slotOf(STREAM)
  t.equal(slot, await cluster.slotOf(META), 'keys sharing the hash tag share a slot')
  t.equal(slot, await cluster.slotOf('{guest}'), 'the slot is the hash tag\'s')
  const owner = await cluster.ownerOf(STREAM)
  t.same(await ask(owner, ['ROLE']).then((r) => (r as string[])[0]), 'master', 'the owner is a primary')
  const zero = performance.now()
  await cluster.kill(owner)
  const next = await cluster.waitForFailover(slot, owner, 30_000)
  t.comment(`cluster: SIGKILL -> every live node names the promoted replica and is ok: ${since(zero)} ms`)
  t.not(next.port, owner.port, 'another node owns the slot')
  t.same(await cluster.ownerOfSlot(slot), next, 'ownerOfSlot follows the failover')
})

t.test('cluster: a hash-tagged script and sharded pub/sub (SPUBLISH from the script) through ioredis, across a failover', async (t) => {
  const cluster = await startCluster(t, { primaries: 3, replicasPerPrimary: 1, nodeTimeoutMs: 1000 })
  const target: RedisTarget = { clusterNodes: cluster.nodes.slice(0, 2).map(({ host, port }) => ({ host, port })) }
  const clock = { zero: performance.now() }
  const cmd = createRedis(target, 'command', { enableOfflineQueue: false })
  const sub = createRedis(target, 'subscriber', {}, { shardedSubscribers: true })
  close(t, cmd)
  close(t, sub)
  const cmdEvents = recordEvents(cmd, clock, EVENTS)
  const subEvents = recordEvents(sub, clock, EVENTS)
  const rx = receiver()
  sub.on('smessage', rx.on)
  await waitFor(() => cmd.status === 'ready' && sub.status === 'ready', 10_000, 'both clusters ready')
  t.equal(await sub.ssubscribe(STREAM), 1, 'ssubscribe through the Cluster object')
  const owner = await cluster.ownerOf(STREAM)
  const shardSubscribers = async (node: HostPort) => ((await ask(node, ['PUBSUB', 'SHARDNUMSUB', STREAM])) as [string, number])[1]
  t.equal(await shardSubscribers(owner), 1, 'the sharded subscription is on the primary owning the slot')

  const writes = defineWrite(cmd)
  t.equal(await writes.haWrite(STREAM, META, 'first', 'SPUBLISH'), 1, 'the script with two hash-tagged keys runs on the cluster')
  await waitFor(() => rx.got.has('first'), 5000, 'the SPUBLISH made inside the script to arrive as smessage')
  t.pass('SPUBLISH inside the script reaches the sharded subscriber')

  const writer = new Writer(writes, 'SPUBLISH')
  await waitFor(() => rx.got.size >= 10, 10_000, 'ten messages before the kill')
  const zero = performance.now()
  clock.zero = zero
  cmdEvents.push({ at: 0, event: 'KILL' })
  subEvents.push({ at: 0, event: 'KILL' })
  await cluster.kill(owner)
  const slot = await cluster.slotOf(STREAM)
  const next = await cluster.waitForFailover(slot, owner, 30_000)
  const failoverMs = since(zero)
  await waitFor(() => writer.backAfter(zero) !== undefined, 30_000, 'a write sent after the kill to succeed')
  const writesBack = writer.backAfter(zero) as number
  let receiving: number | undefined
  try {
    await waitFor(() => receivingAfter(rx.got, writer, zero) !== undefined, 20_000, 'the sharded subscriber to receive again')
    receiving = receivingAfter(rx.got, writer, zero)
  } finally {
    await writer.stop()
    t.comment(`cluster SIGKILL of the slot owner: every node agrees on the new owner after ${failoverMs} ms; writes succeed again after ${writesBack} ms; ` +
      `the sharded subscriber receives again after ${receiving ?? 'never (20 s)'} ms; ${writer.failures} writes failed meanwhile`)
    t.comment(`command cluster events: ${JSON.stringify(cmdEvents)}`)
    t.comment(`subscriber cluster events: ${JSON.stringify(subEvents)}`)
  }
  t.equal(await shardSubscribers(next), 1, 'the sharded subscription moved to the promoted replica')
  t.equal(rx.duplicates(), 0, 'no message arrived twice (one subscription at a time)')
  const onNew = await streamWrites(next)
  const lost = [...writer.acked.keys()].filter((w) => !onNew.has(w))
  t.comment(`acknowledged before the kill but missing on the new owner (asynchronous replication): ${lost.length}`)
  const missed = [...writer.acked.keys()].filter((w) => !rx.got.has(w))
  t.comment(`acknowledged writes the sharded subscriber never received (the gap to repair from the stream): ${missed.length}`)
})

// SIGSTOP freezes the primary with its sockets open: what a hung host or a network partition looks
// like to a client, which sees no close and no error. The promoted replica takes over all the same.

t.test('sentinel: a frozen primary (SIGSTOP) is left only by a client watching +switch-master', async (t) => {
  const topo = await startSentinels(t, { replicas: 1, sentinels: 3, downAfterMs: 1000 })
  const target: RedisTarget = { sentinels: topo.sentinels, name: topo.name }
  // ioredis as it comes (failoverDetector off) next to createRedis, which watches +switch-master.
  const plainOptions = { sentinels: topo.sentinels, name: topo.name, maxRetriesPerRequest: null, retryStrategy: (n: number) => backoff(n) }
  const plain = new Redis({ ...plainOptions, enableOfflineQueue: false, commandTimeout: 500 })
  const detecting = createRedis(target, 'detecting', { enableOfflineQueue: false, commandTimeout: 500 })
  const plainSub = new Redis(plainOptions)
  const detectingSub = createRedis(target, 'detecting-sub')
  for (const c of [plain, detecting, plainSub, detectingSub]) {
    close(t, c)
    c.on('error', () => {})
  }
  const rxPlain = receiver()
  const rxDetecting = receiver()
  plainSub.on('message', rxPlain.on)
  detectingSub.on('message', rxDetecting.on)
  await waitFor(() => [plain, detecting, plainSub, detectingSub].every((c) => c.status === 'ready'), 10_000, 'all ready')
  await plainSub.subscribe(STREAM)
  await detectingSub.subscribe(STREAM)
  const writerPlain = new Writer(defineWrite(plain), 'PUBLISH', 'plain')
  const writerDetecting = new Writer(defineWrite(detecting), 'PUBLISH', 'detecting')
  t.teardown(() => Promise.all([writerPlain.stop(), writerDetecting.stop()]))
  await waitFor(() => rxDetecting.got.size >= 10 && rxPlain.got.size >= 10, 10_000, 'ten messages before the freeze')

  const primary = await topo.primary()
  const zero = performance.now()
  await topo.kill(primary, 'SIGSTOP')
  await topo.waitForFailover(primary, 30_000)
  const failoverMs = since(zero)
  await waitFor(() => writerDetecting.backAfter(zero) !== undefined, 20_000, 'writes through the detecting connection')
  // Both writers' messages reach a subscriber on the new primary, so either writer shows it.
  await waitFor(() => receivingAfter(rxDetecting.got, writerDetecting, zero) !== undefined, 20_000, 'the detecting subscriber to receive again')
  const writesBack = writerDetecting.backAfter(zero) as number
  const receiving = receivingAfter(rxDetecting.got, writerDetecting, zero) as number
  await sleep(3000)
  t.comment(`sentinel SIGSTOP: sentinels agree after ${failoverMs} ms; watching +switch-master, writes succeed again after ${writesBack} ms and ` +
    `the subscriber receives again after ${receiving} ms; plain ioredis, 3 s later: writes back ${writerPlain.backAfter(zero) ?? 'never'}, ` +
    `subscriber ${receivingAfter(rxPlain.got, writerDetecting, zero) ?? 'never'}`)
  t.equal(writerPlain.backAfter(zero), undefined, 'plain ioredis: the command connection stays on the frozen primary: every write times out')
  t.equal(receivingAfter(rxPlain.got, writerDetecting, zero), undefined, 'plain ioredis: the subscriber stays on the frozen primary and hears nothing, with no error')
  const wokenAt = performance.now()
  await topo.kill(primary, 'SIGCONT')
  await waitFor(() => writerPlain.backAfter(wokenAt) !== undefined, 20_000, 'the plain connection to come back once the old primary wakes and is demoted')
  t.comment(`plain ioredis: writes came back ${writerPlain.backAfter(wokenAt)} ms after SIGCONT (the woken primary is demoted and its clients disconnected)`)
})

t.test('cluster: a frozen slot owner (SIGSTOP) is left only with slotsRefreshInterval', async (t) => {
  const cluster = await startCluster(t, { primaries: 3, replicasPerPrimary: 1, nodeTimeoutMs: 1000 })
  const target: RedisTarget = { clusterNodes: cluster.nodes.map(({ host, port }) => ({ host, port })) }
  // createRedis refreshes every second by default; 0 turns that off, as in ioredis.
  const plain = createRedis(target, 'plain', { enableOfflineQueue: false, commandTimeout: 500 }, { slotsRefreshInterval: 0 })
  const refreshing = createRedis(target, 'refreshing', { enableOfflineQueue: false, commandTimeout: 500 })
  const plainSub = createRedis(target, 'plain-sub', {}, { shardedSubscribers: true, slotsRefreshInterval: 0 })
  const refreshingSub = createRedis(target, 'refreshing-sub', {}, { shardedSubscribers: true })
  for (const c of [plain, refreshing, plainSub, refreshingSub]) {
    close(t, c)
    c.on('error', () => {})
  }
  const rxPlain = receiver()
  const rxRefreshing = receiver()
  plainSub.on('smessage', rxPlain.on)
  refreshingSub.on('smessage', rxRefreshing.on)
  await waitFor(() => [plain, refreshing, plainSub, refreshingSub].every((c) => c.status === 'ready'), 10_000, 'all ready')
  await plainSub.ssubscribe(STREAM)
  await refreshingSub.ssubscribe(STREAM)
  const writerPlain = new Writer(defineWrite(plain), 'SPUBLISH', 'plain')
  const writerRefreshing = new Writer(defineWrite(refreshing), 'SPUBLISH', 'refreshing')
  t.teardown(() => Promise.all([writerPlain.stop(), writerRefreshing.stop()]))
  await waitFor(() => rxRefreshing.got.size >= 10 && rxPlain.got.size >= 10, 10_000, 'ten messages before the freeze')

  const owner = await cluster.ownerOf(STREAM)
  const slot = await cluster.slotOf(STREAM)
  const zero = performance.now()
  await cluster.kill(owner, 'SIGSTOP')
  await cluster.waitForFailover(slot, owner, 30_000)
  const failoverMs = since(zero)
  await waitFor(() => writerRefreshing.backAfter(zero) !== undefined, 20_000, 'writes through the refreshing cluster')
  await waitFor(() => receivingAfter(rxRefreshing.got, writerRefreshing, zero) !== undefined, 20_000, 'the refreshing subscriber to receive again')
  const writesBack = writerRefreshing.backAfter(zero) as number
  const receiving = receivingAfter(rxRefreshing.got, writerRefreshing, zero) as number
  await sleep(3000)
  t.comment(`cluster SIGSTOP: nodes agree after ${failoverMs} ms; with slotsRefreshInterval 1000 writes succeed again after ${writesBack} ms and ` +
    `the sharded subscriber receives again after ${receiving} ms; without it, 3 s later: writes back ${writerPlain.backAfter(zero) ?? 'never'}, ` +
    `subscriber ${receivingAfter(rxPlain.got, writerRefreshing, zero) ?? 'never'}`)
  t.equal(writerPlain.backAfter(zero), undefined, 'without slotsRefreshInterval every write still goes to the frozen node and times out')
  t.equal(receivingAfter(rxPlain.got, writerRefreshing, zero), undefined, 'without slotsRefreshInterval the sharded subscriber stays on the frozen node and hears nothing, with no error')
})

t.test('sentinel: a planned failover (SENTINEL FAILOVER) leaves plain ioredis on the old primary, createRedis moves', async (t) => {
  const failoverTimeoutMs = 4000
  const topo = await startSentinels(t, { replicas: 1, sentinels: 3, downAfterMs: 1000, failoverTimeoutMs })
  const target: RedisTarget = { sentinels: topo.sentinels, name: topo.name }
  const plainOptions = { sentinels: topo.sentinels, name: topo.name, maxRetriesPerRequest: null, retryStrategy: (n: number) => backoff(n) }
  const plain = new Redis({ ...plainOptions, enableOfflineQueue: false, commandTimeout: 500 })
  const watching = createRedis(target, 'watching', { enableOfflineQueue: false, commandTimeout: 500 })
  const plainSub = new Redis(plainOptions)
  for (const c of [plain, watching, plainSub]) {
    close(t, c)
    c.on('error', () => {})
  }
  const rx = receiver()
  plainSub.on('message', rx.on)
  await waitFor(() => [plain, watching, plainSub].every((c) => c.status === 'ready'), 10_000, 'all ready')
  await plainSub.subscribe(STREAM)
  const writerPlain = new Writer(defineWrite(plain), 'PUBLISH', 'plain')
  const writerWatching = new Writer(defineWrite(watching), 'PUBLISH', 'watching')
  t.teardown(() => Promise.all([writerPlain.stop(), writerWatching.stop()]))
  await waitFor(() => rx.got.size >= 10, 10_000, 'ten messages before the failover')

  const primary = await topo.primary()
  const zero = performance.now()
  t.equal(await ask(topo.sentinels[0], ['SENTINEL', 'FAILOVER', topo.name]), 'OK', 'failover requested')
  const next = await topo.waitForFailover(primary, 30_000)
  const switchedAt = performance.now()
  // The old primary stays a writable master for a while after the sentinels have switched.
  // Demoting it, Sentinel kills its clients, the probe's connection included: that is a "not yet".
  await waitFor(async () => ((await ask(primary, ['ROLE']).catch(() => [])) as string[])[0] === 'slave', 30_000, 'the old primary to be demoted')
  const demotedMs = since(switchedAt)
  // Measured ~10 s with failover-timeout 4000 and 10000 alike: a wait of Sentinel's own.
  t.ok(demotedMs > 5000, `the old primary stays a writable master for seconds after the switch: ${demotedMs} ms`)
  await waitFor(() => writerPlain.backAfter(switchedAt) !== undefined && writerWatching.backAfter(switchedAt) !== undefined, 20_000, 'both writers')
  await sleep(500)
  await Promise.all([writerPlain.stop(), writerWatching.stop()])
  const onNew = await streamWrites(next)
  const after = (w: Writer) => [...w.acked.keys()].filter((k) => (w.sent.get(k) ?? 0) >= switchedAt)
  const lost = (w: Writer) => [...w.acked.keys()].filter((k) => !onNew.has(k)).length
  t.ok(after(writerWatching).length > 0 && after(writerWatching).every((k) => onNew.has(k)),
    'createRedis: every write acknowledged after the switch is on the new primary')
  t.comment(`SENTINEL FAILOVER: sentinels agree ${Math.round(switchedAt - zero)} ms after the request; the old primary is demoted ${demotedMs} ms later. ` +
    `createRedis: ${writerWatching.failures} writes failed, first success on the new primary ${writerWatching.backAfter(switchedAt)} ms after the switch, ` +
    `${lost(writerWatching)} acknowledged writes lost. Plain ioredis: ${writerPlain.failures} failed, ${lost(writerPlain)} acknowledged writes lost ` +
    '(written to the old primary after the switch, discarded when it resynced as a replica)')
})
