// What every bench process shares: the clock latencies are measured with, a mergeable latency
// histogram, /proc readings, and the small request/reply protocol over the fork IPC channel.
import { readdirSync, readFileSync } from 'node:fs'
import { performance } from 'node:perf_hooks'

/**
 * Milliseconds since the epoch, with sub-millisecond resolution: the publisher stamps `ts` with it
 * and the load clients read it on receipt. Every process derives it the same way (its wall-clock
 * start plus the machine-wide monotonic clock), so two processes on one machine agree to within
 * microseconds, and p50 is not rounded away to 0 or 1 ms as Date.now() would.
 */
export function nowMs (): number {
  return performance.timeOrigin + performance.now()
}

// Log-spaced latency buckets, 2% wide, from 1 µs to ~6 minutes; merging is adding arrays.
const GROWTH = 1.02
const LOG_GROWTH = Math.log(GROWTH)
export const HISTOGRAM_BUCKETS = 1000

export function histogram (): number[] {
  return new Array<number>(HISTOGRAM_BUCKETS).fill(0)
}

export function record (hist: number[], latencyMs: number): void {
  const us = latencyMs * 1000
  const at = us <= 1 ? 0 : Math.min(HISTOGRAM_BUCKETS - 1, Math.ceil(Math.log(us) / LOG_GROWTH))
  hist[at]++
}

export function merge (into: number[], from: number[]): void {
  for (let i = 0; i < into.length; i++) into[i] += from[i]
}

/** The upper edge (ms) of the bucket holding the q-quantile; NaN for an empty histogram. */
export function quantile (hist: number[], q: number): number {
  const total = hist.reduce((a, b) => a + b, 0)
  if (total === 0) return NaN
  const rank = Math.ceil(q * total)
  let seen = 0
  for (let i = 0; i < hist.length; i++) {
    seen += hist[i]
    if (seen >= rank) return GROWTH ** i / 1000
  }
  return GROWTH ** (hist.length - 1) / 1000
}

/**
 * CPU seconds a process has used, all its threads (main, libuv pool, V8's GC helpers) summed,
 * from the nanosecond run times in /proc/<pid>/task/<tid>/schedstat (/proc/<pid>/stat counts in
 * 10 ms ticks, too coarse for one short round). NaN once the process is gone.
 */
export function cpuSeconds (pid: number): number {
  try {
    let ns = 0
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'latin1').split(' ')[0])
      } catch {} // a thread that ended between the listing and the read
    }
    return ns / 1e9
  } catch {
    return NaN
  }
}

/** Resident set size in bytes. */
export function rssBytes (pid: number): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'latin1')
    const match = /VmRSS:\s+(\d+) kB/.exec(status)
    return match ? Number(match[1]) * 1024 : NaN
  } catch {
    return NaN
  }
}

/** Whole-machine CPU ticks: busy and total, for "how loaded was the box" during a window. */
export function machineTicks (): { busy: number, total: number } {
  const line = readFileSync('/proc/stat', 'latin1').split('\n')[0]
  const ticks = line.split(/\s+/).slice(1).map(Number)
  const total = ticks.reduce((a, b) => a + b, 0)
  const idle = ticks[3] + ticks[4] // idle + iowait
  return { busy: total - idle, total }
}

/** A request sent from the orchestrator to a forked child, and the reply it gets back. */
export interface Request { id: number, op: string, [field: string]: unknown }
export interface Reply { id: number, error?: string, [field: string]: unknown }

/** The child side: answers each request with what `handle` returns (or its error). */
export function serve (handle: (request: Request) => Promise<Record<string, unknown>>): void {
  process.on('message', (request: Request) => {
    handle(request).then(
      (result) => process.send?.({ ...result, id: request.id }),
      (err: Error) => process.send?.({ id: request.id, error: err.stack ?? err.message }))
  })
  // The orchestrator gone means the run is over, whatever happened to it.
  process.on('disconnect', () => process.exit(0))
}

export function sleep (ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/**
 * fastify-fanout's own publish path, loaded at run time from dist/ (so the bench build does not
 * compile, and rewrite, the product): the product's RedisBroker with its defaults, on one Redis or
 * on the Cluster of REDIS_CLUSTER_NODES.
 */
export async function fanoutPublisher (redisUrl: string, prefix: string): Promise<(channel: string, body: object) => Promise<string>> {
  const dist = (path: string): string => new URL(`../${path}`, import.meta.url).href
  const { RedisBroker } = await import(dist('lib/redis/broker.js')) as { RedisBroker: new (options: Record<string, unknown>) => { publish (channel: string, body: object): Promise<string> } }
  const { SETTINGS } = await import(dist('lib/config.js')) as { SETTINGS: Record<string, { schema: { default?: number } }> }
  const { redisTarget } = await import(dist('lib/redis/connection.js')) as { redisTarget: (settings: Record<string, string | undefined>) => unknown }
  const history = { historySize: SETTINGS.historySize.schema.default, historyAgeMs: SETTINGS.historyAgeMs.schema.default }
  const broker = new RedisBroker({
    target: redisTarget({ url: redisUrl, clusterNodes: process.env.REDIS_CLUSTER_NODES }),
    prefix,
    rules: () => history,
    outboxSize: SETTINGS.outboxSize.schema.default,
    canaryIntervalMs: SETTINGS.canaryIntervalMs.schema.default
  })
  return (channel, body) => broker.publish(channel, body)
}
