import {
  checkDelays, ConfigError, DemoOptionsSchema, optionName, settingsFromEnv, usesRedis, validateOptions,
  type Assert, type DemoSettingName, type DemoSettings, type Env, type Same, type SettingValue
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
type PublisherTypes = { [K in keyof PublisherOptions]-?: Same<NonNullable<PublisherOptions[K]>, NonNullable<SettingValue<`publisher.${K}`>>> }
export type DemoOptionsMatchSettings =
  & Assert<Same<`publisher.${keyof PublisherOptions}` | Exclude<keyof DemoOptions, 'publisher' | 'prefix'>, DemoSettingName>>
  & Assert<PublisherTypes[keyof PublisherOptions]>
  & Assert<Same<NonNullable<DemoOptions['askPath'] | DemoOptions['demoPath']>, SettingValue<'askPath'> | SettingValue<'demoPath'>>>

export interface ResolvedDemoOptions {
  publisher: { minDelayMs: number, maxDelayMs: number, count: number | undefined } | false
  askPath: string | false
  demoPath: string | false
}

const WHAT = 'fastify-fanout/demo option'

/** Validates the demo's options as given (no coercion) and fills in every default. */
export function resolveDemoOptions (options: DemoOptions = {}): ResolvedDemoOptions {
  const { publisher: given, ...flat } = options as Record<string, unknown>
  if (typeof given === 'object' && given !== null) {
    for (const [field, value] of Object.entries(given)) flat[`publisher.${field}`] = value
  } else if (given !== undefined && typeof given !== 'boolean') {
    throw new ConfigError(`invalid ${WHAT}: publisher must be true, false or { minDelayMs, maxDelayMs, count }, got ${JSON.stringify(given)}`)
  }
  const v = validateOptions<DemoSettings>(WHAT, DemoOptionsSchema, flat)
  checkDelays(WHAT, v['publisher.minDelayMs'], v['publisher.maxDelayMs'], optionName)
  const publisher = options.publisher !== undefined && options.publisher !== false
  return {
    publisher: publisher && { minDelayMs: v['publisher.minDelayMs'], maxDelayMs: v['publisher.maxDelayMs'], count: v['publisher.count'] },
    askPath: v.askPath,
    demoPath: v.demoPath
  }
}

/** What the standalone server serves of the demo: the page and the tutorial's `/ask`. */
export const DEMO_STANDALONE = { askPath: '/ask', demoPath: '/' } as const satisfies DemoOptions

/**
 * The demo as the standalone server runs it: the page at `/`, `/ask`, and the publisher in-process
 * unless Redis is in use (then the worker publishes) or PUBLISHER says otherwise.
 */
export function demoOptionsFromEnv (env: Env): DemoOptions {
  const on = (env.PUBLISHER ?? (usesRedis(env) ? 'off' : 'on')) === 'on'
  return { ...DEMO_STANDALONE, publisher: on && publisherFromEnv(env) }
}

/** The publisher's schedule as the environment sets it (the server's in-process one, and the worker's). */
export function publisherFromEnv (env: Env): PublisherOptions {
  const schedule: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(settingsFromEnv(env, (key) => key.startsWith('publisher.')))) schedule[key.slice('publisher.'.length)] = value
  return schedule
}
