import { posix } from 'node:path'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { ID_PATTERN } from '../lib/event.js'
import { ANONYMOUS } from '../lib/auth.js'
import { Client } from '../lib/hub.js'
import { originAllowed } from '../lib/origins.js'
import { PROTOCOL } from '../lib/protocol.js'
import { acceptsEventStream, openEventStream } from '../lib/transports/sse.js'
import { UploadError, UploadQueue } from '../lib/uploads.js'
import { admitConnection, logText, onInbound } from './connection.js'
import { coreOf } from '../plugins/fanout.js'

interface GuestRequest {
  Querystring: { since?: string, epoch?: string }
  Headers: { 'last-event-id'?: string }
}

/**
 * The seed's Node server: every event to every client; text is logged, binary is saved. The same
 * stream as EventSource for a GET that accepts `text/event-stream`.
 */
export default async function guestRoutes (fastify: FastifyInstance): Promise<void> {
  const core = coreOf(fastify)
  const { hub, options } = core
  if (options.guestPath === false) return
  core.streamPath = posix.join(fastify.prefix || '/', options.guestPath)

  fastify.route<GuestRequest>({
    method: 'GET',
    url: options.guestPath,
    onRequest: admitConnection,
    schema: {
      querystring: {
        type: 'object',
        properties: {
          since: { type: 'string', pattern: ID_PATTERN.source },
          // The epoch of `since`, so a reset of the history is noticed even where ids cannot tell.
          epoch: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,32}$' }
        }
      },
      headers: { type: 'object', properties: { 'last-event-id': { type: 'string', pattern: ID_PATTERN.source } } }
    },
    // EventSource. The browser resumes with Last-Event-ID on its own; ?since= is for the first connect.
    handler (request, reply) {
      if (!acceptsEventStream(request.headers.accept)) {
        return reply.code(426).header('upgrade', 'websocket')
          .send({ error: 'connect with a WebSocket, or as an EventSource (Accept: text/event-stream)' })
      }
      // The stream takes the socket over: every record is written straight to it, like a frame.
      reply.hijack()
      const origin = request.headers.origin
      const crossOrigin = origin !== undefined && originAllowed(origin, request.headers.host, options.allowedOrigins)
      const client = new Client(openEventStream(request.raw.socket, crossOrigin ? origin : undefined), true)
      client.identity = request.fanoutIdentity ?? ANONYMOUS
      hub.addClient(client)
      resumeIfAsked(fastify, client, request, request.headers['last-event-id'] ?? request.query.since)
    },
    wsHandler (socket, request) {
      const client = hub.add(socket, socket.protocol === PROTOCOL)
      client.identity = request.fanoutIdentity ?? ANONYMOUS
      const queue = new UploadQueue(() => socket.pause(), () => socket.resume())
      // Listeners first, before anything async, or early messages are lost.
      onInbound(fastify, socket, request, (data, isBinary) => {
        if (isBinary) queue.push(() => saveUpload(fastify, client, request, data))
        else logText(fastify, request, data)
      })
      resumeIfAsked(fastify, client, request, request.query.since)
    }
  })
}

function resumeIfAsked (fastify: FastifyInstance, client: Client, request: FastifyRequest<GuestRequest>, since: string | undefined): void {
  const { hub, broker } = coreOf(fastify)
  if (since !== undefined) {
    hub.resume(client, since, (id, notBefore) => broker.history(id, notBefore), request.query.epoch).then(
      ({ replayed, lost, clamped }) => request.log.info({ since, replayed, lost, clamped }, 'resumed'),
      (err: Error) => request.log.warn({ since, err: err.message }, 'resume failed: history unavailable'))
  }
}

/** One upload: saved, counted, logged, and acked (or refused) to a fanout.v1 client. */
async function saveUpload (fastify: FastifyInstance, client: Client, request: FastifyRequest, data: Buffer): Promise<void> {
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
