// The floor: what fastify-fanout's broadcast does, with nothing else (no cap, no resume, no
// metrics). Each Redis message is framed once; the frames of one event-loop turn are joined once
// and leave in one write per socket, as lib/hub.ts does.
import { createServer } from 'node:http'
import type { Socket } from 'node:net'
import { Redis } from 'ioredis'
import * as ws from 'ws'

// ws's own framing (ws/lib/sender.js); @types/ws does not declare it.
const { Sender } = ws as unknown as {
  Sender: { frame (data: Buffer, options: { fin: boolean, opcode: number, mask: boolean, readOnly: boolean, rsv1: boolean }): Buffer[] }
}

const server = createServer()
const wss = new ws.WebSocketServer({ server, perMessageDeflate: false })

let frames: Buffer[] = []
function flush (): void {
  const bytes = frames.length === 1 ? frames[0] : Buffer.concat(frames)
  frames = []
  for (const client of wss.clients) {
    if (client.readyState === ws.WebSocket.OPEN) (client as unknown as { _socket: Socket })._socket.write(bytes)
  }
}

const sub = new Redis(process.env.REDIS_URL as string)
sub.on('messageBuffer', (_channel: Buffer, message: Buffer) => {
  const frame = Buffer.concat(Sender.frame(message, { fin: true, opcode: 1, mask: false, readOnly: true, rsv1: false }))
  if (frames.push(frame) === 1) process.nextTick(flush)
})
await sub.subscribe(process.env.BENCH_CHANNEL as string)
server.listen(Number(process.env.PORT), '127.0.0.1')
// Exit through process.exit on SIGTERM, so `node --cpu-prof` writes its profile (bench --profile).
process.once('SIGTERM', () => process.exit(0))
