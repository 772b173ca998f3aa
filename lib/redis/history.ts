import type { Replay } from '../broker.js'
import { compareIds, HISTORY_PAGE, type BrokerEvent } from '../event.js'
import { missingBetween, parseEntry, type Entry, type RawEntry, type StreamKeys } from './stream.js'

/** Reads kept per kind for other resuming clients (a page is HISTORY_PAGE events and their frames). */
const CACHED_READS = 32
/** Events kept by id, so every read of the same event hands out the same bytes and frame. */
const INTERNED_EVENTS = 20 * HISTORY_PAGE

export interface HistoryConnection {
  fanoutReplayStart (events: string, meta: string, since: string, count: number): Promise<[Array<string | null>, RawEntry[], RawEntry[]]>
  xrange (key: string, start: string, end: string, count: 'COUNT', n: number): Promise<RawEntry[]>
}

interface Shared<T> { startedAt: number, result: Promise<T> }

/**
 * Replays read from the history stream a page at a time, and shared: a storm of clients resuming
 * from the same place (every client of a replica that died) costs one read per page, and one copy
 * of each event and its frame, not one per client.
 */
export class HistoryReader {
  #starts = new Map<string, Shared<ReplayStart>>()
  #pages = new Map<string, Shared<Entry[]>>()
  #interned = new Map<string, Entry>()

  constructor (private readonly redis: () => HistoryConnection, private readonly keysOf: (channel: string) => StreamKeys) {}

  async replay (channel: string, since: string, notBefore: number): Promise<Replay> {
    const keys = this.keysOf(channel)
    const start = await this.#shared(this.#starts, `${channel} ${since}`, notBefore, () => this.#readStart(keys, since))
    let tail = start.tail
    let lost = start.lost
    let first: BrokerEvent[] | undefined = start.page.map((e) => e.event)
    let done = start.page.length < HISTORY_PAGE
    const next = async (): Promise<BrokerEvent[]> => {
      if (first) {
        const page = first
        first = undefined
        return page
      }
      if (done || tail === undefined) return []
      const from = tail
      const entries = await this.#shared(this.#pages, `${channel} ${from.id}`, notBefore, () => this.#readPage(keys, from.id), (page) => page.length === HISTORY_PAGE)
      done = entries.length < HISTORY_PAGE
      if (entries.length > 0) {
        // Trimmed while this replay was being written: what fell between the pages is gone.
        if (missingBetween(from, entries[0]) > 0) lost = true
        tail = entries[entries.length - 1]
      }
      return entries.map((e) => e.event)
    }
    return {
      first: await next(),
      from: start.from,
      get lost () { return lost },
      clamped: start.clamped,
      epoch: start.epoch,
      next
    }
  }

  async #readStart (keys: StreamKeys, since: string): Promise<ReplayStart> {
    const [[epochOrNull, start, last], beforeRaw, pageRaw] = await this.redis().fanoutReplayStart(keys.events, keys.meta, since, HISTORY_PAGE)
    const epoch = epochOrNull ?? undefined
    const page = pageRaw.map((raw) => this.#intern(keys.name, raw))
    const before = beforeRaw.length > 0 ? parseEntry(beforeRaw[0], keys.name) : undefined
    const newest = page.at(-1)?.id ?? last ?? before?.id
    if (newest === undefined) {
      // An empty history: any position but the beginning came from one that is gone.
      return { page, from: '0-0', lost: since !== '0-0', clamped: since !== '0-0', epoch, tail: undefined }
    }
    if (page.length === 0 && compareIds(since, newest) > 0) {
      // Ahead of everything this history holds: forged, or the history lost its newest events
      // (a failover to a replica that lagged). The live events after the newest come next.
      return { page, from: newest, lost: start === null, clamped: true, epoch, tail: undefined }
    }
    // An id older than this epoch's first belongs to an earlier history: what followed it is gone.
    const earlierEpoch = since !== '0-0' && start !== null && compareIds(since, start) < 0
    const trimmed = page.length > 0
      ? missingBetween(since === '0-0' ? undefined : before, page[0]) > 0
      : compareIds(since, newest) < 0 // the meta knows newer events than the stream still holds
    return { page, from: since, lost: earlierEpoch || trimmed, clamped: false, epoch, tail: page.at(-1) ?? before }
  }

  async #readPage (keys: StreamKeys, after: string): Promise<Entry[]> {
    return (await this.redis().xrange(keys.events, `(${after}`, '+', 'COUNT', HISTORY_PAGE)).map((raw) => this.#intern(keys.name, raw))
  }

  /**
   * The one Entry for an event id. Clients that resume one after another (beyond the concurrent
   * cap) read the same events again; without this, each read would make new bytes and frames,
   * and slow readers would hold thousands of copies in their socket buffers.
   */
  #intern (channel: string, raw: RawEntry): Entry {
    const key = `${channel} ${raw[0]}` // two channels may hold the same id
    const known = this.#interned.get(key)
    if (known) return known
    const entry = parseEntry(raw, channel)
    this.#interned.set(key, entry)
    if (this.#interned.size > INTERNED_EVENTS) this.#interned.delete(this.#interned.keys().next().value as string)
    return entry
  }

  /**
   * One read for every caller that asks for the same thing. A read is reused if it started at or
   * after `notBefore`, so it saw every event the caller needs; a full page of entries is reused
   * whenever, since its content cannot change. A failed read is not kept.
   */
  async #shared<T> (cache: Map<string, Shared<T>>, key: string, notBefore: number, read: () => Promise<T>, complete?: (value: T) => boolean): Promise<T> {
    const hit = cache.get(key)
    if (hit && hit.startedAt >= notBefore) return await hit.result
    if (hit && complete) {
      const value = await hit.result.catch(() => undefined)
      if (value !== undefined && complete(value)) return value
    }
    const shared = { startedAt: performance.now(), result: read() }
    cache.delete(key)
    cache.set(key, shared)
    shared.result.catch(() => { if (cache.get(key) === shared) cache.delete(key) })
    while (cache.size > CACHED_READS) cache.delete(cache.keys().next().value as string)
    return await shared.result
  }
}

interface ReplayStart {
  page: Entry[]
  from: string
  lost: boolean
  clamped: boolean
  epoch: string | undefined
  /** The last entry read, where the next page begins. */
  tail: Entry | undefined
}
