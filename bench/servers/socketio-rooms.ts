// Socket.IO 4 for the channels scenario (bench/channels.ts): each client joins its rooms with one
// `join` message after connecting and is told `joined` once the adapter has them. With
// BENCH_SOCKETIO_SHARDED=1 the adapter is @socket.io/redis-adapter's createShardedAdapter (Redis 7
// sharded pub/sub, one SSUBSCRIBE per room a replica has members in: "dynamic" mode, its default);
// otherwise createAdapter (every replica PSUBSCRIBEs `socket.io#/#*` and gets every publish).
import { createServer } from 'node:http'
import { createAdapter, createShardedAdapter } from '@socket.io/redis-adapter'
import { Redis } from 'ioredis'
import { Server } from 'socket.io'

const pub = new Redis(process.env.REDIS_URL as string)
const sub = pub.duplicate()
const sharded = process.env.BENCH_SOCKETIO_SHARDED === '1'
const server = createServer()
const io = new Server(server, {
  transports: ['websocket'],
  serveClient: false,
  perMessageDeflate: false,
  adapter: sharded ? createShardedAdapter(pub, sub) : createAdapter(pub, sub)
})
io.on('connection', (socket) => {
  socket.on('join', async (rooms: unknown) => {
    if (!Array.isArray(rooms) || !rooms.every((room) => typeof room === 'string')) return
    await socket.join(rooms as string[])
    socket.emit('joined', rooms.length)
  })
})
server.listen(Number(process.env.PORT), '127.0.0.1')
process.once('SIGTERM', () => process.exit(0))
