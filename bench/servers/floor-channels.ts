// The floor of the channels scenario (bench/channels.ts): what a channel server cannot do without,
// and nothing else (no history, resume, repair, dedupe, caps, metrics, auth). A client's
// `{"type":"subscribe","channel":c}` adds it to the channel; the first local subscriber SUBSCRIBEs
// to the channel's live pub/sub channel, where fastify-fanout's publish script publishes
// `<seq> <event JSON>` (lib/redis/stream.ts), and `subscribed` answers once Redis has it. Each
// message is framed once; the frames of one event-loop turn leave in one write per socket.
// The same Redis, publisher and load clients as fastify-fanout's row: what one write per delivery
// costs, with nothing else done.
import { createServer } from 'node:http'
import type { Socket } from 'node:net'
import { Redis } from 'ioredis'
import * as ws from 'ws'
import { FANOUT_PREFIX } from '../systems.js'

const { Sender } = ws as unknown as {
  Sender: { frame (data: Buffer, options: { fin: boolean, opcode: number, mask: boolean, readOnly: boolean, rsv1: boolean }): Buffer[] }
}

/** A client: its socket and the frames of this turn it is still to be written. */
interface Member { socket: Socket, frames: Buffer[] }

const liveOf = (channel: string): string => `${FANOUT_PREFIX}{${channel}}:live`
const members = new Map<string, Set<Member>>() // by live pub/sub channel
let pending: Member[] = []

function flush (): void {
  const due = pending
  pending = []
  for (const member of due) {
    member.socket.write(member.frames.length === 1 ? member.frames[0] : Buffer.concat(member.frames))
    member.frames = []
  }
}

const sub = new Redis(process.env.REDIS_URL as string)
const cmd = sub.duplicate()
sub.on('messageBuffer', (channel: Buffer, message: Buffer) => {
  const subscribers = members.get(channel.toString('latin1'))
  if (subscribers === undefined) return
  const json = message.subarray(message.indexOf(32) + 1)
  const frame = Buffer.concat(Sender.frame(json, { fin: true, opcode: 1, mask: false, readOnly: true, rsv1: false }))
  if (pending.length === 0) process.nextTick(flush)
  for (const member of subscribers) {
    if (member.frames.push(frame) === 1) pending.push(member)
  }
})

const server = createServer()
const wss = new ws.WebSocketServer({ server, perMessageDeflate: false, handleProtocols: () => 'fanout.v1' })
wss.on('connection', (socket) => {
  const member: Member = { socket: (socket as unknown as { _socket: Socket })._socket, frames: [] }
  const mine: string[] = []
  socket.on('message', (data: Buffer) => {
    const { type, channel } = JSON.parse(data.toString()) as { type: string, channel: string }
    if (type !== 'subscribe') return
    const live = liveOf(channel)
    let subscribers = members.get(live)
    const first = subscribers === undefined
    if (subscribers === undefined) members.set(live, subscribers = new Set())
    subscribers.add(member)
    mine.push(live)
    const answer = (): void => socket.send(JSON.stringify({ type: 'subscribed', channel }))
    if (first) sub.subscribe(live).then(answer, () => socket.close(1013))
    else answer()
  })
  socket.on('close', () => {
    for (const live of mine) {
      const subscribers = members.get(live)
      subscribers?.delete(member)
      if (subscribers?.size === 0) {
        members.delete(live)
        sub.unsubscribe(live).catch(() => {})
      }
    }
  })
})
await cmd.ping() // Redis answers before the port opens
cmd.disconnect()
server.listen(Number(process.env.PORT), '127.0.0.1')
// Exit through process.exit on SIGTERM, so `node --cpu-prof` writes its profile (bench --profile).
process.once('SIGTERM', () => process.exit(0))
