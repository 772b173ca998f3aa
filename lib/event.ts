// The wire format of an event, in one place. An event travels as the exact JSON bytes every
// client receives; the broker splices the id it assigned and the history's epoch in front of the
// publisher's body, so no replica ever parses or re-serialises an event to deliver it.
import { randomBytes } from 'node:crypto'

export interface EventBody {
  type: string
  [field: string]: unknown
}

/** One event as a broker hands it on: its id and the JSON bytes clients receive. */
export interface BrokerEvent {
  id: string
  data: Buffer
  /** Its position in its epoch's contiguous sequence (1, 2, …), where the broker knows it. */
  seq?: number
  /** The history this event belongs to (docs/protocol.md, "Events"). */
  epoch?: string
  /** Its WebSocket frame, built by the hub the first time it is sent, then reused. */
  frame?: Buffer
  /** Per transport, the frames of this event and those after it in a replay, joined once for every resuming client. */
  blocks?: Map<object, FrameBlock>
}

export interface FrameBlock { frames: Buffer, count: number, lastId: string }

const ID_PREFIX = '{"id":"'
const EPOCH_PREFIX = '","epoch":"'
const CHANNEL_PREFIX = '","channel":"'
const UID_PREFIX = '","uid":"'

/** The most events one read of a history returns (a replay reads page by page). */
export const HISTORY_PAGE = 500

/** A fresh history's name: 8 characters, unlikely ever to repeat. */
export function newEpoch (): string {
  return randomBytes(6).toString('base64url')
}

/** Ids look like Redis stream ids, `<ms>-<seq>`; both brokers make them so they compare alike. */
export const ID_PATTERN = /^\d{1,16}-\d{1,16}$/

/**
 * Orders two event ids: negative, zero or positive, like a sort comparator. Compared as decimal
 * strings, not Numbers: a forged `since` may hold more digits than a double keeps exactly.
 */
export function compareIds (a: string, b: string): number {
  const dashA = a.indexOf('-')
  const dashB = b.indexOf('-')
  return compareDecimal(a.slice(0, dashA), b.slice(0, dashB)) || compareDecimal(a.slice(dashA + 1), b.slice(dashB + 1))
}

function compareDecimal (a: string, b: string): number {
  const x = a.replace(/^0+(?=\d)/, '')
  const y = b.replace(/^0+(?=\d)/, '')
  if (x.length !== y.length) return Math.sign(x.length - y.length)
  return x < y ? -1 : x > y ? 1 : 0
}

/** Serialises what a publisher hands in; the id and the epoch are left to the broker. */
export function encodeBody (body: EventBody): string {
  if (typeof body !== 'object' || body === null || typeof body.type !== 'string' || body.type === '') {
    throw new TypeError('an event must be an object with a non-empty string "type"')
  }
  if ('id' in body || 'epoch' in body || 'channel' in body || 'uid' in body) throw new TypeError('an event\'s "id", "epoch", "channel" and "uid" are set by the broker')
  return JSON.stringify(body)
}

/**
 * `{"type":…}` → `{"id":"<id>","epoch":"<epoch>","channel":"<channel>","uid":"<uid>","type":…}`
 * (`uid` where the publisher gave one). The Redis publish script makes the same bytes. Channel
 * names and uids need no escaping (lib/channels.ts, Outbox).
 */
export function withId (id: string, epoch: string, channel: string, body: string, uid = ''): Buffer {
  const identity = uid === '' ? '' : `${UID_PREFIX}${uid}`
  return Buffer.from(`${ID_PREFIX}${id}${EPOCH_PREFIX}${epoch}${CHANNEL_PREFIX}${channel}${identity}",${body.slice(1)}`)
}

/**
 * Reads the uid back out of event bytes made by `withId`: the field right after the channel (a
 * body cannot hold one of its own, encodeBody refuses it), or '' when the event has none.
 */
export function uidOf (data: Buffer): string {
  const channel = data.indexOf(CHANNEL_PREFIX, ID_PREFIX.length) + CHANNEL_PREFIX.length
  const end = data.indexOf(34, channel) // the channel's closing quote
  if (data.toString('latin1', end, end + UID_PREFIX.length) !== UID_PREFIX) return ''
  const start = end + UID_PREFIX.length
  return data.toString('latin1', start, data.indexOf(34, start))
}

/** Reads the id back out of event bytes made by `withId`, without parsing the JSON. */
export function idOf (data: Buffer): string {
  const end = data.indexOf(34, ID_PREFIX.length) // the closing quote
  return data.toString('latin1', ID_PREFIX.length, end)
}

/** Reads the epoch back out of event bytes made by `withId`. */
export function epochOf (data: Buffer): string {
  const start = data.indexOf(34, ID_PREFIX.length) + EPOCH_PREFIX.length
  return data.toString('latin1', start, data.indexOf(34, start))
}
