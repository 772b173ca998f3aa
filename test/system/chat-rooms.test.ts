// Channels as an app author tries them: a chat with rooms, built on the package from its packed
// tarball in a strict TypeScript app (its own fastify 5), three app replicas on a real Redis
// Cluster (three primaries, a replica each). Thirty members over the three replicas, each in two or
// three of twenty rooms, post continuously through the app's own HTTP route and through `publish`
// commands on their sockets; mid-conversation the primary owning the busiest room's slot is
// SIGKILLed and its replica promoted, while a third of the members lose their socket and come back
// (to another replica) with since/epoch. At the end every member holds every acknowledged message
// of its rooms exactly once and in order, or was told (a `gap`, or `lost: true`) where it lacks
// one: nothing acknowledged is silently missing.
import { execFile } from 'node:child_process'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { pathToFileURL } from 'node:url'
import { promisify } from 'node:util'
import t from 'tap'
import { WebSocket } from 'ws'
import { compareIds } from '../../lib/event.js'
import { freePort, httpStatus, ROOT, run, tempDir, waitFor, type Proc } from '../support/helper.js'
import { packClean } from '../support/pack.js'
import { startCluster, type HostPort } from '../support/redis-topology.js'

const exec = promisify(execFile)
const devDependencies = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).devDependencies as Record<string, string>

const ROOMS = 20
const MEMBERS = 30

// The app, as its author writes it: the plugin from the tarball, rooms whose members may post over
// their socket, an identity from `?user=`, and the app's own route that posts for a user.
const CHAT_TS = `import Fastify from 'fastify'
import fanout, { refuse, type AuthorizeChannel, type Authorize } from 'fastify-fanout'

interface Post { user: string, text: string }

const identify: Authorize = (request) => {
  const user = new URL(request.url, 'http://chat.invalid').searchParams.get('user')
  return user !== null && /^[a-z0-9-]{1,32}$/.test(user) ? { id: user } : refuse(401, 'say who you are: ?user=<name>')
}
const rooms: AuthorizeChannel = (identity, channel, action) =>
  channel.startsWith('room:') && (action === 'subscribe' || typeof identity.id === 'string')

const app = Fastify({ logger: { level: 'info' }, disableRequestLogging: true })
await app.register(fanout, {
  redisClusterNodes: process.env.REDIS_CLUSTER_NODES,
  namespaces: { room: { historySize: 500, clientPublish: true } },
  authorize: identify,
  authorizeChannel: rooms,
  readyPath: '/readyz',
  drainMs: 0
})

app.post<{ Params: { room: string }, Body: Post }>('/rooms/:room/messages', {
  schema: {
    params: { type: 'object', properties: { room: { type: 'string', pattern: '^[0-9]{1,6}$' } }, required: ['room'] },
    body: {
      type: 'object',
      properties: { user: { type: 'string', minLength: 1 }, text: { type: 'string', minLength: 1 } },
      required: ['user', 'text'],
      additionalProperties: false
    }
  }
}, async (request, reply) => {
  const { user, text } = request.body
  const id: string = await app.fanout.publish(\`room:\${request.params.room}\`, { type: 'chat', user, text })
  return reply.code(202).send({ id })
})

for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => { void app.close() })
await app.listen({ port: Number(process.env.PORT ?? 3000), host: '127.0.0.1' })
`

// The client side of the same app: what a member's page keeps of its rooms, typed with the
// package's message types (an exhaustive switch), and the commands that (re)join them.
const CLIENT_TS = `import type { ClientCommand, FanoutEvent, StreamMessage } from 'fastify-fanout'

export type ChatEvent = FanoutEvent<{ type: 'chat', user: string, text: string }>

/** What a room's log holds, in the order it came: messages, and what the server said was lost. */
export type Entry =
  | { kind: 'message', id: string, epoch: string, user: string, text: string }
  | { kind: 'gap', after: string | null, lost: number | null, reason: 'trimmed' | 'history_reset' }
  | { kind: 'resume', since: string, lost: boolean | undefined, replayed: number | undefined }

function newer (a: string, b: string): boolean {
  const [am, as] = a.split('-').map(BigInt)
  const [bm, bs] = b.split('-').map(BigInt)
  return am > bm || (am === bm && as > bs)
}

export class ChatRooms {
  readonly log = new Map<string, Entry[]>()
  /** Each room's place: the newest message held, or where the subscription started. */
  readonly place = new Map<string, { id: string, epoch: string | null }>()
  /** Rooms subscribed on the current connection. */
  readonly joined = new Set<string>()
  /** Publish acknowledgements: ref → id. */
  readonly published = new Map<string | number, string>()
  readonly refusals: string[] = []
  readonly #resuming = new Map<string, Extract<Entry, { kind: 'resume' }>>()

  constructor (readonly rooms: readonly string[]) {
    for (const room of rooms) this.log.set(room, [])
  }

  /** A new connection: every room again, from its place once it has one. */
  subscribeCommands (): ClientCommand[] {
    this.joined.clear()
    return this.rooms.map((channel): ClientCommand => {
      const place = this.place.get(channel)
      if (place === undefined) return { type: 'subscribe', channel }
      const resume: Extract<Entry, { kind: 'resume' }> = { kind: 'resume', since: place.id, lost: undefined, replayed: undefined }
      this.#resuming.set(channel, resume)
      this.log.get(channel)?.push(resume)
      return place.epoch === null ? { type: 'subscribe', channel, since: place.id } : { type: 'subscribe', channel, since: place.id, epoch: place.epoch }
    })
  }

  post (room: string, user: string, text: string, ref: number): ClientCommand {
    return { type: 'publish', channel: room, event: { type: 'chat', user, text }, ref }
  }

  receive (data: string): void {
    const message: StreamMessage<ChatEvent> = JSON.parse(data)
    switch (message.type) {
      case 'chat': {
        const { id, epoch, user, text, channel } = message
        this.log.get(channel)?.push({ kind: 'message', id, epoch, user, text })
        const place = this.place.get(channel)
        if (place === undefined || newer(id, place.id)) this.place.set(channel, { id, epoch })
        break
      }
      case 'gap':
        this.log.get(message.channel)?.push({ kind: 'gap', after: message.after, lost: message.lost, reason: message.reason })
        break
      case 'subscribed': {
        const { channel, position, epoch, lost, replayed } = message
        this.joined.add(channel)
        const resume = this.#resuming.get(channel)
        this.#resuming.delete(channel)
        if (resume !== undefined) {
          resume.lost = lost
          resume.replayed = replayed
        }
        const place = this.place.get(channel)
        if (place === undefined || newer(position, place.id)) this.place.set(channel, { id: position, epoch })
        break
      }
      case 'published':
        if (message.ref !== undefined) this.published.set(message.ref, message.id)
        break
      case 'unsubscribed':
        this.joined.delete(message.channel)
        break
      case 'error':
        this.refusals.push(\`\${message.code}: \${message.message}\`)
        break
      case 'ack':
      case 'refreshed': // signed tokens only
        break
      default: {
        const unhandled: never = message
        throw new Error(\`unhandled message \${JSON.stringify(unhandled)}\`)
      }
    }
  }
}
`

/** The compiled client module, as the test uses it (its types are the app's; this is their shape). */
type Entry =
  | { kind: 'message', id: string, epoch: string, user: string, text: string }
  | { kind: 'gap', after: string | null, lost: number | null, reason: string }
  | { kind: 'resume', since: string, lost: boolean | undefined, replayed: number | undefined }
interface ChatRooms {
  readonly log: Map<string, Entry[]>
  readonly joined: Set<string>
  readonly published: Map<string | number, string>
  readonly refusals: string[]
  subscribeCommands (): object[]
  post (room: string, user: string, text: string, ref: number): object
  receive (data: string): void
}
type ChatRoomsClass = new (rooms: readonly string[]) => ChatRooms

const hostPorts = (nodes: HostPort[]) => nodes.map((n) => `${n.host}:${n.port}`).join(',')

/** One acknowledged message: its room and id, its text, and which way it was posted. */
interface Acked { room: string, id: string, text: string, via: 'http' | 'ws', at: number }
/** Ids order events within a channel: two rooms may well give the same id to two messages. */
const ackKey = (room: string, id: string): string => `${room} ${id}`

t.test('a chat with rooms from the packed tarball: three replicas on a Cluster, a slot owner killed mid-conversation, nothing acknowledged silently lost', { timeout: 300_000 }, async (t) => {
  const dir = tempDir(t, 'fanout-chat-')
  const { filename, npm } = await packClean(dir)

  const app = join(dir, 'chat')
  mkdirSync(app)
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'chat', private: true, type: 'module' }))
  writeFileSync(join(app, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, skipLibCheck: false, outDir: 'dist', types: ['node'] },
    include: ['chat.ts', 'client.ts']
  }))
  writeFileSync(join(app, 'chat.ts'), CHAT_TS)
  writeFileSync(join(app, 'client.ts'), CLIENT_TS)
  for (const [name, source] of [['chat.ts', CHAT_TS], ['client.ts', CLIENT_TS]]) t.notMatch(source, /\bany\b/, `${name} says \`any\` nowhere`)
  await npm(['install', join(dir, filename), 'fastify@5', `typescript@${devDependencies.typescript}`, `@types/node@${devDependencies['@types/node']}`], app)
  const tsc = await exec(join(app, 'node_modules/.bin/tsc'), ['-p', 'tsconfig.json'], { cwd: app }).then(() => '', (err: { stdout: string }) => err.stdout)
  t.equal(tsc, '', 'tsc --strict compiles the chat (server and client) against the package\'s types')
  if (tsc !== '') return
  const { ChatRooms } = await import(pathToFileURL(join(app, 'dist/client.js')).href) as { ChatRooms: ChatRoomsClass }

  // The Cluster, and which primary serves which room.
  const cluster = await startCluster(t, { primaries: 3, replicasPerPrimary: 1, nodeTimeoutMs: 1000 })
  const rooms = Array.from({ length: ROOMS }, (_, n) => `room:${n}`)
  const slotOf = new Map<string, number>()
  const ownerOf = new Map<string, number>()
  for (const room of rooms) {
    const slot = await cluster.slotOf(`{${room}}`)
    t.equal(await cluster.slotOf(`fanout:{${room}}:events`), slot, `${room}: its keys hash to {${room}}'s slot`)
    slotOf.set(room, slot)
    ownerOf.set(room, (await cluster.ownerOfSlot(slot)).port)
  }
  const perPrimary = new Map<number, string[]>()
  for (const [room, port] of ownerOf) perPrimary.set(port, [...perPrimary.get(port) ?? [], room])
  t.equal(perPrimary.size, 3, `every primary serves some rooms: ${[...perPrimary].map(([port, r]) => `${port}: ${r.length}`).join(', ')}`)

  // Three replicas of the chat.
  const env = { REDIS_CLUSTER_NODES: hostPorts(cluster.nodes.slice(0, 3)) }
  const replicas: Array<{ proc: Proc, port: number }> = []
  for (let i = 0; i < 3; i++) {
    const port = await freePort()
    const proc = run(t, process.execPath, ['dist/chat.js'], { ...env, PORT: String(port) }, app)
    replicas.push({ proc, port })
  }
  for (const { proc, port } of replicas) {
    await waitFor(() => proc.output().includes('Server listening') || proc.child.exitCode !== null, 120_000, 'the chat to listen')
    if (proc.child.exitCode !== null) throw new Error(`the chat exited: ${proc.output()}`)
    await waitFor(async () => await httpStatus(`http://127.0.0.1:${port}/readyz`) === 200, 60_000, 'a ready replica').catch((err: Error) => {
      t.comment(proc.output().slice(-2000))
      throw err
    })
  }
  t.equal((await fetch(`http://127.0.0.1:${replicas[0].port}/stream`, { headers: { accept: 'text/event-stream' } })).status, 401, 'no ?user: refused by authorize')

  // The members: each in two or three rooms (a third of them in room:0 too), spread over the replicas.
  let stopped = false
  const startedAt = Date.now()
  const acked = new Map<string, Acked>() // ackKey(room, id) → what was acknowledged with it
  const ackedIn = (room: string): Array<[string, Acked]> => [...acked.values()].filter((a) => a.room === room).map((a) => [a.id, a])
  let attempts = 0
  let unacked = 0
  let ref = 0
  const refs = new Map<number, { room: string, text: string }>()
  const reconnects: string[] = []

  interface Member { user: string, rooms: string[], chat: ChatRooms, at: number, socket: WebSocket | undefined, connections: number, trail: string[] }
  const members: Member[] = Array.from({ length: MEMBERS }, (_, i) => {
    const mine = new Set([`room:${i % ROOMS}`, `room:${(i * 7 + 3) % ROOMS}`])
    if (i % 3 === 0) mine.add('room:0')
    const list = [...mine]
    return { user: `member-${i}`, rooms: list, chat: new ChatRooms(list), at: i % 3, socket: undefined, connections: 0, trail: [] }
  })
  t.ok(members.every((m) => m.rooms.length >= 2 && m.rooms.length <= 3), 'every member is in two or three rooms')
  t.equal(new Set(members.flatMap((m) => m.rooms)).size, ROOMS, `every one of the ${ROOMS} rooms has members`)

  /** Connects a member to its replica and (re)subscribes its rooms; a lost socket comes back, on the next replica. */
  const open = (member: Member): void => {
    const socket = new WebSocket(`ws://127.0.0.1:${replicas[member.at].port}/stream?user=${member.user}`, ['fanout.v1'])
    member.socket = socket
    member.connections++
    member.trail.push(`open ${replicas[member.at].port} at ${Date.now() - startedAt}`)
    socket.on('open', () => { for (const command of member.chat.subscribeCommands()) socket.send(JSON.stringify(command)) })
    socket.on('message', (data: Buffer) => {
      member.trail.push(`${Date.now() - startedAt} ${data.toString().slice(0, 160)}`)
      member.chat.receive(data.toString())
    })
    socket.on('error', () => {}) // the close follows
    socket.on('close', (code) => {
      if (member.socket !== socket) return
      member.trail.push(`close ${code} at ${Date.now() - startedAt}`)
      member.socket = undefined
      member.chat.joined.clear()
      if (stopped) return
      reconnects.push(`${member.user} (${code})`)
      member.at = (member.at + 1) % replicas.length
      setTimeout(() => { if (!stopped) open(member) }, 200)
    })
  }
  t.teardown(() => {
    stopped = true
    for (const member of members) member.socket?.terminate()
  })
  for (const member of members) open(member)
  await waitFor(() => members.every((m) => m.rooms.every((r) => m.chat.joined.has(r))), 60_000, 'every member in its rooms')
  t.same(members.flatMap((m) => m.chat.refusals), [], 'no command refused')
  reconnects.length = 0

  // The conversation: every member posts every 150–450 ms into one of its rooms, by turns over
  // the app's route and over its socket.
  const post = async (member: Member, n: number): Promise<void> => {
    const room = member.rooms[n % member.rooms.length]
    const text = `${member.user} says #${n}`
    attempts++
    if (n % 2 === 0) {
      const replica = replicas[(member.at + n) % replicas.length]
      try {
        const res = await fetch(`http://127.0.0.1:${replica.port}/rooms/${room.slice('room:'.length)}/messages`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ user: member.user, text }),
          signal: AbortSignal.timeout(60_000)
        })
        const body = await res.json() as { id?: string }
        if (res.status === 202 && typeof body.id === 'string') acked.set(ackKey(room, body.id), { room, id: body.id, text, via: 'http', at: Date.now() })
        else unacked++
      } catch {
        unacked++
      }
      return
    }
    const socket = member.socket
    if (socket === undefined || socket.readyState !== WebSocket.OPEN || !member.chat.joined.has(room)) {
      unacked++ // not connected now: a member would post once back
      return
    }
    const id = ++ref
    refs.set(id, { room, text })
    socket.send(JSON.stringify(member.chat.post(room, member.user, text, id)))
  }
  let done = false
  const talkingOn = (): boolean => !stopped && !done
  const talking = members.map(async (member) => {
    for (let n = 0; talkingOn(); n++) {
      await post(member, n)
      await sleep(150 + Math.floor(Math.random() * 300))
    }
  })
  const wsAcked = (): number => members.reduce((sum, m) => sum + m.chat.published.size, 0)
  const collectWsAcks = (): void => {
    for (const member of members) {
      for (const [r, id] of member.chat.published) {
        const sent = refs.get(Number(r))
        if (sent !== undefined && !acked.has(ackKey(sent.room, id))) acked.set(ackKey(sent.room, id), { ...sent, id, via: 'ws', at: Date.now() })
      }
    }
  }
  await waitFor(() => { collectWsAcks(); return acked.size >= 300 }, 60_000, '300 acknowledged messages before the kill').catch((err: Error) => {
    t.comment(`posted ${attempts}, ${acked.size} acknowledged, ${unacked} not, ${ref} over sockets; refusals: ${members.flatMap((m) => m.chat.refusals).slice(0, 5).join('; ')}`)
    t.comment(replicas[0].proc.output().slice(-3000))
    throw err
  })

  // The busiest room so far; its slot's primary is SIGKILLed, and a third of the members drop their socket.
  const busiest = rooms.map((room) => ({ room, count: ackedIn(room).length })).sort((a, b) => b.count - a.count)[0].room
  const slot = slotOf.get(busiest) as number
  const owner = await cluster.ownerOfSlot(slot)
  const alsoThere = perPrimary.get(owner.port) ?? []
  const beforeKill = acked.size
  t.comment(`killing ${owner.port}, primary of ${busiest} (slot ${slot}, ${ackedIn(busiest).length} messages) and of ${alsoThere.length} rooms: ${alsoThere.join(' ')}`)
  const killedAt = Date.now()
  await cluster.kill(owner, 'SIGKILL')
  for (const [i, member] of members.entries()) if (i % 3 === 1) member.socket?.terminate()
  const promoted = await cluster.waitForFailover(slot, owner, 60_000)
  t.not(promoted.port, owner.port, `slot ${slot} moved to ${promoted.port} (${Date.now() - killedAt} ms after the kill)`)

  // The conversation goes on, in the busiest room too.
  await waitFor(() => {
    collectWsAcks()
    const after = [...acked.values()].filter((a) => a.at > killedAt)
    return after.length >= 300 && after.filter((a) => a.room === busiest).length >= 20
  }, 90_000, '300 more acknowledged messages after the kill, 20 of them in the busiest room')
  await waitFor(async () => (await Promise.all(replicas.map((r) => httpStatus(`http://127.0.0.1:${r.port}/readyz`)))).every((s) => s === 200), 60_000, 'every replica ready')
  done = true
  await Promise.all(talking)
  // Publish acknowledgements still on their way over the sockets.
  await waitFor(() => { collectWsAcks(); return members.every((m) => m.socket !== undefined && m.rooms.every((r) => m.chat.joined.has(r))) }, 60_000, 'every member connected and in its rooms')

  /** What a member lacks of its room's acknowledged messages, and whether each was told of. */
  const audit = (member: Member, room: string) => {
    const log = member.chat.log.get(room) ?? []
    const messages = log.flatMap((e) => e.kind === 'message' ? [e] : [])
    const held = new Set(messages.map((m) => m.id))
    const missing = ackedIn(room).map(([id]) => id).filter((id) => !held.has(id)).sort(compareIds)
    // A notice covers the ids from where it says the loss began (a gap's `after`, a resume's
    // `since`) to the first message after it.
    const covers: Array<{ from: string | null, to: string | null }> = []
    log.forEach((entry, i) => {
      if (entry.kind === 'message' || (entry.kind === 'resume' && entry.lost !== true)) return
      const next = log.slice(i + 1).find((e): e is Extract<Entry, { kind: 'message' }> => e.kind === 'message')
      covers.push({ from: entry.kind === 'resume' ? entry.since : entry.after, to: next?.id ?? null })
    })
    const told = (id: string) => covers.some(({ from, to }) => (from === null || compareIds(id, from) > 0) && (to === null || compareIds(id, to) < 0))
    const silent = missing.filter((id) => !told(id))
    const ids = messages.map((m) => m.id)
    const duplicates = ids.length - held.size
    const disordered = ids.filter((id, i) => i > 0 && compareIds(id, ids[i - 1]) <= 0).length
    const ackOf = (id: string): Acked | undefined => acked.get(ackKey(room, id))
    const wrong = messages.filter((m) => ackOf(m.id) !== undefined && ackOf(m.id)?.text !== m.text)
    // Which id came with which text, and what its acknowledgement was for (an id given to two posts?).
    const wrongTexts = wrong.map((m) => `${m.id}: held "${m.text}", acknowledged for "${ackOf(m.id)?.text ?? ''}" via ${ackOf(m.id)?.via ?? '?'}`)
    return { messages: ids.length, missing, silent, notices: covers.length, duplicates, disordered, wrongText: wrong.length, wrongTexts }
  }
  const settled = await waitFor(() => {
    collectWsAcks()
    return members.every((m) => m.rooms.every((room) => audit(m, room).missing.length === 0 || audit(m, room).silent.length === 0))
  }, 60_000, 'every acknowledged message at every member of its room, or told of').then(() => true, () => false)
  stopped = true

  let complete = 0
  let told = 0
  let delivered = 0
  const silentAt: string[] = []
  const toldAt: string[] = []
  for (const member of members) {
    for (const room of member.rooms) {
      const a = audit(member, room)
      delivered += a.messages
      t.equal(a.duplicates, 0, `${member.user} in ${room}: no message twice`)
      t.equal(a.disordered, 0, `${member.user} in ${room}: in order`)
      t.equal(a.wrongText, 0, `${member.user} in ${room}: each message as it was posted`)
      for (const line of a.wrongTexts) t.comment(`${member.user} ${room}: ${line}`)
      if (a.missing.length === 0) complete++
      else if (a.silent.length === 0) {
        told++
        toldAt.push(`${member.user} ${room}: ${a.missing.length} missing, ${a.notices} notices`)
      } else {
        silentAt.push(`${member.user} ${room}: ${a.silent.length} of ${ackedIn(room).length} silently missing (${a.silent.slice(0, 3).join(' ')}…), ${a.notices} notices`)
        // What the member's log holds around what it lacks, and when and how that was acknowledged.
        const entries = (member.chat.log.get(room) ?? []).map((e) => e.kind === 'message' ? e.id : e.kind === 'gap' ? `gap(after ${e.after})` : `resume(since ${e.since}, lost ${String(e.lost)}, replayed ${String(e.replayed)})`)
        t.comment(`${member.user} ${room} log: ${entries.join(' ')}`)
        t.comment(`${member.user} (ms from the start; the kill at ${killedAt - startedAt}):\n${member.trail.filter((line) => !line.includes('"channel":"room:') || line.includes(`"${room}"`)).join('\n')}`)
        for (const id of a.silent) {
          const ack = acked.get(ackKey(room, id))
          t.comment(`${member.user} ${room} lacks ${id}: acknowledged ${ack === undefined ? '?' : `${ack.at - killedAt} ms after the kill, via ${ack.via}`}`)
        }
      }
    }
  }
  const memberships = members.reduce((sum, m) => sum + m.rooms.length, 0)
  const viaWs = [...acked.values()].filter((a) => a.via === 'ws').length
  t.comment(`posted ${attempts} (${acked.size} acknowledged: ${acked.size - viaWs} over HTTP 202, ${viaWs} as published; ${beforeKill} before the kill), ${unacked} not acknowledged, ${ref - wsAcked()} socket posts unanswered`)
  t.comment(`${busiest}: ${ackedIn(busiest).length} messages to ${members.filter((m) => m.rooms.includes(busiest)).length} members; ${delivered} deliveries in all`)
  t.comment(`${reconnects.length} reconnects after the start: ${reconnects.join(', ')}`)
  t.comment(`${memberships} memberships: ${complete} complete, ${told} told of what they lack, ${silentAt.length} silently missing messages`)
  for (const line of toldAt) t.comment(`told: ${line}`)
  if (process.env.CHAT_DIAGNOSTICS !== undefined) {
    mkdirSync(process.env.CHAT_DIAGNOSTICS, { recursive: true })
    for (const { proc, port } of replicas) writeFileSync(join(process.env.CHAT_DIAGNOSTICS, `replica-${port}.log`), proc.output())
  }
  for (const { proc, port } of replicas) {
    const metrics = proc.logs().filter((l) => l.msg === 'metrics').at(-1) ?? {}
    const pick = ['published', 'repairs', 'repairedEvents', 'repairLost', 'gapsReported', 'historyRewinds', 'epochChanges', 'commandErrors', 'replayed']
    t.comment(`replica ${port}: ${pick.map((k) => `${k} ${String(metrics[k])}`).join(', ')}`)
  }
  t.ok(reconnects.length >= MEMBERS / 3, 'the members that dropped came back (and resumed) while the slot failed over')
  t.ok(settled, 'every member settled: it holds every acknowledged message of its rooms, or was told what it lacks')
  t.same(silentAt, [], 'nothing acknowledged is silently missing: every member that lacks one was told (gap, or lost: true)')
  t.equal(complete + told, memberships, 'every membership: complete, or told')
  for (const replica of replicas) t.equal(replica.proc.child.exitCode, null, `the chat on ${replica.port} still runs`)
})
