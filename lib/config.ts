// Settings: one table of every setting, and the validation of the two ways to give them, the
// environment (the standalone server and the worker) and the plugin's options. Configuration flows
// one way: environment → options (lib/options.ts) → resolved options → the broker and the routes.
import { Type, type Static, type TSchema } from '@sinclair/typebox'
import envSchema from 'env-schema'
import { redisTarget, type RedisTarget, type TargetNames } from './redis/connection.js'
import { tokenKey, tokensConfigured, type TokenSettings } from './tokens.js'

const Integer = (defaultValue: number, minimum = 0) => Type.Integer({ minimum, default: defaultValue })
const OptionalInteger = (minimum = 0) => Type.Optional(Type.Integer({ minimum }))
// A string enum, not a union of literals: ajv then reports one error with the allowed values,
// instead of one per literal plus an "anyOf" line.
const OneOf = <T extends string>(values: readonly T[], options: { default?: T } = {}) =>
  Type.Unsafe<T>({ type: 'string', enum: values, ...options })
// `false` first: the environment is coerced, and with the string branch first `false` would become "false".
const RoutePath = (defaultValue: string | false) =>
  Type.Union([Type.Literal(false), Type.String({ pattern: '^/' })], { default: defaultValue, description: 'a path starting with "/", or false' })

export interface Setting {
  /** The environment variable of the same meaning, if there is one. */
  env?: string
  schema: TSchema
  /** In the environment, a comma-separated list. */
  list?: true
  /** Never echoed in an error: a secret, or a URL that may carry a password. */
  secret?: true
  /** A setting of the demo plugin (`fastify-fanout/demo`), not of fastify-fanout itself. */
  demo?: true
  /** Read by the worker from the environment only; not a plugin option. */
  workerOnly?: true
}

/**
 * Every setting, once: its option name (dotted for nested options), its environment variable, its
 * type, limits and default. The plugin's options, the demo's and the environment are validated by
 * schemas built from this table, so they cannot drift; `FanoutOptions` is checked against it at
 * compile time (lib/options.ts). A new setting is one line here, its field there and its row in
 * docs/configuration.md.
 */
export const SETTINGS = {
  redisUrl: { env: 'REDIS_URL', schema: Type.Optional(Type.String({ pattern: '^rediss?://[^\\s]+$', description: 'a redis:// or rediss:// URL' })), secret: true },
  // host:port lists stay strings here: lib/redis/connection.ts parses them, with errors that name them.
  redisSentinels: { env: 'REDIS_SENTINELS', schema: Type.Optional(Type.String({ minLength: 1 })) },
  redisSentinelName: { env: 'REDIS_SENTINEL_NAME', schema: Type.Optional(Type.String({ minLength: 1 })) },
  redisClusterNodes: { env: 'REDIS_CLUSTER_NODES', schema: Type.Optional(Type.String({ minLength: 1 })) },
  redisWaitReplicas: { env: 'REDIS_WAIT_REPLICAS', schema: Integer(0) },
  workerLeaseMs: { env: 'WORKER_LEASE_MS', schema: Integer(5000, 200), workerOnly: true },
  redisPrefix: { env: 'REDIS_PREFIX', schema: Type.String({ default: 'fanout:' }) },
  historySize: { env: 'HISTORY_SIZE', schema: Integer(1000, 1) },
  historyAgeMs: { env: 'HISTORY_AGE_MS', schema: Integer(86_400_000) },
  maxChannelsPerConnection: { env: 'MAX_CHANNELS_PER_CONNECTION', schema: Integer(128, 1) },
  publishApiKey: { env: 'PUBLISH_API_KEY', schema: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9._~-]{16,}$', description: 'at least 16 characters, each a letter, a digit or one of . _ ~ -' })), secret: true },
  outboxSize: { env: 'OUTBOX_SIZE', schema: Integer(10_000, 1) },
  canaryIntervalMs: { env: 'CANARY_INTERVAL_MS', schema: Integer(2000, 100) },
  'publisher.minDelayMs': { env: 'GUEST_MIN_DELAY_MS', schema: Integer(3000), demo: true },
  'publisher.maxDelayMs': { env: 'GUEST_MAX_DELAY_MS', schema: Integer(8000), demo: true },
  'publisher.count': { env: 'GUEST_COUNT', schema: OptionalInteger(), demo: true },
  guestPath: { schema: RoutePath('/guest') },
  streamPath: { schema: RoutePath('/stream') },
  publishPath: { schema: RoutePath('/publish') },
  askPath: { schema: RoutePath(false), demo: true },
  demoPath: { schema: RoutePath(false), demo: true },
  metricsPath: { schema: RoutePath(false) },
  healthPath: { schema: RoutePath(false) },
  readyPath: { schema: RoutePath(false) },
  uploads: { schema: Type.Boolean({ default: false }) },
  uploadDir: { env: 'UPLOAD_DIR', schema: Type.String({ minLength: 1, default: './uploads' }) },
  maxUploadBytes: { env: 'MAX_UPLOAD_BYTES', schema: Integer(10 * 1024 * 1024, 1) },
  uploadMinFreeBytes: { env: 'UPLOAD_MIN_FREE_BYTES', schema: Integer(64 * 1024 * 1024) },
  uploadQuotaBytes: { env: 'UPLOAD_QUOTA_BYTES', schema: OptionalInteger(1) },
  uploadToken: { env: 'UPLOAD_TOKEN', schema: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9._~-]{8,}$', description: 'at least 8 characters, each a letter, a digit or one of . _ ~ -' })), secret: true },
  // Signed tokens (lib/tokens.ts): one key source; the algorithms from here, never from a token.
  jwtSecret: { env: 'JWT_SECRET', schema: Type.Optional(Type.String({ minLength: 32, description: 'an HMAC secret of at least 32 bytes' })), secret: true },
  jwtPublicKey: { env: 'JWT_PUBLIC_KEY', schema: Type.Optional(Type.String({ pattern: '-----BEGIN PUBLIC KEY-----', description: 'a PEM public key (-----BEGIN PUBLIC KEY-----)' })) },
  jwksUrl: { env: 'JWKS_URL', schema: Type.Optional(Type.String({ pattern: '^https?://[^\\s]+$', description: 'an http(s) URL of a JWK set' })) },
  jwtAlgorithms: { env: 'JWT_ALGORITHMS', schema: Type.Optional(Type.Array(OneOf(['HS256', 'HS384', 'HS512', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA']), { minItems: 1 })), list: true },
  jwtAudience: { env: 'JWT_AUDIENCE', schema: Type.Optional(Type.String({ minLength: 1 })) },
  jwtIssuer: { env: 'JWT_ISSUER', schema: Type.Optional(Type.String({ minLength: 1 })) },
  allowedOrigins: { env: 'ALLOWED_ORIGINS', schema: Type.Optional(Type.Array(Type.String())), list: true },
  allowedHosts: { env: 'ALLOWED_HOSTS', schema: Type.Optional(Type.Array(Type.String({ pattern: '^(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?$' }), { description: 'a list of host names, each a name or name:port' })), list: true },
  heartbeatMs: { env: 'HEARTBEAT_MS', schema: Integer(30_000) },
  drainMs: { env: 'DRAIN_MS', schema: Integer(5000) },
  maxConnections: { env: 'MAX_CONNECTIONS', schema: Integer(10_000, 1) },
  maxConnectionsPerIdentity: { env: 'MAX_CONNECTIONS_PER_IDENTITY', schema: OptionalInteger(1) },
  maxConnectionsPerAddress: { env: 'MAX_CONNECTIONS_PER_ADDRESS', schema: OptionalInteger(1) },
  maxBufferedBytes: { env: 'MAX_BUFFERED_BYTES', schema: Integer(1024 * 1024, 1024) },
  maxConcurrentReplays: { env: 'MAX_CONCURRENT_REPLAYS', schema: Integer(32, 1) },
  rateMessagesPerSec: { env: 'RATE_MESSAGES_PER_SEC', schema: Integer(50, 1) },
  rateBytesPerSec: { env: 'RATE_BYTES_PER_SEC', schema: Integer(16 * 1024 * 1024, 1) },
  textLogPerSec: { env: 'TEXT_LOG_PER_SEC', schema: Integer(20) },
  metricsIntervalMs: { env: 'METRICS_INTERVAL_MS', schema: Integer(10_000) },
  metricsToken: { env: 'METRICS_TOKEN', schema: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9._~-]{16,}$', description: 'at least 16 characters, each a letter, a digit or one of . _ ~ -' })), secret: true }
} as const satisfies Record<string, Setting>

type Settings = typeof SETTINGS
export type SettingName = keyof Settings
/** The settings `app.register(fanout, options)` takes. */
export type PluginSettingName = { [K in SettingName]: Settings[K] extends { demo: true } | { workerOnly: true } ? never : K }[SettingName]
/** The settings of the demo plugin, flattened (`publisher.minDelayMs`). */
export type DemoSettingName = { [K in SettingName]: Settings[K] extends { demo: true } ? K : never }[SettingName]
/** A setting's value once validated (an optional one may be undefined). */
export type SettingValue<K extends SettingName> = Static<Settings[K]['schema']>

type EnvName<K extends SettingName> = Settings[K] extends { env: infer E extends string } ? E : never
type EnvProperties = { [K in SettingName as EnvName<K>]: Settings[K]['schema'] }
type Properties<K extends SettingName> = { [P in K]: Settings[P]['schema'] }

const entries = Object.entries(SETTINGS) as Array<[SettingName, Setting]>
const schemaOf = <K extends SettingName>(keep: (s: Setting) => boolean) =>
  Type.Object(Object.fromEntries(entries.filter(([, s]) => keep(s)).map(([name, s]) => [name, s.schema])) as Properties<K>)

/** The plugin's options, with their defaults. */
export const PluginOptionsSchema = schemaOf<PluginSettingName>((s) => !s.demo && !s.workerOnly)
/** The demo plugin's options, flattened, with their defaults. */
export const DemoOptionsSchema = schemaOf<DemoSettingName>((s) => s.demo === true)

/** The environment, validated and typed by one schema (docs/configuration.md). */
export const EnvSchema = Type.Object({
  PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 8080 }),
  HOST: Type.String({ minLength: 1, default: '0.0.0.0' }),
  PUBLISHER: Type.Optional(OneOf(['on', 'off'])),
  LOG_LEVEL: OneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], { default: 'info' }),
  // Fastify's trustProxy for the standalone server: the proxies in front, as a hop count or a list.
  TRUST_PROXY: Type.Optional(Type.String({ pattern: '^([0-9]{1,2}|[0-9A-Fa-f:.]+(/[0-9]{1,3})?(,[0-9A-Fa-f:.]+(/[0-9]{1,3})?)*)$', description: 'a hop count, or addresses and CIDR ranges separated by commas' })),
  // The `namespaces` option as JSON (its hooks aside): lib/options.ts reads it.
  NAMESPACES: Type.Optional(Type.String({ minLength: 2 })),
  ...Object.fromEntries(entries.flatMap(([, s]) => s.env ? [[s.env, s.schema]] : [])) as EnvProperties
})

export type Env = Static<typeof EnvSchema>
/** The plugin's settings, validated, with their defaults. */
export type PluginSettings = Static<typeof PluginOptionsSchema>
/** The demo's settings, validated and flattened, with their defaults. */
export type DemoSettings = Static<typeof DemoOptionsSchema>

/** Bad configuration: the message names the variable or option and is meant to be printed as it is. */
export class ConfigError extends Error {
  override name = 'ConfigError'
}

/** How the user spelled a setting: its option name, or its environment variable. */
export type Namer = (key: SettingName) => string
const envName: Namer = (key) => (SETTINGS[key] as Setting).env ?? key
export const optionName: Namer = (key) => key

interface AjvError { instancePath: string, keyword: string, message?: string, params?: Record<string, unknown> }

/**
 * Validates `data` against `schema` (applying defaults) and turns ajv's errors into one line that
 * names each setting as the user wrote it. `coerce`: the environment's strings become numbers and
 * booleans; options are taken as given, so `'5'` for a number is an error, not a number.
 */
function validate<T> (what: string, schema: TSchema, data: Record<string, unknown>, name: (key: string) => string, coerce: boolean): T {
  try {
    // env-schema builds its ajv from these options (index.js); its types only declare the function form.
    const ajv = { customOptions: { coerceTypes: coerce } } as unknown as Parameters<typeof envSchema>[0] extends infer O ? O extends { ajv?: infer A } ? A : never : never
    return envSchema<T>({ schema, data, env: false, ajv })
  } catch (err) {
    const errors = ((err as { errors?: AjvError[] }).errors ?? [])
    // A union reports each branch, then "must match a schema in anyOf": say what it accepts instead.
    const anyOf = new Set(errors.filter((e) => e.keyword === 'anyOf').map((e) => e.instancePath))
    const lines = errors.filter((e) => e.keyword === 'anyOf' || !anyOf.has(e.instancePath)).map((e) => {
      const key = e.instancePath.replace(/^\//, '').replace(/\/.*$/, '')
      const described = (schema.properties as Record<string, TSchema>)[key]?.description
      // A pattern is said in words (its description), never as a raw regular expression.
      const message = (e.keyword === 'anyOf' || e.keyword === 'pattern') && described ? `must be ${described}` : e.message
      const allowed = e.params?.allowedValues ? ` (one of ${(e.params.allowedValues as string[]).join(', ')})` : ''
      const setting = bySetting.get(key) ?? byEnv.get(key)?.[1]
      const got = setting?.secret ? '(value hidden)' : JSON.stringify(data[key])
      return `${name(key)} ${message}${allowed}, got ${got}`
    })
    throw new ConfigError(`invalid ${what}: ${lines.length > 0 ? [...new Set(lines)].join('; ') : (err as Error).message}`)
  }
}

// Options Fastify's `register` takes for itself, not settings of a plugin.
const FASTIFY_OPTIONS = new Set(['prefix', 'logLevel', 'logSerializers'])

/**
 * A plugin's options (flattened: `publisher.minDelayMs`) validated against its schema as given,
 * with no coercion (`'5'` is not a number), defaults filled in. `skip`: options that are not
 * settings (objects, functions); `hint` explains an unknown option.
 */
export function validateOptions<T> (what: string, schema: TSchema, options: Record<string, unknown>, skip: readonly string[] = [], hint = (_unknown: string[]) => ''): T {
  const given = Object.fromEntries(Object.entries(options).filter(([key, value]) => value !== undefined && !FASTIFY_OPTIONS.has(key) && !skip.includes(key)))
  const unknown = Object.keys(given).filter((key) => !(key in (schema.properties as object)))
  if (unknown.length > 0) throw new ConfigError(`invalid ${what}: unknown option ${unknown.map((k) => `"${k}"`).join(', ')}${hint(unknown)}`)
  return validate<T>(what, schema, given, (key) => key, false)
}

/** Compile-time checks that an options interface matches its settings: `Assert<Same<A, B>>`. */
export type Same<A, B> = [A] extends [B] ? [B] extends [A] ? true : false : false
export type Assert<T extends true> = T

/** The Redis deployment the four settings describe, checked together; errors name them as `name` does. */
export function checkRedisTarget (what: string, values: { redisUrl?: string, redisSentinels?: string, redisSentinelName?: string, redisClusterNodes?: string }, name: Namer): RedisTarget | undefined {
  const names: TargetNames = { url: name('redisUrl'), sentinels: name('redisSentinels'), sentinelName: name('redisSentinelName'), clusterNodes: name('redisClusterNodes') }
  try {
    return redisTarget({ url: values.redisUrl, sentinels: values.redisSentinels, sentinelName: values.redisSentinelName, clusterNodes: values.redisClusterNodes }, names)
  } catch (err) {
    throw new ConfigError(`invalid ${what}: ${(err as Error).message}`)
  }
}

/** The demo publisher's schedule, checked as a whole. */
export function checkDelays (what: string, minDelayMs: number, maxDelayMs: number, name: Namer): void {
  if (minDelayMs > maxDelayMs) {
    throw new ConfigError(`invalid ${what}: ${name('publisher.minDelayMs')} (${minDelayMs}) must not exceed ${name('publisher.maxDelayMs')} (${maxDelayMs})`)
  }
}

const bySetting = new Map<string, Setting>(entries)
const byEnv = new Map<string, [SettingName, Setting]>(entries.flatMap(([key, s]) => s.env ? [[s.env, [key, s]]] : []))

/** The environment, validated: every variable typed and defaulted, the errors naming variables. */
export function loadEnv (source: NodeJS.ProcessEnv = process.env): Env {
  // An empty variable means "not set", as in a compose file's `FOO:` with no value.
  const data: Record<string, unknown> = Object.fromEntries(Object.entries(source).filter(([, v]) => v !== ''))
  for (const [env, [, s]] of byEnv) {
    if (s.list && typeof data[env] === 'string') data[env] = (data[env] as string).split(',').map((v) => v.trim()).filter(Boolean)
  }
  const env = validate<Env>('configuration', EnvSchema, data, (key) => key, true)
  checkRedisTarget('configuration', { redisUrl: env.REDIS_URL, redisSentinels: env.REDIS_SENTINELS, redisSentinelName: env.REDIS_SENTINEL_NAME, redisClusterNodes: env.REDIS_CLUSTER_NODES }, envName)
  checkDelays('configuration', env.GUEST_MIN_DELAY_MS, env.GUEST_MAX_DELAY_MS, envName)
  checkTokens('configuration', env, envName)
  return env
}

/** The signed-token settings, checked together (tokenKey), the errors naming what was set. */
function checkTokens (what: string, env: Env, name: Namer): void {
  const settings = settingsFromEnv(env, (key) => key.startsWith('jwt') || key === 'jwksUrl') as TokenSettings
  if (!tokensConfigured(settings)) return
  try {
    tokenKey(settings, name)
  } catch (err) {
    throw new ConfigError(`invalid ${what}: ${(err as Error).message}`)
  }
}

/** The settings `keep` selects, read from a validated environment, by option name (flattened). */
export function settingsFromEnv (env: Env, keep: (name: SettingName, s: Setting) => boolean): Record<string, unknown> {
  const values: Record<string, unknown> = {}
  for (const [key, s] of entries) {
    if (!keep(key, s) || s.env === undefined) continue
    const value = (env as Record<string, unknown>)[s.env]
    if (value !== undefined) values[key] = value
  }
  return values
}

/** Whether the environment names a Redis deployment (any of the three topologies). */
export function usesRedis (env: Env): boolean {
  return Boolean(env.REDIS_URL ?? env.REDIS_SENTINELS ?? env.REDIS_CLUSTER_NODES)
}
