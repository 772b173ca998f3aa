#!/usr/bin/env node
import { randomUUID } from 'node:crypto'
import closeWithGrace from 'close-with-grace'
import pino from 'pino'
import type { ResolvedDemoOptions } from './demo/options.js'
import type { PublisherRun } from './demo/publisher.js'
import { GUEST_CHANNEL } from './lib/channels.js'
import { loadEnv, type Env } from './lib/config.js'
import { createRedisBroker } from './lib/create-broker.js'
import { fail } from './lib/fail.js'
import { optionsFromEnv, resolveOptions, type ResolvedOptions } from './lib/options.js'

/**
 * The publisher worker: guest events on the random schedule, into Redis. Run any number: they
 * share a lease in Redis, and only its holder publishes; a standby takes over when the holder
 * dies or stalls past WORKER_LEASE_MS (docs/scaling.md, "High availability").
 */
let env: Env
let options: ResolvedOptions
let schedule: Exclude<ResolvedDemoOptions['publisher'], false>
let startPublisher: typeof import('./demo/publisher.js').startPublisher
try {
  // The same path as the server's: environment → options → resolved options → the broker; the
  // schedule through the demo's options. The demo is loaded here, so that a missing optional
  // dependency (faker) is one clear line.
  env = loadEnv()
  options = resolveOptions(optionsFromEnv(env))
  const [demo, publisher] = await Promise.all([import('./demo/options.js'), import('./demo/publisher.js')])
  const resolved = demo.resolveDemoOptions({ publisher: demo.publisherFromEnv(env) }).publisher
  if (resolved === false) throw new Error('the publisher\'s schedule did not resolve') // given as an object, it always does
  schedule = resolved
  startPublisher = publisher.startPublisher
} catch (err) {
  fail('fastify-fanout worker', err)
}
if (options.redis === undefined) {
  fail('fastify-fanout worker', new Error('REDIS_URL (or REDIS_SENTINELS, or REDIS_CLUSTER_NODES) is not set: the worker publishes into Redis (e.g. REDIS_URL=redis://127.0.0.1:6379)'))
}

const workerId = randomUUID().slice(0, 8)
// Written synchronously: with pino's default asynchronous destination, a chunk still being written
// when the process exits is lost, and what a worker confirmed must not vanish from its log.
const log = pino({ level: env.LOG_LEVEL, base: { role: 'worker', worker: workerId, pid: process.pid } }, pino.destination({ dest: 1, sync: true }))
const broker = createRedisBroker(options.redis, options, (level, fields, msg) => log[level](fields, msg))
broker.onStateChange((state) => log.info({ state }, 'redis connection state changed'))

let made = 0
let run: PublisherRun | undefined
let finished: () => void
const allMade = new Promise<void>((resolve) => { finished = resolve })

/** The schedule runs only while this worker leads; GUEST_COUNT counts across its terms. */
function publish (): PublisherRun {
  const current = startPublisher({
    publish: async (body) => {
      made++
      const id = await broker.publish(GUEST_CHANNEL, body)
      log.debug({ id, ...body }, 'published')
      return id
    },
    minDelayMs: schedule.minDelayMs,
    maxDelayMs: schedule.maxDelayMs,
    count: schedule.count === undefined ? undefined : schedule.count - made,
    onError: (err) => log.warn({ err: err.message }, 'guest event not published')
  })
  current.done.then(() => { if (run === current) finished() }, () => {})
  return current
}

const lease = broker.lead(env.WORKER_LEASE_MS, (leader) => {
  log.info({ leader, leaseMs: env.WORKER_LEASE_MS }, leader ? 'this worker holds the lease: publishing' : 'this worker does not hold the lease: standing by')
  const previous = run
  run = leader ? publish() : undefined
  previous?.stop().catch(() => {})
})

const metrics = options.metricsIntervalMs > 0
  ? setInterval(() => log.info({ redis: broker.state, leader: lease.leader ? 1 : 0, ...broker.stats() }, 'metrics'), options.metricsIntervalMs).unref()
  : undefined

let stopping = false
const graceful = closeWithGrace({ delay: 10_000 }, async ({ signal, err }) => {
  stopping = true
  if (err) log.error({ err }, 'stopping after an error')
  else log.info({ signal }, 'stopping')
  clearInterval(metrics)
  await run?.stop()
  await broker.close()
})

await allMade
// allMade only resolves once GUEST_COUNT events were made and confirmed; a signal exits on its own.
if (!stopping) {
  log.info({ ...broker.stats() }, 'published GUEST_COUNT events: done')
  graceful.close()
}
