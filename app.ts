import fp from 'fastify-plugin'
import { ConfigError } from './lib/config.js'
import { resolveOptions, type FanoutOptions } from './lib/options.js'
import fanoutCore from './plugins/fanout.js'
import metrics from './plugins/metrics.js'
import websocket from './plugins/websocket.js'
import guestRoutes from './routes/guest.js'
import healthRoutes from './routes/health.js'
import metricsRoutes from './routes/metrics.js'
import publishRoutes from './routes/publish.js'
import streamRoutes from './routes/stream.js'

// The public surface: what docs/ document, nothing else.
export type { Authorize, FanoutOptions, ResolvedOptions } from './lib/options.js'
export type { AuthorizeChannel, ChannelAction, NamespaceOptions } from './lib/channels.js'
export type { Fanout, Snapshot } from './plugins/fanout.js'
export type { Broker, BrokerState, Gap, Position, Replay } from './lib/broker.js'
export type { BrokerEvent, EventBody } from './lib/event.js'
export type { Identity } from './lib/auth.js'
export type {
  AckMessage, ChannelErrorCode, ChannelErrorMessage, ClientCommand, ControlMessage, ErrorMessage, FanoutEvent, GapMessage, GuestEvent,
  PublishedMessage, RefreshedMessage, ResumeMessage, ServerMessage, StreamMessage, SubscribedMessage, TokenErrorMessage, UnsubscribedMessage,
  UploadErrorCode
} from './lib/protocol.js'
export { Refusal, refuse } from './lib/auth.js'
export { ConfigError } from './lib/config.js'
export { CHANNEL_PATTERN, GUEST_CHANNEL } from './lib/channels.js'
export { CloseCode, PROTOCOL, TOKEN_PROTOCOL_PREFIX } from './lib/protocol.js'
export { MemoryBroker } from './lib/memory-broker.js'
export { RedisBroker } from './lib/redis/broker.js'

// One registration per HTTP server: the plugin owns the server's upgrade handling, its drain and
// `fastify.fanout`. More streams in one app are a matter of more events, not more plugins.
const servers = new WeakSet<object>()

/**
 * fastify-fanout: register it in any Fastify app. It adds `fastify.fanout` and the event stream
 * at `/guest` (WebSocket and EventSource); the other routes are off unless given a path
 * (docs/configuration.md). Every route goes under the `prefix` it is registered with. The demo
 * (guest publisher, `/ask`, the page) is a plugin of its own: `fastify-fanout/demo`.
 */
export default fp<FanoutOptions>(async (fastify, opts) => {
  if (servers.has(fastify.server)) {
    throw new ConfigError('fastify-fanout is already registered on this server: register it once, and place its routes with `prefix` and the path options')
  }
  const options = resolveOptions(opts)
  servers.add(fastify.server)
  await fastify.register(fanoutCore, options)
  await fastify.register(websocket, options)
  await fastify.register(metrics, options)
  // Routes live in their own scope, so their hooks stay theirs; `prefix` applies to them all.
  await fastify.register(async (routes) => {
    await routes.register(guestRoutes)
    await routes.register(streamRoutes)
    await routes.register(publishRoutes)
    await routes.register(healthRoutes)
    await routes.register(metricsRoutes)
  }, { prefix: opts.prefix })
}, { name: 'fastify-fanout', fastify: '5.x' })
