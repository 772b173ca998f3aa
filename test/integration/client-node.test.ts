// fastify-fanout/client in Node, with `ws`, against real replicas on a real redis-server: one
// replica goes away and Redis is killed and restarted (AOF) while the client records every id; the
// app gets every event once and in order, or was told. Uploads and publishes resolve with the
// server's answers. A strict TypeScript app type-checks an exhaustive switch over the client's
// notices against the built declaration files (dist/client/index.d.ts, by a path mapping).
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t, { type Test } from 'tap'
import { WebSocket } from 'ws'
import { createClient, FanoutError, type ClientNotice, type FanoutClient, type GapMessage, type SubscribedMessage } from '../../client/index.js'
import { compareIds } from '../../lib/event.js'
import { coreOf } from '../../plugins/fanout.js'
import { build, httpStatus, ROOT, startRedis, tempDir, waitFor, type TestApp } from '../support/helper.js'

const exec = promisify(execFile)
const NAMESPACES = { room: { clientPublish: true } }

/** A replica on the test's Redis, ready to serve. */
async function replica (t: Test, redisUrl: string): Promise<TestApp> {
  const app = await build(t, { redisUrl, namespaces: NAMESPACES, canaryIntervalMs: 200 })
  await waitFor(async () => await httpStatus(`${app.url}/readyz`) === 200, 30_000, 'the replica to be ready')
  return app
}

function client (t: Test, url: string | string[]): { client: FanoutClient, notices: ClientNotice[] } {
  const c = createClient({ url, WebSocket })
  const notices: ClientNotice[] = []
  c.on((n) => notices.push(n))
  t.teardown(() => c.close())
  return { client: c, notices }
}

interface Record { ids: string[], channels: Set<string>, gaps: GapMessage[], lost: SubscribedMessage[], subscribed: SubscribedMessage[] }

t.test('a replica closed under the client and Redis killed and restarted: every event once and in order, or told', async (t) => {
  const redis = await startRedis(t, { aof: true })
  const A = await replica(t, redis.url)
  const B = await replica(t, redis.url)
  const P = await replica(t, redis.url) // the publisher's replica: nobody connects to it
  const channels = ['room:1', 'room:2', 'news']
  const { client: c, notices } = client(t, [`${A.url}/stream`, `${B.url}/stream`])
  const got = new Map<string, Record>(channels.map((ch) => [ch, { ids: [], channels: new Set(), gaps: [], lost: [], subscribed: [] }]))
  for (const ch of channels) {
    const r = got.get(ch)!
    c.subscribe<{ type: 'n', n: number }>(ch, {
      onEvent: (e) => { r.channels.add(e.channel); r.ids.push(e.id) },
      onGap: (g) => r.gaps.push(g),
      onLost: (s) => r.lost.push(s),
      onSubscribed: (s) => r.subscribed.push(s)
    })
  }
  await waitFor(() => channels.every((ch) => got.get(ch)!.subscribed.length === 1), 20_000, 'every channel subscribed')
  t.equal(coreOf(A.app).hub.size, 1, 'connected to the first url')

  // The publisher: round-robin over the channels, every confirmed id kept, until told to stop.
  const confirmed = new Map<string, string[]>(channels.map((ch) => [ch, []]))
  const publishing = { on: true }
  let n = 0
  const publisher = (async () => {
    while (publishing.on) {
      const ch = channels[n % channels.length]
      const body = { type: 'n', n: n++ }
      // While Redis is down the outbox holds it; the id comes once Redis took it.
      const id = await P.app.fanout.publish(ch, body).catch(() => undefined)
      if (id !== undefined) confirmed.get(ch)!.push(id)
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
  })()
  const total = () => [...got.values()].reduce((sum, r) => sum + r.ids.length, 0)
  await waitFor(() => total() >= 30, 20_000, 'the first events')

  // Replica A goes: its sockets cut (1006, as a crash), then the server closed.
  for (const cl of coreOf(A.app).hub.clients) cl.terminate()
  await A.app.close()
  const before = total()
  await waitFor(() => coreOf(B.app).hub.size === 1 && total() >= before + 30, 30_000, 'the client on replica B, events flowing again')
  t.ok(notices.some((x) => x.type === 'state' && x.state === 'reconnecting'), 'the client said it was reconnecting')

  // Redis killed and started again from its AOF, publishing all the while.
  await redis.stop('SIGKILL')
  await new Promise((resolve) => setTimeout(resolve, 500))
  await redis.start()
  const after = total()
  await waitFor(() => total() >= after + 30, 60_000, 'events after the Redis restart')

  publishing.on = false
  await publisher
  for (const ch of channels) {
    await waitFor(() => {
      const r = got.get(ch)!
      const want = confirmed.get(ch)!
      return r.ids.length >= want.length || r.gaps.length > 0 || r.lost.length > 0
    }, 30_000, `every confirmed event of ${ch}`)
  }
  await new Promise((resolve) => setTimeout(resolve, 500)) // room for a duplicate to show
  for (const ch of channels) {
    const r = got.get(ch)!
    const want = confirmed.get(ch)!
    t.ok(want.length > 20, `${ch}: ${want.length} events published`)
    t.same([...r.channels], [ch], `${ch}: only its own events`)
    t.ok(r.ids.every((id, i) => i === 0 || compareIds(r.ids[i - 1], id) < 0), `${ch}: in order, never twice`)
    if (r.gaps.length === 0 && r.lost.length === 0) {
      t.same(r.ids, want, `${ch}: every confirmed event, exactly once and in order`)
    } else {
      // Told: what it has is still a part of what was published, in order.
      t.same(r.ids.filter((id) => !want.includes(id)), [], `${ch}: told of a gap; nothing it did not publish`)
    }
  }
  t.ok(notices.every((x) => x.type === 'state'), 'no unclaimed error')
  t.equal(c.state, 'open')
  t.equal(c.transport, 'websocket')
})

t.test('publish resolves with the event id, upload with the ack; refusals reject with the server\'s code', async (t) => {
  const app = await build(t, { namespaces: NAMESPACES })
  const { client: c } = client(t, `${app.ws}/stream`)
  const events: Array<{ id: string, text: string }> = []
  c.subscribe<{ type: 'chat', text: string }>('room:7', { onEvent: (e) => events.push({ id: e.id, text: e.text }) })

  const id = await c.publish('room:7', { type: 'chat', text: 'hi' })
  t.match(id, /^\d+-\d+$/)
  await waitFor(() => events.length === 1, 10_000, 'the event back')
  t.same(events, [{ id, text: 'hi' }], 'the subscriber got it under the id publish resolved with')

  const refused = await c.publish('news', { type: 'chat', text: 'no' }).catch((err: unknown) => err)
  t.ok(refused instanceof FanoutError)
  t.match(refused, { code: 'forbidden', channel: 'news' }, 'clientPublish is off in the default namespace')

  const data = Buffer.concat([Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex'), Buffer.alloc(200, 7)])
  const ack = await c.upload(data)
  t.match(ack, { type: 'ack', bytes: data.length, sha256: createHash('sha256').update(data).digest('hex'), mime: 'image/png' })
  t.match(ack.id, /\.png$/)
  const blob = await c.upload(new Blob([Buffer.from('hello')]))
  t.equal(blob.bytes, 5, 'a Blob too')

  const off = await build(t, { namespaces: NAMESPACES, uploads: false })
  const { client: d } = client(t, `${off.ws}/stream`)
  const err = await d.upload(new Uint8Array([1, 2, 3])).catch((e: unknown) => e)
  t.match(err, { name: 'FanoutError', code: 'disabled' }, 'rejects with the server\'s upload error code')

  await t.rejects(c.send('hello'), { code: 'unsupported' }, 'text on /stream is a command: send() says so')
  c.close()
  t.equal(c.state, 'closed')
  await t.rejects(c.publish('room:7', { type: 'chat', text: 'late' }), { code: 'closed' })
})

t.test('a restart (1012): back on the next replica, resumed from the subscribed position though no event came yet', async (t) => {
  const redis = await startRedis(t)
  const A = await replica(t, redis.url)
  const B = await replica(t, redis.url)
  const { client: c, notices } = client(t, [`${A.url}/stream`, `${B.url}/stream`])
  const ids: string[] = []
  const subscribed: SubscribedMessage[] = []
  c.subscribe('room:quiet', { onEvent: (e) => ids.push(e.id), onSubscribed: (s) => subscribed.push(s) })
  await waitFor(() => subscribed.length === 1, 10_000, 'subscribed')
  t.equal(subscribed[0].position, '0-0', 'a channel that never had an event')

  await A.app.close() // drains: 1012 to its client
  // Published while the client is away: it must come from the history on resume.
  const missed = [await B.app.fanout.publish('room:quiet', { type: 'x' }), await B.app.fanout.publish('room:quiet', { type: 'x' })]
  await waitFor(() => subscribed.length === 2, 20_000, 'subscribed again on B')
  t.ok(notices.some((x) => x.type === 'state' && x.code === 1012), 'the 1012 was seen')
  await waitFor(() => ids.length === 2, 10_000, 'the missed events')
  t.same(ids, missed, 'replayed after 0-0: nothing missed though the client had no event to resume from')
  t.match(subscribed[1], { replayed: 2, lost: false })
})

t.test('a strict TypeScript app type-checks an exhaustive switch over the client\'s notices (dist/ by a path mapping)', async (t) => {
  const dir = tempDir(t, 'fanout-client-types-')
  const app = `import { createClient, type ClientNotice } from 'fastify-fanout/client'
import { WebSocket } from 'ws'

type Chat = { type: 'chat', text: string } | { type: 'join', who: string }
const client = createClient({ url: 'http://localhost:3000/stream', WebSocket })
client.subscribe<Chat>('room:1', {
  onEvent (event) {
    switch (event.type) {
      case 'chat': console.log(event.id, event.epoch, event.channel, event.text); break
      case 'join': console.log(event.who); break
      default: { const never: never = event; throw new Error(String(never)) }
    }
  },
  onGap: (gap) => console.log(gap.after, gap.lost, gap.reason),
  onLost: (s) => console.log(s.replayed)
})
export function handle (notice: ClientNotice): string {
  switch (notice.type) {
    case 'state':
      switch (notice.state) {
        case 'connecting': case 'open': case 'reconnecting': case 'closed': return \`\${notice.state} \${notice.transport} \${notice.code ?? ''}\`
        default: { const never: never = notice.state; return never }
      }
    case 'error': return \`\${notice.error.code}: \${notice.error.message}\`
    default: { const never: never = notice; return never }
  }
}
client.on(handle)
const id: Promise<string> = client.publish('room:1', { type: 'chat', text: 'hi' })
const sha: Promise<string> = client.upload(new Uint8Array(1)).then((ack) => ack.sha256)
void id; void sha
`
  const config = (file: string) => JSON.stringify({
    compilerOptions: {
      target: 'ES2022',
      module: 'NodeNext',
      moduleResolution: 'NodeNext',
      strict: true,
      noEmit: true,
      skipLibCheck: false,
      types: ['node'],
      typeRoots: [join(ROOT, 'node_modules/@types')],
      baseUrl: '.',
      paths: { 'fastify-fanout/client': [join(ROOT, 'dist/client/index.d.ts')], ws: [join(ROOT, 'node_modules/@types/ws/index.d.ts')] }
    },
    files: [file]
  })
  writeFileSync(join(dir, 'app.ts'), app)
  writeFileSync(join(dir, 'missing.ts'), app.replace(/ {4}case 'error': .*\n/, ''))
  writeFileSync(join(dir, 'tsconfig.json'), config('app.ts'))
  writeFileSync(join(dir, 'tsconfig.missing.json'), config('missing.ts'))
  const tsc = async (project: string) => exec(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', project], { cwd: dir })
    .then(() => '', (err: { stdout: string }) => err.stdout)
  t.equal(await tsc('tsconfig.json'), '', 'compiles under --strict with no error')
  t.match(await tsc('tsconfig.missing.json'), /TS2322: Type 'ErrorNotice' is not assignable to type 'never'/, 'without the error case the switch is not exhaustive')
})
