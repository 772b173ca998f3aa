// The wire protocol clients see, in one place: subprotocol names, close codes, control messages
// and the event shape. The README's "Protocol" section describes the same things for people.

/** The subprotocol a client asks for to get control messages (acks, errors, resume status). */
export const PROTOCOL = 'fanout.v1'

/** Browsers cannot set headers on a WebSocket: they may present a token as `fanout.token.<token>`. */
export const TOKEN_PROTOCOL_PREFIX = 'fanout.token.'

/**
 * The close codes this project sends itself (RFC 6455 §7.4.1, IANA registry). ws sends 1002,
 * 1007 and 1009 on its own for malformed, non-UTF-8 and oversize frames.
 */
export const CloseCode = {
  POLICY: 1008,
  RESTART: 1012,
  TRY_AGAIN_LATER: 1013
} as const

/** A peer that does not answer a close the server started is dropped after this (RFC 6455 §7.1.7). */
export const CLOSE_GRACE_MS = 1000

/**
 * An event as clients receive it: the fields its publisher gave, after the `id` the broker
 * assigned. `T` is the body you publish, e.g. `FanoutEvent<{ type: 'news', text: string }>`.
 */
export type FanoutEvent<T extends { type: string } = { type: string, [field: string]: unknown }> = T & { id: string }

/** The tutorial's event, as the guest publisher makes it. */
export type GuestEvent = FanoutEvent<{ type: 'guest', guest: string, time: string, ts: number }>

export type UploadErrorCode = 'disk_full' | 'quota' | 'too_big' | 'unauthorized' | 'disabled' | 'write_failed'

/** An upload was saved; `id` is the server-chosen file name. */
export interface AckMessage {
  type: 'ack'
  id: string
  name: string
  bytes: number
  sha256: string
  mime: string
}

/** An upload was refused; nothing was written. */
export interface ErrorMessage {
  type: 'error'
  code: UploadErrorCode
  message: string
}

/** After the replay of a resuming connection; `lost`: events after `since` had left the history. */
export interface ResumeMessage {
  type: 'resume'
  since: string
  replayed: number
  lost: boolean
}

/** What a `fanout.v1` WebSocket client (or an EventSource, as named events) receives besides events. */
export type ControlMessage = AckMessage | ErrorMessage | ResumeMessage
