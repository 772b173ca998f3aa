// The plugin's options and the demo's go through schemas built from the one SETTINGS table, at
// register time; a bad one gets one clear error naming the option as the user wrote it, never an
// environment variable, a raw regular expression or a coerced value.
import Fastify from 'fastify'
import t from 'tap'
import fanout, { ConfigError, type FanoutOptions } from '../../app.js'
import fanoutDemo, { type DemoOptions } from '../../demo/plugin.js'
import { demoOptionsFromEnv, resolveDemoOptions } from '../../demo/options.js'
import { loadEnv, SETTINGS } from '../../lib/config.js'
import { optionsFromEnv, resolveOptions } from '../../lib/options.js'
import { tempDir } from '../support/helper.js'

/** What `register` + `ready` says about these options (the demo's, when given, registered after). */
async function registerError (options: FanoutOptions, demo?: DemoOptions): Promise<Error | undefined> {
  const app = Fastify({ logger: false })
  try {
    await app.register(fanout, options)
    if (demo) await app.register(fanoutDemo, demo)
    await app.ready()
    return undefined
  } catch (err) {
    return err as Error
  } finally {
    await app.close().catch(() => {})
  }
}

const ENV_NAMES = /GUEST_|REDIS_|MAX_CONNECTIONS|UPLOAD_TOKEN/

t.test('a bad plugin option is refused at register time, named as the user wrote it', async (t) => {
  const cases: Array<[string, FanoutOptions, RegExp]> = [
    ['a redisUrl that is not a URL', { redisUrl: 'localhost:6379' }, /^invalid fastify-fanout option: redisUrl must be a redis:\/\/ or rediss:\/\/ URL, got \(value hidden\)$/],
    ['sentinels without their name', { redisSentinels: 'a:1' }, /^invalid fastify-fanout option: redisSentinels needs redisSentinelName, the name the sentinels monitor$/],
    ['sentinels and cluster nodes', { redisSentinels: 'a:1', redisSentinelName: 'm', redisClusterNodes: 'b:2' }, /^invalid fastify-fanout option: redisSentinels and redisClusterNodes are both set/],
    ['a bad host:port list', { redisClusterNodes: 'a' }, /^invalid fastify-fanout option: redisClusterNodes: "a" is not host:port/],
    ['a route path without its slash', { guestPath: 'live' }, /^invalid fastify-fanout option: guestPath must be a path starting with "\/", or false, got "live"$/],
    ['a word where a number goes', { maxConnections: 'many' as never }, /^invalid fastify-fanout option: maxConnections must be integer, got "many"$/],
    ['a numeric string where a number goes', { historySize: '5' as never }, /^invalid fastify-fanout option: historySize must be integer, got "5"$/],
    ['a string where a boolean goes', { uploads: 'true' as never }, /^invalid fastify-fanout option: uploads must be boolean, got "true"$/],
    ['an unknown option', { guestpath: '/x' } as never, /^invalid fastify-fanout option: unknown option "guestpath"$/],
    ['a demo option given to the plugin', { publisher: true } as never, /^invalid fastify-fanout option: unknown option "publisher" \(publisher: options of the demo plugin, fastify-fanout\/demo\)$/],
    ['the worker\'s setting given to the plugin', { workerLeaseMs: 1000 } as never, /^invalid fastify-fanout option: unknown option "workerLeaseMs"$/],
    ['a short upload token', { uploadToken: 'abc' }, /^invalid fastify-fanout option: uploadToken must be at least 8 characters, each a letter, a digit or one of \. _ ~ -, got \(value hidden\)$/],
    ['uploadToken and authorize', { uploadToken: 'abcdefgh', authorize: () => ({}) }, /pass authorize or uploadToken, not both/]
  ]
  for (const [what, options, expected] of cases) {
    const err = await registerError(options)
    t.ok(err instanceof ConfigError, `${what}: a ConfigError`)
    t.match(err?.message, expected, what)
    t.notMatch(err?.message ?? '', ENV_NAMES, `${what}: no environment variable names`)
    t.notMatch(err?.message ?? '', /must match pattern|\^|\$"/, `${what}: no raw regular expression`)
  }
})

t.test('a bad demo option is refused by the demo plugin, named as the user wrote it', async (t) => {
  const cases: Array<[string, FanoutOptions, DemoOptions, RegExp]> = [
    ['a negative publisher delay', {}, { publisher: { minDelayMs: -1 } }, /^invalid fastify-fanout\/demo option: publisher\.minDelayMs must be >= 0, got -1$/],
    ['min over max', {}, { publisher: { minDelayMs: 900, maxDelayMs: 100 } }, /^invalid fastify-fanout\/demo option: publisher\.minDelayMs \(900\) must not exceed publisher\.maxDelayMs \(100\)$/],
    ['a numeric string for a delay', {}, { publisher: { minDelayMs: '5' as never } }, /^invalid fastify-fanout\/demo option: publisher\.minDelayMs must be integer, got "5"$/],
    ['a demo page with no stream', { guestPath: false }, { demoPath: '/' }, /demoPath needs the guestPath of fastify-fanout/]
  ]
  for (const [what, options, demo, expected] of cases) {
    const err = await registerError(options, demo)
    t.ok(err instanceof ConfigError, `${what}: a ConfigError`)
    t.match(err?.message, expected, what)
    t.notMatch(err?.message ?? '', ENV_NAMES, `${what}: no environment variable names`)
  }
})

t.test('the environment is checked by the same table and named by its variables', async (t) => {
  t.throws(() => loadEnv({ GUEST_MIN_DELAY_MS: '-1' }), /GUEST_MIN_DELAY_MS must be >= 0/)
  t.throws(() => loadEnv({ GUEST_MIN_DELAY_MS: '900', GUEST_MAX_DELAY_MS: '100' }), /GUEST_MIN_DELAY_MS \(900\) must not exceed GUEST_MAX_DELAY_MS \(100\)/)
  t.throws(() => loadEnv({ UPLOAD_QUOTA_BYTES: '0' }), /UPLOAD_QUOTA_BYTES must be >= 1/)
  t.throws(() => loadEnv({ REDIS_SENTINELS: 'a:1' }), /^invalid configuration: REDIS_SENTINELS needs REDIS_SENTINEL_NAME/)
  t.throws(() => loadEnv({ REDIS_URL: 'localhost:6379' }), /REDIS_URL must be a redis:\/\/ or rediss:\/\/ URL, got \(value hidden\)/)
  t.equal(loadEnv({ UPLOAD_QUOTA_BYTES: '5000' }).UPLOAD_QUOTA_BYTES, 5000, 'the environment is coerced')
  t.same(loadEnv({ ALLOWED_ORIGINS: 'https://a.example, null' }).ALLOWED_ORIGINS, ['https://a.example', 'null'])
  // Every setting with a variable reaches the plugin, or the demo, under its option name.
  const env = loadEnv({ HISTORY_SIZE: '7', UPLOAD_QUOTA_BYTES: '5000', GUEST_COUNT: '3', WORKER_LEASE_MS: '900' })
  const options = resolveOptions(optionsFromEnv(env))
  t.equal(options.historySize, 7)
  t.equal(options.uploadQuotaBytes, 5000)
  t.equal(options.redis, undefined, 'no Redis named: the in-memory broker')
  t.notOk('workerLeaseMs' in options, 'the worker\'s lease is not a plugin option')
  t.same(demoOptionsFromEnv(env).publisher, { minDelayMs: 3000, maxDelayMs: 8000, count: 3 }, 'publisher on without Redis')
  t.equal(demoOptionsFromEnv(loadEnv({ REDIS_URL: 'redis://127.0.0.1:1' })).publisher, false, 'and off with it')
  t.same(resolveOptions(optionsFromEnv(loadEnv({ REDIS_SENTINELS: 'a:1,b:2', REDIS_SENTINEL_NAME: 'm' }))).redis,
    { sentinels: [{ host: 'a', port: 1 }, { host: 'b', port: 2 }], name: 'm' }, 'the Redis target, resolved once')
})

t.test('every default comes from the one table', async (t) => {
  const resolved = resolveOptions({}) as unknown as Record<string, unknown>
  const demo = resolveDemoOptions({}) as unknown as Record<string, unknown>
  for (const [name, setting] of Object.entries(SETTINGS) as Array<[string, { schema: { default?: unknown }, demo?: true, workerOnly?: true }]>) {
    const fallback = setting.schema.default
    if (fallback === undefined || setting.workerOnly || name.startsWith('publisher.')) continue
    t.same((setting.demo ? demo : resolved)[name], fallback, `${name} defaults to ${JSON.stringify(fallback)}`)
  }
  t.equal(demo.publisher, false, 'no guest publisher unless asked for')
  t.same(resolveDemoOptions({ publisher: true }).publisher, { minDelayMs: 3000, maxDelayMs: 8000, count: undefined })
  const env = loadEnv({})
  for (const setting of Object.values(SETTINGS) as Array<{ env?: string, schema: { default?: unknown } }>) {
    if (setting.env && setting.schema.default !== undefined) t.same((env as Record<string, unknown>)[setting.env], setting.schema.default, `${setting.env} has the same default`)
  }
})

t.test('a valid configuration registers and serves; its options are read-only', async (t) => {
  const app = Fastify({ logger: false })
  t.teardown(() => app.close())
  await app.register(fanout, { uploadDir: tempDir(t), uploads: true, uploadQuotaBytes: 1000 })
  await app.register(fanoutDemo, { publisher: { minDelayMs: 0, maxDelayMs: 0, count: 1 } })
  await app.ready()
  t.equal(app.fanout.options.uploadQuotaBytes, 1000)
  t.throws(() => { (app.fanout.options as { historySize: number }).historySize = 1 }, TypeError, 'the resolved options are frozen')
  t.same(Object.keys(app.fanout).sort(), ['broker', 'history', 'options', 'publish', 'revoke', 'revokeUser', 'snapshot'], 'fastify.fanout: what an app builds on, nothing internal')
})
