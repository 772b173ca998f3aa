import fp from 'fastify-plugin'
import type { ResolvedOptions } from '../lib/options.js'
import { startPublisher } from './publisher.js'

/** The guest publisher, in-process: the embedded default, or `PUBLISHER=on` with Redis. */
export default fp<ResolvedOptions>(async (fastify, options) => {
  if (!options.publisher) return
  const { minDelayMs, maxDelayMs, count } = options.publisher
  const run = startPublisher({
    publish: (body) => fastify.fanout.publish(body),
    minDelayMs,
    maxDelayMs,
    count,
    onError: (err) => fastify.log.warn({ err: err.message }, 'guest event not published')
  })
  // preClose, so no event is made once closing begins; the broker itself closes in onClose.
  fastify.addHook('preClose', async () => { await run.stop() })
}, { name: 'fanout-publisher', dependencies: ['fanout-core'] })
