import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { uploadTokenIdentity } from '../lib/auth.js'
import type { Broker, BrokerState, Replay } from '../lib/broker.js'
import { createBroker } from '../lib/create-broker.js'
import { ID_PATTERN, type EventBody } from '../lib/event.js'
import { Hub } from '../lib/hub.js'
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
}

/** What the plugin adds to a Fastify instance as `fastify.fanout`: what an app builds on. */
export interface Fanout {
  /** Sends an event to every client of every replica; resolves to its id. */
  publish (body: EventBody): Promise<string>
  /**
   * The events after `since` (an event id) that the history holds, as a resuming client gets
   * them: page by page, with `lost` and `clamped`. Throws a TypeError for a `since` that is not an id.
   */
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
  /** The stream's full path, `prefix` included, once its route is registered (the demo page shows it). */
  streamPath: string | undefined
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
    stats
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
  await broker.subscribe((event) => hub.deliver(event), (gap) => hub.deliverGap(gap))

  const fanout: Fanout = Object.freeze({
    publish: (body: EventBody) => broker.publish(body),
    history: (since: string) => {
      if (typeof since !== 'string' || !ID_PATTERN.test(since)) throw new TypeError(`history: since must be an event id (<ms>-<seq>), got ${JSON.stringify(since)}`)
      return broker.history(since, performance.now())
    },
    snapshot: () => ({
      connections: hub.size,
      ...stats.counters(),
      broker: broker.state,
      brokerStats: broker.stats()
    }),
    options,
    broker
  })
  cores.set(fanout, {
    broker,
    hub,
    stats,
    uploads,
    options,
    authorize: options.authorize ?? (tokenIdentity && ((request) => tokenIdentity(request.headers))),
    admitTextLog: () => textLog.take(),
    streamPath: undefined
  })
  fastify.decorateRequest('fanoutIdentity', null)
  fastify.decorate('fanout', fanout)
}, { name: 'fanout-core', fastify: '5.x' })
