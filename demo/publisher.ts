import { setTimeout as sleep } from 'node:timers/promises'
import { makeGuest, nextDelay } from './guests.js'
import type { EventBody } from '../lib/event.js'

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
  /** How long to wait for a confirmation, once MAX_IN_FLIGHT are out, before going on [STALL_MS]. */
  stallMs?: number
}

// While the broker confirms, publishes run ahead of their confirmations by at most this many, so
// the as-fast-as-possible mode keeps in step with Redis. When it stops confirming (Redis is down)
// the schedule goes on after at most STALL_MS: the broker's bounded outbox keeps the newest.
const MAX_IN_FLIGHT = 256
const STALL_MS = 1000

/** Makes guest events on the random schedule and hands them to `publish`. */
export function startPublisher (settings: PublisherSettings): PublisherRun {
  const abort = new AbortController()
  let inFlight = 0
  let onSettled: (() => void) | undefined

  /** Resolves when a publish settles, or after `ms` (never, when undefined). */
  function settled (ms?: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = ms === undefined ? undefined : setTimeout(resolve, ms)
      onSettled = () => {
        clearTimeout(timer)
        resolve()
      }
    })
  }

  async function run (): Promise<void> {
    for (let made = 0; settings.count === undefined || made < settings.count; made++) {
      const wait = nextDelay(settings.minDelayMs, settings.maxDelayMs)
      // Even at delay 0, yield to the event loop so the process keeps serving.
      await (wait > 0 ? sleep(wait, undefined, { signal: abort.signal }) : new Promise(setImmediate))
      if (abort.signal.aborted) return
      inFlight++
      settings.publish(makeGuest())
        .catch((err: Error) => settings.onError?.(err))
        .finally(() => {
          inFlight--
          onSettled?.()
        })
      if (inFlight >= MAX_IN_FLIGHT) await settled(settings.stallMs ?? STALL_MS)
    }
    // Until every event is confirmed; stop() cuts the wait short (the broker's close flushes).
    while (inFlight > 0 && !abort.signal.aborted) await settled() // eslint-disable-line no-unmodified-loop-condition -- settled in .finally above
  }

  const done = run().catch((err: Error) => {
    if (err.name !== 'AbortError') throw err
  })
  return {
    done,
    async stop () {
      abort.abort()
      onSettled?.()
      await done
    }
  }
}
