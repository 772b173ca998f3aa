// Token revocations and EventSource tickets in Redis, shared by every replica (docs/security.md,
// "Signed tokens"). A revocation is a key (checked when a token is presented: connect, refresh,
// ticket) and a pub/sub notice (so each replica closes the live connections it covers at once).
// Its own two connections: commands, and a subscriber; the broker's are not touched.
import type { Cluster, Redis } from 'ioredis'
import { createRedis, quit, type RedisTarget } from './connection.js'
import { beforeCutOff, newTicket, type Revocation, type TokenClaims, type TokenStore } from '../tokens.js'

/** Sets a user's cut-off only forward (a later revokeUser never lowers it). KEYS: the user's key. ARGV: before (ms), keep (ms). */
const CUT_OFF_SCRIPT = `
local old = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = tonumber(ARGV[1])
if new < old then new = old end
-- Kept for the longer of what it had left and what this revocation asks: never shortened.
local left = redis.call('PTTL', KEYS[1])
local keep = tonumber(ARGV[2])
if left > keep then keep = left end
redis.call('SET', KEYS[1], tostring(new), 'PX', keep)
return new
`

/** A command waits at most this for Redis: a token is refused (503) rather than held forever. */
const COMMAND_TIMEOUT_MS = 2000

export interface RedisTokenStoreOptions {
  target: RedisTarget
  prefix: string
  log: (level: 'info' | 'warn', fields: Record<string, unknown>, msg: string) => void
}

type Connection = (Redis | Cluster) & {
  cutOff (key: string, before: number, keepMs: number): Promise<number>
}

/**
 * Keys, under the plugin's prefix: `revoked:jti:<jti>` (until the token's `exp`),
 * `revoked:sub:<sub>` (the cut-off in ms, kept `keepMs`), `ticket:<ticket>` (the token, `PX` its
 * lifetime, read once with `GETDEL`); notices on the channel `revocations`.
 */
export class RedisTokenStore implements TokenStore {
  readonly #options: RedisTokenStoreOptions
  readonly #cmd: Connection
  #sub: Redis | Cluster | undefined
  #readyOnce = false

  constructor (options: RedisTokenStoreOptions) {
    this.#options = options
    this.#cmd = createRedis(options.target, 'tokens', { commandTimeout: COMMAND_TIMEOUT_MS }) as Connection
    this.#cmd.defineCommand('cutOff', { numberOfKeys: 1, lua: CUT_OFF_SCRIPT })
    this.#cmd.on('error', (err: Error) => options.log('warn', { err: err.message }, 'token store: Redis error'))
  }

  get #channel (): string { return `${this.#options.prefix}revocations` }

  async start (onRevoked: (revocation: Revocation) => void, onResync?: () => void): Promise<void> {
    const sub = createRedis(this.#options.target, 'tokens-subscriber')
    this.#sub = sub
    sub.on('error', (err: Error) => this.#options.log('warn', { err: err.message }, 'token store: Redis subscriber error'))
    sub.on('message', (channel: string, message: string) => {
      if (channel !== this.#channel) return
      const revocation = parseRevocation(message)
      if (revocation === undefined) return this.#options.log('warn', { bytes: message.length }, 'token store: a revocation notice that is not one, ignored')
      onRevoked(revocation)
    })
    // Back after a cut: notices sent meanwhile were missed, so every live token is checked again.
    sub.on('ready', () => {
      if (this.#readyOnce) onResync?.()
      this.#readyOnce = true
    })
    // Not awaited: a replica starts while Redis is down, as the broker does; the subscription is
    // made once Redis answers, and tokens presented meanwhile are checked against the keys.
    sub.subscribe(this.#channel).catch((err: Error) => this.#options.log('warn', { err: err.message }, 'token store: could not subscribe to revocation notices'))
  }

  async isRevoked (claims: TokenClaims): Promise<boolean> {
    const prefix = this.#options.prefix
    const [jti, cutOff] = await Promise.all([
      claims.jti === undefined ? 0 : this.#cmd.exists(`${prefix}revoked:jti:${claims.jti}`),
      this.#cmd.get(`${prefix}revoked:sub:${claims.sub}`)
    ])
    return jti > 0 || beforeCutOff(claims, cutOff === null ? undefined : Number(cutOff))
  }

  async revoke (revocation: Revocation, keepMs: number): Promise<void> {
    const prefix = this.#options.prefix
    let notice: Revocation
    if ('jti' in revocation) {
      // Kept until the token expires anyway: after that, its signature check refuses it.
      if (revocation.until > Date.now()) await this.#cmd.set(`${prefix}revoked:jti:${revocation.jti}`, '1', 'PXAT', revocation.until)
      notice = revocation
    } else {
      notice = { sub: revocation.sub, before: await this.#cmd.cutOff(`${prefix}revoked:sub:${revocation.sub}`, revocation.before, keepMs) }
    }
    await this.#cmd.publish(this.#channel, JSON.stringify(notice))
  }

  async issueTicket (token: string, ttlMs: number): Promise<string> {
    const ticket = newTicket()
    await this.#cmd.set(`${this.#options.prefix}ticket:${ticket}`, token, 'PX', ttlMs)
    return ticket
  }

  async redeemTicket (ticket: string): Promise<string | undefined> {
    return await this.#cmd.getdel(`${this.#options.prefix}ticket:${ticket}`) ?? undefined
  }

  async close (): Promise<void> {
    await Promise.all([quit(this.#sub), quit(this.#cmd)])
  }
}

function parseRevocation (message: string): Revocation | undefined {
  try {
    const m = JSON.parse(message) as Record<string, unknown>
    if (typeof m.jti === 'string' && typeof m.until === 'number') return { jti: m.jti, until: m.until }
    if (typeof m.sub === 'string' && typeof m.before === 'number') return { sub: m.sub, before: m.before }
  } catch {}
  return undefined
}
