import fp from 'fastify-plugin'
import { resolveOptions, type FanoutOptions } from './lib/options.js'
import fanoutCore from './plugins/fanout.js'
import metrics from './plugins/metrics.js'
import publisher from './plugins/publisher.js'
import staticFiles from './plugins/static.js'
import websocket from './plugins/websocket.js'
import askRoutes from './routes/ask.js'
import guestRoutes from './routes/guest.js'
import healthRoutes from './routes/health.js'
import metricsRoutes from './routes/metrics.js'

export type { FanoutOptions } from './lib/options.js'
export type { Fanout } from './plugins/fanout.js'
export type { Broker, BrokerState, Gap, Replay } from './lib/broker.js'
export type { BrokerEvent, EventBody } from './lib/event.js'
export { MemoryBroker } from './lib/memory-broker.js'
export { RedisBroker } from './lib/redis/broker.js'
export { CloseCode } from './lib/hub.js'

/**
 * fastify-fanout: register it in any Fastify app. It adds `fastify.fanout`, the WebSocket routes
 * (`/guest`, `/ask`), `/healthz`, `/readyz`, `/metrics` and the demo page at `/`.
 */
export default fp<FanoutOptions>(async (fastify, opts) => {
  const options = resolveOptions(opts)
  await fastify.register(fanoutCore, options)
  await fastify.register(websocket, options)
  await fastify.register(metrics, options)
  await fastify.register(staticFiles, options)
  // Routes live in their own scope, so their hooks stay theirs.
  await fastify.register(async (routes) => {
    await routes.register(guestRoutes)
    await routes.register(askRoutes)
    await routes.register(healthRoutes)
    await routes.register(metricsRoutes)
  })
  await fastify.register(publisher, options)
}, { name: 'fastify-fanout', fastify: '5.x' })
