// The demo's parts on their own: guest names, the schedule, the publisher.
import t from 'tap'
import { clockTime, makeGuest, nextDelay } from '../../demo/guests.js'
import { startPublisher } from '../../demo/publisher.js'
import { waitFor } from '../support/helper.js'

const CHINESE_NAME = /^[\u4e00-\u9fff]{2,4}$/

t.test('nextDelay stays within [min, max] and reaches both ends', async (t) => {
  t.equal(nextDelay(3000, 8000, () => 0), 3000, 'the lowest draw gives min')
  t.equal(nextDelay(3000, 8000, () => 0.999999999), 8000, 'the highest draw gives max')
  t.equal(nextDelay(3000, 8000, () => 0.5), 5500)
  t.equal(nextDelay(0, 0), 0, '0 and 0: as fast as possible')
  t.equal(nextDelay(250, 250), 250)

  // Math.random, many draws: every value of a small range occurs, nothing falls outside it.
  const counts = new Map<number, number>()
  for (let i = 0; i < 20_000; i++) {
    const d = nextDelay(10, 19)
    counts.set(d, (counts.get(d) ?? 0) + 1)
  }
  t.same([...counts.keys()].sort((a, b) => a - b), [10, 11, 12, 13, 14, 15, 16, 17, 18, 19], 'min, max and all between occur')
  // Uniform: 2000 expected per value; 1600 is more than 9 standard deviations away.
  for (const [value, n] of counts) t.ok(n > 1600 && n < 2400, `${value} drawn ${n} times of 20000`)

  const wide = Array.from({ length: 2000 }, () => nextDelay(3000, 8000))
  t.ok(wide.every((d) => Number.isInteger(d) && d >= 3000 && d <= 8000), 'integers within the bounds')
  t.ok(Math.min(...wide) < 3500 && Math.max(...wide) > 7500, 'spread over the whole range')
})

t.test('makeGuest: the event the seed sends, plus type and ts', async (t) => {
  const now = new Date(2024, 0, 2, 3, 4, 5)
  const guest = makeGuest(now)
  t.same(Object.keys(guest).sort(), ['guest', 'time', 'ts', 'type'])
  t.equal(guest.type, 'guest')
  t.match(guest.guest, CHINESE_NAME)
  t.equal(guest.time, '03:04:05')
  t.equal(guest.ts, now.getTime())
  t.equal(clockTime(new Date(2024, 0, 2, 23, 59, 9)), '23:59:09')

  const names = Array.from({ length: 200 }, () => makeGuest().guest)
  t.ok(names.every((n) => CHINESE_NAME.test(n)), 'every name is 2–4 Chinese characters')
  t.ok(new Set(names).size > 100, 'names vary')
  const fresh = makeGuest()
  t.match(fresh.time, /^\d\d:\d\d:\d\d$/)
  t.ok(Math.abs(fresh.ts - Date.now()) < 60_000, 'ts defaults to now')
})

t.test('the publisher keeps to its schedule while the broker confirms nothing (Redis down)', async (t) => {
  let made = 0
  const run = startPublisher({
    publish: () => { made++; return new Promise<string>(() => {}) }, // never confirmed
    minDelayMs: 0,
    maxDelayMs: 0,
    count: 300,
    stallMs: 5
  })
  t.teardown(() => run.stop())
  await waitFor(() => made === 300, 10_000, '300 events made')
  t.equal(made, 300, 'made every event, past the 256 waiting for confirmation')
})

t.test('the publisher stays in step with a broker that confirms', async (t) => {
  const order: number[] = []
  let made = 0
  const run = startPublisher({
    publish: () => { const n = made++; return new Promise<string>((resolve) => setImmediate(() => { order.push(n); resolve(String(n)) })) },
    minDelayMs: 0,
    maxDelayMs: 0,
    count: 1000
  })
  await run.done
  t.equal(made, 1000)
  t.same(order, Array.from({ length: 1000 }, (_, i) => i), 'all confirmed, in order, before done resolves')
})
