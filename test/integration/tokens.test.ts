// Issue 22, signed tokens, embedded mode (no Redis): what the built-in `authorize` refuses and why,
// HS/RS confusion, a JWKS served by the test with a key rotation, channel grants from the claims,
// a token expiring mid-connection (4001), an in-band refresh, revocation (4003), the one-time
// ticket of an EventSource, and the client library refreshing by itself.
import { generateKeyPairSync } from 'node:crypto'
import { createServer } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { exportJWK, SignJWT, UnsecuredJWT, type JWK } from 'jose'
import t from 'tap'
import { WebSocket } from 'ws'
import { createClient } from '../../client/index.js'
import type { FanoutOptions } from '../../app.js'
import { build, connect, freePort, waitFor, type TestApp, type TestClient } from '../support/helper.js'
import { openSse } from '../support/sse.js'
import { coreOf } from '../../plugins/fanout.js'

type Tap = Parameters<typeof build>[0]
type Json = Record<string, unknown>

const SECRET = 'a-test-secret-of-at-least-32-bytes!!'
const now = (): number => Math.floor(Date.now() / 1000)

/** An HS256 token for `sub`, valid `ttl` seconds, with these claims. */
async function hs (claims: Json = {}, { sub = 'alice', ttl = 300, secret = SECRET, aud, iss }: { sub?: string, ttl?: number, secret?: string, aud?: string, iss?: string } = {}): Promise<string> {
  const jwt = new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).setSubject(sub).setIssuedAt().setExpirationTime(now() + ttl)
  if (aud !== undefined) jwt.setAudience(aud)
  if (iss !== undefined) jwt.setIssuer(iss)
  return jwt.sign(new TextEncoder().encode(secret))
}

/** A WebSocket handshake: 101, or the refusal's status and body. */
async function handshake (url: string, { token, bearer, protocols = ['fanout.v1'] }: { token?: string, bearer?: string, protocols?: string[] } = {}): Promise<{ status: number, body?: Json }> {
  const ws = new WebSocket(url, token === undefined ? protocols : [...protocols, `fanout.token.${token}`], { headers: bearer === undefined ? {} : { authorization: `Bearer ${bearer}` } })
  return new Promise((resolve, reject) => {
    ws.once('open', () => { ws.terminate(); resolve({ status: 101 }) })
    ws.once('unexpected-response', (_req, res) => {
      let text = ''
      res.on('data', (d: Buffer) => { text += d })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }))
    })
    ws.once('error', reject)
  })
}

async function streamClient (t: Tap, app: TestApp, token: string, query = ''): Promise<TestClient> {
  return connect(t, `${app.ws}/stream${query}`, { protocols: ['fanout.v1', `fanout.token.${token}`] })
}

const send = (client: TestClient, command: Json): void => client.socket.send(JSON.stringify(command))

const tokenApp = (t: Tap, options: FanoutOptions = {}): Promise<TestApp> => build(t, { jwtSecret: SECRET, ...options })

t.test('a valid token is admitted, as a subprotocol or a Bearer header; its sub is the identity', async (t) => {
  const app = await tokenApp(t)
  const client = await streamClient(t, app, await hs())
  t.equal(client.socket.protocol, 'fanout.v1', 'the token subprotocol is never selected')
  t.equal((await handshake(`${app.ws}/stream`, { bearer: await hs({}, { sub: 'bob' }) })).status, 101, 'Authorization: Bearer works too')
  const ids = [...coreOf(app.app).hub.clients].map((c) => c.identity.id)
  t.ok(ids.includes('alice'), 'id from sub')
  const es = await fetch(`${app.url}/stream?channel=news`, { headers: { accept: 'text/event-stream', authorization: `Bearer ${await hs()}` } })
  t.equal(es.status, 200, 'an EventSource with a Bearer header (Node, not a browser) is admitted')
  await es.body?.cancel()
})

t.test('refused with 401 and the reason: none, forged, expired, wrong aud, wrong iss, alg none, no exp', async (t) => {
  const app = await tokenApp(t, { jwtAudience: 'fanout', jwtIssuer: 'https://app.example' })
  const good = { aud: 'fanout', iss: 'https://app.example' }
  const url = `${app.ws}/stream`
  t.same(await handshake(url, { token: await hs({}, good) }), { status: 101 }, 'the right aud and iss: admitted')
  const cases: Array<[string, string | undefined, RegExp]> = [
    ['no token', undefined, /a token is required/],
    ['forged (another secret)', await hs({}, { ...good, secret: 'another-secret-of-at-least-32-bytes!!' }), /bad signature/],
    ['expired', await hs({}, { ...good, ttl: -10 }), /^token expired$/],
    ['wrong aud', await hs({}, { ...good, aud: 'other' }), /wrong audience/],
    ['no aud', await hs({}, { iss: good.iss }), /wrong audience/],
    ['wrong iss', await hs({}, { ...good, iss: 'https://evil.example' }), /wrong issuer/],
    ['alg none', new UnsecuredJWT({ aud: 'fanout', iss: good.iss }).setSubject('alice').setExpirationTime(now() + 300).encode(), /algorithm is not allowed|not a signed JWT/],
    ['no exp', await new SignJWT({ aud: 'fanout', iss: good.iss }).setProtectedHeader({ alg: 'HS256' }).setSubject('alice').sign(new TextEncoder().encode(SECRET)), /exp claim is required/],
    ['no sub', await new SignJWT({ aud: 'fanout', iss: good.iss }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime(now() + 300).sign(new TextEncoder().encode(SECRET)), /sub claim is required/],
    ['not a JWT', 'garbage', /not a signed JWT/]
  ]
  for (const [what, token, reason] of cases) {
    const answer = await handshake(url, token === undefined ? {} : { token })
    t.equal(answer.status, 401, `${what}: 401`)
    t.match(answer.body?.error, reason, `${what}: the reason`)
  }
  const es = await fetch(`${app.url}/stream?channel=news`, { headers: { accept: 'text/event-stream', authorization: `Bearer ${await hs({}, { ...good, ttl: -10 })}` } })
  t.equal(es.status, 401, 'EventSource with an expired token: 401')
  t.same(await es.json(), { error: 'token expired' })
  t.equal(coreOf(app.app).hub.size, 0, 'no refused connection stays')
  const logged = JSON.stringify(app.logs.find('websocket refused by authorize'))
  t.notOk(logged.includes(good.iss) || /eyJ/.test(logged), 'no token in the log lines')
})

t.test('HS/RS confusion: the public key as an HMAC secret is refused, and an HS server refuses RS256', async (t) => {
  const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const pem = publicKey.export({ type: 'spki', format: 'pem' }).toString()
  const rsApp = await build(t, { jwtPublicKey: pem })
  const rs256 = await new SignJWT({}).setProtectedHeader({ alg: 'RS256' }).setSubject('alice').setExpirationTime(now() + 300).sign(privateKey)
  t.equal((await handshake(`${rsApp.ws}/stream`, { token: rs256 })).status, 101, 'RS256 signed by the private key: admitted')
  const confused = await hs({}, { secret: pem })
  const answer = await handshake(`${rsApp.ws}/stream`, { token: confused })
  t.equal(answer.status, 401, 'HS256 with the public PEM as its secret: 401')
  t.match(answer.body?.error, /algorithm is not allowed/)
  const hsApp = await tokenApp(t)
  t.equal((await handshake(`${hsApp.ws}/stream`, { token: rs256 })).status, 401, 'an HS256 server refuses an RS256 token')
})

t.test('a JWKS served by the test: keys by kid, and a rotated-in key accepted', async (t) => {
  const k1 = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const k2 = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const jwk = async (key: typeof k1, kid: string): Promise<JWK> => ({ ...await exportJWK(key.publicKey), kid, alg: 'ES256', use: 'sig' })
  let keys = [await jwk(k1, 'k1')]
  let fetches = 0
  const server = createServer((_req, res) => {
    fetches++
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ keys }))
  })
  const port = await freePort()
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve))
  t.teardown(() => server.close())
  const app = await build(t, { jwksUrl: `http://127.0.0.1:${port}/.well-known/jwks.json` })
  const sign = (key: typeof k1, kid: string) => new SignJWT({}).setProtectedHeader({ alg: 'ES256', kid }).setSubject('alice').setExpirationTime(now() + 300).sign(key.privateKey)
  t.equal((await handshake(`${app.ws}/stream`, { token: await sign(k1, 'k1') })).status, 101, 'signed by k1: admitted')
  t.equal((await handshake(`${app.ws}/stream`, { token: await sign(k2, 'k1') })).status, 401, 'another key under kid k1: refused')
  keys = [await jwk(k2, 'k2'), await jwk(k1, 'k1')]
  const before = fetches
  // The set is fetched again for an unknown kid, at most every few seconds: retried until then.
  await waitFor(async () => (await handshake(`${app.ws}/stream`, { token: await sign(k2, 'k2') })).status === 101, 15_000, 'k2 accepted after the rotation')
  t.ok(fetches > before, 'the key set was fetched again')
  keys = [await jwk(k2, 'k2')]
  await sleep(10)
  t.equal((await handshake(`${app.ws}/stream`, { token: await sign(k2, 'k2') })).status, 101, 'k2 still accepted')
})

t.test('channel grants from the claims: patterns allow, the rest is a per-channel forbidden', async (t) => {
  const asked: string[] = []
  const app = await tokenApp(t, {
    namespaces: { room: { clientPublish: true } },
    authorizeChannel: (identity, channel, action) => {
      asked.push(`${identity.id} ${action} ${channel}`)
      return channel !== 'room:9'
    }
  })
  const token = await hs({ channels: { subscribe: ['room:*', 'news'], publish: ['room:1'] } })
  const client = await streamClient(t, app, token)
  for (const channel of ['room:5', 'news', 'newsroom', 'other:1', 'room:9']) send(client, { type: 'subscribe', channel })
  await client.until((c) => c.json('subscribed').length + c.json('error').length === 5)
  t.same(client.json('subscribed').map((m) => m.channel).sort(), ['news', 'room:5'], 'room:* and news granted')
  t.same(client.json('error').map((m) => [m.channel, m.code]).sort(), [['newsroom', 'forbidden'], ['other:1', 'forbidden'], ['room:9', 'forbidden']], 'an exact name is not a prefix; other:1 not granted; room:9 refused by the hook')
  t.ok(asked.includes('alice subscribe room:9'), 'the hook is asked after the claims')
  t.notOk(asked.includes('alice subscribe other:1'), 'the hook is not asked when the claims refuse')
  send(client, { type: 'publish', channel: 'room:1', event: { type: 'chat', text: 'hi' }, ref: 1 })
  send(client, { type: 'publish', channel: 'room:5', event: { type: 'chat', text: 'hi' }, ref: 2 })
  await client.until((c) => c.json('published').length === 1 && c.json('error').length === 4)
  t.match(client.json('published')[0], { channel: 'room:1', ref: 1 }, 'publish on room:1 granted')
  t.match(client.json('error')[3], { channel: 'room:5', code: 'forbidden', ref: 2 }, 'publish on room:5 not granted, though it may subscribe')
  t.equal(client.socket.readyState, WebSocket.OPEN, 'the socket stays open')
  t.equal((await handshake(`${app.ws}/stream?channel=other:1`, { token })).status, 403, '?channel= not granted: 403 at connect')
  t.equal((await handshake(`${app.ws}/stream?channel=room:2`, { token })).status, 101, '?channel= granted: admitted')
  const noClaim = await streamClient(t, app, await hs({}, { sub: 'bob' }))
  send(noClaim, { type: 'subscribe', channel: 'other:1' })
  await noClaim.until((c) => c.json('subscribed').length === 1)
  t.pass('a token without a channels claim: the hooks decide alone')
})

t.test('a token expiring mid-connection is closed with 4001; /guest too; an EventSource ends', async (t) => {
  const app = await tokenApp(t)
  const client = await streamClient(t, app, await hs({}, { ttl: 2 }))
  const guest = await connect(t, `${app.ws}/guest`, { protocols: ['fanout.v1', `fanout.token.${await hs({}, { ttl: 2 })}`] })
  const es = await openSse(t, `${app.url}/stream?channel=news`, { authorization: `Bearer ${await hs({}, { ttl: 2 })}` })
  t.equal(es.status, 200)
  t.same(await client.closed, { code: 4001, reason: 'token expired' }, '/stream: 4001 token expired')
  t.same(await guest.closed, { code: 4001, reason: 'token expired' }, '/guest: 4001 token expired')
  await waitFor(() => coreOf(app.app).hub.size === 0, 10_000, 'the event stream to end')
  t.equal(app.logs.find('connection closed: its token expired').length, 3, 'each logged')
})

t.test('an in-band refresh moves the deadline; a refresh for another sub, or expired, is refused', async (t) => {
  const app = await tokenApp(t)
  const first = await hs({}, { ttl: 2 })
  const client = await streamClient(t, app, first)
  send(client, { type: 'refresh', token: await hs({}, { sub: 'mallory', ttl: 300 }) })
  send(client, { type: 'refresh', token: await hs({}, { ttl: -5 }) })
  send(client, { type: 'refresh', token: 'garbage' })
  await client.until((c) => c.json('error').length === 3)
  t.same(client.json('error').map((m) => m.message).sort(), ['token expired', 'token refused: a refresh must be for the same sub', 'token refused: not a signed JWT'])
  t.ok(client.json('error').every((m) => m.code === 'token_refused'), 'code token_refused')
  const next = await hs({}, { ttl: 300 })
  send(client, { type: 'refresh', token: next })
  await client.until((c) => c.json('refreshed').length === 1)
  const expOf = (token: string): number => (JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString()) as { exp: number }).exp
  t.equal(client.json('refreshed')[0].exp, expOf(next), 'refreshed with the new exp')
  const firstExp = expOf(first)
  await waitFor(() => Date.now() > firstExp * 1000 + 1000, 10_000, 'the first token to be past its exp')
  t.equal(client.socket.readyState, WebSocket.OPEN, 'still open past the first exp')
  send(client, { type: 'subscribe', channel: 'news' })
  await client.until((c) => c.json('subscribed').length === 1)
  const id = await app.app.fanout.publish('news', { type: 'news', text: 'still here' })
  await client.until((c) => c.json('news').some((m) => m.id === id))
  t.pass('events still flow')
  t.notOk(JSON.stringify(app.logs.lines).includes(next), 'the token is not logged')
})

t.test('a refresh with narrower grants leaves the channels it no longer grants; /guest takes refresh, not logged', async (t) => {
  const app = await tokenApp(t)
  const client = await streamClient(t, app, await hs({ channels: { subscribe: ['a', 'b'] } }))
  send(client, { type: 'subscribe', channel: 'a' })
  send(client, { type: 'subscribe', channel: 'b' })
  await client.until((c) => c.json('subscribed').length === 2)
  send(client, { type: 'refresh', token: await hs({ channels: { subscribe: ['a'] } }) })
  await client.until((c) => c.json('refreshed').length === 1)
  t.match(client.json('error'), [{ code: 'forbidden', channel: 'b' }], 'b left, told forbidden')
  t.same([...[...coreOf(app.app).hub.clients][0].channels.keys()], ['a'])
  const guestToken = await hs({}, { ttl: 300 })
  const guest = await connect(t, `${app.ws}/guest`, { protocols: ['fanout.v1', `fanout.token.${await hs({}, { ttl: 2 })}`] })
  guest.socket.send(JSON.stringify({ type: 'refresh', token: guestToken }))
  await guest.until((c) => c.json('refreshed').length === 1)
  t.equal(app.logs.find(`received: ${JSON.stringify({ type: 'refresh', token: guestToken })}`).length, 0, 'the refresh on /guest is not logged as text')
})

t.test('revocation in embedded mode: by jti and by user cut-off; live connections closed with 4003, new ones refused', async (t) => {
  const app = await tokenApp(t)
  const byJti = await hs({ jti: 'token-1' })
  const a = await streamClient(t, app, byJti)
  const other = await streamClient(t, app, await hs({ jti: 'token-2' }))
  await app.app.fanout.revoke({ jti: 'token-1', exp: now() + 300 })
  t.same(await a.closed, { code: 4003, reason: 'token revoked' }, 'the jti holder closed with 4003')
  t.same(await handshake(`${app.ws}/stream`, { token: byJti }), { status: 401, body: { error: 'token revoked' } }, 'the revoked token is refused at connect')
  t.equal(other.socket.readyState, WebSocket.OPEN, 'another token of the same user stays')
  const old = await hs({}, { sub: 'bob' })
  const bob = await streamClient(t, app, old)
  await sleep(1100) // iat has seconds: the cut-off falls after the old token's iat
  await app.app.fanout.revokeUser('bob')
  t.same(await bob.closed, { code: 4003, reason: 'token revoked' }, "bob's connection closed")
  t.equal((await handshake(`${app.ws}/stream`, { token: old })).status, 401, "bob's old token refused")
  await sleep(1100)
  t.equal((await handshake(`${app.ws}/stream`, { token: await hs({}, { sub: 'bob' }) })).status, 101, 'a token issued after the cut-off is admitted')
  await t.rejects(build(t).then(({ app }) => app.fanout.revoke({ jti: 'x', exp: now() })), /not configured/, 'revoke without tokens configured says so')
})

t.test('an EventSource ticket: issued for a valid token, redeemed once, then refused', async (t) => {
  const app = await tokenApp(t)
  const denied = await fetch(`${app.url}/stream/ticket`, { method: 'POST', headers: { authorization: `Bearer ${await hs({}, { ttl: -5 })}` } })
  t.equal(denied.status, 401, 'no ticket for an expired token')
  t.same(await denied.json(), { error: 'token expired' })
  const answer = await fetch(`${app.url}/stream/ticket`, { method: 'POST', headers: { authorization: `Bearer ${await hs({ channels: { subscribe: ['news'] } })}` } })
  t.equal(answer.status, 200)
  t.equal(answer.headers.get('cache-control'), 'no-store')
  const { ticket, expiresInMs } = await answer.json() as { ticket: string, expiresInMs: number }
  t.equal(expiresInMs, 30_000)
  const forbidden = await openSse(t, `${app.url}/stream?channel=other&ticket=${ticket}`)
  t.equal(forbidden.status, 403, 'the ticket carries the grants: other is not granted')
  const answer2 = await fetch(`${app.url}/stream/ticket`, { method: 'POST', headers: { authorization: `Bearer ${await hs({ channels: { subscribe: ['news'] } })}` } })
  const { ticket: ticket2 } = await answer2.json() as { ticket: string }
  const es = await openSse(t, `${app.url}/stream?channel=news&ticket=${ticket2}`)
  t.equal(es.status, 200, 'redeemed')
  t.equal([...coreOf(app.app).hub.clients][0].identity.id, 'alice', 'as the token\'s sub')
  const again = await fetch(`${app.url}/stream?channel=news&ticket=${ticket2}`, { headers: { accept: 'text/event-stream' } })
  t.equal(again.status, 401, 'a second use: 401')
  const body = again.status === 401 ? await again.json() : await again.body?.cancel() // a stream never ends
  t.same(body, { error: 'ticket refused: unknown, already used, or expired' })
  t.equal((await fetch(`${app.url}/stream?channel=news&ticket=${ticket}`, { headers: { accept: 'text/event-stream' } })).status, 401, 'the first ticket was used by its refused attempt')
  // The client library asks next to the stream it opens: /guest has its own ticket route.
  const guest = await fetch(`${app.url}/guest/ticket`, { method: 'POST', headers: { authorization: `Bearer ${await hs({})}` } })
  t.equal(guest.status, 200, 'a ticket from /guest/ticket')
  const { ticket: ticket3 } = await guest.json() as { ticket: string }
  t.equal((await openSse(t, `${app.url}/guest?ticket=${ticket3}`)).status, 200, 'redeemed on /guest')
})

t.test('the client library: token() at connect, a refresh before exp, no reconnect', async (t) => {
  const app = await tokenApp(t, { namespaces: { room: { clientPublish: true } } })
  let asked = 0
  const client = createClient({ url: `${app.ws}/stream`, WebSocket: WebSocket as never, EventSource: false, token: async () => { asked++; return hs({ channels: { subscribe: ['room:*'], publish: ['room:*'] } }, { ttl: 3 }) } })
  t.teardown(() => client.close())
  const states: string[] = []
  client.on((n) => { if (n.type === 'state') states.push(`${n.state}${n.code === undefined ? '' : ` ${n.code}`}`) })
  const got: string[] = []
  client.subscribe('room:1', { onEvent: (e) => { got.push(e.id) } })
  await waitFor(() => client.state === 'open', 10_000, 'the client to open')
  await waitFor(() => asked >= 3, 15_000, 'two refreshes')
  t.same(states, ['open'], 'opened once, no reconnect: the connection outlived its first tokens')
  t.equal(app.logs.find('connection closed: its token expired').length, 0, 'never closed for expiry')
  t.equal(coreOf(app.app).hub.size, 1)
  const id = await client.publish('room:1', { type: 'chat' })
  await waitFor(() => got.includes(id), 10_000, 'the event')
  t.pass('publishes and receives on the refreshed connection')
})

t.test('the token settings are checked at start-up, with messages that name them', async (t) => {
  const { resolveOptions } = await import('../../lib/options.js')
  const { loadEnv } = await import('../../lib/config.js')
  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const pem = publicKey.export({ type: 'spki', format: 'pem' }).toString()
  t.throws(() => resolveOptions({ jwtSecret: SECRET, uploadToken: 'upload-token' }), /uploadToken and signed tokens/)
  t.throws(() => resolveOptions({ jwtSecret: SECRET, authorize: () => ({}) }), /pass authorize or them, not both/)
  t.throws(() => resolveOptions({ jwtSecret: SECRET, jwtPublicKey: pem }), /one of jwtSecret, jwtPublicKey and jwksUrl, not jwtSecret and jwtPublicKey/)
  t.throws(() => resolveOptions({ jwtPublicKey: pem, jwtAlgorithms: ['HS256'] }), /jwtAlgorithms has "HS256", which jwtPublicKey cannot verify/)
  t.throws(() => resolveOptions({ jwtSecret: 'short' }), /jwtSecret must NOT have fewer than 32 characters, got \(value hidden\)/)
  t.throws(() => resolveOptions({ jwtAudience: 'fanout' }), /need a key/)
  t.throws(() => resolveOptions({ jwtSecret: SECRET, jwtAlgorithms: ['none' as never] }), /jwtAlgorithms/)
  t.same(resolveOptions({ jwtPublicKey: pem }).tokens?.algorithms, ['ES256'], 'the algorithm from the key type')
  t.same(resolveOptions({ jwtSecret: SECRET }).tokens?.algorithms, ['HS256'])
  const env = loadEnv({ JWT_PUBLIC_KEY: pem.replace(/\n/g, '\\n'), JWT_ALGORITHMS: 'ES256,ES384', JWT_AUDIENCE: 'fanout' })
  t.same(env.JWT_ALGORITHMS, ['ES256', 'ES384'], 'JWT_ALGORITHMS is a comma list')
  const { optionsFromEnv } = await import('../../lib/options.js')
  t.same(resolveOptions(optionsFromEnv(env)).tokens?.algorithms, ['ES256', 'ES384'], 'a PEM on one line with \\n works from the environment')
})

/** A minimal EventSource over fetch (Node 20 has none): no reconnect of its own, a refusal closes it. */
class FetchEventSource {
  readyState = 0
  onopen: ((event: unknown) => void) | null = null
  onerror: ((event: unknown) => void) | null = null
  onmessage: ((event: { data: string }) => void) | null = null
  readonly #named = new Map<string, Array<(event: { data: string }) => void>>()
  readonly #abort = new AbortController()
  static opened: string[] = []

  constructor (readonly url: string) {
    FetchEventSource.opened.push(url)
    this.#run().catch(() => {})
  }

  addEventListener (type: string, listener: (event: { data: string }) => void): void {
    this.#named.set(type, [...this.#named.get(type) ?? [], listener])
  }

  close (): void {
    this.readyState = 2
    this.#abort.abort()
  }

  async #run (): Promise<void> {
    const res = await fetch(this.url, { headers: { accept: 'text/event-stream' }, signal: this.#abort.signal })
    if (res.status !== 200) {
      await res.body?.cancel()
      this.readyState = 2
      return this.onerror?.({})
    }
    this.readyState = 1
    this.onopen?.({})
    let buffer = ''
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buffer += Buffer.from(chunk).toString()
      let end
      while ((end = buffer.indexOf('\n\n')) !== -1) {
        const block = buffer.slice(0, end)
        buffer = buffer.slice(end + 2)
        const event = /^event: (.*)$/m.exec(block)?.[1]
        const data = [...block.matchAll(/^data: (.*)$/gm)].map((m) => m[1]).join('\n')
        if (data === '') continue
        if (event === undefined) this.onmessage?.({ data })
        else for (const listener of this.#named.get(event) ?? []) listener({ data })
      }
    }
  }
}

t.test('the client library on EventSource: a ticket for each open, no token in the url', async (t) => {
  const app = await tokenApp(t)
  const token = await hs({ channels: { subscribe: ['news'] } })
  const client = createClient({ url: `${app.url}/stream`, WebSocket: WebSocket as never, EventSource: FetchEventSource as never, transport: 'eventsource', token: () => token })
  t.teardown(() => client.close())
  const got: string[] = []
  client.subscribe('news', { onEvent: (e) => { got.push(e.id) } })
  await waitFor(() => coreOf(app.app).hub.size === 1, 10_000, 'the event stream')
  const id = await app.app.fanout.publish('news', { type: 'news' })
  await waitFor(() => got.includes(id), 10_000, 'the event over EventSource')
  t.equal(client.transport, 'eventsource')
  t.match(FetchEventSource.opened.at(-1), /[?&]ticket=[A-Za-z0-9_-]{22}(&|$)/, 'opened with a ticket')
  t.notOk(FetchEventSource.opened.some((url) => url.includes(token)), 'the token is never in a url')
  t.equal([...coreOf(app.app).hub.clients][0].identity.id, 'alice', 'as the token\'s sub')
})
