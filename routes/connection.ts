import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { RawData, WebSocket } from 'ws'
import { ANONYMOUS, Refusal, type Identity } from '../lib/auth.js'
import type { Client } from '../lib/hub.js'
import { InboundLimiter, TokenBucket } from '../lib/limits.js'
import { hostAllowed, originAllowed } from '../lib/origins.js'
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
 * refused client gets a plain HTTP answer (403 foreign host or origin, 503 at capacity, 429 over
 * the per-address or per-identity limit, 401/403 from `authorize`) and never a socket.
 */
export async function admitConnection (this: FastifyInstance, request: FastifyRequest, reply: FastifyReply): Promise<void> {
  const core = coreOf(this)
  const { hub, broker, options, stats, authorize } = core
  const { host, origin } = request.headers
  if (!hostAllowed(host, options.allowedHosts ?? [])) {
    stats.handshakesRefused++
    stats.hostsRefused++
    request.log.warn({ host }, `${kind(request)} refused: host not in allowedHosts`)
    return reply.code(403).send({ error: 'host not allowed', host: host ?? null })
  }
  // With its scheme: request.protocol is the socket's, or X-Forwarded-Proto when trustProxy is on.
  if (!originAllowed(origin, host, options.allowedOrigins, request.protocol)) {
    stats.handshakesRefused++
    request.log.warn({ origin, protocol: request.protocol }, `${kind(request)} refused: origin not allowed`)
    return reply.code(403).send({ error: 'origin not allowed', origin })
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
  const slots = slotsOf(core)
  // request.ip: the socket's peer, or the client X-Forwarded-For names when trustProxy is on.
  const address = request.ip
  // Checked before authorize too, so a flood from one address costs no authorize calls.
  if (overAddressLimit(slots, options, address)) return refuseSlot(request, reply, slots, 'address', options.maxConnectionsPerAddress as number)
  let identity: Identity = ANONYMOUS
  if (authorize !== undefined) {
    const result = await authorize(request)
    if (result instanceof Refusal || result === false || result === null || typeof result !== 'object') {
      const { status, reason } = result instanceof Refusal ? result : new Refusal(401, 'unauthorized')
      stats.handshakesRefused++
      request.log.warn({ status, reason }, `${kind(request)} refused by authorize`)
      return reply.code(status).send({ error: reason })
    }
    identity = result
  }
  const id = typeof identity.id === 'string' ? identity.id : undefined
  if (id !== undefined) request.log = request.log.child({ user: id })
  // Again after authorize's await, then taken with no await in between: concurrent handshakes
  // from one address or identity each see the others' slots.
  if (overAddressLimit(slots, options, address)) return refuseSlot(request, reply, slots, 'address', options.maxConnectionsPerAddress as number)
  const perIdentity = options.maxConnectionsPerIdentity
  if (id !== undefined && perIdentity !== undefined && (slots.identities.get(id) ?? 0) >= perIdentity) {
    return refuseSlot(request, reply, slots, 'identity', perIdentity)
  }
  request.fanoutIdentity = identity
  holdSlot(request, reply, slots, address, id)
}

/**
 * Open connections (admitted, not yet closed) per address and per identity, for the fair-share
 * limits; and the rate their refusals are logged at (the counters count them all).
 */
interface Slots {
  addresses: Map<string, number>
  identities: Map<string, number>
  refusalLog: TokenBucket
  suppressed: number
}
// One table per app instance (its core), dropped with it.
const slotTables = new WeakMap<object, Slots>()
const SLOT_LOGS_PER_SEC = 5

function slotsOf (core: object): Slots {
  let slots = slotTables.get(core)
  if (slots === undefined) {
    slots = { addresses: new Map(), identities: new Map(), refusalLog: new TokenBucket(SLOT_LOGS_PER_SEC, SLOT_LOGS_PER_SEC), suppressed: 0 }
    slotTables.set(core, slots)
  }
  return slots
}

function overAddressLimit (slots: Slots, options: { maxConnectionsPerAddress?: number | undefined }, address: string): boolean {
  const limit = options.maxConnectionsPerAddress
  return limit !== undefined && (slots.addresses.get(address) ?? 0) >= limit
}

function refuseSlot (request: FastifyRequest, reply: FastifyReply, slots: Slots, over: 'address' | 'identity', limit: number): FastifyReply {
  const { stats } = coreOf(request.server)
  stats.handshakesRefused++
  if (over === 'address') stats.addressLimited++
  else stats.identityLimited++
  if (slots.refusalLog.take()) {
    const { suppressed } = slots
    slots.suppressed = 0
    request.log.warn({ address: request.ip, limit, ...(suppressed > 0 ? { suppressed } : {}) },
      `${kind(request)} refused: ${over === 'address' ? 'MAX_CONNECTIONS_PER_ADDRESS' : 'MAX_CONNECTIONS_PER_IDENTITY'} reached`)
  } else {
    slots.suppressed++
  }
  const error = over === 'address' ? 'too many connections from this address' : 'too many connections for this identity'
  return reply.code(429).header('retry-after', '5').send({ error, code: `${over}_limit`, limit })
}

/** Takes the slots now; gives them back once, when the connection (socket or event stream) ends. */
function holdSlot (request: FastifyRequest, reply: FastifyReply, slots: Slots, address: string, id: string | undefined): void {
  const bump = (map: Map<string, number>, key: string, by: number): void => {
    const count = (map.get(key) ?? 0) + by
    if (count > 0) map.set(key, count)
    else map.delete(key)
  }
  bump(slots.addresses, address, 1)
  if (id !== undefined) bump(slots.identities, id, 1)
  const socket = request.raw.socket
  let released = false
  const release = (): void => {
    if (released) return
    released = true
    // Both listeners go: a kept-alive socket may carry many event streams one after another.
    socket.off('close', release)
    reply.raw.off('close', release)
    bump(slots.addresses, address, -1)
    if (id !== undefined) bump(slots.identities, id, -1)
  }
  // A WebSocket owns its TCP socket once upgraded; an event stream ends with its response, even
  // when the socket stays open for the next request (keep-alive). Either way the socket closing
  // ends it, refused later or not.
  socket.once('close', release)
  if ((request as { ws?: boolean }).ws !== true) reply.raw.once('close', release)
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
