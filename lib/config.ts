import { Type, type Static, type TSchema } from '@sinclair/typebox'
import envSchema from 'env-schema'
import type { FanoutOptions } from './options.js'
import { redisTarget } from './redis/connection.js'

const Integer = (defaultValue: number, minimum = 0) => Type.Integer({ minimum, default: defaultValue })
const OptionalInteger = (minimum = 0) => Type.Optional(Type.Integer({ minimum }))
// A string enum, not a union of literals: ajv then reports one error with the allowed values,
// instead of one per literal plus an "anyOf" line.
const OneOf = <T extends string>(values: readonly T[], options: { default?: T } = {}) =>
  Type.Unsafe<T>({ type: 'string', enum: values, ...options })
// `false` first: ajv coerces types, and with the string branch first `false` would become "false".
const RoutePath = (defaultValue: string | false) =>
  Type.Union([Type.Literal(false), Type.String({ pattern: '^/' })], { default: defaultValue, description: 'a path starting with "/", or false' })

interface Setting {
  /** The environment variable of the same meaning, if there is one. */
  env?: string
  schema: TSchema
  /** In the environment, a comma-separated list. */
  list?: true
  /** Never echoed in an error: a secret, or a URL that may carry a password (issue 5). */
  secret?: true
}

/**
 * Every setting of the plugin, once: its option name (dotted for nested options), its environment
 * variable, its type, limits and default. Both the plugin's options and the environment are
 * validated by schemas built from this table, so they cannot drift. A new setting is one line here
 * (plus its field in `FanoutOptions` and its README row).
 */
export const SETTINGS = {
  redisUrl: { env: 'REDIS_URL', schema: Type.Optional(Type.String({ pattern: '^rediss?://[^\\s]+$' })), secret: true },
  // host:port lists stay strings here: lib/redis/connection.ts parses them, with errors that name them.
  redisSentinels: { env: 'REDIS_SENTINELS', schema: Type.Optional(Type.String({ minLength: 1 })) },
  redisSentinelName: { env: 'REDIS_SENTINEL_NAME', schema: Type.Optional(Type.String({ minLength: 1 })) },
  redisClusterNodes: { env: 'REDIS_CLUSTER_NODES', schema: Type.Optional(Type.String({ minLength: 1 })) },
  redisWaitReplicas: { env: 'REDIS_WAIT_REPLICAS', schema: Integer(0) },
  workerLeaseMs: { env: 'WORKER_LEASE_MS', schema: Integer(5000, 200) },
  redisPrefix: { env: 'REDIS_PREFIX', schema: Type.String({ default: 'fanout:' }) },
  historySize: { env: 'HISTORY_SIZE', schema: Integer(1000, 1) },
  outboxSize: { env: 'OUTBOX_SIZE', schema: Integer(10_000, 1) },
  canaryIntervalMs: { env: 'CANARY_INTERVAL_MS', schema: Integer(2000, 100) },
  'publisher.minDelayMs': { env: 'GUEST_MIN_DELAY_MS', schema: Integer(3000) },
  'publisher.maxDelayMs': { env: 'GUEST_MAX_DELAY_MS', schema: Integer(8000) },
  'publisher.count': { env: 'GUEST_COUNT', schema: OptionalInteger() },
  guestPath: { schema: RoutePath('/guest') },
  askPath: { schema: RoutePath(false) },
  demoPath: { schema: RoutePath(false) },
  metricsPath: { schema: RoutePath(false) },
  healthPath: { schema: RoutePath(false) },
  readyPath: { schema: RoutePath(false) },
  uploads: { schema: Type.Boolean({ default: false }) },
  uploadDir: { env: 'UPLOAD_DIR', schema: Type.String({ minLength: 1, default: './uploads' }) },
  maxUploadBytes: { env: 'MAX_UPLOAD_BYTES', schema: Integer(10 * 1024 * 1024, 1) },
  uploadMinFreeBytes: { env: 'UPLOAD_MIN_FREE_BYTES', schema: Integer(64 * 1024 * 1024) },
  uploadQuotaBytes: { env: 'UPLOAD_QUOTA_BYTES', schema: OptionalInteger(1) },
  uploadToken: { env: 'UPLOAD_TOKEN', schema: Type.Optional(Type.String({ minLength: 8, pattern: '^[A-Za-z0-9._~-]+$' })), secret: true },
  allowedOrigins: { env: 'ALLOWED_ORIGINS', schema: Type.Optional(Type.Array(Type.String())), list: true },
  heartbeatMs: { env: 'HEARTBEAT_MS', schema: Integer(30_000) },
  drainMs: { env: 'DRAIN_MS', schema: Integer(5000) },
  maxConnections: { env: 'MAX_CONNECTIONS', schema: Integer(10_000, 1) },
  maxBufferedBytes: { env: 'MAX_BUFFERED_BYTES', schema: Integer(1024 * 1024, 1024) },
  maxConcurrentReplays: { env: 'MAX_CONCURRENT_REPLAYS', schema: Integer(32, 1) },
  rateMessagesPerSec: { env: 'RATE_MESSAGES_PER_SEC', schema: Integer(50, 1) },
  rateBytesPerSec: { env: 'RATE_BYTES_PER_SEC', schema: Integer(16 * 1024 * 1024, 1) },
  textLogPerSec: { env: 'TEXT_LOG_PER_SEC', schema: Integer(20) },
  metricsIntervalMs: { env: 'METRICS_INTERVAL_MS', schema: Integer(10_000) }
} as const satisfies Record<string, Setting>

type Settings = typeof SETTINGS
export type SettingName = keyof Settings
type EnvName<K extends SettingName> = Settings[K] extends { env: infer E extends string } ? E : never
type EnvProperties = { [K in SettingName as EnvName<K>]: Settings[K]['schema'] }
type OptionProperties = { [K in SettingName]: Settings[K]['schema'] }

const entries = Object.entries(SETTINGS) as Array<[SettingName, Setting]>

/** The plugin's options, flattened (`publisher.minDelayMs`), with their defaults. */
export const OptionsSchema = Type.Object({
  ...Object.fromEntries(entries.map(([name, s]) => [name, s.schema])) as OptionProperties,
  publisher: Type.Boolean({ default: false })
})
export type ValidatedOptions = Static<typeof OptionsSchema>

/** The environment, validated and typed by one schema (README, "Configuration"). */
export const EnvSchema = Type.Object({
  PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 8080 }),
  HOST: Type.String({ minLength: 1, default: '0.0.0.0' }),
  PUBLISHER: Type.Optional(OneOf(['on', 'off'])),
  LOG_LEVEL: OneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], { default: 'info' }),
  ...Object.fromEntries(entries.flatMap(([, s]) => s.env ? [[s.env, s.schema]] : [])) as EnvProperties
})

export type Env = Static<typeof EnvSchema>

/** Bad configuration: the message names the variable or option and is meant to be printed as it is. */
export class ConfigError extends Error {
  override name = 'ConfigError'
}

interface AjvError { instancePath: string, keyword: string, message?: string, params?: Record<string, unknown> }

/**
 * Validates `data` against `schema` (applying defaults) and turns ajv's errors into one line that
 * names each setting as the user wrote it: `name(key)` maps a schema key to that name.
 */
function validate<T> (what: string, schema: TSchema, data: Record<string, unknown>, name: (key: string) => string, isSecret: (key: string) => boolean): T {
  try {
    return envSchema<T>({ schema, data, env: false })
  } catch (err) {
    const errors = ((err as { errors?: AjvError[] }).errors ?? [])
    // A union reports each branch, then "must match a schema in anyOf": say what it accepts instead.
    const anyOf = new Set(errors.filter((e) => e.keyword === 'anyOf').map((e) => e.instancePath))
    const lines = errors.filter((e) => e.keyword === 'anyOf' || !anyOf.has(e.instancePath)).map((e) => {
      const key = e.instancePath.replace(/^\//, '').replace(/\/.*$/, '')
      const described = (schema.properties as Record<string, TSchema>)[key]?.description
      const message = e.keyword === 'anyOf' && described ? `must be ${described}` : e.message
      const allowed = e.params?.allowedValues ? ` (one of ${(e.params.allowedValues as string[]).join(', ')})` : ''
      const got = isSecret(key) ? '(value hidden)' : JSON.stringify(data[key])
      return `${name(key)} ${message}${allowed}, got ${got}`
    })
    throw new ConfigError(`invalid ${what}: ${lines.length > 0 ? [...new Set(lines)].join('; ') : (err as Error).message}`)
  }
}

/** Checks no single schema can: `name` says how the user spelled each setting. */
function crossCheck (what: string, values: Record<string, unknown>, name: (key: SettingName) => string): void {
  const min = values['publisher.minDelayMs'] as number
  const max = values['publisher.maxDelayMs'] as number
  if (min > max) {
    throw new ConfigError(`invalid ${what}: ${name('publisher.minDelayMs')} (${min}) must not exceed ${name('publisher.maxDelayMs')} (${max})`)
  }
  try {
    redisTarget({
      url: values.redisUrl as string | undefined,
      sentinels: values.redisSentinels as string | undefined,
      sentinelName: values.redisSentinelName as string | undefined,
      clusterNodes: values.redisClusterNodes as string | undefined
    })
  } catch (err) {
    throw new ConfigError(`invalid ${what}: ${(err as Error).message}`)
  }
}

const bySetting = new Map<string, Setting>(entries)
const byEnv = new Map<string, [SettingName, Setting]>(entries.flatMap(([key, s]) => s.env ? [[s.env, [key, s]]] : []))

export function loadEnv (source: NodeJS.ProcessEnv = process.env): Env {
  // An empty variable means "not set", as in a compose file's `FOO:` with no value.
  const data: Record<string, unknown> = Object.fromEntries(Object.entries(source).filter(([, v]) => v !== ''))
  for (const [env, [, s]] of byEnv) {
    if (s.list && typeof data[env] === 'string') data[env] = (data[env] as string).split(',').map((v) => v.trim()).filter(Boolean)
  }
  const env = validate<Env>('configuration', EnvSchema, data, (key) => key, (key) => byEnv.get(key)?.[1].secret === true)
  crossCheck('configuration', Object.fromEntries([...byEnv].map(([envName, [key]]) => [key, (env as Record<string, unknown>)[envName]])), (key) => bySetting.get(key)?.env ?? key)
  return env
}

/** Validates the plugin's options (flattened) and fills in every default. */
export function validateOptions (flat: Record<string, unknown>): ValidatedOptions {
  const options = validate<ValidatedOptions>('fastify-fanout option', OptionsSchema, flat, (key) => key, (key) => bySetting.get(key)?.secret === true)
  crossCheck('fastify-fanout option', options, (key) => key)
  return options
}

/** What the standalone server serves besides `/guest`: the tutorial's routes, the demo page and uploads. */
export const STANDALONE = {
  askPath: '/ask',
  demoPath: '/',
  metricsPath: '/metrics',
  healthPath: '/healthz',
  readyPath: '/readyz',
  uploads: true
} as const

/** The plugin's options as the environment sets them (server.ts uses this). */
export function optionsFromEnv (env: Env): FanoutOptions {
  const flat: Record<string, unknown> = { ...STANDALONE }
  for (const [envName, [key]] of byEnv) flat[key] = (env as Record<string, unknown>)[envName]
  const publisher = (env.PUBLISHER ?? (usesRedis(env) ? 'off' : 'on')) === 'on'
  const options: Record<string, unknown> = { publisher: publisher && {} }
  for (const [key, value] of Object.entries(flat)) {
    const [head, field] = key.split('.')
    if (field === undefined) options[key] = value
    else if (options[head]) (options[head] as Record<string, unknown>)[field] = value
  }
  return options as FanoutOptions
}

/** Whether the environment names a Redis deployment (any of the three topologies). */
export function usesRedis (env: Env): boolean {
  return Boolean(env.REDIS_URL ?? env.REDIS_SENTINELS ?? env.REDIS_CLUSTER_NODES)
}
