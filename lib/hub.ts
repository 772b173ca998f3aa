import type { Socket } from 'node:net'
import * as ws from 'ws'
import { WebSocket } from 'ws'
import type { History } from './broker.js'
import { compareIds, type BrokerEvent } from './event.js'
import type { Stats } from './metrics.js'

/**
 * The close codes this project sends itself (RFC 6455 §7.4.1, IANA registry). ws sends 1002,
 * 1007 and 1009 on its own for malformed, non-UTF-8 and oversize frames.
 */
export const CloseCode = {
  POLICY: 1008,
  RESTART: 1012,
  TRY_AGAIN_LATER: 1013
} as const

export interface HubOptions {
  /** Bytes a client may have waiting to be written before it is cut off as a slow consumer. */
  maxBufferedBytes: number
  /** Ping interval; a client that has not answered the previous ping is terminated. 0: off. */
  heartbeatMs: number
  stats: Stats
}

const HEARTBEAT_SLICES = 10

/** One connected socket, as the hub sees it. */
export class Client {
  /** Live events held back while this client's replay is read from history. */
  held: BrokerEvent[] | undefined
  heldBytes = 0
  alive = true
  /** Which tick of the heartbeat's cycle pings this client (Hub #ping). */
  pingSlot = 0
  /**
   * A resumed client's newest replayed event. The history read and live delivery travel on
   * different Redis connections, so replayed events can still arrive live after the replay:
   * live events up to this id are skipped. Cleared by the first newer one, as the broker
   * delivers in id order.
   */
  lastId: string | undefined
  /**
   * The hub's turn in which this client has live frames waiting to be written, and their range
   * in that turn's frames (Hub.deliver).
   */
  pendingTurn = 0
  pendingFrom = 0
  pendingTo = 0
  readonly raw: Socket

  constructor (readonly ws: WebSocket, readonly control: boolean) {
    // The TCP socket under ws. The hub writes pre-framed bytes to it directly; that is only sound
    // because permessage-deflate is off for these routes and nothing sends Blobs, the two cases
    // in which ws queues frames itself (ws/lib/sender.js, `_state`).
    this.raw = (ws as unknown as { _socket: Socket })._socket
  }

  get open (): boolean { return this.ws.readyState === WebSocket.OPEN }

  /** Whether a resumed client already got event `id` in its replay. */
  hasSeen (id: string): boolean {
    return this.lastId !== undefined && compareIds(id, this.lastId) <= 0
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

/**
 * Every connected client of this replica, and the broadcast path: each event is framed once and
 * the same bytes are written to every open socket. The events of one event-loop turn leave
 * together, in one write per socket: the frames of a turn are joined once for all the clients that
 * get the same run of them, so the common case costs one plain `write` per socket, with no cork,
 * uncork or writev bookkeeping in the stream (bench: README "Performance").
 */
export class Hub {
  /** Every connection, for heartbeat, drain and capacity. */
  readonly clients = new Set<Client>()
  /** The connections that receive broadcast events. */
  readonly #subscribers = new Set<Client>()
  #corked: Socket[] = []
  /** This turn's live frames, and the clients with a run of them still to write. */
  #frames: Buffer[] = []
  #pending: Client[] = []
  #turn = 1
  /** This turn's joined runs of frames, by `from * 2^26 + to`: built once, shared by every client. */
  #joined = new Map<number, Buffer>()
  #heartbeat: NodeJS.Timeout | undefined
  #pingTick = 0
  #pingSlots = 0
  #options: HubOptions

  constructor (options: HubOptions) {
    this.#options = options
    if (options.heartbeatMs > 0) {
      this.#heartbeat = setInterval(() => this.#ping(), options.heartbeatMs / HEARTBEAT_SLICES)
      this.#heartbeat.unref()
    }
  }

  get size (): number { return this.clients.size }

  /** Tracks a connection; with `subscribe`, it receives every broadcast event. */
  add (ws: WebSocket, control: boolean, subscribe = true): Client {
    const client = new Client(ws, control)
    client.pingSlot = this.#pingSlots++ % HEARTBEAT_SLICES
    this.clients.add(client)
    if (subscribe) this.#subscribers.add(client)
    ws.on('pong', () => { client.alive = true })
    ws.once('close', () => {
      this.clients.delete(client)
      this.#subscribers.delete(client)
    })
    return client
  }

  /**
   * The broker's listener: one event, every client. Who gets it is decided now; the bytes are
   * written at the end of the turn (#flushAll), or before anything else this client is sent.
   */
  deliver (event: BrokerEvent): void {
    this.#options.stats.eventsIn++
    const frame = frameOf(event)
    const at = this.#frames.push(frame) - 1
    if (at === 0) process.nextTick(this.#flushAll)
    const turn = this.#turn
    for (const client of this.#subscribers) {
      if (client.held) {
        client.held.push(event)
        client.heldBytes += frame.length
        if (client.heldBytes > this.#options.maxBufferedBytes) this.#cutOff(client)
      } else if (client.hasSeen(event.id)) {
        continue // replayed already
      } else if (client.pendingTurn === turn && client.pendingTo === at) {
        client.pendingTo = at + 1
      } else if (client.open) {
        // A client that skipped an event of this turn (replayed already) gets its earlier run now.
        if (client.pendingTurn === turn) this.#flush(client)
        client.lastId = undefined
        client.pendingTurn = turn
        client.pendingFrom = at
        client.pendingTo = at + 1
        this.#pending.push(client)
      }
    }
  }

  readonly #flushAll = (): void => {
    const pending = this.#pending
    const turn = this.#turn++
    this.#pending = []
    for (const client of pending) if (client.pendingTurn === turn) this.#flush(client)
    this.#frames = []
    this.#joined.clear()
  }

  /** Writes the run of this turn's frames `client` is waiting for. */
  #flush (client: Client): void {
    const from = client.pendingFrom
    const to = client.pendingTo
    client.pendingTurn = 0
    if (!client.open) return
    const frames = this.#frames
    const raw = client.raw
    let queued = raw.writableLength
    for (let i = from; i < to; i++) {
      // An empty buffer always takes a frame, so one event larger than the cap still goes out.
      if (queued > 0 && queued + frames[i].length > this.#options.maxBufferedBytes) return this.#cutOff(client)
      queued += frames[i].length
    }
    raw.write(to - from === 1 ? frames[from] : this.#join(from, to))
    this.#options.stats.deliveries += to - from
  }

  #join (from: number, to: number): Buffer {
    const key = from * 2 ** 26 + to
    let joined = this.#joined.get(key)
    if (joined === undefined) {
      joined = Buffer.concat(this.#frames.slice(from, to))
      this.#joined.set(key, joined)
    }
    return joined
  }

  /**
   * Replays history to a client that resumes after `since`, with no gap and no duplicate: live
   * events are held from the moment it joined (before the history read began), the history is
   * written, then the held events follow, skipping any the history already covered.
   */
  async resume (client: Client, since: string, read: (since: string) => Promise<History>): Promise<{ replayed: number, lost: boolean }> {
    client.held = []
    client.lastId = since
    let history: History
    try {
      history = await read(since)
    } catch (err) {
      client.held = undefined
      client.ws.close(CloseCode.TRY_AGAIN_LATER, 'history unavailable')
      throw err
    }
    await this.#replay(client, history.events)
    const replayed = history.events.length
    this.#options.stats.replayed += replayed
    if (client.control) this.sendJson(client, { type: 'resume', since, replayed, lost: history.lost })
    // Live events that came while the history was written; more may come while these are.
    while (client.held && client.held.length > 0) {
      const held = client.held
      client.held = []
      client.heldBytes = 0
      await this.#replay(client, held)
    }
    client.held = undefined
    return { replayed, lost: history.lost }
  }

  /**
   * Writes events to one client, waiting for its socket to drain whenever half the buffer cap is
   * queued: a replay may be far larger than MAX_BUFFERED_BYTES, and written in one go it would
   * be cut off as a slow consumer however fast the client reads.
   */
  async #replay (client: Client, events: BrokerEvent[]): Promise<void> {
    for (const event of events) {
      if (!client.open) return
      if (client.hasSeen(event.id)) continue
      if (this.#write(client, frameOf(event))) {
        client.lastId = event.id
        this.#options.stats.deliveries++
      }
      if (client.raw.writableLength > this.#options.maxBufferedBytes / 2) await drained(client)
    }
  }

  /** A message for one client only (control messages, /ask answers), in order with events. */
  send (client: Client, data: string | Buffer): boolean {
    return this.#write(client, textFrame(data))
  }

  sendJson (client: Client, message: Record<string, unknown>): boolean {
    return this.send(client, JSON.stringify(message))
  }

  /**
   * One frame for one client, after the live frames it is still waiting for. Corked until the end
   * of the turn: a replay writes many in a row.
   */
  #write (client: Client, frame: Buffer): boolean {
    if (client.pendingTurn === this.#turn) this.#flush(client)
    if (!client.open) return false
    const raw = client.raw
    // An empty buffer always takes the frame, so one event larger than the cap still goes out.
    if (raw.writableLength > 0 && raw.writableLength + frame.length > this.#options.maxBufferedBytes) {
      this.#cutOff(client)
      return false
    }
    if (!raw.writableCorked) {
      raw.cork()
      if (this.#corked.push(raw) === 1) process.nextTick(() => this.#uncorkAll())
    }
    raw.write(frame)
    return true
  }

  #uncorkAll (): void {
    const corked = this.#corked
    this.#corked = []
    for (const raw of corked) raw.uncork()
  }

  /**
   * A client that does not read what it is sent would hold an ever-growing buffer. It gets a
   * close frame (1013), and its socket is destroyed at once: a peer that does not read will not
   * read the close frame either, and only destroying it frees the buffer.
   */
  #cutOff (client: Client): void {
    if (!client.open) return
    this.#options.stats.slowConsumerDrops++
    client.held = undefined
    client.ws.close(CloseCode.TRY_AGAIN_LATER, 'slow consumer')
    client.ws.terminate()
  }

  /**
   * One tick of the heartbeat: a tenth of the clients, each still pinged once per heartbeatMs. A
   * ping is a write per socket, and the pongs a read each: done for every client at once, the
   * sweep would cost as much as one broadcast and hold back the events that arrive meanwhile.
   */
  #ping (): void {
    const slot = this.#pingTick++ % HEARTBEAT_SLICES
    for (const client of this.clients) {
      if (client.pingSlot !== slot || !client.open) continue
      if (!client.alive) {
        this.#options.stats.heartbeatTimeouts++
        client.ws.terminate()
        continue
      }
      client.alive = false
      client.ws.ping()
    }
  }

  /**
   * Closes every client with `code`, spread evenly over `windowMs` so their reconnects do not
   * arrive at the other replicas all at once; whoever is still there at the end is terminated.
   */
  async drain (code: number, reason: string, windowMs: number): Promise<void> {
    clearInterval(this.#heartbeat)
    const clients = [...this.clients]
    if (clients.length === 0) return
    const step = windowMs / clients.length
    const closed = clients.map((client, i) => new Promise<void>((resolve) => {
      if (client.ws.readyState === WebSocket.CLOSED) return resolve()
      client.ws.once('close', () => resolve())
      const timer = setTimeout(() => client.ws.close(code, reason), Math.floor(i * step))
      client.ws.once('close', () => clearTimeout(timer))
    }))
    const deadline = new Promise<void>((resolve) => setTimeout(resolve, windowMs + 1000).unref())
    await Promise.race([Promise.all(closed), deadline])
    for (const client of this.clients) client.ws.terminate()
  }

  close (): void {
    clearInterval(this.#heartbeat)
    for (const client of this.clients) client.ws.terminate()
  }
}

/** An event's frame, built once however many clients it is written to (live, held or replayed). */
function frameOf (event: BrokerEvent): Buffer {
  event.frame ??= textFrame(event.data)
  return event.frame
}

/** Resolves once the client's socket has written out what it holds, or has closed. */
async function drained (client: Client): Promise<void> {
  const raw = client.raw
  while (raw.writableCorked > 0) raw.uncork()
  if (raw.writableLength === 0 || raw.destroyed) return
  await new Promise<void>((resolve) => {
    const done = (): void => {
      raw.off('drain', done)
      raw.off('close', done)
      resolve()
    }
    raw.on('drain', done)
    raw.on('close', done)
  })
}
