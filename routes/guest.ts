import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { RawData, WebSocket } from 'ws'
import { ID_PATTERN } from '../lib/event.js'
import { CloseCode, type Client } from '../lib/hub.js'
import { InboundLimiter } from '../lib/limits.js'
import { UploadError } from '../lib/uploads.js'
import { PROTOCOL } from '../plugins/websocket.js'
import { admitUpgrade, presentedToken } from './admission.js'

const TEXT_PREVIEW = 200
const CLOSE_GRACE_MS = 1000

/** The seed's Node server: every event to every client; text is logged, binary is saved. */
export default async function guestRoutes (fastify: FastifyInstance): Promise<void> {
  const { hub, broker, options } = fastify.fanout

  fastify.get<{ Querystring: { since?: string, epoch?: string } }>(options.guestPath, {
    websocket: true,
    onRequest: admitUpgrade,
    schema: {
      querystring: {
        type: 'object',
        properties: {
          since: { type: 'string', pattern: ID_PATTERN.source },
          epoch: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,32}$' }
        }
      }
    }
  }, (socket, request) => {
    const client = hub.add(socket, socket.protocol === PROTOCOL)
    // Listeners first, before anything async, or early messages are lost.
    onInbound(fastify, socket, request, (data, isBinary) => {
      if (isBinary) saveUpload(fastify, client, request, data)
      else logText(fastify, request, data)
    })
    const { since, epoch } = request.query
    if (since !== undefined) {
      hub.resume(client, since, (id, notBefore) => broker.history(id, notBefore), epoch).then(
        ({ replayed, lost, clamped }) => request.log.info({ since, replayed, lost, clamped }, 'resumed'),
        (err: Error) => request.log.warn({ since, err: err.message }, 'resume failed: history unavailable'))
    }
  })
}

/**
 * Inbound messages with the per-connection rate limit applied: a client over it is closed with
 * 1008, and nothing it sent after that is handled.
 */
export function onInbound (fastify: FastifyInstance, socket: WebSocket, request: FastifyRequest, handle: (data: Buffer, isBinary: boolean) => void): void {
  const { options, stats } = fastify.fanout
  const limiter = new InboundLimiter(options.rateMessagesPerSec, options.rateBytesPerSec, options.maxUploadBytes)
  socket.on('message', (raw: RawData, isBinary: boolean) => {
    if (socket.readyState !== socket.OPEN) return
    const data = raw as Buffer // binaryType is nodebuffer: fragments arrive joined
    if (!limiter.admit(data.length)) {
      stats.rateLimited++
      request.log.warn({ bytes: data.length }, 'websocket closed: inbound rate limit exceeded')
      socket.close(CloseCode.POLICY, 'rate limit exceeded')
      // ws would wait 30 s for the client's close frame, and a flooder keeps its slot meanwhile.
      setTimeout(() => socket.terminate(), CLOSE_GRACE_MS).unref()
      return
    }
    handle(data, isBinary)
  })
}

export function logText (fastify: FastifyInstance, request: FastifyRequest, data: Buffer): void {
  const { stats } = fastify.fanout
  stats.textMessages++
  if (!fastify.fanout.admitTextLog()) {
    stats.textLogSuppressed++
    return
  }
  // Decode only what the preview can show (4 bytes a character at most), not a 10 MiB message.
  const text = data.toString('utf8', 0, TEXT_PREVIEW * 4)
  const preview = text.length > TEXT_PREVIEW || data.length > TEXT_PREVIEW * 4 ? `${text.slice(0, TEXT_PREVIEW)}…` : text
  request.log.info({ bytes: data.length }, 'received: %s', preview)
}

// One upload at a time per client, so acks come back in the order the files were sent. While one
// is being written the client's socket is paused: memory per client stays at about one message,
// however slow the disk and whatever the rate limit admits.
const uploadQueues = new WeakMap<Client, { tail: Promise<void>, pending: number }>()

function saveUpload (fastify: FastifyInstance, client: Client, request: FastifyRequest, data: Buffer): void {
  const { hub, stats, uploads, options } = fastify.fanout
  const authorized = presentedToken(request, options.uploadToken)
  const queue = uploadQueues.get(client) ?? { tail: Promise.resolve(), pending: 0 }
  uploadQueues.set(client, queue)
  if (queue.pending++ === 0) client.ws.pause()
  queue.tail = queue.tail.then(async () => {
    try {
      if (!authorized) throw new UploadError('unauthorized', 'uploads need the upload token')
      const saved = await uploads.save(data)
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
    } finally {
      if (--queue.pending === 0) client.ws.resume()
    }
  })
}
