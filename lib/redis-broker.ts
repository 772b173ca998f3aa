import { EventEmitter } from 'node:events'
import { randomUUID } from 'node:crypto'
import { Redis, type RedisOptions } from 'ioredis'
import type { Broker, BrokerState, History } from './broker.js'
import { compareIds, encodeBody, idOf, withId, type BrokerEvent, type EventBody } from './event.js'

export interface RedisBrokerOptions {
  url: string
  /** Prefix of every key and channel [fanout:]. */
  prefix?: string
  /** Events kept in the history stream (`XADD … MAXLEN ~`). */
  historySize?: number
  /** Events a publisher holds while Redis is unreachable; beyond it the oldest are dropped. */
  outboxSize?: number
  /** How often the canary goes round, and how late it may be before the broker counts as down. */
  canaryIntervalMs?: number
  canaryTimeoutMs?: number
  /** Called for what an operator should see: drops, repairs, reconnects. */
  log?: (level: 'info' | 'warn' | 'error', fields: Record<string, unknown>, msg: string) => void
}

// One atomic call appends to the capped stream and publishes, so history and live delivery agree.
// The pub/sub message is `<seq> <event JSON>`: seq is contiguous, so a subscriber can tell a gap.
// The splice of the id into the JSON matches withId() in event.ts.
const PUBLISH_SCRIPT = `
local seq = redis.call('INCR', KEYS[2])
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'seq', seq, 'body', ARGV[1])
redis.call('PUBLISH', ARGV[3], seq .. ' {"id":"' .. id .. '",' .. string.sub(ARGV[1], 2))
return id
`

const PAGE = 1000

interface Pending { body: string, resolve: (id: string) => void, reject: (err: Error) => void }

type PublishingRedis = Redis & {
  fanoutPublish (stream: string, seqKey: string, body: string, maxLen: number, channel: string): Promise<string>
}

/** Capped exponential backoff with full jitter; never gives up. */
export function retryDelay (attempt: number, capMs = 5000): number {
  return Math.round(Math.random() * Math.min(capMs, 100 * 2 ** Math.min(attempt, 10)))
}

/**
 * Redis fan-out: a command connection (publish, history, canary) and, once subscribed, a
 * subscriber connection. The listener gets every event once and in order: after a reconnect or a
 * gap in `seq`, the missed events are read back from the stream before live ones go on.
 */
export class RedisBroker implements Broker {
  readonly kind = 'redis'
  readonly prefix: string
  readonly historySize: number
  #cmd: PublishingRedis
  #sub: Redis | undefined
  #state: BrokerState = 'connecting'
  #events = new EventEmitter()
  #log: NonNullable<RedisBrokerOptions['log']>
  #streamKey: string
  #seqKey: string
  #channel: string
  #canaryChannel: string
  #outbox: Pending[] = []
  #outboxSize: number
  #flushing = false
  /** How many items at the head of the outbox are in the pipeline being sent. */
  #sending = 0
  #listener: ((event: BrokerEvent) => void) | undefined
  #lastId: string | undefined
  #lastSeq: number | undefined
  #repairing = false
  #held: Array<{ seq: number, event: BrokerEvent }> = []
  #canaryIntervalMs: number
  #canaryTimeoutMs: number
  #canaryTimer: NodeJS.Timeout | undefined
  /** When the oldest canary not yet heard back was sent; 0: none on its way. */
  #canaryUnansweredSince = 0
  /** When the subscriber last received anything, canary or event. */
  #heardAt = 0
  #closing = false
  #url: string
  #counters = { outboxDropped: 0, repairs: 0, repairedEvents: 0, repairLost: 0, canaryRttMs: -1, resubscribes: 0, published: 0 }

  constructor (options: RedisBrokerOptions) {
    this.#url = options.url
    this.prefix = options.prefix ?? 'fanout:'
    this.historySize = options.historySize ?? 1000
    this.#outboxSize = options.outboxSize ?? 10_000
    this.#canaryIntervalMs = options.canaryIntervalMs ?? 2000
    this.#canaryTimeoutMs = options.canaryTimeoutMs ?? 3 * this.#canaryIntervalMs
    this.#log = options.log ?? (() => {})
    this.#streamKey = `${this.prefix}events`
    this.#seqKey = `${this.prefix}seq`
    this.#channel = `${this.prefix}events`
    this.#canaryChannel = `${this.prefix}canary:${randomUUID()}`
    this.#cmd = new Redis(options.url, {
      ...connectionOptions('command'),
      // Fail fast while disconnected: the outbox, not ioredis, holds what waits for Redis.
      enableOfflineQueue: false
    }) as PublishingRedis
    this.#cmd.defineCommand('fanoutPublish', { numberOfKeys: 2, lua: PUBLISH_SCRIPT })
    this.#cmd.on('ready', () => {
      if (!this.#sub) this.#setState('ready')
      this.#flush()
    })
    this.#cmd.on('close', () => { if (!this.#sub) this.#setState('down') })
    this.#cmd.on('error', (err) => this.#log('warn', { err: err.message }, 'redis command connection error'))
  }

  get state (): BrokerState { return this.#state }

  publish (body: EventBody): Promise<string> {
    if (this.#closing) return Promise.reject(new Error('broker is closed'))
    const encoded = encodeBody(body)
    return new Promise((resolve, reject) => {
      this.#outbox.push({ body: encoded, resolve, reject })
      if (this.#outbox.length > this.#outboxSize) {
        // The oldest not already on its way to Redis: a batch in flight may yet be confirmed.
        const [dropped] = this.#outbox.splice(this.#sending, 1)
        this.#counters.outboxDropped++
        this.#log('warn', { outboxSize: this.#outboxSize, dropped: this.#counters.outboxDropped },
          'redis unreachable and outbox full: dropped the oldest event')
        dropped?.reject(new Error('dropped: the outbox was full while Redis was unreachable'))
      }
      this.#flush()
    })
  }

  /** Sends the outbox in order, in pipelined batches; waits out outages with backoff. */
  async #flush (): Promise<void> {
    if (this.#flushing) return
    this.#flushing = true
    let attempt = 0
    try {
      while (this.#outbox.length > 0 && !this.#closed()) {
        if (this.#cmd.status !== 'ready') {
          await delay(retryDelay(attempt++))
          continue
        }
        const batch = this.#outbox.slice(0, Math.min(256, this.#outboxSize))
        this.#sending = batch.length
        const pipeline = this.#cmd.pipeline()
        for (const item of batch) {
          (pipeline as unknown as PublishingRedis).fanoutPublish(
            this.#streamKey, this.#seqKey, item.body, this.historySize, this.#channel)
        }
        const results = await pipeline.exec().catch((err: Error) => [[err, null]] as Array<[Error | null, unknown]>)
        let sent = 0
        for (const [err, id] of results ?? []) {
          if (err) break
          sent++
          this.#counters.published++
          batch[sent - 1].resolve(String(id))
        }
        // Items are taken off only once Redis confirmed them, so order survives a retry. A reply
        // lost with the connection can mean Redis ran it anyway: that event then appears twice.
        this.#outbox.splice(0, sent)
        this.#sending = 0
        if (sent < batch.length) await delay(retryDelay(attempt++))
        else attempt = 0
      }
    } finally {
      this.#flushing = false
    }
  }

  async subscribe (listener: (event: BrokerEvent) => void): Promise<void> {
    this.#listener = listener
    const sub = new Redis(this.#url, { ...connectionOptions('subscriber'), autoResubscribe: false })
    this.#sub = sub
    this.#setState('connecting')
    sub.on('error', (err) => this.#log('warn', { err: err.message }, 'redis subscriber connection error'))
    sub.on('close', () => {
      if (!this.#closed()) this.#setState('down')
    })
    sub.on('messageBuffer', (channel: Buffer, message: Buffer) => this.#onMessage(channel.toString(), message))
    // Subscribing ourselves on every `ready` (not ioredis' autoResubscribe) lets the repair start
    // only once the subscription stands, so nothing falls between the two.
    sub.on('ready', () => { this.#onSubscriberReady().catch((err) => this.#log('error', { err: err.message }, 'resubscribe failed')) })
    this.#canaryTimer = setInterval(() => this.#canary(), this.#canaryIntervalMs)
    this.#canaryTimer.unref()
  }

  async #onSubscriberReady (): Promise<void> {
    const sub = this.#sub
    if (!sub) return
    await sub.subscribe(this.#channel, this.#canaryChannel)
    this.#canaryUnansweredSince = 0 // canaries sent before went out with the old connection
    if (this.#lastId === undefined) {
      // Start from the newest event, so a connection lost before the first live one is repaired too.
      const [newest] = await this.#cmd.xrevrange(this.#streamKey, '+', '-', 'COUNT', 1).catch(() => [])
      if (newest && this.#lastId === undefined) {
        this.#lastId = newest[0]
        this.#lastSeq = Number(field(newest[1], 'seq'))
      }
    } else {
      await this.#repair()
    }
    this.#canary()
  }

  #onMessage (channel: string, message: Buffer): void {
    this.#heardAt = Date.now()
    if (channel === this.#canaryChannel) {
      const sentAt = Number(message.toString())
      this.#canaryUnansweredSince = 0
      this.#counters.canaryRttMs = this.#heardAt - sentAt
      this.#setState('ready')
      return
    }
    const space = message.indexOf(32)
    const seq = Number(message.toString('latin1', 0, space))
    const data = message.subarray(space + 1)
    const event = { id: idOf(data), data }
    if (this.#repairing) this.#held.push({ seq, event })
    else this.#accept(seq, event, true)
  }

  #accept (seq: number, event: BrokerEvent, mayRepair: boolean): void {
    if (this.#lastId !== undefined && compareIds(event.id, this.#lastId) <= 0) return // already delivered
    if (mayRepair && this.#lastSeq !== undefined && seq > this.#lastSeq + 1) {
      this.#held.push({ seq, event })
      this.#repair().catch((err) => this.#log('error', { err: err.message }, 'gap repair failed'))
      return
    }
    this.#lastId = event.id
    this.#lastSeq = seq
    this.#listener?.(event)
  }

  /**
   * Reads what was missed from the stream, delivers it, then what was held meanwhile. Live events
   * stay held until the read succeeds: delivering them first would move past the gap for good.
   */
  async #repair (): Promise<void> {
    if (this.#repairing || this.#lastId === undefined) return
    this.#repairing = true
    this.#counters.repairs++
    let repaired = 0
    try {
      for (let attempt = 0; !this.#closed(); attempt++) {
        try {
          repaired = await this.#deliverMissed()
          break
        } catch (err) {
          // Both connections reconnect on their own backoff: the subscriber may be back first.
          this.#log('warn', { err: (err as Error).message, attempt }, 'gap repair could not read the stream yet; retrying')
          await delay(retryDelay(attempt, 1000))
        }
      }
    } finally {
      this.#repairing = false
      this.#counters.repairedEvents += repaired
      if (repaired > 0) this.#log('info', { repaired, lastId: this.#lastId }, 'recovered missed events from the stream')
      const held = this.#held
      this.#held = []
      for (const { seq, event } of held) this.#accept(seq, event, false)
    }
  }

  /** Delivers every stream entry after the last delivered one; returns how many there were. */
  async #deliverMissed (): Promise<number> {
    let count = 0
    for (;;) {
      const page = await this.#cmd.xrange(this.#streamKey, `(${this.#lastId}`, '+', 'COUNT', PAGE)
      const firstSeq = page.length > 0 ? Number(field(page[0][1], 'seq')) : undefined
      if (count === 0 && firstSeq !== undefined && this.#lastSeq !== undefined && firstSeq > this.#lastSeq + 1) {
        // Away longer than the history covers: say so, as resume's `lost` does for a client.
        this.#counters.repairLost += firstSeq - this.#lastSeq - 1
        this.#log('warn', { lost: firstSeq - this.#lastSeq - 1, lastId: this.#lastId }, 'events missed while disconnected were already trimmed from the history')
      }
      for (const [id, fields] of page) this.#accept(Number(field(fields, 'seq')), { id, data: withId(id, field(fields, 'body')) }, false)
      count += page.length
      if (page.length < PAGE) return count
    }
  }

  /**
   * Publishes the time on this replica's own channel; a late return marks the broker down. Events
   * arriving count as proof of life too: under a backlog the canary queues behind them, and
   * reconnecting then would throw away what Redis has already queued for this subscriber.
   */
  #canary (): void {
    const now = Date.now()
    const silentFor = now - this.#heardAt
    if (this.#sub && this.#state === 'ready' && silentFor > this.#canaryTimeoutMs) {
      this.#setState('down')
    }
    // Redis took a canary and the subscriber heard nothing since: subscribed but deaf (a known
    // failure of long-lived pub/sub connections). Reconnect. A canary that could not be sent,
    // because the command connection is down, says nothing about the subscriber.
    const waited = now - this.#canaryUnansweredSince
    if (this.#sub?.status === 'ready' && this.#canaryUnansweredSince > 0 && waited > this.#canaryTimeoutMs &&
      now - this.#heardAt > this.#canaryTimeoutMs) {
      this.#counters.resubscribes++
      this.#canaryUnansweredSince = 0
      this.#log('warn', { lateMs: waited }, 'canary did not come back: reconnecting the subscriber')
      this.#sub.disconnect(true)
      return
    }
    if (this.#cmd.status !== 'ready') return
    if (this.#canaryUnansweredSince === 0) this.#canaryUnansweredSince = now
    this.#cmd.publish(this.#canaryChannel, String(now)).catch(() => {
      if (this.#canaryUnansweredSince === now) this.#canaryUnansweredSince = 0
    })
  }

  async history (sinceId: string): Promise<History> {
    // One transaction reads the entry at or before sinceId and the first page after it, so no
    // trim can fall between the two.
    type Entries = Array<[string, string[]]>
    const replies = await this.#cmd.multi()
      .xrevrange(this.#streamKey, sinceId, '-', 'COUNT', 1)
      .xrange(this.#streamKey, `(${sinceId}`, '+', 'COUNT', PAGE)
      .exec()
    const [atOrBefore, first] = (replies ?? []).map(([err, result]) => {
      if (err) throw err
      return result as Entries
    })
    const events: BrokerEvent[] = []
    for (let page = first; ;) {
      for (const [id, fields] of page) events.push({ id, data: withId(id, field(fields, 'body')) })
      if (page.length < PAGE) break
      page = await this.#cmd.xrange(this.#streamKey, `(${events[events.length - 1].id}`, '+', 'COUNT', PAGE)
    }
    // seq is contiguous, so a gap between the entry at or before sinceId and the first one after
    // it means events after sinceId were trimmed (MAXLEN trimming leaves no other trace: Redis
    // 7's max-deleted-entry-id only follows XDEL). When sinceId is itself the newest trimmed
    // entry, this says lost too: nothing tells that entry apart from the ones before it.
    const seqBefore = atOrBefore.length > 0 ? Number(field(atOrBefore[0][1], 'seq')) : 0
    const lost = first.length > 0 && Number(field(first[0][1], 'seq')) > seqBefore + 1
    return { events, lost }
  }

  onStateChange (listener: (state: BrokerState) => void): void {
    this.#events.on('state', listener)
  }

  stats (): Record<string, number> {
    return { ...this.#counters, outboxLength: this.#outbox.length }
  }

  async close (): Promise<void> {
    if (this.#closing) return
    this.#closing = true
    clearInterval(this.#canaryTimer)
    // Give a connected publisher a moment to hand over what it still holds.
    const deadline = Date.now() + 2000
    while (this.#outbox.length > 0 && this.#cmd.status === 'ready' && Date.now() < deadline) await delay(10)
    for (const item of this.#outbox.splice(0)) item.reject(new Error('broker closed before Redis took the event'))
    this.#setState('closed')
    await Promise.all([quit(this.#sub), quit(this.#cmd)])
  }

  #closed (): boolean { return this.#state === 'closed' }

  #setState (state: BrokerState): void {
    if (this.#state === state || this.#state === 'closed') return
    this.#state = state
    this.#events.emit('state', state)
  }
}

function connectionOptions (name: string): RedisOptions {
  return {
    connectionName: `fanout-${name}`,
    maxRetriesPerRequest: null,
    retryStrategy: (times) => 50 + retryDelay(times, 2000)
  }
}

function field (fields: string[], name: string): string {
  const at = fields.indexOf(name)
  return at >= 0 ? fields[at + 1] : ''
}

async function quit (client: Redis | undefined): Promise<void> {
  if (!client) return
  try {
    if (client.status === 'ready') await client.quit()
    else client.disconnect()
  } catch {
    client.disconnect()
  }
}

function delay (ms: number): Promise<void> {
  // Unref'd: the connections keep a running broker alive; a closed one should not wait on this.
  return new Promise((resolve) => setTimeout(resolve, ms).unref())
}
