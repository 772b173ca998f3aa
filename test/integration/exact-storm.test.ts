// Issue 9: a resume storm has a bounded cost. 3,000 clients resume from 0-0 at once against a
// replica holding 1,000 events: every one gets the whole history, and the replica's RSS grows by
// less than 512 MiB, a quarter of what it took before reads were shared (2.2 GiB); seen 253-313 MiB
// on this 2-core machine, busy or not. Reads are shared and paged, replays run a few at a time.
import { readFileSync } from 'node:fs'
import t from 'tap'
import { WebSocket } from 'ws'
import { httpStatus, metricValue, startRedis, startServer, startWorker, waitFor } from '../support/helper.js'

const CLIENTS = 3000
const EVENTS = 1000
const MIB = 1024 * 1024

function rssOf (pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('VmRSS:'))
  return Number(line?.split(/\s+/)[1]) * 1024
}

t.test(`${CLIENTS} clients resuming the whole history at once: all served, RSS growth under 512 MiB`, async (t) => {
  const redis = await startRedis(t)
  const server = await startServer(t, { REDIS_URL: redis.url, CANARY_INTERVAL_MS: '500', HISTORY_SIZE: String(EVENTS), MAX_CONNECTIONS: '20000' })
  await waitFor(async () => await httpStatus(`${server.url}/readyz`) === 200, 30_000, 'ready')
  const worker = startWorker(t, { REDIS_URL: redis.url, GUEST_COUNT: String(EVENTS), GUEST_MIN_DELAY_MS: '0', GUEST_MAX_DELAY_MS: '0' })
  t.same(await worker.exited, { code: 0, signal: null })
  await waitFor(async () => await metricValue(server.url, 'fanout_events_in_total') === EVENTS, 20_000, 'the replica to take every event')

  const pid = server.child.pid as number
  const baseline = rssOf(pid)
  let peak = baseline
  const sampler = setInterval(() => { peak = Math.max(peak, rssOf(pid)) }, 20)
  t.teardown(() => clearInterval(sampler))

  const counts = new Array<number>(CLIENTS).fill(0)
  const sockets: WebSocket[] = []
  t.teardown(() => { for (const s of sockets) s.terminate() })
  const done = Promise.all(Array.from({ length: CLIENTS }, (_, i) => new Promise<void>((resolve, reject) => {
    const socket = new WebSocket(`${server.ws}/guest?since=0-0`, { skipUTF8Validation: true })
    sockets.push(socket)
    socket.on('message', () => { if (++counts[i] === EVENTS) resolve() })
    socket.on('error', reject)
    socket.on('close', (code) => { if (counts[i] < EVENTS) reject(new Error(`client ${i} closed with ${code} after ${counts[i]} events`)) })
  })))
  const started = Date.now()
  await done
  const seconds = (Date.now() - started) / 1000
  clearInterval(sampler)
  peak = Math.max(peak, rssOf(pid))
  t.ok(counts.every((n) => n === EVENTS), `every client got all ${EVENTS} events (in ${seconds.toFixed(1)} s)`)
  t.comment(`replica RSS: ${(baseline / MIB).toFixed(0)} MiB before, ${(peak / MIB).toFixed(0)} MiB at the peak`)
  t.ok(peak - baseline < 512 * MIB, `RSS grew ${((peak - baseline) / MIB).toFixed(0)} MiB, under 512 MiB`)
  t.ok(Number(await metricValue(server.url, 'fanout_replays_queued_total')) > 0, 'resumes beyond the concurrent cap waited their turn')
  t.equal(await metricValue(server.url, 'fanout_replayed_total'), CLIENTS * EVENTS, 'every replayed event counted')
})
