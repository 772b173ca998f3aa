import type { BrokerEvent, EventBody } from './event.js'

/**
 * - `connecting`: not yet able to deliver;
 * - `ready`: subscribed, and (for Redis) its canary comes back in time;
 * - `down`: the connection is lost or the canary is late: events may be missed until it recovers;
 * - `closed`: closed for good.
 */
/** A channel's history limits, as both brokers keep them: events kept, and their age (0: no limit). */
export type HistoryRules = (channel: string) => { historySize: number, historyAgeMs: number }

/** How long an idempotency key is remembered. */
export const IDEMPOTENCY_MS = 24 * 3600_000

/** What an idempotency key may be: it becomes part of a Redis key. */
export const IDEMPOTENCY_KEY_PATTERN = /^[A-Za-z0-9_.:-]{1,128}$/

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

/** Where a channel stands on this replica: the last event delivered to the hub, and its epoch. */
export interface Position {
  /** The newest event id delivered; `0-0` when the channel has none yet. */
  lastId: string
  /** The channel's history; undefined while it has none. */
  epoch: string | undefined
}

export interface BrokerListener {
  (channel: string, event: BrokerEvent): void
}

export interface GapListener {
  (channel: string, gap: Gap): void
}

/**
 * What the hub needs from a message broker, per channel. Both implementations hand their listener
 * every event of every channel this replica has joined once, in id order, with no gap their
 * history could fill; a gap it could not fill is reported to the gap listener before the events
 * after it. A replica receives only the channels it has joined.
 */
export interface Broker {
  readonly kind: 'memory' | 'redis'
  readonly state: BrokerState
  /** True once the broker has reached its backend: before that it cannot promise anything. */
  readonly synced: boolean
  /**
   * Appends to the channel's history and fans out; resolves to the id the broker assigned. With
   * an `idempotencyKey`, a second publish with the same key on the same channel (from any
   * replica, within IDEMPOTENCY_MS) makes no event and resolves to the first one's id.
   */
  publish (channel: string, body: EventBody, idempotencyKey?: string): Promise<string>
  /** Starts delivery to `listener`; there is one listener, the hub. */
  start (listener: BrokerListener, onGap?: GapListener): Promise<void>
  /**
   * This replica wants the channel's events (its first local subscriber): resolves once they
   * flow. Counted: every `join` is matched by one `leave`.
   */
  join (channel: string): Promise<void>
  /** Where a joined channel stands: the last event handed to the listener. */
  position (channel: string): Position
  /** One fewer local subscriber; after the last one (and a short linger) the broker stops receiving the channel. */
  leave (channel: string): void
  /**
   * Starts a replay of the channel's events after `since`. Every read it makes begins at or
   * after `notBefore` (a `performance.now()` time), so reads shared between clients never miss
   * an event published after a client began holding live ones.
   */
  history (channel: string, since: string, notBefore: number): Promise<Replay>
  /** Called with each state change. */
  onStateChange (listener: (state: BrokerState) => void): void
  /** Broker-specific numbers for the metrics line, e.g. canary round trip or outbox length. */
  stats (): Record<string, number>
  close (): Promise<void>
}
