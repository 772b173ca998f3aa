// The compose topology in real containers: the real Dockerfile built, the real docker-compose.yml
// brought up under a project name of its own, every check made through nginx on 127.0.0.1.
// Needs a Docker engine and docker-compose (v1 with --compatibility, or the v2 plugin); the base
// images come from deploy/standin/build-bases.sh when they cannot be pulled (docs/scaling.md, "Running it").
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { WebSocket } from 'ws'
import { compareIds } from '../../lib/event.js'
import { buildImages, composeProject, sh, unavailable } from '../support/compose.js'
import { freePort, httpStatus, TestClient, waitFor } from '../support/helper.js'

t.setTimeout(25 * 60_000)

const IMAGE = 'fastify-fanout:compose-test'

const reason = await unavailable()
if (reason) console.error(`# compose test SKIPPED: ${reason}`)

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
