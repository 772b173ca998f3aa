import type { Broker } from './broker.js'
import { MemoryBroker } from './memory-broker.js'
import { RedisBroker } from './redis/broker.js'
import type { LogFn } from './redis/types.js'

export interface BrokerSettings {
  /** Unset: the in-memory broker. */
  redisUrl?: string
  redisPrefix: string
  historySize: number
  outboxSize: number
  canaryIntervalMs: number
}

/** The broker the settings describe; one place for the plugin and the worker alike. */
export function createBroker (settings: BrokerSettings, log: LogFn): Broker {
  if (!settings.redisUrl) return new MemoryBroker(settings.historySize)
  return new RedisBroker({
    url: settings.redisUrl,
    prefix: settings.redisPrefix,
    historySize: settings.historySize,
    outboxSize: settings.outboxSize,
    canaryIntervalMs: settings.canaryIntervalMs,
    log
  })
}
