// The compose topology in real containers: the real Dockerfile built, the real docker-compose.yml
// brought up under a project name of its own, every check made through nginx on 127.0.0.1.
// Needs a Docker engine and docker-compose (v1 with --compatibility, or the v2 plugin); the base
// images come from deploy/standin/build-bases.sh when they cannot be pulled (docs/scaling.md, "Running it").
//
// Beside it, a second project of the same file (issue 22, its last "done means"): the security
// settings turned on through the environment, tried as an attacker would, through nginx's
// published port only: tokens forged, altered, expired or unsigned; channels beyond a token's
// claims; an https Origin on plain http; a rebinding Host; /metrics; a spoofed X-Forwarded-For
// against the per-address cap; the demo page's headers; an empty upload. Each refusal is the one
// docs/security.md names. The two run side by side, from the one image: their bring-ups and
// health checks overlap instead of following each other.
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { request as httpRequest } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { SignJWT, UnsecuredJWT } from 'jose'
import t from 'tap'
import { WebSocket } from 'ws'
import { compareIds } from '../../lib/event.js'
import { buildImages, composeProject, getFrom, holdEngine, sh, unavailable } from '../support/compose.js'
import { answerOf, freePort, httpStatus, TestClient, waitFor, type Answer } from '../support/helper.js'
import { openSse } from '../support/sse.js'

t.setTimeout(25 * 60_000)

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
if (reason) console.error(`# compose test SKIPPED: ${reason}`)
// Beside other compose projects, never beside a swarm (test/swarm).
else await holdEngine(t, 'shared')

// The plain project and the one with its security settings on, side by side: each its own name,
// port, networks and volumes, both from the one image (whichever builds first, the other finds
// its layers cached).
t.jobs = 2

t.test('the compose topology in containers', { skip: reason ?? false }, async (t) => {
  const lbPort = await freePort()
  const clients: TestClient[] = []
  t.teardown(() => { for (const client of clients) client.socket.terminate() })
  const project = await composeProject(t, 'docker-compose.yml', `fanoutct${process.pid}`, {
    LB_PORT: String(lbPort),
    FANOUT_IMAGE: IMAGE,
    GUEST_MIN_DELAY_MS: '100',
    GUEST_MAX_DELAY_MS: '250'
  })
  const { compose, containers, inspect, health, v1 } = project
  const http = `http://127.0.0.1:${lbPort}`
  const ws = `ws://127.0.0.1:${lbPort}/guest`
  const open = async (query = ''): Promise<TestClient> => {
    const client = new TestClient(new WebSocket(ws + query))
    clients.push(client)
    await client.opened
    return client
  }

  await buildImages(t, IMAGE)
  const up = await compose(['up', '-d', '--no-build'], 240_000)
  t.comment(`${v1 ? 'docker-compose (v1) --compatibility' : 'docker compose (v2)'} up -d: ${up.ms} ms`)

  const healthyApps = (n: number) => project.healthy('app', n)
  /** Open WebSockets per app container, read from each replica's own /metrics inside it. */
  const connectionsPer = async (ids: string[]): Promise<number[]> => Promise.all(ids.map(async (id) => {
    const { stdout } = await sh('docker', ['exec', id, 'node', '-e',
      "fetch('http://127.0.0.1:8080/metrics').then((r) => r.text()).then((t) => process.stdout.write(t))"])
    const line = stdout.split('\n').find((l) => /^fanout_connections(\{[^}]*\})? /.test(l))
    return Number(line?.split(' ').pop())
  }))
  const ids = (client: TestClient): string[] => client.events().map((e) => e.id)
  /**
   * A client resuming after `since` until it has `count` events. A replica whose Redis command
   * connection is not back yet closes it with 1013 (try again later); like the demo page, it
   * comes back through nginx and tries again.
   */
  const resume = async (since: string, count: number, timeoutMs = 30_000): Promise<TestClient> => {
    const deadline = Date.now() + timeoutMs
    for (let attempt = 1; ; attempt++) {
      const client = await open(`?since=${encodeURIComponent(since)}`)
      await client.until((c) => c.events().length >= count || c.socket.readyState === WebSocket.CLOSED,
        Math.max(0, deadline - Date.now()), `${count} events after ${since}`)
      if (client.events().length >= count) return client
      const closed = await client.closed
      if (closed.code !== 1013 || Date.now() > deadline) {
        throw new Error(`resume after ${since} closed with ${closed.code} ${closed.reason} on attempt ${attempt}`)
      }
      t.comment(`resume attempt ${attempt}: 1013 ${closed.reason}; trying again`)
      await sleep(500)
    }
  }
  const increasing = (list: string[]): boolean => list.every((id, i) => i === 0 || compareIds(list[i - 1], id) < 0)

  let apps: string[] = []
  await t.test('/readyz 200 through nginx with three healthy app replicas', async (t) => {
    apps = await healthyApps(3)
    t.equal(apps.length, 3, 'three app containers, all healthy')
    t.equal(await waitFor(async () => (await httpStatus(`${http}/readyz`)) === 200 && 200, 60_000, '/readyz 200 through lb'), 200, '/readyz 200 through nginx')
    const [lb] = await containers('lb')
    t.equal(await waitFor(async () => (await health(lb)) === 'healthy' && 'healthy', 60_000, 'lb healthy'), 'healthy',
      'the lb healthcheck (curl in the nginx image) passes')
    const [redis] = await containers('redis')
    t.equal(await health(redis), 'healthy', 'the redis healthcheck (redis-cli) passes')
    const user = (await inspect(apps[0])).Config.User
    t.equal(user, 'node', 'the app runs as the image\'s node user')
  })

  await t.test('clients on different replicas receive the same events in the same order', async (t) => {
    const group = []
    for (let i = 0; i < 6; i++) group.push(await open())
    const per = await connectionsPer(apps)
    t.same(per.reduce((a, b) => a + b, 0), 6, `nginx placed the 6 clients: ${per.join(', ')} per replica`)
    t.ok(per.every((n) => n >= 1), 'every replica holds at least one of them')
    await Promise.all(group.map((c) => c.until((c) => c.events().length >= 20, 30_000, '20 events')))
    // From the first event every client can have seen (the latest first event), the streams agree.
    const start = group.map((c) => ids(c)[0]).sort(compareIds).at(-1) as string
    const frames = group.map((c) => c.messages.filter((m) => compareIds(JSON.parse(m).id, start) >= 0))
    const n = Math.min(...frames.map((f) => f.length))
    t.ok(n >= 10, `${n} events compared`)
    for (const f of frames.slice(1)) t.same(f.slice(0, n), frames[0].slice(0, n), 'the same frames, in the same order')
    for (const c of group) t.ok(increasing(ids(c)), 'ids increase')
    for (const c of group) c.socket.close()
  })

  await t.test('an upload lands byte for byte in the shared volume, owned by the image\'s user', async (t) => {
    const client = new TestClient(new WebSocket(ws, ['fanout.v1']))
    clients.push(client)
    await client.opened
    const data = randomBytes(300_000)
    client.socket.send(data)
    await client.until((c) => c.json('ack').length === 1, 20_000, 'the ack')
    const ack = client.json('ack')[0] as { name: string, bytes: number }
    t.equal(ack.bytes, data.length, 'acked at full size')
    const uid = (await sh('docker', ['exec', apps[0], 'id', '-u'])).stdout.trim()
    t.equal(uid, '1000', 'the image\'s user is uid 1000')
    for (const id of apps) {
      const file = `/app/uploads/${ack.name}`
      const stat = (await sh('docker', ['exec', id, 'stat', '-c', '%u %s', file])).stdout.trim()
      t.equal(stat, `${uid} ${data.length}`, 'owned by the node user, full size, seen from every replica')
      const copy = await new Promise<Buffer>((resolve, reject) => execFile('docker', ['exec', id, 'cat', file],
        { encoding: 'buffer', maxBuffer: 8 << 20 }, (err, out) => err ? reject(err) : resolve(out)))
      t.ok(copy.equals(data), 'byte for byte')
    }
    client.socket.close()
  })

  await t.test('the worker survives a Redis restart; ids stay monotonic; history survives (AOF)', async (t) => {
    const [worker] = await containers('worker')
    const before = await inspect(worker)
    const listener = await open()
    await listener.until((c) => c.events().length >= 5, 30_000, '5 events before')
    const mark = ids(listener).at(-1) as string
    const [redis] = await containers('redis')
    const aof = (await sh('docker', ['exec', redis, 'redis-cli', 'config', 'get', 'appendonly'])).stdout.split('\n')[1]
    t.equal(aof, 'yes', 'Redis runs with AOF on, in the redis-data volume')
    const restart = await compose(['restart', 'redis'], 60_000)
    t.comment(`docker-compose restart redis: ${restart.ms} ms`)
    const seenAtRestart = listener.events().length
    await listener.until((c) => c.events().length >= seenAtRestart + 10, 60_000, '10 events after the restart')
    t.ok(increasing(ids(listener)), `ids increase across the restart (${ids(listener).length} events)`)
    const after = await inspect(worker)
    t.equal(after.State.Running, true, 'the worker is running')
    t.equal(after.State.StartedAt, before.State.StartedAt, 'the same worker process: not restarted')
    t.equal(after.RestartCount, 0, 'no restart counted')
    // The history from before the restart is still there: a resume from `mark` replays it.
    const expected = ids(listener).filter((id) => compareIds(id, mark) > 0).slice(0, 10)
    const resumed = await resume(mark, expected.length)
    t.same(ids(resumed).slice(0, expected.length), expected, 'a resume from before the restart replays what followed')
    listener.socket.close()
    resumed.socket.close()
  })

  await t.test('kill one app container: its clients resume on the others with nothing lost', async (t) => {
    const group = []
    for (let i = 0; i < 6; i++) group.push(await open())
    const per = await connectionsPer(apps)
    const victim = apps[per.findIndex((n) => n > 0)]
    await Promise.all(group.map((c) => c.until((c) => c.events().length >= 3, 30_000, '3 events')))
    const killedAt = Date.now()
    await sh('docker', ['kill', victim])
    await sleep(2000)
    const closedNow = await Promise.all(group.map((c) => Promise.race([c.closed.then(() => true), sleep(10).then(() => false)])))
    const cut = group.filter((_c, i) => closedNow[i])
    const kept = group.filter((_c, i) => !closedNow[i])
    t.ok(cut.length >= 1 && kept.length >= 1, `${cut.length} clients were on the killed replica, ${kept.length} elsewhere`)
    const control = kept[0]
    const atReconnect = ids(control).at(-1) as string
    // Each cut client comes back through nginx with the last id it had, as the demo page does.
    const back = await Promise.all(cut.map(async (c) => {
      const started = Date.now()
      const client = await open(`?since=${encodeURIComponent(ids(c).at(-1) as string)}`)
      t.comment(`reconnected ${Date.now() - killedAt} ms after the kill; the handshake took ${Date.now() - started} ms`)
      return client
    }))
    const target = ids(control).at(-1) as string
    await Promise.all(back.map((c) => c.until((c) => ids(c).some((id) => compareIds(id, target) >= 0), 30_000, 'caught up')))
    let gap = 0
    cut.forEach((c, i) => {
      const last = ids(c).at(-1) as string
      gap += ids(control).filter((id) => compareIds(id, last) > 0 && compareIds(id, atReconnect) <= 0).length
      const from = [ids(c)[0], ids(control)[0]].sort(compareIds)[1]
      const within = (id: string) => compareIds(id, from) >= 0 && compareIds(id, target) <= 0
      t.same([...ids(c), ...ids(back[i])].filter(within), ids(control).filter(within),
        'before + after the kill = what a client on another replica got')
    })
    t.ok(gap > 0, `${gap} events published while they were cut off came back in the replay`)
    const restarted = await inspect(victim)
    t.comment(`the killed container afterwards: ${restarted.State.Status}, RestartCount ${restarted.RestartCount}`)
    for (const c of [...kept, ...back]) c.socket.close()
  })

  await t.test('`stop app` drains every client with 1012', async (t) => {
    // Three replicas again, whatever the restart policy did with the killed one.
    await compose(['up', '-d', '--no-build'], 240_000)
    apps = await healthyApps(3)
    await compose(['restart', 'lb'], 60_000)
    await waitFor(async () => (await httpStatus(`${http}/readyz`)) === 200, 60_000, '/readyz 200')
    const group = []
    for (let i = 0; i < 6; i++) group.push(await open())
    const stop = await compose(['stop', 'app'], 120_000)
    t.comment(`docker-compose stop app: ${stop.ms} ms`)
    const closes = await Promise.all(group.map((c) => c.closed))
    t.same(closes.map((c) => c.code), group.map(() => 1012), 'every client closed with 1012 (service restart)')
    for (const id of apps) t.equal((await inspect(id)).State.ExitCode, 0, 'the replica exited 0 after draining')
  })

  await t.test('`up --scale app=5`, then `restart lb`: the load balancer routes to all five', async (t) => {
    // `up … app`, not the whole project: v1 checks lb's dependency at once and fails on the
    // replicas' health left `unhealthy` by their drain, instead of waiting for the new checks.
    const scale = await compose(['up', '-d', '--no-build', '--scale', 'app=5', 'app'], 300_000)
    t.comment(`up --scale app=5: ${scale.ms} ms`)
    const five = await healthyApps(5)
    t.equal(five.length, 5)
    await compose(['restart', 'lb'], 60_000)
    await waitFor(async () => (await httpStatus(`${http}/readyz`)) === 200, 60_000, '/readyz 200')
    const group = []
    for (let i = 0; i < 10; i++) group.push(await open())
    const per = await connectionsPer(five)
    t.equal(per.reduce((a, b) => a + b, 0), 10, `10 clients placed: ${per.join(', ')} per replica`)
    t.ok(per.every((n) => n >= 1), 'each of the five replicas holds at least one')
    for (const c of group) c.socket.close()
  })

  await t.test('`down -v` leaves no container, network or volume of the project', async (t) => {
    const down = await compose(['down', '-v', '-t', '20'], 180_000)
    t.comment(`down -v: ${down.ms} ms`)
    t.same(await project.leftovers(), [], `no container, network or volume of ${project.name}, by label or by name`)
  })
})

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
