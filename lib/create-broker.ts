import type { Broker } from './broker.js'
import { MemoryBroker } from './memory-broker.js'
import type { ResolvedOptions } from './options.js'
import { RedisBroker } from './redis/broker.js'
import type { RedisTarget } from './redis/connection.js'
import type { LogFn } from './redis/log.js'

type BrokerOptions = Pick<ResolvedOptions, 'redis' | 'redisPrefix' | 'redisWaitReplicas' | 'channels' | 'outboxSize' | 'canaryIntervalMs'>

/** The broker the resolved options describe: Redis where they name a deployment, else in memory. */
export function createBroker (options: BrokerOptions, log: LogFn): Broker {
  return options.redis === undefined ? new MemoryBroker((channel) => options.channels.of(channel)) : createRedisBroker(options.redis, options, log)
}

/** The Redis broker (the worker's, which needs its lease). */
export function createRedisBroker (target: RedisTarget, options: Omit<BrokerOptions, 'redis'>, log: LogFn): RedisBroker {
  return new RedisBroker({
    target,
    prefix: options.redisPrefix,
    rules: (channel) => options.channels.of(channel),
    outboxSize: options.outboxSize,
    canaryIntervalMs: options.canaryIntervalMs,
    waitReplicas: options.redisWaitReplicas,
    log
  })
}
