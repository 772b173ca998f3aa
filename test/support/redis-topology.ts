// Real Redis high-availability topologies on loopback for tests: a primary with replicas watched by
// three Sentinels, or a six-node Cluster. Every process runs under `setpriv --pdeathsig KILL` so it
// dies with the test runner even when the runner is SIGKILLed, and every process and temp dir is
// removed at teardown.
import { writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import { freePort, run, tempDir, waitFor, type Proc } from './helper.js'

type Tap = { teardown (fn: () => unknown): void }

export interface HostPort { host: string, port: number }

export interface RedisNode extends HostPort {
  /** The redis-server process (restarted by `restart`). */
  proc: Proc
  dir: string
}

const HOST = '127.0.0.1'

/** `setpriv --pdeathsig KILL -- command …`: the child gets SIGKILL when its parent (the runner) dies. */
function spawnOrphanProof (t: Tap, command: string, args: string[], cwd: string): Proc {
  return run(t, 'setpriv', ['--pdeathsig', 'KILL', '--', command, ...args], {}, cwd)
}

/**
 * One command against one server, on a fresh connection that never retries and never waits long:
 * the harness asks nodes that may be dead, and a hanging probe would hide what the test measures.
 */
export async function ask (node: HostPort, args: Array<string | number>, timeoutMs = 2000): Promise<unknown> {
  const redis = new Redis({
    host: node.host,
    port: node.port,
    lazyConnect: true,
    enableReadyCheck: false,
    enableOfflineQueue: true,
    retryStrategy: () => null,
    maxRetriesPerRequest: 0,
    connectTimeout: timeoutMs,
    commandTimeout: timeoutMs
  })
  redis.on('error', () => {}) // the rejection of `call` carries the error
  try {
    await redis.connect()
    return await redis.call(String(args[0]), ...args.slice(1).map(String))
  } finally {
    redis.disconnect()
  }
}

/** `ask`, but undefined instead of an error (a dead node while polling). */
async function tryAsk (node: HostPort, args: Array<string | number>): Promise<unknown> {
  try { return await ask(node, args, 1000) } catch { return undefined }
}

/** `field:value` lines of INFO / CLUSTER INFO as an object. */
function infoFields (text: unknown): Record<string, string> {
  const fields: Record<string, string> = {}
  for (const line of String(text ?? '').split('\r\n')) {
    const at = line.indexOf(':')
    if (at > 0) fields[line.slice(0, at)] = line.slice(at + 1)
  }
  return fields
}

/** `waitFor` for a value: resolves with the first one `fn` finds (waitFor only returns truthy ones). */
async function poll<T> (fn: () => Promise<T | undefined>, timeoutMs: number, what: string): Promise<T> {
  return await waitFor(fn, timeoutMs, what) as T
}

function isAlive (node: RedisNode): boolean {
  return node.proc.child.exitCode === null && node.proc.child.signalCode === null
}

function same (a: HostPort, b: HostPort): boolean {
  return a.host === b.host && a.port === b.port
}

async function canListen (port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer()
    server.unref()
    server.once('error', () => resolve(false))
    server.listen(port, HOST, () => server.close(() => resolve(true)))
  })
}

/**
 * A port free on loopback whose cluster bus port (port + 10000) is free too. Random in 20000–29999
 * so that both stay below the kernel's ephemeral range, where `freePort` and outgoing connections
 * would otherwise keep taking the bus port away.
 */
async function freeClusterPort (taken: Set<number>): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 20000 + Math.floor(Math.random() * 10000)
    if (taken.has(port) || taken.has(port + 10000)) continue
    if (await canListen(port) && await canListen(port + 10000)) {
      taken.add(port)
      taken.add(port + 10000)
      return port
    }
  }
  throw new Error('no free port pair (port, port + 10000) on 127.0.0.1')
}

function redisArgs (port: number, dir: string, extra: string[] = []): string[] {
  return ['--port', String(port), '--bind', HOST, '--dir', dir, '--save', '', '--appendonly', 'no', ...extra]
}

async function startNode (t: Tap, port: number, extra: string[], prefix: string): Promise<RedisNode> {
  const dir = tempDir(t, prefix)
  const node: RedisNode = { host: HOST, port, dir, proc: spawnOrphanProof(t, 'redis-server', redisArgs(port, dir, extra), dir) }
  await waitFor(async () => (await tryAsk(node, ['PING'])) === 'PONG' || !isAlive(node), 10_000, `redis-server on ${port}`)
  if (!isAlive(node)) throw new Error(`redis-server on ${port} exited: ${node.proc.output()}`)
  return node
}

/** Sends `signal` (SIGKILL by default) to a node; resolves once it has exited, or at once for SIGSTOP/SIGCONT. */
async function signalNode (node: RedisNode, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  if (signal === 'SIGSTOP' || signal === 'SIGCONT') {
    node.proc.child.kill(signal)
    return
  }
  await node.proc.kill(signal)
}

export interface SentinelOptions {
  replicas?: number
  sentinels?: number
  /** Sentinel `down-after-milliseconds`: how long the primary must be silent before it is suspected. */
  downAfterMs?: number
  /** Sentinel `failover-timeout`. */
  failoverTimeoutMs?: number
  name?: string
}

export interface SentinelTopology {
  name: string
  sentinels: HostPort[]
  /** Redis data nodes: [0] is the first primary, the rest its replicas. */
  nodes: RedisNode[]
  /** The sentinel processes, in the order of `sentinels`. */
  sentinelNodes: RedisNode[]
  /** The primary as a live sentinel reports it now. */
  primary (): Promise<HostPort>
  kill (node: HostPort, signal?: NodeJS.Signals): Promise<void>
  /**
   * Resolves once every live sentinel names a primary other than `from` and that node says it is
   * a master; rejects after `timeoutMs`.
   */
  waitForFailover (from: HostPort, timeoutMs?: number): Promise<HostPort>
}

/** A primary, its replicas and `sentinels` Sentinels (quorum 2) watching them, on free loopback ports. */
export async function startSentinels (t: Tap, options: SentinelOptions = {}): Promise<SentinelTopology> {
  const { replicas = 1, sentinels = 3, downAfterMs = 1000, failoverTimeoutMs = 10_000, name = 'fanout' } = options
  const primary = await startNode(t, await freePort(), [], 'fanout-sentinel-primary-')
  const nodes = [primary]
  for (let i = 0; i < replicas; i++) {
    nodes.push(await startNode(t, await freePort(), ['--replicaof', HOST, String(primary.port)], 'fanout-sentinel-replica-'))
  }
  await waitFor(async () => {
    const info = infoFields(await tryAsk(primary, ['INFO', 'replication']))
    return Number(info.connected_slaves) === replicas &&
      Object.entries(info).filter(([k, v]) => /^slave\d+$/.test(k) && v.includes('state=online')).length === replicas
  }, 15_000, 'replicas to sync')

  const sentinelNodes: RedisNode[] = []
  for (let i = 0; i < sentinels; i++) {
    const port = await freePort()
    const dir = tempDir(t, 'fanout-sentinel-')
    // Sentinel rewrites its config file (discovered replicas, sentinels, epochs), so it gets its own.
    const config = join(dir, 'sentinel.conf')
    writeFileSync(config, [
      `port ${port}`,
      `bind ${HOST}`,
      `dir ${dir}`,
      `sentinel monitor ${name} ${HOST} ${primary.port} 2`,
      `sentinel down-after-milliseconds ${name} ${downAfterMs}`,
      `sentinel failover-timeout ${name} ${failoverTimeoutMs}`,
      `sentinel parallel-syncs ${name} 1`,
      ''
    ].join('\n'))
    const node: RedisNode = { host: HOST, port, dir, proc: spawnOrphanProof(t, 'redis-server', [config, '--sentinel'], dir) }
    sentinelNodes.push(node)
  }
  // Ready means every sentinel knows every replica and every other sentinel: only then can a
  // failover be authorised (majority) and a replica be chosen.
  await waitFor(async () => {
    for (const s of sentinelNodes) {
      const master = await tryAsk(s, ['SENTINEL', 'MASTER', name])
      if (!Array.isArray(master)) return false
      const fields: Record<string, string> = {}
      for (let i = 0; i < master.length; i += 2) fields[String(master[i])] = String(master[i + 1])
      if (Number(fields['num-slaves']) !== replicas || Number(fields['num-other-sentinels']) !== sentinels - 1) return false
    }
    return true
  }, 20_000, 'sentinels to discover replicas and each other')

  const all = [...nodes, ...sentinelNodes]
  const find = (target: HostPort): RedisNode => {
    const node = all.find((n) => same(n, target))
    if (node === undefined) throw new Error(`no node ${target.host}:${target.port} in this topology`)
    return node
  }
  const askedPrimary = async (): Promise<HostPort | undefined> => {
    const answers = []
    for (const s of sentinelNodes.filter(isAlive)) {
      const addr = await tryAsk(s, ['SENTINEL', 'GET-MASTER-ADDR-BY-NAME', name])
      if (Array.isArray(addr)) answers.push({ host: String(addr[0]), port: Number(addr[1]) })
    }
    return answers[0]
  }
  return {
    name,
    sentinels: sentinelNodes.map(({ host, port }) => ({ host, port })),
    nodes,
    sentinelNodes,
    async primary () {
      const found = await askedPrimary()
      if (found === undefined) throw new Error('no sentinel answers')
      return found
    },
    kill: (node, signal) => signalNode(find(node), signal),
    async waitForFailover (from, timeoutMs = 30_000) {
      return poll(async () => {
        const answers = []
        for (const s of sentinelNodes.filter(isAlive)) {
          const addr = await tryAsk(s, ['SENTINEL', 'GET-MASTER-ADDR-BY-NAME', name])
          if (!Array.isArray(addr)) return undefined
          answers.push({ host: String(addr[0]), port: Number(addr[1]) })
        }
        const next = answers[0]
        if (next === undefined || same(next, from) || !answers.every((a) => same(a, next))) return undefined
        const role = await tryAsk(next, ['ROLE'])
        return Array.isArray(role) && role[0] === 'master' ? next : undefined
      }, timeoutMs, `sentinels to fail over from ${from.port}`)
    }
  }
}

export interface ClusterOptions {
  primaries?: number
  replicasPerPrimary?: number
  /** `cluster-node-timeout`: how long a node may be unreachable before it is marked failing. */
  nodeTimeoutMs?: number
}

export interface ClusterTopology {
  nodes: RedisNode[]
  /** The hash slot of a key (CLUSTER KEYSLOT). */
  slotOf (key: string): Promise<number>
  /** The primary serving `key`'s slot, as a live node reports it now. */
  ownerOf (key: string): Promise<HostPort>
  /** The primary serving `slot`, as a live node reports it now. */
  ownerOfSlot (slot: number): Promise<HostPort>
  kill (node: HostPort, signal?: NodeJS.Signals): Promise<void>
  /**
   * Resolves once every node that answers agrees that `slot` is served by a primary other than
   * `from`, that primary says it is a master, and every node that answers reports `cluster_state:ok`.
   */
  waitForFailover (slot: number, from: HostPort, timeoutMs?: number): Promise<HostPort>
}

/**
 * The primary serving `slot` according to one node's CLUSTER SLOTS: null if the node answers that
 * no one serves it, undefined if the node does not answer (dead or frozen).
 */
async function slotOwnerSeenBy (node: HostPort, slot: number): Promise<HostPort | null | undefined> {
  const slots = await tryAsk(node, ['CLUSTER', 'SLOTS'])
  if (!Array.isArray(slots)) return undefined
  for (const range of slots as Array<[number, number, [string, number]]>) {
    if (slot >= range[0] && slot <= range[1]) return { host: String(range[2][0]), port: Number(range[2][1]) }
  }
  return null
}

/** A Redis Cluster of `primaries` primaries with `replicasPerPrimary` replicas each, on free loopback ports. */
export async function startCluster (t: Tap, options: ClusterOptions = {}): Promise<ClusterTopology> {
  const { primaries = 3, replicasPerPrimary = 1, nodeTimeoutMs = 1000 } = options
  const taken = new Set<number>()
  const nodes: RedisNode[] = []
  for (let i = 0; i < primaries * (1 + replicasPerPrimary); i++) {
    nodes.push(await startNode(t, await freeClusterPort(taken), [
      '--cluster-enabled', 'yes',
      '--cluster-config-file', 'nodes.conf',
      '--cluster-node-timeout', String(nodeTimeoutMs)
    ], 'fanout-cluster-'))
  }
  const dir = tempDir(t, 'fanout-cluster-create-')
  const create = run(t, 'setpriv', ['--pdeathsig', 'KILL', '--', 'redis-cli', '--cluster', 'create',
    ...nodes.map((n) => `${n.host}:${n.port}`), '--cluster-replicas', String(replicasPerPrimary), '--cluster-yes'], {}, dir)
  const created = await create.exited
  if (created.code !== 0) throw new Error(`redis-cli --cluster create failed: ${create.output()}`)
  await waitFor(async () => {
    for (const node of nodes) {
      const info = infoFields(await tryAsk(node, ['CLUSTER', 'INFO']))
      if (info.cluster_state !== 'ok' || Number(info.cluster_known_nodes) !== nodes.length || Number(info.cluster_slots_ok) !== 16384) return false
    }
    // A replica that has not finished its first sync cannot be promoted.
    for (const node of nodes) {
      const role = await tryAsk(node, ['ROLE'])
      if (!Array.isArray(role)) return false
      if (role[0] === 'slave' && role[3] !== 'connected') return false
    }
    return true
  }, 30_000, 'the cluster to be ok on every node')

  const find = (target: HostPort): RedisNode => {
    const node = nodes.find((n) => same(n, target))
    if (node === undefined) throw new Error(`no node ${target.host}:${target.port} in this cluster`)
    return node
  }
  const slotOf = async (key: string): Promise<number> => {
    for (const node of nodes.filter(isAlive)) {
      const slot = await tryAsk(node, ['CLUSTER', 'KEYSLOT', key])
      if (typeof slot === 'number') return slot
    }
    throw new Error('no cluster node answers')
  }
  const ownerOfSlot = async (slot: number): Promise<HostPort> => {
    for (const node of nodes.filter(isAlive)) {
      const owner = await slotOwnerSeenBy(node, slot)
      if (owner === null) throw new Error(`no primary serves slot ${slot}`)
      if (owner !== undefined) return owner
    }
    throw new Error('no cluster node answers')
  }
  return {
    nodes,
    slotOf,
    ownerOfSlot,
    ownerOf: async (key) => ownerOfSlot(await slotOf(key)),
    kill: (node, signal) => signalNode(find(node), signal),
    async waitForFailover (slot, from, timeoutMs = 30_000) {
      return poll(async () => {
        let next: HostPort | undefined
        for (const node of nodes.filter(isAlive)) {
          const owner = await slotOwnerSeenBy(node, slot)
          if (owner === undefined) continue // frozen (SIGSTOP): not part of what the cluster agrees on
          if (owner === null || same(owner, from) || (next !== undefined && !same(owner, next))) return undefined
          next = owner
          if (infoFields(await tryAsk(node, ['CLUSTER', 'INFO'])).cluster_state !== 'ok') return undefined
        }
        if (next === undefined) return undefined
        const role = await tryAsk(next, ['ROLE'])
        return Array.isArray(role) && role[0] === 'master' ? next : undefined
      }, timeoutMs, `slot ${slot} to fail over from ${from.port}`)
    }
  }
}

/** Milliseconds since `start` (from `performance.now()`), rounded. */
export function since (start: number): number {
  return Math.round(performance.now() - start)
}
