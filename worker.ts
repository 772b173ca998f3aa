import closeWithGrace from 'close-with-grace'
import pino from 'pino'
import { loadEnv, type Env } from './lib/config.js'
import { startPublisher } from './lib/publisher.js'
import { RedisBroker } from './lib/redis-broker.js'
import { fail } from './tools/fail.js'

/** The publisher worker: guest events on the random schedule, into Redis. */
let env: Env
try {
  env = loadEnv()
} catch (err) {
  fail('fastify-fanout worker', err)
}
if (!env.REDIS_URL) {
  fail('fastify-fanout worker', new Error('REDIS_URL is not set: the worker publishes into Redis (e.g. REDIS_URL=redis://127.0.0.1:6379)'))
}

const log = pino({ level: env.LOG_LEVEL, base: { role: 'worker', pid: process.pid } })
const broker = new RedisBroker({
  url: env.REDIS_URL,
  prefix: env.REDIS_PREFIX,
  historySize: env.HISTORY_SIZE,
  outboxSize: env.OUTBOX_SIZE,
  log: (level, fields, msg) => log[level](fields, msg)
})
broker.onStateChange((state) => log.info({ state }, 'redis connection state changed'))

const run = startPublisher({
  publish: async (body) => {
    const id = await broker.publish(body)
    log.debug({ id, ...body }, 'published')
    return id
  },
  minDelayMs: env.GUEST_MIN_DELAY_MS,
  maxDelayMs: env.GUEST_MAX_DELAY_MS,
  count: env.GUEST_COUNT,
  onError: (err) => log.warn({ err: err.message }, 'guest event not published')
})

const metrics = env.METRICS_INTERVAL_MS > 0
  ? setInterval(() => log.info({ redis: broker.state, ...broker.stats() }, 'metrics'), env.METRICS_INTERVAL_MS).unref()
  : undefined

let stopping = false
const graceful = closeWithGrace({ delay: 10_000 }, async ({ signal, err }) => {
  stopping = true
  if (err) log.error({ err }, 'stopping after an error')
  else log.info({ signal }, 'stopping')
  clearInterval(metrics)
  await run.stop()
  await broker.close()
})

await run.done
// run.done also resolves when a signal stopped the run: that path exits on its own.
if (!stopping) {
  log.info({ ...broker.stats() }, 'published GUEST_COUNT events: done')
  graceful.close()
}
