// Issue 10: delivery through a failover. Sentinel (a primary, a replica, three sentinels) and
// Cluster (three primaries with a replica each): two workers, three app replicas, clients that
// record every id; the primary that holds the stream is SIGKILLed mid-stream. Every client ends
// with every event the workers had confirmed, once and in order, and what it lacks of them (a write
// the primary took and died with) it was told of, by a gap covering it.
import t, { type Test } from 'tap'
import { compareIds } from '../../lib/event.js'
import { connect, httpStatus, startServer, startWorker, waitFor, type Proc, type TestClient } from '../support/helper.js'
import { receivedOf, untold } from '../support/audit.js'
import { startCluster, startSentinels, type HostPort } from '../support/redis-topology.js'

t.setTimeout(400_000)

const hostPorts = (nodes: HostPort[]) => nodes.map((n) => `${n.host}:${n.port}`).join(',')
const ids = (client: TestClient) => client.events().map((e) => e.id)

function confirmed (workers: Proc[]): string[] {
  return workers.flatMap((w) => w.logs().filter((l) => l.msg === 'published').map((l) => String(l.id))).sort(compareIds)
}

async function failover (t: Test, env: Record<string, string>, kill: () => Promise<void>) {
  const replicas: Array<Awaited<ReturnType<typeof startServer>>> = []
  for (let i = 0; i < 3; i++) {
    const server = await startServer(t, { ...env, CANARY_INTERVAL_MS: '300' })
    await waitFor(async () => await httpStatus(`${server.url}/readyz`) === 200, 60_000, 'a ready replica')
    replicas.push(server)
  }
  const clients = await Promise.all(replicas.map((r) => connect(t, `${r.ws}/guest`, { protocols: ['fanout.v1'] })))
  const workers = [0, 1].map(() => startWorker(t, {
    ...env, WORKER_LEASE_MS: '1500', GUEST_MIN_DELAY_MS: '20', GUEST_MAX_DELAY_MS: '40', LOG_LEVEL: 'debug'
  }))
  await waitFor(() => clients.every((c) => ids(c).length >= 40), 30_000, '40 events everywhere')

  const killedAt = Date.now()
  const heardBefore = clients.map((c) => ids(c).length)
  await kill()
  await waitFor(() => clients.every((c, i) => ids(c).length >= heardBefore[i] + 20), 60_000, 'delivery to resume everywhere')
  const resumedAfter = Date.now() - killedAt
  t.comment(`from the kill to 20 more events at every client: ${resumedAfter} ms`)
  await waitFor(async () => (await Promise.all(replicas.map((r) => httpStatus(`${r.url}/readyz`)))).every((s) => s === 200), 30_000, 'every replica ready again')

  for (const w of workers) await w.kill('SIGTERM')
  const all = confirmed(workers)
  for (const [i, client] of clients.entries()) {
    const expected = all.filter((id) => compareIds(id, ids(client)[0]) >= 0)
    await client.until((c) => ids(c).includes(all[all.length - 1]) || c.json('gap').length > 0, 20_000, 'the last event').catch(() => {})
    const got = ids(client)
    t.same(got, [...new Set(got)].sort(compareIds), `client ${i}: no duplicate, in order (${got.length} events)`)
    const received = client.json().flatMap((m) => receivedOf(m, (e) => e.type === 'guest', null))
    const missing = expected.filter((id) => !got.includes(id))
    t.same(untold(received, expected), [], `client ${i}: every confirmed event received or told of (${missing.length} missing, ${client.json('gap').length} gap notices)`)
  }
  return { resumedAfter }
}

t.test('Sentinel: the primary SIGKILLed mid-stream', async (t) => {
  const topology = await startSentinels(t, { replicas: 1, downAfterMs: 1000, failoverTimeoutMs: 4000 })
  const env = { REDIS_SENTINELS: hostPorts(topology.sentinels), REDIS_SENTINEL_NAME: topology.name }
  const primary = await topology.primary()
  await failover(t, env, async () => {
    await topology.kill(primary, 'SIGKILL')
    const next = await topology.waitForFailover(primary)
    t.not(next.port, primary.port, `the sentinels promoted ${next.port}`)
  })
})

t.test('Cluster: the primary owning the stream\'s slot SIGKILLed mid-stream', async (t) => {
  const cluster = await startCluster(t, { primaries: 3, replicasPerPrimary: 1, nodeTimeoutMs: 1000 })
  const env = { REDIS_CLUSTER_NODES: hostPorts(cluster.nodes.slice(0, 3)) }
  const slot = await cluster.slotOf('fanout:{guest}:events')
  const owner = await cluster.ownerOfSlot(slot)
  await failover(t, env, async () => {
    await cluster.kill(owner, 'SIGKILL')
    const next = await cluster.waitForFailover(slot, owner)
    t.not(next.port, owner.port, `slot ${slot} moved to ${next.port}`)
  })
})
