// lib/config.ts and the environment's way to the options: loadEnv, optionsFromEnv, demoOptionsFromEnv.
import t from 'tap'
import { demoOptionsFromEnv } from '../../demo/options.js'
import { ConfigError, loadEnv } from '../../lib/config.js'
import { optionsFromEnv } from '../../lib/options.js'

t.test('loadEnv: defaults, and one clear message per bad variable', async (t) => {
  const env = loadEnv({})
  t.equal(env.PORT, 8080)
  t.equal(env.HOST, '0.0.0.0')
  t.equal(env.GUEST_MIN_DELAY_MS, 3000)
  t.equal(env.GUEST_MAX_DELAY_MS, 8000)
  t.equal(env.UPLOAD_DIR, './uploads')
  t.equal(env.MAX_UPLOAD_BYTES, 10 * 1024 * 1024)
  t.equal(env.LOG_LEVEL, 'info')
  t.equal(env.METRICS_INTERVAL_MS, 10_000)
  t.equal(env.REDIS_URL, undefined)
  t.equal(env.ALLOWED_ORIGINS, undefined)
  t.equal(env.GUEST_COUNT, undefined)

  const set = loadEnv({ PORT: '9000', GUEST_MIN_DELAY_MS: '0', GUEST_MAX_DELAY_MS: '0', GUEST_COUNT: '5', HOST: '' })
  t.equal(set.PORT, 9000, 'numbers are read from strings')
  t.equal(set.GUEST_MAX_DELAY_MS, 0)
  t.equal(set.GUEST_COUNT, 5)
  t.equal(set.HOST, '0.0.0.0', 'an empty variable counts as unset')

  const badPort = configError(() => loadEnv({ PORT: 'abc' }))
  t.type(badPort, ConfigError)
  t.match(badPort.message, /PORT/)
  t.match(badPort.message, /"abc"/, 'shows the value it got')
  t.notMatch(badPort.message, /\n/, 'one line')

  t.match(configError(() => loadEnv({ PORT: '70000' })).message, /PORT/)
  const level = configError(() => loadEnv({ LOG_LEVEL: 'loud' }))
  t.match(level.message, /LOG_LEVEL .*one of fatal, error, warn, info, debug, trace, silent.*"loud"/, 'names the allowed values')
  t.notMatch(level.message, /;/, 'one message for one bad variable')
  t.match(configError(() => loadEnv({ PUBLISHER: 'yes' })).message, /PUBLISHER .*one of on, off/)
  t.match(configError(() => loadEnv({ MAX_UPLOAD_BYTES: '-1' })).message, /MAX_UPLOAD_BYTES/)
  t.match(configError(() => loadEnv({ REDIS_URL: 'localhost:6379' })).message, /REDIS_URL/)

  const range = configError(() => loadEnv({ GUEST_MIN_DELAY_MS: '9000', GUEST_MAX_DELAY_MS: '1000' }))
  t.type(range, ConfigError)
  t.match(range.message, /GUEST_MIN_DELAY_MS/)
  t.match(range.message, /GUEST_MAX_DELAY_MS/)

  // Signed-token settings are checked together, and named as they were set.
  t.equal(configError(() => loadEnv({ JWKS_URL: 'http://keys.example/jwks' })).message,
    'invalid configuration: JWKS_URL must be https (plain http only for a loopback address)')
  t.equal(configError(() => loadEnv({ JWT_SECRET: 'x'.repeat(40), JWT_ALGORITHMS: 'RS256' })).message,
    'invalid configuration: JWT_ALGORITHMS has "RS256", which JWT_SECRET cannot verify (allowed: HS256, HS384, HS512)')

  const two = configError(() => loadEnv({ PORT: 'x', METRICS_INTERVAL_MS: 'y' }))
  t.match(two.message, /PORT/)
  t.match(two.message, /METRICS_INTERVAL_MS/)
})

function configError (fn: () => unknown): Error {
  try {
    fn()
  } catch (err) {
    return err as Error
  }
  throw new Error('expected a ConfigError')
}

t.test('optionsFromEnv and demoOptionsFromEnv: origins, publisher on without Redis and off with it', async (t) => {
  const publisher = (env: NodeJS.ProcessEnv) => demoOptionsFromEnv(loadEnv(env)).publisher
  t.same(publisher({}), { minDelayMs: 3000, maxDelayMs: 8000 }, 'publisher on when embedded')
  const embedded = optionsFromEnv(loadEnv({}))
  t.equal(embedded.redisUrl, undefined)
  t.equal(embedded.allowedOrigins, undefined, 'unset: same origin only')
  t.equal(embedded.uploadDir, './uploads')

  t.equal(publisher({ REDIS_URL: 'redis://127.0.0.1:1' }), false, 'off with Redis')
  t.same(publisher({ REDIS_URL: 'redis://127.0.0.1:1', PUBLISHER: 'on' }), { minDelayMs: 3000, maxDelayMs: 8000 })
  t.equal(publisher({ PUBLISHER: 'off' }), false)
  t.same(publisher({ GUEST_MIN_DELAY_MS: '10', GUEST_MAX_DELAY_MS: '20', GUEST_COUNT: '3' }), { minDelayMs: 10, maxDelayMs: 20, count: 3 })

  t.same(optionsFromEnv(loadEnv({ ALLOWED_ORIGINS: ' https://a.example , null,,http://b.example:8080 ' })).allowedOrigins,
    ['https://a.example', 'null', 'http://b.example:8080'])
  t.same(optionsFromEnv(loadEnv({ ALLOWED_ORIGINS: '*' })).allowedOrigins, ['*'])
})
