import type { Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import type { WebSocket } from 'ws'
import { ANONYMOUS, type Identity } from './auth.js'
import type { Gap, Replay } from './broker.js'
import { compareIds, type BrokerEvent, type FrameBlock } from './event.js'
import { CloseCode, type ControlMessage } from './protocol.js'
import type { Stats } from './stats.js'
import type { Transport } from './transports/transport.js'
import { frameOf, WebSocketTransport } from './transports/websocket.js'

/** The largest block of joined frames a replay writes at once. */
const BLOCK_BYTES = 64 * 1024
/**
 * The bytes of joined blocks kept for other resuming clients, oldest dropped first: resumes from
 * many distinct places would otherwise leave a block on every event they started from.
 */
const CACHED_BLOCK_BYTES = 16 * 1024 * 1024
/** How long a replay may hold its slot while the client reads what was written. */
const REPLAY_FLUSH_WAIT_MS = 5000

/** What a resume found, told to the client by the caller (`resume` on /guest, `subscribed` on /stream). */
export interface ResumeResult {
  replayed: number
  lost: boolean
  clamped: boolean
  epoch: string | undefined
  /** The newest event the client has now: the last replayed, or where the replay started. */
  position: string
}

export interface HubOptions {
  /** Bytes a client may have waiting to be written before it is cut off as a slow consumer. */
  maxBufferedBytes: number
  /** Ping interval; a client that has not answered the previous ping is terminated. 0: off. */
  heartbeatMs: number
  /** Resumes replaying at once; the rest wait their turn, so a reconnect storm has a bounded cost. */
  maxConcurrentReplays: number
  stats: Stats
  /** A channel lost a local subscriber (unsubscribe or close): the broker may stop receiving it. */
  onLeave?: (channel: string) => void
}

const HEARTBEAT_SLICES = 10

/** One client in one channel: where its delivery and its resume stand. */
export class Membership {
  /** Live events (and gaps among them) held back while this membership's replay is read from history. */
  held: Array<BrokerEvent | Gap> | undefined
  heldBytes = 0
  /** While a replay is written: the last event it wrote, to tell the client exactly what a gap took. */
  replayedLast: BrokerEvent | undefined
  /** Waiting for a replay slot: live events are skipped, the replay will read them from history. */
  queued = false
  /**
   * A resumed membership's newest replayed event. The history read and live delivery travel on
   * different Redis connections, so replayed events can still arrive live after the replay:
   * live events up to this id are skipped. Cleared by the first newer one, as the broker
   * delivers in id order.
   */
  lastId: string | undefined
  /** False once unsubscribed (or closed): a replay still running for it stops. */
  active = true

  constructor (readonly client: Client, readonly channel: string) {}

  /** Whether a resumed membership already got event `id` in its replay. */
  hasSeen (id: string): boolean {
    return this.lastId !== undefined && compareIds(id, this.lastId) <= 0
  }
}

/** One connected client, as the hub sees it. */
export class Client {
  alive = true
  /** Which tick of the heartbeat's cycle pings this client (Hub #ping). */
  pingSlot = 0
  /** What `authorize` returned for this connection. */
  identity: Identity = ANONYMOUS
  /** Its channels. */
  readonly channels = new Map<string, Membership>()
  /**
   * The hub's turn in which this client has live frames waiting to be written, and their range
   * in that turn's frames (Hub.deliver).
   */
  pendingTurn = 0
  pendingFrom = 0
  pendingTo = 0
  readonly raw: Socket
  /** Its live events leave as runs of the turn's frames (Hub.deliver), or one by one. */
  readonly joinsTurns: boolean

  constructor (readonly transport: Transport, readonly control: boolean) {
    this.raw = transport.raw
    this.joinsTurns = transport.joinsTurns
  }

  get open (): boolean { return this.transport.open }

  frame (event: BrokerEvent, channel: string): Buffer { return this.transport.frame(event, channel) }

  close (code: number, reason: string): void { this.transport.close(code, reason) }

  terminate (): void { this.transport.terminate() }
}

/**
 * Every connected client of this replica, and the broadcast path: each event is framed once and
 * the same bytes are written to every open socket. The events of one event-loop turn leave
 * together, in one write per socket: the frames of a turn are joined once for all the clients that
 * get the same run of them, so the common case costs one plain `write` per socket, with no cork,
 * uncork or writev bookkeeping in the stream (bench: docs/performance.md).
 */
export class Hub {
  /** Every connection, for heartbeat, drain and capacity. */
  readonly clients = new Set<Client>()
  /** Who receives each channel's events. */
  readonly #channels = new Map<string, Set<Membership>>()
  #corked: Socket[] = []
  #replaying = 0
  #waitingToReplay: Array<() => void> = []
  /** This turn's live WebSocket frames, and the clients with a run of them still to write. */
  #frames: Buffer[] = []
  #pending: Client[] = []
  #turn = 1
  /** This turn's joined runs of frames, by `from * 2^26 + to`: built once, shared by every client. */
  #joined = new Map<number, Buffer>()
  /** Every cached block, in the order it was made, with the event and transport it hangs on. */
  #blocks = new Map<FrameBlock, { event: BrokerEvent, kind: object }>()
  #blockBytes = 0
  #pingTick = 0
  #pingSlots = 0
  #heartbeat: NodeJS.Timeout | undefined
  #options: HubOptions

  constructor (options: HubOptions) {
    this.#options = options
    if (options.heartbeatMs > 0) {
      this.#heartbeat = setInterval(() => this.#ping(), options.heartbeatMs / HEARTBEAT_SLICES)
      this.#heartbeat.unref()
    }
  }

  get size (): number { return this.clients.size }

  /** Channels with a subscriber here. */
  get channelCount (): number { return this.#channels.size }

  /** Bytes of joined replay blocks kept for other resuming clients (at most CACHED_BLOCK_BYTES). */
  get cachedBlockBytes (): number { return this.#blockBytes }

  /** Tracks a WebSocket. */
  add (ws: WebSocket, control: boolean): Client {
    return this.addClient(new Client(new WebSocketTransport(ws), control))
  }

  /** Tracks a client of any transport; it receives the events of the channels it subscribes to. */
  addClient (client: Client): Client {
    client.pingSlot = this.#pingSlots++ % HEARTBEAT_SLICES
    this.clients.add(client)
    client.transport.onPong(() => { client.alive = true })
    client.transport.onClose(() => {
      this.clients.delete(client)
      for (const membership of client.channels.values()) this.unsubscribe(membership)
    })
    return client
  }

  /** From now on, `client` receives the channel's live events. */
  subscribe (client: Client, channel: string): Membership {
    const membership = new Membership(client, channel)
    client.channels.set(channel, membership)
    let members = this.#channels.get(channel)
    if (members === undefined) this.#channels.set(channel, members = new Set())
    members.add(membership)
    this.#options.stats.subscribed(channel, members.size === 1)
    return membership
  }

  unsubscribe (membership: Membership): void {
    const { client, channel } = membership
    if (client.channels.get(channel) !== membership) return
    client.channels.delete(channel)
    membership.active = false
    membership.held = undefined
    const members = this.#channels.get(channel)
    members?.delete(membership)
    const last = members?.size === 0
    if (last) this.#channels.delete(channel)
    this.#options.stats.unsubscribed(channel, last)
    this.#options.onLeave?.(channel)
  }

  /**
   * The broker's listener: one event, every client. Who gets it is decided now; WebSocket bytes
   * are written at the end of the turn (#flushAll), or before anything else the client is sent,
   * as one run of the turn's frames joined once for every client that gets the same run.
   */
  deliver (channel: string, event: BrokerEvent): void {
    const stats = this.#options.stats
    stats.eventsIn++
    const members = this.#channels.get(channel)
    if (members === undefined) return
    const frame = frameOf(event)
    const at = this.#frames.push(frame) - 1
    if (at === 0) process.nextTick(this.#flushAll)
    const turn = this.#turn
    let delivered = 0
    let scheduled = 0
    for (const membership of members) {
      if (membership.queued) continue
      const client = membership.client
      if (membership.held) {
        membership.held.push(event)
        membership.heldBytes += event.data.length
        if (membership.heldBytes > this.#options.maxBufferedBytes) this.#cutOff(client)
      } else if (membership.hasSeen(event.id)) {
        continue // replayed already
      } else if (!client.joinsTurns) {
        // Other transports (EventSource) have bytes of their own: written as they come, corked.
        if (this.#write(client, client.frame(event, channel))) {
          membership.lastId = undefined
          delivered++
        }
      } else if (client.pendingTurn === turn && client.pendingTo === at) {
        client.pendingTo = at + 1
        membership.lastId = undefined
        scheduled++
      } else if (client.open) {
        // A client that skipped an event of this turn (replayed already) gets its earlier run now.
        if (client.pendingTurn === turn) this.#flush(client)
        membership.lastId = undefined
        client.pendingTurn = turn
        client.pendingFrom = at
        client.pendingTo = at + 1
        this.#pending.push(client)
        scheduled++
      }
    }
    stats.deliveries += delivered
    stats.delivered(channel, delivered + scheduled)
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
   * Events the broker could not deliver and no history holds: each `fanout.v1` subscriber of the
   * channel is told, in order with the events. One in the middle of a replay holds the gap in
   * its place among the live events, and learns after its history what it missed (#tellHeldGap);
   * one waiting for a replay slot learns it from its replay's own `lost`.
   */
  deliverGap (channel: string, gap: Gap): void {
    const message = { type: 'gap', channel, after: gap.after ?? null, lost: gap.lost, reason: gap.reason } as const
    for (const membership of this.#channels.get(channel) ?? []) {
      if (!membership.client.control || membership.queued) continue
      if (membership.held) membership.held.push(gap)
      else this.sendJson(membership.client, message)
    }
  }

  /**
   * A gap among a resuming membership's held events, told once the events before it are written.
   * Its history may have covered the gap, wholly or in part: what the client missed runs from
   * the last event it was written to the first held event after the gap.
   */
  #tellHeldGap (membership: Membership, gap: Gap, next: BrokerEvent | undefined): void {
    const { client, channel } = membership
    const last = membership.replayedLast
    if (next !== undefined && membership.hasSeen(next.id)) return // its history went past the gap
    if (gap.reason === 'trimmed' && next?.seq !== undefined && last?.seq !== undefined && next.epoch === last.epoch) {
      const lost = next.seq - last.seq - 1
      if (lost > 0) this.sendJson(client, { type: 'gap', channel, after: last.id, lost, reason: gap.reason })
      return
    }
    // Where the counts cannot tell: from the gap's own place if the client is not past it.
    const behind = last === undefined || gap.after === undefined || compareIds(last.id, gap.after) <= 0
    this.sendJson(client, { type: 'gap', channel, after: behind ? gap.after ?? null : last.id, lost: behind ? gap.lost : null, reason: gap.reason })
  }

  /**
   * Replays a channel's history to a membership that resumes after `since`, with no gap and no
   * duplicate: live events are held from the moment its replay begins (before the history read),
   * the history is written a page at a time, `report` tells the client how it went, then the
   * held events follow, skipping any the history covered. At most `maxConcurrentReplays` run at
   * once; the others wait, skipping live events, which their replay then reads from history.
   */
  async resume (membership: Membership, since: string, open: (since: string, notBefore: number) => Promise<Replay>,
    report: (result: ResumeResult) => void, epoch?: string): Promise<ResumeResult> {
    const client = membership.client
    await this.#replaySlot(membership)
    try {
      if (!client.open || !membership.active) return { replayed: 0, lost: false, clamped: false, epoch: undefined, position: since }
      membership.held = []
      membership.lastId = since
      let replayed = 0
      let replay: Replay
      try {
        replay = await open(since, performance.now())
        membership.lastId = replay.from
        for (let page = replay.first; page.length > 0 && client.open && membership.active; page = await replay.next()) {
          replayed += await this.#replay(membership, page, true)
        }
      } catch (err) {
        membership.held = undefined
        membership.replayedLast = undefined
        client.close(CloseCode.TRY_AGAIN_LATER, 'history unavailable')
        throw err
      }
      // A client that names the epoch of its `since` learns of a reset even when ids cannot tell.
      const lost = replay.lost || (epoch !== undefined && replay.epoch !== undefined && epoch !== replay.epoch)
      this.#options.stats.replayed += replayed
      const result = { replayed, lost, clamped: replay.clamped, epoch: replay.epoch, position: membership.lastId ?? replay.from }
      if (membership.active) report(result)
      // Live events that came while the history was written; more may come while these are.
      while (membership.held && membership.held.length > 0) {
        const held = membership.held
        membership.held = []
        membership.heldBytes = 0
        await this.#replay(membership, held)
      }
      membership.held = undefined
      membership.replayedLast = undefined
      // The slot is free once the replay has left this process, not merely been queued: a storm
      // of slow readers would otherwise hold every replay in memory at once. A reader that
      // stalls gives it up after a while (and meets the slow-consumer cap like anyone else).
      await Promise.race([drained(client), sleep(REPLAY_FLUSH_WAIT_MS, undefined, { ref: false })])
      return result
    } finally {
      this.#releaseReplaySlot()
    }
  }

  async #replaySlot (membership: Membership): Promise<void> {
    if (this.#replaying < this.#options.maxConcurrentReplays) {
      this.#replaying++
      return
    }
    membership.queued = true
    this.#options.stats.replaysQueued++
    // The slot is handed over by the replay that releases it: #replaying does not change.
    await new Promise<void>((resolve) => this.#waitingToReplay.push(resolve))
    membership.queued = false
  }

  #releaseReplaySlot (): void {
    const next = this.#waitingToReplay.shift()
    if (next) next()
    else this.#replaying--
  }

  /**
   * Writes events to one client, waiting for its socket to drain whenever half the buffer cap is
   * queued: a replay may be far larger than MAX_BUFFERED_BYTES, and written in one go it would
   * be cut off as a slow consumer however fast the client reads. History pages go out as shared
   * blocks of frames: one write per block, not per event, so thousands of resuming clients make
   * a few objects each, not one per event.
   */
  async #replay (membership: Membership, events: Array<BrokerEvent | Gap>, fromHistory = false): Promise<number> {
    const client = membership.client
    let written = 0
    for (let i = 0; i < events.length && client.open && membership.active;) {
      const item = events[i]
      if (isGap(item)) {
        this.#tellHeldGap(membership, item, events.slice(i + 1).find((e): e is BrokerEvent => !isGap(e)))
        i++
        continue
      }
      if (membership.hasSeen(item.id)) {
        i++
        continue
      }
      const block = fromHistory && client.transport.sharesFrames ? this.#blockAt(client, events as BrokerEvent[], i) : undefined
      const count = block?.count ?? 1
      if (this.#write(client, block?.frames ?? client.frame(item, membership.channel))) {
        membership.replayedLast = events[i + count - 1] as BrokerEvent
        membership.lastId = membership.replayedLast.id
        written += count
      }
      i += count
      if (client.raw.writableLength > this.#options.maxBufferedBytes / 2) await drained(client)
    }
    this.#options.stats.deliveries += written
    return written
  }

  /** The frames of `events[i]` and the events after it, up to a block's size, joined once per transport. */
  #blockAt (client: Client, events: BrokerEvent[], i: number): FrameBlock {
    const kind = Object.getPrototypeOf(client.transport) as object
    const blocks = events[i].blocks ??= new Map()
    const cached = blocks.get(kind)
    if (cached && i + cached.count <= events.length && events[i + cached.count - 1].id === cached.lastId) return cached
    const limit = Math.min(BLOCK_BYTES, this.#options.maxBufferedBytes / 2)
    const frames: Buffer[] = []
    let bytes = 0
    for (let j = i; j < events.length && (j === i || bytes + client.transport.frame(events[j], '').length <= limit); j++) {
      const frame = client.transport.frame(events[j], '')
      frames.push(frame)
      bytes += frame.length
    }
    const block = { frames: frames.length === 1 ? frames[0] : Buffer.concat(frames, bytes), count: frames.length, lastId: events[i + frames.length - 1].id }
    if (cached) this.#forgetBlock(cached)
    blocks.set(kind, block)
    this.#blocks.set(block, { event: events[i], kind })
    this.#blockBytes += block.frames.length
    while (this.#blockBytes > CACHED_BLOCK_BYTES) this.#forgetBlock(this.#blocks.keys().next().value as FrameBlock)
    return block
  }

  #forgetBlock (block: FrameBlock): void {
    const owner = this.#blocks.get(block)
    if (owner === undefined) return
    this.#blocks.delete(block)
    this.#blockBytes -= block.frames.length
    if (owner.event.blocks?.get(owner.kind) === block) owner.event.blocks.delete(owner.kind)
  }

  /** A message for one client only (control messages, /ask answers), in order with events. */
  send (client: Client, data: string | Buffer, type?: string): boolean {
    return this.#write(client, client.transport.message(data, type))
  }

  /** A control message as JSON (an EventSource gets it as a named event). */
  sendJson (client: Client, message: ControlMessage): boolean {
    return this.send(client, JSON.stringify(message), message.type)
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
    for (const membership of client.channels.values()) membership.held = undefined
    client.close(CloseCode.TRY_AGAIN_LATER, 'slow consumer')
    client.terminate()
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
        client.terminate()
        continue
      }
      client.alive = !client.transport.answersPings
      client.transport.ping()
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
      const timer = setTimeout(() => client.close(code, reason), Math.floor(i * step))
      client.transport.onClose(() => {
        clearTimeout(timer)
        resolve()
      })
    }))
    const deadline = new Promise<void>((resolve) => setTimeout(resolve, windowMs + 1000).unref())
    await Promise.race([Promise.all(closed), deadline])
    for (const client of this.clients) client.terminate()
  }

  close (): void {
    clearInterval(this.#heartbeat)
    for (const client of this.clients) client.terminate()
  }
}

function isGap (item: BrokerEvent | Gap): item is Gap {
  return 'reason' in item
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
