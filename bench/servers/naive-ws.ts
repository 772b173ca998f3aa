// What most people write: a ws server and an ioredis subscriber, `ws.send(message)` per client
// (the broadcast example of the ws README), so each client's frame is built anew.
import { createServer } from 'node:http'
import { Redis } from 'ioredis'
import { WebSocket, WebSocketServer } from 'ws'

const server = createServer()
const wss = new WebSocketServer({ server, perMessageDeflate: false })

const sub = new Redis(process.env.REDIS_URL as string)
sub.on('message', (_channel: string, message: string) => {
  for (const client of wss.clients) {
    if (client.readyState === WebSocket.OPEN) client.send(message)
  }
})
await sub.subscribe(process.env.BENCH_CHANNEL as string)
server.listen(Number(process.env.PORT), '127.0.0.1')
// Exit through process.exit on SIGTERM, so `node --cpu-prof` writes its profile (bench --profile).
process.once('SIGTERM', () => process.exit(0))
