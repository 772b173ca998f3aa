// Issue 5, "Inbound rate limits": a flooding client is closed with 1008 while the others are
// served; clients within their limits are left alone; the text log is sampled, never flooded.
import { readdir } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { build, connect, holds, waitFor, type LogCapture } from '../support/helper.js'
import { encodeFrame, Opcode, RawClient, servesNewClient } from '../support/raw-ws.js'
import { coreOf } from '../../plugins/fanout.js'

/** The `received: …` lines, and the most of them any one second holds. */
function receivedLines (logs: LogCapture): { count: number, busiestSecond: number } {
  const times = logs.find(/^received: /).map((l) => l.time as number).sort((a, b) => a - b)
  let busiestSecond = 0
  for (let i = 0, j = 0; j < times.length; j++) {
    while (times[j] - times[i] >= 1000) i++
    busiestSecond = Math.max(busiestSecond, j - i + 1)
  }
  return { count: times.length, busiestSecond }
}

t.test('a flood of 20,000 messages is closed with 1008; the others are served throughout', async (t) => {
  const textLogPerSec = 20
  const { app, ws, logs } = await build(t, { textLogPerSec })
  const { stats } = coreOf(app)
  const observer = await connect(t, `${ws}/guest`)
  const flooder = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1'] })
  const started = Date.now()

  const ids: string[] = []
  const publishing = (async () => {
    for (let i = 0; i < 50; i++) {
      ids.push(await app.fanout.publish({ type: 'guest', guest: `客${i}`, time: '00:00:00', ts: Date.now() }))
      await sleep(5)
    }
  })()
  for (let i = 0; i < 20_000; i++) flooder.socket.send(`hello ${i}`)
  t.equal((await flooder.closed).code, 1008, 'closed with 1008 (policy)')
  await publishing
  const elapsedSec = (Date.now() - started) / 1000

  t.equal(stats.rateLimited, 1, 'counted once in stats.rateLimited')
  await observer.until((c) => c.events().length === ids.length, 10_000, 'every event')
  t.same(observer.events().map((e) => e.id), ids, 'the other client got every event, in order')
  t.equal(observer.socket.readyState, observer.socket.OPEN, 'and is still connected')

  const limit = app.fanout.options.rateMessagesPerSec
  t.ok(stats.textMessages <= limit * (elapsedSec + 1), `handled ${stats.textMessages} of 20,000 messages before the cut-off`)
  const { count, busiestSecond } = receivedLines(logs)
  t.ok(count <= textLogPerSec * (Math.ceil(elapsedSec) + 1), `${count} text log lines`)
  t.ok(busiestSecond <= 2 * textLogPerSec, `at most a burst and a second's rate in any second (${busiestSecond})`)
  t.equal(count + stats.textLogSuppressed, stats.textMessages, 'every text message is logged or counted as suppressed')
  t.ok(logs.find('websocket closed: inbound rate limit exceeded').length === 1, 'the cut-off is logged once')
  t.ok(await holds(() => coreOf(app).hub.size === 1), 'the flooder left the hub')
})

t.test('a flooder that never answers the close frame loses its connection within seconds, not 30', async (t) => {
  const { app, port } = await build(t, { rateMessagesPerSec: 10 })
  const flooder = await RawClient.open(t, port, { path: '/guest' })
  flooder.stall() // reads nothing more, so it never sees the 1008 nor answers it
  for (let i = 0; i < 100; i++) flooder.send({ opcode: Opcode.TEXT, payload: Buffer.from(`flood ${i}`) })
  t.ok(await holds(() => coreOf(app).stats.rateLimited === 1), 'the rate limit tripped')
  // ws alone would hold it until its 30 s close timeout; the server drops it 1 s after the close.
  t.ok(await holds(() => coreOf(app).hub.size === 0, 15_000), 'the connection is gone well before 30 s')
})

t.test('a flood of bytes is closed with 1008 too', async (t) => {
  const { app, ws } = await build(t, { rateBytesPerSec: 64 * 1024, maxUploadBytes: 16 * 1024, rateMessagesPerSec: 1000 })
  const client = await connect(t, `${ws}/ask`)
  // 10 messages of 8 KiB fit the 64 KiB burst; 20 do not.
  for (let i = 0; i < 20; i++) client.socket.send(`${i} ${'x'.repeat(8 * 1024)}`)
  t.equal((await client.closed).code, 1008)
  t.equal(coreOf(app).stats.rateLimited, 1)
})

t.test('the byte burst always admits one MAX_UPLOAD_BYTES message, however low the byte rate', async (t) => {
  const maxUploadBytes = 1024 * 1024
  const { app, ws, uploadDir } = await build(t, { rateBytesPerSec: 64 * 1024, maxUploadBytes, rateMessagesPerSec: 1000 })
  const client = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1'] })
  client.socket.send(Buffer.alloc(maxUploadBytes, 5))
  await client.until((c) => c.json('ack').length + c.json('error').length === 1 || c.socket.readyState === c.socket.CLOSED, 10_000, 'the upload\'s answer')
  t.match(client.json('ack'), [{ type: 'ack', bytes: maxUploadBytes }], 'a largest message, 16 times the byte rate, is saved')
  t.equal((await readdir(uploadDir)).length, 1)
  // The burst was that one message: a second at once is over the byte rate.
  client.socket.send(Buffer.alloc(maxUploadBytes, 6))
  t.equal((await client.closed).code, 1008, 'a second one right after is refused with 1008')
  t.equal(coreOf(app).stats.rateLimited, 1)
})

t.test('many clients, each within its limit, are never closed; the log is sampled', async (t) => {
  const textLogPerSec = 10
  const { app, ws, logs } = await build(t, { rateMessagesPerSec: 50, textLogPerSec })
  const { stats } = coreOf(app)
  const clients = await Promise.all(Array.from({ length: 10 }, () => connect(t, `${ws}/guest`)))
  const started = Date.now()
  // Each sends 20 a second for 2 s: well within 50 a second, but 200 a second for the one log.
  for (let tick = 0; tick < 40; tick++) {
    for (const client of clients) client.socket.send(`tick ${tick}`)
    await sleep(50)
  }
  await waitFor(() => stats.textMessages === 400, 10_000, 'every message to arrive')
  const elapsedSec = (Date.now() - started) / 1000

  t.equal(stats.rateLimited, 0, 'nobody was rate limited')
  t.ok(clients.every((c) => c.socket.readyState === c.socket.OPEN), 'every client is still connected')
  const { count, busiestSecond } = receivedLines(logs)
  t.ok(count <= textLogPerSec * (Math.ceil(elapsedSec) + 1), `${count} of 400 messages logged`)
  t.ok(busiestSecond <= 2 * textLogPerSec, `busiest second: ${busiestSecond} lines`)
  t.ok(stats.textLogSuppressed > 0, `${stats.textLogSuppressed} suppressed, and counted`)
  t.equal(count + stats.textLogSuppressed, 400)
})

t.test('a long text message is logged truncated', async (t) => {
  const { app, ws, logs } = await build(t)
  const client = await connect(t, `${ws}/guest`)
  client.socket.send('y'.repeat(100_000))
  await waitFor(() => coreOf(app).stats.textMessages === 1)
  const [line] = logs.find(/^received: /)
  t.ok((line.msg as string).length < 300, `the line holds ${(line.msg as string).length} characters`)
  t.equal(line.bytes, 100_000, 'with the size it had')
})

t.test('a ping flood from a peer that does not read its pongs is cut off', async (t) => {
  const { app, ws, port } = await build(t)
  const raw = await RawClient.open(t, port)
  raw.stall()
  await waitFor(() => coreOf(app).hub.size === 1)
  // ws answers each ping itself; past 60 pongs not yet written (maxPendingAutoPongs) it terminates.
  const pings = Buffer.concat(Array.from({ length: 1000 }, () => encodeFrame({ opcode: Opcode.PING, payload: Buffer.alloc(125) })))
  for (let i = 0; i < 20 && coreOf(app).hub.size > 0; i++) {
    raw.write(pings)
    await sleep(10)
  }
  t.ok(await holds(() => coreOf(app).hub.size === 0), 'the connection is gone')
  t.ok(await servesNewClient(t, app, ws), 'a new client is served')
})
