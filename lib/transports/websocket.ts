import type { Socket } from 'node:net'
import * as ws from 'ws'
import { WebSocket } from 'ws'
import type { BrokerEvent } from '../event.js'
import type { Transport } from './transport.js'

/** A WebSocket as a transport. */
export class WebSocketTransport implements Transport {
  readonly raw: Socket
  readonly answersPings = true
  readonly joinsTurns = true
  readonly sharesFrames = true

  constructor (readonly ws: WebSocket) {
    // The TCP socket under ws. The hub writes pre-framed bytes to it directly; that is only sound
    // because permessage-deflate is off for these routes and nothing sends Blobs, the two cases
    // in which ws queues frames itself (ws/lib/sender.js, `_state`).
    this.raw = (ws as unknown as { _socket: Socket })._socket
  }

  get open (): boolean { return this.ws.readyState === WebSocket.OPEN }
  frame (event: BrokerEvent): Buffer { return frameOf(event) }
  message (data: string | Buffer): Buffer { return textFrame(data) }
  ping (): void { this.ws.ping() }
  onPong (listener: () => void): void { this.ws.on('pong', listener) }
  // ws drops a peer that does not answer after its closeTimeout (plugins/websocket.ts).
  close (code: number, reason: string): void { this.ws.close(code, reason) }
  terminate (): void { this.ws.terminate() }
  onClose (listener: () => void): void {
    if (this.ws.readyState === WebSocket.CLOSED) listener()
    else this.ws.once('close', listener)
  }
}

// ws's own framing (ws/lib/sender.js); @types/ws does not declare it.
const { Sender } = ws as unknown as {
  Sender: { frame (data: Buffer, options: { fin: boolean, opcode: number, mask: boolean, readOnly: boolean, rsv1: boolean }): Buffer[] }
}

/** A server-to-client text frame: built once, written as is to any number of sockets. */
export function textFrame (data: Buffer | string): Buffer {
  const payload = typeof data === 'string' ? Buffer.from(data) : data
  const parts = Sender.frame(payload, { fin: true, opcode: 1, mask: false, readOnly: true, rsv1: false })
  return parts.length === 1 ? parts[0] : Buffer.concat(parts)
}

/** An event's frame, built once however many clients it is written to (live, held or replayed). */
export function frameOf (event: BrokerEvent): Buffer {
  event.frame ??= textFrame(event.data)
  return event.frame
}
