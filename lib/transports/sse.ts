// EventSource (Server-Sent Events, WHATWG HTML §9.2) as a hub transport: the same events as the
// WebSocket, as `id:`/`data:` records, written straight to the TCP socket like WebSocket frames.
import type { Socket } from 'node:net'
import type { BrokerEvent } from '../event.js'
import { CLOSE_GRACE_MS } from '../protocol.js'
import type { Transport } from './transport.js'

declare module '../event.js' {
  interface BrokerEvent {
    /** Its EventSource record, built the first time it is sent, then reused (like `frame`). */
    sse?: Buffer
  }
}

const DATA = Buffer.from('data: ')
const END = Buffer.from('\n\n')

/** `id: <id>` then `data: <the event's JSON>`: event JSON is one line, so one data field holds it. */
export function sseRecord (event: BrokerEvent): Buffer {
  event.sse ??= Buffer.concat([Buffer.from(`id: ${event.id}\n`), DATA, event.data, END])
  return event.sse
}

/** A message to one client; a control message is a named event (`addEventListener('resume', …)`). */
export function sseMessage (data: string | Buffer, type?: string): Buffer {
  const lines = data.toString().split(/\r\n|\r|\n/).map((line) => `data: ${line}\n`).join('')
  return Buffer.from(`${type === undefined ? '' : `event: ${type}\n`}${lines}\n`)
}

export function acceptsEventStream (accept: string | undefined): boolean {
  return accept !== undefined && /(^|,)\s*text\/event-stream\s*(;|,|$)/i.test(accept)
}

class EventStreamTransport implements Transport {
  readonly answersPings = false
  readonly joinsTurns = false
  readonly sharesFrames: boolean = true
  #ending = false

  constructor (readonly raw: Socket) {}

  get open (): boolean { return !this.#ending && !this.raw.destroyed && this.raw.writable }
  frame (event: BrokerEvent, _channel: string): Buffer { return sseRecord(event) }
  message (data: string | Buffer, type?: string): Buffer { return sseMessage(data, type) }
  // A comment line: keeps proxies from timing the stream out. Nothing answers it.
  ping (): void { if (this.open) this.raw.write(':\n\n') }
  onPong (): void {}
  // EventSource has no close code: the stream ends, and the browser reconnects with Last-Event-ID.
  close (): void {
    if (!this.open) return
    this.#ending = true
    this.raw.end()
    setTimeout(() => this.raw.destroy(), CLOSE_GRACE_MS).unref()
  }

  terminate (): void { this.raw.destroy() }
  onClose (listener: () => void): void {
    if (this.raw.destroyed) listener()
    else this.raw.once('close', listener)
  }
}

/** A channel's place in a many-channel stream's id: `<event id>.<epoch>` (the epoch may be empty). */
export interface ChannelPlace { id: string, epoch: string | undefined }

/**
 * The stream of several channels (`?channel=a&channel=b`): every record's `id:` carries each
 * channel's place, in the order of the URL, as `<id>.<epoch>,<id>.<epoch>`; the browser sends the
 * last one back as `Last-Event-ID` when it reconnects (to the same URL), resuming every channel.
 * Each client's ids are its own, so its records are built for it.
 */
class ChannelsEventStream extends EventStreamTransport {
  override readonly sharesFrames = false

  constructor (raw: Socket, readonly places: Map<string, ChannelPlace>) {
    super(raw)
  }

  /** Where `channel` stands before its first event: told in the `subscribed` record's id. */
  place (channel: string, place: ChannelPlace): void { this.places.set(channel, place) }

  override frame (event: BrokerEvent, channel: string): Buffer {
    this.places.set(channel, { id: event.id, epoch: event.epoch })
    return Buffer.concat([Buffer.from(`id: ${this.#id()}\n`), DATA, event.data, END])
  }

  override message (data: string | Buffer, type?: string): Buffer {
    return Buffer.concat([Buffer.from(`id: ${this.#id()}\n`), sseMessage(data, type)])
  }

  #id (): string {
    return [...this.places.values()].map((p) => `${p.id}.${p.epoch ?? ''}`).join(',')
  }
}

/** Reads a many-channel stream's `Last-Event-ID` back: one place per channel, or undefined if it does not fit them. */
export function parsePlaces (lastEventId: string, count: number): ChannelPlace[] | undefined {
  const parts = lastEventId.split(',')
  if (parts.length !== count) return undefined
  const places: ChannelPlace[] = []
  for (const part of parts) {
    const match = /^(\d{1,16}-\d{1,16})\.([A-Za-z0-9_-]{0,32})$/.exec(part)
    if (match === null) return undefined
    places.push({ id: match[1], epoch: match[2] === '' ? undefined : match[2] })
  }
  return places
}

/**
 * Starts the stream on a socket the caller has taken over from its HTTP server (for `channels`,
 * from their `places` when it resumes): the response has
 * no length and no chunked encoding, it lasts until the connection closes, so every record goes
 * out as the same bytes to every client. `allowOrigin`: a cross-origin page's origin, admitted by
 * the caller, that gets its CORS header.
 */
export function openEventStream (raw: Socket, allowOrigin: string | undefined, channels?: string[], places?: ChannelPlace[]): Transport & { place?: ChannelsEventStream['place'] } {
  const cors = allowOrigin === undefined ? '' : `Access-Control-Allow-Origin: ${allowOrigin}\r\nVary: Origin\r\n`
  raw.setNoDelay(true)
  raw.setTimeout(0)
  raw.write('HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-store\r\n' +
    `Connection: close\r\nX-Accel-Buffering: no\r\n${cors}\r\n:\n\n`)
  if (channels === undefined) return new EventStreamTransport(raw)
  // A resuming stream starts from the places it resumes from: an id written before every channel
  // has answered must not send another channel back to the beginning.
  return new ChannelsEventStream(raw, new Map(channels.map((channel, i) => [channel, places?.[i] ?? { id: '0-0', epoch: undefined }])))
}
