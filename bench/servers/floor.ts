// The floor: the least a ws + ioredis server can do per event. Each Redis message is framed once
// and the same bytes are written to every open socket; nothing else.
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

const sub = new Redis(process.env.REDIS_URL as string)
sub.on('messageBuffer', (_channel: Buffer, message: Buffer) => {
  const frame = Buffer.concat(Sender.frame(message, { fin: true, opcode: 1, mask: false, readOnly: true, rsv1: false }))
  for (const client of wss.clients) {
    if (client.readyState === ws.WebSocket.OPEN) (client as unknown as { _socket: Socket })._socket.write(frame)
  }
})
await sub.subscribe(process.env.BENCH_CHANNEL as string)
server.listen(Number(process.env.PORT), '127.0.0.1')
// Exit through process.exit on SIGTERM, so `node --cpu-prof` writes its profile (bench --profile).
process.once('SIGTERM', () => process.exit(0))
