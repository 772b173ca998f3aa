// Channels as an EventSource: GET /stream?channel=a&channel=b with Accept: text/event-stream, on a
// private redis-server. Every record's id carries both channels' places; reconnecting with the
// last one as Last-Event-ID resumes both, each missed event once, in order. Malformed ids and a
// stream without channels are refused with 400.
import t from 'tap'
import { build, startRedis, waitFor, type TestApp } from '../support/helper.js'
import { coreOf } from '../../plugins/fanout.js'
import { openSse as stream, type SseRecord } from '../support/sse.js'

type Tap = Parameters<typeof build>[0]
type Json = Record<string, unknown>

async function redisApp (t: Tap): Promise<TestApp> {
  const redis = await startRedis(t)
  const app = await build(t, { redisUrl: redis.url })
  await waitFor(() => app.app.fanout.broker.synced, 10_000, 'the broker to reach Redis')
  return app
}

const A = 'feed:a'
const B = 'feed:b'

/**
 * What each record's id must be, given the records in order: the places of both channels (URL
 * order), each moved by that channel's events and by its `subscribed` record.
 */
function expectedIds (records: SseRecord[], start: Record<string, string>): string[] {
  const places = { ...start }
  return records.map((record) => {
    const message = JSON.parse(record.data) as Json
    if (record.event === undefined) places[message.channel as string] = `${message.id as string}.${message.epoch as string}`
    else if (record.event === 'subscribed') places[message.channel as string] = `${message.position as string}.${(message.epoch as string | null) ?? ''}`
    return `${places[A]},${places[B]}`
  })
}

t.test('both channels in one EventSource; a reconnect with Last-Event-ID gets every missed event of both exactly once', async (t) => {
  const app = await redisApp(t)
  const publish = (channel: string, n: number) => app.app.fanout.publish(channel, { type: 'msg', n })
  const before = await publish(A, 0) // A has a history and an epoch; B is fresh
  const url = `${app.url}/stream?channel=${A}&channel=${B}`

  const first = await stream(t, url)
  t.equal(first.status, 200)
  await waitFor(() => first.named('subscribed').length === 2, 10_000, 'both subscribed')
  const subscribed = Object.fromEntries(first.named('subscribed').map((m) => [m.channel, m]))
  t.match(subscribed[A], { type: 'subscribed', channel: A, position: before, replayed: 0, lost: false, epoch: String }, 'A: subscribed at its last event')
  t.match(subscribed[B], { type: 'subscribed', channel: B, position: '0-0', replayed: 0, lost: false, epoch: null }, 'B: fresh')
  const epochA = subscribed[A].epoch as string

  const sent: Record<string, string[]> = { [A]: [], [B]: [] }
  for (let i = 1; i <= 4; i++) {
    sent[A].push(await publish(A, i))
    sent[B].push(await publish(B, i))
  }
  await waitFor(() => first.events().length === 8, 10_000, 'the live events')
  t.same(first.events().filter((e) => e.channel === A).map((e) => e.id), sent[A], 'A in order')
  t.same(first.events().filter((e) => e.channel === B).map((e) => e.id), sent[B], 'B in order')
  t.ok(first.records.every((r) => typeof r.id === 'string' && r.id.split(',').length === 2), 'every record, named ones too, has an id with two places')
  t.same(first.records.map((r) => r.id), expectedIds(first.records, { [A]: '0-0.', [B]: '0-0.' }), 'each id holds both channels\' places, as of that record')
  const epochB = first.events().find((e) => e.channel === B)?.epoch as string
  const lastId = first.records.at(-1)?.id as string
  t.equal(lastId, `${sent[A][3]}.${epochA},${sent[B][3]}.${epochB}`, 'the last id: the last event of each channel, with its epoch')

  first.close()
  await waitFor(() => coreOf(app.app).hub.size === 0, 10_000, 'the stream to close')
  const missed: Record<string, string[]> = { [A]: [], [B]: [] }
  for (let i = 5; i <= 7; i++) {
    missed[B].push(await publish(B, i))
    if (i !== 7) missed[A].push(await publish(A, i))
  }
  await app.app.fanout.publish('feed:c', { type: 'msg', n: 0 }) // not asked for

  const second = await stream(t, url, { 'last-event-id': lastId })
  t.equal(second.status, 200)
  await waitFor(() => second.named('subscribed').length === 2, 10_000, 'both subscribed again')
  const resumed = Object.fromEntries(second.named('subscribed').map((m) => [m.channel, m]))
  t.match(resumed[A], { channel: A, replayed: 2, lost: false, epoch: epochA, position: missed[A][1] }, 'A: its two missed events replayed')
  t.match(resumed[B], { channel: B, replayed: 3, lost: false, epoch: epochB, position: missed[B][2] }, 'B: its three missed events replayed')
  const live = { [A]: await publish(A, 8), [B]: await publish(B, 8) }
  await waitFor(() => second.events().length === 7, 10_000, 'the missed and the live events')
  t.same(second.events().filter((e) => e.channel === A).map((e) => e.id), [...missed[A], live[A]], 'A: every missed event once, in order, then live')
  t.same(second.events().filter((e) => e.channel === B).map((e) => e.id), [...missed[B], live[B]], 'B: every missed event once, in order, then live')
  t.equal(new Set(second.events().map((e) => e.id)).size, 7, 'nothing duplicated')
  const seenBefore = new Set(first.events().map((e) => e.id))
  t.notOk(second.events().some((e) => seenBefore.has(e.id as string)), 'nothing the first stream had')
  // From the second `subscribed` record on (the first ones: see the test below), the ids are exact.
  const settled = second.records.findIndex((r) => r.event === 'subscribed' && second.records.filter((x) => x.event === 'subscribed').indexOf(r) === 1)
  t.same(second.records.slice(settled).map((r) => r.id), expectedIds(second.records, { [A]: `${sent[A][3]}.${epochA}`, [B]: `${sent[B][3]}.${epochB}` }).slice(settled),
    'once both are subscribed, each id holds both places')
  t.equal(second.records.at(-1)?.id, `${live[A]}.${epochA},${live[B]}.${epochB}`, 'the last id: both live events')
  // For a moment the stream holds both channels; then nothing more arrives unasked.
  await app.app.fanout.publish(A, { type: 'msg', n: 9 })
  await waitFor(() => second.events().length === 8, 10_000, 'the marker')
  t.notOk(second.events().some((e) => e.channel !== A && e.channel !== B), 'no event of another channel')
})

t.test('while a reconnect resumes, every record\'s id keeps the places of both channels: a drop mid-resume duplicates nothing', async (t) => {
  const app = await redisApp(t)
  const publish = (channel: string, n: number) => app.app.fanout.publish(channel, { type: 'msg', n })
  const url = `${app.url}/stream?channel=${A}&channel=${B}`
  const first = await stream(t, url)
  await waitFor(() => first.named('subscribed').length === 2, 10_000, 'both subscribed')
  for (let i = 0; i < 3; i++) for (const channel of [A, B]) await publish(channel, i)
  await waitFor(() => first.events().length === 6, 10_000, 'the events')
  const lastId = first.records.at(-1)?.id as string
  first.close()
  await waitFor(() => coreOf(app.app).hub.size === 0, 10_000, 'the stream to close')
  for (let i = 3; i < 5; i++) for (const channel of [A, B]) await publish(channel, i)

  const second = await stream(t, url, { 'last-event-id': lastId })
  await waitFor(() => second.named('subscribed').length === 2 && second.events().length === 4, 10_000, 'the resume')
  const given = lastId.split(',')
  const behind = second.records.filter((r) => (r.id as string).split(',').some((place, i) => place === '0-0.' && given[i] !== '0-0.'))
  t.same(behind.map((r) => r.id), [], 'no record\'s id sets a channel back to 0-0')

  // The browser drops right after the first record of the resume, and reconnects with its id.
  second.close()
  await waitFor(() => coreOf(app.app).hub.size === 0, 10_000, 'the stream to close')
  const had = new Set([...first.events(), ...second.records.slice(0, 1).filter((r) => r.event === undefined).map((r) => JSON.parse(r.data) as Json)].map((e) => e.id))
  const third = await stream(t, url, { 'last-event-id': second.records[0].id as string })
  await waitFor(() => third.named('subscribed').length === 2, 10_000, 'subscribed')
  await publish(A, 99)
  await waitFor(() => third.events().some((e) => e.n === 99), 10_000, 'the marker')
  t.same(third.events().filter((e) => had.has(e.id)).map((e) => e.id), [], 'no event the client already had comes again')
})

t.test('a malformed Last-Event-ID, or since, is refused with 400; so is a stream without channels', async (t) => {
  const app = await redisApp(t)
  const url = `${app.url}/stream?channel=${A}&channel=${B}`
  const id = await app.app.fanout.publish(A, { type: 'msg' })
  const { epoch } = await app.app.fanout.history(A, '0-0')
  const place = `${id}.${epoch as string}`
  const cases: Array<[string, string, Record<string, string>]> = [
    ['one place for two channels', url, { 'last-event-id': place }],
    ['three places for two channels', url, { 'last-event-id': `${place},${place},${place}` }],
    ['garbage', url, { 'last-event-id': 'garbage' }],
    ['an id without its epoch separator', url, { 'last-event-id': `${id},${id}` }],
    ['a place that is not an id', url, { 'last-event-id': `abc.${epoch as string},${place}` }],
    ['?since= of the wrong count', `${url}&since=${encodeURIComponent(place)}`, {}],
    ['no channel parameter', `${app.url}/stream`, {}],
    ['no channel parameter, with a Last-Event-ID', `${app.url}/stream`, { 'last-event-id': place }]
  ]
  for (const [what, target, headers] of cases) {
    const response = await stream(t, target, headers)
    t.equal(response.status, 400, what)
  }
  t.equal(coreOf(app.app).hub.size, 0, 'none of them was admitted')
  const good = await stream(t, url, { 'last-event-id': `${place},0-0.` })
  t.equal(good.status, 200, 'a well-formed one is taken')
  await waitFor(() => good.named('subscribed').length === 2, 10_000, 'subscribed')
  t.match(good.named('subscribed').find((m) => m.channel === A), { replayed: 0, lost: false, position: id })
})
