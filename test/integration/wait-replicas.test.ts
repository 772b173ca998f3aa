// Issue 18, items 1 and 6: with REDIS_WAIT_REPLICAS=1 and the only replica stalled (SIGSTOP), a
// real primary and a real replica (`REPLICAOF`): delivery goes on (replication is a report on
// durability, not a gate on later events), each publish resolves only once the replica has its
// event, and the lease, on a connection of its own, is never lost while WAIT blocks the
// publishing connection.
import { readFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { RedisBroker } from '../../lib/redis/broker.js'
import { startRedis, waitFor, type TestRedis } from '../support/helper.js'

const CHANNELS = ['room:a', 'room:b']
const LEASE_MS = 1000
/** How long the replica stays stopped: several WAIT timeouts, several leases. */
const STALL_MS = 5000

function newBroker (t: Test, url: string, waitReplicas = 0): RedisBroker {
  const broker = new RedisBroker({
    target: { url },
    prefix: 'fanout:',
    rules: () => ({ historySize: 100_000, historyAgeMs: 0 }),
    outboxSize: 10_000,
    canaryIntervalMs: 500,
    waitReplicas
  })
  t.teardown(() => broker.close())
  return broker
}

/** The state letter of a process in /proc (R, S, T for stopped, …). */
function processState (pid: number): string {
  return readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '')[0]
}

async function replicaOf (t: Test, primary: TestRedis): Promise<TestRedis> {
  const replica = await startRedis(t)
  // Torn down stopped, it would not die of SIGTERM; SIGKILL works either way, SIGCONT first is tidier.
  t.teardown(() => { replica.proc.child.kill('SIGCONT') })
  await replica.cli('REPLICAOF', '127.0.0.1', String(primary.port))
  await waitFor(async () => /master_link_status:up/.test(await replica.cli('INFO', 'replication')), 20_000, 'the replica to sync')
  await waitFor(async () => /connected_slaves:1/.test(await primary.cli('INFO', 'replication')), 20_000, 'the primary to see its replica')
  return replica
}

interface Made {
  channel: string
  n: number
  /** Made while the replica was stopped. */
  duringStall: boolean
  /** When its publish resolved: while the replica was stopped, or after. */
  resolved?: 'stopped' | 'running'
  rejected?: string
  id?: string
}

t.test('WAIT 1 with the replica stopped: delivery goes on, publishes resolve once it is back, the lease holds', async (t) => {
  const primary = await startRedis(t)
  const replica = await replicaOf(t, primary)
  const pid = replica.proc.child.pid as number

  // The subscriber: another broker, as an app replica, receiving both channels.
  const subscriber = newBroker(t, primary.url)
  let stopped = false
  const delivered = new Map<string, Array<{ n: number, id: string }>>(CHANNELS.map((c) => [c, []]))
  let deliveredWhileStopped = 0
  await subscriber.start((channel, event) => {
    const body = JSON.parse(event.data.toString()) as { n: number }
    delivered.get(channel)?.push({ n: body.n, id: event.id })
    if (stopped) deliveredWhileStopped++
  })
  for (const channel of CHANNELS) await subscriber.join(channel)

  // The publisher leads, as a worker does, with a standby ready to take a lease it fails to renew.
  const publisher = newBroker(t, primary.url, 1)
  const leaderChanges: boolean[] = []
  const lease = publisher.lead(LEASE_MS, (leader) => leaderChanges.push(leader))
  await waitFor(() => lease.leader, 10_000, 'the publisher to lead')
  const standby = newBroker(t, primary.url, 1)
  const standbyChanges: boolean[] = []
  standby.lead(LEASE_MS, (leader) => standbyChanges.push(leader))

  const made: Made[] = []
  const publishing = { on: true }
  const loop = (async () => {
    for (let n = 1; publishing.on; n++) {
      for (const channel of CHANNELS) {
        const event: Made = { channel, n, duringStall: stopped }
        made.push(event)
        publisher.publish(channel, { type: 'tick', n }).then((id) => {
          event.id = id
          event.resolved = stopped ? 'stopped' : 'running'
        }, (err: Error) => { event.rejected = err.message })
      }
      // Bursts with pauses, as a worker's schedule makes them: the outbox also goes idle.
      await sleep(n % 10 === 0 ? 300 : 15)
    }
  })()

  await waitFor(() => made.filter((e) => e.resolved === 'running').length >= 50, 20_000, '50 events confirmed before the stall')

  replica.proc.child.kill('SIGSTOP')
  await waitFor(() => processState(pid) === 'T', 5000, 'the replica to be stopped')
  stopped = true
  const stallStart = made.length
  await sleep(STALL_MS) // the scenario's length; what follows is asserted on what happened meanwhile
  const stats = publisher.stats()
  const madeDuringStall = made.filter((e) => e.duringStall)
  stopped = false
  replica.proc.child.kill('SIGCONT')
  await waitFor(() => processState(pid) !== 'T', 5000, 'the replica to run')

  t.ok(madeDuringStall.length > 100, `events were made during the stall (${madeDuringStall.length})`)
  t.ok(deliveredWhileStopped > 0, `delivery went on while the replica was stopped (${deliveredWhileStopped} events delivered)`)
  t.ok(stats.waitShortfalls > 0, `the shortfall was counted (waitShortfalls ${stats.waitShortfalls})`)
  t.ok(stats.unreplicated > 0, `events awaiting a replica were counted (unreplicated ${stats.unreplicated})`)
  t.equal(madeDuringStall.filter((e) => e.resolved === 'stopped').length, 0, 'no publish made during the stall resolved while the replica was stopped')
  t.same(leaderChanges, [true], 'the leader never lost its lease while WAIT blocked its publishing connection')
  t.same(standbyChanges, [], 'the standby never took it')

  await waitFor(() => madeDuringStall.every((e) => e.resolved !== undefined || e.rejected !== undefined), 30_000, 'the stall\'s publishes to settle')
  publishing.on = false
  await loop
  await waitFor(() => made.every((e) => e.resolved !== undefined || e.rejected !== undefined), 30_000, 'every publish to settle')
  t.same(made.filter((e) => e.rejected !== undefined).map((e) => e.rejected), [], 'no publish failed')
  t.equal(madeDuringStall.filter((e) => e.resolved === 'running').length, madeDuringStall.length, 'every publish made during the stall resolved once the replica was back')
  t.equal(publisher.stats().unreplicated, 0, 'nothing awaits a replica at the end')

  // Exactly once, in order, per channel, with the ids the publishes resolved to.
  for (const channel of CHANNELS) {
    const mine = made.filter((e) => e.channel === channel)
    await waitFor(() => (delivered.get(channel)?.length ?? 0) >= mine.length, 20_000, `every event on ${channel}`)
    await sleep(200) // a duplicate, were there one, would follow its original closely
    const got = delivered.get(channel) ?? []
    t.same(got.map((e) => e.n), mine.map((e) => e.n), `${channel}: all ${mine.length} events delivered once, in order`)
    t.same(got.map((e) => e.id), mine.map((e) => e.id), `${channel}: under the ids their publishes resolved to`)
  }
  t.comment(`${stallStart} events before the stall, ${madeDuringStall.length} during it, ${deliveredWhileStopped} delivered during it`)

  // The replica has every event, as confirmed.
  for (const channel of CHANNELS) {
    const onReplica = await replica.cli('XLEN', `fanout:{${channel}}:events`)
    t.equal(Number(onReplica), made.filter((e) => e.channel === channel).length, `${channel}: the replica holds every event`)
  }
})
