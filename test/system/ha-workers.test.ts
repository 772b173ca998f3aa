// Issue 10: standby workers with a fenced lease. Two workers against one real redis-server: only
// the lease holder publishes; a SIGKILLed holder is replaced within the lease time; a holder
// paused past its lease (SIGSTOP) and woken (SIGCONT) cannot publish. Nothing is published twice.
import t, { type Test } from 'tap'
import { compareIds } from '../../lib/event.js'
import { startRedis, startWorker, streamEntries, waitFor, type Proc, type StreamEntry } from '../support/helper.js'

const LEASE_MS = 1000
const MAX_DELAY_MS = 40

function workers (t: Test, url: string): Proc[] {
  return [0, 1].map(() => startWorker(t, {
    REDIS_URL: url, WORKER_LEASE_MS: String(LEASE_MS), GUEST_MIN_DELAY_MS: '20', GUEST_MAX_DELAY_MS: String(MAX_DELAY_MS), METRICS_INTERVAL_MS: '200'
  }))
}

const leads = (w: Proc): boolean => w.logs().filter((l) => typeof l.leader === 'boolean' && 'leaseMs' in l).at(-1)?.leader === true

/** The history as one publisher's schedule: no duplicate, ids and creation times in order. */
function checkHistory (t: Test, stream: StreamEntry[]): void {
  const ids = stream.map((e) => e.id)
  t.equal(new Set(ids).size, ids.length, 'no id appears twice')
  t.equal(new Set(stream.map((e) => e.body)).size, stream.length, 'no event published twice')
  t.ok(ids.every((id, i) => i === 0 || compareIds(id, ids[i - 1]) > 0), 'ids only grow')
  const made = stream.map((e) => (JSON.parse(e.body) as { ts: number }).ts)
  t.ok(made.every((ts, i) => i === 0 || ts >= made[i - 1]), 'events in the order they were made: no stale publisher wrote in between')
}

/** The longest pause in the schedule, from each event's creation time. */
function longestGap (stream: StreamEntry[]): number {
  const made = stream.map((e) => (JSON.parse(e.body) as { ts: number }).ts)
  return Math.max(...made.slice(1).map((ts, i) => ts - made[i]))
}

t.test('the leading worker SIGKILLed: the standby takes over within the lease, nothing twice', async (t) => {
  const redis = await startRedis(t)
  const pair = workers(t, redis.url)
  const leader = await waitFor(() => pair.find(leads), 20_000, 'a leader') as Proc
  const standby = pair.find((w) => w !== leader) as Proc
  t.notOk(leads(standby), 'exactly one worker leads')
  await waitFor(async () => (await streamEntries(redis.url)).length >= 30, 20_000, '30 events')
  t.equal(standby.logs().filter((l) => l.msg === 'metrics' && Number(l.published) > 0).length, 0, 'the standby published nothing')
  await leader.kill('SIGKILL')
  await waitFor(() => leads(standby), 10_000, 'the standby to take over')
  const before = (await streamEntries(redis.url)).length
  await waitFor(async () => (await streamEntries(redis.url)).length >= before + 30, 20_000, '30 more events')
  const stream = await streamEntries(redis.url)
  checkHistory(t, stream)
  const gap = longestGap(stream)
  t.ok(gap <= LEASE_MS * 1.2 + MAX_DELAY_MS + 250, `the schedule paused ${gap} ms, within the lease (${LEASE_MS} ms) and a standby's check`)
})

t.test('the leading worker paused past its lease, then woken: fenced, it publishes nothing', async (t) => {
  const redis = await startRedis(t)
  const pair = workers(t, redis.url)
  const leader = await waitFor(() => pair.find(leads), 20_000, 'a leader') as Proc
  const standby = pair.find((w) => w !== leader) as Proc
  await waitFor(async () => (await streamEntries(redis.url)).length >= 30, 20_000, '30 events')
  leader.child.kill('SIGSTOP')
  await waitFor(() => leads(standby), 10_000, 'the standby to take over while the leader sleeps')
  const takeover = (await streamEntries(redis.url)).length
  leader.child.kill('SIGCONT')
  // Woken, it still believes it leads until its next renewal, and its schedule may make events:
  // the fence refuses them, and it stands down.
  await waitFor(() => !leads(leader), 10_000, 'the woken worker to stand down')
  await waitFor(async () => (await streamEntries(redis.url)).length >= takeover + 40, 20_000, '40 events after the takeover')
  t.ok(leads(standby), 'the standby still leads')
  const stream = await streamEntries(redis.url)
  checkHistory(t, stream)
  const gap = longestGap(stream)
  t.ok(gap <= LEASE_MS * 1.2 + MAX_DELAY_MS + 250, `the schedule paused ${gap} ms, within the lease`)
  const fenced = leader.logs().filter((l) => /FENCED/.test(String(l.err)) || /no longer leads/.test(String(l.msg))).length
  t.comment(`the woken worker's publishes refused by the fence: ${fenced} log lines (0: its renewal found the new holder first)`)
  const metrics = leader.logs().filter((l) => l.msg === 'metrics').at(-1)
  t.equal(metrics?.leader, 0, 'its metrics line says it does not lead')
})

t.test('REDIS_WAIT_REPLICAS=1: events leave the outbox only once a replica has them, each once', async (t) => {
  const primary = await startRedis(t)
  const worker = startWorker(t, {
    REDIS_URL: primary.url, REDIS_WAIT_REPLICAS: '1', GUEST_COUNT: '40', GUEST_MIN_DELAY_MS: '10', GUEST_MAX_DELAY_MS: '20', METRICS_INTERVAL_MS: '200', LOG_LEVEL: 'debug'
  })
  await waitFor(() => worker.logs().some((l) => /replicas did not confirm/.test(String(l.msg))), 20_000, 'an unconfirmed batch')
  t.equal(worker.logs().filter((l) => l.msg === 'published').length, 0, 'without a replica nothing counts as published')
  await waitFor(() => worker.logs().some((l) => l.msg === 'metrics' && Number(l.waitShortfalls) > 0), 5000, 'the shortfall counted in the metrics line')
  const replica = await startRedis(t)
  await replica.cli('REPLICAOF', '127.0.0.1', String(primary.port))
  t.same(await worker.exited, { code: 0, signal: null }, 'with a replica, all 40 confirmed')
  const stream = await streamEntries(primary.url)
  t.equal(stream.length, 40, 'each event once in the history, re-sent batches notwithstanding')
  checkHistory(t, stream)
  t.same((await streamEntries(replica.url)).map((e) => e.id), stream.map((e) => e.id), 'and on the replica')
})
