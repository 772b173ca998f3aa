// `npm run bench`: fastify-fanout against the bare-ws floor, Nchan, Socket.IO and naive ws, in one
// run, on one private redis-server; and fastify-fanout on a private 3-primary Redis Cluster. Every
// server replica, load client and publisher is its own process.
// Options (flag or environment): see `usage` below; docs/performance.md has what the numbers mean.
import { fork, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { createConnection } from 'node:net'
import { cpus, tmpdir, totalmem, release, loadavg } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { Redis } from 'ioredis'
import { cpuSeconds, histogram, machineTicks, merge, nowMs, quantile, rssBytes, sleep, type Reply } from './common.js'
import { monotonicUs, profileMarkdown, summarise, type ProfileSummary, type Window as ProfileWindow } from './profile.js'
import { chartSvg } from './chart.js'
import { markdown, median, type Results, type RoundFigures, type Row, type StormResult } from './report.js'
import { nchanAvailable, nchanConfig, NCHAN_REDIS_CHANNEL } from './nchan.js'
import { channelOf, clientUrl, FANOUT_PREFIX, isFanout, LABELS, NCHAN_PUBLISH_PATH, SYSTEMS, type SystemName } from './systems.js'
import { CHANNEL_FLAGS, CHANNEL_SCENARIOS, CHANNEL_USAGE, channelsMarkdown, runChannels, type ChannelScenario, type ChannelsResult } from './channels.js'

const usage = `
npm run bench [-- options]            (each option also reads BENCH_<NAME>, e.g. BENCH_SCALE=0.1)
  --scale=F          multiply every client and event count by F [1]
  --clients=N        clients in every scenario (overrides the defaults and --scale)
  --events=N         events per measured round in every scenario
  --rounds=N         measured rounds per system in steady, burst and latency
  --rate=N           events per second in the steady and latency scenarios
  --replicas=N       replicas of each system [2]
  --client-procs=N   load-client processes per system [4]
  --systems=a,b      of ${SYSTEMS.join(',')} [all]
  --scenarios=a,b    of steady,burst,latency,scale,storm [all]
  --settle-ms=N      pause before reading RSS in the scale scenario [3000]
  --out=DIR          where latest.json, .md and .svg go [bench/results/local, git-ignored; DIR
                     with --profile]. The published figures: --out=bench/results
  --profile=DIR      run every replica under node --cpu-prof, profiles in DIR/<system>; the
                     summary counts only the samples taken while a round was measured
${CHANNEL_USAGE}`

const DIST = fileURLToPath(new URL('..', import.meta.url)) // dist/
const ROOT = join(DIST, '..')
// Loaded from the product's build at run time: compiling the bench must not re-emit dist/lib/,
// which the tests import while the smoke test builds the bench.
const { freePort } = await import(new URL('../test/support/free-port.js', import.meta.url).href) as { freePort: () => Promise<number> }
/** Open files are capped at 20,000 per process: leave room for the process' own descriptors. */
const SOCKETS_PER_PROCESS = 19_500

// ---------------------------------------------------------------------------------------------
// Options

const { values: flags } = parseArgs({
  options: Object.fromEntries(['scale', 'clients', 'events', 'rate', 'rounds', 'replicas', 'client-procs', 'systems',
    'scenarios', 'settle-ms', 'out', 'profile', 'help', ...CHANNEL_FLAGS].map((name) => [name, { type: name === 'help' ? 'boolean' : 'string' }]))
})
if (flags.help) {
  console.log(usage)
  process.exit(0)
}

function option (name: string): string | undefined {
  const flag = flags[name]
  if (typeof flag === 'string') return flag
  return process.env[`BENCH_${name.toUpperCase().replace(/-/g, '_')}`]
}
function numberOption (name: string, fallback: number): number {
  const value = option(name)
  if (value === undefined) return fallback
  const n = Number(value)
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} must be a positive number, got ${value}`)
  return n
}
function listOption<T extends string> (name: string, all: readonly T[]): T[] {
  const value = option(name)
  if (value === undefined) return [...all]
  const list = value.split(',').map((s) => s.trim()).filter(Boolean)
  for (const item of list) if (!all.includes(item as T)) throw new Error(`--${name}: unknown ${item} (one of ${all.join(', ')})`)
  return list as T[]
}

const SCENARIOS = ['steady', 'burst', 'latency', 'scale', 'storm'] as const
/** The reconnect storm needs resume: fastify-fanout, and the floor as the bare-reconnect baseline. */
const STORM_SYSTEMS: SystemName[] = ['fanout', 'floor']
/** The Cluster row answers one question, what a Cluster costs against one Redis: steady only. */
const CLUSTER_SCENARIOS: ScenarioName[] = ['steady']
type ScenarioName = typeof SCENARIOS[number]

interface Scenario {
  name: ScenarioName
  clients: number
  /** Events per measured round. */
  events: number
  /** Events per second; 0: as fast as possible. */
  rate: number
  /**
   * Measured rounds per system. The systems take turns round by round, so a noisy neighbour on
   * this shared machine weighs on all of them rather than on whichever ran at the wrong moment.
   */
  rounds: number
}

const scale = numberOption('scale', 1)
const replicaCount = Math.round(numberOption('replicas', 2))
const clientProcs = Math.round(numberOption('client-procs', 4))
const settleMs = numberOption('settle-ms', 3000)
const profileDir = option('profile')
// A run writes to bench/results/local/ (git-ignored) unless told otherwise, so a small run never
// overwrites the published figures the docs link to. A profiled run is slower than a plain one:
// its numbers go next to the profiles.
const outDir = option('out') ?? profileDir ?? join(ROOT, 'bench', 'results', 'local')
/** Systems that cannot run on this machine, and why: left out of the run and named in the report. */
const missing: Results['missing'] = []
const systems = listOption('systems', SYSTEMS).filter((system) => {
  if (system !== 'nchan') return true
  const found = nchanAvailable()
  if ('nginx' in found) return true
  const why = `${found.missing} (apt-get install nginx-light libnginx-mod-nchan)`
  if (option('systems') !== undefined) throw new Error(`--systems names nchan, but ${why}`)
  console.error(`[bench] Nchan not measured: ${why}`)
  missing.push({ system, why })
  return false
})
// The channels scenarios (bench/channels.ts) run only when --scenarios names them.
const named = listOption('scenarios', [...SCENARIOS, ...CHANNEL_SCENARIOS])
const channelScenarios = option('scenarios') === undefined ? [] : named.filter((n): n is ChannelScenario => (CHANNEL_SCENARIOS as readonly string[]).includes(n))
const scenarioNames = named.filter((n): n is ScenarioName => (SCENARIOS as readonly string[]).includes(n))

function scenario (name: ScenarioName, clients: number, events: number, rate: number, rounds: number): Scenario {
  const scaled = (value: number): number => Math.max(1, Math.round(value * scale))
  const given = (flag: string, fallback: number): number => option(flag) !== undefined ? Math.round(numberOption(flag, 0)) : fallback
  return {
    name,
    clients: given('clients', scaled(clients)),
    events: given('events', scaled(events)),
    rate: rate > 0 ? numberOption('rate', rate) : 0,
    rounds: name === 'scale' ? 1 : given('rounds', rounds)
  }
}

const scenarios: Record<ScenarioName, Scenario> = {
  // 2,000 clients, 20 events/s, 3 rounds of 3 s (issue 13 judges medians of three rounds).
  steady: scenario('steady', 2000, 60, 20, 3),
  // 500 clients, 400 events published as fast as possible; three such bursts.
  burst: scenario('burst', 500, 400, 0, 3),
  // 4,000 clients, 10 events/s, 3 rounds of 3 s: the latency comparison.
  latency: scenario('latency', 4000, 30, 10, 3),
  // As many idle connections as the descriptor cap allows over the replicas; then a few events.
  scale: scenario('scale', replicaCount * SOCKETS_PER_PROCESS, 5, 0, 1),
  // 2,000 clients on each replica, 20 events/s; one replica is SIGKILLed and its clients resume
  // on the others (see runStorm).
  storm: scenario('storm', replicaCount * 2000, 0, 20, 1)
}

// ---------------------------------------------------------------------------------------------
// Processes: every one is killed when the run ends, however it ends.

const children = new Set<ChildProcess>()
/** Children being stopped on purpose: their exit is not news. */
const stopping = new Set<ChildProcess>()
let shuttingDown = false
const tempDirs: string[] = []

function track (child: ChildProcess, name: string): ChildProcess {
  children.add(child)
  child.once('exit', (code, signal) => {
    children.delete(child)
    if (!stopping.has(child) && !shuttingDown) console.error(`[bench] ${name} (pid ${child.pid}) exited early: code ${code} signal ${signal}`)
  })
  return child
}

function cleanup (): void {
  shuttingDown = true
  for (const child of children) child.kill('SIGKILL')
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true })
}
process.on('exit', cleanup)
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => { cleanup(); process.exit(130) })
}

function tempDir (prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  tempDirs.push(dir)
  return dir
}

async function stop (child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  stopping.add(child)
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
  await exited
  clearTimeout(timer)
}

async function waitFor (what: string, check: () => Promise<boolean> | boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(50)
  }
}

function accepts (port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ port, host: '127.0.0.1' })
    socket.once('connect', () => { socket.destroy(); resolve(true) })
    socket.once('error', () => resolve(false))
  })
}

/** A forked bench process (load client, publisher) spoken to by request and reply. */
class Worker {
  #next = 1
  #waiting = new Map<number, { resolve: (reply: Reply) => void, reject: (err: Error) => void }>()
  readonly ready: Promise<void>

  constructor (readonly child: ChildProcess, readonly name: string) {
    track(child, name)
    this.ready = new Promise((resolve, reject) => {
      child.once('exit', (code) => {
        reject(new Error(`${name} exited with ${code}`))
        for (const waiter of this.#waiting.values()) waiter.reject(new Error(`${name} exited with ${code}`))
      })
      child.on('message', (reply: Reply) => {
        if (reply.id === 0) return resolve()
        const waiter = this.#waiting.get(reply.id)
        this.#waiting.delete(reply.id)
        if (reply.error) waiter?.reject(new Error(`${name}: ${reply.error}`))
        else waiter?.resolve(reply)
      })
    })
  }

  static async fork (file: string, name: string, env: Record<string, string> = {}): Promise<Worker> {
    const child = fork(join(DIST, 'bench', file), [], { execArgv: [], env: { ...process.env, ...env }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    const worker = new Worker(child, name)
    await worker.ready
    return worker
  }

  call<T = Record<string, unknown>> (op: string, fields: Record<string, unknown> = {}): Promise<T & Reply> {
    const id = this.#next++
    return new Promise((resolve, reject) => {
      this.#waiting.set(id, { resolve: resolve as (reply: Reply) => void, reject })
      this.child.send({ id, op, ...fields })
    })
  }

  async stop (): Promise<void> {
    await this.call('close').catch(() => {})
    await stop(this.child)
  }
}

// ---------------------------------------------------------------------------------------------
// The systems' server replicas

interface Replicas {
  system: SystemName
  ports: number[]
  /** The replicas: their CPU and RSS are what is measured. */
  procs: ChildProcess[]
  /** Processes that serve the run but are not measured (Nchan's publishing nginx). */
  helpers: ChildProcess[]
  /** Where the publisher POSTs events (Nchan). */
  publishUrl?: string
}

async function startRedis (): Promise<{ url: string, client: Redis, proc: ChildProcess }> {
  const port = await freePort()
  const dir = tempDir('bench-redis-')
  const proc = track(spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no'],
    { stdio: 'ignore' }), 'redis-server')
  await waitFor('redis-server', () => accepts(port))
  const url = `redis://127.0.0.1:${port}`
  return { url, client: new Redis(url), proc }
}

/**
 * Three cluster-enabled redis-servers made one Cluster with `redis-cli --cluster create`, no
 * replicas: fastify-fanout's keys and channel share a hash tag, so one primary serves them and the
 * other two are what a deployment's Cluster has besides. Bus ports come from freePort too.
 */
async function startCluster (): Promise<{ nodes: string, procs: ChildProcess[] }> {
  const ports: number[] = []
  const procs: ChildProcess[] = []
  for (let i = 0; i < 3; i++) {
    const [port, busPort] = [await freePort(), await freePort()]
    const dir = tempDir('bench-cluster-')
    procs.push(track(spawn('redis-server', ['--port', String(port), '--cluster-port', String(busPort), '--bind', '127.0.0.1', '--dir', dir,
      '--save', '', '--appendonly', 'no', '--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf'], { stdio: 'ignore' }), `cluster node ${i + 1}`))
    ports.push(port)
  }
  for (const port of ports) await waitFor(`cluster node on port ${port}`, () => accepts(port))
  const nodes = ports.map((port) => `127.0.0.1:${port}`)
  const create = track(spawn('redis-cli', ['--cluster', 'create', ...nodes, '--cluster-yes'], { stdio: ['ignore', 'pipe', 'pipe'] }), 'redis-cli --cluster create')
  stopping.add(create)
  let output = ''
  create.stdout?.on('data', (chunk: Buffer) => { output += chunk.toString() })
  create.stderr?.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const code = await new Promise<number | null>((resolve) => create.once('exit', resolve))
  if (code !== 0) throw new Error(`redis-cli --cluster create exited ${code}: ${output}`)
  await waitFor('the cluster to be ok on every node', async () => {
    const states = await Promise.all(ports.map(async (port) => {
      const node = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0 })
      try {
        return /cluster_state:ok/.test(await node.cluster('INFO'))
      } catch {
        return false
      } finally {
        node.disconnect()
      }
    }))
    return states.every(Boolean)
  })
  return { nodes: nodes.join(','), procs }
}

function profileArgs (system: SystemName): string[] {
  return profileDir ? ['--cpu-prof', `--cpu-prof-dir=${join(profileDir, system)}`] : []
}

function replicaCommand (system: SystemName, uploadDir: string, port: number, redisUrl: string): { command: string, args: string[], env: Record<string, string> } {
  if (system === 'nchan') {
    const { nginx } = nchanAvailable() as { nginx: string }
    return { command: nginx, args: nchanConfig(tempDir('bench-nchan-'), port, redisUrl, SOCKETS_PER_PROCESS), env: {} }
  }
  const profile = profileArgs(system)
  if (isFanout(system)) {
    return {
      command: process.execPath,
      args: [...profile, join(DIST, 'server.js')],
      env: {
        HOST: '127.0.0.1',
        REDIS_PREFIX: FANOUT_PREFIX,
        PUBLISHER: 'off',
        // Per-request logs would measure pino, not fan-out; the baselines log nothing either.
        LOG_LEVEL: 'warn',
        METRICS_INTERVAL_MS: '0',
        MAX_CONNECTIONS: String(SOCKETS_PER_PROCESS * 2),
        DRAIN_MS: '0',
        UPLOAD_DIR: uploadDir,
        UPLOAD_MIN_FREE_BYTES: '0'
      }
    }
  }
  const file = { socketio: 'socketio.js', naive: 'naive-ws.js', floor: 'floor.js' }[system]
  return { command: process.execPath, args: [...profile, join(DIST, 'bench', 'servers', file)], env: system === 'socketio' ? {} : { BENCH_CHANNEL: channelOf(system) } }
}

/** How many replicas Redis sees subscribed: a baseline's replica is not ready before that. */
async function subscribers (redis: Redis, system: Exclude<SystemName, 'fanout' | 'fanout-cluster'>): Promise<number> {
  // Nchan subscribes a replica only once it has a subscriber of its own (see setUp). The
  // Socket.IO adapter PSUBSCRIBEs its broadcast pattern just before it SUBSCRIBEs its channel.
  const channel = system === 'nchan' ? NCHAN_REDIS_CHANNEL : system === 'socketio' ? 'socket.io-request#/#' : channelOf(system)
  const [, count] = await redis.pubsub('NUMSUB', channel) as [string, number]
  return Number(count)
}

/** fastify-fanout says itself when it can deliver (docs/operations.md, "Health and readiness"), whatever its Redis layout. */
async function ready (port: number): Promise<boolean> {
  try {
    return (await fetch(`http://127.0.0.1:${port}/readyz`)).status === 200
  } catch {
    return false
  }
}

async function waitSubscribed (system: SystemName, ports: number[], before: number, expected: number): Promise<void> {
  if (isFanout(system)) {
    for (const port of ports) await waitFor(`fanout replica on port ${port} to be ready`, () => ready(port))
  } else {
    await waitFor(`${system} replicas to subscribe`, async () => (await subscribers(redis.client, system)) >= before + expected)
  }
}

async function startReplicas (system: SystemName): Promise<Replicas> {
  const uploadDir = tempDir('bench-uploads-')
  const ports: number[] = []
  const procs: ChildProcess[] = []
  const before = isFanout(system) ? 0 : await subscribers(redis.client, system)
  const helpers: ChildProcess[] = []
  let publishUrl: string | undefined
  if (system === 'nchan') {
    const port = await freePort()
    const { command, args } = replicaCommand(system, uploadDir, port, redis.url)
    helpers.push(track(spawn(command, args, { stdio: ['ignore', 'inherit', 'inherit'] }), 'nchan publishing nginx'))
    await waitFor(`nchan publishing nginx on port ${port}`, () => accepts(port))
    publishUrl = `http://127.0.0.1:${port}${NCHAN_PUBLISH_PATH}`
  }
  for (let i = 0; i < replicaCount; i++) {
    const port = await freePort()
    const { command, args, env } = replicaCommand(system, uploadDir, port, redis.url)
    const child = spawn(command, args, {
      cwd: ROOT,
      env: { ...process.env, ...env, PORT: String(port), ...redisEnv(system) },
      stdio: ['ignore', 'inherit', 'inherit']
    })
    track(child, `${system} replica ${i + 1}`)
    ports.push(port)
    procs.push(child)
  }
  for (const port of ports) await waitFor(`${system} replica on port ${port}`, () => accepts(port))
  if (system !== 'nchan') await waitSubscribed(system, ports, before, replicaCount)
  return { system, ports, procs, helpers, publishUrl }
}

// ---------------------------------------------------------------------------------------------
// Load clients and measurement

interface ClientStats { received: number, lastAt: number, closed: number, open: number, hist: number[] }

async function startClients (system: SystemName, replicas: Replicas, count: number): Promise<{ workers: Worker[], connected: number, seconds: number }> {
  const procs = Math.max(clientProcs, Math.ceil(count / SOCKETS_PER_PROCESS))
  const workers = await Promise.all(Array.from({ length: procs }, (_, i) => Worker.fork('client.js', `load client ${i + 1}`)))
  const urls = replicas.ports.map((port) => clientUrl(system, port))
  const started = Date.now()
  const results = await Promise.all(workers.map((worker, i) => {
    const share = Math.floor(count / procs) + (i < count % procs ? 1 : 0)
    // Rotate the replica list so every process spreads its share over all replicas evenly.
    const rotated = urls.map((_, j) => urls[(i + j) % urls.length])
    return worker.call<{ connected: number, failed: number, errors: string[] }>('connect', { system, urls: rotated, count: share, concurrency: 50 })
  }))
  const connected = results.reduce((sum, r) => sum + r.connected, 0)
  const failed = results.reduce((sum, r) => sum + r.failed, 0)
  if (failed > 0) console.error(`[bench] ${system}: ${failed} of ${count} connections failed: ${[...new Set(results.flatMap((r) => r.errors))].join('; ')}`)
  return { workers, connected, seconds: (Date.now() - started) / 1000 }
}

async function received (workers: Worker[]): Promise<number> {
  const counts = await Promise.all(workers.map((w) => w.call<{ received: number }>('count')))
  return counts.reduce((sum, c) => sum + c.received, 0)
}

/** Waits until `expected` deliveries arrived, or until none arrived for a while. */
async function delivered (workers: Worker[], expected: number, stallMs = 10_000): Promise<number> {
  let last = -1
  let progressAt = Date.now()
  for (;;) {
    const now = await received(workers)
    if (now >= expected) return now
    if (now !== last) { last = now; progressAt = Date.now() }
    if (Date.now() - progressAt > stallMs) return now
    await sleep(50)
  }
}

/** When each system's rounds were measured: the profile summary counts only those samples. */
const measuredWindows = new Map<SystemName, ProfileWindow[]>(SYSTEMS.map((system) => [system, []]))

interface Window { serverCpu: number, clientCpu: number[], machine: { busy: number, total: number }, at: number }

function sample (replicas: Replicas, workers: Worker[]): Window {
  return {
    serverCpu: replicas.procs.reduce((sum, p) => sum + cpuSeconds(p.pid as number), 0),
    clientCpu: workers.map((w) => cpuSeconds(w.child.pid as number)),
    machine: machineTicks(),
    at: Date.now()
  }
}

/** One system under load: its replicas, its load clients and its publisher. */
interface Setup { system: SystemName, replicas: Replicas, workers: Worker[], connected: number, publisher: Worker, connectSeconds: number }

/** What the measured rounds of one system add up to. */
class Tally {
  delivered = 0
  seconds = 0
  serverCpu = 0
  wall = 0
  clientCpu: number[] = []
  machineBusy = 0
  machineTotal = 0
  hist = histogram()
  rounds: RoundFigures[] = []
}

async function setUp (system: SystemName, replicas: Replicas, clients: number): Promise<Setup> {
  const { workers, connected, seconds } = await startClients(system, replicas, clients)
  if (system === 'nchan') await waitSubscribed(system, replicas.ports, 0, Math.min(replicaCount, connected))
  const publisher = await Worker.fork('publisher.js', `${system} publisher`,
    { BENCH_SYSTEM: system, ...redisEnv(system), ...replicas.publishUrl ? { BENCH_PUBLISH_URL: replicas.publishUrl } : {} })
  return { system, replicas, workers, connected, publisher, connectSeconds: seconds }
}

async function tearDown (setup: Setup): Promise<void> {
  await Promise.all([...setup.workers, setup.publisher].map((w) => w.stop()))
}

/** Publishes one round and waits for it to be delivered (or to stall), adding it to `tally`. */
async function round (setup: Setup, s: Scenario, tally: Tally): Promise<void> {
  const { replicas, workers, publisher, connected } = setup
  await Promise.all(workers.map((w) => w.call('reset')))
  const start = sample(replicas, workers)
  const from = monotonicUs()
  const { startedAt } = await publisher.call<{ startedAt: number }>('publish', { count: s.events, rate: s.rate })
  const count = await delivered(workers, connected * s.events)
  tally.delivered += count
  measuredWindows.get(setup.system)?.push([from, monotonicUs()])
  const end = sample(replicas, workers)
  const stats = await Promise.all(workers.map((w) => w.call<ClientStats>('stats')))
  const hist = histogram()
  for (const st of stats) merge(hist, st.hist)
  merge(tally.hist, hist)
  const seconds = (Math.max(...stats.map((st) => st.lastAt)) - startedAt) / 1000
  tally.seconds += seconds
  tally.serverCpu += end.serverCpu - start.serverCpu
  tally.rounds.push({
    deliveriesPerSec: count / seconds,
    cpuUsPerDelivery: ((end.serverCpu - start.serverCpu) * 1e6) / count,
    p50Ms: quantile(hist, 0.5),
    p99Ms: quantile(hist, 0.99)
  })
  tally.wall += (end.at - start.at) / 1000
  end.clientCpu.forEach((cpu, i) => { tally.clientCpu[i] = (tally.clientCpu[i] ?? 0) + cpu - start.clientCpu[i] })
  tally.machineBusy += end.machine.busy - start.machine.busy
  tally.machineTotal += end.machine.total - start.machine.total
}

function row (setup: Setup, s: Scenario, t: Tally, extra: Partial<Row> = {}): Row {
  const clientCpu = t.clientCpu.map((cpu) => cpu / t.wall)
  return {
    scenario: s.name,
    system: setup.system,
    replicas: replicaCount,
    clients: s.clients,
    connected: setup.connected,
    events: s.events,
    rate: s.rate,
    rounds: s.rounds,
    expected: setup.connected * s.events * s.rounds,
    delivered: t.delivered,
    seconds: t.seconds,
    deliveriesPerSec: median(t.rounds.map((r) => r.deliveriesPerSec)),
    serverCpuSec: t.serverCpu,
    cpuUsPerDelivery: median(t.rounds.map((r) => r.cpuUsPerDelivery)),
    p50Ms: median(t.rounds.map((r) => r.p50Ms)),
    p99Ms: median(t.rounds.map((r) => r.p99Ms)),
    maxMs: quantile(t.hist, 1),
    perRound: t.rounds,
    clientCpuMaxPct: Math.max(...clientCpu) * 100,
    clientCpuSumPct: clientCpu.reduce((a, b) => a + b, 0) * 100,
    machineBusyPct: (t.machineBusy / t.machineTotal) * 100,
    ...extra
  }
}

/**
 * steady, burst, latency: every system's clients connect, each system gets one unmeasured
 * warm-up round, then the systems take turns, one measured round each, `rounds` times over.
 */
async function runLoad (s: Scenario, running: Replicas[]): Promise<Row[]> {
  const setups: Setup[] = []
  try {
    for (const replicas of running) setups.push(await setUp(replicas.system, replicas, s.clients))
    for (const setup of setups) {
      // Up to 2 s of events, so JIT and buffers are warm before anything is measured.
      const warmup = s.rate > 0 ? Math.min(s.events, Math.max(1, Math.round(s.rate * 2))) : s.events
      await setup.publisher.call('publish', { count: warmup, rate: s.rate })
      await delivered(setup.workers, setup.connected * warmup)
    }
    const tallies = setups.map(() => new Tally())
    for (let r = 0; r < s.rounds; r++) {
      // Each round starts with the next system, so none is always first after the pause.
      for (let i = 0; i < setups.length; i++) {
        const at = (i + r) % setups.length
        await round(setups[at], s, tallies[at])
      }
    }
    return setups.map((setup, i) => row(setup, s, tallies[i]))
  } finally {
    await Promise.all(setups.map(tearDown))
  }
}

/** scale: replica RSS with no connection, then with N idle ones; then one burst to all of them. */
async function runScale (s: Scenario, replicas: Replicas): Promise<Row> {
  const rss = (): number => replicas.procs.reduce((sum, p) => sum + rssBytes(p.pid as number), 0)
  await sleep(settleMs)
  const idleRss = rss()
  const setup = await setUp(replicas.system, replicas, s.clients)
  try {
    await sleep(settleMs)
    const loadedRss = rss()
    const tally = new Tally()
    await round(setup, s, tally)
    return row(setup, s, tally, {
      idleRssMB: idleRss / 2 ** 20,
      loadedRssMB: loadedRss / 2 ** 20,
      rssPerConnKB: (loadedRss - idleRss) / setup.connected / 1024,
      connectSeconds: setup.connectSeconds
    })
  } finally {
    await tearDown(setup)
  }
}

/**
 * The reconnect storm: `clients` spread over the replicas, events at `rate`; the first replica is
 * SIGKILLed and its clients reconnect at once to the others with `?since=<last id they got>`.
 * Measured: the time from the kill until every one of them has received an event published after
 * it (live again), the survivors' RSS before and at its peak, and the gaps and duplicates each
 * client saw in the publisher's numbering. A system without resume (the floor) reconnects alike and
 * loses what was published meanwhile: that is the baseline resume is measured against.
 */
async function runStorm (s: Scenario, replicas: Replicas): Promise<StormResult> {
  if (replicas.ports.length < 2) throw new Error('the storm needs --replicas=2 or more')
  const [victimPort, ...survivorPorts] = replicas.ports
  const [victim, ...survivors] = replicas.procs
  const survivorUrls = survivorPorts.map((port) => clientUrl(replicas.system, port))
  const onVictim = Math.round(s.clients / replicas.ports.length)
  const procs = Math.max(clientProcs, Math.ceil(s.clients / SOCKETS_PER_PROCESS))
  const workers = await Promise.all(Array.from({ length: procs }, (_, i) => Worker.fork('client.js', `storm client ${i + 1}`)))
  const publisher = await Worker.fork('publisher.js', `${replicas.system} storm publisher`, { BENCH_SYSTEM: replicas.system, ...redisEnv(replicas.system) })
  const rss = (procs: ChildProcess[]): number[] => procs.map((p) => rssBytes(p.pid as number))
  const share = (total: number, i: number): number => Math.floor(total / procs) + (i < total % procs ? 1 : 0)
  try {
    await Promise.all(workers.map((w, i) => Promise.all([
      w.call('connect-resuming', { url: clientUrl(replicas.system, victimPort), resumeUrls: survivorUrls, count: share(onVictim, i) }),
      w.call('connect', { system: replicas.system, urls: survivorUrls, count: share(s.clients - onVictim, i), concurrency: 50 })
    ])))
    // Published until the storm is over, numbered; `publish` resolves only after `stop`.
    const publishing = publisher.call('publish', { count: 1e9, rate: s.rate, numbered: true })
    await waitFor('every storm client to get an event', async () =>
      (await Promise.all(workers.map((w) => w.call<{ withId: number, clients: number }>('storm-stats'))))
        .every((st) => st.withId === st.clients || !isFanout(replicas.system)), 30_000)
    await sleep(settleMs)
    const before = rss(survivors)
    const killedAt = nowMs()
    await Promise.all(workers.map((w) => w.call('arm', { after: killedAt })))
    stopping.add(victim)
    victim.kill('SIGKILL')
    let peak = before
    let stats: StormStats[] = []
    const deadline = Date.now() + 120_000
    for (;;) {
      const now = rss(survivors)
      peak = peak.map((p, i) => Math.max(p, now[i]))
      stats = await Promise.all(workers.map((w) => w.call<StormStats>('storm-stats')))
      if (stats.every((st) => st.live === st.clients) || Date.now() > deadline) break
      await sleep(50)
    }
    const allLiveAt = nowMs()
    // RSS can keep growing after the last client is live (replays still being freed, GC).
    while (nowMs() - allLiveAt < settleMs) {
      const now = rss(survivors)
      peak = peak.map((p, i) => Math.max(p, now[i]))
      await sleep(50)
    }
    await publisher.call('stop')
    await publishing
    const after = await Promise.all(workers.map((w) => w.call<StormStats>('storm-stats')))
    const liveAfter = stats.flatMap((st) => st.liveAt).map((at) => (at - killedAt) / 1000).sort((a, b) => a - b)
    const sum = (values: number[]): number => values.reduce((a, b) => a + b, 0)
    return {
      system: replicas.system,
      replicas: replicas.ports.length,
      clients: s.clients,
      resuming: sum(stats.map((st) => st.clients)),
      live: liveAfter.length,
      rate: s.rate,
      secondsToAllLive: liveAfter.length === sum(stats.map((st) => st.clients)) ? liveAfter[liveAfter.length - 1] ?? NaN : NaN,
      p50SecondsToLive: median(liveAfter),
      survivorsRssBeforeMB: sum(before) / 2 ** 20,
      survivorsRssPeakMB: sum(peak) / 2 ** 20,
      rssGrowthMB: (sum(peak) - sum(before)) / 2 ** 20,
      gaps: sum(after.map((st) => st.gaps)),
      duplicates: sum(after.map((st) => st.duplicates)),
      retries: sum(after.map((st) => st.retries)),
      errors: [...new Set(after.flatMap((st) => st.errors))]
    }
  } finally {
    await Promise.all([...workers, publisher].map((w) => w.stop()))
  }
}

interface StormStats { clients: number, withId: number, live: number, liveAt: number[], gaps: number, duplicates: number, retries: number, errors: string[] }

async function stopReplicas (replicas: Replicas): Promise<void> {
  await Promise.all([...replicas.procs, ...replicas.helpers].map((p) => stop(p, 15_000)))
}

// ---------------------------------------------------------------------------------------------
// The run

function machine (): Results['machine'] {
  const model = cpus()[0]?.model ?? 'unknown'
  return {
    cpu: model,
    cores: cpus().length,
    ramGB: Number((totalmem() / 2 ** 30).toFixed(1)),
    node: process.version,
    kernel: release(),
    loadAvgAtStart: loadavg().map((l) => Number(l.toFixed(2)))
  }
}

function commandLine (): string {
  const env = Object.entries(process.env).filter(([k]) => k.startsWith('BENCH_')).map(([k, v]) => `${k}=${v} `).join('')
  const args = process.argv.slice(2).join(' ')
  return process.env.npm_lifecycle_event === 'bench'
    ? `${env}npm run bench${args ? ` -- ${args}` : ''}`
    : `${env}node dist/bench/run.js${args ? ` ${args}` : ''}`
}

if (profileDir) mkdirSync(profileDir, { recursive: true })
const redis = await startRedis()
const cluster = systems.includes('fanout-cluster') && scenarioNames.some((name) => CLUSTER_SCENARIOS.includes(name)) ? await startCluster() : undefined

/** Where a system's replicas and publisher find Redis: the Cluster row its Cluster, the rest the one server. */
function redisEnv (system: SystemName): Record<string, string> {
  if (system !== 'fanout-cluster') return { REDIS_URL: redis.url }
  if (cluster === undefined) throw new Error('the Cluster was not started')
  return { REDIS_URL: '', REDIS_CLUSTER_NODES: cluster.nodes }
}
/** The systems a scenario measures: every one selected, but the Cluster row only in CLUSTER_SCENARIOS. */
function measuredIn (name: ScenarioName): SystemName[] {
  return systems.filter((system) => system !== 'fanout-cluster' || CLUSTER_SCENARIOS.includes(name))
}
const startedAt = new Date()
const rows: Row[] = []
const errors: string[] = []
const loadScenarios = scenarioNames.filter((name) => name !== 'scale' && name !== 'storm')
const storms: StormResult[] = []

if (loadScenarios.length > 0) {
  const running: Replicas[] = []
  for (const system of new Set(loadScenarios.flatMap(measuredIn))) running.push(await startReplicas(system))
  for (const name of loadScenarios) {
    const taking = running.filter((replicas) => measuredIn(name).includes(replicas.system))
    console.error(`[bench] ${name}: ${scenarios[name].clients} clients per system, ${taking.map((r) => r.system).join(', ')} taking turns`)
    try {
      rows.push(...await runLoad(scenarios[name], taking))
    } catch (err) {
      errors.push(`${name}: ${(err as Error).message}`)
    }
  }
  await Promise.all(running.map(stopReplicas))
}
if (scenarioNames.includes('scale')) {
  for (const system of measuredIn('scale')) {
    // One system at a time (the descriptor cap is per process, memory is not), on fresh
    // replicas, so "RSS with no connection" is not swollen by the earlier scenarios.
    console.error(`[bench] scale: ${system}, ${scenarios.scale.clients} clients`)
    const replicas = await startReplicas(system)
    try {
      rows.push(await runScale(scenarios.scale, replicas))
    } catch (err) {
      errors.push(`${system} scale: ${(err as Error).message}`)
    }
    await stopReplicas(replicas)
  }
}
if (scenarioNames.includes('storm')) {
  for (const system of systems.filter((name) => STORM_SYSTEMS.includes(name))) {
    console.error(`[bench] storm: ${system}, ${scenarios.storm.clients} clients, one replica SIGKILLed`)
    const replicas = await startReplicas(system)
    try {
      storms.push(await runStorm(scenarios.storm, replicas))
    } catch (err) {
      errors.push(`${system} storm: ${(err as Error).message}`)
    }
    await stopReplicas(replicas)
  }
}
// ---- channels, cluster-spread (bench/channels.ts)
let channels: ChannelsResult | undefined
if (channelScenarios.length > 0) {
  try {
    const context = { option, numberOption, scale, replicas: replicaCount, clientProcs, settleMs, systems, redis, track, stop, tempDir, freePort, waitFor, accepts, startCluster }
    channels = await runChannels({
      ...context,
      socketsPerProcess: SOCKETS_PER_PROCESS,
      fork: (file, name, env) => Worker.fork(file, name, env),
      fanoutReplica: (uploadDir) => replicaCommand('fanout', uploadDir, 0, ''),
      profileArgs,
      dist: DIST,
      root: ROOT,
      measured: (system, window) => measuredWindows.get(system)?.push(window)
    }, channelScenarios)
    errors.push(...channels.errors.map((e) => `channels ${e}`))
  } catch (err) {
    errors.push(`channels: ${(err as Error).message}`)
  }
}
// ----
redis.client.disconnect()
await Promise.all([redis.proc, ...cluster?.procs ?? []].map((proc) => stop(proc)))

const profiles: Partial<Record<SystemName, ProfileSummary>> = {}
if (profileDir) {
  for (const system of systems) {
    const dir = join(profileDir, system)
    const files = (existsSync(dir) ? readdirSync(dir) : []).filter((f) => f.endsWith('.cpuprofile')).map((f) => join(dir, f))
    if (files.length > 0) profiles[system] = summarise(files, measuredWindows.get(system))
  }
}

const results: Results = {
  startedAt: startedAt.toISOString(),
  command: commandLine(),
  machine: machine(),
  replicas: replicaCount,
  clientProcs,
  scenarios: scenarioNames.map((name) => scenarios[name]),
  systems,
  missing,
  rows,
  storms,
  errors
}
const report = [markdown(results), ...channels ? [channelsMarkdown(channels)] : [], ...Object.entries(profiles).map(([system, summary]) =>
  `## CPU profile: ${LABELS[system as SystemName]} replicas, measured rounds only\n\n${profileMarkdown(summary)}`)].join('\n\n')
console.log(report)
mkdirSync(outDir, { recursive: true })
writeFileSync(join(outDir, 'latest.json'), JSON.stringify({ ...results, channels, profiles }, null, 2) + '\n')
writeFileSync(join(outDir, 'latest.md'), report + '\n')
writeFileSync(join(outDir, 'latest.svg'), chartSvg(results, channels))
console.error(`[bench] wrote ${join(outDir, 'latest.json')}, latest.md and latest.svg`)
process.exitCode = errors.length > 0 ? 1 : 0
