import { randomUUID } from 'node:crypto'
import { EventEmitter } from 'node:events'
import type { Cluster, Redis } from 'ioredis'
import type { Broker, BrokerListener, BrokerState, Gap, Replay } from '../broker.js'
import type { EventBody } from '../event.js'
import { Canary } from './canary.js'
import { HistoryReader, type HistoryConnection } from './history.js'
import { Outbox, type PublishingConnection } from './outbox.js'
import { createRedis, type RedisTarget } from './connection.js'
import { Lease, LEASE_RELEASE_SCRIPT, LEASE_RENEW_SCRIPT, type LeaseConnection } from './lease.js'
import { PUBLISH_SCRIPT, REPLAY_START_SCRIPT, streamKeys, type StreamKeys } from './stream.js'
import { Subscription, type SubscriptionConnection } from './subscription.js'
import { newCounters } from './counters.js'
import { brokerLog, type BrokerLog, type LogFn } from './log.js'

export interface RedisBrokerOptions {
  /** A single server (`{ url }`), a primary behind Sentinel, or a Cluster (lib/redis/connection.ts). */
  target: RedisTarget
  /** Prefix of every key and channel [fanout:]. */
  prefix: string
  /** Events kept in the history stream (`XADD … MAXLEN ~`). */
  historySize: number
  /** Events a publisher holds while Redis is unreachable; beyond it the oldest are dropped. */
  outboxSize: number
  /** How often the canary goes round; 3 intervals late and the broker counts as down. */
  canaryIntervalMs: number
  /** Replicas that must confirm each published batch (`WAIT`) before it leaves the outbox [0]. */
  waitReplicas?: number
  /** Called for what an operator should see: drops, repairs, reconnects. */
  log?: LogFn
}

type CommandConnection = (Redis | Cluster) & PublishingConnection & HistoryConnection & SubscriptionConnection & LeaseConnection
type Subscriber = Redis | Cluster

/**
 * Redis fan-out, from its parts: the outbox publishes (exactly once, in order), the subscription
 * delivers (in order, repaired from history), the canary proves delivery, the history reader
 * serves resumes. One command connection for all of them, and once subscribed one subscriber.
 */
export class RedisBroker implements Broker {
  readonly kind = 'redis'
  readonly keys: StreamKeys
  readonly #options: RedisBrokerOptions
  readonly #cmd: CommandConnection
  #sub: Subscriber | undefined
  readonly #cluster: boolean
  /** PUBLISH, or on a Cluster SPUBLISH: an event travels to its shard only, not the whole bus. */
  readonly #publishCommand: string
  #lease: Lease | undefined
  #state: BrokerState = 'connecting'
  readonly #events = new EventEmitter()
  readonly #counters = newCounters()
  readonly #log: BrokerLog
  readonly #outbox: Outbox
  readonly #history: HistoryReader
  #subscription: Subscription | undefined
  #canary: Canary | undefined
  #closing = false

  constructor (options: RedisBrokerOptions) {
    this.#options = options
    this.keys = streamKeys(options.prefix)
    this.#log = brokerLog(options.log ?? (() => {}), this.#counters)
    this.#cluster = 'clusterNodes' in options.target
    this.#publishCommand = this.#cluster ? 'SPUBLISH' : 'PUBLISH'
    // Fail fast while disconnected: the outbox, not ioredis, holds what waits for Redis.
    this.#cmd = createRedis(options.target, 'command', { enableOfflineQueue: false }) as CommandConnection
    this.#cmd.defineCommand('fanoutPublish', { numberOfKeys: 4, lua: PUBLISH_SCRIPT })
    this.#cmd.defineCommand('fanoutReplayStart', { numberOfKeys: 2, lua: REPLAY_START_SCRIPT })
    this.#cmd.defineCommand('fanoutLeaseRenew', { numberOfKeys: 1, lua: LEASE_RENEW_SCRIPT })
    this.#cmd.defineCommand('fanoutLeaseRelease', { numberOfKeys: 1, lua: LEASE_RELEASE_SCRIPT })
    this.#cmd.on('ready', () => {
      if (!this.#sub) this.#setState('ready')
      this.#outbox.flush()
    })
    this.#cmd.on('close', () => { if (!this.#sub) this.#setState('down') })
    this.#cmd.on('error', (err) => this.#log.warn('command-connection', { err: err.message }, 'redis command connection error'))
    const cmd = () => this.#cmd
    this.#outbox = new Outbox(cmd, this.keys, {
      historySize: options.historySize,
      outboxSize: options.outboxSize,
      publishCommand: this.#publishCommand,
      waitReplicas: options.waitReplicas ?? 0,
      fence: () => this.#lease ? this.#lease.fence : { token: '', leaseMs: 0 },
      onFenced: async () => await this.#lease?.check() ?? true
    }, this.#counters, this.#log)
    this.#history = new HistoryReader(cmd, this.keys)
  }

  get state (): BrokerState { return this.#state }
  get synced (): boolean { return this.#subscription?.synced ?? false }

  publish (body: EventBody): Promise<string> {
    return this.#outbox.publish(body)
  }

  async subscribe (listener: BrokerListener, onGap: (gap: Gap) => void = () => {}): Promise<void> {
    const subscription = new Subscription(() => this.#cmd, this.keys, listener, onGap, this.#counters, this.#log, this.#options.historySize)
    this.#subscription = subscription
    const canaryChannel = this.keys.canary(randomUUID())
    const sub = this.#cluster
      // Sharded pub/sub: ioredis keeps a subscriber on the primary owning the channel's slot and
      // moves it there after a failover (docs/scaling.md, "Appendix: ioredis under failover, measured").
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
    const canaryName = Buffer.from(canaryChannel)
    const onMessage = (channel: Buffer, message: Buffer): void => {
      if (channel.equals(canaryName)) {
        canary.heard(Number(message.toString()))
      } else {
        canary.heard()
        subscription.onMessage(message)
      }
    }
    const subscribed = (): Promise<void> => {
      canary.resubscribed()
      canary.tick()
      return subscription.onSubscribed()
    }
    const failed = (err: Error) => this.#log.warn('subscribe', { err: err.message }, 'subscribing failed; retrying on reconnect')
    if (this.#cluster) {
      const cluster = sub as Cluster
      cluster.on('smessageBuffer', onMessage)
      // After a failover ioredis re-subscribes on the new owner by itself and says so; the repair
      // then reads what was published meanwhile (its hint may come early: the seq check stays).
      cluster.on('subscribersReady', () => { subscribed().catch(failed) })
      cluster.ssubscribe(this.keys.channel, canaryChannel).then(subscribed).catch(failed)
    } else {
      const redis = sub as Redis
      redis.on('messageBuffer', onMessage)
      // Subscribing ourselves on every `ready` (not ioredis' autoResubscribe) lets the repair
      // start only once the subscription stands, so nothing falls between the two.
      redis.on('ready', () => { redis.subscribe(this.keys.channel, canaryChannel).then(subscribed).catch(failed) })
    }
    canary.start()
  }

  /**
   * Makes this broker's publishes depend on holding the worker lease (standby workers): only
   * the holder's publishes pass the publish script's fence. `onChange` hears every change.
   */
  lead (leaseMs: number, onChange: (leader: boolean) => void): Lease {
    this.#lease = new Lease(() => this.#cmd, this.keys.lease, leaseMs, onChange, this.#log)
    this.#lease.start()
    return this.#lease
  }

  history (since: string, notBefore: number): Promise<Replay> {
    return this.#history.replay(since, notBefore)
  }

  onStateChange (listener: (state: BrokerState) => void): void {
    this.#events.on('state', listener)
  }

  stats (): Record<string, number> {
    return { ...this.#counters, outboxLength: this.#outbox.length }
  }

  async close (): Promise<void> {
    if (this.#closing) return
    this.#closing = true
    this.#canary?.stop()
    this.#subscription?.close()
    await this.#outbox.close()
    await this.#lease?.close()
    this.#setState('closed')
    await Promise.all([quit(this.#sub), quit(this.#cmd)])
  }

  #closed (): boolean { return this.#state === 'closed' }

  #setState (state: BrokerState): void {
    if (this.#state === state || this.#state === 'closed') return
    this.#state = state
    this.#events.emit('state', state)
  }
}

async function quit (client: Redis | Cluster | undefined): Promise<void> {
  if (!client) return
  try {
    if (client.status === 'ready') await client.quit()
    else client.disconnect()
  } catch {
    client.disconnect()
  }
}
