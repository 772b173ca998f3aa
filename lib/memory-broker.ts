import { EventEmitter } from 'node:events'
import type { Broker, BrokerState, History } from './broker.js'
import { compareIds, encodeBody, withId, type BrokerEvent, type EventBody } from './event.js'

/**
 * The embedded broker: one process, a bounded ring of history, ids shaped like Redis stream ids
 * (`<ms>-<seq>`). A product component for single-instance use, not a test double.
 */
export class MemoryBroker implements Broker {
  readonly kind = 'memory'
  #state: BrokerState = 'ready'
  #ring: BrokerEvent[] = []
  #lastMs = 0
  #seq = 0
  #lastTrimmedId: string | undefined
  #listener: ((event: BrokerEvent) => void) | undefined
  #events = new EventEmitter()

  constructor (readonly historySize: number) {}

  get state (): BrokerState { return this.#state }

  async publish (body: EventBody): Promise<string> {
    if (this.#state === 'closed') throw new Error('broker is closed')
    const id = this.#nextId()
    const event = { id, data: withId(id, encodeBody(body)) }
    this.#ring.push(event)
    if (this.#ring.length > this.historySize) this.#lastTrimmedId = this.#ring.shift()?.id
    // Delivered on a later tick, as a network broker would: a publisher never runs inside the hub.
    queueMicrotask(() => this.#listener?.(event))
    return id
  }

  async subscribe (listener: (event: BrokerEvent) => void): Promise<void> {
    this.#listener = listener
  }

  async history (sinceId: string): Promise<History> {
    const ring = this.#ring
    // Binary search for the first event after sinceId; the ring is in id order.
    let lo = 0
    let hi = ring.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (compareIds(ring[mid].id, sinceId) <= 0) lo = mid + 1
      else hi = mid
    }
    const lost = this.#lastTrimmedId !== undefined && compareIds(sinceId, this.#lastTrimmedId) < 0
    return { events: ring.slice(lo), lost }
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
      this.#seq = 0
    } else {
      this.#seq++
    }
    return `${this.#lastMs}-${this.#seq}`
  }
}
