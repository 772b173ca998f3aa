import type { BrokerEvent, EventBody } from './event.js'

/**
 * - `connecting`: not yet able to deliver;
 * - `ready`: subscribed, and (for Redis) its canary comes back in time;
 * - `down`: the connection is lost or the canary is late: events may be missed until it recovers;
 * - `closed`: closed for good.
 */
export type BrokerState = 'connecting' | 'ready' | 'down' | 'closed'

/**
 * A replay from history, read a page at a time so a resume never holds the whole history.
 * `lost` and `clamped` are final once `next()` has returned an empty page.
 */
export interface Replay {
  /** The first page: events right after `since` (or after the newest, when clamped). */
  readonly first: BrokerEvent[]
  /** Where the replay starts: `since`, or the newest id when `since` was ahead of the history. */
  readonly from: string
  /** Events after `since` are missing: trimmed, or `since` belongs to an earlier history (epoch). */
  readonly lost: boolean
  /** `since` was ahead of every event in the history; the replay starts from the newest. */
  readonly clamped: boolean
  /** The history's epoch, when it has one yet. */
  readonly epoch: string | undefined
  /** The next page; empty once the replay has reached the newest event. */
  next (): Promise<BrokerEvent[]>
}

/**
 * Events a replica's clients may have missed and cannot be given: `lost` is how many, or null
 * when no one can tell (the history was reset while this replica was away from it).
 */
export interface Gap {
  /** The last event delivered before the gap. */
  after: string | undefined
  lost: number | null
  reason: 'trimmed' | 'history_reset'
}

export interface BrokerListener {
  (event: BrokerEvent): void
}

/**
 * What the hub needs from a message broker. Both implementations hand their listener every
 * event once, in id order, with no gap that their history could fill; a gap it could not fill
 * is reported to `onGap` before the events after it.
 */
export interface Broker {
  readonly kind: 'memory' | 'redis'
  readonly state: BrokerState
  /** True once the broker knows its place in the stream: before that it cannot promise anything. */
  readonly synced: boolean
  /** Appends to the history and fans out; resolves to the id the broker assigned. */
  publish (body: EventBody): Promise<string>
  /** Starts delivery to `listener`; there is one listener, the hub. */
  subscribe (listener: BrokerListener, onGap?: (gap: Gap) => void): Promise<void>
  /**
   * Starts a replay of the events after `since`. Every read it makes begins at or after
   * `notBefore` (a `performance.now()` time), so reads shared between clients never miss an
   * event published after a client began holding live ones.
   */
  history (since: string, notBefore: number): Promise<Replay>
  /** Called with each state change. */
  onStateChange (listener: (state: BrokerState) => void): void
  /** Broker-specific numbers for the metrics line, e.g. canary round trip or outbox length. */
  stats (): Record<string, number>
  close (): Promise<void>
}
