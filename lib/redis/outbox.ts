import { randomUUID } from 'node:crypto'
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
    token: string, leaseMs: number, oldestPending: number, name: string, historyAgeMs: number, once: '1' | ''): unknown
  wait (replicas: number, timeoutMs: number): unknown
  exec (): Promise<Array<[Error | null, unknown]> | null>
}

export interface OutboxOptions {
  /** A channel's keys and history limits. */
  channel: (name: string) => { keys: StreamKeys, historySize: number, historyAgeMs: number }
  /** Events held while Redis is unreachable or refusing; beyond it the oldest unsent are dropped. */
  outboxSize: number
  /** PUBLISH, or SPUBLISH on a Redis Cluster. */
  publishCommand: string
  /** The lease to fence each publish with: '' publishes unfenced; undefined: not the holder now. */
  fence: () => { token: string, leaseMs: number } | undefined
  /** Replicas that must confirm a batch (`WAIT`) before its events leave the outbox; 0: none. */
  waitReplicas: number
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
  resolve: (id: string) => void
  reject: (err: Error) => void
}

const BATCH = 256
const WAIT_TIMEOUT_MS = 1000
/** A channel this publisher has not used for this long, with nothing pending, is forgotten. */
const CHANNEL_STATE_MS = 10 * 60_000

/**
 * A publisher's queue into Redis, exactly once and in order. Events are sent in pipelined
 * batches and each reply is handled on its own: what Redis confirmed leaves the queue, what it
 * refused stays and is sent again after a backoff under the same counter, so a retry of an event
 * Redis already ran returns its id instead of making a second one (see PUBLISH_SCRIPT).
 */
export class Outbox {
  /** Names this publisher's records in Redis; a new one after abandoning events, whose counters go unused. */
  #publisherId = randomUUID()
  /** Tells apart the records of a channel forgotten and used again: its counter starts afresh. */
  #generation = 0
  #channels = new Map<string, ChannelState>()
  #items: Item[] = []
  #flushing = false
  /** The batch on its way to Redis: closing waits for its replies, or events Redis ran would be reported lost. */
  #sending: Promise<unknown> = Promise.resolve()
  /** The events of the batch on its way: never dropped, a reply may yet confirm them. */
  #inFlight = new Set<Item>()
  #closed = false

  constructor (
    private readonly redis: () => PublishingConnection,
    private readonly options: OutboxOptions,
    private readonly counters: RedisCounters,
    private readonly log: BrokerLog
  ) {}

  get length (): number { return this.#items.length }

  get channels (): number { return this.#channels.size }

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
      if (this.#items.length > this.options.outboxSize) this.#dropOldest()
      this.flush()
    })
  }

  /** Sends the queue in order, in pipelined batches; waits out outages and refusals with backoff. */
  async flush (): Promise<void> {
    if (this.#flushing) return
    this.#flushing = true
    let attempt = 0
    try {
      while (this.#items.length > 0 && !this.#closed) {
        if (this.redis().status !== 'ready') {
          await delay(retryDelay(attempt++))
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
        await delay(retryDelay(attempt++))
      }
    } finally {
      this.#flushing = false
    }
  }

  /** One pipelined batch; the first refusal, if Redis did not confirm all of it. */
  async #send (batch: Item[]): Promise<Error | undefined> {
    const lease = this.options.fence()
    if (lease === undefined) return new Error('FENCED this worker does not hold the lease')
    const pipeline = this.redis().pipeline()
    // Each channel's oldest pending counter is its first in the batch: the batch is the queue's head.
    const oldestPending = new Map<ChannelState, number>()
    for (const item of batch) {
      item.counter ??= ++item.channel.counter
      if (!oldestPending.has(item.channel)) oldestPending.set(item.channel, item.counter)
    }
    for (const item of batch) {
      const c = item.channel
      const k = c.keys
      const once = item.idempotencyKey === undefined ? '' : '1'
      pipeline.fanoutPublish(k.events, k.meta, k.publisher(c.publisherId), k.lease, k.idempotent(item.idempotencyKey ?? ''), item.body, c.historySize,
        k.channel, this.options.publishCommand, item.counter as number, c.floor, newEpoch(), lease.token, lease.leaseMs,
        oldestPending.get(c) as number, c.name, c.historyAgeMs, once)
    }
    // WAIT in the same pipeline: the same connection, so it covers exactly these writes.
    if (this.options.waitReplicas > 0) pipeline.wait(this.options.waitReplicas, WAIT_TIMEOUT_MS)
    this.#inFlight = new Set(batch)
    const replies = await pipeline.exec().catch((err: Error) => batch.map((): [Error, null] => [err, null]))
    this.#inFlight.clear()
    const [waitErr, acked] = this.options.waitReplicas > 0 ? replies?.[batch.length] ?? [new Error('no reply'), 0] : [null, 0]
    if (this.options.waitReplicas > 0 && (waitErr !== null || Number(acked) < this.options.waitReplicas)) {
      // Not yet on enough replicas: a failover now could lose these. Keep them all and send them
      // again: the script answers what it already ran with the ids it gave.
      this.counters.waitShortfalls++
      this.log.warn('wait', { acked: Number(acked), wanted: this.options.waitReplicas, err: waitErr?.message },
        'replicas did not confirm the latest events in time: kept in the outbox and re-sent')
      return new Error(`WAIT ${String(acked)} of ${this.options.waitReplicas} replicas`)
    }
    const confirmed = new Set<Item>()
    let refusal: Error | undefined
    batch.forEach((item, i) => {
      const [err, id] = replies?.[i] ?? [new Error('no reply'), null]
      if (err) {
        refusal ??= err
        return
      }
      confirmed.add(item)
      this.counters.published++
      if (compareIds(String(id), item.channel.floor) > 0) item.channel.floor = String(id)
      item.resolve(String(id))
    })
    if (confirmed.size > 0) this.#items = this.#items.filter((item) => !confirmed.has(item))
    if (refusal) this.#refused(refusal, batch.length - confirmed.size)
    return refusal
  }

  /** Drops every event held: a worker that lost the lease must not publish what it made. */
  #abandon (reason: string): void {
    const items = this.#items.splice(0)
    this.counters.fencedDropped += items.length
    this.log.warn('fenced', { dropped: items.length, reason }, 'this worker no longer leads: dropped the events it still held')
    for (const item of items) item.reject(new Error(`dropped: ${reason}`))
    this.#publisherId = randomUUID()
    this.#channels.clear()
  }

  /** This publisher's state on a channel; channels it has not used for a while are forgotten on the way. */
  #channel (name: string): ChannelState {
    let state = this.#channels.get(name)
    if (state !== undefined) {
      // Kept in order of last use, so the forgetting below looks at the least recent first.
      this.#channels.delete(name)
      this.#channels.set(name, state)
      return state
    }
    const now = Date.now()
    for (const [other, idle] of this.#channels) {
      if (idle.pending > 0 || now - idle.usedAt < CHANNEL_STATE_MS) break
      this.#channels.delete(other)
    }
    state = { name, ...this.options.channel(name), publisherId: `${this.#publisherId}.${this.#generation++}`, counter: 0, floor: '0-0', pending: 0, usedAt: now }
    this.#channels.set(name, state)
    return state
  }

  /**
   * Every refused call is counted; the first of a batch is logged (rate-limited): the rest of the
   * batch were refused for following it (ORDER) or for the same reason.
   */
  #refused (err: Error, count: number): void {
    this.counters.commandErrors += count
    const kind = /^[A-Z]+/.exec(err.message)?.[0] ?? 'ERR'
    this.log.warn(`publish-${kind}`, { err: err.message, refused: count, outboxLength: this.#items.length },
      'redis refused a publish: kept in the outbox and retried')
    if (kind === 'STALE') {
      // Older than the dedupe window: Redis ran it long ago or never will; it cannot be placed.
      const [stale] = this.#items.splice(0, 1)
      stale?.reject(new Error(`dropped: ${err.message}`))
    }
  }

  #dropOldest (): void {
    // Not one on its way: its reply may yet confirm it. One sent before and refused may go: the
    // script learns from the oldest pending counter that the ones below it were dropped.
    const at = this.#items.findIndex((item) => !this.#inFlight.has(item))
    if (at < 0) return
    const [dropped] = this.#items.splice(at, 1)
    this.counters.outboxDropped++
    this.log.warn('outbox-full', { outboxSize: this.options.outboxSize, dropped: this.counters.outboxDropped },
      'redis unreachable and outbox full: dropped the oldest event')
    dropped.reject(new Error('dropped: the outbox was full while Redis was unreachable'))
  }

  /** Gives a connected publisher a moment to hand over what it still holds, then refuses the rest. */
  async close (): Promise<void> {
    const deadline = Date.now() + 2000
    while (this.#items.length > 0 && this.redis().status === 'ready' && Date.now() < deadline) await delay(10)
    this.#closed = true
    await this.#sending
    for (const item of this.#items.splice(0)) item.reject(new Error('broker closed before Redis took the event'))
  }
}
