// Signed connection tokens (JWT, docs/security.md "Signed tokens"): verified with jose against the
// key and algorithms of the configuration, never the token's own header; the channels a token
// grants; and the shared state tokens need beyond their signature: revocations and one-time tickets.
import { createPublicKey, createSecretKey, randomBytes, type KeyObject } from 'node:crypto'
import type { IncomingHttpHeaders } from 'node:http'
import { createRemoteJWKSet, errors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from 'jose'
import type { Identity } from './auth.js'
import type { Client } from './hub.js'
import { CloseCode, TOKEN_PROTOCOL_PREFIX } from './protocol.js'

/** The settings of signed tokens: one key source (a secret, a public key or a JWKS URL), and the checks. */
export interface TokenSettings {
  jwtSecret?: string
  jwtPublicKey?: string
  jwksUrl?: string
  jwtAlgorithms?: readonly string[]
  jwtAudience?: string
  jwtIssuer?: string
}

/** What a token's `channels` claim grants: exact names, or prefixes ending in `*` (`room:*`). */
export interface ChannelGrants {
  subscribe?: string[]
  publish?: string[]
}

/** A verified token's claims; `sub` and `exp` are always there. */
export interface TokenClaims extends JWTPayload {
  sub: string
  exp: number
  channels?: ChannelGrants
}

/** The claim that names the channels a token grants (lib/channels.ts reads it). */
export const CHANNELS_CLAIM = 'channels'

/** A token refused: `reason` is said to the client (401) and logged; the token itself never is. */
export class TokenError extends Error {
  override name = 'TokenError'
}

/** The least time between two fetches of the JWK set. */
export const JWKS_COOLDOWN_MS = 5000

const HMAC = ['HS256', 'HS384', 'HS512']
const ASYMMETRIC = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519']

/** Whether any of the token settings is given: then the built-in `authorize` verifies tokens. */
export function tokensConfigured (s: TokenSettings): boolean {
  return s.jwtSecret !== undefined || s.jwtPublicKey !== undefined || s.jwksUrl !== undefined
}

/**
 * The key source and the algorithms, checked together; a message naming the settings when they do
 * not fit (two key sources, an HMAC algorithm with a public key, `none`).
 */
export function tokenKey (s: TokenSettings, name: (setting: keyof TokenSettings) => string = (setting) => setting): { key: KeyObject | JWTVerifyGetKey, algorithms: string[] } {
  const sources = (['jwtSecret', 'jwtPublicKey', 'jwksUrl'] as const).filter((setting) => s[setting] !== undefined)
  if (sources.length !== 1) throw new TokenError(`give one of ${name('jwtSecret')}, ${name('jwtPublicKey')} and ${name('jwksUrl')}, not ${sources.map(name).join(' and ')}`)
  const allowed = s.jwtSecret !== undefined ? HMAC : ASYMMETRIC
  for (const alg of s.jwtAlgorithms ?? []) {
    if (!allowed.includes(alg)) {
      throw new TokenError(`${name('jwtAlgorithms')} has ${JSON.stringify(alg)}, which ${name(sources[0])} cannot verify (allowed: ${allowed.join(', ')})`)
    }
  }
  const chosen = (d: string[]): string[] => s.jwtAlgorithms !== undefined && s.jwtAlgorithms.length > 0 ? [...s.jwtAlgorithms] : d
  if (s.jwtSecret !== undefined) {
    if (Buffer.byteLength(s.jwtSecret) < 32) throw new TokenError(`${name('jwtSecret')} must be at least 32 bytes (256 bits) for HS256`)
    return { key: createSecretKey(Buffer.from(s.jwtSecret)), algorithms: chosen(['HS256']) }
  }
  if (s.jwtPublicKey !== undefined) {
    let key: KeyObject
    try {
      // An environment variable often carries the PEM on one line, its newlines written as backslash-n.
      key = createPublicKey(s.jwtPublicKey.replace(/\\n/g, '\n'))
    } catch (err) {
      throw new TokenError(`${name('jwtPublicKey')} is not a PEM public key (SPKI): ${(err as Error).message}`)
    }
    return { key, algorithms: chosen(defaultAlgorithms(key, name)) }
  }
  let url: URL
  try {
    url = new URL(s.jwksUrl!)
  } catch {
    throw new TokenError(`${name('jwksUrl')} must be an http(s) URL`)
  }
  if (!/^https?:$/.test(url.protocol)) throw new TokenError(`${name('jwksUrl')} must be an http(s) URL`)
  // A key set fetched in the clear can be replaced on the way, and with it every token forged.
  if (url.protocol === 'http:' && !['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname)) {
    throw new TokenError(`${name('jwksUrl')} must be https (plain http only for a loopback address)`)
  }
  // jose caches the set for 10 minutes, and fetches it again sooner for a key id it does not know
  // (a rotation), at most once every JWKS_COOLDOWN_MS, so random kids cannot make it fetch in a loop.
  return { key: createRemoteJWKSet(url, { cooldownDuration: JWKS_COOLDOWN_MS, cacheMaxAge: 10 * 60_000 }), algorithms: chosen(['RS256', 'ES256', 'EdDSA']) }
}

function defaultAlgorithms (key: KeyObject, name: (setting: keyof TokenSettings) => string): string[] {
  switch (key.asymmetricKeyType) {
    case 'rsa': return ['RS256']
    case 'rsa-pss': return ['PS256']
    case 'ec': return [{ 'P-256': 'ES256', 'P-384': 'ES384', 'P-521': 'ES512' }[key.asymmetricKeyDetails?.namedCurve ?? ''] ?? 'ES256']
    case 'ed25519': return ['EdDSA']
    default: throw new TokenError(`${name('jwtPublicKey')} is a ${key.asymmetricKeyType ?? 'unknown'} key: give ${name('jwtAlgorithms')}`)
  }
}

/** Verifies tokens: signature, algorithm, `exp` (required), `sub` (required), and `aud`/`iss` when configured. */
export class TokenVerifier {
  readonly #key: KeyObject | JWTVerifyGetKey
  readonly #algorithms: string[]
  readonly #audience: string | undefined
  readonly #issuer: string | undefined

  constructor (settings: TokenSettings) {
    const { key, algorithms } = tokenKey(settings)
    this.#key = key
    this.#algorithms = algorithms
    this.#audience = settings.jwtAudience
    this.#issuer = settings.jwtIssuer
  }

  get algorithms (): readonly string[] { return this.#algorithms }

  /** The token's claims, or a TokenError whose message says why it is refused. */
  async verify (token: string): Promise<TokenClaims> {
    let payload: JWTPayload
    try {
      const options = { algorithms: this.#algorithms, audience: this.#audience, issuer: this.#issuer, requiredClaims: ['exp', 'sub'] }
      // jose takes either a key or a key getter: the same call, two overloads.
      payload = typeof this.#key === 'function'
        ? (await jwtVerify(token, this.#key, options)).payload
        : (await jwtVerify(token, this.#key, options)).payload
    } catch (err) {
      throw new TokenError(reasonOf(err))
    }
    if (typeof payload.sub !== 'string' || payload.sub === '') throw new TokenError('token refused: sub must be a non-empty string')
    const grants = payload[CHANNELS_CLAIM]
    if (grants !== undefined && !isGrants(grants)) {
      throw new TokenError(`token refused: the ${CHANNELS_CLAIM} claim must be { subscribe?: string[], publish?: string[] }`)
    }
    return payload as TokenClaims
  }
}

/** Why jose refused a token, in words a client can act on. */
function reasonOf (err: unknown): string {
  if (err instanceof errors.JWTExpired) return 'token expired'
  if (err instanceof errors.JWTClaimValidationFailed) {
    if (err.claim === 'aud') return 'token refused: wrong audience (aud)'
    if (err.claim === 'iss') return 'token refused: wrong issuer (iss)'
    if (err.reason === 'missing') return `token refused: the ${err.claim} claim is required`
    return `token refused: the ${err.claim} claim is invalid`
  }
  if (err instanceof errors.JOSEAlgNotAllowed) return 'token refused: its algorithm is not allowed here'
  if (err instanceof errors.JWSSignatureVerificationFailed) return 'token refused: bad signature'
  if (err instanceof errors.JWKSNoMatchingKey) return 'token refused: no key of the key set matches it'
  if (err instanceof errors.JWKSTimeout || err instanceof errors.JWKSInvalid) return 'token refused: the key set could not be fetched'
  if (err instanceof errors.JWSInvalid || err instanceof errors.JWTInvalid) return 'token refused: not a signed JWT'
  return 'token refused: it could not be verified'
}

function isGrants (value: unknown): value is ChannelGrants {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false
  return (['subscribe', 'publish'] as const).every((action) => {
    const list = (value as Record<string, unknown>)[action]
    return list === undefined || (Array.isArray(list) && list.every((p) => typeof p === 'string'))
  })
}

/** The token a handshake carries: `Authorization: Bearer <jwt>`, or the subprotocol `fanout.token.<jwt>`. */
export function tokenFrom (headers: IncomingHttpHeaders): string | undefined {
  const bearer = /^Bearer\s+(\S+)$/i.exec(headers.authorization ?? '')?.[1]
  if (bearer !== undefined) return bearer
  for (const protocol of (headers['sec-websocket-protocol'] ?? '').split(',')) {
    const p = protocol.trim()
    if (p.startsWith(TOKEN_PROTOCOL_PREFIX) && p.length > TOKEN_PROTOCOL_PREFIX.length) return p.slice(TOKEN_PROTOCOL_PREFIX.length)
  }
  return undefined
}

/** The identity of a verified token: `id` from `sub`, the claims for `authorizeChannel`, uploads unless `upload: false`. */
export function tokenIdentity (claims: TokenClaims): Identity {
  return { id: claims.sub, upload: claims.upload !== false, claims }
}

// ---- revocations and tickets ----

/** A revocation, as replicas tell each other: a token id (kept until `until`, ms: its `exp`), or a user's tokens issued before `before` (ms). */
export type Revocation = { jti: string, until: number } | { sub: string, before: number }

/**
 * Where revocations and tickets live: in this process (no Redis), or in Redis for every replica
 * (lib/redis/revocations.ts). Every replica hears every revocation, its own included, through `onRevoked`.
 */
export interface TokenStore {
  /** `onResync`: notices may have been missed (Redis was cut off): every live token is checked again. */
  start (onRevoked: (revocation: Revocation) => void, onResync?: () => void): Promise<void>
  /** Whether the token is revoked: its `jti`, or its `sub` with a cut-off after its `iat`. */
  isRevoked (claims: TokenClaims): Promise<boolean>
  revoke (revocation: Revocation, keepMs: number): Promise<void>
  /** Keeps `token` under a new random ticket for `ttlMs`. */
  issueTicket (token: string, ttlMs: number): Promise<string>
  /** The token of a ticket, once: a second redeem gets undefined. */
  redeemTicket (ticket: string): Promise<string | undefined>
  close (): Promise<void>
}

/** A ticket: 128 random bits, URL-safe. */
export function newTicket (): string {
  return randomBytes(16).toString('base64url')
}

export const TICKET_PATTERN = /^[A-Za-z0-9_-]{22}$/

/** Whether `claims` fall under a user cut-off (ms): issued before it, or with no `iat` at all. */
export function beforeCutOff (claims: TokenClaims, cutOffMs: number | undefined): boolean {
  if (cutOffMs === undefined) return false
  return typeof claims.iat !== 'number' || claims.iat * 1000 < cutOffMs
}

/** The store of the embedded (no Redis) mode: this process's memory, entries dropped once they no longer matter. */
export class MemoryTokenStore implements TokenStore {
  readonly #jtis = new Map<string, number>()
  readonly #users = new Map<string, { before: number, until: number }>()
  readonly #tickets = new Map<string, { token: string, until: number }>()
  #onRevoked: (revocation: Revocation) => void = () => {}
  #sweeper: NodeJS.Timeout | undefined

  async start (onRevoked: (revocation: Revocation) => void): Promise<void> {
    this.#onRevoked = onRevoked
    this.#sweeper = setInterval(() => this.#sweep(Date.now()), 60_000)
    this.#sweeper.unref()
  }

  async isRevoked (claims: TokenClaims): Promise<boolean> {
    const now = Date.now()
    if (claims.jti !== undefined && (this.#jtis.get(claims.jti) ?? 0) > now) return true
    const user = this.#users.get(claims.sub)
    return user !== undefined && user.until > now && beforeCutOff(claims, user.before)
  }

  async revoke (revocation: Revocation, keepMs: number): Promise<void> {
    if ('jti' in revocation) this.#jtis.set(revocation.jti, Math.max(this.#jtis.get(revocation.jti) ?? 0, revocation.until))
    else {
      const old = this.#users.get(revocation.sub)
      this.#users.set(revocation.sub, { before: Math.max(old?.before ?? 0, revocation.before), until: Math.max(old?.until ?? 0, Date.now() + keepMs) })
    }
    this.#onRevoked(revocation)
  }

  async issueTicket (token: string, ttlMs: number): Promise<string> {
    const ticket = newTicket()
    this.#tickets.set(ticket, { token, until: Date.now() + ttlMs })
    return ticket
  }

  async redeemTicket (ticket: string): Promise<string | undefined> {
    const entry = this.#tickets.get(ticket)
    this.#tickets.delete(ticket)
    return entry !== undefined && entry.until > Date.now() ? entry.token : undefined
  }

  #sweep (now: number): void {
    for (const [jti, exp] of this.#jtis) if (exp <= now) this.#jtis.delete(jti)
    for (const [sub, user] of this.#users) if (user.until <= now) this.#users.delete(sub)
    for (const [ticket, entry] of this.#tickets) if (entry.until <= now) this.#tickets.delete(ticket)
  }

  async close (): Promise<void> {
    clearInterval(this.#sweeper)
  }
}

// ---- live connections ----

/** The most a timer waits (2^31 - 1 ms, about 24.8 days); a later deadline is re-armed from there. */
const MAX_TIMER_MS = 2 ** 31 - 1

export interface TokenGuardOptions {
  verifier: TokenVerifier
  store: TokenStore
  /** A connection closed for its token, or a refresh refused: for the log. */
  log: (fields: Record<string, unknown>, msg: string) => void
}

/**
 * Tokens while connected: each connection whose identity came from a token is closed when its `exp`
 * passes (4001) unless a `refresh` moved it, and when its token is revoked (4003), on every replica.
 */
export class TokenGuard {
  readonly verifier: TokenVerifier
  readonly store: TokenStore
  readonly #log: TokenGuardOptions['log']
  readonly #timers = new Map<Client, NodeJS.Timeout>()

  constructor (options: TokenGuardOptions) {
    this.verifier = options.verifier
    this.store = options.store
    this.#log = options.log
  }

  async start (): Promise<void> {
    await this.store.start((revocation) => this.#revoked(revocation), () => this.#recheck())
  }

  /** A token checked in full: verified, then looked up among the revocations. */
  async check (token: string): Promise<TokenClaims> {
    const claims = await this.verifier.verify(token)
    if (await this.store.isRevoked(claims)) throw new TokenError('token revoked')
    return claims
  }

  /** Watches a connection whose identity carries token claims; others are left alone. */
  watch (client: Client): void {
    if (claimsOf(client) === undefined) return
    client.transport.onClose(() => {
      clearTimeout(this.#timers.get(client))
      this.#timers.delete(client)
    })
    this.#arm(client)
    // A revocation heard between the token's check and now (the upgrade, the channel checks, the
    // notice from another replica on its way) found no connection to close: looked up again.
    this.#lookUp(client)
  }

  /**
   * A new token for a connection: verified in full, for the same `sub`. The deadline moves to its
   * `exp`, and its claims (channel grants included) replace the old ones. Throws a TokenError.
   */
  async refresh (client: Client, token: string): Promise<TokenClaims> {
    const old = claimsOf(client)
    if (old === undefined) throw new TokenError('this connection was not opened with a token')
    const claims = await this.check(token)
    if (claims.sub !== old.sub) throw new TokenError('token refused: a refresh must be for the same sub')
    if (!client.open) throw new TokenError('the connection is closed')
    client.identity = { ...client.identity, ...tokenIdentity(claims) }
    this.#arm(client)
    this.#lookUp(client) // as in watch: a notice for the new token may have come before its claims were in place
    return claims
  }

  #arm (client: Client): void {
    clearTimeout(this.#timers.get(client))
    const claims = claimsOf(client)!
    const left = claims.exp * 1000 - Date.now()
    const timer = setTimeout(() => {
      if (left > MAX_TIMER_MS) return this.#arm(client)
      this.#timers.delete(client)
      if (!client.open) return
      this.#log({ user: claims.sub }, 'connection closed: its token expired')
      client.close(CloseCode.TOKEN_EXPIRED, 'token expired')
    }, Math.max(0, Math.min(left, MAX_TIMER_MS)))
    timer.unref()
    this.#timers.set(client, timer)
  }

  /** A revocation heard (from this replica or another): the connections it covers are closed. */
  #revoked (revocation: Revocation): void {
    for (const client of this.#timers.keys()) {
      const claims = claimsOf(client)
      if (claims === undefined || !client.open) continue
      const hit = 'jti' in revocation ? claims.jti === revocation.jti : claims.sub === revocation.sub && beforeCutOff(claims, revocation.before)
      if (!hit) continue
      this.#log({ user: claims.sub }, 'connection closed: its token was revoked')
      client.close(CloseCode.TOKEN_REVOKED, 'token revoked')
    }
  }

  /** Every watched connection looked up among the revocations again; the revoked ones closed. */
  #recheck (): void {
    for (const client of [...this.#timers.keys()]) this.#lookUp(client)
  }

  /** One connection's token looked up among the revocations; closed if it is revoked. */
  #lookUp (client: Client): void {
    const claims = claimsOf(client)
    if (claims === undefined) return
    this.store.isRevoked(claims).then((revoked) => {
      if (!revoked || !client.open || claimsOf(client) !== claims) return
      this.#log({ user: claims.sub }, 'connection closed: its token was revoked')
      client.close(CloseCode.TOKEN_REVOKED, 'token revoked')
    }, (err: Error) => this.#log({ err: err.message }, 'could not check a live token against the revocations'))
  }

  /** Connections watched now. */
  get size (): number { return this.#timers.size }

  async close (): Promise<void> {
    for (const timer of this.#timers.values()) clearTimeout(timer)
    this.#timers.clear()
    await this.store.close()
  }
}

function claimsOf (client: Client): TokenClaims | undefined {
  const claims = client.identity.claims as TokenClaims | undefined
  return typeof claims?.exp === 'number' && typeof claims.sub === 'string' ? claims : undefined
}
