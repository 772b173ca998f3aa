import type { FastifyInstance } from 'fastify'

export default async function healthRoutes (fastify: FastifyInstance): Promise<void> {
  const { broker, options } = fastify.fanout
  // Liveness: the process answers. Restarting it would not fix a broker outage.
  if (options.healthPath !== false) fastify.get(options.healthPath, async () => ({ status: 'ok' }))
  // Readiness: this replica can deliver right now (for Redis: it knows its place in the stream,
  // and its canary came back in time).
  if (options.readyPath !== false) {
    fastify.get(options.readyPath, async (_request, reply) => {
      const ready = broker.state === 'ready' && broker.synced
      return reply.code(ready ? 200 : 503).send({ status: ready ? 'ready' : 'unavailable', broker: broker.kind, state: broker.state })
    })
  }
}
