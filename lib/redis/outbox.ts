import { randomBytes } from 'node:crypto'
import { CHANNEL_IDLE_GRACE_MS } from '../channels.js'
import { compareIds, encodeBody, newEpoch, type EventBody } from '../event.js'
import { delay, retryDelay } from './retry.js'
import type { StreamKeys } from './stream.js'
import type { RedisCounters } from './counters.js'
import type { BrokerLog } from './log.js'

/** The connection the outbox publishes through: the publish script defined as a command. */
export interface PublishingConnection {
  readonly status: string
  pipeline (): PublishingPipeline
}

export interface PublishingPipeline {
  fanoutPublish (events: string, meta: string, publisher: string, lease: string, idempotent: string,
    body: string, maxLen: number, channel: string, command: string, counter: number, floor: string, epoch: string,
    token: string, leaseMs: number, oldestPending: number, name: string, historyAgeMs: number, once: '1' | '', uid: string): unknown
  wait (replicas: number, timeoutMs: number): unknown
  exec (): Promise<Array<[Error | null, unknown]> | null>
}

/**
 * The command connection itself, its pipelines as ioredis makes them (on a Cluster: sent to the
 * node of their keys): for the writes that let a WAIT cover events Redis answered from its record.
 */
export interface DirectConnection {
  readonly status: string
  pipeline (): PublishingPipeline & { pexpire (key: string, ms: number): unknown }
}

export interface OutboxOptions {
  /** A channel's keys and history limits. */
  channel: (name: string) => { keys: StreamKeys, historySize: number, historyAgeMs: number }
  /**
   * Events held, unsent or sent and not yet confirmed by `waitReplicas` replicas; beyond it the
   * oldest unsent are dropped.
   */
  outboxSize: number
  /** PUBLISH, or SPUBLISH on a Redis Cluster. */
  publishCommand: string
  /** The lease to fence each publish with: '' publishes unfenced; undefined: not the holder now. */
  fence: () => { token: string, leaseMs: number } | undefined
  /**
   * Replicas that must confirm an event (`WAIT`) before its publish resolves; 0: none. It does
   * not hold back later events: they go on being published while earlier ones wait.
   */
  waitReplicas: number
  /**
   * A Redis Cluster: each pipeline goes to the node of its keys, so a `WAIT` there speaks only
   * for that node's connection. A WAIT then confirms only events of the channels it was sent with.
   */
  cluster?: boolean
  /** The connection as it is (`redis` may split pipelines by primary); by default `redis`. */
  direct?: () => DirectConnection
  /** A publish was refused as fenced: resolves to whether this publisher (still) holds the lease. */
  onFenced?: () => Promise<boolean>
}

/**
 * What this publisher knows of one channel: its own record there (the id names it, the counter
 * numbers its publishes) and the newest id Redis gave it, which every later id must exceed.
 */
interface ChannelState {
  readonly name: string
  readonly keys: StreamKeys
  readonly historySize: number
  readonly historyAgeMs: number
  readonly publisherId: string
  /** Its publisher record's key, and the idempotency key of a publish without one: made once, not per event. */
  readonly publisherKey: string
  readonly noIdempotencyKey: string
  counter: number
  floor: string
  /** Events queued for it and not yet confirmed; a channel with none is forgotten after a while. */
  pending: number
  usedAt: number
}

interface Item {
  body: string
  channel: ChannelState
  idempotencyKey: string | undefined
  /** This publisher's number for the event on its channel, given when it is first sent and kept for retries. */
  counter?: number
  /** The id Redis gave it, once it took it (published, live); a re-send may answer another after a lossy failover. */
  id?: string
  /** The connection (its number, see Outbox.connected) that last wrote it: only a WAIT there can confirm it. */
  session?: number
  resolve: (id: string) => void
  reject: (err: Error) => void
}

const BATCH = 256
/** A WAIT's timeout while every earlier event is confirmed, and at most every LONG_WAIT_EVERY_MS otherwise. */
const WAIT_TIMEOUT_MS = 1000
/**
 * A WAIT's timeout while earlier events still wait for a replica: WAIT holds the publishing
 * connection (Redis runs nothing after it until it returns), so a replica that is gone must not
 * cost every batch a second. Once every LONG_WAIT_EVERY_MS the full timeout, so a replica lagging
 * by less than it under steady load still catches up with what it is asked.
 */
const SHORT_WAIT_MS = 100
const LONG_WAIT_EVERY_MS = 5000
/** With nothing to send, how often events waiting for a replica are asked about again. */
const PROBE_INTERVAL_MS = 500
/** A channel this publisher has not used for this long, with nothing pending, is forgotten. */
const CHANNEL_STATE_MS = 10 * 60_000
/** The publish script's expiry of a publisher record on a channel kept by count alone (lib/redis/stream.ts). */
const PUBLISHER_RECORD_MS = 86_400_000

/**
 * A publisher's queue into Redis, exactly once and in order. Events are sent in pipelined
 * batches and each reply is handled on its own: what Redis confirmed leaves the queue, what it
 * refused stays and is sent again after a backoff under the same counter, so a retry of an event
 * Redis already ran returns its id instead of making a second one (see PUBLISH_SCRIPT).
 *
 * With `waitReplicas`, replication is a report on durability, not a gate: an event Redis took is
 * live at once, and its publish resolves once a `WAIT` on the same connection, sent with it or
 * after it, counts enough replicas. Until then it is held (`unreplicated`, counted in
 * `outboxSize`) while later events go on; should the connection be replaced meanwhile (a
 * reconnect, a failover), the events it held are sent again, ahead of everything newer: the
 * script answers those Redis still has with their ids and writes again those a failover lost.
 */
export class Outbox {
  /**
   * Names this publisher's records in Redis, and with a counter each event (its uid); a new one
   * after abandoning events, whose counters go unused.
   */
  #publisherId = newPublisherId()
  /** Tells apart the records of a channel forgotten and used again: its counter starts afresh. */
  #generation = 0
  #channels = new Map<string, ChannelState>()
  /** When channels unused for CHANNEL_STATE_MS were last forgotten. */
  #sweptAt = 0
  /** Events to send: never sent, refused, or sent on a connection that has gone since. */
  #items: Item[] = []
  /** Events Redis took and replicas have not confirmed yet, in the order they were written. */
  #unconfirmed: Item[] = []
  /** The command connection's number: one more on each `ready`. */
  #session = 0
  #flushing = false
  /** Wakes the flush loop from a pause (new events, a new connection). */
  #wake: () => void = () => {}
  /** The batch on its way to Redis: closing waits for its replies, or events Redis ran would be reported lost. */
  #sending: Promise<unknown> = Promise.resolve()
  /** The events of the batch on its way: never dropped, a reply may yet confirm them. */
  #inFlight = new Set<Item>()
  /** When the last WAIT with the full timeout was sent. */
  #longWaitAt = 0
  /** When events waiting for a replica were last asked about. */
  #probedAt = 0
  #closed = false

  constructor (
    private readonly redis: () => PublishingConnection,
    private readonly options: OutboxOptions,
    private readonly counters: RedisCounters,
    private readonly log: BrokerLog
  ) {}

  /** Events held: unsent, or sent and waiting for a replica (the latter count toward `outboxSize`). */
  get length (): number { return this.#items.length + this.#unconfirmed.length }

  /** Events Redis took (live) whose replication `waitReplicas` replicas have not confirmed yet. */
  get unreplicated (): number { return this.#unconfirmed.length + this.#items.filter((item) => item.id !== undefined).length }

  get channels (): number { return this.#channels.size }

  /** Each channel's newest id Redis gave this publisher. */
  * newestIds (): Iterable<[string, string]> {
    for (const state of this.#channels.values()) if (state.floor !== '0-0') yield [state.name, state.floor]
  }

  publish (channel: string, body: EventBody, idempotencyKey?: string): Promise<string> {
    if (this.#closed) return Promise.reject(new Error('broker is closed'))
    const encoded = encodeBody(body)
    const state = this.#channel(channel)
    state.pending++
    state.usedAt = Date.now()
    return new Promise((resolve, reject) => {
      const settle = (): void => { state.pending-- }
      this.#items.push({
        body: encoded,
        channel: state,
        idempotencyKey,
        resolve: (id) => { settle(); resolve(id) },
        reject: (err) => { settle(); reject(err) }
      })
      if (this.length > this.options.outboxSize) this.#dropOldest()
      this.flush()
    })
  }

  /**
   * The command connection is (again) ready: a new connection, on which no WAIT can confirm
   * what the old one wrote. What waited for a replica is sent again, first, in the order it was
   * written; the script answers those Redis still has with their ids.
   */
  connected (): void {
    this.#session++
    if (this.#unconfirmed.length > 0) {
      this.log.warn('wait-resend', { events: this.#unconfirmed.length },
        'command connection replaced: events not yet confirmed by replicas are sent again')
      this.#items = [...this.#unconfirmed.splice(0), ...this.#items]
    }
    this.flush()
  }

  /** Sends the queue in order, in pipelined batches; waits out outages and refusals with backoff. */
  async flush (): Promise<void> {
    this.#wake()
    if (this.#flushing) return
    this.#flushing = true
    let attempt = 0
    try {
      while ((this.#items.length > 0 || this.#unconfirmed.length > 0) && !this.#closed) {
        if (this.redis().status !== 'ready') {
          await this.#pause(retryDelay(attempt++))
          continue
        }
        if (this.#items.length === 0) {
          // Nothing new to send: ask again about what waits for a replica, now and then.
          const wait = this.#probedAt + PROBE_INTERVAL_MS - Date.now()
          if (wait > 0) {
            await this.#pause(wait)
            continue
          }
          const probing = this.#probe()
          this.#sending = probing
          await probing
          continue
        }
        const sending = this.#send(this.#items.slice(0, Math.min(BATCH, this.options.outboxSize)))
        this.#sending = sending
        const refusal = await sending
        if (refusal === undefined) {
          attempt = 0
          continue
        }
        if (/^FENCED/.test(refusal.message) && this.options.onFenced && !await this.options.onFenced()) {
          this.#abandon('another worker holds the lease')
          continue
        }
        await this.#pause(retryDelay(attempt++))
      }
    } finally {
      this.#flushing = false
    }
  }

  /** Waits `ms`, or less if `flush` is called meanwhile. */
  #pause (ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms)
      timer.unref()
      function done (): void {
        clearTimeout(timer)
        resolve()
      }
      this.#wake = done
    })
  }

  #direct (): DirectConnection {
    return this.options.direct?.() ?? this.redis() as unknown as DirectConnection
  }

  /** The timeout of the next WAIT (see SHORT_WAIT_MS). */
  #waitTimeout (): number {
    if (this.#unconfirmed.length > 0 && Date.now() - this.#longWaitAt < LONG_WAIT_EVERY_MS) return SHORT_WAIT_MS
    this.#longWaitAt = Date.now()
    return WAIT_TIMEOUT_MS
  }

  /** One pipelined batch; the first refusal, if Redis did not take all of it. */
  async #send (batch: Item[]): Promise<Error | undefined> {
    const lease = this.options.fence()
    if (lease === undefined) return new Error('FENCED this worker does not hold the lease')
    const session = this.#session
    const cluster = this.options.cluster === true
    const waiting = this.options.waitReplicas > 0
    const direct = waiting && !cluster ? this.#direct().pipeline() : undefined
    const pipeline = direct ?? this.redis().pipeline()
    // Each channel's oldest pending counter is its first in the batch: the batch is the queue's head.
    const oldestPending = new Map<ChannelState, number>()
    /** Channels with an event sent before: Redis may answer it from its record, without writing. */
    const resent = new Set<ChannelState>()
    for (const item of batch) {
      if (item.counter !== undefined) resent.add(item.channel)
      item.counter ??= ++item.channel.counter
      if (!oldestPending.has(item.channel)) oldestPending.set(item.channel, item.counter)
    }
    // The name a history starting afresh takes: one random part per batch (randomBytes per event
    // cost more than the rest of the call), each event's own suffix keeping them apart.
    const epochs = newEpoch()
    batch.forEach((item, i) => {
      const c = item.channel
      const k = c.keys
      const once = item.idempotencyKey === undefined ? '' : '1'
      pipeline.fanoutPublish(k.events, k.meta, c.publisherKey, k.lease, once === '' ? c.noIdempotencyKey : k.idempotent(item.idempotencyKey as string), item.body, c.historySize,
        k.channel, this.options.publishCommand, item.counter as number, c.floor, `${epochs}${i.toString(36)}`, lease.token, lease.leaseMs,
        oldestPending.get(c) as number, c.name, c.historyAgeMs, once, `${c.publisherId}.${item.counter as number}`)
    })
    // A WAIT covers its connection's writes up to the last one, and an event answered from the
    // publisher's record was not written now: a write on that record after it (its expiry, set as
    // the script sets it) puts this connection's last write past it. On a Cluster the batch is
    // split by primary (lib/redis/slot-pipelines.ts) and has no room for it: the probe writes it.
    if (direct !== undefined) for (const c of resent) direct.pexpire(c.publisherKey, recordTtl(c))
    // WAIT in the same pipeline: the same connection (on a Cluster, each node's).
    if (waiting) pipeline.wait(this.options.waitReplicas, this.#waitTimeout())
    this.#inFlight = new Set(batch)
    const replies = await pipeline.exec().catch((err: Error) => batch.map((): [Error, null] => [err, null]))
    this.#inFlight.clear()
    const taken = new Set<Item>()
    let refusal: Error | undefined
    let refusedItem: Item | undefined
    batch.forEach((item, i) => {
      const [err, reply] = replies?.[i] ?? [new Error('no reply'), null]
      let id = String(reply)
      if (err) {
        // Sent again after a new connection, beyond the dedupe window: Redis's record is past it,
        // so this history has it, under the id it was given.
        if (item.id !== undefined && /^STALE/.test(err.message)) id = item.id
        else {
          if (refusal === undefined) {
            refusal = err
            refusedItem = item
          }
          return
        }
      }
      taken.add(item)
      if (item.id === undefined) this.counters.published++
      item.id = id
      item.session = session
      if (compareIds(id, item.channel.floor) > 0) item.channel.floor = id
    })
    // A connection replaced while the batch was out (ioredis re-sends what was unanswered on the
    // new one): no WAIT speaks for all of it. Kept, and sent again.
    const stillHere = !waiting || session === this.#session
    if (taken.size > 0 && stillHere) this.#items = this.#items.filter((item) => !taken.has(item))
    if (!waiting) {
      for (const item of taken) item.resolve(item.id as string)
    } else if (stillHere && taken.size > 0) {
      const [waitErr, acked] = replies?.[replies.length - 1] ?? [new Error('no reply'), 0]
      for (const item of taken) this.#unconfirmed.push(item)
      if (waitErr === null && Number(acked) >= this.options.waitReplicas) {
        // On a Cluster: the channels of the batch, but those sent again, which wait for a probe.
        this.#confirm(session, cluster ? new Set(batch.map((item) => item.channel).filter((c) => !resent.has(c))) : undefined)
      } else {
        this.#shortfall(Number(acked), waitErr)
      }
    }
    if (refusal) this.#refused(refusal, batch.length - taken.size, refusedItem as Item)
    return refusal
  }

  /**
   * With nothing new to send, asks the replicas about what waits for them: a WAIT alone, or on a
   * Cluster one per channel, after a write on its publisher record (which routes it to the node
   * of the channel, and puts that connection's last write past what Redis answered from the record).
   */
  async #probe (): Promise<void> {
    this.#probedAt = Date.now()
    const session = this.#session
    const timeout = this.#waitTimeout()
    const scopes: Array<ChannelState | undefined> = this.options.cluster === true
      ? [...new Set(this.#unconfirmed.map((item) => item.channel))]
      : [undefined]
    await Promise.all(scopes.map(async (channel) => {
      const pipeline = this.#direct().pipeline()
      if (channel !== undefined) pipeline.pexpire(channel.publisherKey, recordTtl(channel))
      pipeline.wait(this.options.waitReplicas, timeout)
      const replies = await pipeline.exec().catch((err: Error) => [[err, 0] as [Error, number]])
      const [err, acked] = replies?.[replies.length - 1] ?? [new Error('no reply'), 0]
      if (session !== this.#session) return
      if (err === null && Number(acked) >= this.options.waitReplicas) this.#confirm(session, channel && new Set([channel]))
      else this.#shortfall(Number(acked), err)
    }))
  }

  /** A WAIT on connection `session` counted enough replicas: every event it wrote before is theirs. */
  #confirm (session: number, channels: Set<ChannelState> | undefined): void {
    const confirmed: Item[] = []
    this.#unconfirmed = this.#unconfirmed.filter((item) => {
      if (item.session !== session || (channels !== undefined && !channels.has(item.channel))) return true
      confirmed.push(item)
      return false
    })
    for (const item of confirmed) item.resolve(item.id as string)
  }

  /** A WAIT that counted too few replicas: what it covers stays unconfirmed, reported. */
  #shortfall (acked: number, err: Error | null): void {
    this.counters.waitShortfalls++
    this.log.warn('wait', { acked, wanted: this.options.waitReplicas, err: err?.message, unreplicated: this.unreplicated },
      'replicas did not confirm the latest events in time: they are live, and their publishes resolve once replicas confirm them')
  }

  /** Drops every event held: a worker that lost the lease must not publish what it made. */
  #abandon (reason: string): void {
    // Those Redis took once (sent again after a new connection) are live, but no WAIT can confirm
    // them any more: refused as unconfirmed, with their ids. The rest were never published.
    const items = this.#items.splice(0)
    const dropped = items.filter((item) => item.id === undefined)
    this.counters.fencedDropped += dropped.length
    this.log.warn('fenced', { dropped: dropped.length, unconfirmed: items.length - dropped.length, reason },
      'this worker no longer leads: dropped the events it still held')
    for (const item of items) {
      item.reject(new Error(item.id === undefined ? `dropped: ${reason}` : `not confirmed by replicas: published as ${item.id}, then ${reason}`))
    }
    this.#publisherId = newPublisherId()
    this.#channels.clear()
  }

  /** This publisher's state on a channel; channels it has not used for a while are forgotten on the way. */
  #channel (name: string): ChannelState {
    const now = Date.now()
    let state = this.#channels.get(name)
    if (state !== undefined) return state
    if (now - this.#sweptAt > CHANNEL_STATE_MS / 10) {
      this.#sweptAt = now
      for (const [other, idle] of this.#channels) if (idle.pending === 0 && now - idle.usedAt > CHANNEL_STATE_MS) this.#channels.delete(other)
    }
    const settings = this.options.channel(name)
    const publisherId = `${this.#publisherId}.${this.#generation++}`
    state = {
      name,
      ...settings,
      publisherId,
      publisherKey: settings.keys.publisher(publisherId),
      noIdempotencyKey: settings.keys.idempotent(''),
      counter: 0,
      floor: '0-0',
      pending: 0,
      usedAt: now
    }
    this.#channels.set(name, state)
    return state
  }

  /**
   * Every refused call is counted; the first of a batch is logged (rate-limited): the rest of the
   * batch were refused for following it (ORDER) or for the same reason.
   */
  #refused (err: Error, count: number, item: Item): void {
    this.counters.commandErrors += count
    const kind = /^[A-Z]+/.exec(err.message)?.[0] ?? 'ERR'
    this.log.warn(`publish-${kind}`, { err: err.message, refused: count, outboxLength: this.length },
      'redis refused a publish: kept in the outbox and retried')
    if (kind === 'STALE') {
      // Older than the dedupe window: Redis ran it long ago or never will; it cannot be placed.
      const at = this.#items.indexOf(item)
      if (at >= 0) this.#items.splice(at, 1)
      item.reject(new Error(`dropped: ${err.message}`))
    }
  }

  #dropOldest (): void {
    // Not one on its way: its reply may yet confirm it. Not one Redis took: it is live. One sent
    // before and refused may go: the script learns from the oldest pending counter that the ones
    // below it were dropped.
    const at = this.#items.findIndex((item) => !this.#inFlight.has(item) && item.id === undefined)
    if (at < 0) return
    const [dropped] = this.#items.splice(at, 1)
    this.counters.outboxDropped++
    const unreplicated = this.unreplicated
    this.log.warn('outbox-full', { outboxSize: this.options.outboxSize, dropped: this.counters.outboxDropped, unreplicated },
      unreplicated > 0
        ? 'outbox full of events not yet confirmed by replicas (or unsent): dropped the oldest unsent event'
        : 'redis unreachable and outbox full: dropped the oldest event')
    dropped.reject(new Error(unreplicated > 0
      ? 'dropped: the outbox was full of events waiting for replicas'
      : 'dropped: the outbox was full while Redis was unreachable'))
  }

  /** Gives a connected publisher a moment to hand over what it still holds, then refuses the rest. */
  async close (): Promise<void> {
    const deadline = Date.now() + 2000
    while (this.length > 0 && this.redis().status === 'ready' && Date.now() < deadline) await delay(10)
    this.#closed = true
    this.#wake()
    // Its replies may yet confirm events; a node that never answers must not hold the close for ever.
    await Promise.race([this.#sending, delay(CLOSE_WAIT_MS)])
    for (const item of this.#items.splice(0)) {
      item.reject(new Error(item.id === undefined ? 'broker closed before Redis took the event' : `broker closed before replicas confirmed event ${item.id}`))
    }
    for (const item of this.#unconfirmed.splice(0)) item.reject(new Error(`broker closed before replicas confirmed event ${item.id as string}`))
  }
}

/** 72 random bits, 12 characters of base64url: part of every event's uid, so kept short. */
function newPublisherId (): string {
  return randomBytes(9).toString('base64url')
}

/** The longest a close waits for the replies of the batch on its way. */
const CLOSE_WAIT_MS = 5000

/** How long the publish script keeps a channel's publisher record after its last publish. */
function recordTtl (channel: ChannelState): number {
  return channel.historyAgeMs > 0 ? channel.historyAgeMs + CHANNEL_IDLE_GRACE_MS : PUBLISHER_RECORD_MS
}
