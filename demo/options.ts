import {
  checkDelays, ConfigError, DemoOptionsSchema, optionName, settingsFromEnv, usesRedis, validate,
  type DemoSettingName, type DemoSettings, type Env
} from '../lib/config.js'

export interface PublisherOptions {
  /** [3000] */
  minDelayMs?: number
  /** [8000] */
  maxDelayMs?: number
  /** Publish this many events, then stop. [unlimited] */
  count?: number
}

/** The demo plugin's options (`fastify-fanout/demo`), all optional. */
export interface DemoOptions {
  /** Run the guest publisher in this process: true or its options. [false] */
  publisher?: boolean | PublisherOptions
  /** The tutorial's PHP server: a greeting, then a guest event for each text message. [false] */
  askPath?: string | false
  /** The demo page, which shows the fastify-fanout stream (its `guestPath`). [false] */
  demoPath?: string | false
  /** Fastify's own: the demo's routes go under it. */
  prefix?: string
}

// Compile-time: the demo's options are exactly its settings in the table (lib/config.ts).
type Same<A, B> = [A] extends [B] ? [B] extends [A] ? true : false : false
type Assert<T extends true> = T
export type DemoOptionsMatchSettings = Assert<Same<`publisher.${keyof PublisherOptions}` | Exclude<keyof DemoOptions, 'publisher' | 'prefix'>, DemoSettingName>>

export interface ResolvedDemoOptions {
  publisher: { minDelayMs: number, maxDelayMs: number, count: number | undefined } | false
  askPath: string | false
  demoPath: string | false
}

const WHAT = 'fastify-fanout/demo option'

/** Validates the demo's options as given (no coercion) and fills in every default. */
export function resolveDemoOptions (options: DemoOptions = {}): ResolvedDemoOptions {
  const flat: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(options)) {
    if (value === undefined || key === 'prefix' || key === 'logLevel' || key === 'logSerializers') continue
    if (key === 'publisher' && typeof value === 'object' && value !== null) {
      for (const [field, v] of Object.entries(value)) if (v !== undefined) flat[`publisher.${field}`] = v
    } else if (key !== 'publisher') {
      flat[key] = value
    } else if (typeof value !== 'boolean') {
      throw new ConfigError(`invalid ${WHAT}: publisher must be true, false or { minDelayMs, maxDelayMs, count }, got ${JSON.stringify(value)}`)
    }
  }
  const unknown = Object.keys(flat).filter((key) => !(key in DemoOptionsSchema.properties))
  if (unknown.length > 0) throw new ConfigError(`invalid ${WHAT}: unknown option ${unknown.map((k) => `"${k}"`).join(', ')}`)
  const v = validate<DemoSettings>(WHAT, DemoOptionsSchema, flat, (key) => key, false)
  checkDelays(WHAT, v['publisher.minDelayMs'], v['publisher.maxDelayMs'], optionName)
  const publisher = options.publisher !== undefined && options.publisher !== false
  return {
    publisher: publisher && { minDelayMs: v['publisher.minDelayMs'], maxDelayMs: v['publisher.maxDelayMs'], count: v['publisher.count'] },
    askPath: v.askPath,
    demoPath: v.demoPath
  }
}

/**
 * The demo as the standalone server runs it: the page at `/`, `/ask`, and the publisher in-process
 * unless Redis is in use (then the worker publishes) or PUBLISHER says otherwise.
 */
export function demoOptionsFromEnv (env: Env): DemoOptions {
  const flat = settingsFromEnv(env, (_key, s) => s.demo === true)
  const on = (env.PUBLISHER ?? (usesRedis(env) ? 'off' : 'on')) === 'on'
  const schedule: PublisherOptions = {}
  for (const [key, value] of Object.entries(flat)) (schedule as Record<string, unknown>)[key.replace(/^publisher\./, '')] = value
  return { askPath: '/ask', demoPath: '/', publisher: on && schedule }
}
