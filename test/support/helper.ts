// Shared test helpers: the app built the one way tests build it, a private redis-server, spawned
// processes, WebSocket clients that record what they get. Everything registers its own teardown.
import { spawnSync, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http'
import { connect as netConnect, createServer, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { finished } from 'node:stream/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import Fastify, { type FastifyInstance } from 'fastify'
import { WebSocket } from 'ws'
import fanout, { type FanoutOptions } from '../../app.js'
import { DEMO_STANDALONE } from '../../demo/options.js'
import fanoutDemo, { type DemoOptions } from '../../demo/plugin.js'
import { STANDALONE } from '../../lib/options.js'
import { killOwned, ownPath, spawnOwned } from './children.js'
import { freePort } from './free-port.js'

export { freePort }

// Under a runner that is itself killed, this test must not run on as an orphan: the processes it
// started die with it (test/support/children.ts). Node cannot ask for a parent-death signal, so it polls.
const parent = process.ppid
setInterval(() => { if (process.ppid !== parent) process.kill(process.pid, 'SIGKILL') }, 500).unref()

type Tap = {
  teardown (fn: () => unknown): void
}

export const ROOT = fileURLToPath(new URL('../..', import.meta.url))

/** A temp directory removed at teardown, or by the watchdog should this process be killed. */
export function tempDir (t: Tap, prefix = 'fanout-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  const owned = ownPath('dir', dir)
  t.teardown(() => {
    rmSync(dir, { recursive: true, force: true })
    owned.release()
  })
  return dir
}

/** Log lines a test can read back: `logs.lines` are parsed pino records. */
export class LogCapture extends Writable {
  lines: Array<Record<string, unknown>> = []
  override _write (chunk: Buffer, _enc: string, done: () => void): void {
    for (const line of chunk.toString().split('\n')) if (line) this.lines.push(JSON.parse(line))
    done()
  }

  find (msg: string | RegExp): Array<Record<string, unknown>> {
    return this.lines.filter((l) => typeof l.msg === 'string' && (typeof msg === 'string' ? l.msg === msg : msg.test(l.msg)))
  }
}

export interface TestApp {
  app: FastifyInstance
  port: number
  url: string
  ws: string
  logs: LogCapture
  uploadDir: string
}

/**
 * The plugin and the demo in a fresh Fastify instance, routes as the standalone server has them
 * (the publisher off unless asked for), listening on a free port; closed at teardown.
 */
export async function build (t: Tap, options: FanoutOptions & Omit<DemoOptions, 'prefix'> = {}): Promise<TestApp> {
  const logs = new LogCapture()
  const { publisher = false, askPath = DEMO_STANDALONE.askPath, demoPath = options.guestPath === false ? false : DEMO_STANDALONE.demoPath, ...plugin } = options
  const uploadDir = plugin.uploadDir ?? tempDir(t, 'fanout-uploads-')
  const app = Fastify({ logger: { level: 'info', stream: logs } })
  await app.register(fanout, {
    ...STANDALONE, // the standalone server's routes and uploads, which most tests exercise
    metricsIntervalMs: 0,
    uploadMinFreeBytes: 0,
    drainMs: 0,
    ...plugin,
    uploadDir
  })
  await app.register(fanoutDemo, { publisher, askPath, demoPath, prefix: plugin.prefix })
  t.teardown(() => closeWatched(app))
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  return { app, port, url: `http://127.0.0.1:${port}`, ws: `ws://127.0.0.1:${port}`, logs, uploadDir }
}

/** A WebSocket client that keeps every message and how it closed. */
export class TestClient {
  readonly messages: string[] = []
  readonly binary: Buffer[] = []
  closed: Promise<{ code: number, reason: string }>
  readonly opened: Promise<void>
  #waiters: Array<() => void> = []

  constructor (readonly socket: WebSocket) {
    socket.on('message', (data: Buffer, isBinary: boolean) => {
      if (isBinary) this.binary.push(data)
      else this.messages.push(data.toString())
      for (const wake of this.#waiters.splice(0)) wake()
    })
    this.opened = new Promise((resolve, reject) => {
      socket.once('open', () => resolve())
      socket.once('error', reject)
      socket.once('unexpected-response', (_req, res) => reject(new Error(`unexpected response ${res.statusCode}`)))
    })
    this.closed = new Promise((resolve) => socket.once('close', (code, reason) => {
      resolve({ code, reason: reason.toString() })
      for (const wake of this.#waiters.splice(0)) wake()
    }))
    socket.on('error', () => {}) // surfaced through `opened` and `closed`
  }

  /** Parsed JSON messages of one `type` ('guest' for events). */
  json (type?: string): Array<Record<string, unknown>> {
    const parsed = this.messages.flatMap((m) => { try { return [JSON.parse(m)] } catch { return [] } })
    return type === undefined ? parsed : parsed.filter((m) => m.type === type)
  }

  events (): Array<{ id: string, epoch: string, guest: string, time: string, ts: number, type: string }> {
    return this.json('guest') as never
  }

  /** Everything received that is not an event: other JSON, text that is not JSON, binary frames. */
  notEvents (): unknown[] {
    const notEvent = (m: string): boolean => { try { return JSON.parse(m).type !== 'guest' } catch { return true } }
    return [...this.messages.filter(notEvent), ...this.binary]
  }

  /** Resolves once `predicate` holds, or rejects after `timeoutMs`. */
  async until (predicate: (client: TestClient) => boolean, timeoutMs = 10_000, what = 'condition'): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (!predicate(this)) {
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`timed out waiting for ${what}; have ${this.messages.length} messages`)
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 250))
        this.#waiters.push(() => { clearTimeout(timer); resolve() })
      })
    }
  }
}

export async function connect (t: Tap, url: string, options: { protocols?: string[], headers?: Record<string, string>, open?: boolean } = {}): Promise<TestClient> {
  const client = new TestClient(new WebSocket(url, options.protocols ?? [], { headers: options.headers }))
  t.teardown(() => client.socket.terminate())
  if (options.open !== false) await client.opened
  return client
}

/** Polls `fn` until it returns a truthy value. */
export async function waitFor<T> (fn: () => T | Promise<T>, timeoutMs = 10_000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await fn()
    if (value) return value
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(50)
  }
}

/**
 * Whether `fn` comes to hold within `timeoutMs`: for `t.ok(await holds(…), what)`, an assertion
 * that fails (rather than a wait that throws) when it never does.
 */
export async function holds (fn: () => unknown, timeoutMs = 10_000): Promise<boolean> {
  return waitFor(async () => Boolean(await fn()), timeoutMs).then(() => true, () => false)
}

export interface Proc {
  child: ChildProcess
  output: () => string
  /** Parsed JSON log lines printed so far. */
  logs: () => Array<Record<string, unknown>>
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
  kill (signal?: NodeJS.Signals): Promise<{ code: number | null, signal: NodeJS.Signals | null }>
}

/**
 * A process whose output is kept. At teardown it is killed with everything it started (its
 * process group); should this test process die first, however it dies, they die with it.
 */
export function run (t: Tap, command: string, args: string[], env: Record<string, string | undefined> = {}, cwd = ROOT): Proc {
  const child = spawnOwned(command, args, { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout?.on('data', (d) => { output += d })
  child.stderr?.on('data', (d) => { output += d })
  const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>((resolve) => {
    // The process can be gone while its last lines are still in the pipe: read them first (a
    // worker's final 'published' lines are what a test compares against). At most 2 s, should
    // a grandchild have kept the pipe open.
    child.once('exit', (code, signal) => {
      const drained = Promise.all([child.stdout, child.stderr].map((stream) => stream && finished(stream).catch(() => {})))
      Promise.race([drained, sleep(2000, undefined, { ref: false })]).then(() => resolve({ code, signal }), () => {})
    })
    // A command that cannot start (ENOENT) fails the test that needed it, not the whole file.
    child.once('error', (err) => {
      output += `cannot start ${command}: ${err.message}\n`
      resolve({ code: null, signal: null })
    })
  })
  const proc: Proc = {
    child,
    output: () => output,
    logs: () => output.split('\n').flatMap((l) => { try { return [JSON.parse(l)] } catch { return [] } }),
    exited,
    kill (signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal)
      return exited
    }
  }
  t.teardown(() => {
    // Once the leader has exited spawnOwned has killed its group already, and the id is not ours.
    if (child.exitCode === null && child.signalCode === null) killOwned(child)
    return exited
  })
  return proc
}

/**
 * For `{ skip: missing('cmd') }`: false when every command can be run here; else the reason, which
 * tap reports with the skip and which is said on stderr too, instead of an uncaught ENOENT.
 */
export function missing (...commands: string[]): string | false {
  const absent = commands.filter((command) => spawnSync('sh', ['-c', `command -v ${command}`]).status !== 0)
  if (absent.length === 0) return false
  const reason = `NOT TESTED here: ${absent.join(' and ')} not installed (.ci/run installs it)`
  console.error(reason)
  return reason
}

/** The built server (`dist/server.js`), as `npm start` runs it, on a free port; resolves once it listens. */
export async function startServer (t: Tap, env: Record<string, string | undefined> = {}): Promise<Proc & { port: number, url: string, ws: string }> {
  const port = await freePort()
  const proc = run(t, process.execPath, ['dist/server.js'], {
    HOST: '127.0.0.1',
    UPLOAD_DIR: tempDir(t, 'fanout-uploads-'),
    UPLOAD_MIN_FREE_BYTES: '0',
    METRICS_INTERVAL_MS: '0',
    ...env,
    PORT: String(port)
  })
  // How long start-up takes is not under test: on a machine busy with other test files it can be long.
  await waitFor(() => proc.output().includes('Server listening') || proc.child.exitCode !== null, 120_000, 'server to listen')
  if (proc.child.exitCode !== null) throw new Error(`server exited: ${proc.output()}`)
  return { ...proc, port, url: `http://127.0.0.1:${port}`, ws: `ws://127.0.0.1:${port}` }
}

/** The built worker (`dist/worker.js`). */
export function startWorker (t: Tap, env: Record<string, string | undefined>): Proc {
  return run(t, process.execPath, ['dist/worker.js'], { METRICS_INTERVAL_MS: '0', ...env })
}

export interface TestRedis {
  port: number
  url: string
  dir: string
  proc: Proc
  /** redis-cli against this instance. */
  cli (...args: string[]): Promise<string>
  stop (signal?: NodeJS.Signals): Promise<void>
  start (): Promise<void>
}

/**
 * A private redis-server in its own temp dir, never the machine's 6379, on a port freePort keeps
 * for this test process alone: restarted, it comes back on a port nobody could take meanwhile.
 */
export async function startRedis (t: Tap, options: { aof?: boolean } = {}): Promise<TestRedis> {
  const port = await freePort()
  const dir = tempDir(t, 'fanout-redis-')
  const redis: TestRedis = {
    port,
    url: `redis://127.0.0.1:${port}`,
    dir,
    proc: undefined as unknown as Proc,
    cli: (...args) => new Promise((resolve, reject) => {
      const child = spawnOwned('redis-cli', ['-p', String(port), ...args], { stdio: ['ignore', 'pipe', 'ignore'] })
      let out = ''
      child.stdout?.on('data', (d) => { out += d })
      child.once('error', reject)
      child.once('exit', () => resolve(out.trim()))
    }),
    async stop (signal = 'SIGKILL') {
      await redis.proc.kill(signal)
    },
    async start () {
      redis.proc = run(t, 'redis-server', [
        '--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '',
        '--appendonly', options.aof ? 'yes' : 'no', '--appendfsync', 'always'
      ], {}, dir)
      await waitFor(async () => (await redis.cli('PING')) === 'PONG', 10_000, 'redis-server to answer')
    }
  }
  await redis.start()
  return redis
}

/** One entry of a Redis history stream, as the broker's Lua script wrote it. */
export interface StreamEntry { id: string, seq: number, epoch: string, body: string }

/** Every entry of the history stream under `prefix`, oldest first (an empty list if it is absent). */
export async function streamEntries (url: string, prefix = 'fanout:'): Promise<StreamEntry[]> {
  const { Redis } = await import('ioredis')
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 })
  try {
    await redis.connect()
    const entries = await redis.xrange(`${prefix}{guest}:events`, '-', '+')
    return entries.map(([id, fields]) => {
      const field = (name: string) => fields[fields.indexOf(name) + 1]
      return { id, seq: Number(field('seq')), epoch: field('epoch'), body: field('body') }
    })
  } finally {
    redis.disconnect()
  }
}

/** The status of a GET, or 0 when nothing answers. */
export async function httpStatus (url: string): Promise<number> {
  return fetch(url).then((res) => res.status, () => 0)
}

/** One sample of a Prometheus text page, e.g. `fanout_connections` or `fanout_broker_stat{name="repairs"}`. */
export async function metricValue (baseUrl: string, sample: string): Promise<number | undefined> {
  const text = await (await fetch(`${baseUrl}/metrics`)).text()
  const line = text.split('\n').find((l) => l.startsWith(`${sample} `))
  return line === undefined ? undefined : Number(line.slice(sample.length + 1))
}

export interface RedisProxy {
  url: string
  /** Holds back what Redis sends to the subscriber connections open now; new ones pass. */
  holdSubscribers (): { count: number, release (): void }
}

/**
 * A TCP proxy in front of a Redis port that can hold back what Redis sends to subscriber
 * connections (those that sent SUBSCRIBE), every socket staying open: a lagging, or silently
 * dead, network path, which neither Redis nor its client sees as an error.
 */
export async function redisProxy (t: Tap, redisPort: number): Promise<RedisProxy> {
  type Pair = { client: Socket, upstream: Socket }
  const subscribers = new Set<Pair>()
  const sockets = new Set<Socket>()
  const server = createServer((client) => {
    const pair: Pair = { client, upstream: netConnect(redisPort, '127.0.0.1') }
    for (const socket of [pair.client, pair.upstream]) {
      sockets.add(socket)
      socket.on('error', () => {}).on('close', () => {
        pair.client.destroy()
        pair.upstream.destroy()
        sockets.delete(socket)
        subscribers.delete(pair)
      })
    }
    client.on('data', (data: Buffer) => { if (/subscribe/i.test(data.toString('latin1'))) subscribers.add(pair) })
    client.pipe(pair.upstream)
    pair.upstream.pipe(client)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const socket of sockets) socket.destroy()
    server.close()
  })
  return {
    url: `redis://127.0.0.1:${(server.address() as { port: number }).port}`,
    holdSubscribers () {
      const held = [...subscribers]
      for (const { client, upstream } of held) {
        upstream.unpipe(client)
        upstream.pause()
      }
      return { count: held.length, release: () => { for (const { client, upstream } of held) upstream.pipe(client) } }
    }
  }
}

/** An HTTP answer as a test reads it. */
export interface Answer { status: number, headers: IncomingHttpHeaders, body: string }

/** Reads a response to its end; an admitted event stream (it never ends) only up to its headers. */
export function answerOf (res: IncomingMessage): Promise<Answer> {
  return new Promise((resolve, reject) => {
    if (res.statusCode === 200 && String(res.headers['content-type']).startsWith('text/event-stream')) {
      res.destroy()
      return resolve({ status: 200, headers: res.headers, body: '' })
    }
    let body = ''
    res.setEncoding('utf8')
    res.on('data', (chunk: string) => { body += chunk })
    res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }))
    res.on('error', reject)
  })
}

/**
 * `app.close()`, saying on stderr what is still open if it takes longer than it ever should: a
 * close that hangs otherwise shows only as the file's timeout, minutes later, with no clue.
 */
async function closeWatched (app: FastifyInstance): Promise<void> {
  const watch = setTimeout(() => {
    const handles = (process as unknown as { _getActiveHandles (): object[] })._getActiveHandles()
    process.stderr.write(`# app.close() still running after 20 s; open handles: ${handles.map((h) => {
      const socket = h as { remotePort?: number }
      return socket.remotePort !== undefined ? `${h.constructor.name}(:${socket.remotePort})` : h.constructor.name
    }).join(', ')}\n`)
  }, 20_000)
  watch.unref()
  try {
    await app.close()
  } finally {
    clearTimeout(watch)
  }
}
