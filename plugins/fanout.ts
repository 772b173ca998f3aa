import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { Refusal, uploadTokenIdentity, type Identity } from '../lib/auth.js'
import type { Broker, BrokerState, Replay } from '../lib/broker.js'
import { ChannelRefused, claimsAllow, GUEST_CHANNEL, isChannel } from '../lib/channels.js'
import { createBroker } from '../lib/create-broker.js'
import { ID_PATTERN, type EventBody } from '../lib/event.js'
import { Hub, type Client, type Membership, type ResumeResult } from '../lib/hub.js'
import { TokenBucket } from '../lib/limits.js'
import type { Authorize, ResolvedOptions } from '../lib/options.js'
import { RedisTokenStore } from '../lib/redis/revocations.js'
import { Stats, type Counters } from '../lib/stats.js'
import { MemoryTokenStore, TICKET_PATTERN, TokenError, TokenGuard, tokenFrom, tokenIdentity } from '../lib/tokens.js'
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
  /**
   * Revokes one signed token by its `jti` (its `exp`, seconds, says how long that is kept): refused
   * from now on, and its connections closed (4003) on every replica. Needs the jwt settings.
   */
  revoke (token: { jti: string, exp: number }): Promise<void>
  /**
   * Revokes every token of `sub` issued (`iat`) before `before` (ms since the epoch, or a Date;
   * default now), kept `keepMs` (default 7 days: longer than the tokens you issue live).
   */
  revokeUser (sub: string, options?: { before?: number | Date, keepMs?: number }): Promise<void>
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
  /** The `authorize` in effect: yours, the signed tokens', the upload token's, or none. */
  readonly authorize: Authorize | undefined
  /** Signed tokens while connected (expiry, refresh, revocation, tickets); undefined without the jwt settings. */
  readonly tokens: TokenGuard | undefined
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
  const uploadIdentity = options.uploadToken === undefined ? undefined : uploadTokenIdentity(options.uploadToken)
  const tokens = options.tokens === undefined
    ? undefined
    : new TokenGuard({
      verifier: options.tokens,
      store: options.redis === undefined
        ? new MemoryTokenStore()
        : new RedisTokenStore({ target: options.redis, prefix: options.redisPrefix, log: (level, fields, msg) => fastify.log[level](fields, msg) }),
      log: (fields, msg) => fastify.log.info(fields, msg)
    })

  fastify.addHook('onClose', async () => {
    hub.close()
    if (ownsBroker) await broker.close()
    await tokens?.close()
    stats.close()
  })
  await tokens?.start()
  if (tokens !== undefined && options.jwtSecret === undefined && options.jwtAudience === undefined && options.jwtIssuer === undefined) {
    // A public key or key set is often an identity provider's for many apps: without an audience
    // (or issuer) check, a token it issued for any of them is admitted here.
    fastify.log.warn('signed tokens: neither jwtAudience nor jwtIssuer is set, so a token the key issued for another app is admitted too')
  }
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
    broker,
    async revoke ({ jti, exp }: { jti: string, exp: number }) {
      if (tokens === undefined) throw new Error('revoke: signed tokens are not configured (jwtSecret, jwtPublicKey or jwksUrl)')
      if (typeof jti !== 'string' || jti === '' || !Number.isFinite(exp)) throw new TypeError('revoke: give the token\'s jti (a string) and exp (seconds)')
      await tokens.store.revoke({ jti, until: exp * 1000 }, 0)
    },
    async revokeUser (sub: string, { before = Date.now(), keepMs = 7 * 86_400_000 }: { before?: number | Date, keepMs?: number } = {}) {
      if (tokens === undefined) throw new Error('revokeUser: signed tokens are not configured (jwtSecret, jwtPublicKey or jwksUrl)')
      const at = before instanceof Date ? before.getTime() : before
      if (typeof sub !== 'string' || sub === '' || !Number.isFinite(at) || !(keepMs > 0)) throw new TypeError('revokeUser: give a sub (a string), before (ms or a Date) and keepMs > 0')
      await tokens.store.revoke({ sub, before: at }, keepMs)
    }
  }) as Fanout
  cores.set(fanout, {
    broker,
    hub,
    stats,
    uploads,
    options,
    authorize: options.authorize ?? (tokens && ((request) => tokenAuthorize(tokens, request))) ?? (uploadIdentity && ((request) => uploadIdentity(request.headers))),
    tokens,
    admitTextLog: () => textLog.take(),
    streamPath: undefined,
    publish,
    async subscribe (client, channel, { since, epoch }, tell) {
      if (!await joinWithin(broker, channel, JOIN_WAIT_MS)) {
        broker.leave(channel)
        throw new Error(`the channel did not stand in Redis within ${JOIN_WAIT_MS} ms`)
      }
      if (!client.open || client.channels.has(channel)) {
        broker.leave(channel)
        return undefined
      }
      // The token may have been refreshed while the channel was joined: its grants now decide.
      if (claimsAllow(client.identity, channel, 'subscribe') === false) {
        broker.leave(channel)
        throw new ChannelRefused(channel)
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

/**
 * How long a subscribe waits for its channel to stand in Redis (subscribed, placed) before the
 * client is told `unavailable` and may try again: Redis unreachable, or refusing the SUBSCRIBE.
 */
const JOIN_WAIT_MS = 10_000

/** Whether the broker joined the channel in time; the join goes on either way (and is left by the caller). */
async function joinWithin (broker: Broker, channel: string, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<false>((resolve) => { timer = setTimeout(() => resolve(false), ms) })
  try {
    return await Promise.race([broker.join(channel).then(() => true), late])
  } finally {
    clearTimeout(timer)
  }
}

/**
 * The built-in `authorize` of signed tokens: a one-time `?ticket=` (EventSource), or the token of
 * `Authorization: Bearer` or the subprotocol `fanout.token.<jwt>`, verified and looked up among the
 * revocations. Refusals say why (401); the token is never logged.
 */
async function tokenAuthorize (tokens: TokenGuard, request: FastifyRequest): Promise<Identity | Refusal> {
  const ticket = (request.query as { ticket?: unknown } | undefined)?.ticket
  let token: string | undefined
  try {
    if (ticket !== undefined) {
      if (typeof ticket !== 'string' || !TICKET_PATTERN.test(ticket)) return new Refusal(401, 'ticket refused: not a ticket')
      token = await tokens.store.redeemTicket(ticket)
      if (token === undefined) return new Refusal(401, 'ticket refused: unknown, already used, or expired')
    } else {
      token = tokenFrom(request.headers)
      if (token === undefined) return new Refusal(401, 'a token is required: Authorization: Bearer <jwt>, the subprotocol fanout.token.<jwt>, or ?ticket=')
    }
    return tokenIdentity(await tokens.check(token))
  } catch (err) {
    if (err instanceof TokenError) return new Refusal(401, err.message)
    request.log.warn({ err: (err as Error).message }, 'could not check a token: revocations unavailable')
    return new Refusal(503, 'tokens cannot be checked now: try again')
  }
}
