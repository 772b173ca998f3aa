import type { FastifyInstance } from 'fastify'

export default async function metricsRoutes (fastify: FastifyInstance): Promise<void> {
  fastify.get('/metrics', async (_request, reply) => {
    const registry = fastify.fanoutMetrics
    return reply.type(registry.contentType).send(await registry.metrics())
  })
}
