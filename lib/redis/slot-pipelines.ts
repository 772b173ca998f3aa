import { createRequire } from 'node:module'
import type { PublishingConnection, PublishingPipeline } from './outbox.js'

// Redis Cluster's key-to-slot function (CRC16 of the hash tag), as ioredis itself computes it.
const calculateSlot = createRequire(import.meta.url)('cluster-key-slot') as (key: string) => number

type Reply = [Error | null, unknown]
type PublishArgs = Parameters<PublishingPipeline['fanoutPublish']>

/** What the split needs of an ioredis Cluster: pipelines, and which node serves each slot. */
export interface SlotMappedConnection {
  pipeline: () => PublishingPipeline
  /** ioredis's slot table: per slot, its primary's node key first. */
  readonly slots: string[][]
}

/**
 * The outbox's pipeline on a Redis Cluster. ioredis refuses a Cluster pipeline whose keys live on
 * different primaries, and a batch holds events of many channels, each its own slot. This one
 * sends a pipeline per primary, all at once, and hands back the replies in the order the calls
 * were made: a channel's events keep their order (one pipeline, one connection), and a WAIT
 * asked of the batch is asked of every pipeline, its answer the fewest replicas any confirmed.
 * Should the slot table change before a pipeline runs (a failover, resharding), ioredis refuses
 * it, and the outbox sends those events again.
 */
export function slotPipelines (cluster: () => SlotMappedConnection): () => PublishingPipeline {
  return () => {
    const calls: PublishArgs[] = []
    let wait: [number, number] | undefined
    const pipeline: PublishingPipeline = {
      fanoutPublish (...args: PublishArgs) {
        calls.push(args)
        return pipeline
      },
      wait (replicas: number, timeoutMs: number) {
        wait = [replicas, timeoutMs]
        return pipeline
      },
      async exec () {
        // By the primary of each call's slot (every key of a call shares it): a pipeline per node.
        const slots = cluster().slots
        const groups = new Map<string, number[]>()
        calls.forEach((args, i) => {
          const slot = calculateSlot(args[0])
          const node = slots[slot]?.[0] ?? `slot ${slot}` // not mapped yet: a pipeline of its own
          const group = groups.get(node)
          if (group === undefined) groups.set(node, [i])
          else group.push(i)
        })
        const replies: Reply[] = new Array(calls.length)
        let acked = Infinity
        let waitError: Error | null = null
        await Promise.all([...groups.values()].map(async (indexes) => {
          const real = cluster().pipeline()
          for (const i of indexes) real.fanoutPublish(...calls[i])
          if (wait !== undefined) real.wait(...wait)
          const answered = await real.exec().catch((err: Error): Reply[] => indexes.map((): Reply => [err, null]))
          indexes.forEach((i, at) => { replies[i] = answered?.[at] ?? [new Error('no reply'), null] })
          if (wait !== undefined) {
            const [err, count] = answered?.[indexes.length] ?? [new Error('no reply'), 0]
            waitError ??= err
            acked = Math.min(acked, Number(count))
          }
        }))
        if (wait !== undefined) replies.push([waitError, Number.isFinite(acked) ? acked : 0])
        return replies
      }
    }
    return pipeline
  }
}

/** The connection the outbox publishes through, its pipelines split by primary. */
export function slotPipelining (cluster: () => PublishingConnection & SlotMappedConnection): () => PublishingConnection {
  const connection = { get status () { return cluster().status }, pipeline: slotPipelines(cluster) }
  return () => connection
}
