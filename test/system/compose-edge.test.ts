// Issue 22, its last "done means": the compose topology (docker-compose.yml: nginx in front of three
// replicas, Redis, the worker) with the security settings turned on through the environment, tried
// as an attacker would, through nginx's published port only: tokens forged, altered, expired or
// unsigned; channels beyond a token's claims; an https Origin on plain http; a rebinding Host;
// /metrics; a spoofed X-Forwarded-For against the per-address cap; the demo page's headers; an
// empty upload. Each refusal is the one docs/security.md names. Needs what compose.test.ts needs.
import { randomBytes } from 'node:crypto'
import { request as httpRequest } from 'node:http'
import { SignJWT, UnsecuredJWT } from 'jose'
import t from 'tap'
import { WebSocket } from 'ws'
import { buildImages, composeProject, getFrom, sh, unavailable } from '../support/compose.js'
import { answerOf, freePort, httpStatus, TestClient, waitFor, type Answer } from '../support/helper.js'
import { openSse } from '../support/sse.js'

t.setTimeout(25 * 60_000)

// compose.test.ts's tag: whichever test runs first builds it, the other finds its layers cached.
const IMAGE = 'fastify-fanout:compose-test'
const SECRET = randomBytes(32).toString('hex')
const METRICS_TOKEN = randomBytes(24).toString('hex')
const REPLICAS = 3
// Per replica. Above 1, so that a handshake probe the replica has not yet seen closed does not
// take the last slot of the next probe.
const PER_ADDRESS = 3

type Json = Record<string, unknown>

const now = (): number => Math.floor(Date.now() / 1000)

/** An HS256 token for `sub`, valid `ttl` seconds, signed with the servers' secret unless told. */
async function sign (claims: Json = {}, { sub = 'alice', ttl = 300, secret = SECRET } = {}): Promise<string> {
  return new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).setSubject(sub).setIssuedAt()
    .setExpirationTime(now() + ttl).sign(new TextEncoder().encode(secret))
}

const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` })
const subprotocols = (token: string): Record<string, string> => ({ 'sec-websocket-protocol': `fanout.v1, fanout.token.${token}` })
const parse = (body: string): unknown => { try { return JSON.parse(body) } catch { return body } }

const reason = await unavailable()
if (reason) console.error(`# compose-edge test SKIPPED: ${reason}`)

t.test('the compose topology with its security settings on, attacked through nginx', { skip: reason ?? false }, async (t) => {
  const lbPort = await freePort()
  const host = `127.0.0.1:${lbPort}`
  const project = await composeProject(t, 'docker-compose.yml', `fanoutedge${process.pid}`, {
    LB_PORT: String(lbPort),
    FANOUT_IMAGE: IMAGE,
    JWT_SECRET: SECRET,
    // The names users type, and `app`: the name a scrape inside the network uses.
    ALLOWED_HOSTS: '127.0.0.1,localhost,app',
    METRICS_TOKEN,
    MAX_CONNECTIONS_PER_ADDRESS: String(PER_ADDRESS),
    GUEST_MIN_DELAY_MS: '200',
    GUEST_MAX_DELAY_MS: '500'
    // TRUST_PROXY: the compose file's own default, nginx's one hop.
  })
  const clients: TestClient[] = []
  t.teardown(() => { for (const client of clients) client.socket.terminate() })

  /** One request to nginx's published port with exactly these headers (Host included). */
  const request = async (method: string, path: string, headers: Record<string, string> = {}): Promise<Answer> =>
    new Promise((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port: lbPort, method, path, agent: false, headers: { host, ...headers } }, (res) => {
        answerOf(res).then(resolve, reject)
      })
      req.on('error', reject)
      req.end()
    })
  const eventStream = (path: string, headers: Record<string, string> = {}): Promise<Answer> =>
    request('GET', path, { accept: 'text/event-stream', ...headers })
  /** A WebSocket handshake through nginx: 101 (the socket then dropped), or the refusal. */
  const handshake = async (path: string, headers: Record<string, string> = {}): Promise<Answer> =>
    new Promise((resolve, reject) => {
      const req = httpRequest({
        host: '127.0.0.1',
        port: lbPort,
        path,
        agent: false,
        headers: { host, connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': randomBytes(16).toString('base64'), ...headers }
      })
      req.on('upgrade', (res, socket) => {
        socket.destroy()
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: '' })
      })
      req.on('response', (res) => { answerOf(res).then(resolve, reject) })
      req.on('error', reject)
      req.end()
    })
  /** A WebSocket through nginx held open, with the token as the browser sends it (a subprotocol). */
  const open = async (path: string, token: string, headers: Record<string, string> = {}): Promise<TestClient> => {
    const client = new TestClient(new WebSocket(`ws://${host}${path}`, ['fanout.v1', `fanout.token.${token}`], { headers }))
    clients.push(client)
    await client.opened
    return client
  }
  const send = (client: TestClient, command: Json): void => client.socket.send(JSON.stringify(command))
  /** Open connections per app container, from each replica's own /metrics, read inside it with the token. */
  const connectionsOn = async (ids: string[]): Promise<number[]> => Promise.all(ids.map(async (id) => {
    const { status, body } = await getFrom(id, 'http://127.0.0.1:8080/metrics', bearer(METRICS_TOKEN))
    if (status !== 200) throw new Error(`/metrics inside ${id}: ${status} ${body}`)
    return Number(body.split('\n').find((l) => /^fanout_connections(\{[^}]*\})? /.test(l))?.split(' ').pop())
  }))

  await buildImages(t, IMAGE)
  const started = Date.now()
  // The replicas first, then lb once they are healthy: v1 fails `up` at once on a replica whose
  // check failed under load (a busy 2-core host), though it turns healthy on its next one.
  const up = await project.compose(['up', '-d', '--no-build', 'redis', 'worker', 'app'], 240_000)
  const apps = await project.healthy('app', REPLICAS)
  await project.compose(['up', '-d', '--no-build', 'lb'], 120_000)
  t.comment(`up -d: ${up.ms} ms for redis, the worker and the replicas; all healthy and lb up after ${Date.now() - started} ms`)
  await waitFor(async () => (await httpStatus(`http://${host}/readyz`)) === 200, 60_000, '/readyz 200 through nginx')
  const [worker] = await project.containers('worker')
  const good = await sign()

  await t.test('tokens: forged, altered, expired, unsigned or missing are refused on WebSocket and EventSource; a valid one is admitted', async (t) => {
    const [head, payload, signature] = good.split('.')
    const altered = [head, Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(payload, 'base64url').toString()), sub: 'admin' })).toString('base64url'), signature].join('.')
    const bad: Array<[string, string, string]> = [
      ['forged (another secret)', await sign({}, { secret: randomBytes(32).toString('hex') }), 'token refused: bad signature'],
      ['altered (sub changed, signature kept)', altered, 'token refused: bad signature'],
      ['expired', await sign({}, { ttl: -10 }), 'token expired'],
      ['alg none', new UnsecuredJWT({}).setSubject('alice').setExpirationTime(now() + 300).encode(), 'token refused: its algorithm is not allowed here']
    ]
    for (const [what, token, error] of bad) {
      for (const [where, answer] of [
        ['WebSocket /stream, subprotocol', await handshake('/stream', subprotocols(token))],
        ['WebSocket /guest, Authorization', await handshake('/guest', bearer(token))],
        ['EventSource /stream, Authorization', await eventStream('/stream?channel=news', bearer(token))],
        ['EventSource /guest, Authorization', await eventStream('/guest', bearer(token))],
        ['POST /stream/ticket', await request('POST', '/stream/ticket', bearer(token))]
      ] as const) {
        t.same([answer.status, parse(answer.body)], [401, { error }], `${what}, ${where}: 401 ${error}`)
      }
    }
    const none = { error: 'a token is required: Authorization: Bearer <jwt>, the subprotocol fanout.token.<jwt>, or ?ticket=' }
    for (const [where, answer] of [['WebSocket', await handshake('/guest')], ['EventSource', await eventStream('/stream?channel=news')]] as const) {
      t.same([answer.status, parse(answer.body)], [401, none], `no token at all, ${where}: 401, a token is required`)
    }

    const admitted = await handshake('/stream', subprotocols(good))
    t.equal(admitted.status, 101, 'a valid token as the subprotocol: admitted through nginx')
    t.equal(admitted.headers['sec-websocket-protocol'], 'fanout.v1', 'fanout.v1 selected, never the token')
    t.equal((await handshake('/guest', bearer(good))).status, 101, 'as Authorization: Bearer: admitted')
    t.equal((await eventStream('/guest', bearer(good))).status, 200, 'an EventSource with Authorization (not a browser): admitted')
  })

  await t.test('EventSource tickets: one use, on any replica; a guessed one refused', async (t) => {
    const issued = await request('POST', '/stream/ticket', bearer(good))
    t.equal(issued.status, 200, 'a valid token gets a ticket')
    t.equal(issued.headers['cache-control'], 'no-store', 'not cached on the way')
    const { ticket } = JSON.parse(issued.body) as { ticket: string }
    const stream = await openSse(t, `http://${host}/stream?channel=news&ticket=${ticket}`)
    t.equal(stream.status, 200, 'redeemed through nginx')
    stream.close()
    for (let i = 1; i <= REPLICAS; i++) {
      // nginx spreads these over the replicas: each refuses what another one redeemed.
      const again = await eventStream(`/stream?channel=news&ticket=${ticket}`)
      t.equal(again.status, 401, `used again (${i}): 401`)
    }
    const guessed = await eventStream(`/stream?channel=news&ticket=${randomBytes(16).toString('base64url')}`)
    t.equal(guessed.status, 401, 'a guessed ticket: 401')
  })

  await t.test('channels outside the token\'s claims: refused per channel (forbidden), the socket kept; 403 at connect', async (t) => {
    const token = await sign({ channels: { subscribe: ['news', 'room:open'], publish: ['room:open'] } }, { sub: 'carol' })
    const client = await open('/stream', token)
    const answer = async (what: string, predicate: (m: Json) => boolean): Promise<Json> => {
      await client.until((c) => c.json().some(predicate), 10_000, what)
      return client.json().find(predicate) as Json
    }
    send(client, { type: 'subscribe', channel: 'news' })
    t.match(await answer('subscribed news', (m) => m.type === 'subscribed' && m.channel === 'news'), { type: 'subscribed', channel: 'news' }, 'a granted channel: subscribed')
    send(client, { type: 'subscribe', channel: 'room:1' })
    t.match(await answer('an error for room:1', (m) => m.type === 'error' && m.channel === 'room:1'), { code: 'forbidden' }, 'subscribe outside the claims: forbidden')
    send(client, { type: 'publish', channel: 'room:1', event: { type: 'chat', text: 'in' }, ref: 1 })
    t.match(await answer('an answer to ref 1', (m) => m.ref === 1), { type: 'error', code: 'forbidden', channel: 'room:1' }, 'publish outside the claims: forbidden')
    send(client, { type: 'publish', channel: 'room:open', event: { type: 'chat', text: 'ok' }, ref: 2 })
    t.match(await answer('an answer to ref 2', (m) => m.ref === 2), { type: 'published', channel: 'room:open' }, 'publish inside them: published')
    t.equal(client.socket.readyState, WebSocket.OPEN, 'the socket stays open')
    client.socket.close()

    const atConnect = await handshake('/stream?channel=room:1', subprotocols(token))
    t.equal(atConnect.status, 403, 'WebSocket ?channel=room:1: 403')
    const ticket = JSON.parse((await request('POST', '/stream/ticket', bearer(token))).body).ticket as string
    t.equal((await eventStream(`/stream?channel=room:1&ticket=${ticket}`)).status, 403, 'EventSource ?channel=room:1 with its ticket: 403')
  })

  await t.test('a token that expires mid-connection closes it with 4001', async (t) => {
    const client = await open('/guest', await sign({}, { ttl: 3 }))
    await client.until((c) => c.socket.readyState === WebSocket.CLOSED, 20_000, 'the close at exp')
    t.same(await client.closed, { code: 4001, reason: 'token expired' }, 'closed with 4001 through nginx')
  })

  await t.test('Origin with its scheme: an https page on this plain-http edge is refused, X-Forwarded-Proto from the client notwithstanding', async (t) => {
    const tls = `https://${host}`
    for (const [what, headers] of [
      ['https Origin', { origin: tls }],
      ['https Origin, the client claiming X-Forwarded-Proto: https', { origin: tls, 'x-forwarded-proto': 'https' }]
    ] as const) {
      const ws = await handshake('/guest', { ...bearer(good), ...headers })
      t.same([ws.status, parse(ws.body)], [403, { error: 'origin not allowed', origin: tls }], `${what}: WebSocket 403`)
      const es = await eventStream('/guest', { ...bearer(good), ...headers })
      t.equal(es.status, 403, `${what}: EventSource 403`)
      t.equal(es.headers['access-control-allow-origin'], undefined, `${what}: not echoed`)
    }
    t.equal((await handshake('/guest', { ...bearer(good), origin: `http://${host}` })).status, 101, 'the page\'s own origin, http: admitted')
  })

  await t.test('DNS rebinding: Host evil.example is refused on the streams and the demo page', async (t) => {
    const evil = `evil.example:${lbPort}`
    const rebinding = { host: evil, origin: `http://${evil}` }
    const refused = { error: 'host not allowed', host: evil }
    const ws = await handshake('/guest', { ...bearer(good), ...rebinding })
    t.same([ws.status, parse(ws.body)], [403, refused], 'WebSocket: 403 host not allowed')
    const es = await eventStream('/stream?channel=news', { ...bearer(good), ...rebinding })
    t.same([es.status, parse(es.body)], [403, refused], 'EventSource: 403')
    const page = await request('GET', '/', rebinding)
    t.same([page.status, parse(page.body)], [403, refused], 'the demo page: 403')
    t.equal((await request('GET', '/')).status, 200, 'the demo page by an allowed name: 200')
  })

  await t.test('/metrics: not through nginx, token or not; on a replica inside the network, only with the token', async (t) => {
    for (const path of ['/metrics', '/metrics?format=text', '//metrics', '/%6detrics', '/./metrics', '/x/../metrics', '/metrics;x', '/metrics/', '/METRICS']) {
      t.equal((await request('GET', path, bearer(METRICS_TOKEN))).status, 404, `${path} through nginx, with the token: 404`)
    }
    for (const id of apps) t.equal((await sh('docker', ['port', id])).stdout.trim(), '', 'the app container publishes no port')
    const scrape = 'http://app:8080/metrics'
    t.equal((await getFrom(worker, scrape)).status, 401, 'inside the network, no token: 401')
    t.equal((await getFrom(worker, scrape, bearer(randomBytes(24).toString('hex')))).status, 401, 'a wrong token: 401')
    const scraped = await getFrom(worker, scrape, bearer(METRICS_TOKEN))
    t.equal(scraped.status, 200, 'the token: 200')
    t.match(scraped.body, /^fanout_connections(\{[^}]*\})? \d+$/m, 'Prometheus text')
  })

  await t.test('X-Forwarded-For spoofed by the client: one address still gets its share per replica, no more', async (t) => {
    // Whatever the tests before left (a failed one's too) is closed first: every replica at 0.
    for (const client of clients) client.socket.terminate()
    await waitFor(async () => (await connectionsOn(apps)).every((n) => n === 0), 30_000, 'no connections left')
    const statuses: number[] = []
    const bodies: unknown[] = []
    for (let i = 1; i <= 2 * REPLICAS * PER_ADDRESS; i++) {
      // A fresh made-up address each time, in every header a proxy might read.
      const spoof = `203.0.113.${i}`
      const headers = { 'x-forwarded-for': spoof, 'x-real-ip': spoof, forwarded: `for=${spoof}` }
      const client = new TestClient(new WebSocket(`ws://${host}/guest`, ['fanout.v1', `fanout.token.${good}`], { headers }))
      clients.push(client)
      client.opened.catch(() => {}) // a refusal: its status is read below
      statuses.push(await new Promise<number>((resolve) => {
        client.socket.once('open', () => resolve(101))
        client.socket.once('unexpected-response', (_req, res) => {
          let body = ''
          res.on('data', (d: Buffer) => { body += d })
          res.on('end', () => { bodies.push(parse(body)); resolve(res.statusCode ?? 0) })
        })
      }))
    }
    const admitted = REPLICAS * PER_ADDRESS
    t.same(statuses, [...Array(admitted).fill(101), ...Array(admitted).fill(429)], `${admitted} admitted (${PER_ADDRESS} on each of ${REPLICAS} replicas), then 429 for every made-up address`)
    t.same(bodies[0], { error: 'too many connections from this address', code: 'address_limit', limit: PER_ADDRESS }, 'address_limit')
    t.same(await connectionsOn(apps), Array(REPLICAS).fill(PER_ADDRESS), 'each replica holds its cap of this address, no more')
    t.equal((await eventStream('/guest', { ...bearer(good), 'x-forwarded-for': '198.51.100.1' })).status, 429, 'an EventSource too: 429')
    // Another client address (the worker's container, through nginx) is its own: nginx passes on
    // the real address, and the replicas count by it, not by nginx's own.
    const other = await getFrom(worker, 'http://lb:8080/guest', { host: 'localhost', accept: 'text/event-stream', ...bearer(good) })
    t.equal(other.status, 200, 'a client at another address is admitted meanwhile')
    for (const client of clients) client.socket.close()
  })

  await t.test('the demo page\'s security headers arrive through nginx', async (t) => {
    for (const path of ['/', '/client.js']) {
      const { status, headers } = await request('GET', path)
      t.equal(status, 200, `${path} served`)
      const csp = new Map(String(headers['content-security-policy']).split(';').map((d) => d.trim().split(/\s+/)).map(([name, ...values]) => [name, values]))
      t.same(csp.get('default-src'), ["'self'"], `${path}: default-src 'self'`)
      t.same(csp.get('script-src'), ["'self'"], `${path}: no inline script`)
      t.same(csp.get('frame-ancestors'), ["'none'"], `${path}: frame-ancestors 'none'`)
      t.same(csp.get('connect-src'), ["'self'", `ws://${host}`, `wss://${host}`], `${path}: connect-src names the host the browser asked nginx for`)
      t.equal(headers['x-content-type-options'], 'nosniff', `${path}: nosniff`)
      t.equal(headers['x-frame-options'], 'DENY', `${path}: X-Frame-Options DENY`)
    }
  })

  await t.test('a zero-byte upload is refused and makes no file', async (t) => {
    const files = async (): Promise<string[]> => (await sh('docker', ['exec', apps[0], 'ls', '-A', '/app/uploads'])).stdout.split('\n').filter(Boolean)
    const before = await files()
    const client = await open('/guest', good)
    client.socket.send(Buffer.alloc(0))
    await client.until((c) => c.json('error').length + c.json('ack').length > 0, 10_000, 'an answer to the upload')
    t.match(client.json('error'), [{ code: 'empty' }], 'refused: empty')
    t.same(await files(), before, 'no file in the shared upload volume')
    client.socket.send(Buffer.from('one byte or more'))
    await client.until((c) => c.json('ack').length === 1, 10_000, 'the ack')
    t.match(client.json('ack'), [{ bytes: 16 }], 'the same connection uploads a real file')
    client.socket.close()
  })
})
