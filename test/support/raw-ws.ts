// WebSocket by hand, for the tests that must send what no well-behaved client library would:
// the handshake over a bare TCP socket, frames built byte by byte (masked or not, any opcode, RSV
// bits, lying lengths), and the server's frames parsed back, close code included (RFC 6455 §5).
import { createHash, randomBytes } from 'node:crypto'
import { connect as netConnect, type Socket } from 'node:net'
import type { FastifyInstance } from 'fastify'
import { connect } from './helper.js'

type Tap = { teardown (fn: () => unknown): void }

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'

export const Opcode = { CONTINUATION: 0, TEXT: 1, BINARY: 2, CLOSE: 8, PING: 9, PONG: 10 } as const

/** RSV bits as they sit in the first header byte, shifted down: RSV1 = 4, RSV2 = 2, RSV3 = 1. */
export const Rsv = { RSV1: 4, RSV2: 2, RSV3: 1 } as const

export interface FrameSpec {
  opcode: number
  payload?: Buffer | string
  fin?: boolean
  rsv?: number
  mask?: boolean
  maskKey?: Buffer
  /** The length the header claims, when it should not be the payload's (a lying header). */
  length?: number | bigint
}

/** One frame as a client sends it: masked unless told otherwise. */
export function encodeFrame (spec: FrameSpec): Buffer {
  const payload = typeof spec.payload === 'string' ? Buffer.from(spec.payload) : (spec.payload ?? Buffer.alloc(0))
  const mask = spec.mask ?? true
  const length = BigInt(spec.length ?? payload.length)
  const head = [((spec.fin ?? true) ? 0x80 : 0) | ((spec.rsv ?? 0) << 4) | (spec.opcode & 0x0f)]
  let extended = Buffer.alloc(0)
  if (length < 126n) {
    head.push(Number(length))
  } else if (length < 65536n) {
    head.push(126)
    extended = Buffer.alloc(2)
    extended.writeUInt16BE(Number(length))
  } else {
    head.push(127)
    extended = Buffer.alloc(8)
    extended.writeBigUInt64BE(length)
  }
  if (mask) head[1] |= 0x80
  const key = mask ? (spec.maskKey ?? randomBytes(4)) : Buffer.alloc(0)
  const body = Buffer.from(payload)
  if (mask) for (let i = 0; i < body.length; i++) body[i] ^= key[i & 3]
  return Buffer.concat([Buffer.from(head), extended, key, body])
}

/** A close frame's payload: the code, then the reason. */
export function closePayload (code: number, reason = ''): Buffer {
  const payload = Buffer.alloc(2 + Buffer.byteLength(reason))
  payload.writeUInt16BE(code)
  payload.write(reason, 2)
  return payload
}

export interface ServerFrame { fin: boolean, rsv: number, opcode: number, payload: Buffer }

/** The complete frames at the start of `buffer`, and what is left over. Server frames are unmasked. */
export function decodeFrames (buffer: Buffer): { frames: ServerFrame[], rest: Buffer } {
  const frames: ServerFrame[] = []
  let offset = 0
  for (;;) {
    if (buffer.length - offset < 2) break
    const b0 = buffer[offset]
    const b1 = buffer[offset + 1]
    let length = b1 & 0x7f
    let header = 2
    if (length === 126) {
      if (buffer.length - offset < 4) break
      length = buffer.readUInt16BE(offset + 2)
      header = 4
    } else if (length === 127) {
      if (buffer.length - offset < 10) break
      length = Number(buffer.readBigUInt64BE(offset + 2))
      header = 10
    }
    if (b1 & 0x80) throw new Error('the server sent a masked frame')
    if (buffer.length - offset < header + length) break
    frames.push({
      fin: (b0 & 0x80) !== 0,
      rsv: (b0 >> 4) & 0x07,
      opcode: b0 & 0x0f,
      payload: buffer.subarray(offset + header, offset + header + length)
    })
    offset += header + length
  }
  return { frames, rest: buffer.subarray(offset) }
}

/** What the server's close frame said; `code` is undefined when the TCP connection ended without one. */
export interface RawClose { code: number | undefined, reason: string }

export interface RawOptions {
  path?: string
  headers?: Record<string, string>
  protocols?: string[]
}

/** A refused handshake: the HTTP status and headers the server answered with instead of 101. */
export class HandshakeRefused extends Error {
  constructor (readonly status: number, readonly headers: Record<string, string>) {
    super(`handshake refused with ${status}`)
  }
}

/**
 * A WebSocket client over a bare TCP socket. After the handshake it parses what the server sends
 * (`frames`), answers the server's close frame with its own and ends, and resolves `closed` with
 * the code the server sent. `stall()` stops reading altogether, as a peer that never reads.
 */
export class RawClient {
  readonly frames: ServerFrame[] = []
  readonly closed: Promise<RawClose>
  /** Resolves when the TCP connection is gone, for whatever reason. */
  readonly ended: Promise<void>
  #pending: Buffer
  #resolveClose!: (close: RawClose) => void

  private constructor (readonly socket: Socket, rest: Buffer, readonly protocol: string | undefined) {
    this.#pending = rest
    this.closed = new Promise((resolve) => { this.#resolveClose = resolve })
    this.ended = new Promise((resolve) => socket.once('close', () => resolve()))
    socket.on('error', () => {}) // a reset is an ending like any other here
    socket.once('close', () => this.#resolveClose({ code: undefined, reason: '' }))
    socket.on('data', (chunk: Buffer) => this.#read(chunk))
    if (rest.length > 0) process.nextTick(() => this.#read(Buffer.alloc(0)))
  }

  /** Connects and completes the handshake; rejects with HandshakeRefused on any answer but 101. */
  static async open (t: Tap, port: number, options: RawOptions = {}): Promise<RawClient> {
    const socket = netConnect({ port, host: '127.0.0.1' })
    t.teardown(() => socket.destroy())
    socket.setNoDelay(true)
    const key = randomBytes(16).toString('base64')
    const headers: Record<string, string> = {
      Host: `127.0.0.1:${port}`,
      Upgrade: 'websocket',
      Connection: 'Upgrade',
      'Sec-WebSocket-Key': key,
      'Sec-WebSocket-Version': '13',
      ...(options.protocols ? { 'Sec-WebSocket-Protocol': options.protocols.join(', ') } : {}),
      ...options.headers
    }
    const request = `GET ${options.path ?? '/guest'} HTTP/1.1\r\n` +
      Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`).join('') + '\r\n'
    const { status, head, rest } = await new Promise<{ status: number, head: Record<string, string>, rest: Buffer }>((resolve, reject) => {
      let received = Buffer.alloc(0)
      const onData = (chunk: Buffer): void => {
        received = Buffer.concat([received, chunk])
        const end = received.indexOf('\r\n\r\n')
        if (end === -1) return
        socket.off('data', onData)
        socket.off('error', reject)
        socket.off('close', onClose)
        const [statusLine, ...lines] = received.subarray(0, end).toString('latin1').split('\r\n')
        const head = Object.fromEntries(lines.map((line) => {
          const colon = line.indexOf(':')
          return [line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim()]
        }))
        resolve({ status: Number(statusLine.split(' ')[1]), head, rest: received.subarray(end + 4) })
      }
      const onClose = (): void => reject(new Error('connection closed during the handshake'))
      socket.on('data', onData)
      socket.once('error', reject)
      socket.once('close', onClose)
      socket.write(request)
    })
    if (status !== 101) {
      socket.destroy()
      throw new HandshakeRefused(status, head)
    }
    const accept = createHash('sha1').update(key + GUID).digest('base64')
    if (head['sec-websocket-accept'] !== accept) throw new Error('wrong Sec-WebSocket-Accept')
    return new RawClient(socket, rest, head['sec-websocket-protocol'])
  }

  send (spec: FrameSpec): boolean {
    return this.write(encodeFrame(spec))
  }

  write (bytes: Buffer): boolean {
    if (this.socket.destroyed || !this.socket.writable) return false
    return this.socket.write(bytes)
  }

  /** Stops reading: what the server sends piles up in the kernel, then in the server. */
  stall (): void {
    this.socket.pause()
  }

  /** Text frames received, as strings. */
  texts (): string[] {
    return this.frames.filter((f) => f.opcode === Opcode.TEXT).map((f) => f.payload.toString())
  }

  destroy (): void {
    this.socket.destroy()
  }

  #read (chunk: Buffer): void {
    this.#pending = this.#pending.length === 0 ? chunk : Buffer.concat([this.#pending, chunk])
    const { frames, rest } = decodeFrames(this.#pending)
    this.#pending = Buffer.from(rest)
    for (const frame of frames) {
      this.frames.push(frame)
      if (frame.opcode === Opcode.CLOSE) {
        const code = frame.payload.length >= 2 ? frame.payload.readUInt16BE(0) : undefined
        this.#resolveClose({ code, reason: frame.payload.subarray(2).toString() })
        // The closing handshake's second half, then our end of the connection.
        this.write(encodeFrame({ opcode: Opcode.CLOSE, payload: frame.payload.subarray(0, 2) }))
        this.socket.end()
      }
    }
  }
}

/**
 * Whether the server still serves: a fresh client connects and receives a freshly published
 * event within 10 s. False, never an exception, when it does not, so `t.ok` on it can fail.
 */
export async function servesNewClient (t: Tap, app: FastifyInstance, ws: string): Promise<boolean> {
  const client = await connect(t, `${ws}/guest`, { open: false })
  if (!await client.opened.then(() => true, () => false)) return false
  const id = await app.fanout.publish({ type: 'guest', guest: '新客', time: '00:00:00', ts: Date.now() })
  const received = await client.until((c) => c.events().some((e) => e.id === id), 10_000, 'the published event').then(() => true, () => false)
  client.socket.close()
  await client.closed
  return received
}

/** The status a handshake is answered with: 101 when admitted, else the refusal's. */
export async function handshakeStatus (t: Tap, port: number, options: RawOptions = {}): Promise<number> {
  try {
    const raw = await RawClient.open(t, port, options)
    raw.destroy()
    return 101
  } catch (err) {
    if (err instanceof HandshakeRefused) return err.status
    throw err
  }
}

/** The refusal a handshake met; fails if it was admitted. */
export async function refusal (promise: Promise<unknown>): Promise<HandshakeRefused> {
  try {
    await promise
  } catch (err) {
    if (err instanceof HandshakeRefused) return err
    throw err
  }
  throw new Error('the handshake was admitted')
}
