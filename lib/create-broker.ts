import type { Broker } from './broker.js'
import { MemoryBroker } from './memory-broker.js'
import { RedisBroker } from './redis/broker.js'
import { redisTarget } from './redis/connection.js'
import type { LogFn } from './redis/log.js'

export interface BrokerSettings {
  /** None of the four set: the in-memory broker. */
  redisUrl?: string
  redisSentinels?: string
  redisSentinelName?: string
  redisClusterNodes?: string
  redisPrefix: string
  redisWaitReplicas?: number
  historySize: number
  outboxSize: number
  canaryIntervalMs: number
}

/** The broker the settings describe; one place for the plugin and the worker alike. */
export function createBroker (settings: BrokerSettings, log: LogFn): Broker {
  const target = redisTarget({
    url: settings.redisUrl,
    sentinels: settings.redisSentinels,
    sentinelName: settings.redisSentinelName,
    clusterNodes: settings.redisClusterNodes
  })
  if (!target) return new MemoryBroker(settings.historySize)
  return new RedisBroker({
    target,
    prefix: settings.redisPrefix,
    historySize: settings.historySize,
    outboxSize: settings.outboxSize,
    canaryIntervalMs: settings.canaryIntervalMs,
    waitReplicas: settings.redisWaitReplicas,
    log
  })
}
