// Issue 9 / 14: what docs/delivery.md claims of repair, with a real redis-server, worker and replica:
// a subscriber cut off longer than the history covers repairs what is left and tells its fanout.v1
// clients exactly how many events were lost (counted as repairLost); a resume while the history
// cannot be read is closed with 1013.
import t, { type Test as Tap } from 'tap'
import { compareIds } from '../../lib/event.js'
import { connect, httpStatus, metricValue, startRedis, startServer, startWorker, waitFor } from '../support/helper.js'

/** Checks `ids` (what a client got) has no duplicate and is in order; returns the confirmed ids after its first that it lacks. */
function missedInOrder (t: Tap, confirmed: string[], ids: string[]): string[] {
  t.ok(ids.every((id, i) => i === 0 || compareIds(id, ids[i - 1]) > 0), 'no duplicate, in order')
  const got = new Set(ids)
  return confirmed.filter((id) => compareIds(id, ids[0]) > 0 && !got.has(id))
}

t.test('a subscriber cut off past the history: repaired, and the loss told and counted', async (t) => {
  const redis = await startRedis(t)
  // MAXLEN ~ trims whole nodes of 100 entries: a small history with a fast worker outruns it.
  const server = await startServer(t, { REDIS_URL: redis.url, CANARY_INTERVAL_MS: '200' })
  await waitFor(async () => await httpStatus(`${server.url}/readyz`) === 200, 30_000, 'ready')
  const client = await connect(t, `${server.ws}/guest`, { protocols: ['fanout.v1'] })
  const worker = startWorker(t, { REDIS_URL: redis.url, HISTORY_SIZE: '5', GUEST_MIN_DELAY_MS: '0', GUEST_MAX_DELAY_MS: '0', LOG_LEVEL: 'debug' })
  await client.until((c) => c.events().length >= 50, 20_000, '50 events')
  // The replica reconnects after its backoff (50 ms at least); meanwhile hold its new
  // subscription back by killing it again, so the worker runs far past the history.
  for (let i = 0; i < 20; i++) {
    await redis.cli('CLIENT', 'KILL', 'TYPE', 'pubsub')
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  await client.until((c) => c.json('gap').length > 0, 20_000, 'a gap notice')
  const [gap] = client.json('gap')
  t.match(gap, { type: 'gap', reason: 'trimmed' }, 'told: trimmed')
  t.ok(Number(gap.lost) > 0, `told how many: ${gap.lost}`)
  await worker.kill('SIGTERM')
  const confirmed = worker.logs().filter((l) => l.msg === 'published').map((l) => String(l.id))
  await client.until((c) => c.events().some((e) => e.id === confirmed[confirmed.length - 1]), 20_000, 'the last event')
  const missing = missedInOrder(t, confirmed, client.events().map((e) => e.id))
  const told = client.json('gap').reduce((sum, g) => sum + Number(g.lost), 0)
  t.equal(told, missing.length, `the notices add up to exactly the ${missing.length} events the client missed`)
  t.ok(Number(await metricValue(server.url, 'fanout_broker_stat{name="repairLost"}')) >= Number(gap.lost), 'counted in repairLost')
  t.ok(Number(await metricValue(server.url, 'fanout_broker_stat{name="repairs"}')) > 0, 'a repair ran')
  t.ok(server.logs().some((l) => /events were lost before this replica could deliver them/.test(String(l.msg))), 'and logged')
})

t.test('a resume while the history cannot be read: closed with 1013', async (t) => {
  const redis = await startRedis(t)
  const server = await startServer(t, { REDIS_URL: redis.url, CANARY_INTERVAL_MS: '200' })
  await waitFor(async () => await httpStatus(`${server.url}/readyz`) === 200, 30_000, 'ready')
  await redis.stop()
  const client = await connect(t, `${server.ws}/guest?since=1764082000000-0`, { protocols: ['fanout.v1'] })
  const closed = await client.closed
  t.same(closed, { code: 1013, reason: 'history unavailable' }, 'try again later')
})

t.test('a repair whose history reads fail while the channel still delivers: live events held at most HISTORY_SIZE, the rest read from the history', async (t) => {
  const redis = await startRedis(t)
  // The replica connects as its own ACL user, so its history reads can be refused while its
  // subscription and the worker's publishes go on.
  await redis.cli('ACL', 'SETUSER', 'replica', 'on', '>replica-secret', '~*', '&*', '+@all')
  const server = await startServer(t, {
    REDIS_URL: `redis://replica:replica-secret@127.0.0.1:${redis.port}`,
    CANARY_INTERVAL_MS: '200',
    HISTORY_SIZE: '100' // the replica's hold limit; the worker keeps a longer history
  })
  await waitFor(async () => await httpStatus(`${server.url}/readyz`) === 200, 30_000, 'ready')
  const client = await connect(t, `${server.ws}/guest`, { protocols: ['fanout.v1'] })
  const worker = startWorker(t, { REDIS_URL: redis.url, HISTORY_SIZE: '100000', GUEST_MIN_DELAY_MS: '0', GUEST_MAX_DELAY_MS: '0', LOG_LEVEL: 'debug' })
  await client.until((c) => c.events().length >= 20, 20_000, '20 events')
  t.equal(await redis.cli('ACL', 'SETUSER', 'replica', '-xrange'), 'OK')
  await redis.cli('CLIENT', 'KILL', 'TYPE', 'pubsub') // resubscribed, the replica repairs: its reads fail
  await waitFor(() => server.logs().some((l) => /live events dropped, to be read from the history/.test(String(l.msg))), 30_000, 'the hold to overflow')
  t.equal(await redis.cli('ACL', 'SETUSER', 'replica', '+xrange'), 'OK')
  await worker.kill('SIGTERM')
  const confirmed = worker.logs().filter((l) => l.msg === 'published').map((l) => String(l.id))
  await client.until((c) => c.events().some((e) => e.id === confirmed[confirmed.length - 1]), 30_000, 'the last event')
  const missing = missedInOrder(t, confirmed, client.events().map((e) => e.id))
  t.same(missing, [], `every one of the ${confirmed.length} confirmed events arrived, the dropped ones from the history`)
  t.same(client.json('gap'), [], 'nothing was lost, so nothing told')
  t.ok(Number(await metricValue(server.url, 'fanout_broker_stat{name="repairedEvents"}')) > 100, 'more than the hold limit came from the history')
})
