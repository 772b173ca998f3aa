// Issue 18: a clock behind on the promoted primary. Redis replicates a key's expiry as an absolute
// time, so on a replica whose clock runs 30 s late a dead worker's lease would outlive it by 30 s
// there. Standbys measure the lease on their own clocks (lib/redis/lease.ts): the leading worker
// and the primary SIGKILLed together, the skewed replica promoted behind the same address, the
// standby publishes again within a few leases. The skew is real: the replica's clock calls go
// through test/support/clock-skew.c (LD_PRELOAD; libfaketime clashes with redis-server's allocator).
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t, { type Test } from 'tap'
import { ask } from '../support/redis-topology.js'
import { connect, ROOT, run, startServer, startWorker, tempDir, waitFor, type Proc } from '../support/helper.js'
import { freePort } from '../support/free-port.js'
import { tcpProxy } from '../support/tcp-proxy.js'

t.setTimeout(180_000)

const HOST = '127.0.0.1'
const LEASE_MS = 1000
const SKEW_S = 30

async function redisNode (t: Test, extra: string[], env: Record<string, string> = {}) {
  const port = await freePort()
  const dir = tempDir(t, 'fanout-skew-')
  const proc = run(t, 'redis-server', ['--port', String(port), '--bind', HOST, '--dir', dir, '--save', '', '--appendonly', 'no', ...extra], env, dir)
  await waitFor(async () => await ask({ host: HOST, port }, ['PING']).catch(() => '') === 'PONG', 10_000, `redis-server on ${port}`)
  return { host: HOST, port, proc }
}

async function clockMs (node: { host: string, port: number }): Promise<number> {
  const [s, us] = await ask(node, ['TIME']) as [string, string]
  return Number(s) * 1000 + Math.floor(Number(us) / 1000)
}

const leads = (w: Proc): boolean => w.logs().filter((l) => typeof l.leader === 'boolean' && 'leaseMs' in l).at(-1)?.leader === true

t.test(`the primary and the leading worker SIGKILLed, a replica ${SKEW_S} s late promoted: the standby takes over on its own clock`, async (t) => {
  const shim = join(tempDir(t, 'fanout-skew-shim-'), 'clock-skew.so')
  await promisify(execFile)('gcc', ['-shared', '-fPIC', '-O2', '-o', shim, join(ROOT, 'test/support/clock-skew.c')])
  const primary = await redisNode(t, [])
  const replica = await redisNode(t, ['--replicaof', HOST, String(primary.port)], { LD_PRELOAD: shim, SKEW_SECONDS: String(SKEW_S) })
  const skew = (await clockMs(primary)) - (await clockMs(replica))
  t.ok(skew > (SKEW_S - 2) * 1000 && skew < (SKEW_S + 2) * 1000, `the replica's clock is ${Math.round(skew / 1000)} s behind the primary's`)
  await waitFor(async () => String(await ask(replica, ['INFO', 'replication']).catch(() => '')).includes('master_link_status:up'), 15_000, 'the replica to sync')

  const endpoint = await tcpProxy(t, primary.port)
  const env = { REDIS_URL: endpoint.url, CANARY_INTERVAL_MS: '300' }
  const server = await startServer(t, env)
  const client = await connect(t, `${server.ws}/guest`, { protocols: ['fanout.v1'] })
  const workerEnv = { ...env, WORKER_LEASE_MS: String(LEASE_MS), GUEST_MIN_DELAY_MS: '50', GUEST_MAX_DELAY_MS: '100' }
  const first = startWorker(t, workerEnv)
  await waitFor(() => leads(first), 20_000, 'the first worker to lead')
  const standby = startWorker(t, workerEnv)
  await waitFor(() => standby.output().includes('redis connection state changed') || standby.child.exitCode !== null, 20_000, 'the second worker to start')
  const before = client.events().length
  await client.until((c) => c.events().length >= before + 30, 20_000, '30 more events, a few leases')
  await waitFor(async () => await ask(replica, ['EXISTS', 'fanout:{guest}:lease']) === 1, 10_000, 'the lease on the replica')
  t.notOk(leads(standby), 'the standby never took the lease while its holder renewed it')

  await Promise.all([first.kill('SIGKILL'), primary.proc.kill('SIGKILL')])
  const killedAt = Date.now()
  t.equal(await ask(replica, ['REPLICAOF', 'NO', 'ONE']), 'OK', 'the late replica promoted')
  endpoint.retarget(replica.port)
  const heard = client.events().length
  await waitFor(() => leads(standby), 60_000, 'the standby to lead')
  const tookOver = Date.now() - killedAt
  await client.until((c) => c.events().length >= heard + 5, 30_000, 'events from the standby')
  t.ok(tookOver < SKEW_S * 1000 / 3, `the standby led ${tookOver} ms after the kill (lease ${LEASE_MS} ms; the replica's clock ${SKEW_S} s late)`)
})
