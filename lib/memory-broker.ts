import { EventEmitter } from 'node:events'
import { IDEMPOTENCY_MS, type Broker, type BrokerListener, type BrokerState, type HistoryRules, type Position, type Replay } from './broker.js'
import { CHANNEL_IDLE_GRACE_MS } from './channels.js'
import { compareIds, encodeBody, HISTORY_PAGE, newEpoch, withId, type BrokerEvent, type EventBody } from './event.js'

/** One channel's history: a bounded ring, in id order. */
interface ChannelHistory {
  readonly epoch: string
  ring: BrokerEvent[]
  seq: number
  firstId: string | undefined
  lastTrimmedId: string | undefined
  /** When its newest event was published (Date.now()). */
  lastAt: number
  /** Local subscribers (`join` minus `leave`). */
  joined: number
  /** The last event handed to the listener. */
  delivered: string
}

/** How often idle channels are swept away. */
const SWEEP_MS = 60_000
/** Idempotency keys remembered at most, oldest forgotten first. */
const IDEMPOTENCY_KEYS = 100_000

/**
 * The embedded broker: one process, a bounded ring of history per channel, ids shaped like Redis
 * stream ids (`<ms>-<seq>`). Its histories live as long as the process: each start is a new
 * epoch. A channel idle past its history age is forgotten, as its Redis keys would expire. A
 * product component for single-instance use, not a test double.
 */
export class MemoryBroker implements Broker {
  readonly kind = 'memory'
  readonly synced = true
  #state: BrokerState = 'ready'
  #channels = new Map<string, ChannelHistory>()
  #lastMs = 0
  #idSeq = 0
  #listener: BrokerListener | undefined
  #events = new EventEmitter()
  #sweep: NodeJS.Timeout
  /** `<channel> <key>` → the id it was given, and when. */
  #idempotent = new Map<string, { id: string, at: number }>()

  constructor (readonly rules: HistoryRules) {
    this.#sweep = setInterval(() => this.#forgetIdle(), SWEEP_MS).unref()
  }

  get state (): BrokerState { return this.#state }

  async publish (channel: string, body: EventBody, idempotencyKey?: string): Promise<string> {
    if (this.#state === 'closed') throw new Error('broker is closed')
    const encoded = encodeBody(body)
    const once = idempotencyKey === undefined ? undefined : `${channel} ${idempotencyKey}`
    if (once !== undefined) {
      const known = this.#idempotent.get(once)
      if (known !== undefined && Date.now() - known.at < IDEMPOTENCY_MS) return known.id
    }
    const history = this.#history(channel)
    const id = this.#nextId()
    const event: BrokerEvent = { id, data: withId(id, history.epoch, channel, encoded), seq: ++history.seq, epoch: history.epoch }
    history.firstId ??= id
    history.lastAt = Date.now()
    history.ring.push(event)
    this.#trim(channel, history)
    // Delivered on a later tick, as a network broker would: a publisher never runs inside the hub.
    if (history.joined > 0) {
      queueMicrotask(() => {
        history.delivered = id
        this.#listener?.(channel, event)
      })
    } else {
      history.delivered = id
    }
    if (once !== undefined) {
      this.#idempotent.delete(once)
      this.#idempotent.set(once, { id, at: Date.now() })
      if (this.#idempotent.size > IDEMPOTENCY_KEYS) this.#idempotent.delete(this.#idempotent.keys().next().value as string)
    }
    return id
  }

  async start (listener: BrokerListener): Promise<void> {
    this.#listener = listener
  }

  async join (channel: string): Promise<void> {
    this.#history(channel).joined++
  }

  position (channel: string): Position {
    const history = this.#history(channel)
    return { lastId: history.delivered, epoch: history.firstId === undefined ? undefined : history.epoch }
  }

  leave (channel: string): void {
    const history = this.#channels.get(channel)
    if (history !== undefined && history.joined > 0) history.joined--
  }

  async history (channel: string, since: string): Promise<Replay> {
    const history = this.#history(channel)
    this.#trim(channel, history)
    const newest = history.ring.at(-1)?.id
    const clamped = newest === undefined ? since !== '0-0' : compareIds(since, newest) > 0
    const from = clamped ? newest ?? '0-0' : since
    // An id from before this channel's first event belongs to an earlier history: what followed it is gone.
    const earlierEpoch = since !== '0-0' && (history.firstId === undefined || compareIds(since, history.firstId) < 0)
    let after = from
    const replay = {
      first: [] as BrokerEvent[],
      from,
      lost: earlierEpoch,
      clamped,
      epoch: history.firstId === undefined ? undefined : history.epoch,
      next: async (): Promise<BrokerEvent[]> => {
        // Trimmed past where this replay stands: the events in between are gone.
        if (history.lastTrimmedId !== undefined && compareIds(after, history.lastTrimmedId) < 0) replay.lost = true
        const at = firstAfter(history.ring, after)
        const page = history.ring.slice(at, at + HISTORY_PAGE)
        if (page.length > 0) after = page[page.length - 1].id
        return page
      }
    }
    replay.first = await replay.next()
    return replay
  }

  onStateChange (listener: (state: BrokerState) => void): void {
    this.#events.on('state', listener)
  }

  stats (): Record<string, number> {
    let historyLength = 0
    for (const history of this.#channels.values()) historyLength += history.ring.length
    return { channels: this.#channels.size, historyLength }
  }

  async close (): Promise<void> {
    clearInterval(this.#sweep)
    this.#state = 'closed'
    this.#listener = undefined
    this.#events.emit('state', 'closed')
  }

  #history (channel: string): ChannelHistory {
    let history = this.#channels.get(channel)
    if (history === undefined) {
      history = { epoch: newEpoch(), ring: [], seq: 0, firstId: undefined, lastTrimmedId: undefined, lastAt: Date.now(), joined: 0, delivered: '0-0' }
      this.#channels.set(channel, history)
    }
    return history
  }

  /** By count, then by age: ids begin with their publish time in ms. */
  #trim (channel: string, history: ChannelHistory): void {
    const { historySize, historyAgeMs } = this.rules(channel)
    const ring = history.ring
    let drop = Math.max(0, ring.length - historySize)
    if (historyAgeMs > 0) {
      const oldest = Date.now() - historyAgeMs
      while (drop < ring.length && Number(ring[drop].id.slice(0, ring[drop].id.indexOf('-'))) < oldest) drop++
    }
    if (drop === 0) return
    history.lastTrimmedId = ring[drop - 1].id
    ring.splice(0, drop)
  }

  /** Channels nobody here subscribes to, idle past their history age: gone, as their Redis keys would be. */
  #forgetIdle (): void {
    const now = Date.now()
    for (const [channel, history] of this.#channels) {
      const { historyAgeMs } = this.rules(channel)
      if (history.joined === 0 && historyAgeMs > 0 && now - history.lastAt > historyAgeMs + CHANNEL_IDLE_GRACE_MS) this.#channels.delete(channel)
    }
  }

  #nextId (): string {
    const now = Date.now()
    if (now > this.#lastMs) {
      this.#lastMs = now
      this.#idSeq = 0
    } else {
      this.#idSeq++
    }
    return `${this.#lastMs}-${this.#idSeq}`
  }
}

/** The index of the first event after `id`; the ring is in id order. */
function firstAfter (ring: BrokerEvent[], id: string): number {
  let lo = 0
  let hi = ring.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (compareIds(ring[mid].id, id) <= 0) lo = mid + 1
    else hi = mid
  }
  return lo
}
