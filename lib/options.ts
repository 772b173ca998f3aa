import type { Authorize } from './auth.js'
import type { Broker } from './broker.js'
import { ConfigError, OptionsSchema, validateOptions, type ValidatedOptions } from './config.js'

export interface PublisherOptions {
  /** [3000] */
  minDelayMs?: number
  /** [8000] */
  maxDelayMs?: number
  /** Publish this many events, then stop. [unlimited] */
  count?: number
}

/**
 * What a user passes to `app.register(fanout, options)`; every field is optional. Types, limits
 * and defaults are checked by the schema in lib/config.ts (README, "Use it in your own app").
 */
export interface FanoutOptions {
  /** A broker instance of your own; you close it. Otherwise `redisUrl` selects Redis, and without it the in-memory broker. */
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
  /** Events kept for resume. */
  historySize?: number
  outboxSize?: number
  canaryIntervalMs?: number
  /** Run the demo's guest publisher in this process: true or its options. [false] */
  publisher?: boolean | PublisherOptions
  /** The event stream (WebSocket and EventSource). [/guest] */
  guestPath?: string | false
  /** The tutorial's PHP server. [false] */
  askPath?: string | false
  /** The demo page. [false] */
  demoPath?: string | false
  /** Prometheus text. [false] */
  metricsPath?: string | false
  /** Liveness. [false] */
  healthPath?: string | false
  /** Readiness. [false] */
  readyPath?: string | false
  /** Accept binary messages as uploads. [false] */
  uploads?: boolean
  uploadDir?: string
  maxUploadBytes?: number
  uploadMinFreeBytes?: number
  /** The most bytes UPLOAD_DIR may hold in uploads; unset: no quota. */
  uploadQuotaBytes?: number
  /** Uploads need this secret: a built-in `authorize` (README, "Authentication"). */
  uploadToken?: string
  /** Decides who may connect, before the upgrade (README, "Authentication"). */
  authorize?: Authorize
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
  /** Fastify's own: every route of the plugin goes under it. */
  prefix?: string
}

type Flat = Omit<ValidatedOptions, 'publisher' | `publisher.${string}` | 'allowedOrigins'>

/** The options with every default filled in, as the plugin's parts read them. */
export interface ResolvedOptions extends Flat {
  broker: Broker | undefined
  /** Unset: same origin only. */
  allowedOrigins: string[]
  authorize: Authorize | undefined
  publisher: { minDelayMs: number, maxDelayMs: number, count: number | undefined } | false
}

// Options the schema does not hold: objects and functions, and what Fastify's register takes.
const UNCHECKED = new Set(['broker', 'authorize', 'prefix', 'logLevel', 'logSerializers'])

export function resolveOptions (options: FanoutOptions = {}): ResolvedOptions {
  const flat: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(options)) {
    if (value === undefined || UNCHECKED.has(key)) continue
    if (key === 'publisher' && typeof value === 'object' && value !== null) {
      flat.publisher = true
      for (const [field, v] of Object.entries(value)) if (v !== undefined) flat[`publisher.${field}`] = v
    } else {
      flat[key] = value
    }
  }
  const known = new Set(Object.keys(OptionsSchema.properties))
  const unknown = Object.keys(flat).filter((key) => !known.has(key))
  if (unknown.length > 0) throw new ConfigError(`invalid fastify-fanout option: unknown option ${unknown.map((k) => `"${k}"`).join(', ')}`)
  const v = validateOptions(flat)
  if (options.authorize !== undefined && typeof options.authorize !== 'function') {
    throw new ConfigError('invalid fastify-fanout option: authorize must be a function')
  }
  if (options.authorize && v.uploadToken) {
    throw new ConfigError('invalid fastify-fanout option: uploadToken is a built-in authorize; pass authorize or uploadToken, not both')
  }
  if (v.demoPath !== false && v.guestPath === false) {
    throw new ConfigError('invalid fastify-fanout option: demoPath needs guestPath, the stream the demo page shows')
  }
  const { publisher, 'publisher.minDelayMs': minDelayMs, 'publisher.maxDelayMs': maxDelayMs, 'publisher.count': count, ...rest } = v
  return {
    ...rest,
    allowedOrigins: rest.allowedOrigins ?? [],
    broker: options.broker,
    authorize: options.authorize,
    publisher: publisher && { minDelayMs, maxDelayMs, count }
  }
}
