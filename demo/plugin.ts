import fp from 'fastify-plugin'
import { ConfigError } from '../lib/config.js'
import askRoutes from './ask.js'
import { resolveDemoOptions, type DemoOptions } from './options.js'
import pageRoutes from './page.js'
import { startPublisher } from './publisher.js'

export type { DemoOptions, PublisherOptions } from './options.js'

/**
 * The demo around fastify-fanout (register it after fanout): the guest publisher in-process, the
 * tutorial's `/ask` server and the demo page. Routes go under the `prefix` it is registered with.
 */
export default fp<DemoOptions>(async (fastify, opts) => {
  const options = resolveDemoOptions(opts)
  if (options.demoPath !== false && fastify.fanout.options.guestPath === false) {
    throw new ConfigError('invalid fastify-fanout/demo option: demoPath needs the guestPath of fastify-fanout, the stream the demo page shows')
  }
  await fastify.register(async (routes) => {
    await routes.register(askRoutes, options)
    await routes.register(pageRoutes, options)
  }, { prefix: opts.prefix })

  if (!options.publisher) return
  const run = startPublisher({
    ...options.publisher,
    publish: (body) => fastify.fanout.publish(body),
    onError: (err) => fastify.log.warn({ err: err.message }, 'guest event not published')
  })
  // preClose, so no event is made once closing begins; the broker itself closes in onClose.
  fastify.addHook('preClose', async () => { await run.stop() })
}, { name: 'fastify-fanout-demo', fastify: '5.x', dependencies: ['fastify-fanout'] })
