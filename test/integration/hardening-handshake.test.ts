// Issue 5, "Handshake": the Origin allow-list (403), the upload token (never logged) and the
// connection cap (503), each decided before the upgrade, through real sockets.
import { readdir } from 'node:fs/promises'
import t from 'tap'
import { build, connect, startServer, run, waitFor, type TestClient } from '../support/helper.js'
import { handshakeStatus, RawClient, refusal, servesNewClient } from '../support/raw-ws.js'
import { coreOf } from '../../plugins/fanout.js'

const PNG = Buffer.concat([Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex'), Buffer.alloc(64, 7)])
const TOKEN = 'upl0ad-Secret.token~42'

t.test('a foreign Origin is refused with 403 before the upgrade', async (t) => {
  const { app, ws, port } = await build(t)
  const refused = await refusal(RawClient.open(t, port, { headers: { Origin: 'https://evil.example' } }))
  t.equal(refused.status, 403)
  const askRefused = await refusal(RawClient.open(t, port, { path: '/ask', headers: { Origin: 'https://evil.example' } }))
  t.equal(askRefused.status, 403, '/ask too')
  t.equal((await refusal(RawClient.open(t, port, { headers: { Origin: 'null' } }))).status, 403, 'file:// pages only when listed')
  t.equal(coreOf(app).stats.handshakesRefused, 3)
  t.equal(coreOf(app).hub.size, 0)

  t.equal(await handshakeStatus(t, port, { headers: { Origin: `http://127.0.0.1:${port}` } }), 101, 'the same origin is admitted')
  t.equal(await handshakeStatus(t, port), 101, 'a client without Origin (not a browser) is admitted')
  t.ok(await servesNewClient(t, app, ws), 'and served')
})

t.test('listed origins, null and * are admitted', async (t) => {
  const listed = await build(t, { allowedOrigins: ['https://app.example', 'null'] })
  t.equal(await handshakeStatus(t, listed.port, { headers: { Origin: 'https://app.example' } }), 101, 'a listed origin is admitted')
  t.equal(await handshakeStatus(t, listed.port, { headers: { Origin: 'null' } }), 101, 'null, listed, is admitted')
  t.equal(await handshakeStatus(t, listed.port, { headers: { Origin: 'https://app.example.evil' } }), 403, 'a prefix of a listed origin is not')

  const any = await build(t, { allowedOrigins: ['*'] })
  for (const origin of ['https://evil.example', 'null', 'http://localhost:1']) {
    t.equal(await handshakeStatus(t, any.port, { headers: { Origin: origin } }), 101, `* admits ${origin}`)
  }
  t.equal(coreOf(any.app).stats.handshakesRefused, 0)
})

t.test('with an upload token, only connections that presented it may upload', async (t) => {
  const { app, ws, uploadDir, logs } = await build(t, { uploadToken: TOKEN })
  const upload = async (client: TestClient, n: number) => {
    client.socket.send(PNG)
    await client.until((c) => c.json('ack').length + c.json('error').length === n, 10_000, 'ack or error')
  }

  const without = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1'] })
  await upload(without, 1)
  t.match(without.json('error'), [{ type: 'error', code: 'unauthorized' }])
  const wrong = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1'], headers: { Authorization: `Bearer ${TOKEN}x` } })
  await upload(wrong, 1)
  t.match(wrong.json('error'), [{ code: 'unauthorized' }], 'a wrong token is no token')
  t.same(await readdir(uploadDir), [], 'no file, no temp file')
  without.socket.send('text still works without the token')
  await waitFor(() => coreOf(app).stats.textMessages === 1)

  const bearer = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1'], headers: { Authorization: `Bearer ${TOKEN}` } })
  await upload(bearer, 1)
  t.equal(bearer.json('ack').length, 1, 'Authorization: Bearer')
  const subprotocol = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1', `fanout.token.${TOKEN}`] })
  t.equal(subprotocol.socket.protocol, 'fanout.v1', 'the token protocol is never the one chosen')
  await upload(subprotocol, 1)
  t.equal(subprotocol.json('ack').length, 1, 'subprotocol fanout.token.<token>')
  const files = await readdir(uploadDir)
  t.same(files.sort(), [bearer.json('ack')[0].id, subprotocol.json('ack')[0].id].sort())
  t.equal(coreOf(app).stats.uploads, 2)
  t.equal(coreOf(app).stats.uploadErrors, 2)

  t.ok(logs.lines.some((l) => l.msg === 'upload refused' && l.code === 'unauthorized'), 'the refusal is logged')
  t.notOk(JSON.stringify(logs.lines).includes(TOKEN), 'the token appears in no log line')
})

t.test('the standalone server never logs the token, not even at trace level', async (t) => {
  const server = await startServer(t, { UPLOAD_TOKEN: TOKEN, LOG_LEVEL: 'trace' })
  const bearer = await connect(t, `${server.ws}/guest`, { protocols: ['fanout.v1'], headers: { Authorization: `Bearer ${TOKEN}` } })
  bearer.socket.send(PNG)
  await bearer.until((c) => c.json('ack').length === 1)
  const viaProtocol = await connect(t, `${server.ws}/guest`, { protocols: ['fanout.v1', `fanout.token.${TOKEN}`] })
  viaProtocol.socket.send(PNG)
  await viaProtocol.until((c) => c.json('ack').length === 1)
  const wrong = await connect(t, `${server.ws}/guest`, { protocols: ['fanout.v1', `fanout.token.${TOKEN}-wrong`] })
  wrong.socket.send(PNG)
  await wrong.until((c) => c.json('error').length === 1)
  await server.kill('SIGTERM')
  t.match(server.output(), /upload saved/)
  t.notOk(server.output().includes(TOKEN), 'not in any line')

  // A token the configuration refuses is named, and its value is not echoed.
  const bad = 'not a valid token!'
  const refused = run(t, process.execPath, ['dist/server.js'], { UPLOAD_TOKEN: bad, PORT: '0' })
  t.not((await refused.exited).code, 0)
  t.match(refused.output(), /UPLOAD_TOKEN/)
  t.notOk(refused.output().includes(bad), 'the bad value is not printed')
})

t.test('beyond maxConnections the handshake gets 503; a freed slot admits again', async (t) => {
  const { app, ws, port } = await build(t, { maxConnections: 3 })
  const first = await connect(t, `${ws}/guest`)
  await connect(t, `${ws}/guest`)
  await connect(t, `${ws}/ask`)
  t.equal(coreOf(app).hub.size, 3)
  const refused = await refusal(RawClient.open(t, port))
  t.equal(refused.status, 503)
  t.equal(refused.headers['retry-after'], '5')
  t.equal((await refusal(RawClient.open(t, port, { path: '/ask' }))).status, 503, '/ask shares the cap')
  const fourth = await connect(t, `${ws}/guest`, { open: false })
  await t.rejects(fourth.opened, /unexpected response 503/, 'a ws client sees the 503 too')
  t.equal(coreOf(app).stats.handshakesRefused, 3)

  first.socket.close()
  await first.closed
  await waitFor(() => coreOf(app).hub.size === 2, 10_000, 'the slot to free')
  t.ok(await servesNewClient(t, app, ws), 'a new client is admitted and served')
})
