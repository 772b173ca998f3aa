// The wire protocol clients see, in one place: subprotocol names, close codes, control messages
// and the event shape. docs/protocol.md describes the same things for people.

/** The subprotocol a client asks for to get control messages (acks, errors, resume status). */
export const PROTOCOL = 'fanout.v1'

/** Browsers cannot set headers on a WebSocket: they may present a token as `fanout.token.<token>`. */
export const TOKEN_PROTOCOL_PREFIX = 'fanout.token.'

/**
 * The close codes this project sends itself (RFC 6455 §7.4.1, IANA registry; 4000–4999 are the
 * application's own). ws sends 1002, 1007 and 1009 on its own for malformed, non-UTF-8 and
 * oversize frames.
 */
export const CloseCode = {
  POLICY: 1008,
  RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
  /** The connection's token reached its `exp` without a `refresh`: reconnect with a new token. */
  TOKEN_EXPIRED: 4001,
  /** The connection's token was revoked (by its `jti`, or its user's cut-off). */
  TOKEN_REVOKED: 4003
} as const

/** A peer that does not answer a close the server started is dropped after this (RFC 6455 §7.1.7). */
export const CLOSE_GRACE_MS = 1000

/**
 * An event as clients receive it: the fields its publisher gave, after the `id` the broker
 * assigned and the `epoch` of the history it belongs to (a new epoch: a new history, whose ids
 * cannot be compared with the old one's), and through Redis its `uid`: the publisher's own name
 * for it, the same if a failover made Redis write it again under another id. `T` is the body you
 * publish, e.g. `FanoutEvent<{ type: 'news', text: string }>`.
 */
export type FanoutEvent<T extends { type: string } = { type: string, [field: string]: unknown }> = T & { id: string, epoch: string, channel: string, uid?: string }

/** The tutorial's event, as the guest publisher makes it. */
export type GuestEvent = FanoutEvent<{ type: 'guest', guest: string, time: string, ts: number }>

export type UploadErrorCode = 'disk_full' | 'quota' | 'too_big' | 'empty' | 'unauthorized' | 'disabled' | 'write_failed'

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

/** After the replay of a resuming connection. */
export interface ResumeMessage {
  type: 'resume'
  since: string
  /** Events sent from the history. */
  replayed: number
  /** Events after `since` are not in the history: trimmed, or `since` is from an earlier epoch. */
  lost: boolean
  /** `since` was ahead of the newest event: the replay started from the newest. */
  clamped: boolean
  /** The history's epoch; null while it has none yet. */
  epoch: string | null
}

/**
 * Events this replica could not deliver and no history holds any more, told in order, before the
 * events after them.
 */
export interface GapMessage {
  type: 'gap'
  /** The channel that lost them. */
  channel: string
  /** The last event delivered before the gap; null when there was none. */
  after: string | null
  /** How many were lost; null when nobody can tell. */
  lost: number | null
  reason: 'trimmed' | 'history_reset'
}

/** Why a channel command was refused; the socket stays open. */
export type ChannelErrorCode =
  | 'bad_channel' // not a channel name (docs/channels.md)
  | 'forbidden' // authorizeChannel said no, the token's channels claim does not grant it, or clients may not publish there
  | 'too_many' // the connection is at maxChannelsPerConnection
  | 'already_subscribed'
  | 'not_subscribed'
  | 'bad_request' // not a command this server knows
  | 'publish_failed' // the broker could not take the event
  | 'unavailable' // the broker cannot place the channel now: try again

/** A command on `/stream` was refused. */
export interface ChannelErrorMessage {
  type: 'error'
  code: ChannelErrorCode
  /** The channel the command named, when it named one. */
  channel?: string
  message: string
  /** A refused `publish`'s own `ref`, echoed. */
  ref?: string | number
}

/**
 * A subscription stands: events of the channel follow. With `since`, it comes after the replay,
 * which is in order before it.
 */
export interface SubscribedMessage {
  type: 'subscribed'
  channel: string
  /** The channel's epoch; null while it has no history. */
  epoch: string | null
  /** The newest event of the channel this client has (or `0-0`): resume from here. */
  position: string
  replayed: number
  /** Events after `since` are not in the history any more (or `since` is of an earlier epoch). */
  lost: boolean
  /** `since` was ahead of the newest event. */
  clamped: boolean
}

export interface UnsubscribedMessage {
  type: 'unsubscribed'
  channel: string
}

/** A client's publish was taken: `id` is its event id; `ref` echoes the command's. */
export interface PublishedMessage {
  type: 'published'
  channel: string
  id: string
  ref?: string | number
}

/** A `refresh` was taken: the connection now lasts until the new token's `exp` (seconds since the epoch). */
export interface RefreshedMessage {
  type: 'refreshed'
  exp: number
}

/** A `refresh` was refused (bad, expired, revoked, or another `sub`); the old token's deadline stands. */
export interface TokenErrorMessage {
  type: 'error'
  code: 'token_refused'
  message: string
}

/** Every message the server sends a `fanout.v1` client besides events (an EventSource gets them as named events). */
export type ControlMessage = AckMessage | ErrorMessage | ResumeMessage | GapMessage | ChannelErrorMessage | SubscribedMessage | UnsubscribedMessage | PublishedMessage | RefreshedMessage | TokenErrorMessage

/** What a `fanout.v1` client sends on `/stream` (as text frames of JSON). */
export type ClientCommand =
  | { type: 'subscribe', channel: string, since?: string, epoch?: string }
  | { type: 'unsubscribe', channel: string }
  | { type: 'publish', channel: string, event: { type: string, [field: string]: unknown }, ref?: string | number }
  | { type: 'refresh', token: string }

/**
 * Everything a `fanout.v1` client of `/guest` can receive: events (`E`: your events; the guest
 * event by default) and control messages. Tell them apart by `type`, in an exhaustive `switch`.
 */
export type ServerMessage<E extends FanoutEvent = GuestEvent> = E | AckMessage | ErrorMessage | ResumeMessage | GapMessage | RefreshedMessage | TokenErrorMessage

/** Everything a `fanout.v1` client of `/stream` can receive: the events of its channels and the answers to its commands. */
export type StreamMessage<E extends FanoutEvent = FanoutEvent> =
  E | AckMessage | ErrorMessage | ChannelErrorMessage | GapMessage | SubscribedMessage | UnsubscribedMessage | PublishedMessage | RefreshedMessage | TokenErrorMessage
