import type { FastifyRequest } from 'fastify'
import type { Identity, Refusal } from './auth.js'
import type { Broker } from './broker.js'
import { CHANNEL_PATTERN, ChannelRules, type AuthorizeChannel, type NamespaceOptions } from './channels.js'
import {
  checkRedisTarget, ConfigError, DemoOptionsSchema, optionName, PluginOptionsSchema, settingsFromEnv, validateOptions,
  type Assert, type Env, type PluginSettingName, type PluginSettings, type Same, type SettingValue
} from './config.js'
import type { RedisTarget } from './redis/connection.js'
import { TokenVerifier, tokensConfigured } from './tokens.js'

/**
 * Runs before the upgrade (WebSocket) or the stream (EventSource). Returns the connection's
 * identity, or a `refuse(...)`; `false` or `null` refuse with 401. A thrown error is a 500.
 */
export type Authorize = (request: FastifyRequest) => Identity | Refusal | false | null | Promise<Identity | Refusal | false | null>

/**
 * What a user passes to `app.register(fanout, options)`; every field is optional. Types, limits
 * and defaults come from the SETTINGS table (lib/config.ts; docs/configuration.md), and this
 * interface is checked against it below, so the two cannot drift.
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
  /** Replicas that must confirm a publish (`WAIT`) before it leaves the publisher's outbox. [0] */
  redisWaitReplicas?: number
  /** Every Redis key and channel starts with it. [fanout:] */
  redisPrefix?: string
  /** Events kept for resume. [1000] */
  historySize?: number
  /**
   * Events older than this are trimmed from a channel's history, and a channel idle this long (plus
   * 10 minutes) expires, keys and all (ms); 0: kept by count alone, never expiring. [86400000]
   */
  historyAgeMs?: number
  /** Settings per namespace, the part of a channel's name before its first `:` (docs/channels.md). */
  namespaces?: Record<string, NamespaceOptions>
  /** Who may subscribe to, and publish on, which channel; a namespace's own hook comes first. */
  authorizeChannel?: AuthorizeChannel
  /** Channels one connection may subscribe to at once. [128] */
  maxChannelsPerConnection?: number
  /** The key `POST <publishPath>/:channel` asks for (`Authorization: Bearer <key>`); unset: that route is off. */
  publishApiKey?: string
  /** Events a publisher holds while Redis is unreachable. [10000] */
  outboxSize?: number
  /** How often the replica checks that Redis delivers (ms). [2000] */
  canaryIntervalMs?: number
  /** The guest channel's stream (WebSocket and EventSource). [/guest] */
  guestPath?: string | false
  /** The stream of many channels (WebSocket and EventSource). [/stream] */
  streamPath?: string | false
  /** HTTP publishing, `POST <publishPath>/:channel`, on once `publishApiKey` is set. [/publish] */
  publishPath?: string | false
  /** Prometheus text. [false] */
  metricsPath?: string | false
  /** Liveness. [false] */
  healthPath?: string | false
  /** Readiness. [false] */
  readyPath?: string | false
  /** Accept binary messages as uploads. [false] */
  uploads?: boolean
  /** [./uploads] */
  uploadDir?: string
  /** [10 MiB] */
  maxUploadBytes?: number
  /** Uploads are refused while the disk has less free space than this. [64 MiB] */
  uploadMinFreeBytes?: number
  /** The most bytes `uploadDir` may hold in uploads; unset: no quota. */
  uploadQuotaBytes?: number
  /** Uploads need this secret: a built-in `authorize` (docs/protocol.md, "Authentication"). */
  uploadToken?: string
  /** HMAC secret (≥ 32 bytes) of signed connection tokens (JWT): a built-in `authorize` (docs/security.md, "Signed tokens"). */
  jwtSecret?: string
  /** PEM public key (SPKI) that verifies signed tokens. */
  jwtPublicKey?: string
  /** URL of a JWK set that verifies signed tokens, fetched again for an unknown `kid` (key rotation). */
  jwksUrl?: string
  /** The algorithms tokens may use. [HS256 for a secret; by key type for a public key; RS256, ES256, EdDSA for a JWKS] */
  jwtAlgorithms?: NonNullable<SettingValue<'jwtAlgorithms'>>
  /** When set, a token's `aud` must hold it. */
  jwtAudience?: string
  /** When set, a token's `iss` must be it. */
  jwtIssuer?: string
  /** Decides who may connect, before the upgrade (docs/protocol.md, "Authentication"). */
  authorize?: Authorize
  /** Exact origins admitted besides same-origin ones; `null` admits file:// pages, `*` all. */
  allowedOrigins?: string[]
  /**
   * Host names (`name` or `name:port`) the stream, the demo page and `/metrics` answer to; any other
   * Host is refused with 403 (DNS rebinding, docs/security.md). Unset: any Host.
   */
  allowedHosts?: string[]
  /** [30000] */
  heartbeatMs?: number
  /** On close, clients are closed (1012) spread over this window (ms). [5000] */
  drainMs?: number
  /** [10000] */
  maxConnections?: number
  /** Open connections one identity (`authorize`'s `id`) may hold; more get 429. Unset: no limit. */
  maxConnectionsPerIdentity?: number
  /** Open connections one client address (`request.ip`, see `trustProxy`) may hold; more get 429. Unset: no limit. */
  maxConnectionsPerAddress?: number
  /** A client with more bytes waiting is cut off as a slow consumer. [1 MiB] */
  maxBufferedBytes?: number
  /** Resumes replayed at once per replica; more wait their turn. [32] */
  maxConcurrentReplays?: number
  /** Inbound messages a second per connection. [50] */
  rateMessagesPerSec?: number
  /** Inbound bytes a second per connection. [16 MiB] */
  rateBytesPerSec?: number
  /** Text messages logged a second, per replica. [20] */
  textLogPerSec?: number
  /** How often the metrics log line is written (ms); 0: never. [10000] */
  metricsIntervalMs?: number
  /** `metricsPath` then needs `Authorization: Bearer <token>` (401 otherwise). Unset: open. */
  metricsToken?: string
  /** Fastify's own: every route of the plugin goes under it. */
  prefix?: string
}

/** Options that are not settings: objects and functions, and Fastify's own. */
type NotSettings = 'broker' | 'authorize' | 'prefix' | 'namespaces' | 'authorizeChannel'

// Compile-time: FanoutOptions has exactly the plugin's settings, each with the table's type; a
// setting added to one and not the other fails the build here.
type SameTypes = { [K in PluginSettingName]: Same<NonNullable<FanoutOptions[K]>, NonNullable<SettingValue<K>>> }
export type OptionsMatchSettings = Assert<Same<Exclude<keyof FanoutOptions, NotSettings>, PluginSettingName>> & Assert<SameTypes[PluginSettingName]>

/** The options with every default filled in, as the plugin's parts read them (`fastify.fanout.options`). */
export type ResolvedOptions = Readonly<Omit<PluginSettings, 'allowedOrigins'>> & {
  /** Unset: same origin only. */
  readonly allowedOrigins: readonly string[]
  readonly broker: Broker | undefined
  readonly authorize: Authorize | undefined
  readonly namespaces: Readonly<Record<string, Readonly<NamespaceOptions>>>
  readonly authorizeChannel: AuthorizeChannel | undefined
  /** Each channel's settings: its namespace's over the defaults. */
  readonly channels: ChannelRules
  /** The Redis deployment the redis* options describe; undefined: the in-memory broker. */
  readonly redis: RedisTarget | undefined
  /** Verifies signed tokens when a jwt setting is given; undefined otherwise. */
  readonly tokens: TokenVerifier | undefined
}

// The demo's options as a user spells them (`publisher`, not `publisher.minDelayMs`), for a hint.
const DEMO_OPTIONS = new Set(Object.keys(DemoOptionsSchema.properties).map((key) => key.split('.')[0]))
const WHAT = 'fastify-fanout option'

/** Validates the options as given (no coercion: a string is not a number) and fills in every default. */
export function resolveOptions (options: FanoutOptions = {}): ResolvedOptions {
  const values = validateOptions<PluginSettings>(WHAT, PluginOptionsSchema, { ...options }, ['broker', 'authorize', 'namespaces', 'authorizeChannel'], (unknown) => {
    const demo = unknown.filter((key) => DEMO_OPTIONS.has(key))
    return demo.length > 0 ? ` (${demo.join(', ')}: options of the demo plugin, fastify-fanout/demo)` : ''
  })
  if (options.authorize !== undefined && typeof options.authorize !== 'function') {
    throw new ConfigError(`invalid ${WHAT}: authorize must be a function`)
  }
  if (options.authorize && values.uploadToken) {
    throw new ConfigError(`invalid ${WHAT}: uploadToken is a built-in authorize; pass authorize or uploadToken, not both`)
  }
  let tokens: TokenVerifier | undefined
  if (tokensConfigured(values)) {
    if (options.authorize) throw new ConfigError(`invalid ${WHAT}: jwtSecret, jwtPublicKey and jwksUrl make a built-in authorize; pass authorize or them, not both`)
    if (values.uploadToken) throw new ConfigError(`invalid ${WHAT}: uploadToken and signed tokens are two built-in authorizes; with tokens, the claim upload: false refuses uploads`)
    try {
      tokens = new TokenVerifier(values)
    } catch (err) {
      throw new ConfigError(`invalid ${WHAT}: ${(err as Error).message}`)
    }
  } else if (values.jwtAlgorithms ?? values.jwtAudience ?? values.jwtIssuer) {
    throw new ConfigError(`invalid ${WHAT}: jwtAlgorithms, jwtAudience and jwtIssuer need a key: jwtSecret, jwtPublicKey or jwksUrl`)
  }
  if (options.authorizeChannel !== undefined && typeof options.authorizeChannel !== 'function') {
    throw new ConfigError(`invalid ${WHAT}: authorizeChannel must be a function`)
  }
  const namespaces = checkNamespaces(WHAT, 'namespaces', options.namespaces ?? {})
  return Object.freeze({
    ...values,
    allowedOrigins: Object.freeze([...values.allowedOrigins ?? []]),
    broker: options.broker,
    authorize: options.authorize,
    namespaces,
    authorizeChannel: options.authorizeChannel,
    channels: new ChannelRules({
      historySize: values.historySize,
      historyAgeMs: values.historyAgeMs,
      clientPublish: false,
      authorizeChannel: options.authorizeChannel
    }, namespaces),
    redis: checkRedisTarget(WHAT, values, optionName),
    tokens
  })
}

const NAMESPACE_FIELDS: Record<keyof NamespaceOptions, (v: unknown) => boolean> = {
  historySize: (v) => Number.isInteger(v) && (v as number) >= 1,
  historyAgeMs: (v) => Number.isInteger(v) && (v as number) >= 0,
  clientPublish: (v) => typeof v === 'boolean',
  authorizeChannel: (v) => typeof v === 'function'
}
const NAMESPACE_NEEDS: Record<keyof NamespaceOptions, string> = {
  historySize: 'an integer ≥ 1',
  historyAgeMs: 'an integer ≥ 0 (ms)',
  clientPublish: 'true or false',
  authorizeChannel: 'a function'
}

/** The namespaces option (or NAMESPACES), checked field by field; errors name the namespace and the field. */
function checkNamespaces (what: string, name: string, given: unknown): Readonly<Record<string, Readonly<NamespaceOptions>>> {
  if (typeof given !== 'object' || given === null || Array.isArray(given)) throw new ConfigError(`invalid ${what}: ${name} must be an object of namespace settings`)
  const checked: Record<string, Readonly<NamespaceOptions>> = {}
  for (const [namespace, settings] of Object.entries(given)) {
    if (!CHANNEL_PATTERN.test(namespace) || namespace.includes(':')) {
      throw new ConfigError(`invalid ${what}: ${name} has ${JSON.stringify(namespace)}, not a namespace (letters, digits and _ . @ -, no ":")`)
    }
    if (typeof settings !== 'object' || settings === null) throw new ConfigError(`invalid ${what}: ${name}.${namespace} must be an object`)
    for (const [field, value] of Object.entries(settings)) {
      const valid = NAMESPACE_FIELDS[field as keyof NamespaceOptions]
      if (valid === undefined) throw new ConfigError(`invalid ${what}: ${name}.${namespace} has unknown setting "${field}" (known: ${Object.keys(NAMESPACE_FIELDS).join(', ')})`)
      if (value !== undefined && !valid(value)) {
        throw new ConfigError(`invalid ${what}: ${name}.${namespace}.${field} must be ${NAMESPACE_NEEDS[field as keyof NamespaceOptions]}, got ${typeof value === 'function' ? 'a function' : JSON.stringify(value)}`)
      }
    }
    checked[namespace] = Object.freeze({ ...settings as NamespaceOptions })
  }
  return Object.freeze(checked)
}

/** What the standalone server serves besides the stream: metrics, health, readiness and uploads. */
export const STANDALONE = {
  metricsPath: '/metrics',
  healthPath: '/healthz',
  readyPath: '/readyz',
  uploads: true
} as const satisfies FanoutOptions

/** The plugin's options as the environment sets them: the standalone server's and the worker's. */
export function optionsFromEnv (env: Env): FanoutOptions {
  const options: FanoutOptions = { ...STANDALONE, ...settingsFromEnv(env, (key) => key in PluginOptionsSchema.properties) }
  if (env.NAMESPACES !== undefined) {
    let parsed: unknown
    try {
      parsed = JSON.parse(env.NAMESPACES)
    } catch (err) {
      throw new ConfigError(`invalid configuration: NAMESPACES must be JSON, e.g. {"room":{"historySize":100}}: ${(err as Error).message}`)
    }
    options.namespaces = { ...checkNamespaces('configuration', 'NAMESPACES', parsed) }
  }
  return options
}
