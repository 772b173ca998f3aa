import { randomUUID } from 'node:crypto'
import type { BrokerLog } from './log.js'

/**
 * The lease's value is `<token>:<Redis time of the renewal>`: every renewal changes it (to a value
 * never seen before, even after the key vanished and was set again), and a standby takes the lease
 * once it has seen the same value for a whole lease by its own clock. No Redis clock decides a
 * takeover: Redis replicates an expiry as an absolute time, so a replica promoted with its clock
 * behind would otherwise keep a dead holder's lease for as long as its clock is late. The key's
 * expiry (LEASE_KEY_LEASES leases) only clears a lease every worker has left.
 *
 * Whether `holder` (a lease value) is `token`'s, in Lua: the publish script's fence uses it too.
 */
export const LUA_HELD_BY = `local function heldBy (holder, token)
  return holder == token or string.sub(holder, 1, #token + 1) == token .. ':'
end
`

/**
 * Renews the lease if this holder has it (taking it back if it vanished with the data: a FLUSHALL,
 * a restart without persistence), and refuses if another holds it. `allow-oom`: at maxmemory
 * (noeviction) Redis refuses every other write, and leadership must not flip because of that.
 * KEYS: lease. ARGV: token, key expiry ms. Returns 1 while held, else 0.
 */
export const LEASE_RENEW_SCRIPT = `#!lua flags=allow-oom
${LUA_HELD_BY}local holder = redis.call('GET', KEYS[1])
if holder and not heldBy(holder, ARGV[1]) then return 0 end
local time = redis.call('TIME')
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. time[1] .. '.' .. time[2], 'PX', ARGV[2])
return 1
`

/**
 * Takes the lease if it is free, or if it still holds the value the standby has watched go
 * unrenewed for a lease. KEYS: lease. ARGV: token, key expiry ms, the value watched ('' for none).
 * Returns 1 if taken, else 0.
 */
export const LEASE_TAKE_SCRIPT = `#!lua flags=allow-oom
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1] .. ':0', 'PX', ARGV[2])
return 1
`

/** Releases the lease only if this holder still has it. KEYS: lease. ARGV: token. */
export const LEASE_RELEASE_SCRIPT = `#!lua flags=allow-oom
${LUA_HELD_BY}local holder = redis.call('GET', KEYS[1])
if holder and heldBy(holder, ARGV[1]) then return redis.call('DEL', KEYS[1]) end
return 0
`

/** The lease key outlives its last renewal by this many leases (see LUA_HELD_BY). */
const LEASE_KEY_LEASES = 10

export interface LeaseConnection {
  readonly status: string
  fanoutLeaseRenew (key: string, token: string, ms: number): Promise<number>
  fanoutLeaseTake (key: string, token: string, ms: number, watched: string): Promise<number>
  fanoutLeaseRelease (key: string, token: string): Promise<number>
  get (key: string): Promise<string | null>
}

/**
 * Leadership among workers: exactly one publishes. It holds a key in Redis, renewed a few times
 * per lease; the others watch it, and take it once it has gone a whole lease without renewal, as
 * measured by their own clocks (LUA_HELD_BY). Each acquisition has a new token, which every
 * publish carries, and the publish script refuses a token that is not the current one (fencing):
 * a leader that was paused past its lease (GC, SIGSTOP, a partition) and wakes up cannot publish.
 */
export class Lease {
  #token: string | undefined
  #timer: NodeJS.Timeout | undefined
  #busy = false
  /** A standby's view of the lease: the value it last saw, and since when (its monotonic clock). */
  #watched: { value: string, since: number } | undefined

  constructor (
    private readonly redis: () => LeaseConnection,
    private readonly key: string,
    private readonly leaseMs: number,
    private readonly onChange: (leader: boolean) => void,
    private readonly log: BrokerLog
  ) {}

  get leader (): boolean { return this.#token !== undefined }

  /** What publishes are fenced with while this holder leads. */
  get fence (): { token: string, leaseMs: number } | undefined {
    return this.#token === undefined ? undefined : { token: this.#token, leaseMs: this.leaseMs }
  }

  start (): void {
    // A standby looks five times per lease, so it takes over within about 1.2 leases of a crash.
    this.#timer = setInterval(() => { this.check().catch(() => {}) }, Math.max(50, Math.floor(this.leaseMs / 5)))
    this.#timer.unref()
    this.check().catch(() => {})
  }

  /** Renews (leader) or tries to acquire (standby); resolves to whether this holder leads now. */
  async check (): Promise<boolean> {
    if (this.#busy) return this.leader
    this.#busy = true
    try {
      // Unanswered, a holder keeps its belief and its schedule (its events wait in the outbox):
      // the fence, not this belief, is what stops a holder whose lease another has taken.
      const redis = this.redis()
      if (redis.status !== 'ready') {
        this.#watched = undefined // what it saw before no longer measures an unrenewed lease
        return this.leader
      }
      const keyMs = this.leaseMs * LEASE_KEY_LEASES
      if (this.#token === undefined) {
        if (this.#due(await redis.get(this.key))) {
          const token = randomUUID()
          if (await redis.fanoutLeaseTake(this.key, token, keyMs, this.#watched?.value ?? '') === 1) this.#set(token)
          this.#watched = undefined
        }
      } else if (await redis.fanoutLeaseRenew(this.key, this.#token, keyMs) !== 1) {
        this.#set(undefined) // another holder has it: this one was paused or cut off past its lease
      }
    } catch (err) {
      this.#watched = undefined
      this.log.warn('lease', { err: (err as Error).message }, 'could not renew or take the worker lease')
    } finally {
      this.#busy = false
    }
    return this.leader
  }

  /** A standby's turn: whether the lease is free, or has gone unrenewed for a whole lease. */
  #due (value: string | null): boolean {
    if (value === null) return true
    const now = performance.now()
    if (this.#watched?.value !== value) {
      this.#watched = { value, since: now }
      return false
    }
    return now - this.#watched.since >= this.leaseMs
  }

  async close (): Promise<void> {
    clearInterval(this.#timer)
    const token = this.#token
    if (token === undefined) return
    this.#set(undefined)
    await this.redis().fanoutLeaseRelease(this.key, token).catch(() => {})
  }

  #set (token: string | undefined): void {
    const was = this.leader
    this.#token = token
    if (was !== this.leader) this.onChange(this.leader)
  }
}
