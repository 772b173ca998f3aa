import type { Broker } from './broker.js'

/** Every default, in one place; the environment schema and the plugin both read them from here. */
export const DEFAULTS = {
  guestPath: '/guest',
  askPath: '/ask',
  redisPrefix: 'fanout:',
  redisWaitReplicas: 0,
  workerLeaseMs: 5000,
  historySize: 1000,
  outboxSize: 10_000,
  canaryIntervalMs: 2000,
  minDelayMs: 3000,
  maxDelayMs: 8000,
  uploadDir: './uploads',
  maxUploadBytes: 10 * 1024 * 1024,
  uploadMinFreeBytes: 64 * 1024 * 1024,
  heartbeatMs: 30_000,
  drainMs: 5000,
  maxConnections: 10_000,
  maxBufferedBytes: 1024 * 1024,
  maxConcurrentReplays: 32,
  rateMessagesPerSec: 50,
  rateBytesPerSec: 16 * 1024 * 1024,
  textLogPerSec: 20,
  metricsIntervalMs: 10_000
} as const

export interface PublisherOptions {
  minDelayMs?: number
  maxDelayMs?: number
  /** Publish this many events, then stop. */
  count?: number
}

/** What a user passes to `app.register(fanout, options)`; every field is optional. */
export interface FanoutOptions {
  /** A broker instance. Otherwise `redisUrl` selects Redis, and without it the in-memory broker. */
  broker?: Broker
  redisUrl?: string
  /** Sentinels as `host:port,…`, with `redisSentinelName`: the primary they monitor. */
  redisSentinels?: string
  redisSentinelName?: string
  /** Redis Cluster nodes as `host:port,…`: a few to discover the rest from. */
  redisClusterNodes?: string
  /** Replicas that must confirm a publish (`WAIT`) before it leaves the publisher's outbox [0]. */
  redisWaitReplicas?: number
  redisPrefix?: string
  /** Events kept for `?since=` resume. */
  historySize?: number
  /** Run the guest publisher in this process: true or its options [on without Redis, off with]. */
  publisher?: boolean | PublisherOptions
  guestPath?: string
  askPath?: string
  /** Serve the demo page at `/` [true]. */
  demoPage?: boolean
  uploadDir?: string
  maxUploadBytes?: number
  uploadMinFreeBytes?: number
  /** When set, binary uploads need this secret (see README, "Uploads"). */
  uploadToken?: string
  /** Exact origins admitted besides same-origin ones; `null` admits file:// pages, `*` all. */
  allowedOrigins?: string[]
  heartbeatMs?: number
  drainMs?: number
  maxConnections?: number
  maxBufferedBytes?: number
  /** Resumes replayed at once per replica; more wait their turn. */
  maxConcurrentReplays?: number
  rateMessagesPerSec?: number
  rateBytesPerSec?: number
  textLogPerSec?: number
  /** How often the metrics log line is written; 0: never. */
  metricsIntervalMs?: number
  canaryIntervalMs?: number
  outboxSize?: number
}

type Unset = 'broker' | 'redisUrl' | 'redisSentinels' | 'redisSentinelName' | 'redisClusterNodes' | 'uploadToken'
export type ResolvedOptions = Required<Omit<FanoutOptions, Unset | 'publisher'>> & Pick<FanoutOptions, Unset> & { publisher: Required<Omit<PublisherOptions, 'count'>> & Pick<PublisherOptions, 'count'> | false }

export function resolveOptions (options: FanoutOptions = {}): ResolvedOptions {
  const defined = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as FanoutOptions
  const merged = { ...DEFAULTS, demoPage: true, allowedOrigins: [] as string[], ...defined }
  const embedded = !merged.broker && !merged.redisUrl && !merged.redisSentinels && !merged.redisClusterNodes
  const publisher = merged.publisher ?? embedded
  const resolved: ResolvedOptions = {
    ...merged,
    publisher: publisher === false
      ? false
      : { minDelayMs: DEFAULTS.minDelayMs, maxDelayMs: DEFAULTS.maxDelayMs, ...(publisher === true ? {} : publisher) }
  }
  if (resolved.publisher && resolved.publisher.minDelayMs > resolved.publisher.maxDelayMs) {
    throw new RangeError(`GUEST_MIN_DELAY_MS (${resolved.publisher.minDelayMs}) must not exceed GUEST_MAX_DELAY_MS (${resolved.publisher.maxDelayMs})`)
  }
  return resolved
}
