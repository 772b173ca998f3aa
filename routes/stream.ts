import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { ANONYMOUS } from '../lib/auth.js'
import { CHANNEL_PATTERN, isChannel } from '../lib/channels.js'
import { encodeBody, ID_PATTERN, type EventBody } from '../lib/event.js'
import { Client, type ResumeResult } from '../lib/hub.js'
import { originAllowed } from '../lib/origins.js'
import { PROTOCOL, type ChannelErrorCode } from '../lib/protocol.js'
import { acceptsEventStream, openEventStream, parsePlaces, type ChannelPlace } from '../lib/transports/sse.js'
import { UploadQueue } from '../lib/uploads.js'
import { admitConnection, onInbound, saveUpload } from './connection.js'
import { coreOf } from '../plugins/fanout.js'

interface StreamRequest {
  Querystring: { channel?: string[], since?: string }
  Headers: { 'last-event-id'?: string }
}

const EPOCH_PATTERN = /^[A-Za-z0-9_-]{1,32}$/

/**
 * Many channels on one connection (docs/channels.md): `?channel=a&channel=b` subscribes at
 * connect, as a WebSocket or an EventSource, whose ids carry every channel's place; over a
 * `fanout.v1` WebSocket, `subscribe`, `unsubscribe` and `publish` commands, each answered, a
 * refusal never closing the socket. Binary messages are uploads, as on `/guest`.
 */
export default async function streamRoutes (fastify: FastifyInstance): Promise<void> {
  const { hub, options } = coreOf(fastify)
  if (options.streamPath === false) return
  const maxChannels = options.maxChannelsPerConnection

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
          since: { type: 'string', maxLength: 64 * maxChannels }
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
      subscribeAtConnect(fastify, client, request, channels, places, (channel, result) => transport.place?.(channel, { id: result.position, epoch: result.epoch }))
    },
    wsHandler (socket, request) {
      const client = hub.add(socket, socket.protocol === PROTOCOL)
      client.identity = request.fanoutIdentity ?? ANONYMOUS
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
    }).catch((err: Error) => request.log.warn({ channel, err: err.message }, 'subscribe at connect failed'))
  })
}

function subscribedMessage (channel: string, { epoch, position, replayed, lost, clamped }: ResumeResult) {
  return { type: 'subscribed', channel, epoch: epoch ?? null, position, replayed, lost, clamped } as const
}

/** One connection's commands: each answered, refused ones with a per-channel error. */
class Commands {
  /** Channels with a subscribe on its way: a second one is refused, and they count toward the limit. */
  readonly #subscribing = new Set<string>()

  constructor (readonly fastify: FastifyInstance, readonly client: Client, readonly request: FastifyRequest) {}

  handle (data: Buffer): void {
    let command: unknown
    try {
      command = JSON.parse(data.toString())
    } catch {
      return this.#refuse('bad_request', undefined, 'a command is a JSON object: {"type":"subscribe","channel":"room:1"}')
    }
    const { type, channel } = (typeof command === 'object' && command !== null ? command : {}) as { type?: unknown, channel?: unknown }
    if (type !== 'subscribe' && type !== 'unsubscribe' && type !== 'publish') {
      return this.#refuse('bad_request', undefined, 'unknown command: the types are subscribe, unsubscribe and publish')
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
    this.#subscribing.add(channel)
    try {
      if (!await options.channels.allows(client.identity, channel, 'subscribe')) return this.#refuse('forbidden', channel, 'may not subscribe to this channel')
      await subscribe(client, channel, { since: since as string | undefined, epoch: epoch as string | undefined }, (result) => {
        if (client.control) hub.sendJson(client, subscribedMessage(channel, result))
      })
    } finally {
      this.#subscribing.delete(channel)
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
    this.request.log.warn({ channel, err: err.message }, 'channel command failed')
    this.#refuse('unavailable', channel, 'the channel is unavailable now: try again')
  }

  #refuse (code: ChannelErrorCode, channel: string | undefined, message: string, ref: { ref?: string | number } = {}): void {
    const { hub, stats } = coreOf(this.fastify)
    stats.channelErrors++
    if (this.client.control && this.client.open) hub.sendJson(this.client, { type: 'error', code, ...(channel === undefined ? {} : { channel }), message, ...ref })
  }
}
