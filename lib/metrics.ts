import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks'

/**
 * The counters behind both the pino metrics line and `/metrics`. Plain numbers, bumped in place:
 * the broadcast path adds to them once per event, never once per client.
 */
export class Stats {
  eventsIn = 0
  deliveries = 0
  replayed = 0
  replaysQueued = 0
  slowConsumerDrops = 0
  heartbeatTimeouts = 0
  rateLimited = 0
  handshakesRefused = 0
  textMessages = 0
  textLogSuppressed = 0
  uploads = 0
  uploadBytes = 0
  uploadErrors = 0

  readonly #loopDelay: IntervalHistogram

  constructor () {
    this.#loopDelay = monitorEventLoopDelay({ resolution: 20 })
    this.#loopDelay.enable()
  }

  /** Event-loop delay in milliseconds since the last reset (p99 and max). */
  loopDelay (): { p99: number, max: number } {
    const h = this.#loopDelay
    return { p99: round(h.percentile(99) / 1e6), max: round(h.max / 1e6) }
  }

  resetLoopDelay (): void { this.#loopDelay.reset() }

  close (): void { this.#loopDelay.disable() }

  counters (): Record<string, number> {
    const { eventsIn, deliveries, replayed, replaysQueued, slowConsumerDrops, heartbeatTimeouts, rateLimited, handshakesRefused, textMessages, textLogSuppressed, uploads, uploadBytes, uploadErrors } = this
    return { eventsIn, deliveries, replayed, replaysQueued, slowConsumerDrops, heartbeatTimeouts, rateLimited, handshakesRefused, textMessages, textLogSuppressed, uploads, uploadBytes, uploadErrors }
  }
}

function round (ms: number): number {
  return Number.isFinite(ms) ? Math.round(ms * 100) / 100 : 0
}
