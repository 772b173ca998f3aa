import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { hostAllowed } from '../lib/origins.js'
import { coreOf } from '../plugins/fanout.js'

/**
 * `metricsPath`: Prometheus text. With `metricsToken` set it needs `Authorization: Bearer <token>`
 * (401 otherwise), compared in constant time; with `allowedHosts` set, a foreign Host gets 403.
 * The shipped nginx config does not proxy it at all: Prometheus scrapes each replica directly.
 */
export default async function metricsRoutes (fastify: FastifyInstance): Promise<void> {
  const { metricsPath, metricsToken, allowedHosts } = fastify.fanout.options
  if (metricsPath === false) return
  // Both sides hashed first: equal lengths for timingSafeEqual, and no early exit on a length
  // that differs from the token's.
  const expected = metricsToken === undefined ? undefined : digest(metricsToken)
  fastify.get(metricsPath, async (request, reply) => {
    const { stats } = coreOf(fastify)
    if (!hostAllowed(request.headers.host, allowedHosts ?? [])) {
      stats.hostsRefused++
      request.log.warn({ host: request.headers.host }, 'metrics refused: host not in allowedHosts')
      return reply.code(403).send({ error: 'host not allowed', host: request.headers.host ?? null })
    }
    if (expected !== undefined && !timingSafeEqual(digest(bearer(request) ?? ''), expected)) {
      stats.metricsUnauthorized++
      request.log.warn('metrics refused: missing or wrong bearer token')
      return reply.code(401).header('www-authenticate', 'Bearer realm="metrics"').send({ error: 'metrics need Authorization: Bearer <METRICS_TOKEN>' })
    }
    const registry = fastify.fanoutMetrics
    return reply.type(registry.contentType).send(await registry.metrics())
  })
}

function bearer (request: FastifyRequest): string | undefined {
  const match = /^Bearer +(\S+) *$/i.exec(request.headers.authorization ?? '')
  return match?.[1]
}

function digest (text: string): Buffer {
  return createHash('sha256').update(text).digest()
}
