// Issue 5, "Frames": too big (1009), invalid UTF-8 (1007), protocol errors (1002), each answered
// with the right close code in the server's own close frame, and the server serving on after each.
import { readdir } from 'node:fs/promises'
import t from 'tap'
import { build, connect, holds } from '../support/helper.js'
import { closePayload, encodeFrame, Opcode, RawClient, Rsv, servesNewClient, type FrameSpec } from '../support/raw-ws.js'
import { coreOf } from '../../plugins/fanout.js'

t.test('a message over maxPayload is closed with 1009 and nothing reaches the disk', async (t) => {
  const { app, ws, port, uploadDir } = await build(t, { maxUploadBytes: 1024 })
  const client = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1'] })
  client.socket.send(Buffer.alloc(2048, 1))
  t.equal((await client.closed).code, 1009)

  // A header that only claims the size is refused before the payload arrives: nothing is buffered.
  const raw = await RawClient.open(t, port)
  raw.send({ opcode: Opcode.BINARY, length: 10 * 1024 * 1024, payload: Buffer.alloc(16) })
  t.equal((await raw.closed).code, 1009)

  // A length beyond 2^53 - 1 (RFC 6455 allows 63 bits; JavaScript cannot count them).
  const huge = await RawClient.open(t, port)
  huge.send({ opcode: Opcode.BINARY, length: 2n ** 63n - 1n })
  t.equal((await huge.closed).code, 1009)

  t.same(await readdir(uploadDir), [], 'no file and no temp file')
  t.equal(coreOf(app).stats.uploads, 0)
  t.ok(await servesNewClient(t, app, ws), 'a new client is served')
})

t.test('invalid UTF-8 is closed with 1007', async (t) => {
  const { app, ws, port } = await build(t)
  const cases: Array<[string, FrameSpec[]]> = [
    ['in a text frame', [{ opcode: Opcode.TEXT, payload: Buffer.from([0x68, 0x69, 0xc3, 0x28]) }]],
    ['an overlong encoding', [{ opcode: Opcode.TEXT, payload: Buffer.from([0xc0, 0xaf]) }]],
    ['a UTF-16 surrogate', [{ opcode: Opcode.TEXT, payload: Buffer.from([0xed, 0xa0, 0x80]) }]],
    ['split across fragments', [
      { opcode: Opcode.TEXT, fin: false, payload: Buffer.from([0x61, 0xe2, 0x82]) },
      { opcode: Opcode.CONTINUATION, payload: Buffer.from([0x28]) }
    ]],
    ['in a close reason', [{ opcode: Opcode.CLOSE, payload: Buffer.concat([closePayload(1000), Buffer.from([0xff])]) }]]
  ]
  for (const [name, frames] of cases) {
    const raw = await RawClient.open(t, port)
    for (const frame of frames) raw.send(frame)
    t.equal((await raw.closed).code, 1007, name)
    await raw.ended
    t.ok(await servesNewClient(t, app, ws), `serves on after invalid UTF-8 ${name}`)
  }
  t.equal(coreOf(app).stats.textMessages, 0, 'none of it reached the text log')
})

t.test('protocol errors are closed with 1002', async (t) => {
  const { app, ws, port } = await build(t)
  const cases: Array<[string, Buffer]> = [
    ['an unmasked client frame', encodeFrame({ opcode: Opcode.TEXT, payload: 'hello', mask: false })],
    ['reserved data opcode 3', encodeFrame({ opcode: 3, payload: 'x' })],
    ['reserved control opcode 0xB', encodeFrame({ opcode: 0xb })],
    ['RSV1 without an extension', encodeFrame({ opcode: Opcode.TEXT, rsv: Rsv.RSV1, payload: 'x' })],
    ['RSV2', encodeFrame({ opcode: Opcode.TEXT, rsv: Rsv.RSV2, payload: 'x' })],
    ['RSV3', encodeFrame({ opcode: Opcode.BINARY, rsv: Rsv.RSV3, payload: 'x' })],
    ['a fragmented control frame', encodeFrame({ opcode: Opcode.PING, fin: false, payload: 'p' })],
    ['a control frame over 125 bytes', encodeFrame({ opcode: Opcode.PING, payload: Buffer.alloc(126) })],
    ['a continuation with nothing to continue', encodeFrame({ opcode: Opcode.CONTINUATION, payload: 'x' })],
    ['a new message inside a fragmented one', Buffer.concat([
      encodeFrame({ opcode: Opcode.TEXT, fin: false, payload: 'a' }),
      encodeFrame({ opcode: Opcode.TEXT, payload: 'b' })
    ])],
    ['a close frame of one byte', encodeFrame({ opcode: Opcode.CLOSE, payload: Buffer.from([3]) })],
    ['a close code that may not be sent (1005)', encodeFrame({ opcode: Opcode.CLOSE, payload: closePayload(1005) })],
    ['a close code out of range (999)', encodeFrame({ opcode: Opcode.CLOSE, payload: closePayload(999) })]
  ]
  for (const [name, bytes] of cases) {
    const raw = await RawClient.open(t, port)
    raw.write(bytes)
    t.equal((await raw.closed).code, 1002, name)
    await raw.ended
    t.ok(await servesNewClient(t, app, ws), `serves on after ${name}`)
  }
  t.equal(coreOf(app).stats.textMessages, 0, 'no malformed frame was taken for a message')
  t.ok(await holds(() => coreOf(app).hub.size === 0), 'every refused connection is gone from the hub')
})

t.test('frames that are legal but unusual are accepted', async (t) => {
  const { app, port } = await build(t)
  const raw = await RawClient.open(t, port)
  // A fragmented text message with a ping between its fragments, then a normal close.
  raw.send({ opcode: Opcode.TEXT, fin: false, payload: 'frag' })
  raw.send({ opcode: Opcode.PING, payload: 'between' })
  raw.send({ opcode: Opcode.CONTINUATION, payload: 'mented' })
  raw.send({ opcode: Opcode.CLOSE, payload: closePayload(1000, 'bye') })
  t.equal((await raw.closed).code, 1000)
  t.ok(raw.frames.some((f) => f.opcode === Opcode.PONG && f.payload.toString() === 'between'), 'the ping got its pong')
  t.equal(coreOf(app).stats.textMessages, 1)
})

t.test('a message split into too many fragments is closed with 1008 (ws maxFragments)', async (t) => {
  const { app, ws, port } = await build(t)
  const raw = await RawClient.open(t, port)
  // 20,000 one-byte fragments: a small message, but 20,000 buffers to hold (ws >= 8.21 caps at 16,384).
  const fragments = [encodeFrame({ opcode: Opcode.BINARY, fin: false, payload: 'x' })]
  for (let i = 0; i < 20_000; i++) fragments.push(encodeFrame({ opcode: Opcode.CONTINUATION, fin: false, payload: 'x' }))
  raw.write(Buffer.concat(fragments))
  t.equal((await raw.closed).code, 1008)
  t.equal(coreOf(app).stats.uploads, 0)
  t.ok(await servesNewClient(t, app, ws), 'a new client is served')
})

t.test('permessage-deflate is off: an offer is declined', async (t) => {
  const { ws } = await build(t)
  // The ws client offers permessage-deflate unless told not to.
  const client = await connect(t, `${ws}/guest`)
  t.equal(client.socket.extensions, '', 'no extension negotiated')
})
