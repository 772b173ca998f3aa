// Socket.IO 4 with @socket.io/redis-adapter, as its docs set it up for several replicas; the
// bench publishes to it with @socket.io/redis-emitter. WebSocket transport only (no polling), and
// no compression, the same as the other systems.
import { createServer } from 'node:http'
import { createAdapter } from '@socket.io/redis-adapter'
import { Redis } from 'ioredis'
import { Server } from 'socket.io'

const pub = new Redis(process.env.REDIS_URL as string)
const sub = pub.duplicate()
const server = createServer()
const io = new Server(server, {
  transports: ['websocket'],
  serveClient: false,
  perMessageDeflate: false,
  adapter: createAdapter(pub, sub)
})
io.on('connection', () => {})
server.listen(Number(process.env.PORT), '127.0.0.1')
// Exit through process.exit on SIGTERM, so `node --cpu-prof` writes its profile (bench --profile).
process.once('SIGTERM', () => process.exit(0))
