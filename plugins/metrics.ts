import fp from 'fastify-plugin'
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client'
import type { ResolvedOptions } from '../lib/options.js'
import { COUNTERS, prometheusName, type CounterName } from '../lib/stats.js'
import { coreOf } from './fanout.js'

declare module 'fastify' {
  interface FastifyInstance {
    fanoutMetrics: Registry
  }
}

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
  const { stats, hub, broker } = coreOf(fastify)
  const registry = new Registry()
  for (const [key, help] of Object.entries(COUNTERS) as Array<[CounterName, string]>) {
    // Collected at scrape time from the plain counters the hot path bumps.
    new Counter({ name: prometheusName(key), help, registers: [registry], collect () { this.reset(); this.inc(stats[key]) } }) // eslint-disable-line no-new
  }
  new Gauge({ name: 'fanout_connections', help: 'Open connections (WebSocket and EventSource)', registers: [registry], collect () { this.set(hub.size) } }) // eslint-disable-line no-new
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
    help: 'The broker\'s own numbers, by name, as its stats() reports them (docs/operations.md, "Metrics")',
    labelNames: ['name'],
    registers: [registry],
    collect () {
      this.reset()
      for (const [name, value] of Object.entries(broker.stats())) this.set({ name }, value)
    }
  })
  // Per namespace, never per channel: channel names are unbounded, a label per channel would be too.
  const perNamespace = [
    ['channels', 'gauge', 'Channels with a subscriber on this replica'],
    ['subscriptions', 'gauge', '(client, channel) subscriptions on this replica'],
    ['publishes', 'counter', 'Events published through this replica'],
    ['deliveries', 'counter', 'Live event frames sent to subscribers']
  ] as const
  for (const [field, kind, help] of perNamespace) {
    new Gauge({ // eslint-disable-line no-new
      name: kind === 'gauge' ? `fanout_namespace_${field}` : `fanout_namespace_${field}_total`,
      help: `${help}, by namespace ("" for names without a colon)`,
      labelNames: ['namespace'],
      registers: [registry],
      collect () {
        this.reset()
        for (const [namespace, counters] of stats.namespaces) this.set({ namespace }, counters[field])
      }
    })
  }
  fastify.decorate('fanoutMetrics', Registry.merge([processMetrics(), registry]))

  if (options.metricsIntervalMs > 0) {
    const timer = setInterval(() => {
      const loop = stats.loopDelay()
      stats.resetLoopDelay()
      const { brokerStats, ...snapshot } = fastify.fanout.snapshot()
      fastify.log.info({
        ...snapshot,
        ...brokerStats,
        loopDelayP99Ms: loop.p99,
        loopDelayMaxMs: loop.max,
        rssBytes: process.memoryUsage.rss()
      }, 'metrics')
    }, options.metricsIntervalMs)
    timer.unref()
    fastify.addHook('onClose', async () => clearInterval(timer))
  }
}, { name: 'fanout-metrics', dependencies: ['fanout-core'] })
