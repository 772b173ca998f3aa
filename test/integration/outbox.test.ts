// The worker's outbox while Redis is unreachable: bounded by OUTBOX_SIZE, the oldest dropped
// (logged and counted), the rest published in order once Redis is back; the worker never stalls.
import t from 'tap'
import { startRedis, startWorker, streamEntries, waitFor } from '../support/helper.js'

t.test('beyond OUTBOX_SIZE the oldest events are dropped; the newest arrive in order', async (t) => {
  const redis = await startRedis(t)
  const worker = startWorker(t, {
    REDIS_URL: redis.url,
    OUTBOX_SIZE: '20',
    GUEST_MIN_DELAY_MS: '1',
    GUEST_MAX_DELAY_MS: '3',
    METRICS_INTERVAL_MS: '200'
  })
  const metrics = () => worker.logs().filter((l) => l.msg === 'metrics')
  // Leading, then cut off from Redis: it keeps its schedule, into the outbox.
  await waitFor(() => metrics().some((l) => l.leader === 1), 20_000, 'the worker to lead')
  await redis.stop()
  // More than the publisher's 256 in flight: it must go on making events regardless.
  await waitFor(() => metrics().some((l) => Number(l.outboxDropped) > 300), 20_000, 'more than 300 drops')
  const drops = worker.logs().filter((l) => /outbox full: dropped the oldest event/.test(String(l.msg)))
  const accounted = drops.length + drops.reduce((sum, l) => sum + Number(l.suppressed ?? 0), 0)
  t.ok(drops.length > 0 && drops.length < 100, `drops are logged, rate-limited (${drops.length} lines)`)
  t.equal(accounted, Number(drops[drops.length - 1].dropped), 'lines logged plus lines suppressed account for every drop up to the last line')
  t.ok(metrics().every((l) => Number(l.outboxLength) <= 20), 'the outbox never holds more than OUTBOX_SIZE')
  const firstDropAt = Number(drops[0].time)

  await redis.start()
  await waitFor(async () => (await streamEntries(redis.url)).length >= 20, 15_000, 'the outbox to be published')
  await worker.kill('SIGTERM')
  const entries = await streamEntries(redis.url)
  const published = entries.map((e) => JSON.parse(e.body) as { ts: number })
  // A batch on its way when Redis went away is never dropped (ioredis re-sends it, and the script
  // answers it once): at most one batch (OUTBOX_SIZE here) may be older than the first drop.
  const older = published.filter((e) => e.ts <= firstDropAt).length
  t.ok(older <= 20 && published.length > older, `the events kept are newer than the first drop but for the batch in flight (${older} of ${published.length}): the oldest went`)
  t.same(published.map((e) => e.ts), [...published.map((e) => e.ts)].sort((a, b) => a - b), 'published in the order they were made')
  t.same(entries.map((e) => e.seq), entries.map((_, i) => i + 1), 'one contiguous sequence')
})
