// Issue 11, "Authentication" and the upload quota: `authorize` refuses before the upgrade or
// attaches an identity to the connection; concurrent uploads never overshoot the quota or the
// free-space floor, because space is reserved before anything is written.
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { readdir, readFile, stat, statfs } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import t, { type Test } from 'tap'
import { refuse } from '../../app.js'
import { build, connect, tempDir, type TestClient } from '../support/helper.js'
import { HandshakeRefused, RawClient } from '../support/raw-ws.js'
import { coreOf } from '../../plugins/fanout.js'

const exec = promisify(execFile)
type Tap = Parameters<typeof tempDir>[0]

const USERS: Record<string, { id: string, upload: boolean } | 'banned'> = {
  'token-alice': { id: 'alice', upload: true },
  'token-bob': { id: 'bob', upload: false },
  'token-eve': 'banned'
}

const authorize = (request: { headers: Record<string, string | string[] | undefined> }) => {
  const user = USERS[String(request.headers.authorization ?? '').replace(/^Bearer /, '')]
  if (user === undefined) return refuse(401, 'a token is required')
  if (user === 'banned') return refuse(403, 'banned')
  return user
}

/** The status a handshake is answered with (101 if it was not refused). */
async function refusal (t: Tap, port: number, path: string, headers: Record<string, string>): Promise<{ status: number }> {
  try {
    await RawClient.open(t, port, { path, headers })
  } catch (err) {
    if (err instanceof HandshakeRefused) return { status: err.status }
    throw err
  }
  return { status: 101 }
}

t.test('authorize refuses with 401 or 403 and its reason, before the upgrade; EventSource alike', async (t) => {
  const { app, url, port, logs } = await build(t, { authorize })
  t.equal((await refusal(t, port, '/guest', {})).status, 401, 'no token: 401, no upgrade')
  t.equal((await refusal(t, port, '/guest', { Authorization: 'Bearer token-eve' })).status, 403, 'banned: 403')
  t.equal((await refusal(t, port, '/ask', {})).status, 401, '/ask asks authorize too')
  const answer = await fetch(`${url}/guest`, { headers: { accept: 'text/event-stream' } })
  t.equal(answer.status, 401, 'EventSource: 401')
  t.same(await answer.json(), { error: 'a token is required' }, 'with the reason')
  const banned = await fetch(`${url}/guest`, { headers: { accept: 'text/event-stream', authorization: 'Bearer token-eve' } })
  t.equal(banned.status, 403)
  t.same(await banned.json(), { error: 'banned' })
  t.equal(coreOf(app).hub.size, 0, 'no connection was opened')
  t.equal(coreOf(app).stats.handshakesRefused, 5, 'each refusal counted')
  t.match(logs.find('websocket refused by authorize'), [{ status: 401, reason: 'a token is required' }, { status: 403, reason: 'banned' }, { status: 401 }])
  t.equal(logs.find('event stream refused by authorize').length, 2)
})

t.test('an accepted identity stays with the connection: logs, upload names, its upload permission', async (t) => {
  const { app, ws, uploadDir, logs } = await build(t, { authorize })
  const alice = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1'], headers: { Authorization: 'Bearer token-alice' } })
  const bob = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1'], headers: { Authorization: 'Bearer token-bob' } })
  t.same([...coreOf(app).hub.clients].map((c) => c.identity.id).sort(), ['alice', 'bob'], 'client.identity')

  alice.socket.send(Buffer.from('from alice'))
  await alice.until((c) => c.json('ack').length === 1)
  const { id: name } = alice.json('ack')[0] as { id: string }
  t.match(name, /^\d{8}-\d{6}-alice-[0-9a-f]{12}\.bin$/, 'the upload is named for its owner')
  t.equal((await readFile(join(uploadDir, name))).toString(), 'from alice')
  t.match(logs.find('upload saved')[0], { user: 'alice', name })

  bob.socket.send(Buffer.from('from bob'))
  await bob.until((c) => c.json('error').length === 1)
  t.match(bob.json('error')[0], { type: 'error', code: 'unauthorized' }, 'upload: false refuses uploads')
  bob.socket.send('hello from bob')
  await bob.until(() => logs.find('received: hello from bob').length === 1)
  t.match(logs.find('received: hello from bob')[0], { user: 'bob' }, 'text lines name the user')
  t.same((await readdir(uploadDir)).sort(), [name], 'only alice\'s file')
})

/** Sends one upload and waits for its ack or error. */
async function upload (client: TestClient, data: Buffer): Promise<Record<string, unknown>> {
  client.socket.send(data)
  await client.until((c) => c.json('ack').length + c.json('error').length === 1, 20_000, 'ack or error')
  return client.json().find((m) => m.type === 'ack' || m.type === 'error') as Record<string, unknown>
}

/** Every saved file is whole: what its ack said, byte for byte; no temp file left. */
async function checkDir (t: Test, dir: string, acks: Array<Record<string, unknown>>): Promise<number> {
  const files = await readdir(dir)
  t.same(files.filter((f) => f.startsWith('.')), [], 'no temp file left')
  t.same(files.sort(), acks.map((a) => a.id).sort(), 'exactly the acked files')
  let total = 0
  for (const ack of acks) {
    const data = await readFile(join(dir, ack.id as string))
    t.ok(createHash('sha256').update(data).digest('hex') === ack.sha256 && data.length === ack.bytes, `${ack.id as string} is whole`)
    total += data.length
  }
  return total
}

t.test('concurrent uploads against a quota never overshoot it; the refused get quota', async (t) => {
  const quota = 100_000
  const { app, ws, uploadDir } = await build(t, { uploadQuotaBytes: quota })
  const clients = await Promise.all(Array.from({ length: 10 }, () => connect(t, `${ws}/guest`, { protocols: ['fanout.v1'] })))
  const answers = await Promise.all(clients.map((c, i) => upload(c, Buffer.alloc(30_000, i))))
  const acks = answers.filter((a) => a.type === 'ack')
  t.equal(acks.length, 3, 'three 30 kB uploads fit in 100 kB')
  t.ok(answers.filter((a) => a.type === 'error').every((e) => e.code === 'quota'), 'the others: quota')
  const total = await checkDir(t, uploadDir, acks)
  t.ok(total <= quota, `${total} bytes on disk, within the quota`)
  t.equal(coreOf(app).uploads.usedBytes, total, 'the store counts what is on disk')

  // The quota counts what was already there when the server started.
  const again = await build(t, { uploadQuotaBytes: quota, uploadDir })
  const late = await connect(t, `${again.ws}/guest`, { protocols: ['fanout.v1'] })
  t.match(await upload(late, Buffer.alloc(20_000)), { type: 'error', code: 'quota' }, 'a restarted server counts the files on disk')
})

const isRoot = process.getuid?.() === 0

/** A tmpfs of `size` mounted on a fresh directory; unmounted, then removed, at teardown. */
async function tmpfs (t: Tap, size: string): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'fanout-tmpfs-'))
  await exec('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'tmpfs', dir])
  t.teardown(async () => {
    for (let attempt = 0; ; attempt++) {
      try {
        await exec('umount', [dir])
        break
      } catch (err) {
        if (attempt === 20) {
          await exec('umount', ['-l', dir])
          break
        }
        await sleep(100)
      }
    }
    rmSync(dir, { recursive: true, force: true })
  })
  return dir
}

t.test('concurrent uploads on a small tmpfs never eat into the free-space floor', { skip: !isRoot && 'mounting a tmpfs needs root' }, async (t) => {
  const dir = await tmpfs(t, '2m')
  const floor = 512 * 1024
  const { bavail, bsize } = await statfs(dir)
  const free = bavail * bsize
  const { ws } = await build(t, { uploadDir: dir, uploadMinFreeBytes: floor })
  const clients = await Promise.all(Array.from({ length: 12 }, () => connect(t, `${ws}/guest`, { protocols: ['fanout.v1'] })))
  const answers = await Promise.all(clients.map((c, i) => upload(c, Buffer.alloc(300 * 1024, i + 1))))
  const acks = answers.filter((a) => a.type === 'ack')
  const refused = answers.filter((a) => a.type === 'error')
  t.ok(acks.length > 0 && refused.length > 0, `${acks.length} saved, ${refused.length} refused`)
  t.ok(refused.every((e) => e.code === 'disk_full'), 'the refused get disk_full')
  const total = await checkDir(t, dir, acks)
  t.ok(total <= free - floor, `${total} bytes written; ${free - floor} were allowed above the floor`)
  const after = await statfs(dir)
  t.ok(after.bavail * after.bsize >= floor - 64 * 1024, 'the floor held (give or take the filesystem\'s own blocks)')
  for (const file of await readdir(dir)) t.ok((await stat(join(dir, file))).size > 0)
})

t.test('uploadToken is an authorize: everyone streams, only the token uploads', async (t) => {
  const { app, ws } = await build(t, { uploadToken: 'secret-token' })
  t.type(coreOf(app).authorize, 'function')
  const plain = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1'] })
  t.match(await upload(plain, Buffer.from('x')), { code: 'unauthorized' })
  const holder = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1'], headers: { Authorization: 'Bearer secret-token' } })
  t.match(await upload(holder, Buffer.from('x')), { type: 'ack' })
})
