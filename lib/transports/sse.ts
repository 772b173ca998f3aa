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
  #ending = false

  constructor (readonly raw: Socket) {}

  get open (): boolean { return !this.#ending && !this.raw.destroyed && this.raw.writable }
  frame (event: BrokerEvent): Buffer { return sseRecord(event) }
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

/**
 * Starts the stream on a socket the caller has taken over from its HTTP server: the response has
 * no length and no chunked encoding, it lasts until the connection closes, so every record goes
 * out as the same bytes to every client. `allowOrigin`: a cross-origin page's origin, admitted by
 * the caller, that gets its CORS header.
 */
export function openEventStream (raw: Socket, allowOrigin: string | undefined): Transport {
  const cors = allowOrigin === undefined ? '' : `Access-Control-Allow-Origin: ${allowOrigin}\r\nVary: Origin\r\n`
  raw.setNoDelay(true)
  raw.setTimeout(0)
  raw.write('HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-store\r\n' +
    `Connection: close\r\nX-Accel-Buffering: no\r\n${cors}\r\n:\n\n`)
  return new EventStreamTransport(raw)
}
