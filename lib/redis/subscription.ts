import type { Gap, Position as ChannelPosition } from '../broker.js'
import { compareIds, epochOf, HISTORY_PAGE, idOf, uidOf, type BrokerEvent } from '../event.js'
import type { RecentUids } from './recent-uids.js'
import { parseEntry, type Entry, type RawEntry, type StreamKeys } from './stream.js'
import type { RedisCounters } from './counters.js'
import type { BrokerLog } from './log.js'
import { delay, retryDelay } from './retry.js'

export interface SubscriptionConnection {
  hmget (key: string, ...fields: string[]): Promise<Array<string | null>>
  xrange (key: string, start: string, end: string, count: 'COUNT', n: number): Promise<RawEntry[]>
}

/** Where this replica stands in the history: the last event it delivered. */
interface Position { epoch: string | undefined, lastId: string, lastSeq: number }

/** A history declared lost (LOSS_SCRIPT): its new epoch, and the last event it kept before the loss. */
interface LossNotice { epoch: string, after: string }

/** A live message `lost <epoch> <after>` (LOSS_SCRIPT) starts with this byte; an event's starts with its seq. */
const LOSS_MESSAGE = 'l'.charCodeAt(0)

/**
 * The replica's side of one channel: every live event once and in order to the listener. A gap in
 * `seq` or a reconnect is repaired from the history before live events go on; a new epoch (the
 * history was reset) is followed, logged and counted; what could not be repaired is reported as a
 * Gap before the events after it. An event this replica delivered that the history no longer holds
 * (a lossy failover) is reported through `onLoss`, which declares the history lost for everyone.
 */
export class Subscription {
  #position: Position | undefined
  /**
   * Live events held while the history is read: delivering them first would skip the gap. At
   * most `maxHeld` (the history's size): the history holds whatever it held beyond that, so a
   * repair whose reads keep failing while the channel still delivers drops them and reads again.
   */
  #held: Array<Entry | LossNotice> | undefined = []
  /** The repair (or first placement) running now: whoever asks for one meanwhile waits for it. */
  #repairing: Promise<void> | undefined
  #again = false
  /** The subscription was re-established since the last event: something may have been missed. */
  #resubscribed = false
  #closed = false
  /** The last loss declared in the history's meta, as the latest repair read it. */
  #declared: LossNotice | undefined

  constructor (
    private readonly redis: () => SubscriptionConnection,
    private readonly keys: StreamKeys,
    private readonly listener: (event: BrokerEvent) => void,
    private readonly onGap: (gap: Gap) => void,
    private readonly counters: RedisCounters,
    private readonly log: BrokerLog,
    private readonly maxHeld: number,
    /** An event this replica delivered (`id`) is missing from the history: see LOSS_SCRIPT. */
    private readonly onLoss: (id: string) => void,
    /** What this replica delivered lately, by uid: a repeat under a new id is not delivered again. */
    private readonly delivered: RecentUids
  ) {}

  /** True once the replica knows where it stands in the stream. */
  get synced (): boolean { return this.#position !== undefined }

  /** Where the channel stands here: the last event delivered. */
  get position (): ChannelPosition {
    return { lastId: this.#position?.lastId ?? '0-0', epoch: this.#position?.epoch }
  }

  /** One message from the live channel: `<seq> <event JSON>`. */
  onMessage (message: Buffer): void {
    if (message[0] === LOSS_MESSAGE) {
      const [, epoch, after] = message.toString('latin1').split(' ')
      if (this.#held === undefined) this.#follow({ epoch, after })
      else this.#held.push({ epoch, after })
      return
    }
    const space = message.indexOf(32)
    const seq = Number(message.toString('latin1', 0, space))
    const data = message.subarray(space + 1)
    const id = idOf(data)
    const epoch = epochOf(data)
    const entry = { id, seq, epoch, event: { id, seq, epoch, data } }
    if (this.#held === undefined) {
      this.#accept(entry, true)
    } else if (this.#held.push(entry) > this.maxHeld) {
      this.log.warn('held-overflow', { channel: this.keys.name, held: this.#held.length, to: id },
        'history unreadable for longer than its size: live events dropped, to be read from the history')
      this.#held = []
      this.#again = true // a read that began before these were dropped may not reach them
    }
  }

  /**
   * The subscription stands (again): find the place in the stream the first time, repair what
   * was missed every other time. Retries until it can read, or the broker closes.
   */
  onSubscribed (): Promise<void> {
    if (this.#repairing !== undefined) {
      this.#again = true // reconnected mid-repair: what it missed since is not in this read
      // Settles with the running one: a channel is ready only once placed (a join resolved
      // before would let a resume read the history before the place is found, and events
      // between the two would reach no one).
      return this.#repairing
    }
    let start = (): void => {}
    const repairing = new Promise<void>((resolve, reject) => { start = () => { this.#repair().then(resolve, reject) } })
    this.#repairing = repairing // set first: #repair clears it when done, which may be at once
    start()
    return repairing
  }

  async #repair (): Promise<void> {
    this.#held ??= []
    if (this.#position !== undefined) this.#resubscribed = true
    let repaired = 0
    try {
      do {
        this.#again = false
        if (this.#position !== undefined) this.counters.repairs++
        for (let attempt = 0; !this.#closed; attempt++) {
          try {
            if (this.#position === undefined) await this.#findPlace()
            else repaired += await this.#readMissed()
            break
          } catch (err) {
            // Both connections reconnect on their own backoff: the subscriber may be back first.
            this.log.warn('history-read', { channel: this.keys.name, err: (err as Error).message, attempt }, 'could not read the history stream yet; retrying')
            await delay(retryDelay(attempt, 1000))
          }
        }
      } while (this.#again && !this.#closed)
    } finally {
      this.#repairing = undefined
      this.counters.repairedEvents += repaired
      if (repaired > 0) this.log.info({ channel: this.keys.name, repaired, lastId: this.#position?.lastId }, 'recovered missed events from the stream')
      // Held events follow what was read; a gap left among them is gone from the history too.
      const held = this.#held ?? []
      this.#held = undefined
      for (const item of held) {
        if ('event' in item) this.#accept(item, false)
        else this.#follow(item)
      }
    }
  }

  close (): void { this.#closed = true }

  async #findPlace (): Promise<void> {
    const [epoch, seq, last] = await this.redis().hmget(this.keys.meta, 'epoch', 'seq', 'last')
    if (this.#position !== undefined) return
    this.#position = epoch === null || last === null
      ? { epoch: undefined, lastId: '0-0', lastSeq: 0 }
      : { epoch, lastId: last, lastSeq: Number(seq) }
  }

  /**
   * Delivers every stream entry after the last delivered one; returns how many there were. A
   * history whose newest event is behind the last delivered one lost it; a new epoch with no event
   * yet was declared lost while this subscription was down.
   */
  async #readMissed (): Promise<number> {
    // Where a declared loss began, for a new epoch among the entries read (#accept tells it).
    const [declaredEpoch, declaredAfter] = await this.redis().hmget(this.keys.meta, 'epoch', 'lost')
    this.#declared = declaredEpoch !== null && declaredAfter !== null ? { epoch: declaredEpoch, after: declaredAfter } : undefined
    let count = 0
    for (;;) {
      const after = this.#position?.lastId ?? '0-0'
      const page = (await this.redis().xrange(this.keys.events, `(${after}`, '+', 'COUNT', HISTORY_PAGE)).map((raw) => parseEntry(raw, this.keys.name))
      for (const entry of page) if (this.#accept(entry, false)) count++
      if (page.length < HISTORY_PAGE) break
    }
    // Read after the stream: its `last` is then at or above every event read, unless it lost some.
    const [epoch, last, lostAfter] = await this.redis().hmget(this.keys.meta, 'epoch', 'last', 'lost')
    if (epoch !== null && lostAfter !== null) this.#declared = { epoch, after: lostAfter }
    const at = this.#position
    if (at !== undefined && epoch !== null) {
      if (epoch === at.epoch && last !== null && compareIds(last, at.lastId) < 0) this.onLoss(at.lastId)
      else if (epoch !== at.epoch && count === 0 && lostAfter !== null) this.#follow({ epoch, after: lostAfter })
    }
    return count
  }

  /** The history was declared lost (LOSS_SCRIPT): clients are told where, and the new epoch followed. */
  #follow (notice: LossNotice): void {
    const at = this.#position
    if (at === undefined || at.epoch === notice.epoch) return // not placed yet (it reads the new meta), or known
    this.counters.epochChanges++
    this.log.warn('lost', { channel: this.keys.name, lastId: at.lastId, after: notice.after, epoch: notice.epoch },
      'the history lost events Redis had taken (a failover to a replica that lacked them): clients are told, and its new epoch followed')
    this.#reportGap({ after: this.#lostFrom(notice.after, at.lastId), lost: null, reason: 'history_reset' })
    this.#position = { epoch: notice.epoch, lastId: at.lastId, lastSeq: 0 }
  }

  /** Where a loss begins for this replica's clients: where the history lost it, unless they are behind that. */
  #lostFrom (after: string, lastId: string): string | undefined {
    const from = compareIds(after, lastId) < 0 ? after : lastId
    return from === '0-0' ? undefined : from
  }

  /**
   * Delivers one event if it is the next one. `live`: it came from the channel outside a repair,
   * so a gap before it can still be read from the history; otherwise a gap is final.
   */
  #accept (entry: Entry, live: boolean): boolean {
    const at = this.#position
    if (at === undefined) return false // not placed yet: the first sync places it
    if (compareIds(entry.id, at.lastId) <= 0) return false // delivered already
    const sameEpoch = at.epoch === entry.epoch
    const missing = sameEpoch ? entry.seq - at.lastSeq - 1 : entry.seq - 1
    if (missing > 0 && live) {
      this.#held = [entry]
      this.onSubscribed().catch((err: Error) => this.log.error({ channel: this.keys.name, err: err.message }, 'gap repair failed'))
      return false
    }
    if (!sameEpoch && at.epoch !== undefined) {
      this.counters.epochChanges++
      this.log.warn('epoch', { channel: this.keys.name, from: at.epoch, to: entry.epoch, lastId: at.lastId, firstId: entry.id, seq: entry.seq },
        'the history was reset (deleted, evicted, flushed, or Redis lost its data): following the new epoch')
      // Seen at seq 1 on a subscription unbroken since the last event, nothing can be missing:
      // the old epoch's events all came through the channel. Otherwise the old epoch may have
      // had events after the last one delivered, and nothing can tell; a loss declared in the
      // meta (LOSS_SCRIPT) says where it began.
      if (!live || entry.seq > 1 || this.#resubscribed) {
        const declared = this.#declared?.epoch === entry.epoch ? this.#declared.after : at.lastId
        this.#reportGap({ after: this.#lostFrom(declared, at.lastId), lost: null, reason: 'history_reset' })
      }
    } else if (missing > 0) {
      this.counters.repairLost += missing
      this.#reportGap({ after: at.lastId, lost: missing, reason: 'trimmed' })
    } else if (sameEpoch && entry.seq <= at.lastSeq) {
      // The same epoch, a newer id, an old seq: the history lost its newest events (a failover to
      // a replica that had not received them) and a publisher that could not tell wrote on.
      this.counters.historyRewinds++
      this.log.warn('rewind', { channel: this.keys.name, lastId: at.lastId, lastSeq: at.lastSeq, id: entry.id, seq: entry.seq }, 'the history lost its newest events: sequence went back')
      this.onLoss(at.lastId)
    }
    this.#position = { epoch: entry.epoch, lastId: entry.id, lastSeq: entry.seq }
    this.#resubscribed = false
    const uid = uidOf(entry.event.data)
    if (uid !== '' && !this.delivered.add(uid)) {
      // Its place in the history is taken (the position moved on); its clients have it already.
      this.counters.repeatsDropped++
      this.log.warn('repeat', { channel: this.keys.name, id: entry.id, uid },
        'an event came again under a new id (a publish retried after a failover lost its record): not delivered twice')
      return true
    }
    this.listener(entry.event)
    return true
  }

  #reportGap (gap: Gap): void {
    this.counters.gapsReported++
    this.log.warn('gap', { channel: this.keys.name, ...gap }, 'events were lost before this replica could deliver them: clients are told')
    this.onGap(gap)
  }
}
