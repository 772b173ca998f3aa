// deploy/stack.yml on Docker Swarm, on this machine's engine: `docker swarm init`, the real
// Dockerfile built, the stack deployed under a name of its own, many WebSocket clients through
// nginx's host-mode port. While events flow: a rolling update of the app replicas, one replica's
// container killed (Swarm reschedules it), a rolling update of the workers (the lease handed over).
// Every client must end with every event of the stream exactly once and in order, be live again
// after each step, and the update never runs fewer ready replicas than replicas - 1. Through the
// app update a real headless Chromium watches the demo page through nginx, as an operator would:
// afterwards the page must have shown every event of the stream since it connected, once each, in
// order. Then `docker stack rm` and `docker swarm leave --force` leave nothing behind.
//
// Refuses (skips) when the engine is already in a swarm it did not create. SWARM_CLIENTS sets the
// number of raw protocol clients (default 2000), SWARM_LIBRARY_CLIENTS the number of clients of the
// client library (`fastify-fanout/client`, default 100) connected beside them.
import { createHash, randomBytes } from 'node:crypto'
import { chromium } from 'playwright-core'
import t, { type Test } from 'tap'
import { WebSocket } from 'ws'
import { compareIds } from '../../lib/event.js'
import { receivedOf, untold, type Received as Order } from '../support/audit.js'
import { buildImages, holdEngine, sh } from '../support/compose.js'
import { freePort, httpStatus } from '../support/helper.js'
import { LibraryFollower, poll, swarmStack, testStackEnv, swarmUnavailable, type Stack } from '../support/swarm.js'

t.setTimeout(15 * 60_000)

const IMAGE = 'fastify-fanout:swarm-test'
const IMAGE_V2 = 'fastify-fanout:swarm-test-v2'
const RAW_CLIENTS = Number(process.env.SWARM_CLIENTS ?? 2000)
const LIBRARY_CLIENTS = Number(process.env.SWARM_LIBRARY_CLIENTS ?? 100)
const CLIENTS = RAW_CLIENTS + LIBRARY_CLIENTS
const REPLICAS = 3
const STREAM = 'fanout:{guest}:events'
/** The bound on "live again": every client has a new event within this after each step. */
const LIVE_AGAIN_MS = 30_000

/**
 * A `fanout.v1` client of /guest through nginx that records every event and every notice, and
 * comes back with `?since=<last id>&epoch=<its epoch>` whenever it is closed (as the demo page and
 * the client library do), after 250–750 ms so that 2,000 of them do not come back at once.
 */
interface Recorder {
  /** Event ids in the order received, and each one's arrival time (ms). */
  readonly ids: string[]
  readonly at: number[]
  /** Events and loss notices in the order they came (test/support/audit.ts). */
  readonly order: Order
  /** When it was closed (ms). */
  readonly closes: number[]
  /** Connection attempts that closed before they opened. */
  failedOpens: number
  start (): Promise<void>
  stop (): void
  liveAfter (since: number): boolean
}

class Follower implements Recorder {
  failedOpens = 0
  readonly ids: string[] = []
  readonly order: Order = []
  readonly closes: number[] = []
  /** Arrival time of each event (ms), parallel to `ids`. */
  readonly at: number[] = []
  epoch = ''
  #socket?: WebSocket
  #stopped = false

  constructor (readonly url: string) {}

  async start (): Promise<void> {
    const last = this.ids.at(-1)
    const query = last ? `?since=${encodeURIComponent(last)}&epoch=${encodeURIComponent(this.epoch)}` : ''
    const socket = new WebSocket(this.url + query, ['fanout.v1'])
    this.#socket = socket
    socket.on('message', (data: Buffer, binary: boolean) => {
      if (binary) return
      const message = JSON.parse(data.toString()) as Record<string, unknown>
      this.order.push(...receivedOf(message, (m) => m.type === 'guest', this.ids.at(-1) ?? null))
      if (message.type === 'guest') {
        this.ids.push(String(message.id))
        this.at.push(Date.now())
        this.epoch = String(message.epoch)
      }
    })
    // Seen as the close that follows; tallied to say why attempts failed.
    socket.on('error', (err) => { failures.set(err.message, (failures.get(err.message) ?? 0) + 1) })
    socket.once('close', () => {
      this.closes.push(Date.now())
      if (!this.#stopped) setTimeout(() => { this.start().catch(() => {}) }, 250 + Math.random() * 500)
    })
    let opened = false
    await new Promise<void>((resolve) => {
      socket.once('open', () => { opened = true; resolve() })
      socket.once('close', () => { if (!opened) this.failedOpens++; resolve() }) // retried by its close handler
    })
  }

  stop (): void {
    this.#stopped = true
    this.#socket?.terminate()
  }

  /** An event arrived after `since` (ms). */
  liveAfter (since: number): boolean {
    return (this.at.at(-1) ?? 0) > since
  }
}

/** Why raw clients' connection attempts failed, by error message (e.g. `Unexpected server response: 502`). */
const failures = new Map<string, number>()

const strictlyIncreasing = (ids: string[]): boolean => ids.every((id, i) => i === 0 || compareIds(ids[i - 1], id) < 0)

// The engine to this file alone until its swarm is gone: no compose project, no other swarm beside it.
await holdEngine(t, 'exclusive')
const reason = await swarmUnavailable()
if (reason) console.error(`# swarm test SKIPPED: ${reason}`)

t.test('deploy/stack.yml on Docker Swarm: rolling updates lose nothing', { skip: reason ?? false }, async (t) => {
  const lbPort = await freePort()
  const followers: Recorder[] = []
  t.teardown(() => { for (const f of followers) f.stop() })
  const stack: Stack = await swarmStack(t, `fanoutsw${process.pid}`, testStackEnv(IMAGE, lbPort))
  const http = `http://127.0.0.1:${lbPort}`

  await buildImages(t, IMAGE)
  await sh('docker', ['tag', IMAGE, IMAGE_V2])
  const deployMs = await stack.deploy()
  t.comment(`docker stack deploy: ${deployMs} ms`)

  const redisCli = async (...args: string[]): Promise<string> => {
    const [redis] = await stack.containers('redis')
    return (await sh('docker', ['exec', redis, 'redis-cli', ...args], { timeoutMs: 60_000 })).stdout
  }
  /** Every client has an event that arrived after `since`; resolves with how long that took. */
  const allLiveAfter = async (since: number, what: string): Promise<number> => {
    await poll(() => followers.every((f) => f.liveAfter(since)), LIVE_AGAIN_MS, `every client to receive an event after ${what} ` +
      `(${followers.filter((f) => !f.liveAfter(since)).length} of ${followers.length} have not)`, 100)
    return Date.now() - since
  }
  /** The longest time a client waited, from a close after `since` until its next event. */
  const longestOutage = (since: number): { closed: number, longest: number } => {
    let closed = 0
    let longest = 0
    for (const f of followers) {
      const mine = f.closes.filter((c) => c > since)
      if (mine.length > 0) closed++
      for (const c of mine) {
        const next = f.at.find((a) => a > c)
        if (next !== undefined) longest = Math.max(longest, next - c)
      }
    }
    return { closed, longest }
  }
  /** Runs `docker service update` on `service`, sampling its ready tasks each second until it ends. */
  const rollingUpdate = async (service: string, args: string[]): Promise<{ state: string, ms: number, minReady: number, samples: number }> => {
    const started = Date.now()
    await sh('docker', ['service', 'update', '--detach', ...args, `${stack.name}_${service}`])
    let minReady = Infinity
    let samples = 0
    const state = await poll<string | false>(async () => {
      const [ready, s] = await Promise.all([stack.runningTasks(service), stack.updateState(service)])
      minReady = Math.min(minReady, ready)
      samples++
      return s !== 'updating' && s !== '' && s
    }, 180_000, `the update of ${service} to end`, 1000)
    return { state: String(state), ms: Date.now() - started, minReady, samples }
  }

  await t.test('the stack comes up: every app task running and healthy, /readyz 200 through nginx', async (t) => {
    await poll(async () => (await stack.runningTasks('app')) === REPLICAS, 180_000, `${REPLICAS} running app tasks`, 1000)
    await poll(async () => (await stack.runningTasks('worker')) === 2, 120_000, '2 running workers', 1000)
    const ready = await poll(async () => (await httpStatus(`${http}/readyz`)) === 200, 120_000, '/readyz 200 through nginx', 500)
    t.ok(ready, '/readyz answers 200 through nginx\'s host-mode port')
    t.equal(await stack.runningTasks('app'), REPLICAS, `${REPLICAS} app tasks running`)
  })

  // The load balancer serves throughout: the same nginx container from here to the end (a config
  // that cannot find new tasks fails its healthcheck, and Swarm replaces it: a long outage).
  let lb = ''
  const sameLb = async (t: Test, step: string): Promise<void> => {
    const now = await stack.containers('lb')
    t.same(now, [lb], `nginx served through ${step}: the same container, never replaced`)
  }

  await t.test(`${CLIENTS} clients connect through nginx and receive events`, async (t) => {
    ;[lb] = await stack.containers('lb')
    const started = Date.now()
    for (let i = 0; i < CLIENTS; i += 100) {
      const batch = Array.from({ length: Math.min(100, CLIENTS - i) }, (_, j): Recorder => i + j < RAW_CLIENTS
        ? new Follower(`ws://127.0.0.1:${lbPort}/guest`)
        : new LibraryFollower(`ws://127.0.0.1:${lbPort}/guest`))
      followers.push(...batch)
      await Promise.all(batch.map((f) => f.start()))
    }
    const live = await allLiveAfter(started, 'connecting')
    t.comment(`${CLIENTS} clients (${RAW_CLIENTS} raw fanout.v1, ${LIBRARY_CLIENTS} of the client library) connected and each received an event within ${live} ms`)
    t.equal(followers.filter((f) => f.ids.length > 0).length, CLIENTS, `all ${CLIENTS} clients receive events`)
  })

  await t.test('a rolling update of the app (start-first, one at a time) under load, the demo page open', async (t) => {
    // The operator's trial: the demo page open in a browser through the update.
    const browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking']
    })
    t.teardown(() => browser.close())
    const page = await (await browser.newContext()).newPage()
    const errors: Error[] = []
    page.on('pageerror', (err) => errors.push(err))
    // Every row the page adds to its list of guests, in order (it shows only the newest 50), and
    // every state it shows, recorded in this process: a reload cannot wipe the record.
    const rendered: string[] = []
    const states: string[] = []
    await page.exposeFunction('recordRow', (id: string) => rendered.push(id))
    await page.exposeFunction('recordState', (text: string) => states.push(text))
    await page.addInitScript(() => {
      const w = window as unknown as { recordRow (id: string): void, recordState (text: string): void }
      new MutationObserver((records) => {
        for (const r of records) {
          const target = r.target instanceof Element ? r.target : r.target.parentElement
          if (target?.id === 'guests') for (const node of r.addedNodes) if (node instanceof HTMLElement && node.dataset.id) w.recordRow(node.dataset.id)
          if (target?.id === 'state') w.recordState(target.textContent ?? '')
        }
      }).observe(document, { childList: true, characterData: true, subtree: true })
    })
    await page.goto(`${http}/`)
    await poll(() => rendered.length > 0, 30_000, 'the demo page to show a guest', 100)
    const pageFirst = rendered[0]

    const since = Date.now()
    const update = await rollingUpdate('app', ['--image', IMAGE_V2, '--force'])
    const live = await allLiveAfter(Date.now(), 'the app update')
    const { closed, longest } = longestOutage(since)
    const failed = followers.reduce((n, f) => n + f.failedOpens, 0)
    t.comment(`${failed} reconnection attempts so far closed before they opened (raw clients' errors: ${JSON.stringify(Object.fromEntries(failures))}); each was tried again`)
    t.comment(`app update ${update.state} in ${update.ms} ms; ready app tasks never below ${update.minReady} ` +
      `(${update.samples} samples, 1 s apart); ${closed} of ${CLIENTS} clients were closed and came back; the longest ` +
      `a client waited from its close to its next event: ${longest} ms; all live again ${live} ms after the update ended`)
    t.equal(update.state, 'completed', 'the update completed (no rollback)')
    t.ok(update.minReady >= REPLICAS - 1, `ready app tasks never fewer than ${REPLICAS - 1} (saw at least ${update.minReady})`)
    const images = await Promise.all((await stack.containers('app')).map(async (id) =>
      (await sh('docker', ['inspect', '--format', '{{.Config.Image}}', id])).stdout.trim()))
    t.same(images, Array(REPLICAS).fill(IMAGE_V2), `all ${REPLICAS} app containers run ${IMAGE_V2}`)
    t.equal(closed, CLIENTS, 'every client was moved (its replica was replaced), so each resumed at least once')
    await sameLb(t, 'the app update')

    // The page: everything the stream holds from its first guest to the newest, shown once each, in order.
    const newest = /^\d+-\d+$/m.exec(await redisCli('XREVRANGE', STREAM, '+', '-', 'COUNT', '1'))?.[0] as string
    await poll(() => compareIds(rendered.at(-1) ?? '0-0', newest) >= 0, LIVE_AGAIN_MS, `the page to show ${newest}`, 100)
    const shown = rendered.filter((id) => compareIds(id, newest) <= 0)
    const stored = (await redisCli('XRANGE', STREAM, pageFirst, newest)).split('\n').map((l) => l.trim()).filter((l) => /^\d+-\d+$/.test(l))
    const seen = new Set(shown)
    t.comment(`the demo page: ${rendered.length} guests shown, ${stored.length} in the stream from its first (${pageFirst}) to ${newest}; ` +
      `its states: ${[...new Set(states)].join(' | ')}; its note: ${await page.locator('#recovered').textContent()}`)
    t.ok(states.some((s) => s.startsWith('disconnected')), 'the update moved the page: it showed itself disconnected, then reconnected')
    t.same(shown, stored, `the demo page showed every event of the stream since it connected (${stored.length}), once each, in order ` +
      `(${stored.filter((id) => !seen.has(id)).length} missing, ${shown.length - seen.size} twice)`)
    t.match(await page.locator('#recovered').textContent(), /^Reconnected: recovered \d+ missed events?\.$/, 'its note: a resume, nothing lost')
    t.equal(await page.locator('#count').textContent(), String(rendered.length), 'its arrivals count agrees')
    t.same(errors, [], 'no errors in the page')
  })

  await t.test('a replica\'s container killed: Swarm starts another, its clients come back', async (t) => {
    const before = await stack.containers('app')
    // The replica with the most clients (its own /metrics, read inside its container).
    const counts = await Promise.all(before.map(async (id) => {
      const { stdout } = await sh('docker', ['exec', id, 'node', '-e',
        "fetch('http://127.0.0.1:8080/metrics').then((r) => r.text()).then((t) => process.stdout.write(t))"])
      return Number(stdout.split('\n').find((l) => /^fanout_connections(\{[^}]*\})? /.test(l))?.split(' ').pop())
    }))
    const victim = before[counts.indexOf(Math.max(...counts))]
    t.comment(`connections per app replica: ${counts.join(', ')}`)
    const killedAt = Date.now()
    await sh('docker', ['kill', victim])
    const replaced = await poll<string[] | false>(async () => {
      const now = await stack.containers('app')
      // Swarm may still count the killed task as running for a moment: a new container must be up.
      return now.length === REPLICAS && !now.includes(victim) && (await stack.runningTasks('app')) === REPLICAS && now
    }, 120_000, 'Swarm to replace the killed task', 1000)
    const live = await allLiveAfter(Date.now(), 'the replacement')
    const { closed, longest } = longestOutage(killedAt)
    t.comment(`killed ${victim.slice(0, 12)}: ${REPLICAS} tasks running again after ${Date.now() - killedAt - live} ms; ` +
      `${closed} clients were cut and came back, the longest from its close to its next event ${longest} ms`)
    t.equal(replaced ? replaced.length : 0, REPLICAS, `${REPLICAS} app containers again, a new one in place of the killed`)
    t.equal(closed, Math.max(...counts), 'every client of the killed replica was cut (and, above, came back)')
    await sameLb(t, 'the kill')
  })

  await t.test('an upload through nginx lands in the node\'s `uploads` volume, seen by every replica on the node', async (t) => {
    const socket = new WebSocket(`ws://127.0.0.1:${lbPort}/guest`, ['fanout.v1'])
    t.teardown(() => socket.terminate())
    const data = randomBytes(200_000)
    const ack = await new Promise<{ name: string, bytes: number }>((resolve, reject) => {
      socket.on('message', (raw: Buffer, binary: boolean) => {
        const message = binary ? {} : JSON.parse(raw.toString())
        if (message.type === 'ack') resolve(message)
        if (message.type === 'error') reject(new Error(`upload refused: ${raw.toString()}`))
      })
      socket.once('open', () => socket.send(data))
      socket.once('error', reject)
    })
    t.equal(ack.bytes, data.length, 'acked at full size')
    const volume = JSON.parse((await sh('docker', ['volume', 'inspect', `${stack.name}_uploads`])).stdout)[0] as { Driver: string }
    t.equal(volume.Driver, 'local', 'the stack\'s uploads volume is node-local (docs/deployment.md, "Uploads across nodes")')
    const sha = createHash('sha256').update(data).digest('hex')
    for (const id of await stack.containers('app')) {
      const { stdout } = await sh('docker', ['exec', id, 'sha256sum', `/app/uploads/${ack.name}`])
      t.equal(stdout.split(' ')[0], sha, `replica ${id.slice(0, 12)} on this node reads it byte for byte`)
    }
  })

  await t.test('a rolling update of the workers: the lease is handed over, events continue', async (t) => {
    const since = Date.now()
    const update = await rollingUpdate('worker', ['--image', IMAGE_V2, '--force'])
    const live = await allLiveAfter(Date.now(), 'the worker update')
    // The longest pause between two consecutive events at any one client across the update.
    let pause = 0
    for (const f of followers) {
      for (let i = 1; i < f.at.length; i++) if (f.at[i] > since) pause = Math.max(pause, f.at[i] - f.at[i - 1])
    }
    t.comment(`worker update ${update.state} in ${update.ms} ms (workers running never below ${update.minReady}); ` +
      `the longest pause between two events at a client: ${pause} ms; all live ${live} ms after it ended`)
    t.equal(update.state, 'completed', 'the worker update completed')
    await sameLb(t, 'the worker update')
  })

  await t.test('every client holds every event of the stream exactly once and in order', async (t) => {
    // The newest event now; every client must reach it, then the stream is read back.
    const newest = /^\d+-\d+$/m.exec(await redisCli('XREVRANGE', STREAM, '+', '-', 'COUNT', '1'))?.[0] as string
    await poll(() => followers.every((f) => compareIds(f.ids.at(-1) ?? '0-0', newest) >= 0), LIVE_AGAIN_MS, `every client to reach ${newest}`, 100)
    for (const f of followers) f.stop()
    const firsts = followers.map((f) => f.ids[0]).sort(compareIds)
    const stored = (await redisCli('XRANGE', STREAM, firsts[0], newest)).split('\n').map((l) => l.trim()).filter((l) => /^\d+-\d+$/.test(l))
    const bad: string[] = []
    let notices = 0
    let received = 0
    for (const [i, f] of followers.entries()) {
      const mine = f.ids.filter((id) => compareIds(id, newest) <= 0)
      const expected = stored.filter((id) => compareIds(id, f.ids[0]) >= 0)
      received += mine.length
      notices += f.order.filter((r) => 'lostAfter' in r).length
      if (mine.length !== expected.length || mine.some((id, j) => id !== expected[j])) {
        const seen = new Set(mine)
        bad.push(`client ${i}: ${mine.length} events, expected ${expected.length}; ${expected.filter((id) => !seen.has(id)).length} missing ` +
          `(${untold(f.order, expected).length} untold), ${mine.length - seen.size} twice, in order: ${strictlyIncreasing(mine)}`)
      }
    }
    t.comment(`${stored.length} events in the stream from the first client's first event to ${newest}; ${received} deliveries checked; ` +
      `${notices} gap/lost notices`)
    t.same(bad, [], `all ${CLIENTS} clients hold exactly the stream's events from their first, once each, in order`)
  })

  await t.test('`docker stack rm` and `docker swarm leave --force` leave nothing behind', async (t) => {
    const started = Date.now()
    await stack.remove()
    t.comment(`stack rm, volumes, swarm leave: ${Date.now() - started} ms`)
    t.same(await stack.leftovers(), [], 'no container, network or volume of the stack; the engine is out of swarm mode')
  })
})
