import { EventEmitter } from 'node:events'
import type { Broker, BrokerListener, BrokerState, Replay } from './broker.js'
import { compareIds, encodeBody, HISTORY_PAGE, newEpoch, withId, type BrokerEvent, type EventBody } from './event.js'

/**
 * The embedded broker: one process, a bounded ring of history, ids shaped like Redis stream ids
 * (`<ms>-<seq>`). Its history lives as long as the process: each start is a new epoch. A product
 * component for single-instance use, not a test double.
 */
export class MemoryBroker implements Broker {
  readonly kind = 'memory'
  readonly synced = true
  readonly epoch = newEpoch()
  #state: BrokerState = 'ready'
  #ring: BrokerEvent[] = []
  #lastMs = 0
  #idSeq = 0
  #seq = 0
  #firstId: string | undefined
  #lastTrimmedId: string | undefined
  #listener: BrokerListener | undefined
  #events = new EventEmitter()

  constructor (readonly historySize: number) {}

  get state (): BrokerState { return this.#state }

  async publish (body: EventBody): Promise<string> {
    if (this.#state === 'closed') throw new Error('broker is closed')
    const id = this.#nextId()
    const event: BrokerEvent = { id, data: withId(id, this.epoch, encodeBody(body)), seq: ++this.#seq, epoch: this.epoch }
    this.#firstId ??= id
    this.#ring.push(event)
    if (this.#ring.length > this.historySize) this.#lastTrimmedId = this.#ring.shift()?.id
    // Delivered on a later tick, as a network broker would: a publisher never runs inside the hub.
    queueMicrotask(() => this.#listener?.(event))
    return id
  }

  async subscribe (listener: BrokerListener): Promise<void> {
    this.#listener = listener
  }

  async history (since: string): Promise<Replay> {
    const ring = this.#ring
    const newest = ring.at(-1)?.id
    const clamped = newest === undefined ? since !== '0-0' : compareIds(since, newest) > 0
    const from = clamped ? newest ?? '0-0' : since
    // An id from before this process's first event belongs to an earlier run: what followed it is gone.
    const earlierEpoch = since !== '0-0' && (this.#firstId === undefined || compareIds(since, this.#firstId) < 0)
    let after = from
    const replay = {
      first: [] as BrokerEvent[],
      from,
      lost: earlierEpoch,
      clamped,
      epoch: this.epoch,
      next: async (): Promise<BrokerEvent[]> => {
        // Trimmed past where this replay stands: the events in between are gone.
        if (this.#lastTrimmedId !== undefined && compareIds(after, this.#lastTrimmedId) < 0) replay.lost = true
        const at = firstAfter(this.#ring, after)
        const page = this.#ring.slice(at, at + HISTORY_PAGE)
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
    return { historyLength: this.#ring.length }
  }

  async close (): Promise<void> {
    this.#state = 'closed'
    this.#listener = undefined
    this.#events.emit('state', 'closed')
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
