import type { PublishingConnection, PublishingPipeline } from './outbox.js'

type Reply = [Error | null, unknown]
type PublishArgs = Parameters<PublishingPipeline['fanoutPublish']>

/**
 * The outbox's pipeline on a Redis Cluster. ioredis refuses a Cluster pipeline whose keys live on
 * different primaries, and a batch holds events of many channels, each its own slot. This one
 * sends a pipeline per channel, all at once, and hands back the replies in the order the calls
 * were made: a channel's events keep their order (one pipeline, one connection), and a WAIT
 * asked of the batch is asked of every pipeline, its answer the fewest replicas any confirmed.
 */
export function slotPipelines (cluster: () => { pipeline: () => PublishingPipeline }): () => PublishingPipeline {
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
        // By the channel's events key (each call's first key): every key of a call shares its slot.
        const groups = new Map<string, number[]>()
        calls.forEach((args, i) => {
          const group = groups.get(args[0])
          if (group === undefined) groups.set(args[0], [i])
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

/** The connection the outbox publishes through, its pipelines split by slot. */
export function slotPipelining (cluster: () => PublishingConnection): () => PublishingConnection {
  const connection = { get status () { return cluster().status }, pipeline: slotPipelines(cluster) }
  return () => connection
}
