import { timingSafeEqual } from 'node:crypto'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { originAllowed } from '../lib/origins.js'
import { TOKEN_PROTOCOL_PREFIX } from '../plugins/websocket.js'

/**
 * onRequest for the WebSocket routes: runs before the upgrade, so a refused client gets a plain
 * HTTP answer (403 foreign origin, 503 at capacity) and never a socket.
 */
export async function admitUpgrade (this: import('fastify').FastifyInstance, request: FastifyRequest, reply: FastifyReply): Promise<void> {
  const { hub, broker, options, stats } = this.fanout
  if (!originAllowed(request.headers.origin, request.headers.host, options.allowedOrigins)) {
    stats.handshakesRefused++
    request.log.warn({ origin: request.headers.origin }, 'websocket refused: origin not allowed')
    return reply.code(403).send({ error: 'origin not allowed', origin: request.headers.origin })
  }
  if (!broker.synced) {
    // Never reached Redis yet: it has no place in the stream to deliver from (README, "Readiness").
    stats.handshakesRefused++
    request.log.warn('websocket refused: the broker has not reached Redis yet')
    return reply.code(503).header('retry-after', '2').send({ error: 'not connected to the broker yet, try again shortly' })
  }
  if (hub.size >= options.maxConnections) {
    stats.handshakesRefused++
    request.log.warn({ connections: hub.size }, 'websocket refused: at MAX_CONNECTIONS')
    return reply.code(503).header('retry-after', '5').send({ error: 'server at connection capacity, try again later' })
  }
}

/**
 * Whether the handshake carried the upload token: as `Authorization: Bearer <token>` or, for
 * browsers (which cannot set headers), as the subprotocol `fanout.token.<token>`. Neither is logged.
 */
export function presentedToken (request: FastifyRequest, token: string | undefined): boolean {
  if (token === undefined) return true
  const offered = [
    request.headers.authorization?.replace(/^Bearer\s+/i, ''),
    ...(request.headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim())
      .filter((p) => p.startsWith(TOKEN_PROTOCOL_PREFIX)).map((p) => p.slice(TOKEN_PROTOCOL_PREFIX.length))
  ]
  const expected = Buffer.from(token)
  return offered.some((candidate) => {
    if (candidate === undefined) return false
    const given = Buffer.from(candidate)
    return given.length === expected.length && timingSafeEqual(given, expected)
  })
}
