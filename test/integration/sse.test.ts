// Issue 11, EventSource: the same stream at GET /guest with Accept: text/event-stream, resumed
// from Last-Event-ID exactly as ?since= resumes, through the same hub and its slow-consumer cap.
import { connect as netConnect } from 'node:net'
import t from 'tap'
import { build, connect, waitFor, type TestApp } from '../support/helper.js'
import { coreOf } from '../../plugins/fanout.js'
import { openSse as stream } from '../support/sse.js'

async function publishMany (app: TestApp['app'], n: number): Promise<string[]> {
  const ids: string[] = []
  for (let i = 0; i < n; i++) ids.push(await app.fanout.publish({ type: 'news', n: i }))
  return ids
}

t.test('the stream as EventSource records: id, then the same JSON the WebSocket sends', async (t) => {
  const { app, url, ws } = await build(t)
  const client = await stream(t, `${url}/guest`)
  t.equal(client.status, 200)
  const socket = await connect(t, `${ws}/guest`)
  await waitFor(() => coreOf(app).hub.size === 2)
  const [id] = await publishMany(app, 1)
  await waitFor(() => client.records.length === 1 && socket.messages.length === 1, 5000, 'the record and the frame')
  t.same(client.records[0], { id, data: socket.messages[0] }, 'the EventSource data is the WebSocket message, byte for byte')
  t.match(JSON.parse(socket.messages[0]), { id, type: 'news', n: 0 })
})

t.test('Last-Event-ID resumes exactly after it, as ?since= does, then live', async (t) => {
  const { app, url } = await build(t)
  const ids = await publishMany(app, 6)
  const byHeader = await stream(t, `${url}/guest`, { 'last-event-id': ids[1] })
  const byQuery = await stream(t, `${url}/guest?since=${ids[1]}`)
  // The browser reconnects to the URL it was given, with a newer Last-Event-ID: the header wins.
  const both = await stream(t, `${url}/guest?since=${ids[0]}`, { 'last-event-id': ids[3] })
  for (const [name, client, after] of [['Last-Event-ID', byHeader, 2], ['?since=', byQuery, 2], ['both', both, 4]] as const) {
    await waitFor(() => client.records.some((r) => r.event === 'resume'), 5000, `${name}: the resume record`)
    t.same(client.events().map((e) => e.id), ids.slice(after), `${name}: exactly the events after it`)
    t.match(JSON.parse(client.records.find((r) => r.event === 'resume')?.data ?? '{}'), { type: 'resume', replayed: ids.length - after, lost: false })
  }
  const [live] = await publishMany(app, 1)
  await waitFor(() => [byHeader, byQuery, both].every((c) => c.events().some((e) => e.id === live)), 5000, 'the live event')
  t.same(byHeader.events().map((e) => e.id), [...ids.slice(2), live], 'no gap, no duplicate')
})

t.test('a malformed Last-Event-ID is refused with 400; a GET that is neither gets 426', async (t) => {
  const { url, app } = await build(t)
  t.equal((await stream(t, `${url}/guest`, { 'last-event-id': 'nope' })).status, 400)
  const plain = await fetch(`${url}/guest`)
  t.equal(plain.status, 426)
  t.equal(plain.headers.get('upgrade'), 'websocket')
  t.equal(coreOf(app).hub.size, 0)
})

t.test('an EventSource client that does not read is cut off at maxBufferedBytes, like a WebSocket', async (t) => {
  const { app, port } = await build(t, { maxBufferedBytes: 64 * 1024 })
  const socket = netConnect(port, '127.0.0.1')
  t.teardown(() => socket.destroy())
  socket.on('error', () => {})
  await new Promise((resolve) => socket.once('connect', resolve))
  socket.write(`GET /guest HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAccept: text/event-stream\r\n\r\n`)
  await waitFor(() => coreOf(app).hub.size === 1)
  socket.pause() // never reads again
  const text = 'x'.repeat(16 * 1024)
  for (let i = 0; i < 2000 && coreOf(app).stats.slowConsumerDrops === 0; i++) {
    await app.fanout.publish({ type: 'news', text })
    if (i % 20 === 0) await new Promise((resolve) => setImmediate(resolve))
  }
  t.equal(coreOf(app).stats.slowConsumerDrops, 1, 'cut off as a slow consumer')
  await waitFor(() => coreOf(app).hub.size === 0, 3000, 'the connection to go')
})

t.test('app.close() ends the streams', async (t) => {
  const { app, url } = await build(t)
  await stream(t, `${url}/guest`)
  await waitFor(() => coreOf(app).hub.size === 1)
  const started = Date.now()
  await app.close()
  t.equal(coreOf(app).hub.size, 0)
  t.ok(Date.now() - started < 3000, 'promptly')
})

t.test('a cross-origin page admitted by allowedOrigins gets its CORS header; a foreign one is refused', async (t) => {
  const { url } = await build(t, { allowedOrigins: ['https://a.example'] })
  const open = async (headers: Record<string, string>) => {
    const abort = new AbortController()
    t.teardown(() => abort.abort())
    const response = await fetch(`${url}/guest`, { headers: { accept: 'text/event-stream', ...headers }, signal: abort.signal })
    return { status: response.status, allow: response.headers.get('access-control-allow-origin'), vary: response.headers.get('vary') }
  }
  t.same(await open({ origin: 'https://a.example' }), { status: 200, allow: 'https://a.example', vary: 'Origin' }, 'admitted: the stream, with its CORS header')
  t.same(await open({}), { status: 200, allow: null, vary: null }, 'no Origin (not a browser page): the stream, no CORS header')
  t.equal((await open({ origin: 'https://evil.example' })).status, 403, 'a foreign origin: 403, no stream')
})
