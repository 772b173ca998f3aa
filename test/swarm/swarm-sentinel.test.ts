// deploy/stack.yml with the deploy/stack-sentinel.yml override on Docker Swarm, on this machine's
// engine: a Redis primary and replica, three Sentinels, the workers and app replicas finding the
// primary through them, nginx in front. Clients of the client library receive events through nginx;
// the Redis primary's container is killed (`docker kill`): the Sentinels promote the replica, the
// app follows (no app task replaced), events continue, and Swarm's restart of the killed task comes
// back as a replica of the promoted one, found by the Sentinels under its name at its new address.
// Every client must end with every event of the promoted primary's stream, once each, in order, and
// be told (gap / lost) exactly when the failover cost the history its continuity (a new epoch).
// Then `docker stack rm` and `docker swarm leave --force` leave nothing behind.
//
// Refuses (skips) when the engine is already in a swarm it did not create; never beside
// test/swarm/swarm.test.ts (both make a swarm of the one engine: `tap --jobs=1 test/swarm`).
// SWARM_SENTINEL_CLIENTS sets the number of clients (default 200).
import t from 'tap'
import { compareIds } from '../../lib/event.js'
import { untold } from '../support/audit.js'
import { buildImages, holdEngine, sh } from '../support/compose.js'
import { freePort, httpStatus } from '../support/helper.js'
import { LibraryFollower, poll, swarmStack, testStackEnv, swarmUnavailable, type Stack } from '../support/swarm.js'

t.setTimeout(10 * 60_000)

const IMAGE = 'fastify-fanout:swarm-sentinel-test'
const CLIENTS = Number(process.env.SWARM_SENTINEL_CLIENTS ?? 200)
const STREAM = 'fanout:{guest}:events'
const META = 'fanout:{guest}:meta'
const SENTINELS = ['sentinel-1', 'sentinel-2', 'sentinel-3']
const REPLICAS = 3
/** The bound on "live again": every client has a new event within this after a step. */
const LIVE_AGAIN_MS = 30_000

const strictlyIncreasing = (ids: string[]): boolean => ids.every((id, i) => i === 0 || compareIds(ids[i - 1], id) < 0)
const streamIds = (stdout: string): string[] => stdout.split('\n').map((l) => l.trim()).filter((l) => /^\d+-\d+$/.test(l))

// The engine to this file alone until its swarm is gone: no compose project, no other swarm beside it.
await holdEngine(t, 'exclusive')
const reason = await swarmUnavailable()
if (reason) console.error(`# swarm Sentinel test SKIPPED: ${reason}`)

t.test('deploy/stack-sentinel.yml on Docker Swarm: the Redis primary killed, nothing lost', { skip: reason ?? false }, async (t) => {
  const lbPort = await freePort()
  const followers: LibraryFollower[] = []
  t.teardown(() => { for (const f of followers) f.stop() })
  const stack: Stack = await swarmStack(t, `fanoutss${process.pid}`, testStackEnv(IMAGE, lbPort), {
    files: ['deploy/stack.yml', 'deploy/stack-sentinel.yml'],
    services: ['redis', 'redis-replica', ...SENTINELS, 'app', 'worker', 'lb']
  })
  const http = `http://127.0.0.1:${lbPort}`

  await buildImages(t, IMAGE)
  t.comment(`docker stack deploy -c deploy/stack.yml -c deploy/stack-sentinel.yml: ${await stack.deploy()} ms`)

  /** redis-cli in the one running container of `service` (a Sentinel: its port). */
  const cli = async (service: string, ...args: string[]): Promise<string> => {
    const [id] = await stack.containers(service)
    if (!id) return ''
    const port = service.startsWith('sentinel-') ? ['-p', '26379'] : []
    return (await sh('docker', ['exec', id, 'redis-cli', ...port, ...args], { timeoutMs: 30_000 }).catch(() => ({ stdout: '' }))).stdout
  }
  const replication = async (service: string): Promise<Record<string, string>> =>
    Object.fromEntries((await cli(service, 'info', 'replication')).split('\n').map((l) => l.trim().split(':')).filter((kv) => kv.length === 2))
  /** What one Sentinel says: the primary it names, its replicas with their flags, how many others it knows. */
  const sentinelView = async (sentinel: string): Promise<{ primary: string, replicas: Record<string, string>, others: number }> => {
    const primary = (await cli(sentinel, '--raw', 'sentinel', 'get-master-addr-by-name', 'fanout')).split('\n')[0].trim()
    // `--raw` prints each replica as name/value lines: name, ip, port, …, flags, …
    const replicas: Record<string, string> = {}
    const lines = (await cli(sentinel, '--raw', 'sentinel', 'replicas', 'fanout')).split('\n').map((l) => l.trim())
    for (let i = 0; i < lines.length; i++) {
      if (lines[i] === 'ip') {
        const flags = lines.indexOf('flags', i)
        if (flags > 0) replicas[lines[i + 1]] = lines[flags + 1]
      }
    }
    const master = (await cli(sentinel, '--raw', 'sentinel', 'master', 'fanout')).split('\n').map((l) => l.trim())
    const others = Number(master[master.indexOf('num-other-sentinels') + 1])
    return { primary, replicas, others }
  }
  /** Every Sentinel names `primary`, sees `replica` as a healthy replica and knows the two others. */
  const sentinelsAgree = async (primary: string, replica: string): Promise<string | false> => {
    const views = await Promise.all(SENTINELS.map(sentinelView))
    const agree = views.every((v) => v.primary === primary && v.replicas[replica] === 'slave' && v.others === SENTINELS.length - 1)
    return agree && JSON.stringify(views)
  }
  /** Every client has an event that arrived after `since`; resolves with how long that took. */
  const allLiveAfter = async (since: number, what: string): Promise<number> => {
    await poll(() => followers.every((f) => f.liveAfter(since)), LIVE_AGAIN_MS, `every client to receive an event after ${what} ` +
      `(${followers.filter((f) => !f.liveAfter(since)).length} of ${followers.length} have not)`, 100)
    return Date.now() - since
  }
  const taskAddress = async (id: string): Promise<string> =>
    (await sh('docker', ['inspect', '--format', '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}', id])).stdout.trim()

  await t.test('the stack comes up: Redis replicates, the Sentinels agree, /readyz 200 through nginx', async (t) => {
    const expected: Array<[string, number]> = [['redis', 1], ['redis-replica', 1], ...SENTINELS.map((s): [string, number] => [s, 1]), ['app', REPLICAS], ['worker', 2]]
    for (const [service, n] of expected) await poll(async () => (await stack.runningTasks(service)) === n, 180_000, `${n} running ${service} task(s)`, 1000)
    const ready = await poll(async () => (await httpStatus(`${http}/readyz`)) === 200, 120_000, '/readyz 200 through nginx', 500)
    t.ok(ready, '/readyz answers 200 through nginx\'s host-mode port')
    const link = await poll(async () => { const r = await replication('redis-replica'); return r.master_link_status === 'up' && r }, 60_000, 'redis-replica to replicate redis')
    t.match(link, { role: 'slave', master_host: 'redis', master_link_status: 'up' }, 'redis-replica replicates redis, by its name')
    const views = await poll(() => sentinelsAgree('redis', 'redis-replica'), 60_000, 'the Sentinels to agree on redis and its replica').catch(() => false)
    t.ok(views, 'each Sentinel names redis the primary, sees redis-replica as a replica and knows the two others')
  })

  await t.test(`${CLIENTS} clients of the client library connect through nginx and receive events`, async (t) => {
    const started = Date.now()
    for (let i = 0; i < CLIENTS; i += 50) {
      const batch = Array.from({ length: Math.min(50, CLIENTS - i) }, () => new LibraryFollower(`ws://127.0.0.1:${lbPort}/guest`))
      followers.push(...batch)
      await Promise.all(batch.map((f) => f.start()))
    }
    const live = await allLiveAfter(started, 'connecting')
    t.comment(`${CLIENTS} clients connected and each received an event within ${live} ms`)
    t.equal(followers.filter((f) => f.ids.length > 0).length, CLIENTS, `all ${CLIENTS} clients receive events`)
  })

  let epochBefore = ''
  let killedAddress = ''
  await t.test('docker kill of the Redis primary: the Sentinels promote the replica, the app follows, events continue', async (t) => {
    epochBefore = (await cli('redis', 'HGET', META, 'epoch')).trim()
    const apps = (await stack.containers('app')).sort()
    const [lb] = await stack.containers('lb')
    const [primary] = await stack.containers('redis')
    killedAddress = await taskAddress(primary)
    const killedAt = Date.now()
    await sh('docker', ['kill', primary])
    await poll(async () => (await replication('redis-replica')).role === 'master', 60_000, 'redis-replica to be promoted', 200)
    const promoted = Date.now() - killedAt
    const views = await poll(async () => {
      const all = await Promise.all(SENTINELS.map(sentinelView))
      return all.every((v) => v.primary === 'redis-replica') && all
    }, 30_000, 'every Sentinel to name redis-replica').catch(() => false)
    const live = await allLiveAfter(Date.now(), 'the promotion')
    // The longest pause between two consecutive events at any one client across the kill.
    let pause = 0
    for (const f of followers) {
      for (let i = 1; i < f.at.length; i++) if (f.at[i] > killedAt) pause = Math.max(pause, f.at[i] - f.at[i - 1])
    }
    const closed = followers.filter((f) => f.closes.some((c) => c > killedAt)).length
    t.comment(`redis killed (task address ${killedAddress}): redis-replica a primary ${promoted} ms later; every client ` +
      `live ${live} ms after that; the longest pause between two events at a client ${pause} ms; ${closed} clients were closed`)
    t.equal((await replication('redis-replica')).role, 'master', 'the Sentinels promoted redis-replica')
    t.ok(views, 'every Sentinel names redis-replica the primary')
    t.equal(closed, 0, 'no client was closed: the app replicas followed the failover with their clients connected')
    t.same((await stack.containers('app')).sort(), apps, `the same ${REPLICAS} app containers throughout (none unhealthy, none replaced)`)
    t.same(await stack.containers('lb'), [lb], 'the same nginx container throughout')
  })

  await t.test('Swarm restarts the killed task: it comes back as a replica of the promoted one, under its name', async (t) => {
    const link = await poll(async () => { const r = await replication('redis'); return r.master_link_status === 'up' && r }, 90_000, 'the restarted redis to replicate')
    t.match(link, { role: 'slave', master_host: 'redis-replica', master_link_status: 'up' }, 'redis now replicates redis-replica')
    const [back] = await stack.containers('redis')
    t.comment(`redis back at ${await taskAddress(back)} (it was at ${killedAddress})`)
    const views = await poll(() => sentinelsAgree('redis-replica', 'redis'), 60_000, 'the Sentinels to see redis as a replica').catch(() => false)
    t.ok(views, 'every Sentinel sees redis as a healthy replica of redis-replica (its name resolved anew) and knows the two others')
  })

  await t.test('every client holds every event of the promoted primary\'s stream, once each, in order', async (t) => {
    const newest = /^\d+-\d+$/m.exec(await cli('redis-replica', 'XREVRANGE', STREAM, '+', '-', 'COUNT', '1'))?.[0] as string
    await poll(() => followers.every((f) => compareIds(f.ids.at(-1) ?? '0-0', newest) >= 0), LIVE_AGAIN_MS, `every client to reach ${newest}`, 100)
    for (const f of followers) f.stop()
    const epochAfter = (await cli('redis-replica', 'HGET', META, 'epoch')).trim()
    const firsts = followers.map((f) => f.ids[0]).sort(compareIds)
    const stored = streamIds(await cli('redis-replica', 'XRANGE', STREAM, firsts[0], newest))
    const held = new Set(stored)
    const bad: string[] = []
    let received = 0
    let extras = 0
    let told = 0
    for (const [i, f] of followers.entries()) {
      const mine = f.ids.filter((id) => compareIds(id, newest) <= 0)
      const expected = stored.filter((id) => compareIds(id, f.ids[0]) >= 0)
      received += mine.length
      if (f.order.some((r) => 'lostAfter' in r)) told++
      // Events only the killed primary had (delivered live, never replicated) are no loss to hide
      // if the client was told after them; all the promoted primary holds must be there.
      const only = mine.filter((id) => !held.has(id))
      extras += only.length
      const untoldOnly = only.filter((id) => !f.order.slice(f.order.findIndex((r) => 'id' in r && r.id === id)).some((r) => 'lostAfter' in r))
      const kept = mine.filter((id) => held.has(id))
      if (kept.length !== expected.length || kept.some((id, j) => id !== expected[j]) || !strictlyIncreasing(mine) || untoldOnly.length > 0) {
        const seen = new Set(mine)
        bad.push(`client ${i}: ${kept.length} of the stream's events, expected ${expected.length}; ${expected.filter((id) => !seen.has(id)).length} missing ` +
          `(${untold(f.order, expected).length} untold), ${mine.length - seen.size} twice, in order: ${strictlyIncreasing(mine)}, ` +
          `${only.length} not in the stream (${untoldOnly.length} untold)`)
      }
    }
    const epochChanged = epochAfter !== epochBefore
    t.comment(`${stored.length} events in the promoted primary's stream from the first client's first event to ${newest}; ` +
      `${received} deliveries checked; ${extras} events held by clients that only the killed primary had; epoch ${epochBefore} → ` +
      `${epochAfter}; ${told} clients told of a loss`)
    t.same(bad, [], `all ${CLIENTS} clients hold exactly the promoted primary's events from their first, once each, in order`)
    // REDIS_WAIT_REPLICAS=1: an unreplicated event is written again, so the history loses its
    // continuity (a new epoch, told to every client) only if the replica lacked one; else nothing
    // is lost and nothing is told.
    t.equal(told, epochChanged ? CLIENTS : 0, `clients told of a loss: ${epochChanged ? 'every one (the epoch changed)' : 'none (the epoch stayed)'}`)
  })

  await t.test('`docker stack rm` and `docker swarm leave --force` leave nothing behind', async (t) => {
    const started = Date.now()
    await stack.remove()
    t.comment(`stack rm, volumes, swarm leave: ${Date.now() - started} ms`)
    t.same(await stack.leftovers(), [], 'no container, network or volume of the stack; the engine is out of swarm mode')
  })
})
