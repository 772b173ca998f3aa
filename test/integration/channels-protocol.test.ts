// Channels over WebSocket (`fanout.v1` on GET /stream): subscribe, resume, unsubscribe, every
// refused command with its code and the socket left open, client publishing, a command flood,
// channels named at connect, the seed's /guest client unchanged, and the per-namespace numbers.
// Each scenario runs twice: on the in-memory broker and on a private redis-server.
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import type { FanoutOptions } from '../../app.js'
import { build, connect, startRedis, waitFor, type TestApp, type TestClient } from '../support/helper.js'
import { coreOf } from '../../plugins/fanout.js'

type Tap = Parameters<typeof build>[0]
type Json = Record<string, unknown>

const SETUPS: Array<{ name: string, make: (t: Tap, options?: FanoutOptions) => Promise<TestApp> }> = [
  { name: 'in-memory broker', make: (t, options = {}) => build(t, options) },
  {
    name: 'redis broker',
    make: async (t, options = {}) => {
      const redis = await startRedis(t)
      const app = await build(t, { redisUrl: redis.url, ...options })
      await waitFor(() => app.app.fanout.broker.synced, 10_000, 'the broker to reach Redis')
      return app
    }
  }
]

const V1 = { protocols: ['fanout.v1'] }

/** A `fanout.v1` client of /stream. */
async function streamClient (t: Tap, app: TestApp, query = ''): Promise<TestClient> {
  return connect(t, `${app.ws}/stream${query}`, V1)
}

function send (client: TestClient, command: unknown): void {
  client.socket.send(typeof command === 'string' ? command : JSON.stringify(command))
}

const CONTROL = new Set(['subscribed', 'unsubscribed', 'published', 'error', 'gap', 'ack', 'resume'])
const isEvent = (m: Json): boolean => typeof m.id === 'string' && typeof m.epoch === 'string' && !CONTROL.has(m.type as string)

/** The events of one channel, in the order they came. */
function eventsOf (client: TestClient, channel: string): Json[] {
  return client.json().filter((m) => isEvent(m) && m.channel === channel)
}

const idsOf = (client: TestClient, channel: string): string[] => eventsOf(client, channel).map((e) => e.id as string)

function control (client: TestClient, type: string, channel?: string): Json[] {
  return client.json(type).filter((m) => channel === undefined || m.channel === channel)
}

/** Sends `subscribe` and resolves to the `subscribed` answer. */
async function subscribe (client: TestClient, channel: string, extra: Json = {}): Promise<Json> {
  const before = control(client, 'subscribed', channel).length
  const errors = control(client, 'error', channel).length
  send(client, { type: 'subscribe', channel, ...extra })
  await client.until((c) => control(c, 'subscribed', channel).length > before || control(c, 'error', channel).length > errors, 10_000, `subscribed ${channel}`)
  const answer = control(client, 'subscribed', channel)[before]
  if (answer === undefined) throw new Error(`subscribe ${channel} refused: ${JSON.stringify(control(client, 'error', channel).slice(errors))}`)
  return answer
}

/** Sends `command` and resolves to the one new error it gets. */
async function refusal (client: TestClient, command: unknown): Promise<Json> {
  const before = client.json('error').length
  send(client, command)
  await client.until((c) => c.json('error').length > before, 10_000, `an error for ${JSON.stringify(command)}`)
  return client.json('error')[before]
}

async function publishAll (app: TestApp, channel: string, n: number, tag = channel): Promise<string[]> {
  const ids: string[] = []
  for (let i = 0; i < n; i++) ids.push(await app.app.fanout.publish(channel, { type: 'msg', tag, n: i }))
  return ids
}

/** Every event of a channel's history after `since`, page by page. */
async function history (app: TestApp, channel: string, since = '0-0'): Promise<{ ids: string[], epoch: string | undefined }> {
  const replay = await app.app.fanout.history(channel, since)
  const ids: string[] = []
  for (let page = replay.first; page.length > 0; page = await replay.next()) ids.push(...page.map((e) => e.id))
  return { ids, epoch: replay.epoch }
}

for (const setup of SETUPS) {
  t.test(setup.name, async (t) => {
    t.test('two channels subscribed: exactly their events, each with its channel, in order; none of a third', async (t) => {
      const app = await setup.make(t)
      const earlier = await publishAll(app, 'room:a', 2)
      const { epoch: epochA } = await history(app, 'room:a')
      t.ok(epochA, 'room:a has an epoch')
      const client = await streamClient(t, app)

      const a = await subscribe(client, 'room:a')
      t.same(a, { type: 'subscribed', channel: 'room:a', epoch: epochA, position: earlier[1], replayed: 0, lost: false, clamped: false },
        'subscribed: the position is the last event published before, with its epoch')
      const b = await subscribe(client, 'room:b')
      t.same(b, { type: 'subscribed', channel: 'room:b', epoch: null, position: '0-0', replayed: 0, lost: false, clamped: false },
        'a fresh channel: position 0-0, no epoch yet')

      const published: Record<string, string[]> = { 'room:a': [], 'room:b': [], 'room:c': [] }
      for (let i = 0; i < 10; i++) {
        for (const channel of ['room:a', 'room:c', 'room:b']) {
          published[channel].push(await app.app.fanout.publish(channel, { type: 'msg', n: i }))
        }
      }
      // The last event sent is on room:b: once it is in, everything before it would be too.
      await client.until((c) => idsOf(c, 'room:b').length === 10 && idsOf(c, 'room:a').length === 10, 10_000, 'the events of a and b')
      const marker = await app.app.fanout.publish('room:a', { type: 'msg', marker: true })
      await client.until((c) => idsOf(c, 'room:a').includes(marker), 10_000, 'the marker')

      t.same(idsOf(client, 'room:a'), [...published['room:a'], marker], 'room:a: every event once, in order')
      t.same(idsOf(client, 'room:b'), published['room:b'], 'room:b: every event once, in order')
      t.same(eventsOf(client, 'room:c'), [], 'room:c: none')
      const events = client.json().filter(isEvent)
      t.equal(events.length, 21, 'no other events at all')
      t.ok(events.every((e) => e.type === 'msg' && (e.channel === 'room:a' || e.channel === 'room:b')), 'each event carries its channel')
      t.ok(eventsOf(client, 'room:a').every((e) => e.epoch === epochA), 'room:a events carry its epoch')
      t.same(eventsOf(client, 'room:a').slice(0, 10).map((e) => e.n), [...Array(10).keys()], 'the bodies are the published ones')
      t.same(client.json().filter((m) => !isEvent(m)).map((m) => m.type), ['subscribed', 'subscribed'], 'no other control message')
    })

    t.test('resume: since+epoch replays the missed events before `subscribed`; a since of another epoch is lost', async (t) => {
      const app = await setup.make(t)
      const ids = await publishAll(app, 'room:r', 5)
      const { epoch } = await history(app, 'room:r')
      const client = await streamClient(t, app)
      const answer = await subscribe(client, 'room:r', { since: ids[1], epoch })
      t.same(answer, { type: 'subscribed', channel: 'room:r', epoch, position: ids[4], replayed: 3, lost: false, clamped: false })
      const types = client.json().map((m) => m.type)
      t.same(types, ['msg', 'msg', 'msg', 'subscribed'], 'the replay comes first, then `subscribed`')
      t.same(idsOf(client, 'room:r'), ids.slice(2), 'exactly the events after since')
      const live = await app.app.fanout.publish('room:r', { type: 'msg', live: true })
      await client.until((c) => idsOf(c, 'room:r').includes(live), 10_000, 'the live event')
      t.same(idsOf(client, 'room:r'), [...ids.slice(2), live], 'then live, no gap, no duplicate')

      const other = await streamClient(t, app)
      const lost = await subscribe(other, 'room:r', { since: ids[1], epoch: 'AnotherEpoch' })
      t.match(lost, { type: 'subscribed', channel: 'room:r', epoch, lost: true }, 'since from another epoch: lost')

      const upToDate = await streamClient(t, app)
      t.match(await subscribe(upToDate, 'room:r', { since: live, epoch }), { replayed: 0, lost: false, position: live }, 'nothing missed: nothing replayed')
    })

    t.test('unsubscribe: `unsubscribed`, then no more events of that channel', async (t) => {
      const app = await setup.make(t)
      const client = await streamClient(t, app)
      await subscribe(client, 'room:u')
      await subscribe(client, 'room:v')
      const stays = await streamClient(t, app) // keeps room:u wanted on this replica
      await subscribe(stays, 'room:u')
      const [first] = await publishAll(app, 'room:u', 1)
      await client.until((c) => idsOf(c, 'room:u').length === 1, 10_000, 'the first event')
      send(client, { type: 'unsubscribe', channel: 'room:u' })
      await client.until((c) => control(c, 'unsubscribed').length === 1, 10_000, 'unsubscribed')
      t.same(control(client, 'unsubscribed'), [{ type: 'unsubscribed', channel: 'room:u' }])
      const after = await publishAll(app, 'room:u', 3)
      const [marker] = await publishAll(app, 'room:v', 1)
      await client.until((c) => idsOf(c, 'room:v').includes(marker), 10_000, 'the marker on room:v')
      await stays.until((c) => idsOf(c, 'room:u').length === 4, 10_000, 'the other subscriber\'s events')
      t.same(idsOf(stays, 'room:u'), [first, ...after], 'the other subscriber of room:u still gets its events')
      t.same(idsOf(client, 'room:u'), [first], 'nothing of room:u after unsubscribing')
      t.match(await refusal(client, { type: 'unsubscribe', channel: 'room:u' }), { code: 'not_subscribed', channel: 'room:u' }, 'a second unsubscribe: not_subscribed')
      t.match(await subscribe(client, 'room:u'), { type: 'subscribed', channel: 'room:u', position: (await history(app, 'room:u')).ids.at(-1) }, 'and it can subscribe again')
    })

    t.test('every bad command gets its error code; the socket stays open and other channels flow', async (t) => {
      const calls: Array<[unknown, string, string]> = []
      const app = await setup.make(t, {
        maxChannelsPerConnection: 3,
        authorizeChannel: (_identity, channel) => !channel.startsWith('secret:'),
        namespaces: {
          x: { authorizeChannel: (identity, channel, action) => { calls.push([identity, channel, action]); return false } },
          chat: { clientPublish: true }
        }
      })
      const client = await streamClient(t, app)
      await subscribe(client, 'ok:1')
      const flowing: string[] = []
      const tick = async () => { flowing.push(await app.app.fanout.publish('ok:1', { type: 'msg', n: flowing.length })) }
      await tick()

      const long = 'a'.repeat(129)
      const cases: Array<[string, unknown, Json]> = [
        ['a name with a space', { type: 'subscribe', channel: 'a b' }, { code: 'bad_channel', channel: 'a b' }],
        ['a name of 129 characters', { type: 'subscribe', channel: long }, { code: 'bad_channel' }],
        ['a number for a name', { type: 'subscribe', channel: 42 }, { code: 'bad_channel' }],
        ['no name', { type: 'unsubscribe' }, { code: 'bad_channel' }],
        ['not JSON', 'subscribe me', { code: 'bad_request' }],
        ['an unknown type', { type: 'dance', channel: 'ok:1' }, { code: 'bad_request' }],
        ['since that is not an id', { type: 'subscribe', channel: 'ok:2', since: 'yesterday' }, { code: 'bad_request', channel: 'ok:2' }],
        ['already subscribed', { type: 'subscribe', channel: 'ok:1' }, { code: 'already_subscribed', channel: 'ok:1' }],
        ['not subscribed', { type: 'unsubscribe', channel: 'ok:9' }, { code: 'not_subscribed', channel: 'ok:9' }],
        ['authorizeChannel says no', { type: 'subscribe', channel: 'secret:1' }, { code: 'forbidden', channel: 'secret:1' }],
        ['the namespace\'s authorizeChannel says no', { type: 'subscribe', channel: 'x:1' }, { code: 'forbidden', channel: 'x:1' }],
        ['client publish where the namespace does not allow it', { type: 'publish', channel: 'ok:1', event: { type: 'chat', text: 'hi' }, ref: 1 }, { code: 'forbidden', channel: 'ok:1' }],
        ['client publish on a namespace with clientPublish but a hook that says no', { type: 'publish', channel: 'x:1', event: { type: 'chat' } }, { code: 'forbidden', channel: 'x:1' }],
        ['client publish of an event with an id', { type: 'publish', channel: 'chat:1', event: { type: 'chat', id: '1-1' } }, { code: 'bad_request', channel: 'chat:1' }]
      ]
      for (const [what, command, expected] of cases) {
        const error = await refusal(client, command)
        t.match(error, { type: 'error', ...expected, message: String }, what)
        if (!('channel' in expected) && typeof (command as Json).channel !== 'string') t.notOk('channel' in error, `${what}: no channel in the error`)
        t.equal(client.socket.readyState, client.socket.OPEN, `${what}: the socket stays open`)
        await tick()
      }
      t.equal(control(client, 'error').find((e) => (e.channel as string)?.startsWith('aaa'))?.channel, long.slice(0, 128), 'a long name is echoed cut to 128')
      t.same(calls.map(([, channel, action]) => [channel, action]), [['x:1', 'subscribe']], 'the namespace hook decided x:1 (x has no clientPublish: publish refused before it)')

      await subscribe(client, 'ok:2')
      await subscribe(client, 'ok:3')
      t.match(await refusal(client, { type: 'subscribe', channel: 'ok:4' }), { type: 'error', code: 'too_many', channel: 'ok:4' }, 'the fourth channel: too_many')
      await tick()

      const reader = await streamClient(t, app)
      await subscribe(reader, 'chat:1')
      send(client, { type: 'publish', channel: 'chat:1', event: { type: 'chat', text: 'hello' }, ref: 'r-7' })
      await client.until((c) => control(c, 'published').length === 1, 10_000, 'published')
      const [published] = control(client, 'published')
      t.match(published, { type: 'published', channel: 'chat:1', id: /^\d+-\d+$/, ref: 'r-7' }, 'clientPublish: true: published, with the ref')
      await reader.until((c) => eventsOf(c, 'chat:1').length === 1, 10_000, 'the chat event')
      t.match(eventsOf(reader, 'chat:1')[0], { id: published.id, channel: 'chat:1', type: 'chat', text: 'hello' }, 'it reached the other subscriber')
      send(client, { type: 'publish', channel: 'chat:1', event: { type: 'chat', text: 'again' }, ref: 3 })
      await client.until((c) => control(c, 'published').length === 2, 10_000, 'the second published')
      t.equal(control(client, 'published')[1].ref, 3, 'a numeric ref is echoed as a number')

      await client.until((c) => idsOf(c, 'ok:1').length === flowing.length, 10_000, 'every ok:1 event')
      t.same(idsOf(client, 'ok:1'), flowing, 'ok:1 flowed throughout, in order')
      t.equal(client.socket.readyState, client.socket.OPEN, 'still open at the end')
      t.equal(coreOf(app.app).stats.channelErrors, cases.length + 1, 'every refusal counted')
    })

    t.test('a command flood is closed with 1008; another client on the channel gets every event in order', async (t) => {
      const app = await setup.make(t, { rateMessagesPerSec: 20 })
      const observer = await streamClient(t, app)
      await subscribe(observer, 'room:f')
      const flooder = await streamClient(t, app)
      await subscribe(flooder, 'room:f')
      const ids: string[] = []
      const publishing = (async () => {
        for (let i = 0; i < 40; i++) {
          ids.push(await app.app.fanout.publish('room:f', { type: 'msg', n: i }))
          await sleep(5)
        }
      })()
      for (let i = 0; i < 2000; i++) send(flooder, { type: i % 2 === 0 ? 'unsubscribe' : 'subscribe', channel: 'room:f' })
      t.equal((await flooder.closed).code, 1008, 'the flooder is closed with 1008')
      await publishing
      await observer.until((c) => idsOf(c, 'room:f').length === ids.length, 10_000, 'every event')
      t.same(idsOf(observer, 'room:f'), ids, 'the observer got every event, once, in order')
      t.equal(observer.socket.readyState, observer.socket.OPEN, 'and is still connected')
      t.ok(control(observer, 'error').length === 0, 'the observer saw no error')
      await waitFor(() => app.app.fanout.snapshot().namespaces.room?.subscriptions === 1, 10_000, 'the flooder\'s subscription to go')
      t.equal(coreOf(app.app).stats.rateLimited, 1)
    })

    t.test('the seed\'s plain client on /guest is unchanged', async (t) => {
      const app = await setup.make(t)
      const seed = await connect(t, `${app.ws}/guest`)
      t.equal(seed.socket.protocol, '', 'no subprotocol')
      await waitFor(() => coreOf(app.app).hub.size === 1)
      const ids: string[] = []
      for (let i = 0; i < 3; i++) ids.push(await app.app.fanout.publish({ type: 'guest', guest: `客${i}`, time: '15:26:01', ts: Date.now() }))
      await seed.until((c) => c.events().length === 3, 10_000, 'the guest events')
      t.same(seed.events().map((e) => e.id), ids, 'every guest event, in order')
      t.same(seed.events().map((e) => [e.guest, e.time]), [['客0', '15:26:01'], ['客1', '15:26:01'], ['客2', '15:26:01']], '.guest and .time as the seed reads them')
      t.ok(seed.json().every((e) => e.channel === undefined || e.channel === 'guest'), 'a channel, if any, is guest')
      t.same(seed.notEvents(), [], 'events only: no control message')
    })

    t.test('?channel=a&channel=b at connect: events of both with no command; 403 for a forbidden name, 400 for a bad one', async (t) => {
      const app = await setup.make(t, { maxChannelsPerConnection: 3, authorizeChannel: (_identity, channel) => !channel.startsWith('secret:') })
      const plain = await connect(t, `${app.ws}/stream?channel=conn:a&channel=conn:b`)
      const v1 = await streamClient(t, app, '?channel=conn:a&channel=conn:b')
      await v1.until((c) => control(c, 'subscribed').length === 2, 10_000, 'both subscribed')
      t.same(control(v1, 'subscribed').map((m) => m.channel).sort(), ['conn:a', 'conn:b'], 'a fanout.v1 client is told of both')
      await waitFor(() => app.app.fanout.snapshot().namespaces.conn?.subscriptions === 4, 10_000, 'the plain client subscribed')
      const a = await publishAll(app, 'conn:a', 3)
      const b = await publishAll(app, 'conn:b', 3)
      await publishAll(app, 'conn:c', 2)
      for (const [name, client] of [['plain', plain], ['fanout.v1', v1]] as const) {
        await client.until((c) => idsOf(c, 'conn:a').length === 3 && idsOf(c, 'conn:b').length === 3, 10_000, `${name}: the events`)
        t.same(idsOf(client, 'conn:a'), a, `${name}: conn:a in order`)
        t.same(idsOf(client, 'conn:b'), b, `${name}: conn:b in order`)
      }
      const [marker] = await publishAll(app, 'conn:a', 1)
      await plain.until((c) => idsOf(c, 'conn:a').includes(marker), 10_000, 'the marker')
      t.same(plain.binary, [], 'no binary frame')
      t.equal(plain.messages.length, 7, 'seven messages, none of conn:c')
      t.ok(plain.json().length === 7 && plain.json().every((m) => isEvent(m) && m.type === 'msg'), 'events only: no control message')

      await t.rejects(connect(t, `${app.ws}/stream?channel=conn:a&channel=secret:1`), /unexpected response 403/, 'a channel it may not subscribe to: 403')
      await t.rejects(connect(t, `${app.ws}/stream?channel=a%20b`, V1), /unexpected response 400/, 'a bad name: 400')
      await t.rejects(connect(t, `${app.ws}/stream?channel=${'a'.repeat(129)}`, V1), /unexpected response 400/, '129 characters: 400')
      await t.rejects(connect(t, `${app.ws}/stream?channel=a&channel=b&channel=c&channel=d`, V1), /unexpected response 400/, 'more than maxChannelsPerConnection: 400')
      await t.rejects(connect(t, `${app.ws}/stream?channel=a&channel=b&since=1-0.e1`, V1), /unexpected response 400/, 'a since that does not fit the channels: 400, not a silent fresh start')
      await sleep(100)
      t.equal(coreOf(app.app).hub.size, 2, 'no refused connection was admitted')
    })

    t.test('per-namespace numbers follow subscriptions, and return to 0 when the clients close', async (t) => {
      const app = await setup.make(t, { namespaces: { chat: { clientPublish: true } } })
      const one = await streamClient(t, app)
      for (const channel of ['room:1', 'room:2', 'chat:1']) await subscribe(one, channel)
      const two = await streamClient(t, app, '?channel=room:1&channel=lobby')
      await two.until((c) => control(c, 'subscribed').length === 2, 10_000, 'two subscribed')
      const three = await streamClient(t, app)
      await subscribe(three, 'room:1')
      send(three, { type: 'unsubscribe', channel: 'room:1' })
      await three.until((c) => control(c, 'unsubscribed').length === 1)

      const r1 = await publishAll(app, 'room:1', 2)
      await publishAll(app, 'room:3', 1) // no subscriber
      await publishAll(app, 'lobby', 1)
      send(one, { type: 'publish', channel: 'chat:1', event: { type: 'chat' } })
      await one.until((c) => idsOf(c, 'chat:1').length === 1 && idsOf(c, 'room:1').length === 2, 10_000, 'one\'s events')
      await two.until((c) => idsOf(c, 'lobby').length === 1 && idsOf(c, 'room:1').length === 2, 10_000, 'two\'s events')
      t.same(idsOf(two, 'room:1'), r1)
      const namespaces = app.app.fanout.snapshot().namespaces
      t.same(namespaces, {
        room: { channels: 2, subscriptions: 3, publishes: 3, deliveries: 4 },
        chat: { channels: 1, subscriptions: 1, publishes: 1, deliveries: 1 },
        '': { channels: 1, subscriptions: 1, publishes: 1, deliveries: 1 }
      }, 'channels and subscriptions here, publishes and deliveries, per namespace')

      for (const client of [one, two, three]) client.socket.close()
      await waitFor(() => coreOf(app.app).hub.size === 0, 10_000, 'the clients to go')
      const after = app.app.fanout.snapshot().namespaces
      t.same(Object.fromEntries(Object.entries(after).map(([name, n]) => [name, [n.channels, n.subscriptions]])),
        { room: [0, 0], chat: [0, 0], '': [0, 0] }, 'channels and subscriptions back to 0')
    })
  })
}
