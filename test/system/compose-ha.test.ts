// docker-compose.ha.yml in real containers: a Redis primary and replica, three Sentinels, two
// workers sharing a lease, three app replicas, nginx. The real Dockerfile built, the project under
// a name of its own, clients through nginx on 127.0.0.1; the Redis primary and then the leading
// worker are killed (`docker kill`) while a client listens. Same needs as compose.test.ts.
import t from 'tap'
import { WebSocket } from 'ws'
import { compareIds } from '../../lib/event.js'
import { buildImages, composeProject, holdEngine, sh, unavailable } from '../support/compose.js'
import { receivedOf, untold, type Received as Order } from '../support/audit.js'
import { freePort, httpStatus, waitFor } from '../support/helper.js'

t.setTimeout(15 * 60_000)

const IMAGE = 'fastify-fanout:compose-ha-test'
const LEASE_MS = 3000
const STREAM = 'fanout:{guest}:events'

interface Received { id: string, epoch: string, ts: number, at: number }

/**
 * A `fanout.v1` client through nginx that records every event with its arrival time and every
 * control message, and comes back with `?since=<last id>&epoch=<its epoch>` whenever its replica
 * closes it, as the demo page does.
 */
class Follower {
  readonly events: Received[] = []
  readonly control: Array<Record<string, unknown>> = []
  /** Events and loss notices in the order they came (test/support/audit.ts). */
  readonly order: Order = []
  readonly closes: string[] = []
  #socket?: WebSocket
  #stopped = false

  constructor (readonly url: string) {}

  async start (): Promise<void> {
    const last = this.events.at(-1)
    const query = last ? `?since=${encodeURIComponent(last.id)}&epoch=${encodeURIComponent(last.epoch)}` : ''
    const socket = new WebSocket(this.url + query, ['fanout.v1'])
    this.#socket = socket
    socket.on('message', (data: Buffer, binary: boolean) => {
      if (binary) return
      const message = JSON.parse(data.toString()) as Record<string, unknown>
      this.order.push(...receivedOf(message, (m) => m.type === 'guest', this.events.at(-1)?.id ?? null))
      if (message.type === 'guest') this.events.push({ id: String(message.id), epoch: String(message.epoch), ts: Number(message.ts), at: Date.now() })
      else this.control.push(message)
    })
    socket.on('error', () => {}) // seen as the close that follows
    socket.once('close', (code, reason) => {
      this.closes.push(`${code} ${reason.toString()}`)
      if (!this.#stopped) setTimeout(() => { this.start().catch(() => {}) }, 250)
    })
    await new Promise<void>((resolve, reject) => {
      socket.once('open', () => resolve())
      socket.once('close', () => reject(new Error('closed before it opened')))
    }).catch(() => {}) // a failed attempt is retried by its close handler
  }

  stop (): void {
    this.#stopped = true
    this.#socket?.terminate()
  }

  ids (): string[] {
    return this.events.map((e) => e.id)
  }

  /** Resolves once `n` events arrived after `since` (ms), with the first of them. */
  async eventsAfter (since: number, n: number, timeoutMs: number, what: string): Promise<Received[]> {
    return waitFor<Received[] | false>(() => {
      const after = this.events.filter((e) => e.at > since)
      return after.length >= n && after
    }, timeoutMs, `${what}; have ${this.events.length} events, closes: ${this.closes.join('; ') || 'none'}`) as Promise<Received[]>
  }
}

const strictlyIncreasing = (ids: string[]): boolean => ids.every((id, i) => i === 0 || compareIds(ids[i - 1], id) < 0)

const reason = await unavailable()
if (reason) console.error(`# compose HA test SKIPPED: ${reason}`)
// Beside other compose projects, never beside a swarm (test/swarm).
else await holdEngine(t, 'shared')

t.test('the HA compose topology in containers', { skip: reason ?? false }, async (t) => {
  const lbPort = await freePort()
  const follower = new Follower(`ws://127.0.0.1:${lbPort}/guest`)
  t.teardown(() => follower.stop())
  const project = await composeProject(t, 'docker-compose.ha.yml', `fanoutha${process.pid}`, {
    LB_PORT: String(lbPort),
    FANOUT_IMAGE: IMAGE,
    GUEST_MIN_DELAY_MS: '200',
    GUEST_MAX_DELAY_MS: '400',
    WORKER_LEASE_MS: String(LEASE_MS)
  })
  const { compose, containers, inspect } = project
  const http = `http://127.0.0.1:${lbPort}`

  await buildImages(t, IMAGE)
  const up = await compose(['up', '-d', '--no-build'], 300_000)
  t.comment(`${project.v1 ? 'docker-compose (v1) --compatibility' : 'docker compose (v2)'} -f docker-compose.ha.yml up -d: ${up.ms} ms`)

  /** The lease lines each worker logged, by worker id, in order (`docker-compose logs worker`). */
  const leaseLog = async (): Promise<Map<string, boolean[]>> => {
    const { stdout } = await compose(['logs', '--no-color', 'worker'], 60_000)
    const byWorker = new Map<string, boolean[]>()
    for (const line of stdout.split('\n')) {
      const json = line.slice(line.indexOf('{'))
      if (!json.startsWith('{')) continue
      let record: { msg?: string, worker?: string, leader?: boolean }
      try { record = JSON.parse(json) } catch { continue }
      if (typeof record.msg !== 'string' || !/hold the lease|holds the lease/.test(record.msg) || record.worker === undefined) continue
      byWorker.set(record.worker, [...(byWorker.get(record.worker) ?? []), record.leader === true])
    }
    return byWorker
  }
  /** The worker ids that lead now (their last lease line says so). */
  const leaders = async (): Promise<string[]> =>
    [...(await leaseLog())].filter(([, states]) => states.at(-1) === true).map(([id]) => id)
  /** Each worker container's worker id (the `worker` field of its log lines). */
  const workerIds = async (): Promise<Map<string, string>> => {
    const ids = new Map<string, string>()
    for (const id of await containers('worker')) {
      const { stdout } = await sh('docker', ['logs', id])
      const match = /"worker":"([^"]+)"/.exec(stdout)
      if (match) ids.set(id, match[1])
    }
    return ids
  }
  const redisCli = async (container: string, ...args: string[]): Promise<string> =>
    (await sh('docker', ['exec', container, 'redis-cli', ...args])).stdout.trim()

  await t.test('every service healthy; /readyz 200 through nginx; a fanout.v1 client receives guests', async (t) => {
    // Waits for each service's containers to turn healthy, then reads every state once more.
    const expected: Array<[string, number]> = [['redis-primary', 1], ['redis-replica', 1], ['sentinel-1', 1], ['sentinel-2', 1], ['sentinel-3', 1], ['app', 3], ['lb', 1]]
    for (const [service, n] of expected) await project.healthy(service, n)
    for (const [service, n] of expected) {
      const states = await Promise.all((await containers(service)).map(project.health))
      t.same(states, Array(n).fill('healthy'), `${service}: ${n} healthy`)
    }
    const workers = await containers('worker')
    t.equal(workers.length, 2, 'two workers running')
    t.equal(await waitFor(async () => (await httpStatus(`${http}/readyz`)) === 200 && 200, 60_000, '/readyz 200 through lb'), 200, '/readyz 200 through nginx')
    const [replica] = await containers('redis-replica')
    t.match(await redisCli(replica, 'info', 'replication'), /role:slave[\s\S]*master_link_status:up/, 'the replica replicates the primary')
    await follower.start()
    const first = await follower.eventsAfter(0, 5, 30_000, '5 guest events')
    t.ok(strictlyIncreasing(first.map((e) => e.id)) && first.every((e) => /^[A-Za-z0-9_-]{1,32}$/.test(e.epoch)),
      `guest events through nginx, ids increasing, each with its epoch (${first.length}: ${first[0].id} … ${first.at(-1)?.id}, epoch ${first[0].epoch})`)
  })

  let leader: { container: string, worker: string } | undefined
  let standby: string | undefined
  await t.test('exactly one worker leads', async (t) => {
    const leading = await waitFor(async () => { const l = await leaders(); return l.length > 0 && l }, 30_000, 'a leader') as string[]
    const ids = await waitFor(async () => { const m = await workerIds(); return m.size === 2 && m }, 30_000, 'both workers\' ids') as Map<string, string>
    t.equal(leading.length, 1, `exactly one worker logged that it holds the lease (${leading.join(', ')}; workers ${[...ids.values()].join(', ')})`)
    const [container] = [...ids].find(([, worker]) => worker === leading[0]) ?? []
    t.ok(container, 'the leader is one of the two worker containers')
    if (container) leader = { container, worker: leading[0] }
    standby = [...ids.values()].find((worker) => worker !== leading[0])
    t.ok(standby, `the other worker (${standby}) stands by`)
  })

  await t.test('docker kill of redis-primary: the Sentinels promote the replica; events keep coming', async (t) => {
    const [primary] = await containers('redis-primary')
    const [replica] = await containers('redis-replica')
    await follower.eventsAfter(Date.now(), 3, 30_000, '3 events before the kill')
    const before = follower.events.length
    const killedAt = Date.now()
    await sh('docker', ['kill', primary])
    const after = await follower.eventsAfter(killedAt, 10, 90_000, '10 events after the kill')
    t.comment(`redis-primary killed: the next event arrived ${after[0].at - killedAt} ms later ` +
      `(the last before it ${killedAt - (follower.events[before - 1]?.at ?? killedAt)} ms before the kill); ` +
      `the client was closed ${follower.closes.length} time(s)${follower.closes.length ? ` (${follower.closes.join('; ')})` : ''}`)
    t.match(await redisCli(replica, 'info', 'replication'), /role:master/, 'redis-replica was promoted')
    const ids = follower.ids()
    t.ok(strictlyIncreasing(ids), `ids strictly increasing across the failover (${ids.length} events)`)
    t.equal(new Set(ids).size, ids.length, 'no id twice')
    // What the new primary holds between the client's first and last event, against what it got.
    const from = ids[0]
    const to = ids.at(-1) as string
    const stored = (await redisCli(replica, 'XRANGE', STREAM, from, to)).split('\n')
      .filter((l) => /^\d+-\d+$/.test(l.trim())).map((l) => l.trim())
    const seen = new Set(ids)
    const missing = stored.filter((id) => !seen.has(id))
    const notStored = ids.filter((id) => !stored.includes(id))
    t.comment(`${stored.length} events in the promoted replica's stream in the client's range; ${missing.length} missing at the client; ` +
      `${notStored.length} received but not in the promoted stream (written only to the old primary)`)
    t.same(untold(follower.order, stored), [], `every event the promoted primary holds in the client's range reached it, or it was told of it (${missing.length} missing)`)
    t.comment(`control messages: ${JSON.stringify(follower.control)}`)

    // The killed primary comes back as a replica of the promoted one: the Sentinels find it by name.
    await sh('docker', ['start', primary])
    const rejoined = await waitFor(async () => {
      const info = await redisCli(primary, 'info', 'replication').catch(() => '')
      return /role:slave/.test(info) && /master_link_status:up/.test(info) && info
    }, 60_000, 'the old primary to replicate the new one')
    t.match(rejoined, /master_host:redis-replica/, 'the old primary now replicates redis-replica')
  })

  await t.test('docker kill of the leading worker: the standby takes over within about the lease', async (t) => {
    // Who leads now: the Redis failover may have moved the lease.
    const leading = await leaders()
    const workers = await workerIds()
    t.equal(leading.length, 1, `one worker leads before the kill (${leading.join(', ')}; it was ${leader?.worker} before the Redis failover)`)
    const [container] = [...workers].find(([, worker]) => worker === leading[0]) ?? []
    standby = [...workers.values()].find((worker) => worker !== leading[0])
    leader = container ? { container, worker: leading[0] } : undefined
    t.ok(leader && standby, `the leader (${leader?.worker}) and the standby (${standby}) are known`)
    if (!leader || !standby) return
    await follower.eventsAfter(Date.now(), 3, 30_000, '3 events before the kill')
    const lastBefore = follower.events.at(-1) as Received
    const killedAt = Date.now()
    await sh('docker', ['kill', leader.container])
    await follower.eventsAfter(killedAt, 10, 60_000, '10 events after the worker was killed')
    // The first event made after the kill is the standby's: one made before it and still on its
    // way would say nothing about the takeover.
    const first = follower.events.find((e) => e.ts > killedAt) as Received
    t.comment(`leading worker killed: the first event made after the kill arrived ${first.at - killedAt} ms after it; ` +
      `the gap between events was ${first.at - lastBefore.at} ms (lease ${LEASE_MS} ms, schedule 200-400 ms)`)
    // A standby looks five times per lease: it takes over within about 1.2 leases, then the
    // next event follows within the schedule's delay; 2 leases leave room for a loaded host.
    t.ok(first.at - killedAt < 2 * LEASE_MS + 400, `the standby's first event came within 2 leases (${first.at - killedAt} ms)`)
    const now = await (waitFor(async () => { const l = await leaders(); return l.includes(standby as string) && l }, 10_000, 'the standby\'s lease line') as Promise<string[]>)
      .catch(() => leaders())
    t.same(now.filter((id) => id !== leader?.worker), [standby], `the standby (${standby}) logged that it holds the lease, and no other live worker leads`)
    t.equal((await inspect(leader.container)).State.Running, false, 'the killed worker is not running')
    const ids = follower.ids()
    t.ok(strictlyIncreasing(ids), `ids strictly increasing across the takeover (${ids.length} events)`)
    t.equal(new Set(ids).size, ids.length, 'no id twice')
  })

  await t.test('`down -v` leaves nothing of the project', async (t) => {
    follower.stop()
    const down = await compose(['down', '-v', '-t', '10'], 180_000)
    t.comment(`down -v: ${down.ms} ms`)
    t.same(await project.leftovers(), [], `no container, network or volume of ${project.name}`)
  })
})
