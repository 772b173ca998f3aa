// Issue 5, "Slow consumers": clients that complete the handshake and then never read are cut off
// once their unsent bytes pass maxBufferedBytes; everyone else keeps getting every event, and the
// replica's memory stays bounded however many stall.
import { readFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { coreOf } from '../../plugins/fanout.js'
import t from 'tap'
import { compareIds } from '../../lib/event.js'
import { build, connect, holds, httpStatus, metricValue, startRedis, startServer, startWorker, waitFor, type TestClient } from '../support/helper.js'
import { RawClient } from '../support/raw-ws.js'

/** The resident set of a process, in bytes (/proc/<pid>/status, VmRSS). */
function rssOf (pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('VmRSS:'))
  return Number(line?.match(/(\d+) kB/)?.[1]) * 1024
}

function inOrder (client: TestClient): boolean {
  const ids = client.events().map((e) => e.id)
  return ids.every((id, i) => i === 0 || compareIds(ids[i - 1], id) < 0)
}

const MiB = 1024 * 1024

t.test('stalled readers are cut off while the worker pours events out; memory stays bounded', async (t) => {
  const STALLED = 50
  const EVENTS = 100_000
  const redis = await startRedis(t)
  // History as long as the run (the worker's XADD trims it): should a starved machine let the
  // replica fall so far behind Redis that its subscriber is reconnected, the gap repair still fills
  // the whole gap. What is tested here is the hub: cut-offs, bounded memory, every event to readers.
  const history = { HISTORY_SIZE: String(EVENTS) }
  const server = await startServer(t, { REDIS_URL: redis.url, PUBLISHER: 'off', ...history })
  // Until it has a place in the stream a replica answers /guest with 503 (docs/operations.md, "Health and readiness").
  await waitFor(async () => await httpStatus(`${server.url}/readyz`) === 200, 30_000, 'the replica to be ready')
  const pid = server.child.pid as number

  const normal = await Promise.all([1, 2].map(() => connect(t, `${server.ws}/guest`)))
  await sleep(500)
  const baseline = rssOf(pid)
  const stalled = await Promise.all(Array.from({ length: STALLED }, () => RawClient.open(t, server.port)))
  for (const raw of stalled) raw.stall()
  await waitFor(async () => await metricValue(server.url, 'fanout_connections') === STALLED + normal.length)

  let peak = baseline
  const sampler = setInterval(() => { peak = Math.max(peak, rssOf(pid)) }, 50)
  t.teardown(() => clearInterval(sampler))
  const started = Date.now()
  const worker = startWorker(t, { REDIS_URL: redis.url, GUEST_MIN_DELAY_MS: '0', GUEST_MAX_DELAY_MS: '0', GUEST_COUNT: String(EVENTS), ...history })
  t.equal((await worker.exited).code, 0, 'the worker published every event')
  for (const client of normal) {
    await client.until((c) => c.messages.length >= EVENTS, 60_000, 'every event').catch(async (err) => {
      // What a failure needs first: was the reader cut off, or did the events not reach the replica?
      t.comment(`reader readyState ${client.socket.readyState}; replica: ` +
        `${await metricValue(server.url, 'fanout_events_in_total')} events in, ` +
        `${await metricValue(server.url, 'fanout_slow_consumer_drops_total')} slow-consumer drops`)
      t.comment(server.output().split('\n').filter((l) => !/"(incoming request|request completed)"/.test(l)).slice(-20).join('\n'))
      throw err
    })
  }
  clearInterval(sampler)
  t.comment(`${EVENTS} events in ${Date.now() - started} ms; RSS ${(baseline / MiB).toFixed(0)} MiB at rest, peak ${(peak / MiB).toFixed(0)} MiB`)

  t.equal(await metricValue(server.url, 'fanout_slow_consumer_drops_total'), STALLED, 'every stalled reader was cut off')
  t.equal(await metricValue(server.url, 'fanout_connections'), normal.length, 'and is gone from the hub')
  for (const client of normal) {
    t.equal(client.events().length, EVENTS, 'a reading client got every event')
    t.ok(inOrder(client), 'in order')
    t.equal(client.socket.readyState, client.socket.OPEN, 'and is still connected')
  }
  t.ok(peak < baseline + 150 * MiB, `peak RSS ${(peak / MiB).toFixed(0)} MiB stays under ${(baseline / MiB + 150).toFixed(0)} MiB`)

  // Resumed, a cut-off reader finds its connection ended: the server let go of it.
  let ended = 0
  for (const raw of stalled) {
    raw.ended.then(() => ended++, () => {})
    raw.socket.resume()
  }
  t.ok(await holds(() => ended === STALLED, 30_000), `every stalled connection ended (${ended} of ${STALLED})`)
})

t.test('in process: a cut-off client is closed, its socket destroyed and its buffer freed', async (t) => {
  const maxBufferedBytes = 256 * 1024
  const { app, ws, port } = await build(t, { maxBufferedBytes })
  const { hub, stats } = coreOf(app)
  const reader = await connect(t, `${ws}/guest`)
  await waitFor(() => hub.size === 1)
  const [readerOnServer] = hub.clients
  const stalled = await Promise.all(Array.from({ length: 5 }, () => RawClient.open(t, port)))
  for (const raw of stalled) raw.stall()
  await waitFor(() => hub.size === 6)
  const stalledOnServer = [...hub.clients].filter((c) => c !== readerOnServer)

  // 16 KiB events, as fast as the reading client takes them, until every stalled one is cut off.
  // Each stalled socket's buffer is read right after every event, while it is still connected: the
  // cap is checked on the buffers it bounds, not on sockets already freed.
  const guest = '客'.repeat(5000)
  let published = 0
  let mostBuffered = 0
  while (stats.slowConsumerDrops < stalled.length && published < 5000) {
    for (let i = 0; i < 8; i++, published++) {
      await app.fanout.publish({ type: 'guest', guest, time: '00:00:00', ts: Date.now() })
      for (const client of stalledOnServer) if (!client.raw.destroyed) mostBuffered = Math.max(mostBuffered, client.raw.writableLength)
    }
    await reader.until((c) => c.messages.length >= published, 10_000, 'the reader to keep up')
  }
  t.ok(mostBuffered > maxBufferedBytes / 2, `the stalled sockets' buffers were seen filling (${mostBuffered} bytes at most)`)
  t.ok(mostBuffered <= maxBufferedBytes, `no connected socket ever held more than the cap (${mostBuffered} bytes at most)`)
  t.equal(stats.slowConsumerDrops, stalled.length, `every stalled reader was cut off, within ${published} events`)
  t.ok(stalledOnServer.every((c) => c.raw.destroyed && c.raw.writableLength === 0), 'their sockets destroyed, their buffers freed')
  t.ok(await holds(() => hub.size === 1), 'the hub keeps only the reader')
  t.equal(reader.events().length, published, 'the reader got every event')
  t.ok(inOrder(reader))
})
