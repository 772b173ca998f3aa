// The channels scenario (`--scenarios=channels`) and the Cluster spread (`--scenarios=cluster-spread`):
// many channels, each client in a few of them, hot channels and quiet ones, publishes spread over
// the channels with the same skew. Systems: fastify-fanout (`GET /stream`, fanout.v1 subscribe
// commands; events published with the product's RedisBroker.publish(channel, body)), Socket.IO
// rooms with @socket.io/redis-adapter (published with @socket.io/redis-emitter `.to(room)`), the
// same with the sharded adapter, and Nchan (several channel ids per subscriber, HTTP publisher).
// One system at a time, on fresh replicas; the harness (bench/run.ts) lends its process helpers.
import { spawn, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import { createRequire } from 'node:module'
import { Redis } from 'ioredis'
import { histogram, merge, cpuSeconds, quantile, rssBytes, sleep, machineTicks, type Reply } from './common.js'
import { nchanAvailable, nchanServer } from './nchan.js'
import { monotonicUs, type Window } from './profile.js'
import type { SystemName } from './systems.js'

// As lib/redis/slot-pipelines.ts finds a key's slot (the package declares no types).
const calculateSlot = createRequire(import.meta.url)('cluster-key-slot') as (key: string) => number

export const CHANNEL_SCENARIOS = ['channels', 'cluster-spread'] as const
export type ChannelScenario = typeof CHANNEL_SCENARIOS[number]
/** The flags of these scenarios (bench/run.ts parses them with its own). */
export const CHANNEL_FLAGS = ['channels', 'channel-clients', 'publish-rate', 'channel-seconds', 'channels-per-client', 'zipf', 'publish-skew']
export const CHANNEL_USAGE = `
  channels and cluster-spread run only when named in --scenarios:
  --channels=N             channels [10000 × scale]
  --channel-clients=N      clients, spread over the replicas [20000 × scale]
  --channels-per-client=N  channels each client subscribes to [5]
  --publish-rate=N         publishes per second, spread over the channels [2000 × scale]
  --channel-seconds=N      length of the measured window [10; 3 to 10 in proportion to
                           --channel-clients below 20,000, with shorter pauses: a smoke run]
  --zipf=S                 the skew: channel of rank r has weight 1/r^S, for subscriptions and
                           publishes alike [1: the top 1% of 10,000 channels take ~53%]
  --publish-skew=K         independent: publishes follow the same law, over an independent
                           ranking of the channels [default]; aligned: the hottest channel for
                           subscribers is the hottest for publishes too (deliveries explode)
`

export const CHANNEL_SYSTEMS = ['fanout', 'fanout-cluster', 'floor', 'socketio', 'socketio-sharded', 'nchan'] as const
export type ChannelSystem = typeof CHANNEL_SYSTEMS[number]
const LABELS: Record<ChannelSystem, string> = {
  fanout: 'fastify-fanout',
  'fanout-cluster': 'fastify-fanout, 3-primary Redis Cluster',
  floor: 'floor (ws, a SUBSCRIBE per channel, frame once, one write per socket per turn)',
  socketio: 'Socket.IO rooms + redis-adapter',
  'socketio-sharded': 'Socket.IO rooms + sharded redis-adapter',
  nchan: 'Nchan (multi-channel subscriber)'
}

export interface BenchWorker {
  readonly child: ChildProcess
  call<T = Record<string, unknown>> (op: string, fields?: Record<string, unknown>): Promise<T & Reply>
  stop (): Promise<void>
}

/** What bench/run.ts lends: its options, its private Redis and its process helpers. */
export interface ChannelsContext {
  option: (name: string) => string | undefined
  numberOption: (name: string, fallback: number) => number
  scale: number
  replicas: number
  clientProcs: number
  settleMs: number
  socketsPerProcess: number
  /** The systems selected with --systems (of bench/systems.ts). */
  systems: SystemName[]
  redis: { url: string, client: Redis }
  fork: (file: string, name: string, env?: Record<string, string>) => Promise<BenchWorker>
  track: (child: ChildProcess, name: string) => ChildProcess
  stop: (child: ChildProcess, graceMs?: number) => Promise<void>
  tempDir: (prefix: string) => string
  freePort: () => Promise<number>
  waitFor: (what: string, check: () => Promise<boolean> | boolean, timeoutMs?: number) => Promise<void>
  accepts: (port: number) => Promise<boolean>
  startCluster: () => Promise<{ nodes: string, procs: ChildProcess[] }>
  /** fastify-fanout's replica command and environment, as the other scenarios run it. */
  fanoutReplica: (uploadDir: string) => { command: string, args: string[], env: Record<string, string> }
  /** Node's flags for a baseline replica: `--cpu-prof` into the system's folder with --profile. */
  profileArgs: (system: SystemName) => string[]
  dist: string
  root: string
  /** Tells the harness when a system's window was measured (its --profile summary counts those samples). */
  measured: (system: SystemName, window: Window) => void
}

/**
 * One Cluster primary over the window: script calls counted by Redis, and `placed`, the window's
 * publishes whose channel's slot it owns (what the placement alone predicts, before the replicas'
 * own scripts).
 */
export interface RedisNode { node: string, calls: number, cpuSec: number, keys: number, placed: number }

export interface ChannelRow {
  system: ChannelSystem
  clients: number
  connected: number
  subscriptions: number
  channelsWithSubscribers: number
  /** The probe: one event on every channel with subscribers, before warming up. */
  probeDelivered: number
  probeExpected: number
  probeAttempts: number
  publishes: number
  publishFailures: number
  /** Publishes per second the publisher achieved over the window (the schedule asks for `rate`). */
  publishRate: number
  expected: number
  delivered: number
  windowSec: number
  replicaCpuSec: number
  cpuSecPer1000: number
  redisCpuSec: number
  redisCpuUsPerPublish: number
  /** The same, less Redis's CPU without publishes (measured over 2 s just before) for as long as the window lasted. */
  redisNetUsPerPublish: number
  redisIdleCpuPct: number
  /** The publisher process's CPU over the window, per publish (not counted in the replicas'). */
  publisherCpuUsPerPublish: number
  /** All load-client processes together over the window, in % of one core. */
  clientCpuPct: number
  p50Ms: number
  p99Ms: number
  maxMs: number
  /** Per replica, MB: fresh, with idle connections, with their subscriptions, after the window. */
  rssFreshMB: number[]
  rssConnectedMB: number[]
  rssSubscribedMB: number[]
  rssEndMB: number[]
  kbPerConnection: number
  /** RSS grown by subscribing the connected clients, per (client, channel) subscription; NaN where a client subscribes at connect (Nchan). */
  bytesPerSubscription: number
  connectSec: number
  subscribeSec: number
  machineBusyPct: number
  clientErrors: string[]
  /** Per Redis Cluster primary (fanout-cluster only). */
  nodes?: RedisNode[]
}

export interface ChannelsResult {
  channels: number
  clients: number
  perClient: number
  rate: number
  seconds: number
  zipf: number
  publishSkew: string
  replicas: number
  clientProcs: number
  topOnePercentSubscriptionShare: number
  topOnePercentPublishShare: number
  /** The hottest channel's share of the publishes (of 100,000 drawn from the same law). */
  hottestChannelPublishShare: number
  expectedPerPublish: number
  /** The hub's own heap per idle (client, channel) subscription (bench/subscription-memory.ts). */
  hubBytesPerSubscription: number
  rows: ChannelRow[]
  errors: string[]
}

// ---------------------------------------------------------------------------------------------
// The load: who subscribes to what, and what is published where

/** A seeded generator (mulberry32), so every system gets the same clients and publishes. */
function random (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Samples ranks 0..n-1 with weight 1/(rank+1)^s. */
function zipf (n: number, s: number, rand: () => number): () => number {
  const cumulative = new Float64Array(n)
  let sum = 0
  for (let r = 0; r < n; r++) { sum += 1 / (r + 1) ** s; cumulative[r] = sum }
  return () => {
    const x = rand() * sum
    let lo = 0
    let hi = n - 1
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (cumulative[mid] < x) lo = mid + 1
      else hi = mid
    }
    return lo
  }
}

const channelName = (i: number): string => `c${i}`

interface Load {
  /** Each client's channels (indices). */
  clients: number[][]
  /** A new sampler of publish channels (indices): each system gets the same sequence. */
  publishes: () => () => number
}

function makeLoad (channels: number, clients: number, perClient: number, s: number, skew: string): Load {
  const rand = random(42)
  const rank = zipf(channels, s, rand)
  const list: number[][] = []
  const per = Math.min(perClient, channels)
  for (let c = 0; c < clients; c++) {
    const mine = new Set<number>()
    while (mine.size < per) mine.add(rank())
    list.push([...mine])
  }
  // The publish ranking: the same law, over the channels in another order (or the same one).
  const order = Array.from({ length: channels }, (_, i) => i)
  if (skew !== 'aligned') {
    const shuffle = random(7)
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(shuffle() * (i + 1));
      [order[i], order[j]] = [order[j], order[i]]
    }
  }
  return {
    clients: list,
    publishes: () => {
      const publishRank = zipf(channels, s, random(1234))
      return () => order[publishRank()]
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Replicas

interface Replicas { system: ChannelSystem, ports: number[], procs: ChildProcess[], helpers: ChildProcess[], publishUrl?: string }

/** A replica for the channels scenario: one subscriber on several channels, a publisher per channel. */
function nchanConfig (dir: string, port: number, redisUrl: string, connections: number): string[] {
  return nchanServer(dir, port, redisUrl, connections, `    # ?c=a,b,c: one subscriber, several channels (a multiplexed subscription).
    location = /sub {
      nchan_subscriber websocket;
      nchan_channel_id $arg_c;
      nchan_channel_id_split_delimiter ",";
      nchan_redis_pass redis;
      nchan_subscriber_first_message newest;
    }
    location ~ ^/pub/([A-Za-z0-9_.:@-]+)$ {
      nchan_publisher http;
      nchan_channel_id $1;
      nchan_redis_pass redis;
      nchan_message_buffer_length 100;
      nchan_message_timeout 60s;
    }`)
}

async function startReplicas (ctx: ChannelsContext, system: ChannelSystem, redisEnv: Record<string, string>): Promise<Replicas> {
  const ports: number[] = []
  const procs: ChildProcess[] = []
  const helpers: ChildProcess[] = []
  let publishUrl: string | undefined
  const command = (port: number): { command: string, args: string[], env: Record<string, string> } => {
    if (system === 'nchan') {
      const { nginx } = nchanAvailable() as { nginx: string }
      return { command: nginx, args: nchanConfig(ctx.tempDir('bench-nchan-'), port, ctx.redis.url, ctx.socketsPerProcess), env: {} }
    }
    if (system === 'fanout' || system === 'fanout-cluster') return ctx.fanoutReplica(ctx.tempDir('bench-uploads-'))
    if (system === 'floor') return { command: process.execPath, args: [...ctx.profileArgs(system), join(ctx.dist, 'bench', 'servers', 'floor-channels.js')], env: {} }
    const profile = system === 'socketio' ? ctx.profileArgs(system) : []
    return { command: process.execPath, args: [...profile, join(ctx.dist, 'bench', 'servers', 'socketio-rooms.js')], env: system === 'socketio-sharded' ? { BENCH_SOCKETIO_SHARDED: '1' } : {} }
  }
  if (system === 'nchan') {
    const port = await ctx.freePort()
    const { command: nginx, args } = command(port)
    helpers.push(ctx.track(spawn(nginx, args, { stdio: ['ignore', 'inherit', 'inherit'] }), 'nchan publishing nginx'))
    await ctx.waitFor(`nchan publishing nginx on port ${port}`, () => ctx.accepts(port))
    publishUrl = `http://127.0.0.1:${port}/pub`
  }
  for (let i = 0; i < ctx.replicas; i++) {
    const port = await ctx.freePort()
    const { command: file, args, env } = command(port)
    procs.push(ctx.track(spawn(file, args, { cwd: ctx.root, env: { ...process.env, ...env, PORT: String(port), ...redisEnv }, stdio: ['ignore', 'inherit', 'inherit'] }),
      `${system} replica ${i + 1}`))
    ports.push(port)
  }
  for (const port of ports) await ctx.waitFor(`${system} replica on port ${port}`, () => ctx.accepts(port))
  if (system === 'fanout' || system === 'fanout-cluster') {
    for (const port of ports) {
      await ctx.waitFor(`fanout replica on port ${port} to be ready`, async () => {
        try { return (await fetch(`http://127.0.0.1:${port}/readyz`)).status === 200 } catch { return false }
      }, 30_000)
    }
  }
  return { system, ports, procs, helpers, publishUrl }
}

function clientUrl (system: ChannelSystem, port: number): string {
  if (system === 'nchan') return `ws://127.0.0.1:${port}/sub`
  if (system === 'socketio' || system === 'socketio-sharded') return `ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`
  return `ws://127.0.0.1:${port}/stream`
}

// ---------------------------------------------------------------------------------------------
// Redis readings

function infoField (info: string, field: string): number {
  const match = new RegExp(`^${field}:([0-9.]+)`, 'm').exec(info)
  return match ? Number(match[1]) : 0
}

async function redisReading (nodes: Redis[]): Promise<Array<{ cpu: number, calls: number, keys: number }>> {
  return Promise.all(nodes.map(async (node) => {
    const [cpu, stats, keys] = await Promise.all([node.info('cpu'), node.info('commandstats'), node.dbsize()])
    const calls = ['evalsha', 'eval', 'fcall'].reduce((sum, cmd) => {
      const match = new RegExp(`^cmdstat_${cmd}:calls=(\\d+)`, 'm').exec(stats)
      return sum + (match ? Number(match[1]) : 0)
    }, 0)
    return { cpu: infoField(cpu, 'used_cpu_sys') + infoField(cpu, 'used_cpu_user'), calls, keys }
  }))
}

/** Each primary's share of the window, and of the publishes its slots were given (`placed`). */
async function primariesOver (nodes: Redis[], before: Array<{ cpu: number, calls: number }>, after: Array<{ cpu: number, calls: number, keys: number }>,
  sequence: number[]): Promise<RedisNode[]> {
  const owner = new Array<number>(16_384).fill(-1)
  const ranges = await nodes[0].call('cluster', 'slots') as Array<[number, number, [string, number]]>
  const ports = nodes.map((node) => node.options.port)
  for (const [from, to, [, port]] of ranges) for (let slot = from; slot <= to; slot++) owner[slot] = ports.indexOf(port)
  const placed = new Array<number>(nodes.length).fill(0)
  for (const c of sequence) placed[owner[calculateSlot(channelName(c))]]++ // the keys' hash tag is `{<channel>}`
  return after.map((r, i) => ({ node: String(ports[i] ?? i), calls: r.calls - before[i].calls, cpuSec: r.cpu - before[i].cpu, keys: r.keys, placed: placed[i] }))
}

// ---------------------------------------------------------------------------------------------
// One system

async function received (workers: BenchWorker[]): Promise<number> {
  const counts = await Promise.all(workers.map((w) => w.call<{ received: number }>('count')))
  return counts.reduce((sum, c) => sum + c.received, 0)
}

async function delivered (workers: BenchWorker[], expected: number, stallMs = 10_000): Promise<number> {
  let last = -1
  let progressAt = Date.now()
  for (;;) {
    const now = await received(workers)
    if (now >= expected) {
      // A little longer: more than expected would mean duplicates.
      await sleep(200)
      return received(workers)
    }
    if (now !== last) { last = now; progressAt = Date.now() }
    if (Date.now() - progressAt > stallMs) return now
    await sleep(50)
  }
}

const MB = 2 ** 20
const rssOf = (procs: ChildProcess[]): number[] => procs.map((p) => rssBytes(p.pid as number) / MB)
const sum = (values: number[]): number => values.reduce((a, b) => a + b, 0)

async function runSystem (ctx: ChannelsContext, system: ChannelSystem, load: Load, s: ChannelsResult,
  redisNodes: Redis[], redisEnv: Record<string, string>): Promise<ChannelRow> {
  const replicas = await startReplicas(ctx, system, redisEnv)
  const workers: BenchWorker[] = []
  let publisher: BenchWorker | undefined
  try {
    const step = (what: string): void => console.error(`[bench] channels ${system}: ${what}`)
    await sleep(ctx.settleMs)
    const rssFresh = rssOf(replicas.procs)
    step('connecting')
    const procs = Math.max(ctx.clientProcs, Math.ceil(s.clients / ctx.socketsPerProcess))
    for (let i = 0; i < procs; i++) workers.push(await ctx.fork('channels-worker.js', `${system} channel client ${i + 1}`, { BENCH_ROLE: 'client', BENCH_SYSTEM: system }))
    const urls = replicas.ports.map((port) => clientUrl(system, port))
    const connectStart = Date.now()
    const results = await Promise.all(workers.map((worker, w) => {
      const mine = load.clients.map((channels, index) => ({ index, channels: channels.map(channelName) })).filter((_, index) => index % procs === w)
      return worker.call<{ connected: number, failed: number[], errors: string[] }>('connect', { urls, clients: mine, concurrency: 200 })
    }))
    const connectSec = (Date.now() - connectStart) / 1000
    const failed = new Set(results.flatMap((r) => r.failed))
    const connectErrors = [...new Set(results.flatMap((r) => r.errors))]
    if (failed.size > 0) console.error(`[bench] channels ${system}: ${failed.size} of ${s.clients} clients failed to connect: ${connectErrors.join('; ')}`)
    const connected = s.clients - failed.size
    // Subscribers per channel, among the clients that connected.
    const subs = new Array<number>(s.channels).fill(0)
    load.clients.forEach((channels, index) => { if (!failed.has(index)) for (const c of channels) subs[c]++ })
    const subscriptions = sum(subs)
    await sleep(ctx.settleMs)
    const rssConnected = rssOf(replicas.procs)
    step(`${connected} connected in ${connectSec.toFixed(1)} s; subscribing`)
    const subscribeStart = Date.now()
    const acks = await Promise.all(workers.map((w) => w.call<{ subscriptions: number, wanted: number }>('subscribe', { timeoutMs: 120_000 })))
    const subscribeSec = (Date.now() - subscribeStart) / 1000
    const acked = sum(acks.map((a) => a.subscriptions))
    if (acked < subscriptions) console.error(`[bench] channels ${system}: ${acked} of ${subscriptions} subscriptions acknowledged`)
    await sleep(ctx.settleMs)
    const rssSubscribed = rssOf(replicas.procs)
    step(`${acked} of ${subscriptions} subscriptions acknowledged in ${subscribeSec.toFixed(1)} s; probing`)

    // BENCH_PUBLISHER_PROFILE=DIR: the publisher profiles itself (bench/channels-worker.ts), its profile in DIR.
    publisher = await ctx.fork('channels-worker.js', `${system} channel publisher`,
      { BENCH_ROLE: 'publisher', BENCH_SYSTEM: system, ...redisEnv, ...replicas.publishUrl ? { BENCH_PUBLISH_URL: replicas.publishUrl } : {} })
    // The probe: one event on every channel with subscribers, until every subscription got it
    // (a subscription in Redis may stand a little after its acknowledgement, Nchan's after connect).
    const withSubscribers = subs.flatMap((n, c) => n > 0 ? [channelName(c)] : [])
    let probeDelivered = 0
    let probeAttempts = 0
    while (probeAttempts < 4) {
      probeAttempts++
      await Promise.all(workers.map((w) => w.call('reset')))
      await publisher.call('publish', { channels: withSubscribers, rate: Math.max(s.rate, 5000) })
      probeDelivered = await delivered(workers, subscriptions, 5000)
      if (probeDelivered >= subscriptions) break
      console.error(`[bench] channels ${system}: probe ${probeAttempts} delivered ${probeDelivered} of ${subscriptions}`)
      await sleep(2000)
    }
    step(`probe: ${probeDelivered} of ${subscriptions} delivered; warming up`)
    // Warm-up: 2 s of the load (1 s in a smoke run), unmeasured.
    const nextPublish = load.publishes()
    const warm = Array.from({ length: Math.max(1, Math.round(s.rate * (s.seconds < 10 ? 1 : 2))) }, () => channelName(nextPublish()))
    await Promise.all(workers.map((w) => w.call('reset')))
    await publisher.call('publish', { channels: warm, rate: s.rate })
    await delivered(workers, sum(warm.map((c) => subs[Number(c.slice(1))])), 5000)

    // The measured window.
    const sequence = Array.from({ length: Math.max(1, Math.round(s.rate * s.seconds)) }, () => nextPublish())
    const expected = sum(sequence.map((c) => subs[c]))
    // Redis's own background (serverCron, the replicas' canaries) over 2 s (smoke: 1 s) without publishes.
    const idleStart = await redisReading(redisNodes)
    const idleFrom = Date.now()
    await sleep(s.seconds < 10 ? 1000 : 2000)
    const idleEnd = await redisReading(redisNodes)
    const redisIdlePerSec = sum(idleEnd.map((r, i) => r.cpu - idleStart[i].cpu)) / ((Date.now() - idleFrom) / 1000)
    await Promise.all(workers.map((w) => w.call('reset')))
    const redisBefore = await redisReading(redisNodes)
    const windowFrom = Date.now()
    const fromUs = monotonicUs()
    const cpuBefore = sum(replicas.procs.map((p) => cpuSeconds(p.pid as number)))
    const publisherBefore = cpuSeconds(publisher.child.pid as number)
    const clientsBefore = sum(workers.map((w) => cpuSeconds(w.child.pid as number)))
    const machineBefore = machineTicks()
    const published = await publisher.call<{ startedAt: number, endedAt: number, published: number, failed: number, errors: string[] }>('publish', { channels: sequence.map(channelName), rate: s.rate })
    const count = await delivered(workers, expected)
    step(`measured: ${count} of ${expected} delivered`)
    const cpuAfter = sum(replicas.procs.map((p) => cpuSeconds(p.pid as number)))
    const publisherCpu = cpuSeconds(publisher.child.pid as number) - publisherBefore
    const clientsCpu = sum(workers.map((w) => cpuSeconds(w.child.pid as number))) - clientsBefore
    const machineAfter = machineTicks()
    const redisAfter = await redisReading(redisNodes)
    const windowWall = (Date.now() - windowFrom) / 1000
    if (system !== 'socketio-sharded') ctx.measured(system, [fromUs, monotonicUs()])
    const stats = await Promise.all(workers.map((w) => w.call<{ received: number, lastAt: number, hist: number[], errors: string[] }>('stats')))
    const hist = histogram()
    for (const st of stats) merge(hist, st.hist)
    const rssEnd = rssOf(replicas.procs)
    const redisCpu = sum(redisAfter.map((r, i) => r.cpu - redisBefore[i].cpu))
    const replicaCpu = cpuAfter - cpuBefore
    const nodes = system === 'fanout-cluster' ? await primariesOver(redisNodes, redisBefore, redisAfter, sequence) : undefined
    return {
      system,
      clients: s.clients,
      connected,
      subscriptions,
      channelsWithSubscribers: withSubscribers.length,
      probeDelivered,
      probeExpected: subscriptions,
      probeAttempts,
      publishes: published.published,
      publishFailures: published.failed,
      publishRate: published.published / ((published.endedAt - published.startedAt) / 1000),
      expected,
      delivered: count,
      windowSec: (Math.max(...stats.map((st) => st.lastAt)) - published.startedAt) / 1000,
      replicaCpuSec: replicaCpu,
      cpuSecPer1000: (replicaCpu / count) * 1000,
      redisCpuSec: redisCpu,
      redisCpuUsPerPublish: (redisCpu * 1e6) / sequence.length,
      redisNetUsPerPublish: ((redisCpu - redisIdlePerSec * windowWall) * 1e6) / sequence.length,
      redisIdleCpuPct: redisIdlePerSec * 100,
      publisherCpuUsPerPublish: (publisherCpu * 1e6) / sequence.length,
      clientCpuPct: (clientsCpu / windowWall) * 100,
      p50Ms: quantile(hist, 0.5),
      p99Ms: quantile(hist, 0.99),
      maxMs: quantile(hist, 1),
      rssFreshMB: rssFresh,
      rssConnectedMB: rssConnected,
      rssSubscribedMB: rssSubscribed,
      rssEndMB: rssEnd,
      kbPerConnection: ((sum(rssConnected) - sum(rssFresh)) * 1024) / connected,
      bytesPerSubscription: system === 'nchan' ? NaN : ((sum(rssSubscribed) - sum(rssConnected)) * MB) / subscriptions,
      connectSec,
      subscribeSec,
      machineBusyPct: ((machineAfter.busy - machineBefore.busy) / (machineAfter.total - machineBefore.total)) * 100,
      clientErrors: [...new Set([...connectErrors, ...stats.flatMap((st) => st.errors), ...published.errors])].slice(0, 5),
      nodes
    }
  } finally {
    await Promise.all([...workers, ...publisher ? [publisher] : []].map((w) => w.stop()))
    await Promise.all([...replicas.procs, ...replicas.helpers].map((p) => ctx.stop(p, 15_000)))
  }
}

// ---------------------------------------------------------------------------------------------
// The run

/** bench/subscription-memory.ts, in a process of its own with forced collections. */
async function hubBytesPerSubscription (dist: string): Promise<number> {
  const child = spawn(process.execPath, ['--expose-gc', join(dist, 'bench', 'subscription-memory.js')], { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout?.on('data', (chunk: Buffer) => { out += chunk.toString() })
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve))
  if (code !== 0) throw new Error(`subscription-memory exited with ${String(code)}`)
  return (JSON.parse(out) as { bytesPerSubscription: number }).bytesPerSubscription
}

export async function runChannels (ctx: ChannelsContext, scenarios: ChannelScenario[]): Promise<ChannelsResult> {
  const scaled = (flag: string, value: number): number => ctx.option(flag) !== undefined
    ? Math.round(ctx.numberOption(flag, value))
    : Math.max(1, Math.round(value * ctx.scale))
  const channels = scaled('channels', 10_000)
  const clients = scaled('channel-clients', 20_000)
  const perClient = Math.round(ctx.numberOption('channels-per-client', 5))
  const rate = scaled('publish-rate', 2000)
  // A scaled-down run is a smoke run: a shorter window, shorter pauses (unless given).
  const size = Math.min(1, clients / 20_000)
  const seconds = ctx.numberOption('channel-seconds', Math.max(3, Math.round(10 * size)))
  const settleMs = ctx.option('settle-ms') !== undefined ? ctx.settleMs : Math.max(1000, Math.round(ctx.settleMs * size))
  const s = ctx.numberOption('zipf', 1)
  const publishSkew = ctx.option('publish-skew') ?? 'independent'
  if (publishSkew !== 'independent' && publishSkew !== 'aligned') throw new Error('--publish-skew is independent or aligned')
  const load = makeLoad(channels, clients, perClient, s, publishSkew)

  // The skew, as measured on this load.
  const subs = new Array<number>(channels).fill(0)
  for (const mine of load.clients) for (const c of mine) subs[c]++
  const top = Math.max(1, Math.round(channels / 100))
  const bySubs = [...subs].sort((a, b) => b - a)
  const probe = load.publishes()
  const publishCounts = new Array<number>(channels).fill(0)
  let expectedSum = 0
  for (let i = 0; i < 100_000; i++) { const c = probe(); publishCounts[c]++; expectedSum += subs[c] }
  const result: ChannelsResult = {
    channels,
    clients,
    perClient,
    rate,
    seconds,
    zipf: s,
    publishSkew,
    replicas: ctx.replicas,
    clientProcs: Math.max(ctx.clientProcs, Math.ceil(clients / ctx.socketsPerProcess)),
    topOnePercentSubscriptionShare: sum(bySubs.slice(0, top)) / sum(subs),
    topOnePercentPublishShare: sum([...publishCounts].sort((a, b) => b - a).slice(0, top)) / 100_000,
    hottestChannelPublishShare: Math.max(...publishCounts) / 100_000,
    expectedPerPublish: expectedSum / 100_000,
    hubBytesPerSubscription: await hubBytesPerSubscription(ctx.dist),
    rows: [],
    errors: []
  }
  console.error(`[bench] channels: ${channels} channels, ${clients} clients × ${perClient}, ${rate} publishes/s for ${seconds} s; ` +
    `~${Math.round(result.expectedPerPublish * rate)} deliveries/s expected`)

  const systems: ChannelSystem[] = []
  if (scenarios.includes('channels')) {
    if (ctx.systems.includes('fanout')) systems.push('fanout')
    if (ctx.systems.includes('floor')) systems.push('floor')
    if (ctx.systems.includes('socketio')) systems.push('socketio', 'socketio-sharded')
    if (ctx.systems.includes('nchan')) systems.push('nchan')
  }
  if (scenarios.includes('cluster-spread')) {
    if (!systems.includes('fanout')) systems.push('fanout')
    systems.push('fanout-cluster')
  }
  const single = [ctx.redis.client]
  for (const system of systems) {
    console.error(`[bench] channels: ${LABELS[system]}`)
    let cluster: { nodes: string, procs: ChildProcess[] } | undefined
    let nodes: Redis[] = single
    try {
      let env: Record<string, string> = { REDIS_URL: ctx.redis.url }
      if (system === 'fanout-cluster') {
        cluster = await ctx.startCluster()
        env = { REDIS_URL: '', REDIS_CLUSTER_NODES: cluster.nodes }
        nodes = cluster.nodes.split(',').map((node) => {
          const [host, port] = node.split(':')
          return new Redis({ host, port: Number(port) })
        })
      }
      result.rows.push(await runSystem({ ...ctx, settleMs }, system, load, result, nodes, env))
    } catch (err) {
      result.errors.push(`${system}: ${(err as Error).message}`)
      console.error(`[bench] channels ${system}: ${(err as Error).stack}`)
    } finally {
      if (nodes !== single) for (const node of nodes) node.disconnect()
      if (cluster) await Promise.all(cluster.procs.map((p) => ctx.stop(p)))
    }
  }
  return result
}

// ---------------------------------------------------------------------------------------------
// The report

const fixed = (n: number | undefined, digits: number): string => n === undefined || !Number.isFinite(n) ? '–' : n.toFixed(digits)
const thousands = (n: number): string => Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '–'

export function channelsMarkdown (r: ChannelsResult): string {
  const lines = [
    `## channels: ${thousands(r.channels)} channels, ${thousands(r.clients)} clients × ${r.perClient} channels over ${r.replicas} replicas, ` +
      `${thousands(r.rate)} publishes/s for ${r.seconds} s`,
    '',
    `Skew: Zipf s=${r.zipf}; the top 1% of channels hold ${fixed(r.topOnePercentSubscriptionShare * 100, 0)}% of the subscriptions and take ` +
      `${fixed(r.topOnePercentPublishShare * 100, 0)}% of the publishes (publish ranking ${r.publishSkew === 'aligned' ? 'the same as the subscribers\'' : 'independent of the subscribers\''}); ` +
      `${fixed(r.expectedPerPublish, 1)} deliveries per publish on average. ${r.clientProcs} load-client processes. One system at a time, on fresh ` +
      'replicas: connect, subscribe, a probe (one event on every channel with subscribers, repeated until every subscription got it), 2 s of ' +
      'unmeasured load, then the measured window. Replica CPU: all replicas, from the first publish to the last receipt; Redis CPU: ' +
      '`used_cpu_sys + used_cpu_user` of every Redis server over the same window. fastify-fanout publishes with the product\'s ' +
      '`RedisBroker.publish(channel, body)` (the outbox\'s Lua script), Socket.IO with `@socket.io/redis-emitter` `.to(room).emit()` ' +
      '(sharded: a Socket.IO server with the sharded adapter, serving no one, `io.to(room).emit()`), Nchan with an HTTP POST to a separate, ' +
      'unmeasured publishing nginx.',
    '',
    '| system | publishes/s | delivered / expected | probe | replica CPU s / 1,000 deliveries | Redis CPU µs / publish (net of idle) | Redis idle CPU % | publisher CPU µs / publish | load clients CPU % | p50 ms | p99 ms | max ms | ' +
      'RSS per replica MB (fresh → connected → subscribed → end) | KB / connection | bytes / subscription | connect s | subscribe s | machine busy % |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|'
  ]
  const mb = (values: number[]): string => values.map((v) => fixed(v, 0)).join('+')
  for (const row of r.rows) {
    lines.push(`| ${LABELS[row.system]} | ${thousands(row.publishRate)} | ${thousands(row.delivered)} / ${thousands(row.expected)} | ${thousands(row.probeDelivered)} / ${thousands(row.probeExpected)}` +
      `${row.probeAttempts > 1 ? ` (${row.probeAttempts} tries)` : ''} | ${fixed(row.cpuSecPer1000, 4)} | ${fixed(row.redisCpuUsPerPublish, 1)} (${fixed(row.redisNetUsPerPublish, 1)}) | ${fixed(row.redisIdleCpuPct, 1)} | ${fixed(row.publisherCpuUsPerPublish, 0)} | ${fixed(row.clientCpuPct, 0)} | ` +
      `${fixed(row.p50Ms, 2)} | ${fixed(row.p99Ms, 2)} | ${fixed(row.maxMs, 0)} | ${mb(row.rssFreshMB)} → ${mb(row.rssConnectedMB)} → ${mb(row.rssSubscribedMB)} → ${mb(row.rssEndMB)} | ` +
      `${fixed(row.kbPerConnection, 1)} | ${fixed(row.bytesPerSubscription, 0)} | ${fixed(row.connectSec, 1)} | ${fixed(row.subscribeSec, 1)} | ${fixed(row.machineBusyPct, 0)} |`)
  }
  lines.push('', 'The hub\'s own memory per idle (client, channel) subscription, apart from sockets, Redis subscriptions and garbage ' +
    '(bench/subscription-memory.ts: 100,000 subscriptions to channels that already have one, heap after forced collections): ' +
    `**${r.hubBytesPerSubscription} bytes**. The RSS figures above include each replica's Redis subscription per channel and what the ` +
    'subscribe commands left for the collector.')
  lines.push('', 'Connected clients, subscriptions, publishes: ' + r.rows.map((row) =>
    `${LABELS[row.system]} ${thousands(row.connected)}, ${thousands(row.subscriptions)}, ${thousands(row.publishes)}${row.publishFailures > 0 ? ` (${row.publishFailures} failed)` : ''}` +
    `${row.clientErrors.length > 0 ? ` [${row.clientErrors.join('; ')}]` : ''}`).join('; ') + '.', '')

  const base = r.rows.find((row) => row.system === 'socketio')
  if (base) {
    lines.push('### ÷ Socket.IO rooms + redis-adapter (same run)', '', 'Lower is better for every column.', '',
      '| system | replica CPU / delivery | Redis CPU / publish (net) | p50 | p99 | RSS subscribed | bytes / subscription |', '|---|---:|---:|---:|---:|---:|---:|')
    for (const row of r.rows.filter((x) => x !== base)) {
      lines.push(`| ${LABELS[row.system]} | ${fixed(row.cpuSecPer1000 / base.cpuSecPer1000, 2)} | ${fixed(row.redisCpuUsPerPublish / base.redisCpuUsPerPublish, 2)} (${fixed(row.redisNetUsPerPublish / base.redisNetUsPerPublish, 2)}) | ` +
        `${fixed(row.p50Ms / base.p50Ms, 2)} | ${fixed(row.p99Ms / base.p99Ms, 2)} | ${fixed(sum(row.rssSubscribedMB) / sum(base.rssSubscribedMB), 2)} | ` +
        `${fixed(row.bytesPerSubscription / base.bytesPerSubscription, 2)} |`)
    }
    lines.push('')
  }
  const floor = r.rows.find((row) => row.system === 'floor')
  const fanouts = r.rows.filter((row) => row.system === 'fanout' || row.system === 'fanout-cluster')
  if (floor && fanouts.length > 0) {
    lines.push('The floor writes each event to each subscriber\'s socket and does nothing else, on the same Redis, publisher and load ' +
      'clients: what one write per delivery costs on this machine, with nothing else done. Replica CPU per delivery ÷ the floor\'s: ' +
      fanouts.map((row) => `${LABELS[row.system]} ${fixed(row.cpuSecPer1000 / floor.cpuSecPer1000, 2)}`).join(', ') +
      (base ? `; the floor ÷ Socket.IO rooms + redis-adapter: ${fixed(floor.cpuSecPer1000 / base.cpuSecPer1000, 2)}.` : '.'), '')
  }

  const cluster = r.rows.find((row) => row.system === 'fanout-cluster')
  const single = r.rows.find((row) => row.system === 'fanout')
  if (cluster?.nodes) {
    const calls = cluster.nodes.map((n) => n.calls)
    const total = sum(calls)
    lines.push('## cluster-spread: fastify-fanout\'s channels on a 3-primary Redis Cluster', '',
      'The publisher pipelines as on one Redis, a pipeline per primary (lib/redis/slot-pipelines.ts).', '',
      'Publishes per primary: `cmdstat_evalsha` (+ `eval`, `fcall`) calls over the window (the publish script, plus the replicas\' ' +
      'own scripts: resume and canary); keys per primary at the end of the window.', '',
      '| primary (port) | script calls | share | publishes its slots were given | share | Redis CPU s | keys |', '|---|---:|---:|---:|---:|---:|---:|')
    const placedTotal = sum(cluster.nodes.map((n) => n.placed))
    for (const node of cluster.nodes) {
      lines.push(`| ${node.node} | ${thousands(node.calls)} | ${fixed((node.calls / total) * 100, 1)}% | ${thousands(node.placed)} | ` +
        `${fixed((node.placed / placedTotal) * 100, 1)}% | ${fixed(node.cpuSec, 3)} | ${thousands(node.keys)} |`)
    }
    const keys = cluster.nodes.map((n) => n.keys)
    lines.push('', `Keys per primary, max/min: ${fixed(Math.max(...keys) / Math.min(...keys), 3)} (what publishes spread evenly over the channels would give). ` +
      `The hottest channel takes ${fixed(r.hottestChannelPublishShare * 100, 1)}% of the publishes, all of them on one primary: a channel's ` +
      'events are ordered in one stream, in one slot. Hashing names, blind to the load, gives that primary on average the hottest channel ' +
      `plus an equal share of the rest (${fixed((r.hottestChannelPublishShare + (1 - r.hottestChannelPublishShare) / cluster.nodes.length) * 100, 1)}%); ` +
      'only a placement that knew each channel\'s rate in advance could do better.')
    const against = single
      ? `, against ${fixed(single.redisCpuUsPerPublish, 1)} µs (net ${fixed(single.redisNetUsPerPublish, 1)}) on one Redis ` +
        `(${fixed(cluster.redisCpuUsPerPublish / single.redisCpuUsPerPublish, 2)}×, net ${fixed(cluster.redisNetUsPerPublish / single.redisNetUsPerPublish, 2)}×); ` +
        `replica CPU per delivery ${fixed(cluster.cpuSecPer1000 / single.cpuSecPer1000, 2)}× one Redis's.`
      : '.'
    lines.push('', `Max/min publishes per primary: ${fixed(Math.max(...calls) / Math.min(...calls), 2)}. ` +
      `Redis CPU per publish, all primaries together: ${fixed(cluster.redisCpuUsPerPublish, 1)} µs (net of idle ${fixed(cluster.redisNetUsPerPublish, 1)})${against}`, '')
  }
  if (r.errors.length > 0) lines.push('### Errors', '', ...r.errors.map((e) => `- ${e}`), '')
  return lines.join('\n')
}
