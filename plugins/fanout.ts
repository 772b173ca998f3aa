import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { uploadTokenIdentity } from '../lib/auth.js'
import type { Broker, BrokerState, Replay } from '../lib/broker.js'
import { GUEST_CHANNEL, isChannel } from '../lib/channels.js'
import { createBroker } from '../lib/create-broker.js'
import { ID_PATTERN, type EventBody } from '../lib/event.js'
import { Hub, type Client, type Membership, type ResumeResult } from '../lib/hub.js'
import { TokenBucket } from '../lib/limits.js'
import type { Authorize, ResolvedOptions } from '../lib/options.js'
import { Stats, type Counters } from '../lib/stats.js'
import { UploadStore } from '../lib/uploads.js'

/** What `snapshot()` returns: the metrics line's numbers, and the broker's own (`brokerStats`). */
export interface Snapshot extends Counters {
  connections: number
  broker: BrokerState
  /** Broker-specific numbers, e.g. Redis's `canaryRttMs`, `outboxLength`, `repairs`. */
  brokerStats: Record<string, number>
  /** Per namespace (`''`: names without a `:`): channels and subscriptions here, publishes, deliveries. */
  namespaces: Record<string, { channels: number, subscriptions: number, publishes: number, deliveries: number }>
}

/** What the plugin adds to a Fastify instance as `fastify.fanout`: what an app builds on. */
export interface Fanout {
  /** Sends an event to every subscriber of the channel on every replica; resolves to its id. Throws a TypeError for a bad channel name. */
  publish (channel: string, body: EventBody): Promise<string>
  /** The same, on the guest channel. */
  publish (body: EventBody): Promise<string>
  /**
   * The events of a channel (the guest channel if none is named) after `since` (an event id) that
   * its history holds, as a resuming client gets them: page by page, with `lost` and `clamped`.
   * Throws a TypeError for a `since` that is not an id or a bad channel name.
   */
  history (channel: string, since: string): Promise<Replay>
  history (since: string): Promise<Replay>
  /** Live numbers: connections, counters, broker state. */
  snapshot (): Snapshot
  /** The options in effect, every default filled in; read-only. */
  readonly options: ResolvedOptions
  /** The broker: its `kind`, `state` and `onStateChange`, e.g. for your own health checks. */
  readonly broker: Broker
}

declare module 'fastify' {
  interface FastifyInstance {
    fanout: Fanout
  }
}

/** The plugin's own parts, for its routes only: not part of `fastify.fanout`, so not a promise to apps. */
export interface Core {
  readonly broker: Broker
  readonly hub: Hub
  readonly stats: Stats
  readonly uploads: UploadStore
  readonly options: ResolvedOptions
  /** The `authorize` in effect: yours, the upload token's, or none. */
  readonly authorize: Authorize | undefined
  /** Admits one text log line; false once the replica-wide log rate is spent. */
  admitTextLog (): boolean
  /** The guest stream's full path, `prefix` included, once its route is registered (the demo page shows it). */
  streamPath: string | undefined
  /**
   * Subscribes a client to a channel: from the broker's place, or resumed after `since`.
   * `tell` hears how it went, in order before the live events that follow it.
   */
  subscribe (client: Client, channel: string, resume: { since?: string, epoch?: string }, tell: (result: ResumeResult) => void): Promise<Membership | undefined>
  /** A publish from the app, a client or the HTTP route: counted per namespace. */
  publish (channel: string, body: EventBody, idempotencyKey?: string): Promise<string>
}

const cores = new WeakMap<Fanout, Core>()

/** The core behind `fastify.fanout`, for the plugin's routes and plugins (and the demo's). */
export function coreOf (fastify: FastifyInstance): Core {
  const core = cores.get(fastify.fanout)
  if (core === undefined) throw new Error('fastify-fanout is not registered on this instance')
  return core
}

/** The core: broker, hub and upload store, wired together, each closed in its own hook. */
export default fp<ResolvedOptions>(async (fastify, options) => {
  const stats = new Stats()
  const ownsBroker = !options.broker
  const broker = options.broker ?? createBroker(options, (level, fields, msg) => fastify.log[level](fields, msg))
  const hub = new Hub({
    maxBufferedBytes: options.maxBufferedBytes,
    heartbeatMs: options.heartbeatMs,
    maxConcurrentReplays: options.maxConcurrentReplays,
    stats,
    onLeave: (channel) => broker.leave(channel)
  })
  const uploads = new UploadStore({ dir: options.uploadDir, minFreeBytes: options.uploadMinFreeBytes, quotaBytes: options.uploadQuotaBytes })
  const textLog = new TokenBucket(options.textLogPerSec, options.textLogPerSec)
  const tokenIdentity = options.uploadToken === undefined ? undefined : uploadTokenIdentity(options.uploadToken)

  fastify.addHook('onClose', async () => {
    hub.close()
    if (ownsBroker) await broker.close()
    stats.close()
  })
  if (options.uploads) await uploads.init()
  broker.onStateChange((state) => fastify.log.info({ broker: broker.kind, state }, 'broker state changed'))
  await broker.start((channel, event) => hub.deliver(channel, event), (channel, gap) => hub.deliverGap(channel, gap))

  const publish = (channel: string, body: EventBody, idempotencyKey?: string): Promise<string> => {
    stats.published(channel)
    return broker.publish(channel, body, idempotencyKey)
  }
  const fanout: Fanout = Object.freeze({
    publish: (channelOrBody: string | EventBody, body?: EventBody) => {
      if (typeof channelOrBody !== 'string') return publish(GUEST_CHANNEL, channelOrBody)
      if (!isChannel(channelOrBody)) throw new TypeError(`publish: ${JSON.stringify(channelOrBody)} is not a channel name (docs/channels.md)`)
      return publish(channelOrBody, body as EventBody)
    },
    history: (channelOrSince: string, since?: string) => {
      const channel = since === undefined ? GUEST_CHANNEL : channelOrSince
      const from = since ?? channelOrSince
      if (!isChannel(channel)) throw new TypeError(`history: ${JSON.stringify(channel)} is not a channel name (docs/channels.md)`)
      if (typeof from !== 'string' || !ID_PATTERN.test(from)) throw new TypeError(`history: since must be an event id (<ms>-<seq>), got ${JSON.stringify(from)}`)
      return broker.history(channel, from, performance.now())
    },
    snapshot: () => ({
      connections: hub.size,
      ...stats.counters(),
      broker: broker.state,
      brokerStats: broker.stats(),
      namespaces: Object.fromEntries([...stats.namespaces].map(([name, counters]) => [name, { ...counters }]))
    }),
    options,
    broker
  }) as Fanout
  cores.set(fanout, {
    broker,
    hub,
    stats,
    uploads,
    options,
    authorize: options.authorize ?? (tokenIdentity && ((request) => tokenIdentity(request.headers))),
    admitTextLog: () => textLog.take(),
    streamPath: undefined,
    publish,
    async subscribe (client, channel, { since, epoch }, tell) {
      await broker.join(channel)
      if (!client.open || client.channels.has(channel)) {
        broker.leave(channel)
        return undefined
      }
      // From here to the membership, nothing yields: no event falls between the place and the first live one.
      const membership = hub.subscribe(client, channel)
      if (since === undefined) {
        const { lastId, epoch: current } = broker.position(channel)
        tell({ replayed: 0, lost: false, clamped: false, epoch: current, position: lastId })
        return membership
      }
      await hub.resume(membership, since, (from, notBefore) => broker.history(channel, from, notBefore), tell, epoch)
      return membership
    }
  })
  fastify.decorateRequest('fanoutIdentity', null)
  fastify.decorate('fanout', fanout)
}, { name: 'fanout-core', fastify: '5.x' })
