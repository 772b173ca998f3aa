import type { BrokerEvent, EventBody } from './event.js'

/**
 * - `connecting`: not yet able to deliver;
 * - `ready`: subscribed, and (for Redis) its canary comes back in time;
 * - `down`: the connection is lost or the canary is late: events may be missed until it recovers;
 * - `closed`: closed for good.
 */
export type BrokerState = 'connecting' | 'ready' | 'down' | 'closed'

export interface History {
  /** Events after the requested id, oldest first. */
  events: BrokerEvent[]
  /** True when events after the requested id were already trimmed from the history. */
  lost: boolean
}

/**
 * What the hub needs from a message broker. Both implementations hand their listener every
 * event once, in id order, with no gap that their history could fill.
 */
export interface Broker {
  readonly kind: 'memory' | 'redis'
  readonly state: BrokerState
  /** Appends to the history and fans out; resolves to the id the broker assigned. */
  publish (body: EventBody): Promise<string>
  /** Starts delivery to `listener`; there is one listener, the hub. */
  subscribe (listener: (event: BrokerEvent) => void): Promise<void>
  /** The retained events after `sinceId`. */
  history (sinceId: string): Promise<History>
  /** Called with each state change. */
  onStateChange (listener: (state: BrokerState) => void): void
  /** Broker-specific numbers for the metrics line, e.g. canary round trip or outbox length. */
  stats (): Record<string, number>
  close (): Promise<void>
}
