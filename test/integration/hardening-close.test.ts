// Issue 11: every connection the server closes is dropped promptly. After a close the server
// starts (protocol error, invalid UTF-8, oversize message, rate limit), a peer that never answers
// is terminated within about a second (RFC 6455 §7.1.7), so it cannot hold its connection slot
// for ws's default 30 s and lock everyone else out.
import t from 'tap'
import { connect, build, waitFor } from '../support/helper.js'
import { encodeFrame, HandshakeRefused, Opcode, RawClient } from '../support/raw-ws.js'
import { coreOf } from '../../plugins/fanout.js'

const BREAKAGES: Array<[string, (raw: RawClient) => void]> = [
  ['a protocol error (unmasked frame)', (raw) => raw.send({ opcode: Opcode.TEXT, payload: 'x', mask: false })],
  ['invalid UTF-8', (raw) => raw.send({ opcode: Opcode.TEXT, payload: Buffer.from([0xff, 0xfe]) })],
  ['an oversize message', (raw) => raw.send({ opcode: Opcode.BINARY, payload: Buffer.alloc(4096) })],
  ['over the rate limit', (raw) => raw.write(Buffer.concat(Array.from({ length: 20 }, () => encodeFrame({ opcode: Opcode.TEXT, payload: 'hi' }))))]
]

t.test('twenty peers that break the protocol and never answer the close: a good client is admitted within 2 s', async (t) => {
  const { app, ws, port } = await build(t, { maxConnections: 20, maxUploadBytes: 1024, rateMessagesPerSec: 5 })
  const peers = await Promise.all(Array.from({ length: 20 }, () => RawClient.open(t, port)))
  t.equal(coreOf(app).hub.size, 20, 'every slot taken')
  const refused = await RawClient.open(t, port).then(() => undefined, (err: Error) => err)
  t.equal(refused instanceof HandshakeRefused && refused.status, 503, 'the 21st is refused with 503')

  const started = Date.now()
  peers.forEach((peer, i) => {
    peer.stall() // it never reads the server's close frame, so never answers it
    BREAKAGES[i % BREAKAGES.length][1](peer)
  })
  // Retried as a real client would; each refusal is a 503 while the broken peers hold the slots.
  let admitted: Awaited<ReturnType<typeof connect>> | undefined
  while (!admitted && Date.now() - started < 5000) {
    admitted = await connect(t, `${ws}/guest`).catch(() => undefined)
    if (!admitted) await new Promise((resolve) => setTimeout(resolve, 100))
  }
  const elapsed = Date.now() - started
  t.ok(admitted, 'a good client got in')
  t.ok(elapsed < 2000, `within 2 s of the breakage (${elapsed} ms)`)
  await waitFor(() => coreOf(app).hub.size === 1, 3000, 'the broken peers to be gone from the hub')
  t.equal(coreOf(app).stats.rateLimited, 5, 'the rate-limited ones were counted')
  const id = await app.fanout.publish({ type: 'news', text: 'still serving' })
  await admitted?.until((c) => c.json('news').some((e) => e.id === id), 5000, 'an event')
})

t.test('each breakage alone: the silent peer\'s connection is gone from the server after about a second', async (t) => {
  const { app, port } = await build(t, { maxUploadBytes: 1024, rateMessagesPerSec: 5 })
  for (const [name, breakIt] of BREAKAGES) {
    const peer = await RawClient.open(t, port)
    // Paused and half-open: it neither reads the close frame nor ends its side of the TCP
    // connection, so only the server's own timer can free the slot.
    peer.stall()
    peer.socket.on('end', () => {})
    const started = Date.now()
    breakIt(peer)
    await waitFor(() => coreOf(app).hub.size === 0, 5000, `${name}: the connection to go`)
    const elapsed = Date.now() - started
    t.ok(elapsed < 2000, `${name}: gone after ${elapsed} ms`)
    peer.destroy()
  }
})
