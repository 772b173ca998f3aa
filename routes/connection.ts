import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { RawData, WebSocket } from 'ws'
import { ANONYMOUS, Refusal, type Identity } from '../lib/auth.js'
import type { Client } from '../lib/hub.js'
import { InboundLimiter } from '../lib/limits.js'
import { originAllowed } from '../lib/origins.js'
import { CloseCode } from '../lib/protocol.js'
import { UploadError } from '../lib/uploads.js'
import { coreOf } from '../plugins/fanout.js'

const TEXT_PREVIEW = 200

declare module 'fastify' {
  interface FastifyRequest {
    /** What `authorize` returned for this connection ({} without one). */
    fanoutIdentity: Identity | null
  }
}

/**
 * onRequest for the stream routes (WebSocket and EventSource): runs before the upgrade, so a
 * refused client gets a plain HTTP answer (403 foreign origin, 503 at capacity, 401/403 from
 * `authorize`) and never a socket.
 */
export async function admitConnection (this: FastifyInstance, request: FastifyRequest, reply: FastifyReply): Promise<void> {
  const { hub, broker, options, stats, authorize } = coreOf(this)
  if (!originAllowed(request.headers.origin, request.headers.host, options.allowedOrigins)) {
    stats.handshakesRefused++
    request.log.warn({ origin: request.headers.origin }, `${kind(request)} refused: origin not allowed`)
    return reply.code(403).send({ error: 'origin not allowed', origin: request.headers.origin })
  }
  if (!broker.synced) {
    // Never reached Redis yet: it has no place in the stream to deliver from (docs/delivery.md).
    stats.handshakesRefused++
    request.log.warn(`${kind(request)} refused: the broker has not reached Redis yet`)
    return reply.code(503).header('retry-after', '2').send({ error: 'not connected to the broker yet, try again shortly' })
  }
  if (hub.size >= options.maxConnections) {
    stats.handshakesRefused++
    request.log.warn({ connections: hub.size }, `${kind(request)} refused: at MAX_CONNECTIONS`)
    return reply.code(503).header('retry-after', '5').send({ error: 'server at connection capacity, try again later' })
  }
  if (authorize === undefined) {
    request.fanoutIdentity = ANONYMOUS
    return
  }
  const result = await authorize(request)
  if (result instanceof Refusal || result === false || result === null || typeof result !== 'object') {
    const { status, reason } = result instanceof Refusal ? result : new Refusal(401, 'unauthorized')
    stats.handshakesRefused++
    request.log.warn({ status, reason }, `${kind(request)} refused by authorize`)
    return reply.code(status).send({ error: reason })
  }
  request.fanoutIdentity = result
  if (typeof result.id === 'string') request.log = request.log.child({ user: result.id })
}

// @fastify/websocket marks upgrade requests.
const kind = (request: FastifyRequest): string => (request as { ws?: boolean }).ws === true ? 'websocket' : 'event stream'

/**
 * Inbound messages with the per-connection rate limit applied: a client over it is closed with
 * 1008 (and dropped if it does not answer, see plugins/websocket.ts), and nothing it sent after
 * that is handled.
 */
export function onInbound (fastify: FastifyInstance, socket: WebSocket, request: FastifyRequest, handle: (data: Buffer, isBinary: boolean) => void): void {
  const { options, stats } = coreOf(fastify)
  const limiter = new InboundLimiter(options.rateMessagesPerSec, options.rateBytesPerSec, options.maxUploadBytes)
  socket.on('message', (raw: RawData, isBinary: boolean) => {
    if (socket.readyState !== socket.OPEN) return
    const data = raw as Buffer // binaryType is nodebuffer: fragments arrive joined
    if (!limiter.admit(data.length)) {
      stats.rateLimited++
      request.log.warn({ bytes: data.length }, 'websocket closed: inbound rate limit exceeded')
      socket.close(CloseCode.POLICY, 'rate limit exceeded')
      return
    }
    handle(data, isBinary)
  })
}

/** A text message: one log line (a preview), within the replica-wide log rate. */
export function logText (fastify: FastifyInstance, request: FastifyRequest, data: Buffer): void {
  const { stats, admitTextLog } = coreOf(fastify)
  stats.textMessages++
  if (!admitTextLog()) {
    stats.textLogSuppressed++
    return
  }
  // Decode only what the preview can show (4 bytes a character at most), not a 10 MiB message.
  const text = data.toString('utf8', 0, TEXT_PREVIEW * 4)
  const preview = text.length > TEXT_PREVIEW || data.length > TEXT_PREVIEW * 4 ? `${text.slice(0, TEXT_PREVIEW)}…` : text
  request.log.info({ bytes: data.length }, 'received: %s', preview)
}

/** One upload: saved, counted, logged, and acked (or refused) to a fanout.v1 client. */
export async function saveUpload (fastify: FastifyInstance, client: Client, request: FastifyRequest, data: Buffer): Promise<void> {
  const { hub, stats, uploads, options } = coreOf(fastify)
  try {
    if (!options.uploads) throw new UploadError('disabled', 'uploads are turned off on this server')
    if (client.identity.upload === false) throw new UploadError('unauthorized', 'this connection may not upload')
    const saved = await uploads.save(data, client.identity.id)
    stats.uploads++
    stats.uploadBytes += saved.bytes
    request.log.info(saved, 'upload saved')
    if (client.control) hub.sendJson(client, { type: 'ack', id: saved.name, ...saved })
  } catch (err) {
    stats.uploadErrors++
    const code = err instanceof UploadError ? err.code : 'write_failed'
    const message = err instanceof UploadError ? err.message : 'the upload could not be saved'
    request.log.warn({ code, bytes: data.length, err: (err as Error).message }, 'upload refused')
    if (client.control) hub.sendJson(client, { type: 'error', code, message })
  }
}
