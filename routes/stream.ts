import { posix } from 'node:path'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { ANONYMOUS } from '../lib/auth.js'
import { CHANNEL_PATTERN, ChannelRefused, claimsAllow, isChannel } from '../lib/channels.js'
import { encodeBody, ID_PATTERN, type EventBody } from '../lib/event.js'
import { Client, type ResumeResult } from '../lib/hub.js'
import { originAllowed } from '../lib/origins.js'
import { CloseCode, PROTOCOL, type ChannelErrorCode } from '../lib/protocol.js'
import { TICKET_PATTERN, TokenError, type TokenGuard } from '../lib/tokens.js'
import { acceptsEventStream, openEventStream, parsePlaces, type ChannelPlace } from '../lib/transports/sse.js'
import { UploadQueue } from '../lib/uploads.js'
import { admitConnection, onInbound, saveUpload } from './connection.js'
import { coreOf } from '../plugins/fanout.js'

interface StreamRequest {
  Querystring: { channel?: string[], since?: string, ticket?: string }
  Headers: { 'last-event-id'?: string }
}

const EPOCH_PATTERN = /^[A-Za-z0-9_-]{1,32}$/
/** How long a ticket may wait for its EventSource. */
const TICKET_MS = 30_000

/**
 * Many channels on one connection (docs/channels.md): `?channel=a&channel=b` subscribes at
 * connect, as a WebSocket or an EventSource, whose ids carry every channel's place; over a
 * `fanout.v1` WebSocket, `subscribe`, `unsubscribe` and `publish` commands, each answered, a
 * refusal never closing the socket. Binary messages are uploads, as on `/guest`.
 */
export default async function streamRoutes (fastify: FastifyInstance): Promise<void> {
  const { hub, options, tokens } = coreOf(fastify)
  if (options.streamPath === false) return
  const maxChannels = options.maxChannelsPerConnection
  if (tokens !== undefined) ticketRoute(fastify, tokens, posix.join(options.streamPath, 'ticket'))

  fastify.route<StreamRequest>({
    method: 'GET',
    url: options.streamPath,
    onRequest: admitConnection,
    schema: {
      querystring: {
        type: 'object',
        properties: {
          channel: { type: 'array', items: { type: 'string', pattern: CHANNEL_PATTERN.source }, maxItems: maxChannels, uniqueItems: true },
          // The places of the channels, in their order: `<id>.<epoch>,…` (an EventSource's id).
          since: { type: 'string', maxLength: 64 * maxChannels },
          // A one-time ticket (POST <streamPath>/ticket) for an EventSource, which cannot send a token.
          ticket: { type: 'string', pattern: TICKET_PATTERN.source }
        }
      },
      headers: { type: 'object', properties: { 'last-event-id': { type: 'string', maxLength: 64 * maxChannels } } }
    },
    preHandler: checkConnectChannels,
    handler (request, reply) {
      if (!acceptsEventStream(request.headers.accept)) {
        return reply.code(426).header('upgrade', 'websocket')
          .send({ error: 'connect with a WebSocket, or as an EventSource (Accept: text/event-stream)' })
      }
      const channels = request.query.channel ?? []
      if (channels.length === 0) return reply.code(400).send({ error: 'an EventSource names its channels: ?channel=a&channel=b' })
      const places = placesOf(request, request.headers['last-event-id'] ?? request.query.since)
      reply.hijack()
      const origin = request.headers.origin
      const crossOrigin = origin !== undefined && originAllowed(origin, request.headers.host, options.allowedOrigins)
      const transport = openEventStream(request.raw.socket, crossOrigin ? origin : undefined, channels, places)
      const client = new Client(transport, true)
      client.identity = request.fanoutIdentity ?? ANONYMOUS
      hub.addClient(client)
      tokens?.watch(client)
      subscribeAtConnect(fastify, client, request, channels, places, (channel, result) => transport.place?.(channel, { id: result.position, epoch: result.epoch }))
    },
    wsHandler (socket, request) {
      const client = hub.add(socket, socket.protocol === PROTOCOL)
      client.identity = request.fanoutIdentity ?? ANONYMOUS
      tokens?.watch(client)
      const queue = new UploadQueue(() => socket.pause(), () => socket.resume())
      const commands = new Commands(fastify, client, request)
      // Listeners first, before anything async, or early messages are lost.
      onInbound(fastify, socket, request, (data, isBinary) => {
        if (isBinary) queue.push(() => saveUpload(fastify, client, request, data))
        else commands.handle(data)
      })
      subscribeAtConnect(fastify, client, request, request.query.channel ?? [], placesOf(request, request.query.since))
    }
  })
}

/**
 * `POST <streamPath>/ticket` with a signed token in `Authorization: Bearer`: a one-time ticket for
 * `?ticket=`, valid TICKET_MS, kept where every replica can redeem it, so that an EventSource
 * (which cannot send headers) puts no long-lived token in a URL.
 */
export function ticketRoute (fastify: FastifyInstance, tokens: TokenGuard, url: string): void {
  fastify.post(url, async (request, reply) => {
    reply.header('cache-control', 'no-store')
    const token = /^Bearer\s+(\S+)$/i.exec(request.headers.authorization ?? '')?.[1]
    if (token === undefined) return reply.code(401).send({ error: 'a token is required: Authorization: Bearer <jwt>' })
    try {
      await tokens.check(token)
    } catch (err) {
      if (!(err instanceof TokenError)) {
        request.log.warn({ err: (err as Error).message }, 'ticket refused: tokens cannot be checked now')
        return reply.code(503).header('retry-after', '2').send({ error: 'tokens cannot be checked now: try again' })
      }
      if (coreOf(fastify).admitTextLog()) request.log.warn({ reason: err.message }, 'ticket refused')
      return reply.code(401).send({ error: err.message })
    }
    let ticket: string
    try {
      ticket = await tokens.store.issueTicket(token, TICKET_MS)
    } catch (err) {
      // Only the message: a Redis error carries the command and its arguments, the token among them.
      request.log.warn({ err: (err as Error).message.slice(0, 200) }, 'ticket refused: it cannot be stored now')
      return reply.code(503).header('retry-after', '2').send({ error: 'tickets cannot be issued now: try again' })
    }
    return { ticket, expiresInMs: TICKET_MS }
  })
}

/**
 * The channels named at connect: each one the connection may subscribe to, or the handshake is
 * refused (403); the places it resumes from fit them, or it is refused (400).
 */
async function checkConnectChannels (this: FastifyInstance, request: FastifyRequest<StreamRequest>, reply: FastifyReply): Promise<void> {
  const { options, stats } = coreOf(this)
  const given = (request as { ws?: boolean }).ws === true ? request.query.since : request.headers['last-event-id'] ?? request.query.since
  if (given !== undefined && parsePlaces(given, request.query.channel?.length ?? 0) === undefined) {
    stats.handshakesRefused++
    return reply.code(400).send({ error: 'Last-Event-ID (or since) must hold one <id>.<epoch> per channel, in the order of the channel parameters' })
  }
  const identity = request.fanoutIdentity ?? ANONYMOUS
  for (const channel of request.query.channel ?? []) {
    if (!await options.channels.allows(identity, channel, 'subscribe')) {
      stats.handshakesRefused++
      request.log.warn({ channel }, 'stream refused: may not subscribe to a channel it names')
      return reply.code(403).send({ error: 'may not subscribe to this channel', channel })
    }
  }
}

/** The places a reconnecting client gives (`Last-Event-ID` or `?since=`), checked before the upgrade. */
function placesOf (request: FastifyRequest<StreamRequest>, given: string | undefined): ChannelPlace[] | undefined {
  return given === undefined ? undefined : parsePlaces(given, request.query.channel?.length ?? 0)
}

/** The channels of the URL, in order; each told as `subscribed` to a `fanout.v1` client. */
function subscribeAtConnect (fastify: FastifyInstance, client: Client, request: FastifyRequest, channels: string[],
  places: ChannelPlace[] | undefined, placed?: (channel: string, result: ResumeResult) => void): void {
  const { hub, subscribe } = coreOf(fastify)
  channels.forEach((channel, i) => {
    const place = places?.[i]
    subscribe(client, channel, { since: place?.id, epoch: place?.epoch }, (result) => {
      placed?.(channel, result)
      if (client.control) hub.sendJson(client, subscribedMessage(channel, result))
    }).catch((err: Error) => {
      request.log.warn({ channel, err: err.message }, 'subscribe at connect failed')
      coreOf(fastify).stats.channelErrors++
      // Told as a refused subscribe command would be; a client that gets no control messages is
      // closed instead, so it comes back and tries again.
      const refused = err instanceof ChannelRefused
      if (client.control) hub.sendJson(client, refused ? { type: 'error', code: 'forbidden', channel, message: 'may not subscribe to this channel' } : { type: 'error', code: 'unavailable', channel, message: 'the channel is unavailable now: try again' })
      else client.close(CloseCode.TRY_AGAIN_LATER, 'channel unavailable')
    })
  })
}

function subscribedMessage (channel: string, { epoch, position, replayed, lost, clamped }: ResumeResult) {
  return { type: 'subscribed', channel, epoch: epoch ?? null, position, replayed, lost, clamped } as const
}

/** One connection's commands: each answered, refused ones with a per-channel error. */
class Commands {
  /**
   * Channels with a subscribe on its way, each settling when it is done: a second subscribe is
   * refused, they count toward the limit, and a publish on the channel waits for it.
   */
  readonly #subscribing = new Map<string, Promise<void>>()

  constructor (readonly fastify: FastifyInstance, readonly client: Client, readonly request: FastifyRequest) {}

  handle (data: Buffer): void {
    let command: unknown
    try {
      command = JSON.parse(data.toString())
    } catch {
      return this.#refuse('bad_request', undefined, 'a command is a JSON object: {"type":"subscribe","channel":"room:1"}')
    }
    const { type, channel } = (typeof command === 'object' && command !== null ? command : {}) as { type?: unknown, channel?: unknown }
    if (type === 'refresh') {
      refreshToken(this.fastify, this.client, this.request, (command as { token?: unknown }).token)
      return
    }
    if (type !== 'subscribe' && type !== 'unsubscribe' && type !== 'publish') {
      return this.#refuse('bad_request', undefined, 'unknown command: the types are subscribe, unsubscribe, publish and refresh')
    }
    if (!isChannel(channel)) return this.#refuse('bad_channel', typeof channel === 'string' ? channel.slice(0, 128) : undefined, 'a channel name is 1 to 128 of A-Z a-z 0-9 _ . : @ -')
    const fields = command as Record<string, unknown>
    if (type === 'subscribe') this.#subscribe(channel, fields.since, fields.epoch).catch((err: Error) => this.#failed(channel, err))
    else if (type === 'unsubscribe') this.#unsubscribe(channel)
    else this.#publish(channel, fields.event, fields.ref).catch((err: Error) => this.#failed(channel, err))
  }

  async #subscribe (channel: string, since: unknown, epoch: unknown): Promise<void> {
    const { hub, options, subscribe } = coreOf(this.fastify)
    const client = this.client
    if (client.channels.has(channel) || this.#subscribing.has(channel)) return this.#refuse('already_subscribed', channel, 'already subscribed to this channel')
    if (client.channels.size + this.#subscribing.size >= options.maxChannelsPerConnection) {
      return this.#refuse('too_many', channel, `at most ${options.maxChannelsPerConnection} channels per connection`)
    }
    if (since !== undefined && (typeof since !== 'string' || !ID_PATTERN.test(since))) return this.#refuse('bad_request', channel, 'since must be an event id (<ms>-<seq>)')
    if (epoch !== undefined && (typeof epoch !== 'string' || !EPOCH_PATTERN.test(epoch))) return this.#refuse('bad_request', channel, 'epoch must be the epoch of since')
    let done = (): void => {}
    this.#subscribing.set(channel, new Promise<void>((resolve) => { done = resolve }))
    try {
      if (!await options.channels.allows(client.identity, channel, 'subscribe')) return this.#refuse('forbidden', channel, 'may not subscribe to this channel')
      await subscribe(client, channel, { since: since as string | undefined, epoch: epoch as string | undefined }, (result) => {
        if (client.control) hub.sendJson(client, subscribedMessage(channel, result))
      })
    } finally {
      this.#subscribing.delete(channel)
      done()
    }
  }

  #unsubscribe (channel: string): void {
    const { hub } = coreOf(this.fastify)
    const membership = this.client.channels.get(channel)
    if (membership === undefined) return this.#refuse('not_subscribed', channel, 'not subscribed to this channel')
    hub.unsubscribe(membership)
    if (this.client.control) hub.sendJson(this.client, { type: 'unsubscribed', channel })
  }

  async #publish (channel: string, event: unknown, given: unknown): Promise<void> {
    const { hub, options, publish, admitTextLog } = coreOf(this.fastify)
    const client = this.client
    if (given !== undefined && typeof given !== 'string' && typeof given !== 'number') return this.#refuse('bad_request', channel, 'ref must be a string or a number')
    // Echoed on the answer, refusal or not, so a client can tell which of its publishes it answers.
    const ref = given === undefined ? {} : { ref: given as string | number }
    try {
      encodeBody(event as EventBody)
    } catch (err) {
      return this.#refuse('bad_request', channel, (err as Error).message, ref)
    }
    if (!await options.channels.allows(client.identity, channel, 'publish')) return this.#refuse('forbidden', channel, 'may not publish on this channel', ref)
    // Commands take effect in the order sent: a publish after a subscribe to its channel is seen by it.
    await this.#subscribing.get(channel)
    let id: string
    try {
      id = await publish(channel, event as EventBody)
    } catch (err) {
      this.request.log.warn({ channel, err: (err as Error).message }, 'client publish failed')
      return this.#refuse('publish_failed', channel, 'the event could not be published: try again', ref)
    }
    // Logged like text on /guest, within the same replica-wide rate.
    if (admitTextLog()) this.request.log.info({ channel, id, type: (event as EventBody).type }, 'client published')
    if (client.control) hub.sendJson(client, { type: 'published', channel, id, ...ref })
  }

  #failed (channel: string, err: Error): void {
    if (err instanceof ChannelRefused) return this.#refuse('forbidden', channel, 'may not subscribe to this channel')
    this.request.log.warn({ channel, err: err.message }, 'channel command failed')
    this.#refuse('unavailable', channel, 'the channel is unavailable now: try again')
  }

  #refuse (code: ChannelErrorCode, channel: string | undefined, message: string, ref: { ref?: string | number } = {}): void {
    const { hub, stats } = coreOf(this.fastify)
    stats.channelErrors++
    if (this.client.control && this.client.open) hub.sendJson(this.client, { type: 'error', code, ...(channel === undefined ? {} : { channel }), message, ...ref })
  }
}

/**
 * The `refresh` command (`/stream`, `/guest`): a new token for the same `sub` moves the
 * connection's deadline to its `exp` and replaces its claims; channels the new claims no longer
 * grant are left (`forbidden`). Answered `refreshed` or `token_refused`; the token is never logged.
 */
export function refreshToken (fastify: FastifyInstance, client: Client, request: FastifyRequest, token: unknown): void {
  const { hub, tokens, stats, admitTextLog } = coreOf(fastify)
  const refused = (message: string): void => {
    stats.channelErrors++
    // Within the replica-wide log rate: a client can send many.
    if (admitTextLog()) request.log.warn({ reason: message }, 'token refresh refused')
    if (client.control && client.open) hub.sendJson(client, { type: 'error', code: 'token_refused', message })
  }
  if (tokens === undefined) return refused('this server takes no tokens')
  if (typeof token !== 'string' || token === '') return refused('refresh needs a token: {"type":"refresh","token":"<jwt>"}')
  tokens.refresh(client, token).then((claims) => {
    for (const [channel, membership] of [...client.channels]) {
      if (claimsAllow(client.identity, channel, 'subscribe') !== false) continue
      hub.unsubscribe(membership)
      if (client.control && client.open) hub.sendJson(client, { type: 'error', code: 'forbidden', channel, message: 'the refreshed token does not grant this channel: unsubscribed' })
    }
    if (client.control && client.open) hub.sendJson(client, { type: 'refreshed', exp: claims.exp })
  }, (err: Error) => {
    if (err instanceof TokenError) return refused(err.message)
    request.log.warn({ err: err.message }, 'token refresh failed: revocations unavailable')
    refused('the token cannot be checked now: try again')
  })
}
