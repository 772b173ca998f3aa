import { TokenBucket } from '../limits.js'
import type { RedisCounters } from './counters.js'

export type LogFn = (level: 'info' | 'warn' | 'error', fields: Record<string, unknown>, msg: string) => void

/** What the broker's parts log through; warnings are rate-limited per kind. */
export interface BrokerLog {
  info (fields: Record<string, unknown>, msg: string): void
  error (fields: Record<string, unknown>, msg: string): void
  /** At most a few a second per `kind`; the next line logged says how many were suppressed. */
  warn (kind: string, fields: Record<string, unknown>, msg: string): void
}

export function brokerLog (log: LogFn, counters: RedisCounters, perSecond = 2, burst = 10): BrokerLog {
  const kinds = new Map<string, { bucket: TokenBucket, suppressed: number }>()
  return {
    info: (fields, msg) => log('info', fields, msg),
    error: (fields, msg) => log('error', fields, msg),
    warn (kind, fields, msg) {
      let limit = kinds.get(kind)
      if (!limit) kinds.set(kind, limit = { bucket: new TokenBucket(perSecond, burst), suppressed: 0 })
      if (!limit.bucket.take()) {
        limit.suppressed++
        counters.logsSuppressed++
        return
      }
      log('warn', limit.suppressed > 0 ? { ...fields, suppressed: limit.suppressed } : fields, msg)
      limit.suppressed = 0
    }
  }
}
