import fp from 'fastify-plugin'
import { uploadTokenAuthorize, type Authorize } from '../lib/auth.js'
import type { Broker, BrokerState } from '../lib/broker.js'
import { createBroker } from '../lib/create-broker.js'
import type { EventBody } from '../lib/event.js'
import { Hub } from '../lib/hub.js'
import { TokenBucket } from '../lib/limits.js'
import type { ResolvedOptions } from '../lib/options.js'
import { Stats, type Counters } from '../lib/stats.js'
import { UploadStore } from '../lib/uploads.js'

/** What `snapshot()` returns: the metrics line's numbers, and the broker's own (`brokerStats`). */
export interface Snapshot extends Counters {
  connections: number
  broker: BrokerState
  /** Broker-specific numbers, e.g. Redis's `canaryRttMs`, `outboxLength`, `repairs`. */
  brokerStats: Record<string, number>
}

/** What the plugin adds to a Fastify instance as `fastify.fanout`. */
export interface Fanout {
  /** Sends an event to every client of every replica; resolves to its id. */
  publish (body: EventBody): Promise<string>
  /** Live numbers: connections, counters, broker state. */
  snapshot (): Snapshot
  readonly broker: Broker
  readonly hub: Hub
  readonly stats: Stats
  readonly uploads: UploadStore
  readonly options: ResolvedOptions
  /** The `authorize` in effect: yours, the upload token's, or none. */
  readonly authorize: Authorize | undefined
  /** Admits one text log line; false once the replica-wide log rate is spent. */
  admitTextLog (): boolean
}

declare module 'fastify' {
  interface FastifyInstance {
    fanout: Fanout
  }
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

  fastify.addHook('onClose', async () => {
    hub.close()
    if (ownsBroker) await broker.close()
    stats.close()
  })
  if (options.uploads) await uploads.init()
  broker.onStateChange((state) => fastify.log.info({ broker: broker.kind, state }, 'broker state changed'))
  await broker.subscribe((event) => hub.deliver(event), (gap) => hub.deliverGap(gap))

  fastify.decorateRequest('fanoutIdentity', null)
  fastify.decorate('fanout', {
    publish: (body: EventBody) => broker.publish(body),
    snapshot: () => ({
      connections: hub.size,
      ...stats.counters(),
      broker: broker.state,
      brokerStats: broker.stats()
    }),
    broker,
    hub,
    stats,
    uploads,
    options,
    authorize: options.authorize ?? (options.uploadToken === undefined ? undefined : uploadTokenAuthorize(options.uploadToken)),
    admitTextLog: () => textLog.take()
  })
}, { name: 'fanout-core', fastify: '5.x' })
