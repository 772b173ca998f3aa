// A load-client process: holds many WebSocket connections to the replicas of one system, counts
// the events they receive and records publish-to-receipt latency. The harness forks several.
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

serve(async (request) => {
  switch (request.op) {
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
      for (const socket of sockets) socket.terminate()
      await sleep(50)
      return {}
    default:
      throw new Error(`unknown op ${request.op}`)
  }
})
process.send?.({ id: 0, ready: true })
