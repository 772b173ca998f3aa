import type { BrokerState } from '../broker.js'
import type { RedisCounters } from './counters.js'
import type { BrokerLog } from './log.js'

export interface CanaryOptions {
  /** This replica's own channel. */
  channel: string
  /** PUBLISH, or SPUBLISH on a Redis Cluster (so it travels the events' shard). */
  publishCommand: string
  intervalMs: number
  /** How late it may be before the broker counts as down [3 intervals]. */
  timeoutMs: number
}

export interface CanaryParts {
  command: () => { status: string, call (command: string, ...args: string[]): Promise<unknown> }
  subscriber: () => { status: string, disconnect (reconnect: boolean): void } | undefined
  state: () => BrokerState
  setState: (state: BrokerState) => void
  counters: RedisCounters
  log: BrokerLog
}

/**
 * Proof that delivery works, not just that a socket is open: the replica publishes the time on
 * its own channel and must hear it back through its subscriber. Events arriving count as proof
 * too: under a backlog the canary queues behind them, and reconnecting then would throw away what
 * Redis has already queued for this subscriber.
 */
export class Canary {
  #timer: NodeJS.Timeout | undefined
  /** When the oldest canary not yet heard back was sent; 0: none on its way. */
  #unansweredSince = 0
  /** When the subscriber last received anything, canary or event. */
  #heardAt = 0

  constructor (private readonly options: CanaryOptions, private readonly parts: CanaryParts) {}

  start (): void {
    this.#timer = setInterval(() => this.tick(), this.options.intervalMs)
    this.#timer.unref()
  }

  stop (): void { clearInterval(this.#timer) }

  /** The subscriber heard something: an event, or (with `sentAt`) its own canary. */
  heard (sentAt?: number): void {
    this.#heardAt = Date.now()
    if (sentAt === undefined) return
    this.#unansweredSince = 0
    this.parts.counters.canaryRttMs = this.#heardAt - sentAt
    this.parts.setState('ready')
  }

  /** A new subscriber connection: canaries sent before went out with the old one. */
  resubscribed (): void { this.#unansweredSince = 0 }

  tick (): void {
    const { parts, options } = this
    const now = Date.now()
    const sub = parts.subscriber()
    if (sub && parts.state() === 'ready' && now - this.#heardAt > options.timeoutMs) parts.setState('down')
    // Redis took a canary and the subscriber heard nothing since: subscribed but deaf (a known
    // failure of long-lived pub/sub connections). Reconnect. A canary that could not be sent,
    // because the command connection is down, says nothing about the subscriber.
    const waited = now - this.#unansweredSince
    if (sub?.status === 'ready' && this.#unansweredSince > 0 && waited > options.timeoutMs && now - this.#heardAt > options.timeoutMs) {
      parts.counters.resubscribes++
      this.#unansweredSince = 0
      parts.log.warn('canary', { lateMs: waited }, 'canary did not come back: reconnecting the subscriber')
      sub.disconnect(true)
      return
    }
    const cmd = parts.command()
    if (cmd.status !== 'ready') return
    if (this.#unansweredSince === 0) this.#unansweredSince = now
    cmd.call(options.publishCommand, options.channel, String(now)).catch(() => {
      parts.counters.commandErrors++
      if (this.#unansweredSince === now) this.#unansweredSince = 0
    })
  }
}
