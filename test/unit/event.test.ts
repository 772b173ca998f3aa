// lib/event.ts: event ids, bytes and epochs.
import t from 'tap'
import { compareIds, encodeBody, epochOf, ID_PATTERN, idOf, uidOf, withId } from '../../lib/event.js'

t.test('event ids and bytes', async (t) => {
  t.ok(ID_PATTERN.test('1764082000000-0'))
  t.notOk(ID_PATTERN.test('abc'))
  t.notOk(ID_PATTERN.test('1-2-3'))
  t.ok(compareIds('1-0', '2-0') < 0)
  t.ok(compareIds('2-0', '1-5') > 0)
  t.ok(compareIds('5-2', '5-10') < 0, 'sequence compared as a number, not as text')
  t.ok(compareIds('99-0', '100-0') < 0, 'ms compared as a number, not as text')
  t.equal(compareIds('7-3', '7-3'), 0)
  t.ok(compareIds('9007199254740993-0', '9007199254740992-0') > 0, 'beyond 2^53: still exact')
  t.ok(compareIds('1764082000000-9999999999999999', '1764082000001-0') < 0)
  t.equal(compareIds('007-1', '7-1'), 0, 'leading zeros do not count')

  const body = encodeBody({ type: 'guest', guest: '张伟', time: '15:26:01', ts: 1 })
  const data = withId('1764082000000-3', 'e9Pq_2-x', 'room:42', body)
  t.equal(idOf(data), '1764082000000-3')
  t.equal(epochOf(data), 'e9Pq_2-x')
  t.same(JSON.parse(data.toString()), { id: '1764082000000-3', epoch: 'e9Pq_2-x', channel: 'room:42', type: 'guest', guest: '张伟', time: '15:26:01', ts: 1 })

  t.throws(() => encodeBody({ type: 'guest', id: 'mine' }), TypeError, 'the id is the broker\'s')
  t.throws(() => encodeBody({ type: 'guest', epoch: 'mine' }), TypeError, 'the epoch is the broker\'s')
  t.throws(() => encodeBody({ guest: '张伟' } as never), TypeError, 'type is required')
  t.throws(() => encodeBody({ type: 3 } as never), TypeError, 'type is a string')
  t.throws(() => encodeBody(null as never), TypeError)
})

t.test('an event\'s uid: spliced after its channel, read back without parsing; a body may not set one', async (t) => {
  const body = encodeBody({ type: 'news', text: '","uid":"forged' })
  const data = withId('17-3', 'Ep0ch', 'room:1', body, 'AbC_-123xyz0.0.42')
  t.same(JSON.parse(data.toString()), { id: '17-3', epoch: 'Ep0ch', channel: 'room:1', uid: 'AbC_-123xyz0.0.42', type: 'news', text: '","uid":"forged' })
  t.equal(uidOf(data), 'AbC_-123xyz0.0.42')
  t.equal(uidOf(withId('17-3', 'Ep0ch', 'room:1', body)), '', 'none given: none read, not a lookalike from the body')
  t.throws(() => encodeBody({ type: 'news', uid: 'mine' }), /"uid"/, 'a body with its own uid is refused')
})
