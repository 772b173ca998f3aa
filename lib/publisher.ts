import { setTimeout as sleep } from 'node:timers/promises'
import { makeGuest, nextDelay } from './guests.js'
import type { EventBody } from './event.js'

export interface PublisherRun {
  /** Resolves once the last event was accepted by the broker (or the run was stopped). */
  done: Promise<void>
  stop (): Promise<void>
}

export interface PublisherSettings {
  publish: (body: EventBody) => Promise<string>
  minDelayMs: number
  maxDelayMs: number
  count?: number
  /** An event the broker refused (closed, or dropped from a full outbox). */
  onError?: (err: Error) => void
}

// Publishes run ahead of their confirmations up to this many; ordering is the broker's job.
const MAX_IN_FLIGHT = 256

/** Makes guest events on the random schedule and hands them to `publish`. */
export function startPublisher (settings: PublisherSettings): PublisherRun {
  const abort = new AbortController()
  const inFlight = new Set<Promise<unknown>>()

  async function run (): Promise<void> {
    for (let made = 0; settings.count === undefined || made < settings.count; made++) {
      const wait = nextDelay(settings.minDelayMs, settings.maxDelayMs)
      // Even at delay 0, yield to the event loop so the process keeps serving.
      await (wait > 0 ? sleep(wait, undefined, { signal: abort.signal }) : new Promise(setImmediate))
      if (abort.signal.aborted) return
      const sent: Promise<unknown> = settings.publish(makeGuest())
        .catch((err: Error) => settings.onError?.(err))
        .finally(() => inFlight.delete(sent))
      inFlight.add(sent)
      if (inFlight.size >= MAX_IN_FLIGHT) await Promise.race(inFlight)
    }
    await Promise.all(inFlight)
  }

  const done = run().catch((err: Error) => {
    if (err.name !== 'AbortError') throw err
  })
  return {
    done,
    async stop () {
      abort.abort()
      await done
    }
  }
}
