// Where Redis is and how to reach it: a single server (URL), a primary found through Sentinel, or a
// Cluster. The one place that turns configuration into ioredis connections, so that the broker, the
// worker and the tests reach all three topologies the same way. Framework-free.
import { isIP } from 'node:net'
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis'
import { retryDelay } from './retry.js'

export interface HostPort { host: string, port: number }

/**
 * A single server: `{ url }`. Sentinel: `{ sentinels, name }`, with credentials, database and TLS
 * of the data nodes taken from an optional `url` (its host and port are not used). Cluster:
 * `{ clusterNodes }`, a few nodes to discover the rest from, credentials and TLS from `url` alike.
 */
export type RedisTarget =
  | { url: string }
  | { sentinels: HostPort[], name: string, url?: string, sentinelPassword?: string }
  | { clusterNodes: HostPort[], url?: string }

/** Bad Redis configuration; the message names the setting and is meant to be shown as it is. */
export class RedisTargetError extends Error {
  override name = 'RedisTargetError'
}

/**
 * `host:port,host:port` (IPv6 as `[::1]:6379`) as a list. `what` names the setting in errors.
 * Every entry needs an explicit port: a default would hide a sentinel list given Redis ports.
 */
export function parseHostPorts (text: string, what = 'host:port list'): HostPort[] {
  const entries = text.split(',').map((e) => e.trim())
  if (entries.every((e) => e === '')) throw new RedisTargetError(`${what} is empty; expected host:port[,host:port…]`)
  const seen = new Set<string>()
  return entries.map((entry, index) => {
    if (entry === '') throw new RedisTargetError(`${what}: entry ${index + 1} is empty in ${JSON.stringify(text)}`)
    const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^\s:/@[\]]+)):(\d{1,5})$/.exec(entry)
    if (match === null) throw new RedisTargetError(`${what}: ${JSON.stringify(entry)} is not host:port (IPv6 as [addr]:port)`)
    const host = match[1] ?? match[2]
    const port = Number(match[3])
    if (port < 1 || port > 65535) throw new RedisTargetError(`${what}: port ${port} in ${JSON.stringify(entry)} is outside 1-65535`)
    const key = `${host.toLowerCase()}:${port}`
    if (seen.has(key)) throw new RedisTargetError(`${what}: ${JSON.stringify(entry)} is listed twice`)
    seen.add(key)
    return { host, port }
  })
}

export interface TargetSettings {
  /** REDIS_URL: the server, or with Sentinel/Cluster only credentials, database and TLS. */
  url?: string
  /** REDIS_SENTINELS: host:port,… */
  sentinels?: string
  /** REDIS_SENTINEL_NAME: the primary's name in the sentinels' configuration. */
  sentinelName?: string
  /** REDIS_CLUSTER_NODES: host:port,… */
  clusterNodes?: string
}

/** How the user spelled each of the four settings, for error messages. */
export type TargetNames = Record<keyof TargetSettings, string>

/** The environment's names; the plugin passes its option names. */
export const TARGET_ENV_NAMES: TargetNames = { url: 'REDIS_URL', sentinels: 'REDIS_SENTINELS', sentinelName: 'REDIS_SENTINEL_NAME', clusterNodes: 'REDIS_CLUSTER_NODES' }

/** The target the settings describe, or undefined when none is set (the in-memory broker). */
export function redisTarget (settings: TargetSettings, names: TargetNames = TARGET_ENV_NAMES): RedisTarget | undefined {
  const set = (v: string | undefined): v is string => v !== undefined && v !== ''
  const { url, sentinels, sentinelName, clusterNodes } = settings
  if (set(sentinels) && set(clusterNodes)) {
    throw new RedisTargetError(`${names.sentinels} and ${names.clusterNodes} are both set; a deployment uses one topology`)
  }
  if (set(sentinelName) && !set(sentinels)) throw new RedisTargetError(`${names.sentinelName} is set without ${names.sentinels}`)
  if (set(url)) urlSettings(url, names.url) // checked here, so a bad URL is reported at start-up with every topology
  if (set(sentinels)) {
    if (!set(sentinelName)) throw new RedisTargetError(`${names.sentinels} needs ${names.sentinelName}, the name the sentinels monitor`)
    return { sentinels: parseHostPorts(sentinels, names.sentinels), name: sentinelName, ...(set(url) ? { url } : {}) }
  }
  if (set(clusterNodes)) {
    if (set(url) && (urlSettings(url, names.url).db ?? 0) !== 0) throw new RedisTargetError(`${names.url} selects a database other than 0, which a Redis Cluster does not have`)
    return { clusterNodes: parseHostPorts(clusterNodes, names.clusterNodes), ...(set(url) ? { url } : {}) }
  }
  return set(url) ? { url } : undefined
}

interface UrlSettings { username?: string, password?: string, db?: number, tls?: object }

function urlSettings (url: string, name = TARGET_ENV_NAMES.url): UrlSettings {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    throw new RedisTargetError(`${name} is not a URL (redis://[user:password@]host[:port][/db])`)
  }
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') throw new RedisTargetError(`${name} must start with redis:// or rediss://, not ${parsed.protocol}//`)
  const path = parsed.pathname.replace(/^\//, '')
  if (path !== '' && !/^\d+$/.test(path)) throw new RedisTargetError(`${name}: the path must be a database number, got ${JSON.stringify(path)}`)
  return {
    ...(parsed.username !== '' ? { username: decodeURIComponent(parsed.username) } : {}),
    ...(parsed.password !== '' ? { password: decodeURIComponent(parsed.password) } : {}),
    ...(path !== '' ? { db: Number(path) } : {}),
    ...(parsed.protocol === 'rediss:' ? { tls: {} } : {})
  }
}

/** For logs: where the target points, never its credentials. */
export function describeTarget (target: RedisTarget): string {
  const list = (nodes: HostPort[]) => nodes.map((n) => n.host.includes(':') ? `[${n.host}]:${n.port}` : `${n.host}:${n.port}`).join(',')
  if ('sentinels' in target) return `sentinel ${target.name} via ${list(target.sentinels)}`
  if ('clusterNodes' in target) return `cluster via ${list(target.clusterNodes)}`
  const url = new URL(target.url)
  return `${url.protocol}//${url.host}${url.pathname}`
}

/** Reconnection backoff: the commands' retry delay, plus a floor so a dead server is not hammered. */
export function backoff (attempt: number, capMs = 2000): number {
  return 50 + retryDelay(attempt, capMs)
}

// Options ioredis reads on the Cluster object itself rather than on each node's connection.
const CLUSTER_LEVEL = ['enableOfflineQueue', 'enableReadyCheck', 'lazyConnect', 'scripts', 'keyPrefix',
  'enableAutoPipelining', 'autoPipeliningIgnoredCommands'] as const

/**
 * A connection for one role ('command', 'subscriber', …) of the process: named `fanout-<role>` in
 * CLIENT LIST, retrying forever with backoff, never failing a command for being retried
 * (`maxRetriesPerRequest: null`) unless `options` says otherwise; following a failover even when
 * the old primary hangs instead of closing (Sentinel: `leaveReplacedPrimary`, Cluster:
 * `slotsRefreshInterval`). For a Cluster, `options` go to every node's connection except those
 * ioredis reads on the Cluster (CLUSTER_LEVEL), and `clusterOptions` (e.g. `shardedSubscribers`)
 * are added as they are. docs/scaling.md (its appendix) has what each choice was measured to fix.
 */
export function createRedis (target: RedisTarget, role: string, options: RedisOptions = {}, clusterOptions: ClusterOptions = {}): Redis | Cluster {
  const base: RedisOptions = {
    connectionName: `fanout-${role}`,
    maxRetriesPerRequest: null,
    retryStrategy: (times) => backoff(times),
    ...options
  }
  if ('sentinels' in target) {
    const client = new Redis({
      ...(target.url !== undefined ? urlSettings(target.url) : {}),
      sentinels: target.sentinels,
      name: target.name,
      ...(target.sentinelPassword !== undefined ? { sentinelPassword: target.sentinelPassword } : {}),
      // Sentinels unreachable: keep asking, as for the server itself.
      sentinelRetryStrategy: (times) => backoff(times),
      ...base
    })
    leaveReplacedPrimary(client, target, role)
    return client
  }
  if ('clusterNodes' in target) {
    const { retryStrategy, ...perNode } = base
    const clusterLevel: Record<string, unknown> = {}
    for (const key of CLUSTER_LEVEL) {
      if (key in perNode) {
        clusterLevel[key] = perNode[key]
        delete perNode[key]
      }
    }
    return new Cluster(target.clusterNodes, {
      // Every node lost: reconnect to the cluster from the start nodes, with the same backoff.
      clusterRetryStrategy: retryStrategy,
      // Ask the cluster who owns which slot every second: ioredis otherwise learns of a failover
      // only from a closed socket or a MOVED reply, and a frozen or partitioned primary gives
      // neither, so commands and sharded subscriptions stay on it (test/system/ha-harness.test.ts, SIGSTOP).
      slotsRefreshInterval: 1000,
      ...clusterLevel,
      ...clusterOptions,
      redisOptions: { ...(target.url !== undefined ? urlSettings(target.url) : {}), ...perNode, ...clusterOptions.redisOptions }
    })
  }
  return new Redis(target.url, base)
}

/**
 * Drops the client's socket when the sentinels announce that the primary it is connected to was
 * replaced (`+switch-master`); ioredis then reconnects as after any lost connection and asks the
 * sentinels anew. Needed because a frozen or partitioned primary keeps its sockets open: without
 * this the client stays on it, silent, until it wakes (test/system/ha-harness.test.ts, SIGSTOP).
 * ioredis' own `failoverDetector` does the same but, arriving while the client is reconnecting,
 * aborts the sentinel query and leaves the client ended for good (status 'end'; 2 of 13 SIGKILL
 * failovers measured); destroying only the socket never touches a reconnection in progress.
 */
function leaveReplacedPrimary (client: Redis, target: { sentinels: HostPort[], name: string, sentinelPassword?: string }, role: string): void {
  const watchers = target.sentinels.map(({ host, port }) => {
    const watcher = new Redis({
      host,
      port,
      ...(target.sentinelPassword !== undefined ? { password: target.sentinelPassword } : {}),
      connectionName: `fanout-${role}-failover-watch`,
      enableReadyCheck: false,
      maxRetriesPerRequest: null,
      retryStrategy: (times) => backoff(times)
    })
    watcher.on('error', () => {}) // a sentinel down: the client's own errors are what matters
    watcher.subscribe('+switch-master').catch(() => {}) // resubscribed by ioredis after a reconnect
    watcher.on('message', (_channel: string, message: string) => {
      // "<name> <old-ip> <old-port> <new-ip> <new-port>", once from every sentinel.
      const [name, oldHost, oldPort] = message.split(' ')
      const stream = client.stream
      if (name !== target.name || stream === undefined || stream.destroyed) return
      // Keep a socket known to be elsewhere (already on the new primary); when unsure (still
      // connecting, a hostname), drop it: a needless reconnect costs less than a stuck client.
      const remote = stream.remoteAddress?.replace(/^::ffff:/, '')
      const elsewhere = stream.remotePort !== undefined &&
        (stream.remotePort !== Number(oldPort) || (isIP(oldHost) !== 0 && remote !== undefined && remote !== oldHost))
      if (!elsewhere) stream.destroy()
    })
    return watcher
  })
  client.once('end', () => { for (const watcher of watchers) watcher.disconnect() })
}

/** The longest a QUIT waits for its answer before the connection is simply dropped. */
const QUIT_WAIT_MS = 3000

/**
 * Closes a connection: QUIT when it is up (what was sent is answered first), else at once. A
 * QUIT that is not answered in QUIT_WAIT_MS (a Cluster node that hangs, or is never reached)
 * drops the connection instead: a close must end.
 */
export async function quit (client: Redis | Cluster | undefined): Promise<void> {
  if (!client) return
  if (client.status !== 'ready') {
    client.disconnect()
    return
  }
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<'late'>((resolve) => { timer = setTimeout(() => resolve('late'), QUIT_WAIT_MS) })
  try {
    if (await Promise.race([client.quit(), late]) === 'late') client.disconnect()
  } catch {
    client.disconnect()
  } finally {
    clearTimeout(timer)
  }
}
