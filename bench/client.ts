// A load-client process: holds many WebSocket connections to the replicas of one system, counts
// the events they receive and records publish-to-receipt latency. The harness forks several.
// For the reconnect storm it also holds resuming clients: each remembers the last event id it got
// and, when its replica dies, reconnects to another with `?since=<that id>`, as the demo page does.
import { WebSocket } from 'ws'
import { histogram, nowMs, record, serve, sleep } from './common.js'
import type { SystemName } from './systems.js'

const TS_FIELD = Buffer.from('"ts":')

const sockets: WebSocket[] = []
let hist = histogram()
let received = 0
let lastAt = 0
let closed = 0

/** Finds `"ts":<number>` in an event's bytes without parsing the whole JSON (keeps clients cheap). */
function onEvent (data: Buffer): void {
  const at = data.indexOf(TS_FIELD)
  if (at < 0) return
  const now = nowMs()
  const ts = parseFloat(data.toString('latin1', at + TS_FIELD.length, at + TS_FIELD.length + 24))
  received++
  lastAt = now
  record(hist, now - ts)
}

/** Opens one connection; resolves once it will receive broadcasts (for Socket.IO: namespace joined). */
function open (system: SystemName, url: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, { perMessageDeflate: false, skipUTF8Validation: true })
    let ready = false
    const fail = (err: Error): void => { if (!ready) reject(err) }
    socket.once('error', fail)
    socket.once('unexpected-response', (_req, res) => fail(new Error(`HTTP ${res.statusCode}`)))
    socket.on('error', () => {})
    socket.once('close', () => {
      if (ready) closed++
      else fail(new Error('closed during the handshake'))
    })
    const joined = (): void => { ready = true; sockets.push(socket); resolve() }
    if (system === 'socketio') {
      // engine.io packets: 0 open, 2 ping → 3 pong, 4 message; socket.io: 40 connect, 42 event.
      socket.on('message', (data: Buffer) => {
        const kind = data[0]
        if (kind === 0x34 && data[1] === 0x32) onEvent(data)
        else if (kind === 0x32) socket.send('3')
        else if (kind === 0x30) socket.send('40')
        else if (kind === 0x34 && data[1] === 0x30 && !ready) joined()
      })
    } else {
      socket.on('message', onEvent)
      socket.once('open', joined)
    }
  })
}

async function connect (system: SystemName, urls: string[], count: number, concurrency: number): Promise<{ connected: number, failed: number, errors: string[] }> {
  let next = 0
  let failed = 0
  const errors = new Set<string>()
  const worker = async (): Promise<void> => {
    while (next < count) {
      const url = urls[next++ % urls.length]
      try {
        await open(system, url)
      } catch (err) {
        failed++
        errors.add((err as Error).message)
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker))
  return { connected: count - failed, failed, errors: [...errors].slice(0, 5) }
}

const ID_FIELD = Buffer.from('"id":"')
const N_FIELD = Buffer.from('"n":')

/** A client of the replica the storm kills. `n` is the publisher's own count, to see gaps and duplicates. */
interface Resuming { socket: WebSocket, lastId: string | undefined, lastN: number, resumed: boolean, liveAt: number }
const resuming: Resuming[] = []
let resumeUrls: string[] = []
let nextResumeUrl = 0
/** Events published at or after this (`ts`, ms) mean their receiver is live again. */
let liveAfter = Infinity
const storm = { gaps: 0, duplicates: 0, retries: 0, errors: new Set<string>() }

function numberAfter (data: Buffer, field: Buffer): number {
  const at = data.indexOf(field)
  return at < 0 ? NaN : parseFloat(data.toString('latin1', at + field.length, at + field.length + 24))
}

function onResumingEvent (client: Resuming, data: Buffer): void {
  onEvent(data)
  const idAt = data.indexOf(ID_FIELD)
  if (idAt >= 0) client.lastId = data.toString('latin1', idAt + ID_FIELD.length, data.indexOf(0x22, idAt + ID_FIELD.length))
  const n = numberAfter(data, N_FIELD)
  if (Number.isFinite(n)) {
    if (client.lastN >= 0 && n <= client.lastN) storm.duplicates++
    else if (client.lastN >= 0 && n > client.lastN + 1) storm.gaps += n - client.lastN - 1
    if (n > client.lastN) client.lastN = n
  }
  if (client.resumed && client.liveAt === 0 && numberAfter(data, TS_FIELD) >= liveAfter) client.liveAt = nowMs()
}

/** Opens (or reopens, resuming) one storm client's connection; retries until it is accepted. */
function openResuming (client: Resuming, url: string): Promise<void> {
  return new Promise((resolve) => {
    const socket = new WebSocket(url, { perMessageDeflate: false, skipUTF8Validation: true })
    let opened = false
    const retry = (why: string): void => {
      if (opened || shuttingDown) return
      opened = true // once
      storm.retries++
      storm.errors.add(why)
      setTimeout(() => { openResuming(client, resumeUrl(client)).then(resolve, resolve) }, 50 + Math.random() * 100)
    }
    socket.on('error', (err) => retry(err.message))
    socket.once('unexpected-response', (_req, res) => retry(`HTTP ${res.statusCode}`))
    socket.once('open', () => {
      opened = true
      client.socket = socket
      resolve()
    })
    socket.on('message', (data: Buffer) => onResumingEvent(client, data))
    socket.once('close', () => {
      if (!opened) return retry('closed during the handshake')
      if (shuttingDown || client.socket !== socket) return
      // Its replica is gone: resume on another one straight away, as a storm does.
      client.resumed = true
      openResuming(client, resumeUrl(client)).catch(() => {})
    })
  })
}

function resumeUrl (client: Resuming): string {
  const url = resumeUrls[nextResumeUrl++ % resumeUrls.length]
  return client.lastId === undefined ? url : `${url}?since=${encodeURIComponent(client.lastId)}`
}

let shuttingDown = false

serve(async (request) => {
  switch (request.op) {
    case 'connect-resuming': {
      resumeUrls = request.resumeUrls as string[]
      const count = request.count as number
      const url = request.url as string
      const batch: Array<Promise<void>> = []
      for (let i = 0; i < count; i++) {
        const client: Resuming = { socket: undefined as unknown as WebSocket, lastId: undefined, lastN: -1, resumed: false, liveAt: 0 }
        resuming.push(client)
        batch.push(openResuming(client, url))
        if (batch.length === 50) await Promise.all(batch.splice(0))
      }
      await Promise.all(batch)
      storm.retries = 0
      storm.errors.clear()
      return { connected: count }
    }
    case 'arm':
      liveAfter = request.after as number
      return {}
    case 'storm-stats': {
      const live = resuming.filter((c) => c.liveAt > 0)
      return {
        clients: resuming.length,
        withId: resuming.filter((c) => c.lastId !== undefined).length,
        live: live.length,
        liveAt: live.map((c) => c.liveAt),
        gaps: storm.gaps,
        duplicates: storm.duplicates,
        retries: storm.retries,
        errors: [...storm.errors].slice(0, 5)
      }
    }
    case 'connect':
      return connect(request.system as SystemName, request.urls as string[], request.count as number, request.concurrency as number)
    case 'reset':
      hist = histogram()
      received = 0
      lastAt = 0
      return {}
    case 'count':
      return { received }
    case 'stats':
      return { received, lastAt, closed, open: sockets.length - closed, hist }
    case 'close':
      shuttingDown = true
      for (const socket of sockets) socket.terminate()
      for (const client of resuming) client.socket?.terminate()
      await sleep(50)
      return {}
    default:
      throw new Error(`unknown op ${request.op}`)
  }
})
process.send?.({ id: 0, ready: true })
