// Issue 11, "One options schema": the plugin's options go through the same schema as the
// environment, at register time, and a bad one gets one clear error naming the option.
import Fastify from 'fastify'
import t from 'tap'
import fanout, { ConfigError, type FanoutOptions } from '../../app.js'
import { loadEnv, optionsFromEnv, SETTINGS } from '../../lib/config.js'
import { resolveOptions } from '../../lib/options.js'
import { tempDir } from '../support/helper.js'

/** What `register` + `ready` says about these options. */
async function registerError (options: FanoutOptions): Promise<Error | undefined> {
  const app = Fastify({ logger: false })
  try {
    await app.register(fanout, options)
    await app.ready()
    return undefined
  } catch (err) {
    return err as Error
  } finally {
    await app.close().catch(() => {})
  }
}

t.test('a bad option is refused at register time, named as the user wrote it', async (t) => {
  const cases: Array<[string, FanoutOptions, RegExp]> = [
    ['a negative publisher delay', { publisher: { minDelayMs: -1 } }, /^invalid fastify-fanout option: publisher\.minDelayMs must be >= 0, got -1$/],
    ['min over max', { publisher: { minDelayMs: 900, maxDelayMs: 100 } }, /^invalid fastify-fanout option: publisher\.minDelayMs \(900\) must not exceed publisher\.maxDelayMs \(100\)$/],
    ['a redisUrl that is not a URL', { redisUrl: 'localhost:6379' }, /^invalid fastify-fanout option: redisUrl must match pattern .*, got \(value hidden\)$/],
    ['a route path without its slash', { guestPath: 'live' }, /^invalid fastify-fanout option: guestPath must be a path starting with "\/", or false, got "live"$/],
    ['a string where a number goes', { maxConnections: 'many' as never }, /^invalid fastify-fanout option: maxConnections must be integer, got "many"$/],
    ['an unknown option', { guestpath: '/x' } as never, /^invalid fastify-fanout option: unknown option "guestpath"$/],
    ['a short upload token', { uploadToken: 'abc' }, /^invalid fastify-fanout option: uploadToken must NOT have fewer than 8 characters, got \(value hidden\)$/],
    ['uploadToken and authorize', { uploadToken: 'abcdefgh', authorize: () => ({}) }, /pass authorize or uploadToken, not both/],
    ['a demo page with no stream', { demoPath: '/', guestPath: false }, /demoPath needs guestPath/]
  ]
  for (const [what, options, expected] of cases) {
    const err = await registerError(options)
    t.ok(err instanceof ConfigError, `${what}: a ConfigError`)
    t.match(err?.message, expected, what)
    t.notMatch(err?.message ?? '', /GUEST_|REDIS_URL|MAX_CONNECTIONS/, `${what}: no environment variable names`)
  }
})

t.test('the environment is checked by the same table and named by its variables', async (t) => {
  t.throws(() => loadEnv({ GUEST_MIN_DELAY_MS: '-1' }), /GUEST_MIN_DELAY_MS must be >= 0/)
  t.throws(() => loadEnv({ GUEST_MIN_DELAY_MS: '900', GUEST_MAX_DELAY_MS: '100' }), /GUEST_MIN_DELAY_MS \(900\) must not exceed GUEST_MAX_DELAY_MS \(100\)/)
  t.throws(() => loadEnv({ UPLOAD_QUOTA_BYTES: '0' }), /UPLOAD_QUOTA_BYTES must be >= 1/)
  t.equal(loadEnv({ UPLOAD_QUOTA_BYTES: '5000' }).UPLOAD_QUOTA_BYTES, 5000)
  t.same(loadEnv({ ALLOWED_ORIGINS: 'https://a.example, null' }).ALLOWED_ORIGINS, ['https://a.example', 'null'])
  // Every setting with a variable reaches the plugin under its option name, value for value.
  const options = optionsFromEnv(loadEnv({ HISTORY_SIZE: '7', UPLOAD_QUOTA_BYTES: '5000', GUEST_COUNT: '3' }))
  t.equal(options.historySize, 7)
  t.equal(options.uploadQuotaBytes, 5000)
  t.same(options.publisher, { minDelayMs: 3000, maxDelayMs: 8000, count: 3 })
})

t.test('every default comes from the one table', async (t) => {
  const resolved = resolveOptions({}) as unknown as Record<string, unknown>
  for (const [name, setting] of Object.entries(SETTINGS)) {
    const fallback = (setting.schema as { default?: unknown }).default
    if (name.startsWith('publisher.') || fallback === undefined) continue
    t.same(resolved[name], fallback, `${name} defaults to ${JSON.stringify(fallback)}`)
  }
  t.equal(resolved.publisher, false, 'no guest publisher in an embedded app')
  t.same(resolveOptions({ publisher: true }).publisher, { minDelayMs: 3000, maxDelayMs: 8000, count: undefined })
  const env = loadEnv({})
  for (const setting of Object.values(SETTINGS) as Array<{ env?: string, schema: { default?: unknown } }>) {
    if (setting.env && setting.schema.default !== undefined) t.same((env as Record<string, unknown>)[setting.env], setting.schema.default, `${setting.env} has the same default`)
  }
})

t.test('a valid configuration registers and serves', async (t) => {
  const app = Fastify({ logger: false })
  t.teardown(() => app.close())
  await app.register(fanout, { uploadDir: tempDir(t), uploads: true, uploadQuotaBytes: 1000, publisher: { minDelayMs: 0, maxDelayMs: 0, count: 1 } })
  await app.ready()
  t.equal(app.fanout.options.uploadQuotaBytes, 1000)
  t.same(app.fanout.options.publisher, { minDelayMs: 0, maxDelayMs: 0, count: 1 })
})
