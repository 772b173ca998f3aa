import fp from 'fastify-plugin'
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client'
import type { ResolvedOptions } from '../lib/options.js'

declare module 'fastify' {
  interface FastifyInstance {
    fanoutMetrics: Registry
  }
}

const COUNTERS: Array<[string, string, string]> = [
  ['eventsIn', 'fanout_events_in_total', 'Events this replica received from the broker'],
  ['deliveries', 'fanout_deliveries_total', 'Event frames written to clients, replays included'],
  ['replayed', 'fanout_replayed_total', 'Events replayed from history to resuming clients'],
  ['replaysQueued', 'fanout_replays_queued_total', 'Resumes that waited for a replay slot'],
  ['slowConsumerDrops', 'fanout_slow_consumer_drops_total', 'Clients cut off for not reading'],
  ['heartbeatTimeouts', 'fanout_heartbeat_timeouts_total', 'Clients terminated for missing a ping'],
  ['rateLimited', 'fanout_rate_limited_total', 'Clients closed for exceeding the inbound rate'],
  ['handshakesRefused', 'fanout_handshakes_refused_total', 'Upgrades refused: origin, capacity'],
  ['textMessages', 'fanout_text_messages_total', 'Text messages received'],
  ['textLogSuppressed', 'fanout_text_log_suppressed_total', 'Text messages not logged over the log rate'],
  ['uploads', 'fanout_uploads_total', 'Uploads saved'],
  ['uploadBytes', 'fanout_upload_bytes_total', 'Bytes of uploads saved'],
  ['uploadErrors', 'fanout_upload_errors_total', 'Uploads refused or failed']
]

const BROKER_STATES = ['connecting', 'ready', 'down', 'closed'] as const

let processRegistry: Registry | undefined

/** Node's process metrics: one set per process, since collecting them starts observers that never stop. */
function processMetrics (): Registry {
  if (!processRegistry) {
    processRegistry = new Registry()
    collectDefaultMetrics({ register: processRegistry })
  }
  return processRegistry
}

/** `/metrics` (Prometheus text) and the periodic pino `metrics` line, from the same numbers. */
export default fp<ResolvedOptions>(async (fastify, options) => {
  const { stats, hub, broker } = fastify.fanout
  const registry = new Registry()
  for (const [key, name, help] of COUNTERS) {
    // Collected at scrape time from the plain counters the hot path bumps.
    new Counter({ name, help, registers: [registry], collect () { this.reset(); this.inc(stats.counters()[key]) } }) // eslint-disable-line no-new
  }
  new Gauge({ name: 'fanout_connections', help: 'Open WebSocket connections', registers: [registry], collect () { this.set(hub.size) } }) // eslint-disable-line no-new
  new Gauge({ // eslint-disable-line no-new
    name: 'fanout_broker_state',
    help: 'Broker state: 1 for the current one',
    labelNames: ['broker', 'state'],
    registers: [registry],
    collect () {
      for (const state of BROKER_STATES) this.set({ broker: broker.kind, state }, broker.state === state ? 1 : 0)
    }
  })
  new Gauge({ // eslint-disable-line no-new
    name: 'fanout_broker_stat',
    help: 'Broker numbers (README, "Metrics"): canaryRttMs (-1: none yet), outboxLength, commandErrors, repairs, epochChanges, gapsReported, …',
    labelNames: ['name'],
    registers: [registry],
    collect () {
      for (const [name, value] of Object.entries(broker.stats())) this.set({ name }, value)
    }
  })
  fastify.decorate('fanoutMetrics', Registry.merge([processMetrics(), registry]))

  if (options.metricsIntervalMs > 0) {
    const timer = setInterval(() => {
      const loop = stats.loopDelay()
      stats.resetLoopDelay()
      fastify.log.info({
        ...fastify.fanout.snapshot(),
        loopDelayP99Ms: loop.p99,
        loopDelayMaxMs: loop.max,
        rssBytes: process.memoryUsage.rss()
      }, 'metrics')
    }, options.metricsIntervalMs)
    timer.unref()
    fastify.addHook('onClose', async () => clearInterval(timer))
  }
}, { name: 'fanout-metrics', dependencies: ['fanout-core'] })
