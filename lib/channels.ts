// Channels: named streams, each with its own history, epoch and resume. A name's namespace (the
// part before its first `:`) carries the settings its channels share (docs/channels.md).
import type { Identity } from './auth.js'

/** The channel of the guest stream: `/guest`, the worker and `publish(body)` without a channel. */
export const GUEST_CHANNEL = 'guest'

/** Letters, digits and `_ . : @ -`, 1 to 128 of them: safe in a URL, a Redis key and a log line. */
export const CHANNEL_PATTERN = /^[A-Za-z0-9_.:@-]{1,128}$/

export function isChannel (name: unknown): name is string {
  return typeof name === 'string' && CHANNEL_PATTERN.test(name)
}

/** `room:42` → `room`; a name without `:` (`guest`) is in the default namespace, `''`. */
export function namespaceOf (channel: string): string {
  const colon = channel.indexOf(':')
  return colon < 0 ? '' : channel.slice(0, colon)
}

export type ChannelAction = 'subscribe' | 'publish'

/**
 * Decides whether a connection may subscribe to, or publish on, a channel; runs for every
 * `subscribe` and client `publish`, after `authorize` admitted the connection.
 */
export type AuthorizeChannel = (identity: Identity, channel: string, action: ChannelAction) => boolean | Promise<boolean>

/** The settings a namespace's channels share; each unset one is the plugin's own. */
export interface NamespaceOptions {
  /** Events kept per channel (`XADD … MAXLEN ~`). */
  historySize?: number
  /** Events older than this are trimmed (`MINID`), and a channel idle this long (plus `CHANNEL_IDLE_GRACE_MS`) vanishes; 0: kept by count only, never expires. */
  historyAgeMs?: number
  /** Whether clients may publish on its channels over their socket. [false] */
  clientPublish?: boolean
  /** Who may subscribe and publish; unset: the plugin's `authorizeChannel`, or everyone may subscribe. */
  authorizeChannel?: AuthorizeChannel
}

/** A namespace's settings, every one filled in. */
export interface ChannelSettings {
  readonly historySize: number
  readonly historyAgeMs: number
  readonly clientPublish: boolean
  readonly authorizeChannel: AuthorizeChannel | undefined
}

/**
 * An idle channel's keys outlive its newest event by its history age plus this: a client that was
 * away a little longer than the history age still learns, from the epoch, that it lost nothing.
 */
export const CHANNEL_IDLE_GRACE_MS = 10 * 60_000

/** Finds a channel's settings: its namespace's, over the defaults. */
export class ChannelRules {
  readonly #defaults: ChannelSettings
  readonly #namespaces = new Map<string, ChannelSettings>()

  constructor (defaults: ChannelSettings, namespaces: Readonly<Record<string, NamespaceOptions>> = {}) {
    this.#defaults = defaults
    for (const [name, options] of Object.entries(namespaces)) {
      this.#namespaces.set(name, Object.freeze({ ...defaults, ...definedOnly(options) }))
    }
  }

  of (channel: string): ChannelSettings {
    return this.#namespaces.get(namespaceOf(channel)) ?? this.#defaults
  }

  /**
   * Whether `identity` may take `action` on `channel`, asked in this order, each able to refuse:
   * the namespace's `clientPublish` (publish only); the token's `channels` claim, when the identity
   * has one; its namespace's hook (or the plugin's). Without a hook: subscribe yes, publish as
   * `clientPublish` says.
   */
  async allows (identity: Identity, channel: string, action: ChannelAction): Promise<boolean> {
    const settings = this.of(channel)
    if (action === 'publish' && !settings.clientPublish) return false
    if (claimsAllow(identity, channel, action) === false) return false
    if (settings.authorizeChannel === undefined) return true
    return await settings.authorizeChannel(identity, channel, action) === true
  }
}

/** Whether a grant list names `channel`: an exact name, or a prefix followed by `*` (`room:*`, `*`). */
export function grantMatches (patterns: readonly string[] | undefined, channel: string): boolean {
  if (patterns === undefined) return false
  return patterns.some((p) => p.endsWith('*') ? channel.startsWith(p.slice(0, -1)) : p === channel)
}

/**
 * What a signed token's `channels` claim (`{ subscribe: ['room:*'], publish: ['room:1'] }`) says
 * of `action` on `channel`: undefined when the identity has no such claim (the hooks decide alone),
 * else whether the claim's list for `action` names it (a missing list names nothing).
 */
/** A subscribe the connection's grants no longer allow by the time its channel was joined (a refresh). */
export class ChannelRefused extends Error {
  override name = 'ChannelRefused'
  constructor (readonly channel: string) { super(`may not subscribe to ${channel}`) }
}

export function claimsAllow (identity: Identity, channel: string, action: ChannelAction): boolean | undefined {
  const grants = identity.claims?.channels as Partial<Record<ChannelAction, string[]>> | undefined
  if (grants === undefined) return undefined
  return grantMatches(grants[action], channel)
}

function definedOnly<T extends object> (options: T): Partial<T> {
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as Partial<T>
}
