// The wire format of an event, in one place. An event travels as the exact JSON bytes every
// client receives; the broker splices the id it assigned in front of the publisher's body, so no
// replica ever parses or re-serialises an event to deliver it.

export interface EventBody {
  type: string
  [field: string]: unknown
}

export interface GuestEvent extends EventBody {
  type: 'guest'
  id: string
  guest: string
  time: string
  ts: number
}

/** One event as a broker hands it on: its id and the JSON bytes clients receive. */
export interface BrokerEvent {
  id: string
  data: Buffer
  /** Its WebSocket frame, built by the hub the first time it is sent, then reused. */
  frame?: Buffer
}

const ID_PREFIX = '{"id":"'

/** Ids look like Redis stream ids, `<ms>-<seq>`; both brokers make them so they compare alike. */
export const ID_PATTERN = /^\d{1,16}-\d{1,16}$/

export function isEventId (value: string): boolean {
  return ID_PATTERN.test(value)
}

/** Orders two event ids: negative, zero or positive, like a sort comparator. */
export function compareIds (a: string, b: string): number {
  const [aMs, aSeq] = splitId(a)
  const [bMs, bSeq] = splitId(b)
  return aMs !== bMs ? Math.sign(aMs - bMs) : Math.sign(aSeq - bSeq)
}

function splitId (id: string): [number, number] {
  const dash = id.indexOf('-')
  return [Number(id.slice(0, dash)), Number(id.slice(dash + 1))]
}

/** Serialises what a publisher hands in; the id is left to the broker. */
export function encodeBody (body: EventBody): string {
  if (typeof body !== 'object' || body === null || typeof body.type !== 'string') {
    throw new TypeError('an event must be an object with a string "type"')
  }
  if ('id' in body) throw new TypeError('an event\'s "id" is assigned by the broker')
  return JSON.stringify(body)
}

/** `{"type":…}` + id → `{"id":"<id>","type":…}`. The Redis Lua script does the same splice. */
export function withId (id: string, body: string): Buffer {
  return Buffer.from(`${ID_PREFIX}${id}",${body.slice(1)}`)
}

/** Reads the id back out of event bytes made by `withId`, without parsing the JSON. */
export function idOf (data: Buffer): string {
  const end = data.indexOf(34, ID_PREFIX.length) // the closing quote
  return data.toString('latin1', ID_PREFIX.length, end)
}
