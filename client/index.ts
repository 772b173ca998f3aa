// fastify-fanout/client: one connection to a fanout stream, for browsers and Node ≥ 20, with no
// runtime dependency. It reconnects with jittered backoff (1012: soon; 1013 and 503 + Retry-After:
// later; never for good), resumes every channel from its position and epoch, delivers each event
// once and in order, tells the app of gaps and lost history, and falls back to EventSource only
// while WebSockets fail and plain HTTP gets through, probing WebSocket again to go back.
// docs/client.md describes it; docs/protocol.md and docs/channels.md the protocol it speaks.
import type { AckMessage, FanoutEvent, GapMessage, SubscribedMessage } from '../lib/protocol.js'

export type { AckMessage, FanoutEvent, GapMessage, SubscribedMessage } from '../lib/protocol.js'

export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed'
export type TransportKind = 'websocket' | 'eventsource'

/** The connection changed state. */
export interface StateNotice {
  type: 'state'
  state: ConnectionState
  transport: TransportKind
  /** The close code of the WebSocket that ended (1006: cut, or never opened). */
  code?: number
  /** When the next attempt is made (ms). */
  retryInMs?: number
}

/** Something the server refused that no call of the app is waiting for. */
export interface ErrorNotice {
  type: 'error'
  error: FanoutError
}

/** What `client.on` hears: switch over `type`. */
export type ClientNotice = StateNotice | ErrorNotice

/** A refusal: `code` is the server's (`forbidden`, `too_big`, …) or the client's own (`disconnected`, `unsupported`, `closed`). */
export class FanoutError extends Error {
  constructor (readonly code: string, message: string, readonly channel?: string) {
    super(message)
    this.name = 'FanoutError'
  }
}

type Body = { type: string }

export interface SubscriptionHandlers<E extends Body> {
  /** Start after this id (`0-0`: the whole history the server holds) rather than at the newest. */
  since?: string
  /** Each event of the channel, once, in order. */
  onEvent (event: FanoutEvent<E>): void
  /** Events the server could not deliver and no history holds any more. */
  onGap? (gap: GapMessage): void
  /** A resume found events missing (trimmed, or the history was reset: a new epoch). */
  onLost? (subscribed: SubscribedMessage): void
  /** The subscription stands (again, after each reconnect): `replayed` events were recovered. */
  onSubscribed? (subscribed: SubscribedMessage): void
  /** The server refused the subscription for good (`forbidden`, `bad_channel`, `too_many`); it is dropped. */
  onError? (error: FanoutError): void
}

export interface Subscription {
  readonly channel: string
  /** The newest event id the app has of this channel (`0-0`: none yet); undefined before the first answer. */
  readonly position: string | undefined
  readonly epoch: string | undefined
  unsubscribe (): void
}

/** What a WebSocket constructor must provide: the browser's, or `ws`'s in Node. */
export interface WebSocketLike {
  readonly readyState: number
  binaryType: string
  onopen: ((event: any) => void) | null
  onclose: ((event: any) => void) | null
  onerror: ((event: any) => void) | null
  onmessage: ((event: any) => void) | null
  send (data: string | ArrayBuffer | Uint8Array): void
  close (code?: number, reason?: string): void
}
export type WebSocketConstructor = new (url: string, protocols?: string[]) => WebSocketLike

export interface EventSourceLike {
  readonly readyState: number
  onopen: ((event: any) => void) | null
  onerror: ((event: any) => void) | null
  onmessage: ((event: any) => void) | null
  addEventListener (type: string, listener: (event: any) => void): void
  close (): void
}
export type EventSourceConstructor = new (url: string) => EventSourceLike

export interface ClientOptions {
  /**
   * The stream: `https://host/stream`, `wss://…` or, in a page, a path. A list (tried in turn
   * after each failure) or a function of the attempt number picks another replica.
   */
  url: string | string[] | ((attempt: number) => string)
  /** Default: the global WebSocket (Node 20 has none: pass `ws`'s). */
  WebSocket?: WebSocketConstructor
  /** Default: the global EventSource, if any. Without one there is no fallback. */
  EventSource?: EventSourceConstructor | false
  /** Offered after `fanout.v1`, e.g. `fanout.token.<token>`. */
  protocols?: string[]
  /**
   * A signed token (JWT) for each connect (as the subprotocol `fanout.token.<jwt>`; an EventSource
   * trades it for a one-time ticket at `ticketUrl`), asked again before its `exp` to `refresh` in-band.
   */
  token?: () => string | Promise<string>
  /** Where an EventSource gets its ticket. [the url + `/ticket`] */
  ticketUrl?: string
  /**
   * The url is a single-channel stream such as `/guest`, carrying this channel alone: resumed
   * with `?since=`, no commands; text frames are logged by the server there.
   */
  single?: string
  /** How often a client on EventSource tries a WebSocket again (ms). [30000] */
  probeMs?: number
  /** 'eventsource': receive over EventSource from the start, and stay there. */
  transport?: TransportKind
}

export interface FanoutClient {
  readonly state: ConnectionState
  readonly transport: TransportKind
  subscribe<E extends Body = { type: string, [field: string]: unknown }> (channel: string, handlers: SubscriptionHandlers<E>): Subscription
  /** Publishes on a channel whose namespace has `clientPublish`; resolves with the event's id. */
  publish (channel: string, event: Body & Record<string, unknown>): Promise<string>
  /** A text frame (on a `single` stream such as `/guest` the server logs it). */
  send (text: string): Promise<void>
  /** A binary message saved by the server; resolves with its ack, or rejects with its error code. */
  upload (data: Blob | ArrayBuffer | Uint8Array): Promise<AckMessage>
  /** Listens to state changes and unclaimed errors; returns the function that stops it. */
  on (listener: (notice: ClientNotice) => void): () => void
  close (): void
}

const PROTOCOL = 'fanout.v1'
/** WebSocket opens that failed in a row, HTTP getting through, before EventSource is tried. */
const FALLBACK_AFTER = 3
/** Ahead of every id: a new channel on a reopened EventSource starts from the newest (clamped). */
const NEWEST = '9999999999999999-0'
/** The longest delay a timer takes. */
const MAX_TIMER_MS = 2 ** 31 - 1
const UPLOAD_CODES = ['disk_full', 'quota', 'too_big', 'empty', 'unauthorized', 'disabled', 'write_failed']
const SUBSCRIBE_FINAL = ['forbidden', 'bad_channel', 'too_many']

/** A JWT's `exp` (seconds), read (not verified: the server does that) to refresh before it. */
function expOf (token: string): number | undefined {
  try {
    const exp = JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/'))).exp
    return typeof exp === 'number' ? exp : undefined
  } catch {
    return undefined
  }
}

/** Orders two ids `<ms>-<seq>` as decimal strings (lib/event.ts compareIds). */
export function compareIds (a: string, b: string): number {
  const [x, y] = [a, b].map((id) => id.split('-').map((n) => n.replace(/^0+(?=\d)/, '')))
  const cmp = (p: string, q: string): number => p.length !== q.length ? Math.sign(p.length - q.length) : p < q ? -1 : p > q ? 1 : 0
  return cmp(x[0], y[0]) || cmp(x[1], y[1])
}

interface Channel {
  name: string
  h: SubscriptionHandlers<Body>
  position?: string
  epoch?: string
  /** Subscribed on the current connection, or its subscribe on its way. */
  sent?: boolean
  /** Its subscribe command awaits the answer. */
  asked?: boolean
  /**
   * The uids of its last events: one published again under a new id after a failover is dropped.
   * `order` holds them as they came, the oldest at `next` once full (a Set's first entry deleted
   * leaves a hole that every later lookup of the first walks past).
   */
  uids?: { seen: Set<string>, order: string[], next: number }
}

/** Uids remembered per channel: a repeat follows its original within the publisher's retry. */
const REMEMBERED_UIDS = 1024

interface Pending<T> { resolve (value: T): void, reject (err: FanoutError): void, channel?: string, ref?: number }

const random = Math.random

export function createClient (options: ClientOptions): FanoutClient {
  const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket
  const ES = options.EventSource === false ? undefined : options.EventSource ?? (globalThis as { EventSource?: EventSourceConstructor }).EventSource
  if (WS === undefined) throw new TypeError('fastify-fanout/client: no WebSocket here: pass one, e.g. { WebSocket } from \'ws\'')
  const single = options.single
  const protocols = [PROTOCOL, ...options.protocols ?? []]
  const channels = new Map<string, Channel>()
  const listeners = new Set<(notice: ClientNotice) => void>()
  // Requests on the current WebSocket awaiting their answer, in the order sent.
  let uploads: Array<Pending<AckMessage>> = []
  let publishes: Array<Pending<string>> = []
  let waiting: Array<Pending<void>> = []
  let socket: WebSocketLike | undefined
  let source: EventSourceLike | undefined
  let state: ConnectionState = 'connecting'
  let transport: TransportKind = 'websocket'
  let attempt = 0
  let failedOpens = 0
  let urlIndex = 0
  let ref = 0
  let timer: ReturnType<typeof setTimeout> | undefined
  let probeTimer: ReturnType<typeof setTimeout> | undefined
  let refreshTimer: ReturnType<typeof setTimeout> | undefined

  const emit = (notice: ClientNotice): void => { for (const listener of [...listeners]) listener(notice) }
  const setState = (next: ConnectionState, extra: Partial<StateNotice> = {}): void => {
    state = next
    emit({ type: 'state', state, transport, ...extra })
  }

  /** The url of this attempt, as `ws:` or `http:` (relative ones against the page). */
  function urlFor (scheme: 'ws' | 'http'): URL {
    const u = options.url
    const given = typeof u === 'function' ? u(urlIndex) : Array.isArray(u) ? u[urlIndex % u.length] : u
    const url = new URL(given, (globalThis as { location?: { href: string } }).location?.href)
    const secure = /^(https|wss):$/.test(url.protocol)
    url.protocol = `${scheme}${secure ? 's' : ''}:`
    return url
  }

  function resumeSingle (url: URL): URL {
    const ch = single === undefined ? undefined : channels.get(single)
    if (ch?.position !== undefined) url.searchParams.set('since', ch.position)
    if (ch?.epoch !== undefined) url.searchParams.set('epoch', ch.epoch)
    return url
  }

  // ---- WebSocket ----

  /** A fresh token from `options.token`, or undefined (after telling the app) when it failed. */
  async function freshToken (): Promise<string | undefined> {
    try {
      return await options.token!()
    } catch (err) {
      emit({ type: 'error', error: new FanoutError('token', `token(): ${(err as Error).message}`) })
    }
  }

  /** Refreshes in-band a little before the token's `exp` (seconds): a third of what is left, at most 30 s, before. */
  function scheduleRefresh (exp: number | undefined): void {
    clearTimeout(refreshTimer)
    if (exp === undefined || options.token === undefined) return
    const left = exp * 1000 - Date.now()
    const wait = Math.max(0, left - Math.min(30_000, left / 3))
    // Timers hold at most 2^31-1 ms (24.8 days): a token good for longer is looked at again then.
    if (wait > MAX_TIMER_MS) {
      refreshTimer = setTimeout(() => scheduleRefresh(exp), MAX_TIMER_MS)
      return
    }
    refreshTimer = setTimeout(async () => {
      const token = await freshToken()
      if (token !== undefined && socket?.readyState === 1 && transport === 'websocket') socket.send(JSON.stringify({ type: 'refresh', token }))
    }, wait)
  }

  function openSocket (probe = false): void {
    if (options.token === undefined) return dial(probe, protocols)
    freshToken().then((token) => {
      if (state === 'closed') return
      if (token !== undefined) return dial(probe, [...protocols, `fanout.token.${token}`], token)
      if (!probe) lost(1006, false)
    })
  }

  function dial (probe: boolean, offered: string[], token?: string): void {
    const ws = new WS!(resumeSingle(urlFor('ws')).href, offered)
    ws.binaryType = 'arraybuffer'
    let opened = false
    // A handshake a proxy holds forever counts as a failed open.
    const guard = setTimeout(() => ws.close(), 10_000)
    ws.onerror = () => {}
    ws.onopen = () => {
      clearTimeout(guard)
      opened = true
      adopt(ws)
      if (token !== undefined) scheduleRefresh(expOf(token))
    }
    ws.onclose = ({ code }: { code: number }) => {
      clearTimeout(guard)
      if (socket === ws) lost(code, opened)
      else if (probe && !opened && transport === 'eventsource') scheduleProbe()
    }
    ws.onmessage = ({ data }: { data: unknown }) => {
      if (socket !== ws || typeof data !== 'string') return
      attempt = 0 // only a connection that delivers resets the backoff, not one cut at once
      let message: Record<string, unknown>
      try {
        message = JSON.parse(data)
      } catch {
        return
      }
      handle(message)
    }
    if (!probe) socket = ws
  }

  /** A WebSocket is open: it becomes the connection, and every channel is resumed on it. */
  function adopt (ws: WebSocketLike): void {
    socket = ws
    failedOpens = 0
    clearTimeout(probeTimer)
    if (source !== undefined) {
      source.close()
      source = undefined
    }
    transport = 'websocket'
    for (const ch of channels.values()) {
      ch.sent = ch.asked = false
      subscribeOn(ch)
    }
    setState('open')
    for (const w of waiting.splice(0)) w.resolve()
  }

  function subscribeOn (ch: Channel): void {
    if (socket?.readyState !== 1 || transport !== 'websocket' || ch.sent) return
    ch.sent = true
    if (single !== undefined) return // the url subscribed it
    ch.asked = true
    const command: Record<string, string> = { type: 'subscribe', channel: ch.name }
    if (ch.position !== undefined) command.since = ch.position
    if (ch.epoch !== undefined) command.epoch = ch.epoch
    socket.send(JSON.stringify(command))
  }

  function lost (code: number, opened: boolean): void {
    socket = undefined
    clearTimeout(refreshTimer)
    fail(uploads, 'disconnected', 'the connection closed before the answer')
    fail(publishes, 'disconnected', 'the connection closed before the answer: the event may or may not be published')
    uploads = []
    publishes = []
    if (state === 'closed') return
    failedOpens = opened ? 0 : failedOpens + 1
    urlIndex++
    let delay: number
    if (code === 1012) delay = 250 + random() * 1000 // a restart: the next replica is up, or soon
    else if (code === 1013) delay = 5000 + random() * 5000 // try again later
    else delay = 100 + random() * Math.min(30_000, 500 * 2 ** attempt++)
    setState('reconnecting', { code, retryInMs: delay })
    if (opened) return retryIn(delay)
    // It never opened: ask plain HTTP whether the server is there, and what it says.
    probeHttp().then((status) => {
      if (state === 'closed' || socket !== undefined) return
      if (typeof status === 'number' && status > 0) delay = Math.max(delay, status * 1000 + random() * 1000) // 503 + Retry-After
      else if (status === 'up' && ES !== undefined && failedOpens >= FALLBACK_AFTER) return listen()
      retryIn(delay)
    })
  }

  function retryIn (delay: number): void {
    clearTimeout(timer)
    timer = setTimeout(() => { if (state !== 'closed' && transport === 'websocket') openSocket() }, delay)
  }

  /** 'up' when the server answered HTTP, its Retry-After (s) on a 503, 'down' when nothing answered. */
  async function probeHttp (): Promise<'up' | 'down' | number> {
    try {
      const res = await fetch(urlFor('http'), { cache: 'no-store' })
      res.body?.cancel().catch(() => {})
      const after = Number(res.headers.get('retry-after'))
      return res.status === 503 && after > 0 ? after : 'up'
    } catch {
      return 'down'
    }
  }

  // ---- EventSource ----

  /** Receives over EventSource: events only, reopened whenever the channel set changes. */
  function listen (): void {
    if (options.token === undefined) return listenWith()
    transport = 'eventsource'
    // An EventSource sends no headers: the token buys a one-time ticket for its url.
    freshToken().then(async (token) => {
      const res = await fetch(options.ticketUrl ?? `${urlFor('http').href.replace(/[?#].*$/, '')}/ticket`, { method: 'POST', headers: { authorization: `Bearer ${token}` } })
      if (!res.ok) throw new Error(`ticket: ${res.status}`)
      return ((await res.json()) as { ticket: string }).ticket
    }).then((ticket) => { if (transport === 'eventsource' && state !== 'closed') listenWith(ticket) }, () => {
      const delay = 1000 + random() * Math.min(30_000, 1000 * 2 ** attempt++)
      setState('reconnecting', { retryInMs: delay })
      clearTimeout(timer)
      timer = setTimeout(() => { if (transport === 'eventsource' && state !== 'closed') listen() }, delay)
    })
  }

  function listenWith (ticket?: string): void {
    transport = 'eventsource'
    fail(waiting, 'unsupported', 'this connection is an EventSource, which only receives')
    waiting = []
    source?.close()
    source = undefined
    scheduleProbe()
    const url = urlFor('http')
    if (single !== undefined) {
      resumeSingle(url)
    } else {
      const list = [...channels.values()]
      if (list.length === 0) return setState('open')
      for (const ch of list) url.searchParams.append('channel', ch.name)
      url.searchParams.set('since', list.map((ch) => `${ch.position ?? NEWEST}.${ch.epoch ?? ''}`).join(','))
    }
    if (ticket !== undefined) url.searchParams.set('ticket', ticket)
    const es = new ES!(url.href)
    source = es
    for (const ch of channels.values()) ch.sent = true
    es.onopen = () => setState('open')
    es.onmessage = (e: { data: string }) => { if (source === es) handle(JSON.parse(e.data)) }
    for (const type of ['subscribed', 'gap', 'resume']) es.addEventListener(type, (e: { data: string }) => { if (source === es) handle(JSON.parse(e.data)) })
    es.onerror = () => {
      if (source !== es || state === 'closed') return
      if (es.readyState !== 2) return setState('reconnecting') // the browser retries with Last-Event-ID itself
      // Refused (not a 200): the browser gave up; reopen later, from our own positions.
      es.close()
      source = undefined
      const delay = 1000 + random() * Math.min(30_000, 1000 * 2 ** attempt++)
      setState('reconnecting', { retryInMs: delay })
      clearTimeout(timer)
      timer = setTimeout(() => { if (transport === 'eventsource' && state !== 'closed') listen() }, delay)
    }
  }

  /** The channel set changed: one reopen for every change made in this turn. */
  let relistening = false
  function relisten (): void {
    if (relistening) return
    relistening = true
    queueMicrotask(() => {
      relistening = false
      if (transport === 'eventsource' && state !== 'closed') listen()
    })
  }

  function scheduleProbe (): void {
    clearTimeout(probeTimer)
    if (options.transport === 'eventsource') return
    probeTimer = setTimeout(() => { if (transport === 'eventsource' && state !== 'closed') openSocket(true) }, (options.probeMs ?? 30_000) * (0.75 + random() / 2))
  }

  // ---- messages ----

  function handle (m: Record<string, unknown>): void {
    const name = m.channel as string | undefined
    const ch = name === undefined ? undefined : channels.get(name)
    if (typeof m.id === 'string' && typeof m.epoch === 'string' && ch !== undefined) {
      // An event: once, in order, whatever a reconnect replays.
      if (ch.position !== undefined && compareIds(m.id, ch.position) <= 0) return
      ch.position = m.id
      ch.epoch = m.epoch
      if (typeof m.uid === 'string') {
        const uids = ch.uids ??= { seen: new Set(), order: [], next: 0 }
        if (uids.seen.has(m.uid)) return // had it already, under the id it had before a failover
        const oldest = uids.order[uids.next]
        if (oldest !== undefined) uids.seen.delete(oldest)
        uids.order[uids.next] = m.uid
        uids.next = (uids.next + 1) % REMEMBERED_UIDS
        uids.seen.add(m.uid)
      }
      return ch.h.onEvent(m as never)
    }
    switch (m.type) {
      case 'resume': // a single stream's answer to ?since=
        if (ch === undefined && single !== undefined) {
          const s = channels.get(single)
          if (s !== undefined) subscribed(s, { ...m, type: 'subscribed', channel: single, position: s.position ?? '0-0' } as unknown as SubscribedMessage)
        }
        break
      case 'subscribed':
        if (ch !== undefined) subscribed(ch, m as unknown as SubscribedMessage)
        break
      case 'gap':
        ch?.h.onGap?.(m as unknown as GapMessage)
        break
      case 'ack':
        uploads.shift()?.resolve(m as unknown as AckMessage)
        break
      case 'published':
        settle(publishes, (p) => p.ref === m.ref)?.resolve(m.id as string)
        break
      case 'refreshed':
        scheduleRefresh(m.exp as number)
        break
      case 'error': {
        const error = new FanoutError(m.code as string, m.message as string, name)
        // A refused publish: the server echoes its ref.
        const publish = m.ref === undefined ? undefined : settle(publishes, (p) => p.ref === m.ref)
        if (publish !== undefined) return publish.reject(error)
        if (name === undefined) {
          if (UPLOAD_CODES.includes(error.code)) return uploads.shift()?.reject(error)
        } else if (ch?.asked) {
          // A subscribe refused: for good, or (unavailable) for now.
          if (SUBSCRIBE_FINAL.includes(error.code)) {
            channels.delete(name)
            return ch.h.onError ? ch.h.onError(error) : emit({ type: 'error', error })
          }
          ch.asked = false
          if (error.code === 'unavailable') {
            ch.sent = false
            setTimeout(() => subscribeOn(ch), 500 + random() * 2000)
            return
          }
        }
        emit({ type: 'error', error })
      }
    }
  }

  function subscribed (ch: Channel, m: SubscribedMessage): void {
    ch.asked = false
    if (ch.position === undefined || compareIds(m.position, ch.position) > 0) ch.position = m.position
    ch.epoch = m.epoch ?? ch.epoch
    if (m.lost) ch.h.onLost?.(m)
    ch.h.onSubscribed?.(m)
  }

  function settle<T> (list: Array<Pending<T>>, match: (p: Pending<T>) => boolean): Pending<T> | undefined {
    const i = list.findIndex(match)
    return i < 0 ? undefined : list.splice(i, 1)[0]
  }

  function fail (list: Array<Pending<never>>, code: string, message: string): void {
    for (const p of list.splice(0)) p.reject(new FanoutError(code, message, p.channel))
  }

  /** Resolves once a WebSocket is open to send on. */
  function ready (): Promise<void> {
    if (state === 'closed') return Promise.reject(new FanoutError('closed', 'the client is closed'))
    if (transport === 'eventsource') return Promise.reject(new FanoutError('unsupported', 'this connection is an EventSource (WebSockets do not get through), which only receives'))
    if (socket?.readyState === 1 && state === 'open') return Promise.resolve()
    return new Promise((resolve, reject) => waiting.push({ resolve, reject }))
  }

  if (options.transport === 'eventsource' && ES !== undefined) listen()
  else openSocket()

  return {
    get state () { return state },
    get transport () { return transport },
    subscribe<E extends Body> (name: string, h: SubscriptionHandlers<E>): Subscription {
      if (channels.has(name)) throw new FanoutError('already_subscribed', `already subscribed to ${name}`, name)
      if (single !== undefined && name !== single) throw new FanoutError('unsupported', `this stream carries the channel ${single} alone`, name)
      const ch: Channel = { name, h: h as unknown as SubscriptionHandlers<Body>, position: h.since }
      channels.set(name, ch)
      if (transport === 'eventsource' && single === undefined) relisten()
      else subscribeOn(ch)
      return {
        channel: name,
        get position () { return ch.position },
        get epoch () { return ch.epoch },
        unsubscribe () {
          if (channels.get(name) !== ch) return
          channels.delete(name)
          if (transport === 'eventsource') {
            if (single === undefined) relisten()
          } else if (ch.sent && socket?.readyState === 1 && single === undefined) {
            socket.send(JSON.stringify({ type: 'unsubscribe', channel: name }))
          }
        }
      }
    },
    async publish (channel, event) {
      if (single !== undefined) throw new FanoutError('unsupported', 'a single stream takes no publish commands: use /stream', channel)
      await ready()
      return new Promise<string>((resolve, reject) => {
        publishes.push({ resolve, reject, channel, ref: ++ref })
        socket!.send(JSON.stringify({ type: 'publish', channel, event, ref }))
      })
    },
    async send (text) {
      if (single === undefined) throw new FanoutError('unsupported', 'on /stream text frames are commands: send() needs a single stream such as /guest')
      await ready()
      socket!.send(text)
    },
    async upload (data) {
      const bytes = data instanceof Uint8Array || data instanceof ArrayBuffer ? data : await data.arrayBuffer()
      await ready()
      return new Promise<AckMessage>((resolve, reject) => {
        uploads.push({ resolve, reject })
        socket!.send(bytes)
      })
    },
    on (listener) {
      listeners.add(listener)
      return () => listeners.delete(listener)
    },
    close () {
      if (state === 'closed') return
      clearTimeout(timer)
      clearTimeout(probeTimer)
      clearTimeout(refreshTimer)
      setState('closed')
      socket?.close(1000)
      source?.close()
      source = undefined
      lost(1000, true)
      fail(waiting, 'closed', 'the client is closed')
    }
  }
}
