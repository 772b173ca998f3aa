// Signed tokens where timing decides: a refresh while a subscribe waits for its channel, a
// revocation while a connection is being admitted, and a ticket Redis refuses to store. Each was
// found by reading the change and reproduced against a real redis-server before it was mended.
import { setTimeout as sleep } from 'node:timers/promises'
import { SignJWT } from 'jose'
import t from 'tap'
import { build, connect, httpStatus, startRedis, waitFor } from '../support/helper.js'

const SECRET = 'x'.repeat(40)
const sign = (claims: Record<string, unknown>, jti?: string, exp: number | string = '5m') => {
  const jwt = new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).setSubject('alice').setExpirationTime(exp).setIssuedAt()
  return (jti === undefined ? jwt : jwt.setJti(jti)).sign(Buffer.from(SECRET))
}

t.test('a refresh while a subscribe waits for its channel: the new grants decide, the old no longer admit it', async (t) => {
  const redis = await startRedis(t)
  // The replica's user may not subscribe to room:secret yet: its join waits (as during a failover).
  await redis.cli('ACL', 'SETUSER', 'narrow', 'on', '>narrow-secret', '~*', '+@all', 'resetchannels', '&fanout:{guest}:*')
  const app = await build(t, { redisUrl: `redis://narrow:narrow-secret@127.0.0.1:${redis.port}`, jwtSecret: SECRET })
  const publisher = await build(t, { redisUrl: redis.url })
  await waitFor(async () => await httpStatus(`${app.url}/readyz`) === 200, 30_000, 'ready')
  const client = await connect(t, `${app.ws}/stream`, { protocols: ['fanout.v1', `fanout.token.${await sign({ channels: { subscribe: ['room:*'] } })}`] })
  client.socket.send(JSON.stringify({ type: 'subscribe', channel: 'room:secret' }))
  await waitFor(() => app.logs.lines.some((l) => l.msg === 'subscribing failed; retrying'), 10_000, 'the join to wait')
  client.socket.send(JSON.stringify({ type: 'refresh', token: await sign({ channels: { subscribe: ['news:*'] } }) }))
  await client.until((c) => c.json('refreshed').length > 0, 5000, 'refreshed')
  await redis.cli('ACL', 'SETUSER', 'narrow', '&fanout:{room:secret}:*')
  await client.until((c) => c.json('subscribed').length > 0 || c.json('error').length > 0, 15_000, 'an answer')
  t.same(client.json('error').map(({ code, channel }) => ({ code, channel })), [{ code: 'forbidden', channel: 'room:secret' }], 'refused: forbidden by the refreshed grants')
  await publisher.app.fanout.publish('room:secret', { type: 'chat', text: 'secret' })
  await sleep(300)
  t.equal(client.json('chat').length, 0, 'no event of a channel the refreshed token does not grant')
})

t.test('a revocation while the connection is being admitted: closed once admitted', async (t) => {
  let entered = (): void => {}
  const inHook = new Promise<void>((resolve) => { entered = resolve })
  const app = await build(t, { jwtSecret: SECRET, authorizeChannel: async () => { entered(); await sleep(500); return true } })
  const exp = Math.floor(Date.now() / 1000) + 300
  const opening = connect(t, `${app.ws}/stream?channel=room:1`, { protocols: ['fanout.v1', `fanout.token.${await sign({}, 'j1', exp)}`] })
  await inHook
  await app.app.fanout.revoke({ jti: 'j1', exp })
  const client = await opening
  const { code } = await client.closed
  t.equal(code, 4003, 'closed: token revoked')
})

t.test('a ticket Redis refuses to store: 503, and the token in no log line', async (t) => {
  const redis = await startRedis(t)
  const app = await build(t, { redisUrl: redis.url, jwtSecret: SECRET })
  await waitFor(async () => await httpStatus(`${app.url}/readyz`) === 200, 30_000, 'ready')
  const token = await sign({})
  await redis.cli('CONFIG', 'SET', 'maxmemory', '1')
  await redis.cli('CONFIG', 'SET', 'maxmemory-policy', 'noeviction')
  const res = await fetch(`${app.url}/stream/ticket`, { method: 'POST', headers: { authorization: `Bearer ${token}` } })
  t.equal(res.status, 503, 'try again later')
  t.equal(app.logs.lines.filter((l) => JSON.stringify(l).includes(token)).length, 0, 'the token is never logged')
})
