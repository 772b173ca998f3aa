import type { FastifyInstance } from 'fastify'

export default async function metricsRoutes (fastify: FastifyInstance): Promise<void> {
  const { metricsPath } = fastify.fanout.options
  if (metricsPath === false) return
  fastify.get(metricsPath, async (_request, reply) => {
    const registry = fastify.fanoutMetrics
    return reply.type(registry.contentType).send(await registry.metrics())
  })
}
