import { Type, type Static } from '@sinclair/typebox'
import envSchema from 'env-schema'
import { DEFAULTS, type FanoutOptions } from './options.js'
import { redisTarget } from './redis/connection.js'

const Integer = (defaultValue: number, minimum = 0) => Type.Integer({ minimum, default: defaultValue })
// A string enum, not a union of literals: ajv then reports one error with the allowed values,
// instead of one per literal plus an "anyOf" line.
const OneOf = <T extends string>(values: readonly T[], options: { default?: T } = {}) =>
  Type.Unsafe<T>({ type: 'string', enum: values, ...options })
const OnOff = OneOf(['on', 'off'])

/** The environment, validated and typed by one schema (README, "Configuration"). */
export const EnvSchema = Type.Object({
  PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 8080 }),
  HOST: Type.String({ minLength: 1, default: '0.0.0.0' }),
  REDIS_URL: Type.Optional(Type.String({ pattern: '^rediss?://' })),
  REDIS_SENTINELS: Type.Optional(Type.String({ minLength: 1 })),
  REDIS_SENTINEL_NAME: Type.Optional(Type.String({ minLength: 1 })),
  REDIS_CLUSTER_NODES: Type.Optional(Type.String({ minLength: 1 })),
  REDIS_WAIT_REPLICAS: Integer(DEFAULTS.redisWaitReplicas),
  WORKER_LEASE_MS: Integer(DEFAULTS.workerLeaseMs, 200),
  REDIS_PREFIX: Type.String({ default: DEFAULTS.redisPrefix }),
  HISTORY_SIZE: Integer(DEFAULTS.historySize, 1),
  OUTBOX_SIZE: Integer(DEFAULTS.outboxSize, 1),
  CANARY_INTERVAL_MS: Integer(DEFAULTS.canaryIntervalMs, 100),
  PUBLISHER: Type.Optional(OnOff),
  GUEST_MIN_DELAY_MS: Integer(DEFAULTS.minDelayMs),
  GUEST_MAX_DELAY_MS: Integer(DEFAULTS.maxDelayMs),
  GUEST_COUNT: Type.Optional(Type.Integer({ minimum: 0 })),
  UPLOAD_DIR: Type.String({ minLength: 1, default: DEFAULTS.uploadDir }),
  MAX_UPLOAD_BYTES: Integer(DEFAULTS.maxUploadBytes, 1),
  UPLOAD_MIN_FREE_BYTES: Integer(DEFAULTS.uploadMinFreeBytes),
  UPLOAD_TOKEN: Type.Optional(Type.String({ minLength: 8, pattern: '^[A-Za-z0-9._~-]+$' })),
  ALLOWED_ORIGINS: Type.Optional(Type.String()),
  HEARTBEAT_MS: Integer(DEFAULTS.heartbeatMs),
  DRAIN_MS: Integer(DEFAULTS.drainMs),
  MAX_CONNECTIONS: Integer(DEFAULTS.maxConnections, 1),
  MAX_BUFFERED_BYTES: Integer(DEFAULTS.maxBufferedBytes, 1024),
  MAX_CONCURRENT_REPLAYS: Integer(DEFAULTS.maxConcurrentReplays, 1),
  RATE_MESSAGES_PER_SEC: Integer(DEFAULTS.rateMessagesPerSec, 1),
  RATE_BYTES_PER_SEC: Integer(DEFAULTS.rateBytesPerSec, 1),
  TEXT_LOG_PER_SEC: Integer(DEFAULTS.textLogPerSec),
  LOG_LEVEL: OneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], { default: 'info' }),
  METRICS_INTERVAL_MS: Integer(DEFAULTS.metricsIntervalMs)
})

export type Env = Static<typeof EnvSchema>

/** Bad configuration: the message names the variable and is meant to be printed as it is. */
export class ConfigError extends Error {
  override name = 'ConfigError'
}

interface AjvError { instancePath: string, message?: string, params?: Record<string, unknown> }

// Values an error message must not echo: a secret, or a URL that may carry a password (issue 5).
const SECRET_VARIABLES = new Set(['UPLOAD_TOKEN', 'REDIS_URL'])

export function loadEnv (source: NodeJS.ProcessEnv = process.env): Env {
  // An empty variable means "not set", as in a compose file's `FOO:` with no value.
  const data = Object.fromEntries(Object.entries(source).filter(([, v]) => v !== ''))
  let env: Env
  try {
    env = envSchema<Env>({ schema: EnvSchema, data, env: false })
  } catch (err) {
    const errors = ((err as { errors?: AjvError[] }).errors ?? [])
    const lines = errors.map((e) => {
      const name = e.instancePath.replace(/^\//, '')
      const allowed = e.params?.allowedValues ? ` (one of ${(e.params.allowedValues as string[]).join(', ')})` : ''
      const got = SECRET_VARIABLES.has(name) ? '(value hidden)' : JSON.stringify(source[name])
      return `${name} ${e.message}${allowed}, got ${got}`
    })
    throw new ConfigError(`invalid configuration: ${lines.length > 0 ? [...new Set(lines)].join('; ') : (err as Error).message}`)
  }
  try {
    redisTarget({ url: env.REDIS_URL, sentinels: env.REDIS_SENTINELS, sentinelName: env.REDIS_SENTINEL_NAME, clusterNodes: env.REDIS_CLUSTER_NODES })
  } catch (err) {
    throw new ConfigError(`invalid configuration: ${(err as Error).message}`)
  }
  if (env.GUEST_MIN_DELAY_MS > env.GUEST_MAX_DELAY_MS) {
    throw new ConfigError(`invalid configuration: GUEST_MIN_DELAY_MS (${env.GUEST_MIN_DELAY_MS}) must not exceed GUEST_MAX_DELAY_MS (${env.GUEST_MAX_DELAY_MS})`)
  }
  return env
}

/** The plugin's options as the environment sets them (server.ts uses this). */
export function optionsFromEnv (env: Env): FanoutOptions {
  return {
    redisUrl: env.REDIS_URL,
    redisSentinels: env.REDIS_SENTINELS,
    redisSentinelName: env.REDIS_SENTINEL_NAME,
    redisClusterNodes: env.REDIS_CLUSTER_NODES,
    redisWaitReplicas: env.REDIS_WAIT_REPLICAS,
    redisPrefix: env.REDIS_PREFIX,
    historySize: env.HISTORY_SIZE,
    outboxSize: env.OUTBOX_SIZE,
    canaryIntervalMs: env.CANARY_INTERVAL_MS,
    publisher: (env.PUBLISHER ?? (usesRedis(env) ? 'off' : 'on')) === 'on' && {
      minDelayMs: env.GUEST_MIN_DELAY_MS,
      maxDelayMs: env.GUEST_MAX_DELAY_MS,
      count: env.GUEST_COUNT
    },
    uploadDir: env.UPLOAD_DIR,
    maxUploadBytes: env.MAX_UPLOAD_BYTES,
    uploadMinFreeBytes: env.UPLOAD_MIN_FREE_BYTES,
    uploadToken: env.UPLOAD_TOKEN,
    allowedOrigins: env.ALLOWED_ORIGINS?.split(',').map((o) => o.trim()).filter(Boolean),
    heartbeatMs: env.HEARTBEAT_MS,
    drainMs: env.DRAIN_MS,
    maxConnections: env.MAX_CONNECTIONS,
    maxBufferedBytes: env.MAX_BUFFERED_BYTES,
    maxConcurrentReplays: env.MAX_CONCURRENT_REPLAYS,
    rateMessagesPerSec: env.RATE_MESSAGES_PER_SEC,
    rateBytesPerSec: env.RATE_BYTES_PER_SEC,
    textLogPerSec: env.TEXT_LOG_PER_SEC,
    metricsIntervalMs: env.METRICS_INTERVAL_MS
  }
}

/** Whether the environment names a Redis deployment (any of the three topologies). */
export function usesRedis (env: Env): boolean {
  return Boolean(env.REDIS_URL ?? env.REDIS_SENTINELS ?? env.REDIS_CLUSTER_NODES)
}
