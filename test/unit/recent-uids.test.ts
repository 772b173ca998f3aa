import t from 'tap'
import { RecentUids } from '../../lib/redis/recent-uids.js'

t.test('a repeat is recognised while it is among the last `limit` uids, and forgotten after', async (t) => {
  const recent = new RecentUids(3)
  t.equal(recent.add('a'), true, 'a first uid is new')
  t.equal(recent.add('a'), false, 'the same uid again is a repeat')
  t.equal(recent.add('b'), true)
  t.equal(recent.add('c'), true)
  t.equal(recent.add('a'), false, 'still remembered with the set full')
  t.equal(recent.add('d'), true, 'a fourth uid pushes out the oldest')
  t.equal(recent.add('b'), false, 'b is among the last three')
  t.equal(recent.add('a'), true, 'the oldest was forgotten: new again')
  // Remembered: c, d, a. A repeat does not make a uid newer: forgotten in the order they came.
  t.equal(recent.add('e'), true, 'e pushes out c')
  t.equal(recent.add('c'), true, 'c was the oldest and is forgotten in turn')
  t.equal(recent.add('a'), false, 'a is among the last three (a, e, c)')
  t.equal(recent.add('d'), true, 'd is not')
})

t.test('the window slides over many more uids than it holds', async (t) => {
  const recent = new RecentUids(1000)
  for (let i = 0; i < 5000; i++) recent.add(`p.1.${i}`)
  let repeats = 0
  for (let i = 4000; i < 5000; i++) if (!recent.add(`p.1.${i}`)) repeats++
  t.equal(repeats, 1000, 'the last 1,000 are all remembered')
  t.equal(recent.add('p.1.3999'), true, 'the one before them is not')
})
