import { randomUUID } from 'node:crypto'
import { EventEmitter } from 'node:events'
import type { Cluster, Redis } from 'ioredis'
import type { Broker, BrokerListener, BrokerState, GapListener, HistoryRules, Position, Replay } from '../broker.js'
import { GUEST_CHANNEL } from '../channels.js'
import { newEpoch, type EventBody } from '../event.js'
import { Canary } from './canary.js'
import { delay, retryDelay } from './retry.js'
import { HistoryReader, type HistoryConnection } from './history.js'
import { Outbox, type DirectConnection, type PublishingConnection } from './outbox.js'
import { createRedis, quit, type RedisTarget } from './connection.js'
import { Lease, LEASE_RELEASE_SCRIPT, LEASE_RENEW_SCRIPT, LEASE_TAKE_SCRIPT, type LeaseConnection } from './lease.js'
import { LOSS_SCRIPT, PUBLISH_SCRIPT, REPLAY_START_SCRIPT, streamKeys } from './stream.js'
import { slotPipelining } from './slot-pipelines.js'
import { Subscription, type SubscriptionConnection } from './subscription.js'
import { newCounters } from './counters.js'
import { RecentUids } from './recent-uids.js'
import { brokerLog, type BrokerLog, type LogFn } from './log.js'

export interface RedisBrokerOptions {
  /** A single server (`{ url }`), a primary behind Sentinel, or a Cluster (lib/redis/connection.ts). */
  target: RedisTarget
  /** Prefix of every key and channel [fanout:]. */
  prefix: string
  /** Each channel's history limits: events kept (`XADD … MAXLEN ~`) and their age. */
  rules: HistoryRules
  /** Events a publisher holds while Redis is unreachable; beyond it the oldest are dropped. */
  outboxSize: number
  /** How often the canary goes round; 3 intervals late and the broker counts as down. */
  canaryIntervalMs: number
  /** Replicas that must confirm each event (`WAIT`) before its publish resolves [0]; later events do not wait for it. */
  waitReplicas?: number
  /** How long a channel stays subscribed after its last local subscriber left [2000]. */
  lingerMs?: number
  /** Called for what an operator should see: drops, repairs, reconnects. */
  log?: LogFn
}

/** LOSS_SCRIPT, defined on the command connection. */
interface LossConnection {
  fanoutLoss (events: string, meta: string, missing: string, epoch: string, channel: string, command: string): Promise<number>
}

type CommandConnection = (Redis | Cluster) & PublishingConnection & DirectConnection & HistoryConnection & SubscriptionConnection & LossConnection
type Subscriber = Redis | Cluster

/** A channel this replica receives: its subscription, and who here wants it. */
interface Joined {
  readonly name: string
  /** Its pub/sub channel. */
  readonly live: string
  readonly subscription: Subscription
  /** Local subscribers. */
  refs: number
  /** After the last one left: the timer that unsubscribes. */
  linger: NodeJS.Timeout | undefined
  /** SUBSCRIBEs that failed in a row: the backoff of the next. */
  subscribeFailures: number
  /** Settles once the subscription stands and knows its place. */
  readonly ready: Promise<void>
  markReady: () => void
}

/** SUBSCRIBE and UNSUBSCRIBE carry at most this many channels each. */
const SUBSCRIBE_BATCH = 1000
const LINGER_MS = 2000
/** How many times a loss declaration is tried while Redis refuses it (a failover still settling). */
const LOSS_ATTEMPTS = 10
/** Uids of delivered events remembered to recognise a repeat: about 1 MiB at most. */
const REMEMBERED_UIDS = 16_384

/**
 * Redis fan-out, from its parts: the outbox publishes (exactly once, in order per channel), a
 * subscription per joined channel delivers (in order, repaired from history), the canary proves
 * delivery, the history reader serves resumes. One command connection for all of them, and once
 * started one subscriber, subscribed only to the channels this replica's clients want.
 */
export class RedisBroker implements Broker {
  readonly kind = 'redis'
  readonly #options: RedisBrokerOptions
  readonly #cmd: CommandConnection
  #sub: Subscriber | undefined
  readonly #cluster: boolean
  /** PUBLISH, or on a Cluster SPUBLISH: an event travels to its shard only, not the whole bus. */
  readonly #publishCommand: string
  #lease: Lease | undefined
  /** The lease's own connection (lead()). */
  #leaseConnection: (Redis | Cluster) | undefined
  #state: BrokerState = 'connecting'
  /** The subscriber has stood once: Redis was reached. */
  #reached = false
  readonly #events = new EventEmitter()
  readonly #counters = newCounters()
  readonly #log: BrokerLog
  readonly #outbox: Outbox
  readonly #history: HistoryReader
  /** The channels this replica receives, by name and by pub/sub channel. */
  readonly #joined = new Map<string, Joined>()
  readonly #byLive = new Map<string, Joined>()
  /** Pub/sub commands waiting for the end of the turn, sent together. */
  #toSubscribe = new Set<Joined>()
  #toUnsubscribe = new Set<string>()
  #listener: BrokerListener = () => {}
  #onGap: GapListener = () => {}
  #canary: Canary | undefined
  #closing = false
  /** Loss declarations on their way, by channel and missing id: one each. */
  readonly #declaring = new Set<string>()
  /** The uids of the last events delivered here, over all channels (lib/redis/recent-uids.ts). */
  readonly #delivered = new RecentUids(REMEMBERED_UIDS)
  /** Per Redis server (host:port), the eviction policy it was last found to have, if not `noeviction`. */
  readonly #evicting = new Map<string, string>()

  constructor (options: RedisBrokerOptions) {
    this.#options = options
    this.#log = brokerLog(options.log ?? (() => {}), this.#counters)
    this.#cluster = 'clusterNodes' in options.target
    this.#publishCommand = this.#cluster ? 'SPUBLISH' : 'PUBLISH'
    // Fail fast while disconnected: the outbox, not ioredis, holds what waits for Redis.
    this.#cmd = createRedis(options.target, 'command', { enableOfflineQueue: false }) as CommandConnection
    this.#cmd.defineCommand('fanoutPublish', { numberOfKeys: 5, lua: PUBLISH_SCRIPT })
    this.#cmd.defineCommand('fanoutReplayStart', { numberOfKeys: 2, lua: REPLAY_START_SCRIPT })
    this.#cmd.defineCommand('fanoutLoss', { numberOfKeys: 2, lua: LOSS_SCRIPT })
    this.#cmd.on('ready', () => {
      if (!this.#sub) this.#setState('ready')
      this.#reconnected()
      if (!this.#cluster) this.#checkEviction(this.#cmd as Redis).catch(() => {})
    })
    if (this.#cluster) {
      // Each node has its own connection, replaced on its own: any of them anew, the same.
      (this.#cmd as Cluster).on('+node', (node: Redis) => node.on('ready', () => {
        this.#reconnected()
        this.#checkEviction(node).catch(() => {})
      }))
    }
    this.#cmd.on('close', () => { if (!this.#sub) this.#setState('down') })
    this.#cmd.on('error', (err) => this.#log.warn('command-connection', { err: err.message }, 'redis command connection error'))
    const cmd = () => this.#cmd
    // On a Cluster a pipeline may only hold keys of one primary: a pipeline per primary.
    this.#outbox = new Outbox(this.#cluster ? slotPipelining(cmd as () => CommandConnection & Cluster) : cmd, {
      channel: (name) => ({ keys: this.keys(name), ...options.rules(name) }),
      outboxSize: options.outboxSize,
      publishCommand: this.#publishCommand,
      waitReplicas: options.waitReplicas ?? 0,
      cluster: this.#cluster,
      direct: cmd,
      fence: () => this.#lease ? this.#lease.fence : { token: '', leaseMs: 0 },
      onFenced: async () => await this.#lease?.check() ?? true
    }, this.#counters, this.#log)
    this.#history = new HistoryReader(cmd, (channel) => this.keys(channel))
  }

  get state (): BrokerState { return this.#state }
  get synced (): boolean { return this.#reached }

  /** A channel's keys (lib/redis/stream.ts). */
  keys (channel: string) { return streamKeys(this.#options.prefix, channel) }

  publish (channel: string, body: EventBody, idempotencyKey?: string): Promise<string> {
    return this.#outbox.publish(channel, body, idempotencyKey)
  }

  async start (listener: BrokerListener, onGap: GapListener = () => {}): Promise<void> {
    this.#listener = listener
    this.#onGap = onGap
    // The canary travels the guest channel's slot: on a Cluster, it proves that shard's path.
    const canaryChannel = this.keys(GUEST_CHANNEL).canary(randomUUID())
    const sub = this.#cluster
      // Sharded pub/sub: ioredis keeps a subscriber on each primary owning a subscribed slot and
      // moves it after a failover (docs/scaling.md, "Appendix: ioredis under failover, measured").
      ? createRedis(this.#options.target, 'subscriber', {}, { shardedSubscribers: true })
      : createRedis(this.#options.target, 'subscriber', { autoResubscribe: false })
    this.#sub = sub
    this.#setState('connecting')
    const canary = new Canary({
      channel: canaryChannel,
      publishCommand: this.#publishCommand,
      intervalMs: this.#options.canaryIntervalMs,
      timeoutMs: 3 * this.#options.canaryIntervalMs
    }, {
      command: () => this.#cmd,
      subscriber: () => this.#sub,
      state: () => this.#state,
      setState: (state) => this.#setState(state),
      counters: this.#counters,
      log: this.#log
    })
    this.#canary = canary
    sub.on('error', (err: Error) => this.#log.warn('subscriber-connection', { err: err.message }, 'redis subscriber connection error'))
    sub.on('close', () => { if (!this.#closed()) this.#setState('down') })
    const onMessage = (channel: Buffer, message: Buffer): void => {
      const name = channel.toString('latin1')
      if (name === canaryChannel) {
        canary.heard(Number(message.toString()))
        return
      }
      canary.heard()
      this.#byLive.get(name)?.subscription.onMessage(message)
    }
    // Every channel still wanted, repaired from its stream: what was published while the
    // subscription was down is read back before live events go on.
    const resubscribed = (standing: Iterable<Joined> = this.#joined.values()): void => {
      this.#reached = true
      canary.resubscribed()
      canary.tick()
      for (const joined of standing) this.#repair(joined)
    }
    const failed = (err: Error) => this.#log.warn('subscribe', { err: err.message }, 'subscribing failed; retrying on reconnect')
    if (this.#cluster) {
      const cluster = sub as Cluster
      cluster.on('smessageBuffer', onMessage)
      // After a failover ioredis re-subscribes on the new owners by itself and says so; the repair
      // then reads what was published meanwhile (its hint may come early: the seq check stays).
      cluster.on('subscribersReady', () => resubscribed())
      cluster.ssubscribe(canaryChannel).then(() => resubscribed(), failed)
    } else {
      const redis = sub as Redis
      redis.on('messageBuffer', onMessage)
      // Subscribing ourselves on every `ready` (not ioredis' autoResubscribe) lets each repair
      // start only once its subscription stands, so nothing falls between the two.
      redis.on('ready', () => {
        this.#toUnsubscribe.clear() // a new connection holds none of them
        // Only the channels whose SUBSCRIBE stood are placed and repaired: the others are asked
        // for again (#subscribeFailed), and their clients wait for them (Core.subscribe bounds it).
        redis.subscribe(canaryChannel)
          .then(async () => await this.#subscribeAll(redis, [...this.#joined.values()]))
          .then(resubscribed, failed)
      })
    }
    canary.start()
  }

  async join (channel: string): Promise<void> {
    let joined = this.#joined.get(channel)
    if (joined === undefined) {
      let markReady = (): void => {}
      const ready = new Promise<void>((resolve) => { markReady = resolve })
      const keys = this.keys(channel)
      const subscription = new Subscription(() => this.#cmd, keys, (event) => this.#listener(channel, event),
        (gap) => this.#onGap(channel, gap), this.#counters, this.#log, this.#options.rules(channel).historySize,
        (missing) => { this.#declareLoss(channel, missing).catch(() => {}) }, this.#delivered)
      joined = { name: channel, live: keys.channel, subscription, refs: 0, linger: undefined, subscribeFailures: 0, ready, markReady }
      this.#joined.set(channel, joined)
      this.#byLive.set(joined.live, joined)
      this.#toUnsubscribe.delete(joined.live)
      this.#request(() => this.#toSubscribe.add(joined as Joined))
    }
    joined.refs++
    clearTimeout(joined.linger)
    joined.linger = undefined
    await joined.ready
  }

  position (channel: string): Position {
    return this.#joined.get(channel)?.subscription.position ?? { lastId: '0-0', epoch: undefined }
  }

  leave (channel: string): void {
    const joined = this.#joined.get(channel)
    if (joined === undefined || --joined.refs > 0) return
    // A short linger: a client that leaves and comes back (a page reload) costs no Redis command.
    joined.linger = setTimeout(() => {
      this.#joined.delete(channel)
      this.#byLive.delete(joined.live)
      joined.subscription.close()
      this.#toSubscribe.delete(joined)
      this.#request(() => this.#toUnsubscribe.add(joined.live))
    }, this.#options.lingerMs ?? LINGER_MS).unref()
  }

  /** Queues a pub/sub change; the turn's changes leave together. */
  #request (change: () => void): void {
    const first = this.#toSubscribe.size === 0 && this.#toUnsubscribe.size === 0
    change()
    if (first) process.nextTick(() => this.#sendPubsub())
  }

  #sendPubsub (): void {
    const sub = this.#sub
    const subscribe = [...this.#toSubscribe]
    const unsubscribe = [...this.#toUnsubscribe]
    this.#toSubscribe.clear()
    this.#toUnsubscribe.clear()
    if (sub === undefined || this.#closing) return
    const failed = (err: Error): void => {
      this.#counters.commandErrors++
      this.#log.warn('unsubscribe', { err: err.message }, 'an UNSUBSCRIBE failed; the next reconnect holds none of the channels left')
    }
    if (this.#cluster) {
      // Each channel is its own slot, and each slot's subscriber its own connection. Sent even
      // while the Cluster is down: ioredis queues them, then keeps them through failovers.
      const cluster = sub as Cluster
      for (const live of unsubscribe) cluster.sunsubscribe(live).catch(failed)
      for (const joined of subscribe) {
        cluster.ssubscribe(joined.live).then(() => {
          joined.subscribeFailures = 0
          this.#repair(joined)
        }, (err: Error) => this.#subscribeFailed([joined], err))
      }
      return
    }
    const redis = sub as Redis
    // Not connected: the next `ready` subscribes every joined channel, and holds none of the old ones.
    if (redis.status !== 'ready') return
    for (let i = 0; i < unsubscribe.length; i += SUBSCRIBE_BATCH) redis.unsubscribe(...unsubscribe.slice(i, i + SUBSCRIBE_BATCH)).catch(failed)
    this.#subscribeAll(redis, subscribe).then((standing) => { for (const joined of standing) this.#repair(joined) },
      (err: Error) => this.#subscribeFailed(subscribe, err))
  }

  /**
   * A SUBSCRIBE Redis refused or that failed (an ACL, a failover settling): asked again after a
   * backoff while the channel is still wanted. Its clients wait meanwhile (Core.subscribe bounds it).
   */
  #subscribeFailed (channels: Joined[], err: Error): void {
    this.#counters.commandErrors++
    this.#log.warn('subscribe', { err: err.message, channels: channels.length, first: channels[0]?.name }, 'subscribing failed; retrying')
    for (const joined of channels) {
      setTimeout(() => {
        if (this.#joined.get(joined.name) === joined && !this.#closing) this.#request(() => this.#toSubscribe.add(joined))
      }, retryDelay(joined.subscribeFailures++, 5000)).unref()
    }
  }

  /** SUBSCRIBE in batches; once each batch stands, its channels find their place or repair. */
  /**
   * SUBSCRIBE in batches; a batch Redis refuses, one channel at a time, so one refused channel
   * (an ACL) holds back no other. Returns the channels whose subscription stands.
   */
  async #subscribeAll (redis: Redis, channels: Joined[]): Promise<Joined[]> {
    const standing: Joined[] = []
    const one = async (batch: Joined[]): Promise<boolean> => {
      try {
        await redis.subscribe(...batch.map((joined) => joined.live))
      } catch (err) {
        if (batch.length === 1) this.#subscribeFailed(batch, err as Error)
        return false
      }
      for (const joined of batch) joined.subscribeFailures = 0
      standing.push(...batch)
      return true
    }
    for (let i = 0; i < channels.length; i += SUBSCRIBE_BATCH) {
      const batch = channels.slice(i, i + SUBSCRIBE_BATCH)
      if (!await one(batch) && batch.length > 1) for (const joined of batch) await one([joined])
    }
    return standing
  }

  /** A subscription (re)established: read what it missed; the first time, find its place. */
  #repair (joined: Joined): void {
    if (this.#joined.get(joined.name) !== joined) return // left meanwhile
    joined.subscription.onSubscribed().then(joined.markReady,
      (err: Error) => this.#log.error({ channel: joined.name, err: err.message }, 'channel repair failed'))
  }

  /**
   * A new command connection (a reconnect, a failover; on a Cluster, any node's). No WAIT on it
   * speaks for what the old one wrote: the outbox sends that again. And a failover may have lost
   * what this publisher was given ids for, though no replica delivered it: each channel's newest
   * is looked for in its history, and declared lost if it is gone.
   */
  #reconnected (): void {
    this.#outbox.connected()
    for (const [channel, newest] of this.#outbox.newestIds()) this.#declareLoss(channel, newest).catch(() => {})
  }

  /**
   * Any `maxmemory-policy` but `noeviction` lets Redis evict what exactness rests on (a history,
   * its meta, a publisher's dedupe record, the worker lease: the volatile-* policies take those with
   * an expiry, which they all have). What is lost then is told (a new epoch, a gap), and order is
   * kept (PUBLISH_SCRIPT), but a retry after a lost reply may write an event twice (its uid tells
   * the two apart): said once per
   * server until it changes, and shown as `evictingServers`; looked at on each new connection.
   * CONFIG refused (some managed Redis): said, at info.
   */
  async #checkEviction (server: Redis): Promise<void> {
    // Where it is really connected (behind Sentinel, options.host is not the primary's).
    const remote = server.stream?.remoteAddress
    const where = remote !== undefined ? `${remote}:${server.stream.remotePort ?? ''}` : `${server.options.host ?? ''}:${server.options.port ?? ''}`
    let policy: string
    try {
      const reply = await server.config('GET', 'maxmemory-policy') as string[]
      policy = reply[1] ?? 'unknown'
    } catch (err) {
      this.#log.info({ redis: where, err: (err as Error).message }, 'could not read maxmemory-policy (CONFIG refused): make sure it is noeviction')
      return
    }
    const before = this.#evicting.get(where)
    if (policy === 'noeviction') {
      this.#evicting.delete(where)
      if (before !== undefined) this.#log.info({ redis: where, policy }, 'maxmemory-policy is noeviction now')
      return
    }
    this.#evicting.set(where, policy)
    if (before !== policy) {
      this.#log.error({ redis: where, policy },
        'redis may evict histories, dedupe records and the worker lease (maxmemory-policy is not noeviction): losses are told, but a retried publish may be written twice; set maxmemory-policy noeviction')
    }
  }

  /**
   * Declares a channel's history lost if an event Redis took (`missing`) is no longer in it
   * (LOSS_SCRIPT): every replica's clients are told, and resumes from before are answered
   * `lost: true`. Tried again while Redis refuses it (a failover settling); the script itself
   * decides, so any number of replicas may report the same loss.
   */
  async #declareLoss (channel: string, missing: string): Promise<void> {
    const key = `${channel} ${missing}`
    if (this.#declaring.has(key)) return
    this.#declaring.add(key)
    const keys = this.keys(channel)
    try {
      for (let attempt = 0; attempt < LOSS_ATTEMPTS && !this.#closing; attempt++) {
        try {
          const declared = await this.#cmd.fanoutLoss(keys.events, keys.meta, missing, newEpoch(), keys.channel, this.#publishCommand)
          if (declared === 1) {
            this.#counters.lossesDeclared++
            this.#log.warn('loss', { channel, missing }, 'an event Redis had taken is gone from the history (a lossy failover): declared a new epoch, clients are told')
          }
          return
        } catch (err) {
          this.#counters.commandErrors++
          this.#log.warn('loss-check', { channel, missing, err: (err as Error).message, attempt }, 'could not check the history for a lost event yet; retrying')
          await delay(retryDelay(attempt, 1000))
        }
      }
      if (!this.#closing) {
        this.#log.error({ channel, missing, attempts: LOSS_ATTEMPTS }, 'gave up checking the history for a lost event: the next reconnect or repair checks again')
      }
    } finally {
      this.#declaring.delete(key)
    }
  }

  /**
   * Makes this broker's publishes depend on holding the worker lease (standby workers): only
   * the holder's publishes pass the publish script's fence. `onChange` hears every change.
   */
  lead (leaseMs: number, onChange: (leader: boolean) => void): Lease {
    // A connection of its own: on the command connection a renewal would wait behind the
    // outbox's WAIT (up to a second, with a replica gone) and its large pipelines, and a healthy
    // leader would lose its lease to a standby.
    const connection = createRedis(this.#options.target, 'lease', { enableOfflineQueue: false }) as (Redis | Cluster) & LeaseConnection
    connection.defineCommand('fanoutLeaseRenew', { numberOfKeys: 1, lua: LEASE_RENEW_SCRIPT })
    connection.defineCommand('fanoutLeaseTake', { numberOfKeys: 1, lua: LEASE_TAKE_SCRIPT })
    connection.defineCommand('fanoutLeaseRelease', { numberOfKeys: 1, lua: LEASE_RELEASE_SCRIPT })
    connection.on('error', (err: Error) => this.#log.warn('lease-connection', { err: err.message }, 'redis lease connection error'))
    this.#leaseConnection = connection
    this.#lease = new Lease(() => connection, this.keys(GUEST_CHANNEL).lease, leaseMs, onChange, this.#log)
    this.#lease.start()
    return this.#lease
  }

  history (channel: string, since: string, notBefore: number): Promise<Replay> {
    return this.#history.replay(channel, since, notBefore)
  }

  onStateChange (listener: (state: BrokerState) => void): void {
    this.#events.on('state', listener)
  }

  stats (): Record<string, number> {
    return {
      ...this.#counters,
      outboxLength: this.#outbox.length,
      unreplicated: this.#outbox.unreplicated,
      channelsJoined: this.#joined.size,
      evictingServers: this.#evicting.size
    }
  }

  async close (): Promise<void> {
    if (this.#closing) return
    this.#closing = true
    this.#canary?.stop()
    for (const joined of this.#joined.values()) {
      clearTimeout(joined.linger)
      joined.subscription.close()
    }
    await this.#outbox.close()
    await this.#lease?.close()
    this.#setState('closed')
    await Promise.all([quit(this.#sub), quit(this.#cmd), quit(this.#leaseConnection)])
  }

  #closed (): boolean { return this.#state === 'closed' }

  #setState (state: BrokerState): void {
    if (this.#state === state || this.#state === 'closed') return
    this.#state = state
    this.#events.emit('state', state)
  }
}
