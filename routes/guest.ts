import { posix } from 'node:path'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { ANONYMOUS } from '../lib/auth.js'
import { GUEST_CHANNEL } from '../lib/channels.js'
import { ID_PATTERN } from '../lib/event.js'
import { Client } from '../lib/hub.js'
import { originAllowed } from '../lib/origins.js'
import { CloseCode, PROTOCOL } from '../lib/protocol.js'
import { TICKET_PATTERN } from '../lib/tokens.js'
import { acceptsEventStream, openEventStream } from '../lib/transports/sse.js'
import { UploadQueue } from '../lib/uploads.js'
import { admitConnection, logText, onInbound, saveUpload } from './connection.js'
import { refreshToken, ticketRoute } from './stream.js'
import { coreOf } from '../plugins/fanout.js'

interface GuestRequest {
  Querystring: { since?: string, epoch?: string, ticket?: string }
  Headers: { 'last-event-id'?: string }
}

/**
 * The seed's Node server: every guest event to every client; text is logged, binary is saved.
 * The same stream as EventSource for a GET that accepts `text/event-stream`. The replica keeps
 * the guest channel joined for as long as it serves this route, as the single stream always was.
 */
export default async function guestRoutes (fastify: FastifyInstance): Promise<void> {
  const core = coreOf(fastify)
  const { hub, options, broker, tokens } = core
  if (options.guestPath === false) return
  core.streamPath = posix.join(fastify.prefix || '/', options.guestPath)
  // The client library asks for an EventSource's ticket next to the stream it opens.
  if (tokens !== undefined) ticketRoute(fastify, tokens, posix.join(options.guestPath, 'ticket'))
  broker.join(GUEST_CHANNEL).catch((err: Error) => fastify.log.error({ err: err.message }, 'could not join the guest channel'))
  fastify.addHook('onClose', async () => broker.leave(GUEST_CHANNEL))

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
          epoch: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,32}$' },
          // A one-time ticket (POST <streamPath>/ticket) for an EventSource, which cannot send a token.
          ticket: { type: 'string', pattern: TICKET_PATTERN.source }
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
      tokens?.watch(client)
      subscribeToGuests(fastify, client, request, request.headers['last-event-id'] ?? request.query.since)
    },
    wsHandler (socket, request) {
      const client = hub.add(socket, socket.protocol === PROTOCOL)
      client.identity = request.fanoutIdentity ?? ANONYMOUS
      tokens?.watch(client)
      const queue = new UploadQueue(() => socket.pause(), () => socket.resume())
      // Listeners first, before anything async, or early messages are lost.
      onInbound(fastify, socket, request, (data, isBinary) => {
        if (isBinary) queue.push(() => saveUpload(fastify, client, request, data))
        else if (tokens !== undefined && isRefresh(data)) refreshToken(fastify, client, request, (JSON.parse(data.toString()) as { token?: unknown }).token)
        else logText(fastify, request, data)
      })
      subscribeToGuests(fastify, client, request, request.query.since)
    }
  })
}

/** Into the guest channel: live from now, or resumed after `since` (told as `resume`). */
function subscribeToGuests (fastify: FastifyInstance, client: Client, request: FastifyRequest<GuestRequest>, since: string | undefined): void {
  const { hub, subscribe } = coreOf(fastify)
  subscribe(client, GUEST_CHANNEL, { since, epoch: request.query.epoch }, ({ replayed, lost, clamped, epoch }) => {
    if (since === undefined) return
    request.log.info({ since, replayed, lost, clamped }, 'resumed')
    if (client.control) hub.sendJson(client, { type: 'resume', since, replayed, lost, clamped, epoch: epoch ?? null })
  }).catch((err: Error) => {
    // The guest channel did not stand in Redis in time, or its history could not be read: the
    // client comes back and tries again (a failed replay has closed it already).
    request.log.warn({ since, err: err.message }, 'subscribe failed: the guest channel is unavailable now')
    client.close(CloseCode.TRY_AGAIN_LATER, 'channel unavailable')
  })
}

/**
 * A text frame that is a `refresh` command (with tokens on, the one command `/guest` takes): taken,
 * never logged, since it carries a token.
 */
function isRefresh (data: Buffer): boolean {
  if (data[0] !== 0x7b) return false // '{'
  try {
    const command = JSON.parse(data.toString()) as unknown
    return typeof command === 'object' && command !== null && (command as { type?: unknown }).type === 'refresh'
  } catch {
    return false
  }
}
