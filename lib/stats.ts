import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks'
import { namespaceOf } from './channels.js'

/**
 * Every counter, once: its name in the pino `metrics` line and in `stats`, and its Prometheus
 * help. The Prometheus name is derived (`uploadBytes` → `fanout_upload_bytes_total`).
 */
export const COUNTERS = {
  eventsIn: 'Events this replica received from the broker',
  deliveries: 'Event frames written to clients, replays included',
  replayed: 'Events replayed from history to resuming clients',
  replaysQueued: 'Resumes that waited for a replay slot',
  slowConsumerDrops: 'Clients cut off for not reading',
  heartbeatTimeouts: 'Clients terminated for missing a ping',
  rateLimited: 'Clients closed for exceeding the inbound rate',
  handshakesRefused: 'Connections refused before the upgrade: origin, host, capacity, per-identity or per-address limit, authorize',
  identityLimited: 'Connections refused for the per-identity limit, MAX_CONNECTIONS_PER_IDENTITY',
  addressLimited: 'Connections refused for the per-address limit, MAX_CONNECTIONS_PER_ADDRESS',
  hostsRefused: 'Requests refused for a Host not in ALLOWED_HOSTS',
  metricsUnauthorized: 'Scrapes of /metrics refused for a missing or wrong METRICS_TOKEN',
  channelErrors: 'Channel commands refused: bad name, forbidden, too many, unknown command, publish failed',
  httpPublishes: 'Events published over HTTP, through the publish route',
  textMessages: 'Text messages received',
  textLogSuppressed: 'Text messages not logged over the log rate',
  uploads: 'Uploads saved',
  uploadBytes: 'Bytes of uploads saved',
  uploadErrors: 'Uploads refused or failed'
} as const

export type CounterName = keyof typeof COUNTERS
export type Counters = Record<CounterName, number>

/** `uploadBytes` → `fanout_upload_bytes_total`. */
export function prometheusName (counter: CounterName): string {
  return `fanout_${counter.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)}_total`
}

const NAMES = Object.keys(COUNTERS) as CounterName[]

// The class carries one plain number field per counter (declared by this interface), bumped in
// place: the broadcast path adds to them once per event, never once per client.
export interface Stats extends Counters {}

/** One namespace's numbers: never per channel, whose names are unbounded (label cardinality). */
export interface NamespaceCounters {
  /** Channels of the namespace with a subscriber on this replica. */
  channels: number
  /** (client, channel) subscriptions on this replica. */
  subscriptions: number
  /** Events published through this replica (app, HTTP, clients). */
  publishes: number
  /** Event frames sent to this replica's subscribers, live. */
  deliveries: number
}

/** The counters behind both the pino metrics line and `/metrics`, and the event-loop delay. */
export class Stats {
  readonly #loopDelay: IntervalHistogram
  /** By namespace (`''`: names without a `:`). */
  readonly namespaces = new Map<string, NamespaceCounters>()

  constructor () {
    for (const name of NAMES) this[name] = 0
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

  namespace (channel: string): NamespaceCounters {
    const name = namespaceOf(channel)
    let counters = this.namespaces.get(name)
    if (counters === undefined) this.namespaces.set(name, counters = { channels: 0, subscriptions: 0, publishes: 0, deliveries: 0 })
    return counters
  }

  subscribed (channel: string, first: boolean): void {
    const counters = this.namespace(channel)
    counters.subscriptions++
    if (first) counters.channels++
  }

  unsubscribed (channel: string, last: boolean): void {
    const counters = this.namespace(channel)
    counters.subscriptions--
    if (last) counters.channels--
  }

  delivered (channel: string, count: number): void { this.namespace(channel).deliveries += count }

  published (channel: string): void { this.namespace(channel).publishes++ }

  counters (): Counters {
    const counters = {} as Counters
    for (const name of NAMES) counters[name] = this[name]
    return counters
  }
}

function round (ms: number): number {
  return Number.isFinite(ms) ? Math.round(ms * 100) / 100 : 0
}
