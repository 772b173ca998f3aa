import { randomUUID } from 'node:crypto'
import type { BrokerLog } from './log.js'

/**
 * Takes the lease if it is free, renews it if this holder has it (taking it back if it vanished
 * with the data: a FLUSHALL, a restart without persistence), and refuses if another holds it.
 * `allow-oom`: at maxmemory (noeviction) Redis refuses every other write, and leadership must not
 * flip because of that. KEYS: lease. ARGV: token, lease ms. Returns 1 while held, else 0.
 */
export const LEASE_RENEW_SCRIPT = `#!lua flags=allow-oom
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
`

/** Releases the lease only if this holder still has it. KEYS: lease. ARGV: token. */
export const LEASE_RELEASE_SCRIPT = `#!lua flags=allow-oom
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`

export interface LeaseConnection {
  readonly status: string
  fanoutLeaseRenew (key: string, token: string, ms: number): Promise<number>
  fanoutLeaseRelease (key: string, token: string): Promise<number>
}

/**
 * Leadership among workers: exactly one publishes. It holds a key in Redis, set only if absent
 * with an expiry and renewed a few times per lease; the others try to take it as often. Each
 * acquisition has a new token, which every publish carries, and the publish script refuses a
 * token that is not the current one (fencing): a leader that was paused past its lease (GC,
 * SIGSTOP, a partition) and wakes up cannot publish.
 */
export class Lease {
  #token: string | undefined
  #timer: NodeJS.Timeout | undefined
  #busy = false

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
    // A standby tries five times per lease, so it takes over within about 1.2 leases of a crash.
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
      if (redis.status !== 'ready') return this.leader
      if (this.#token === undefined) {
        const token = randomUUID()
        if (await redis.fanoutLeaseRenew(this.key, token, this.leaseMs) === 1) this.#set(token)
      } else if (await redis.fanoutLeaseRenew(this.key, this.#token, this.leaseMs) !== 1) {
        this.#set(undefined) // another holder has it: this one was paused or cut off past its lease
      }
    } catch (err) {
      this.log.warn('lease', { err: (err as Error).message }, 'could not renew or take the worker lease')
    } finally {
      this.#busy = false
    }
    return this.leader
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
