// Issue 22, signed tokens shared through Redis: two app instances on one real redis-server. A token
// revoked on one replica closes its connection on the other (4003) and is refused there; a user
// cut-off likewise; a ticket issued by one replica is redeemed by the other, once.
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { SignJWT } from 'jose'
import t from 'tap'
import { WebSocket } from 'ws'
import { build, connect, startRedis, waitFor, type TestApp, type TestClient } from '../support/helper.js'
import { openSse } from '../support/sse.js'
import { coreOf } from '../../plugins/fanout.js'

type Tap = Parameters<typeof build>[0]
type Json = Record<string, unknown>

const SECRET = 'a-test-secret-of-at-least-32-bytes!!'
const now = (): number => Math.floor(Date.now() / 1000)

async function hs (claims: Json = {}, { sub = 'alice', ttl = 300, iat = now() }: { sub?: string, ttl?: number, iat?: number } = {}): Promise<string> {
  return new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).setSubject(sub).setIssuedAt(iat).setExpirationTime(now() + ttl).sign(new TextEncoder().encode(SECRET))
}

async function replicas (t: Tap): Promise<{ a: TestApp, b: TestApp, cli: (...args: string[]) => Promise<string> }> {
  const redis = await startRedis(t)
  const a = await build(t, { redisUrl: redis.url, jwtSecret: SECRET })
  const b = await build(t, { redisUrl: redis.url, jwtSecret: SECRET })
  await waitFor(() => a.app.fanout.broker.synced && b.app.fanout.broker.synced, 10_000, 'both brokers to reach Redis')
  await waitFor(async () => (await redis.cli('PUBSUB', 'NUMSUB', 'fanout:revocations')).endsWith('2'), 10_000, 'both replicas to hear revocations')
  return { a, b, cli: redis.cli }
}

const streamClient = async (t: Tap, app: TestApp, token: string): Promise<TestClient> =>
  connect(t, `${app.ws}/stream`, { protocols: ['fanout.v1', `fanout.token.${token}`] })

async function status (app: TestApp, token: string): Promise<number> {
  const ws = new WebSocket(`${app.ws}/stream`, ['fanout.v1', `fanout.token.${token}`])
  return new Promise((resolve, reject) => {
    ws.once('open', () => { ws.terminate(); resolve(101) })
    ws.once('unexpected-response', (_req, res) => { res.resume(); resolve(res.statusCode ?? 0) })
    ws.once('error', reject)
  })
}

t.test('a jti revoked on replica A: its connection on replica B closed with 4003, and refused there', async (t) => {
  const { a, b, cli } = await replicas(t)
  const token = await hs({ jti: 'jti-1' })
  const onB = await streamClient(t, b, token)
  const bystander = await streamClient(t, b, await hs({ jti: 'jti-2' }))
  const started = performance.now()
  await a.app.fanout.revoke({ jti: 'jti-1', exp: now() + 300 })
  t.same(await Promise.race([onB.closed, sleep(5000).then(() => 'still open after 5 s')]), { code: 4003, reason: 'token revoked' }, `closed on B (${Math.round(performance.now() - started)} ms after the revoke on A)`)
  t.equal(await status(b, token), 401, 'refused on B at connect')
  t.equal(await status(a, token), 401, 'refused on A at connect')
  t.equal(bystander.socket.readyState, WebSocket.OPEN, 'another token stays connected')
  const ttl = Number(await cli('PTTL', 'fanout:revoked:jti:jti-1'))
  t.ok(ttl > 0 && ttl <= 300_000, 'the revocation key expires with the token')
  t.equal(b.logs.find('connection closed: its token was revoked').length, 1, 'logged on B')
})

t.test('a user cut-off on replica B: tokens of that sub issued before it refused and closed on A', async (t) => {
  const { a, b } = await replicas(t)
  const old = await hs({}, { sub: 'bob', iat: now() - 60 })
  const onA = await streamClient(t, a, old)
  const alice = await streamClient(t, a, await hs({}, { sub: 'alice', iat: now() - 60 }))
  await b.app.fanout.revokeUser('bob', { before: Date.now() - 30_000 })
  t.same(await Promise.race([onA.closed, sleep(5000).then(() => 'still open after 5 s')]), { code: 4003, reason: 'token revoked' }, "bob's connection on A closed")
  t.equal(await status(a, old), 401, "bob's old token refused on A")
  t.equal(await status(a, await hs({}, { sub: 'bob', iat: now() - 10 })), 101, 'a token of bob issued after the cut-off is admitted')
  t.equal(alice.socket.readyState, WebSocket.OPEN, 'alice stays')
  await a.app.fanout.revokeUser('bob', { before: Date.now() - 50_000 })
  t.equal(await status(a, await hs({}, { sub: 'bob', iat: now() - 40 })), 401, 'an earlier cut-off never moves the later one back')
})

t.test('a ticket issued by replica A is redeemed on replica B, once', async (t) => {
  const { a, b, cli } = await replicas(t)
  const answer = await fetch(`${a.url}/stream/ticket`, { method: 'POST', headers: { authorization: `Bearer ${await hs()}` } })
  t.equal(answer.status, 200)
  const { ticket } = await answer.json() as { ticket: string }
  const ttl = Number(await cli('PTTL', `fanout:ticket:${ticket}`))
  t.ok(ttl > 0 && ttl <= 30_000, 'kept in Redis for at most 30 s')
  const es = await openSse(t, `${b.url}/stream?channel=news&ticket=${ticket}`)
  t.equal(es.status, 200, 'redeemed on B')
  t.equal([...coreOf(b.app).hub.clients][0]?.identity.id, 'alice')
  t.equal(await cli('EXISTS', `fanout:ticket:${ticket}`), '0', 'gone from Redis once used')
  const again = await fetch(`${a.url}/stream?channel=news&ticket=${ticket}`, { headers: { accept: 'text/event-stream' } })
  t.equal(again.status, 401, 'a second use, on A: refused')
  await again.body?.cancel()
})

t.test('a notice missed while the subscriber was cut: the live tokens are checked again when it is back', async (t) => {
  const { a, b, cli } = await replicas(t)
  const onB = await streamClient(t, b, await hs({ jti: 'jti-missed' }))
  const ids = (await cli('CLIENT', 'LIST')).split('\n').filter((l) => l.includes('name=fanout-tokens-subscriber')).map((l) => /id=(\d+)/.exec(l)![1])
  t.equal(ids.length, 2, 'one token subscriber per replica')
  // In one transaction: every token subscriber cut, then the revocation written and its notice
  // published, as revoke() does: no subscriber can hear that notice.
  const redis = new Redis(a.app.fanout.options.redisUrl!)
  t.teardown(() => redis.disconnect())
  const multi = redis.multi()
  for (const id of ids) multi.client('KILL', 'ID', id)
  await multi.set('fanout:revoked:jti:jti-missed', '1', 'PX', 300_000).publish('fanout:revocations', JSON.stringify({ jti: 'jti-missed', until: Date.now() + 300_000 })).exec()
  t.same(await Promise.race([onB.closed, sleep(10_000).then(() => 'still open after 10 s')]), { code: 4003, reason: 'token revoked' }, 'closed once B\'s subscriber is back')
})

t.test('Redis unreachable: a token is not admitted unchecked (503), and is again once Redis is back', async (t) => {
  const redis = await startRedis(t, { aof: true })
  const app = await build(t, { redisUrl: redis.url, jwtSecret: SECRET })
  await waitFor(() => app.app.fanout.broker.synced, 10_000, 'the broker to reach Redis')
  const token = await hs()
  t.equal(await status(app, token), 101, 'admitted while Redis answers')
  await redis.stop()
  t.equal(await status(app, token), 503, 'refused with 503 while the revocations cannot be read')
  t.ok(app.logs.find('could not check a token: revocations unavailable').length > 0, 'logged')
  await redis.start()
  t.ok(await waitFor(async () => await status(app, token) === 101, 20_000, 'admitted again'), 'admitted again once Redis is back')
})

t.test('a replica with tokens starts while Redis is down, and admits tokens once it is up', async (t) => {
  const redis = await startRedis(t)
  await redis.stop()
  const app = await build(t, { redisUrl: redis.url, jwtSecret: SECRET })
  t.pass('registered and listening with Redis down')
  await redis.start()
  const token = await hs()
  t.ok(await waitFor(async () => await status(app, token) === 101, 20_000, 'admitted'), 'admitted once Redis is up')
  await waitFor(async () => (await redis.cli('PUBSUB', 'NUMSUB', 'fanout:revocations')).endsWith('1'), 10_000, 'subscribed to revocations')
  const onApp = await streamClient(t, app, await hs({ jti: 'late' }))
  await app.app.fanout.revoke({ jti: 'late', exp: now() + 300 })
  t.same(await Promise.race([onApp.closed, sleep(5000).then(() => 'still open after 5 s')]), { code: 4003, reason: 'token revoked' }, 'revocation notices heard')
})
