// The hub's write path in process, on real sockets: the events of one event-loop turn leave in one
// write per socket, in order, and a message for one client never overtakes the events it was
// delivered after (lib/hub.ts deliver, #flush, #write).
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { WebSocket, WebSocketServer } from 'ws'
import type { BrokerEvent } from '../../lib/event.js'
import { Hub, type Client, type Membership } from '../../lib/hub.js'
import type { WebSocketTransport } from '../../lib/transports/websocket.js'
import { Stats } from '../../lib/stats.js'
import { waitFor } from '../support/helper.js'

interface Tap { teardown (fn: () => unknown): void }

function event (id: string): BrokerEvent {
  return { id, data: Buffer.from(JSON.stringify({ id, type: 'guest' })) }
}

/** A hub with `count` connected clients, each seen from both ends. */
async function setUp (t: Tap, count: number, maxBufferedBytes = 1 << 20, heartbeatMs = 0): Promise<{ hub: Hub, stats: Stats, clients: Client[], received: string[][], writes: number[], pings: number[] }> {
  const stats = new Stats()
  const hub = new Hub({ maxBufferedBytes, heartbeatMs, maxConcurrentReplays: 32, stats })
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', perMessageDeflate: false })
  await once(wss, 'listening')
  t.teardown(() => { hub.close(); wss.close() })
  const clients: Client[] = []
  const received: string[][] = []
  const writes: number[] = []
  const pings: number[] = []
  wss.on('connection', (ws) => {
    const client = hub.add(ws, true)
    hub.subscribe(client, 'guest')
    const i = clients.push(client) - 1
    writes.push(0)
    // Counts the writes that reach the socket: the real write still happens.
    const write = client.raw.write.bind(client.raw) as (chunk: Buffer) => boolean
    client.raw.write = ((chunk: Buffer) => { writes[i]++; return write(chunk) }) as typeof client.raw.write
  })
  const port = (wss.address() as AddressInfo).port
  for (let i = 0; i < count; i++) {
    const ws = new WebSocket(`ws://127.0.0.1:${port}`)
    const messages: string[] = []
    received.push(messages)
    pings.push(0)
    ws.on('ping', () => { pings[i]++ })
    ws.on('message', (data) => messages.push(String(data)))
    t.teardown(() => ws.terminate())
    await once(ws, 'open')
  }
  await waitFor(() => clients.length === count, 5000, 'every client tracked')
  return { hub, stats, clients, received, writes, pings }
}

const membership = (client: Client): Membership => client.channels.get('guest') as Membership

const ids = (messages: string[]): string[] => messages.map((m) => (JSON.parse(m) as { id?: string, type: string }).id ?? (JSON.parse(m) as { type: string }).type)

t.test('the events of one turn reach every client in order, in one write per socket', async (t) => {
  const { hub, stats, received, writes } = await setUp(t, 3)
  hub.deliver('guest', event('1-0'))
  hub.deliver('guest', event('2-0'))
  hub.deliver('guest', event('3-0'))
  await waitFor(() => received.every((m) => m.length === 3), 5000, 'all events received')
  for (const messages of received) t.same(ids(messages), ['1-0', '2-0', '3-0'])
  t.same(writes, [1, 1, 1], 'three events, one write per socket')
  t.equal(stats.deliveries, 9, 'every delivery counted')
  hub.deliver('guest', event('4-0'))
  await waitFor(() => received.every((m) => m.length === 4), 5000, 'the next turn')
  t.same(writes, [2, 2, 2], 'the next turn is the next write')
})

t.test('a message for one client is written after the events delivered before it, before later ones', async (t) => {
  const { hub, clients, received } = await setUp(t, 2)
  hub.deliver('guest', event('1-0'))
  hub.deliver('guest', event('2-0'))
  hub.sendJson(clients[0], { type: 'gap', channel: 'guest', after: '2-0', lost: 1, reason: 'trimmed' })
  hub.deliver('guest', event('3-0'))
  await waitFor(() => received[0].length === 4 && received[1].length === 3, 5000, 'all received')
  t.same(ids(received[0]), ['1-0', '2-0', 'gap', '3-0'])
  t.same(ids(received[1]), ['1-0', '2-0', '3-0'], 'the other client gets the events alone')
})

t.test('a client that already has an event of this turn gets the others, in order', async (t) => {
  const { hub, clients, received } = await setUp(t, 2)
  hub.deliver('guest', event('1-0'))
  // As a replay leaves it: 2-0 already written to clients[0], so the live copy is skipped.
  membership(clients[0]).lastId = '2-0'
  hub.deliver('guest', event('2-0'))
  hub.deliver('guest', event('3-0'))
  await waitFor(() => received[0].length === 2 && received[1].length === 3, 5000, 'all received')
  t.same(ids(received[0]), ['1-0', '3-0'])
  t.same(ids(received[1]), ['1-0', '2-0', '3-0'])
  t.equal(membership(clients[0]).lastId, undefined, 'the first newer event clears the replay mark')
})

t.test('the buffer cap counts every frame of the turn: a client that does not read is cut off', async (t) => {
  const frame = 400
  const { hub, clients, stats } = await setUp(t, 1, 4 * frame)
  const raw = clients[0].raw
  // Bytes already waiting in the socket, as when the peer stopped reading.
  raw.cork()
  raw.write(Buffer.alloc(frame))
  const big = (id: string): BrokerEvent => ({ id, data: Buffer.from(JSON.stringify({ id, pad: 'x'.repeat(frame) })) })
  for (let i = 1; i <= 4; i++) hub.deliver('guest', big(`${i}-0`))
  const closed = once((clients[0].transport as WebSocketTransport).ws, 'close')
  await closed
  t.equal(stats.slowConsumerDrops, 1, 'cut off and counted')
  t.equal(stats.deliveries, 0, 'nothing counted as delivered to it')
})

t.test('the heartbeat pings a tenth of the clients per tick, each once per heartbeatMs', async (t) => {
  const HEARTBEAT_MS = 1000
  const { pings } = await setUp(t, 20, 1 << 20, HEARTBEAT_MS)
  await waitFor(() => pings.some((n) => n > 0), 5000, 'the first ping')
  const first = pings.filter((n) => n > 0).length
  t.ok(first <= 4, `the first tick pinged ${first} of 20, not all of them`)
  await waitFor(() => pings.every((n) => n > 0), 5000, 'every client pinged')
  // No wall-clock bound (a loaded machine runs timers late): the cycle is counted instead.
  t.ok(pings.every((n) => n === 1), `every client once in one cycle, none twice before the last: ${pings.join(',')}`)
})

/** Events `from`..`to` of one epoch, with the seq the broker gives them (seq n has id `n-0`). */
function sequence (from: number, to: number): BrokerEvent[] {
  return Array.from({ length: to - from + 1 }, (_, i) => {
    const id = `${from + i}-0`
    return { id, seq: from + i, epoch: 'e1', data: Buffer.from(JSON.stringify({ id, type: 'guest' })) }
  })
}

/**
 * A client resuming after 1-0 whose history is `history` (its first event, then the rest as a
 * second page); `whileHeld` runs while the replay waits for that second page, so what it delivers
 * is held. Resolves with everything the client received once the replay is done.
 */
async function resumeAround (t: Tap, history: BrokerEvent[], whileHeld: (hub: Hub) => void): Promise<Array<{ id?: string, type: string, after?: string, lost?: number | null }>> {
  const { hub, clients, received } = await setUp(t, 1)
  let reading!: () => void
  const secondPage = new Promise<void>((resolve) => { reading = resolve })
  let release!: () => void
  const released = new Promise<void>((resolve) => { release = resolve })
  let rest = history.slice(1)
  const resuming = hub.resume(membership(clients[0]), '1-0', async () => ({
    first: history.slice(0, 1),
    from: '1-0',
    lost: false,
    clamped: false,
    epoch: 'e1',
    async next () {
      reading()
      await released
      const page = rest
      rest = []
      return page
    }
  }), () => hub.sendJson(clients[0], { type: 'resume', since: '1-0', replayed: 0, lost: false, clamped: false, epoch: null }))
  await secondPage
  whileHeld(hub)
  release()
  await resuming
  hub.deliver('guest', sequence(20, 20)[0]) // a live event after the replay marks the end of what it sent
  await waitFor(() => received[0].some((m) => m.includes('"20-0"')), 5000, 'the live event after the replay')
  return received[0].map((m) => JSON.parse(m) as { id?: string, type: string })
}

const summary = (messages: Array<{ id?: string, type: string, after?: string, lost?: number | null }>): string[] =>
  messages.map((m) => m.type === 'gap' ? `gap after ${m.after} lost ${m.lost}` : m.id ?? m.type)

/** While the client replays, the replica delivers 4, then learns it lost 5–7 for good, then delivers 8. */
function loseFiveToSeven (hub: Hub): void {
  const [four, , , , eight] = sequence(4, 8)
  hub.deliver('guest', four)
  hub.deliverGap('guest', { after: '4-0', lost: 3, reason: 'trimmed' })
  hub.deliver('guest', eight)
}

t.test('a gap while a client replays is told to it, counted from where its history left it', async (t) => {
  // The replica lost 5–7; the client's history (2–3) stopped before them, so it missed all three.
  const got = await resumeAround(t, sequence(2, 3), loseFiveToSeven)
  t.same(summary(got), ['2-0', '3-0', 'resume', '4-0', 'gap after 4-0 lost 3', '8-0', '20-0'])
})

t.test('a gap its history already covered is not told to a replaying client', async (t) => {
  // The history read before the trim still held 5–7: the client has every event.
  const got = await resumeAround(t, sequence(2, 9), loseFiveToSeven)
  t.same(summary(got), ['2-0', '3-0', '4-0', '5-0', '6-0', '7-0', '8-0', '9-0', 'resume', '20-0'])
})

t.test('a gap its history covered in part: the client is told what it still missed', async (t) => {
  // The history reached 5; 6 and 7 are gone for this client.
  const got = await resumeAround(t, sequence(2, 5), loseFiveToSeven)
  t.same(summary(got), ['2-0', '3-0', '4-0', '5-0', 'resume', 'gap after 5-0 lost 2', '8-0', '20-0'])
})

t.test('replays from many distinct places keep a bounded cache of joined blocks', async (t) => {
  // 1 KiB events: each replay's blocks hold 64 of them. 300 clients resuming from 300 places
  // would leave 300 × 64 KiB = 19 MiB of blocks hanging on the events without a bound.
  const history = Array.from({ length: 600 }, (_, i) => {
    const id = `${i + 1}-0`
    return { id, seq: i + 1, epoch: 'e1', data: Buffer.from(JSON.stringify({ id, type: 'guest', pad: 'x'.repeat(1000) })) }
  })
  const clients = 300
  const { hub, clients: connected, received } = await setUp(t, clients, 4 << 20)
  let largest = 0
  await Promise.all(connected.map(async (client, i) => {
    const since = `${i}-0`
    await hub.resume(membership(client), since, async () => ({
      first: history.slice(i, i + 500),
      from: since,
      lost: false,
      clamped: false,
      epoch: 'e1',
      next: async () => []
    }), () => { largest = Math.max(largest, hub.cachedBlockBytes) })
    largest = Math.max(largest, hub.cachedBlockBytes)
  }))
  await waitFor(() => received.every((m, i) => m.length === Math.min(500, 600 - i)), 30_000, 'every replay received')
  t.ok(largest <= 16 * 1024 * 1024, `at most 16 MiB of blocks kept at any time (largest seen: ${(largest / 1048576).toFixed(1)} MiB)`)
  t.ok(largest > 8 * 1024 * 1024, 'the cache was used: the bound is what stopped it')
})
