import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { build, connect, waitFor } from '../support/helper.js'
import { coreOf } from '../../plugins/fanout.js'

t.test('every client gets every event, in the same order', async (t) => {
  const { app, ws } = await build(t)
  const clients = await Promise.all([1, 2, 3].map(() => connect(t, `${ws}/guest`)))
  const ids = []
  for (let i = 0; i < 20; i++) ids.push(await app.fanout.publish({ type: 'guest', guest: `张${i}`, time: '12:00:00', ts: Date.now() }))
  for (const client of clients) await client.until((c) => c.events().length === 20)
  for (const client of clients) t.same(client.events().map((e) => e.id), ids)
  t.equal(clients[0].events()[3].guest, '张3')
})

t.test('a binary message lands on disk byte for byte, and fanout.v1 clients get the ack', async (t) => {
  const { ws, uploadDir } = await build(t)
  const client = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1'] })
  const png = Buffer.concat([Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex'), Buffer.alloc(64, 7)])
  client.socket.send(png)
  await client.until((c) => c.json('ack').length === 1)
  const [ack] = client.json('ack')
  const files = (await readdir(uploadDir)).filter((f) => !f.startsWith('.'))
  t.same(files, [ack.id])
  t.match(ack.id, /\.png$/)
  t.same(await readFile(join(uploadDir, files[0])), png)
})

t.test('a text message is logged, one line', async (t) => {
  const { ws, logs } = await build(t)
  const client = await connect(t, `${ws}/guest`)
  client.socket.send('Hello, server!')
  const line = await waitFor(() => logs.find('received: Hello, server!')[0], 10_000, 'the log line')
  t.equal(line.bytes, 14)
  t.equal(line.level, 30, 'info')

  client.socket.send(`long ${'x'.repeat(5000)}`)
  const long = await waitFor(() => logs.find(/^received: long/)[0], 10_000, 'the long line')
  t.ok((long.msg as string).length < 300, 'a long message is truncated in the log')
  t.equal(long.bytes, 5005)
})

t.test('a message over maxUploadBytes is closed with 1009 and nothing is written', async (t) => {
  const { app, ws, uploadDir } = await build(t, { maxUploadBytes: 1024 })
  const client = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1'] })
  client.socket.send(Buffer.alloc(1025, 1))
  t.equal((await client.closed).code, 1009)
  t.same(await readdir(uploadDir), [], 'no file, no temp file')
  t.equal(coreOf(app).stats.uploads, 0)
  t.same(client.json('ack'), [])

  // The limit is inclusive: exactly maxUploadBytes is an upload.
  const fits = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1'] })
  fits.socket.send(Buffer.alloc(1024, 2))
  await fits.until((c) => c.json('ack').length === 1)
  t.equal(fits.json('ack')[0].bytes, 1024)
})

t.test('origins: a foreign page is refused at the handshake; same origin and non-browsers are admitted', async (t) => {
  const { ws, url, port, app, logs } = await build(t)
  const foreign = await connect(t, `${ws}/guest`, { headers: { origin: 'http://evil.example' }, open: false })
  await t.rejects(foreign.opened, /unexpected response 403/, 'refused with 403, no socket')
  t.equal(coreOf(app).hub.size, 0)
  t.equal(logs.find('websocket refused: origin not allowed').length, 1)
  const fileScheme = await connect(t, `${ws}/guest`, { headers: { origin: 'null' }, open: false })
  await t.rejects(fileScheme.opened, /unexpected response 403/, 'file:// pages only when listed')
  const otherPort = await connect(t, `${ws}/ask`, { headers: { origin: `http://127.0.0.1:${port + 1}` }, open: false })
  await t.rejects(otherPort.opened, /unexpected response 403/, '/ask checks origins too')

  await connect(t, `${ws}/guest`, { headers: { origin: url } })
  await connect(t, `${ws}/guest`)
  t.equal(coreOf(app).hub.size, 2, 'same origin and no Origin admitted')
})

t.test('allowedOrigins: null admits file:// pages; listed origins are admitted', async (t) => {
  const { ws } = await build(t, { allowedOrigins: ['null', 'https://app.example'] })
  const file = await connect(t, `${ws}/guest`, { headers: { origin: 'null' } })
  const listed = await connect(t, `${ws}/guest`, { headers: { origin: 'https://app.example' } })
  const other = await connect(t, `${ws}/guest`, { headers: { origin: 'https://other.example' }, open: false })
  await t.rejects(other.opened, /unexpected response 403/)
  t.equal(file.socket.readyState, file.socket.OPEN)
  t.equal(listed.socket.readyState, listed.socket.OPEN)
})

t.test('?since= replays exactly the missed events, then live ones', async (t) => {
  const { app, ws } = await build(t)
  const publish = (i: number) => app.fanout.publish({ type: 'guest', guest: `李${i}`, time: '12:00:00', ts: Date.now() })
  const ids = []
  for (let i = 0; i < 10; i++) ids.push(await publish(i))
  const k = 4 // the client saw events 1..k
  const control = await connect(t, `${ws}/guest?since=${ids[k - 1]}`, { protocols: ['fanout.v1'] })
  const plain = await connect(t, `${ws}/guest?since=${ids[k - 1]}`)
  for (const client of [control, plain]) await client.until((c) => c.events().length === 10 - k, 10_000, 'the replay')
  const live = [await publish(10), await publish(11)]
  const expected = [...ids.slice(k), ...live]
  for (const client of [control, plain]) {
    await client.until((c) => c.events().length === expected.length, 10_000, 'live events')
    t.same(client.events().map((e) => e.id), expected, 'no gap, no duplicate')
  }
  t.same(control.events()[0].guest, `李${k}`)
  t.same(control.json('resume'), [{ type: 'resume', since: ids[k - 1], replayed: 10 - k, lost: false, clamped: false, epoch: control.events()[0].epoch }])
  t.same(plain.json().map((m) => m.type), expected.map(() => 'guest'), 'a plain client gets only events')
  t.equal(plain.messages.length, expected.length)
})

t.test('?since= beyond the history says what was lost', async (t) => {
  const { app, ws } = await build(t, { historySize: 3 })
  const ids = []
  for (let i = 0; i < 6; i++) ids.push(await app.fanout.publish({ type: 'guest', guest: '王芳', time: '12:00:00', ts: Date.now() }))
  const client = await connect(t, `${ws}/guest?since=${ids[0]}`, { protocols: ['fanout.v1'] })
  await client.until((c) => c.json('resume').length === 1)
  t.same(client.json('resume')[0], { type: 'resume', since: ids[0], replayed: 3, lost: true, clamped: false, epoch: client.events()[0].epoch })
  t.same(client.events().map((e) => e.id), ids.slice(3))
})

t.test('a malformed since is refused with 400 before the upgrade', async (t) => {
  const { ws, app } = await build(t)
  for (const since of ['abc', '1-2-3', '', '12345678901234567-0']) {
    const client = await connect(t, `${ws}/guest?since=${since}`, { open: false })
    await t.rejects(client.opened, /unexpected response 400/, `since=${since}`)
  }
  t.equal(coreOf(app).hub.size, 0)
})

t.test('/ask: a greeting, then one fresh guest event per text message, to that client alone', async (t) => {
  const { app, ws, logs } = await build(t)
  const ask = await connect(t, `${ws}/ask`)
  const other = await connect(t, `${ws}/ask`)
  const guest = await connect(t, `${ws}/guest`)
  await ask.until((c) => c.messages.length === 1, 10_000, 'the greeting')
  t.same(ask.messages, ['The server is listening to you now.'])

  // A broadcast event reaches /guest clients; /ask clients are not subscribed.
  await app.fanout.publish({ type: 'guest', guest: '赵敏', time: '12:00:00', ts: Date.now() })
  await guest.until((c) => c.events().length === 1)

  ask.socket.send(Buffer.from([1, 2, 3])) // binary: not a question, no answer (DESIGN: per text message)
  for (const text of ['Hello, server!', 'again', 'and again']) ask.socket.send(text)
  await ask.until((c) => c.messages.length === 4, 10_000, 'three answers')
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.equal(ask.messages.length, 4, 'three answers, none for the binary message')
  const answers = ask.messages.slice(1).map((m) => JSON.parse(m))
  for (const answer of answers) {
    t.equal(answer.type, 'guest')
    t.match(answer.guest, /^[\u4e00-\u9fff]{2,4}$/)
    t.match(answer.time, /^\d\d:\d\d:\d\d$/)
    t.type(answer.ts, 'number')
    t.not(answer.guest, '赵敏', 'not the broadcast event')
  }
  t.equal(logs.find('received: Hello, server!').length, 1, 'its text is logged too')

  // The other /ask client got its greeting only: answers go to the asker alone.
  other.socket.send('me too')
  await other.until((c) => c.messages.length === 2)
  t.equal(other.messages[0], 'The server is listening to you now.')
  t.equal(JSON.parse(other.messages[1]).type, 'guest')
  t.equal(ask.messages.length, 4)
})

t.test('a plain client never gets control messages, and its upload is still saved', async (t) => {
  const { app, ws, uploadDir } = await build(t)
  const plain = await connect(t, `${ws}/guest`)
  const png = Buffer.concat([Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex'), Buffer.alloc(32, 9)])
  plain.socket.send(png)
  const name = await waitFor(async () => {
    const files = await readdir(uploadDir)
    return files.length === 1 && !files[0].startsWith('.') ? files[0] : ''
  }, 10_000, 'the upload')
  t.same(await readFile(join(uploadDir, name)), png)
  // An event after the save: had an ack been sent, it would have arrived first.
  await waitFor(() => coreOf(app).stats.uploads === 1)
  const id = await app.fanout.publish({ type: 'guest', guest: '周杰', time: '12:00:00', ts: Date.now() })
  await plain.until((c) => c.messages.length > 0)
  t.same(plain.json().map((m) => [m.type, m.id]), [['guest', id]], 'only the event, no ack')
  t.equal(plain.messages.length, 1)
})

t.test('the in-process publisher makes count guest events on its schedule', async (t) => {
  const { ws } = await build(t, { publisher: { minDelayMs: 10, maxDelayMs: 20, count: 5 } })
  // since=0-0: whatever was published before this client connected comes from the history.
  const client = await connect(t, `${ws}/guest?since=0-0`)
  await client.until((c) => c.events().length === 5, 10_000, 'five events')
  await sleep(200) // ten times the longest delay: a sixth event would have come by now
  const events = client.events()
  t.equal(events.length, 5, 'exactly count events')
  t.equal(new Set(events.map((e) => e.id)).size, 5)
  for (const e of events) {
    t.match(e, { type: 'guest', guest: /^[\u4e00-\u9fff]{2,4}$/, time: /^\d\d:\d\d:\d\d$/, ts: Number })
  }
})

t.test('/healthz, /readyz and /metrics', async (t) => {
  const { url, ws, app } = await build(t)
  const healthz = await fetch(`${url}/healthz`)
  t.equal(healthz.status, 200)
  t.same(await healthz.json(), { status: 'ok' })
  const readyz = await fetch(`${url}/readyz`)
  t.equal(readyz.status, 200)
  t.match(await readyz.json(), { status: 'ready', broker: 'memory', state: 'ready' })

  const client = await connect(t, `${ws}/guest`)
  await app.fanout.publish({ type: 'guest', guest: '孙丽', time: '12:00:00', ts: Date.now() })
  await client.until((c) => c.events().length === 1)
  const metrics = await fetch(`${url}/metrics`)
  t.equal(metrics.status, 200)
  t.match(metrics.headers.get('content-type'), /^text\/plain/)
  const text = await metrics.text()
  t.match(text, /^fanout_connections 1$/m)
  t.match(text, /^fanout_events_in_total 1$/m)
  t.match(text, /^fanout_deliveries_total 1$/m)
})

t.test('the metrics log line', async (t) => {
  const { ws, logs } = await build(t, { metricsIntervalMs: 100 })
  await connect(t, `${ws}/guest`)
  const line = await waitFor(() => logs.find('metrics').filter((l) => l.connections === 1)[0], 10_000, 'a metrics line with the client')
  t.type(line.connections, 'number')
  for (const field of ['eventsIn', 'deliveries', 'uploads', 'uploadBytes', 'loopDelayP99Ms']) t.type(line[field], 'number', field)
  t.equal(line.broker, 'ready')
})

t.test('a replay far larger than maxBufferedBytes reaches a reading client whole', async (t) => {
  const { app, ws } = await build(t, { maxBufferedBytes: 16 * 1024, historySize: 2000 })
  const ids: string[] = []
  for (let i = 0; i < 1500; i++) ids.push(await app.fanout.publish({ type: 'guest', guest: `张${i}`, time: '12:00:00', ts: Date.now(), pad: 'x'.repeat(100) }))
  const client = await connect(t, `${ws}/guest?since=0-0`, { protocols: ['fanout.v1'] })
  const live = app.fanout.publish({ type: 'guest', guest: '李四', time: '12:00:01', ts: Date.now() }) // during the replay
  ids.push(await live)
  await client.until((c) => c.events().length === ids.length, 20_000, 'the replay and the live event')
  t.same(client.events().map((e) => e.id), ids, 'every event once, in order')
  t.equal(coreOf(app).stats.slowConsumerDrops, 0, 'not cut off as a slow consumer')
  t.match(client.json('resume')[0], { replayed: 1500, lost: false })
})

t.test('one event larger than maxBufferedBytes still reaches idle clients', async (t) => {
  const { app, ws } = await build(t, { maxBufferedBytes: 4096 })
  const clients = await Promise.all([1, 2].map(() => connect(t, `${ws}/guest`)))
  const id = await app.fanout.publish({ type: 'news', text: '长'.repeat(10_000) })
  for (const client of clients) await client.until((c) => c.json('news').length === 1)
  for (const client of clients) t.equal(client.json('news')[0].id, id)
  t.equal(coreOf(app).stats.slowConsumerDrops, 0)
})
