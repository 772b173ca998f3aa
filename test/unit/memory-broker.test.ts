// lib/memory-broker.ts: the embedded broker, a product component.
import t from 'tap'
import { compareIds, idOf } from '../../lib/event.js'
import { MemoryBroker } from '../../lib/memory-broker.js'

const rules = (historySize: number, historyAgeMs = 0) => () => ({ historySize, historyAgeMs })

/** The guest channel's epoch, once it has an event. */
async function epochOf (broker: MemoryBroker): Promise<string | undefined> {
  if (broker.position('guest').epoch === undefined) await broker.publish('guest', { type: 'guest' })
  return broker.position('guest').epoch
}

t.test('MemoryBroker: ids, delivery, history', async (t) => {
  const broker = new MemoryBroker(rules(5))
  t.teardown(() => broker.close())
  const delivered: string[] = []
  await broker.start((_channel, event) => delivered.push(idOf(event.data)))
  await broker.join('guest')
  t.equal(broker.state, 'ready')

  // Published in one synchronous burst: most share a millisecond, ids must still grow.
  const ids = await Promise.all(Array.from({ length: 8 }, (_, i) => broker.publish('guest', { type: 'guest', n: i })))
  for (let i = 1; i < ids.length; i++) t.ok(compareIds(ids[i - 1], ids[i]) < 0, `${ids[i - 1]} < ${ids[i]}`)
  t.equal(new Set(ids).size, 8)
  await new Promise(setImmediate)
  t.same(delivered, ids, 'the listener gets every event once, in id order')

  t.equal(broker.stats().historyLength, 5, 'the ring keeps historySize events')
  const all = await broker.history('guest', '0-0')
  t.same(all.first.map((e) => e.id), ids.slice(3), 'the oldest were trimmed')
  t.equal(all.lost, true, 'events after 0-0 were trimmed')

  const sinceTrimmed = await broker.history('guest', ids[2])
  t.same(sinceTrimmed.first.map((e) => e.id), ids.slice(3))
  t.equal(sinceTrimmed.lost, false, 'since the last trimmed id: nothing after it is missing')

  const sinceOlder = await broker.history('guest', ids[1])
  t.equal(sinceOlder.lost, true, 'ids[2] is after since and gone')

  const recent = await broker.history('guest', ids[5])
  t.same(recent.first.map((e) => e.id), ids.slice(6))
  t.equal(recent.lost, false)
  t.same(JSON.parse(recent.first[0].data.toString()), { id: ids[6], epoch: recent.epoch, channel: 'guest', type: 'guest', n: 6 })

  const latest = await broker.history('guest', ids[7])
  t.same(latest.first, [], 'nothing after the newest')
  t.equal(latest.lost, false)

  await broker.close()
  t.equal(broker.state, 'closed')
  await t.rejects(broker.publish('guest', { type: 'guest' }), /closed/)
})

t.test('MemoryBroker: nothing lost while the history still holds everything', async (t) => {
  const broker = new MemoryBroker(rules(100))
  t.teardown(() => broker.close())
  const ids = []
  for (let i = 0; i < 10; i++) ids.push(await broker.publish('guest', { type: 'guest', n: i }))
  const history = await broker.history('guest', '0-0')
  t.same(history.first.map((e) => e.id), ids)
  t.equal(history.lost, false)
  t.same((await broker.history('guest', ids[3])).first.map((e) => e.id), ids.slice(4))
})

t.test('MemoryBroker: a since ahead of the history, from an earlier run, or huge', async (t) => {
  const broker = new MemoryBroker(rules(100))
  t.teardown(() => broker.close())
  const empty = await broker.history('guest', '0-0')
  t.same({ first: empty.first, lost: empty.lost, clamped: empty.clamped }, { first: [], lost: false, clamped: false }, '0-0 on an empty history: nothing missing')
  const beforeAnything = await broker.history('guest', '1764082000000-4')
  t.same({ lost: beforeAnything.lost, clamped: beforeAnything.clamped }, { lost: true, clamped: true }, 'a position in an empty history came from another run')

  const ids = []
  for (let i = 0; i < 5; i++) ids.push(await broker.publish('guest', { type: 'guest', n: i }))
  const ahead = await broker.history('guest', `${Number(ids[4].split('-')[0]) + 3_600_000}-0`)
  t.same({ first: ahead.first, from: ahead.from, lost: ahead.lost, clamped: ahead.clamped }, { first: [], from: ids[4], lost: false, clamped: true },
    'an hour ahead: clamped to the newest, so the next live event is not skipped')
  const huge = await broker.history('guest', '9999999999999999-9999999999999999')
  t.same({ from: huge.from, clamped: huge.clamped }, { from: ids[4], clamped: true }, 'more digits than a double holds: still ahead')
  const earlier = await broker.history('guest', '1000-0')
  t.same({ ids: earlier.first.map((e) => e.id), lost: earlier.lost }, { ids, lost: true }, 'an id from before this run: everything, and lost')
  const epoch = await epochOf(broker)
  t.equal(earlier.epoch, epoch)
  t.ok(earlier.first.every((e) => JSON.parse(e.data.toString()).epoch === epoch), 'every event names its epoch')
  const other = new MemoryBroker(rules(1))
  t.teardown(() => other.close())
  t.not(await epochOf(other), epoch, 'each broker is a new epoch')
})
