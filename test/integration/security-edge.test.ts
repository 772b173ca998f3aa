// Issue 22, "The edge", over real sockets: the security headers of the demo page and its files,
// the Origin compared with its scheme (and X-Forwarded-Proto only with trustProxy), allowedHosts
// against DNS rebinding, /metrics behind a token and not proxied by the shipped nginx config, the
// per-identity and per-address connection limits (WebSocket and EventSource), zero-byte uploads
// and a filesystem out of inodes.
import { execFile } from 'node:child_process'
import { copyFileSync, chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { readdir, statfs } from 'node:fs/promises'
import { request as httpRequest } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import Fastify from 'fastify'
import t from 'tap'
import fanout, { type FanoutOptions } from '../../app.js'
import fanoutDemo from '../../demo/plugin.js'
import { STANDALONE } from '../../lib/options.js'
import { ownPath } from '../support/children.js'
import { answerOf, build, connect, freePort, LogCapture, missing, ROOT, run, tempDir, waitFor, type Answer, type TestClient } from '../support/helper.js'
import { handshakeStatus, RawClient, refusal } from '../support/raw-ws.js'
import { coreOf } from '../../plugins/fanout.js'

const exec = promisify(execFile)
const PNG = Buffer.concat([Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex'), Buffer.alloc(64, 7)])
type Tap = Parameters<typeof tempDir>[0]

/**
 * One plain HTTP request with exactly these headers (Host included, which fetch will not set),
 * read to its end; an event stream that was admitted (200) is read only up to its headers.
 */
async function get (port: number, path: string, headers: Record<string, string> = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, headers: { host: `127.0.0.1:${port}`, ...headers }, agent: false }, (res) => {
      answerOf(res).then(resolve, reject)
    })
    req.on('error', reject)
    req.end()
  })
}

/** An EventSource request held open (200) or refused (its status and body); closed at teardown. */
async function eventStream (t: Tap, port: number, headers: Record<string, string> = {}): Promise<Answer & { close: () => Promise<void> }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({
      host: '127.0.0.1',
      port,
      path: '/guest',
      agent: false,
      headers: { host: `127.0.0.1:${port}`, accept: 'text/event-stream', ...headers }
    }, (res) => {
      const close = async (): Promise<void> => {
        if (res.destroyed) return
        const gone = new Promise((resolve) => res.socket.once('close', resolve))
        res.destroy()
        await gone
      }
      t.teardown(close)
      if (res.statusCode === 200) return resolve({ status: 200, headers: res.headers, body: '', close })
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body, close }))
    })
    req.on('error', reject)
    req.end()
  })
}

/** As helper.ts's build, on a Fastify with `trustProxy` on: what a replica behind nginx runs with. */
async function buildBehindProxy (t: Tap, options: FanoutOptions = {}): Promise<{ port: number, logs: LogCapture, app: ReturnType<typeof Fastify> }> {
  const logs = new LogCapture()
  const app = Fastify({ logger: { level: 'info', stream: logs }, trustProxy: true })
  await app.register(fanout, { ...STANDALONE, metricsIntervalMs: 0, uploadMinFreeBytes: 0, drainMs: 0, uploadDir: tempDir(t, 'fanout-uploads-'), ...options })
  await app.register(fanoutDemo, { publisher: false, demoPath: '/' })
  t.teardown(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, port: (app.server.address() as { port: number }).port, logs }
}

t.test('the demo page and its files carry the security headers: a CSP with no inline code, connect-src to the same host, no framing, nosniff', async (t) => {
  const { port } = await build(t)
  for (const path of ['/', '/client.js', '/style.css', '/favicon.svg', '/fanout-client.js']) {
    const { status, headers } = await get(port, path)
    t.equal(status, 200, `${path} served`)
    const csp = String(headers['content-security-policy'])
    const directives = new Map(csp.split(';').map((d) => d.trim().split(/\s+/)).map(([name, ...values]) => [name, values]))
    t.same(directives.get('default-src'), ["'self'"], `${path}: default-src 'self'`)
    t.same(directives.get('script-src'), ["'self'"], `${path}: scripts from files only`)
    t.same(directives.get('style-src'), ["'self'"], `${path}: styles from files only`)
    t.same(directives.get('connect-src'), ["'self'", `ws://127.0.0.1:${port}`, `wss://127.0.0.1:${port}`], `${path}: connect-src 'self' and the same host's sockets`)
    t.same(directives.get('frame-ancestors'), ["'none'"], `${path}: never framed`)
    t.same(directives.get('object-src'), ["'none'"])
    t.notOk(csp.includes('unsafe-inline') || csp.includes('unsafe-eval'), `${path}: no unsafe-inline, no unsafe-eval`)
    t.equal(headers['x-content-type-options'], 'nosniff', `${path}: nosniff`)
    t.equal(headers['x-frame-options'], 'DENY', `${path}: X-Frame-Options DENY for browsers without frame-ancestors`)
  }
  const odd = await get(port, '/', { host: 'x; script-src *' })
  t.notOk(String(odd.headers['content-security-policy']).includes('script-src *'), 'a Host that is not a host name adds nothing to the policy')
})

t.test('Origin is compared with its scheme: https://host on a plain-http request is another origin', async (t) => {
  const { app, port } = await build(t)
  const same = `http://127.0.0.1:${port}`
  const tls = `https://127.0.0.1:${port}`
  const refused = await refusal(RawClient.open(t, port, { headers: { Origin: tls } }))
  t.equal(refused.status, 403, 'WebSocket: refused')
  const sse = await get(port, '/guest', { accept: 'text/event-stream', origin: tls })
  t.equal(sse.status, 403, 'EventSource: refused')
  t.equal(sse.headers['access-control-allow-origin'], undefined, 'and the origin is not echoed')
  t.match(JSON.parse(sse.body), { error: 'origin not allowed', origin: tls })
  t.equal(await handshakeStatus(t, port, { headers: { Origin: tls, 'X-Forwarded-Proto': 'https' } }), 403, 'X-Forwarded-Proto is not believed without trustProxy')
  t.equal(await handshakeStatus(t, port, { headers: { Origin: same } }), 101, 'the same scheme, host and port: admitted')
  t.equal(coreOf(app).stats.handshakesRefused, 3)
})

t.test('behind a TLS-terminating proxy (trustProxy): X-Forwarded-Proto is the scheme compared', async (t) => {
  const { port } = await buildBehindProxy(t)
  const host = `127.0.0.1:${port}`
  t.equal(await handshakeStatus(t, port, { headers: { Origin: `https://${host}`, 'X-Forwarded-Proto': 'https' } }), 101, 'https page through the proxy: admitted')
  t.equal(await handshakeStatus(t, port, { headers: { Origin: `http://${host}`, 'X-Forwarded-Proto': 'https' } }), 403, 'an http page on an https site: refused')
  t.equal(await handshakeStatus(t, port, { headers: { Origin: `https://${host}` } }), 403, 'no X-Forwarded-Proto: the socket\'s own scheme, http')
})

t.test('allowedHosts refuses the DNS-rebinding shape (Host and Origin both evil.example); unset, it is admitted', async (t) => {
  const rebinding = (port: number) => ({ Host: `evil.example:${port}`, Origin: `http://evil.example:${port}` })

  const open = await build(t)
  t.equal(await handshakeStatus(t, open.port, { headers: rebinding(open.port) }), 101, 'unset (the default): any Host, the risk docs/security.md names')

  const { app, port, logs } = await build(t, { allowedHosts: ['127.0.0.1', 'fanout.example:443'] })
  const refused = await refusal(RawClient.open(t, port, { headers: rebinding(port) }))
  t.equal(refused.status, 403, 'WebSocket: refused before the upgrade')
  const sse = await get(port, '/guest', { accept: 'text/event-stream', host: `evil.example:${port}`, origin: `http://evil.example:${port}` })
  t.equal(sse.status, 403, 'EventSource: refused')
  t.same(JSON.parse(sse.body), { error: 'host not allowed', host: `evil.example:${port}` }, 'a clear error naming the Host')
  const page = await get(port, '/', { host: `evil.example:${port}` })
  t.equal(page.status, 403, 'the demo page: refused')
  t.equal((await get(port, '/metrics', { host: `evil.example:${port}` })).status, 403, '/metrics: refused')
  t.equal(await handshakeStatus(t, port, { headers: { Host: 'fanout.example:8443', Origin: 'http://fanout.example:8443' } }), 403, 'a listed name on an unlisted port: refused')
  t.equal(await handshakeStatus(t, port, { headers: { Host: 'fanout.example:443', Origin: 'http://fanout.example:443' } }), 101, 'listed with its port: admitted')
  t.equal(await handshakeStatus(t, port, { headers: { Host: `127.0.0.1:${port}` } }), 101, 'a listed name, any port: admitted')
  t.equal((await get(port, '/')).status, 200, 'the page under a listed Host')
  const stats = coreOf(app).stats
  t.equal(stats.hostsRefused, 5)
  t.equal(stats.handshakesRefused, 3, 'the two stream refusals and the unlisted port')
  t.ok(logs.find(/refused: host not in allowedHosts/).length >= 3, 'logged')
})

t.test('metricsToken: /metrics needs the bearer token', async (t) => {
  const token = 'metrics-Secret.token~0123456789'
  const { app, port, logs } = await build(t, { metricsToken: token })
  const none = await get(port, '/metrics')
  t.equal(none.status, 401, 'no Authorization: 401')
  t.equal(none.headers['www-authenticate'], 'Bearer realm="metrics"')
  t.same(JSON.parse(none.body), { error: 'metrics need Authorization: Bearer <METRICS_TOKEN>' })
  t.equal((await get(port, '/metrics', { authorization: `Bearer ${token}x` })).status, 401, 'a longer token: 401')
  t.equal((await get(port, '/metrics', { authorization: `Bearer ${token.slice(0, -1)}` })).status, 401, 'a prefix of it: 401')
  t.equal((await get(port, '/metrics', { authorization: `Basic ${token}` })).status, 401, 'another scheme: 401')
  const ok = await get(port, '/metrics', { authorization: `Bearer ${token}` })
  t.equal(ok.status, 200, 'the token: 200')
  t.match(ok.body, /^fanout_metrics_unauthorized_total 4$/m, 'the refusals counted')
  t.equal(coreOf(app).stats.metricsUnauthorized, 4)
  t.equal(logs.find('metrics refused: missing or wrong bearer token').length, 4, 'and logged')
  t.notOk(JSON.stringify(logs.lines).includes(token), 'the token is in no log line')

  const open = await build(t)
  t.equal((await get(open.port, '/metrics')).status, 200, 'unset: open, as before')
})

t.test('the shipped nginx config does not proxy /metrics; the replica still serves it directly', { skip: missing('nginx') }, async (t) => {
  const { port: replica } = await build(t)
  const dir = mkdtempSync(join(tmpdir(), 'fanout-nginx-'))
  const owned = ownPath('dir', dir)
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }); owned.release() })
  const conf = join(dir, 'nginx')
  mkdirSync(conf)
  copyFileSync(join(ROOT, 'deploy', 'nginx.conf'), join(conf, 'nginx.conf'))
  writeFileSync(join(conf, 'upstream.conf'), `upstream fanout_replicas { server 127.0.0.1:${replica}; }\n`)
  const port = await freePort()
  writeFileSync(join(conf, 'listen.conf'), `listen 127.0.0.1:${port};\n`)
  chmodSync(dir, 0o755)
  run(t, 'nginx', ['-p', `${conf}/`, '-c', join(conf, 'nginx.conf'), '-g', `daemon off; pid ${join(conf, 'nginx.pid')};`])
  await waitFor(async () => (await get(port, '/healthz').catch(() => ({ status: 0 }))).status === 200, 10_000, 'nginx to proxy /healthz')
  for (const path of ['/metrics', '/metrics?format=text', '//metrics', '/%6detrics']) {
    t.equal((await get(port, path)).status, 404, `${path} through nginx: 404`)
  }
  t.equal((await get(port, '/')).status, 200, 'the demo page still proxied')
  t.equal((await get(replica, '/metrics')).status, 200, 'the replica\'s own address serves it (Prometheus scrapes there)')
})

/** authorize from a header, as an app reading its session would: the id is the user. */
const byUser = { authorize: (request: { headers: Record<string, unknown> }) => ({ id: String(request.headers['x-user']) }) }

t.test('maxConnectionsPerIdentity: one identity capped at its share while another still connects, WebSocket and EventSource', async (t) => {
  const { app, port, ws, logs } = await build(t, { ...byUser, maxConnectionsPerIdentity: 2 })
  const alice = { 'x-user': 'alice' }
  const first = await connect(t, `${ws}/guest`, { headers: alice })
  const second = await eventStream(t, port, alice)
  t.equal(second.status, 200, 'alice\'s second connection, an event stream')

  const refused = await refusal(RawClient.open(t, port, { headers: { 'X-User': 'alice' } }))
  t.equal(refused.status, 429, 'a third, over WebSocket: 429 before the upgrade')
  t.equal(refused.headers['retry-after'], '5', 'with Retry-After')
  const sse = await eventStream(t, port, alice)
  t.equal(sse.status, 429, 'a third, over EventSource: 429')
  t.equal(sse.headers['retry-after'], '5')
  t.same(JSON.parse(sse.body), { error: 'too many connections for this identity', code: 'identity_limit', limit: 2 }, 'a clear JSON error')

  const bob = await connect(t, `${ws}/guest`, { headers: { 'x-user': 'bob' } })
  const bobStream = await eventStream(t, port, { 'x-user': 'bob' })
  t.equal(bobStream.status, 200, 'bob still connects, EventSource too')
  t.equal(coreOf(app).hub.size, 4)
  t.equal(coreOf(app).stats.identityLimited, 2, 'counted')
  t.equal(coreOf(app).stats.handshakesRefused, 2)
  t.equal(logs.find('websocket refused: MAX_CONNECTIONS_PER_IDENTITY reached').length, 1, 'logged')

  // A slot comes back when its connection ends: the WebSocket, then the event stream. The server
  // sees the close a moment after the client: each new connection is retried until it opens.
  const reconnect = async (what: string): Promise<TestClient> => await waitFor(async () => {
    const client = await connect(t, `${ws}/guest`, { headers: alice, open: false })
    return client.opened.then(() => client, () => undefined)
  }, 10_000, what) as TestClient
  first.socket.close()
  await first.closed
  const third = await reconnect('the closed WebSocket\'s slot back')
  t.pass('the closed WebSocket\'s slot is alice\'s again')
  t.equal(await handshakeStatus(t, port, { headers: { 'X-User': 'alice' } }), 429, 'full again: a WebSocket and the event stream')
  await second.close()
  const fourth = await reconnect('the event stream\'s slot back')
  t.pass('the closed event stream\'s slot is alice\'s again')
  t.equal(await handshakeStatus(t, port, { headers: { 'X-User': 'alice' } }), 429, 'and full again')
  for (const client of [third, fourth, bob]) client.socket.close()
  await bobStream.close()
  await waitFor(() => coreOf(app).hub.size === 0, 10_000, 'every connection gone')
})

t.test('maxConnectionsPerAddress with trustProxy: one address capped, another still connects, WebSocket and EventSource', async (t) => {
  const { app, port, logs } = await buildBehindProxy(t, { maxConnectionsPerAddress: 2 })
  const from = (ip: string) => ({ 'X-Forwarded-For': ip })
  const a1 = await RawClient.open(t, port, { headers: from('203.0.113.7') })
  const a2 = await eventStream(t, port, { 'x-forwarded-for': '203.0.113.7' })
  t.equal(a2.status, 200)
  const refused = await refusal(RawClient.open(t, port, { headers: from('203.0.113.7') }))
  t.equal(refused.status, 429, 'a third from 203.0.113.7 over WebSocket: 429')
  const sse = await eventStream(t, port, { 'x-forwarded-for': '203.0.113.7' })
  t.equal(sse.status, 429, 'over EventSource: 429')
  t.same(JSON.parse(sse.body), { error: 'too many connections from this address', code: 'address_limit', limit: 2 })
  t.equal(await handshakeStatus(t, port, { headers: from('198.51.100.9') }), 101, 'another address still connects')
  t.equal(coreOf(app).stats.addressLimited, 2, 'counted')
  t.match(logs.find('websocket refused: MAX_CONNECTIONS_PER_ADDRESS reached'), [{ address: '203.0.113.7', limit: 2 }], 'logged with the address')
  a1.destroy()
  await a1.ended
  t.equal(await waitFor(async () => {
    const status = await handshakeStatus(t, port, { headers: from('203.0.113.7') })
    return status === 101 && status
  }, 10_000, 'the slot back'), 101, 'released when its socket closed')
})

/** Sends one binary message and waits for its ack or error. */
async function upload (client: TestClient, data: Buffer): Promise<Record<string, unknown>> {
  const before = client.json('ack').length + client.json('error').length
  client.socket.send(data)
  await client.until((c) => c.json('ack').length + c.json('error').length > before, 10_000, 'ack or error')
  return client.json().filter((m) => m.type === 'ack' || m.type === 'error').at(-1) as Record<string, unknown>
}

t.test('a zero-byte upload is refused with code "empty" and makes no file', async (t) => {
  const { app, ws, uploadDir, logs } = await build(t)
  const client = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1'] })
  t.match(await upload(client, Buffer.alloc(0)), { type: 'error', code: 'empty', message: 'an upload must have at least one byte' })
  t.same(await readdir(uploadDir), [], 'no file, no temp file')
  t.equal(coreOf(app).stats.uploadErrors, 1, 'counted')
  t.match(logs.find('upload refused'), [{ code: 'empty', bytes: 0 }], 'logged')
  t.match(await upload(client, PNG), { type: 'ack', bytes: PNG.length }, 'the connection uploads on')
})

// Mounting a tmpfs needs root; anywhere else this is skipped, and says so.
const notRoot = process.getuid?.() !== 0 ? 'mounting a tmpfs needs root' : false

/** A tmpfs with few inodes on a fresh directory; unmounted, then removed, at teardown. */
async function tinyTmpfs (t: Tap, inodes: number): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'fanout-inodes-'))
  const owned = ownPath('mount', dir)
  await exec('mount', ['-t', 'tmpfs', '-o', `size=1m,nr_inodes=${inodes},mode=0755`, 'tmpfs', dir])
  t.teardown(async () => {
    for (let attempt = 0; ; attempt++) {
      try {
        await exec('umount', attempt === 20 ? ['-l', dir] : [dir]) // busy for good: detached rather than leaked
        break
      } catch {
        await sleep(100)
      }
    }
    rmSync(dir, { recursive: true, force: true })
    owned.release()
  })
  return dir
}

t.test('zero-byte uploads use no inodes: after many of them a real upload still fits', { skip: notRoot }, async (t) => {
  const dir = await tinyTmpfs(t, 20)
  const { ws } = await build(t, { uploadDir: dir })
  const client = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1'] })
  for (let i = 0; i < 30; i++) t.equal((await upload(client, Buffer.alloc(0))).code, 'empty', `empty upload ${i + 1} refused`)
  t.same(await readdir(dir), [], 'not one file made')
  t.match(await upload(client, PNG), { type: 'ack' }, 'a real upload still has an inode')
})

t.test('out of inodes with bytes to spare: disk_full, saying inodes', { skip: notRoot }, async (t) => {
  const dir = await tinyTmpfs(t, 20)
  const { app, ws } = await build(t, { uploadDir: dir })
  // Another tenant of the filesystem uses up its inodes with tiny files.
  for (let i = 0; ; i++) {
    try {
      writeFileSync(join(dir, `other-${i}`), 'x', { flag: 'wx' })
    } catch (err) {
      t.equal((err as NodeJS.ErrnoException).code, 'ENOSPC', `the filesystem ran out after ${i} files`)
      break
    }
  }
  const fs = await statfs(dir)
  t.equal(fs.ffree, 0, 'no inode left')
  t.ok(fs.bavail * fs.bsize > 900 * 1024, 'while most bytes are free')
  const client = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1'] })
  const refused = await upload(client, PNG)
  t.equal(refused.code, 'disk_full')
  t.match(refused.message, /no free inodes/, 'the message says inodes')
  t.equal(coreOf(app).stats.uploadErrors, 1)
  t.notOk((await readdir(dir)).some((f) => !f.startsWith('other-')), 'nothing of the upload left behind')
})
