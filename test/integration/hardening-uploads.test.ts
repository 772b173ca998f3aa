// Issue 5, "Uploads": a full disk (a real 1 MiB tmpfs) refused clearly with nothing half-written
// left behind, the free-space floor, names and extensions chosen by the server from the content,
// no execute bits, and nothing served back over HTTP.
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { readdir, readFile, stat, statfs } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import t from 'tap'
import type { WebSocketTransport } from '../../lib/transports/websocket.js'
import { ownPath } from '../support/children.js'
import { build, connect, missing, run, startServer, tempDir, type TestClient } from '../support/helper.js'
import { coreOf } from '../../plugins/fanout.js'

const exec = promisify(execFile)
const PNG = Buffer.concat([Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex'), Buffer.alloc(64, 7)])
const NAME = /^\d{8}-\d{6}-[0-9a-f]{12}\.[a-z0-9]+$/

type Tap = Parameters<typeof tempDir>[0]

/**
 * A tmpfs of `size` mounted on a fresh directory; unmounted, then removed, at teardown, or by the
 * watchdog (test/support/children.ts) should this test be killed first.
 */
async function tmpfs (t: Tap, size: string): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'fanout-tmpfs-'))
  const owned = ownPath('mount', dir)
  await exec('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'tmpfs', dir])
  // One teardown, in this order: the directory can only be removed once nothing is mounted on it.
  t.teardown(async () => {
    for (let attempt = 0; ; attempt++) {
      try {
        await exec('umount', [dir])
        break
      } catch (err) {
        if (attempt === 20) {
          await exec('umount', ['-l', dir]) // busy for good: detach it rather than leak it
          break
        }
        await sleep(100)
      }
    }
    rmSync(dir, { recursive: true, force: true })
    owned.release()
  })
  return dir
}

/** Sends one upload and waits for its ack or error. */
async function upload (client: TestClient, data: Buffer): Promise<Record<string, unknown>> {
  const before = client.json('ack').length + client.json('error').length
  client.socket.send(data)
  await client.until((c) => c.json('ack').length + c.json('error').length > before, 10_000, 'ack or error')
  return client.json().filter((m) => m.type === 'ack' || m.type === 'error').at(-1) as Record<string, unknown>
}

// Mounting a tmpfs needs root. CI runs as root; anywhere else these two are skipped, and said so
// on stderr too, where a run's output shows it, not only in the TAP stream.
const notRoot = process.getuid?.() !== 0 && 'NOT TESTED here: mounting a tmpfs needs root (CI runs as root)'
if (notRoot) console.error(`test/integration/hardening-uploads.test.ts: full disk and free-space floor ${notRoot}`)

t.test('a full disk: the upload is refused with disk_full and leaves nothing behind', { skip: notRoot }, async (t) => {
  const dir = await tmpfs(t, '1m')
  const { app, ws } = await build(t, { uploadDir: dir, uploadMinFreeBytes: 0 })
  const client = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1'] })

  const tooMuch = await upload(client, Buffer.alloc(2 * 1024 * 1024, 0xab))
  t.match(tooMuch, { type: 'error', code: 'disk_full' }, 'ENOSPC in the middle of the write')
  t.same(await readdir(dir), [], 'no file and no temp file')
  const fs = await statfs(dir)
  t.equal(fs.bfree, fs.blocks, 'the space the temp file took is free again')
  t.equal(coreOf(app).stats.uploadErrors, 1)

  const small = await upload(client, PNG)
  t.match(small, { type: 'ack' }, 'a small upload afterwards still works')
  t.same(await readdir(dir), [small.id])
  t.equal(client.socket.readyState, client.socket.OPEN, 'the refused client stays connected')
})

t.test('a free-space floor refuses the upload before anything is written', { skip: notRoot }, async (t) => {
  const dir = await tmpfs(t, '1m')
  const { app, ws } = await build(t, { uploadDir: dir, uploadMinFreeBytes: 2 * 1024 * 1024 })
  const client = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1'] })
  const refused = await upload(client, PNG)
  t.match(refused, { type: 'error', code: 'disk_full', message: /keeps 2097152 bytes free/ })
  t.same(await readdir(dir), [])
  t.equal(coreOf(app).stats.uploads, 0)
})

t.test('a write past the file-size limit (EFBIG) is refused with too_big and leaves nothing', { skip: missing('prlimit') }, async (t) => {
  // RLIMIT_FSIZE on the server process: a write past it fails with EFBIG, and SIGXFSZ must not kill it.
  const dir = tempDir(t, 'fanout-uploads-')
  const server = await startServer(t, { UPLOAD_DIR: dir })
  const limited = run(t, 'prlimit', [`--pid=${server.child.pid}`, '--fsize=65536'])
  t.equal((await limited.exited).code, 0, limited.output())
  const client = await connect(t, `${server.ws}/guest`, { protocols: ['fanout.v1'] })
  const refused = await upload(client, Buffer.alloc(256 * 1024, 1))
  t.match(refused, { type: 'error', code: 'too_big' })
  t.same(await readdir(dir), [], 'no file and no temp file')
  t.match(await upload(client, PNG), { type: 'ack' }, 'a small one still fits')
  t.equal(server.child.exitCode, null, 'the server is still running')
})

t.test('the extension comes from the content; the name from the server; no execute bits', async (t) => {
  const { ws, url, uploadDir } = await build(t)
  const client = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1'] })
  const cases: Array<[string, Buffer, string]> = [
    ['a PNG', PNG, 'png'],
    ['a shell script', Buffer.from('#!/bin/sh\necho pwned > /tmp/pwned\n'), 'bin'],
    ['an HTML page', Buffer.from('<!doctype html><html><script>alert(1)</script></html>'), 'bin'],
    ['an SVG with a script', Buffer.from('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'), 'bin'],
    ['random bytes', Buffer.from('00ff13371337deadbeef', 'hex'), 'bin']
  ]
  for (const [what, data, ext] of cases) {
    const ack = await upload(client, data)
    t.match(ack, { type: 'ack', bytes: data.length }, what)
    const name = ack.id as string
    t.match(name, NAME, `${what}: a name the server made up`)
    t.equal(name.split('.').pop(), ext, `${what} is saved as .${ext}`)
    const { mode } = await stat(join(uploadDir, name))
    t.equal(mode & 0o111, 0, `${what}: no execute bits (mode ${(mode & 0o777).toString(8)})`)
    t.equal(mode & 0o777, 0o640)
  }
  t.equal((await readdir(uploadDir)).length, cases.length, 'no temp files left')

  // Uploads are not served back over HTTP at all: not at the root, not under the directory name.
  const name = client.json('ack')[0].id as string
  for (const path of [`/${name}`, `/uploads/${name}`]) {
    t.equal((await fetch(url + path)).status, 404, `GET ${path}`)
  }
})

t.test('concurrent uploads from many clients each land whole, with no temp file left', async (t) => {
  const { ws, uploadDir } = await build(t)
  const clients = await Promise.all(Array.from({ length: 8 }, () => connect(t, `${ws}/guest`, { protocols: ['fanout.v1'] })))
  const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex')
  const sent = new Map<string, string>() // the name each upload was saved under → the sha256 of what was sent
  await Promise.all(clients.map(async (client, i) => {
    for (let n = 0; n < 3; n++) {
      const data = Buffer.concat([PNG, Buffer.alloc(1000 * (i + 1), n)])
      const ack = await upload(client, data)
      t.match(ack, { type: 'ack', bytes: data.length, sha256: sha256(data) }, `client ${i}, upload ${n}: acked with its own hash`)
      sent.set(String(ack.id), sha256(data))
    }
  }))
  const files = await readdir(uploadDir)
  t.same(files.sort(), [...sent.keys()].sort(), 'the 24 acked files and nothing else: no temp file')
  const onDisk = await Promise.all(files.map(async (f) => [f, sha256(await readFile(join(uploadDir, f)))]))
  t.same(Object.fromEntries(onDisk), Object.fromEntries(sent), 'each file holds, byte for byte, what its sender sent')
})

t.test('while an upload is written the sender is paused; every upload still lands, acked in order', async (t) => {
  const { app, ws, uploadDir } = await build(t, { rateBytesPerSec: 64 * 1024 * 1024, rateMessagesPerSec: 1000 })
  const client = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1'] })
  const [{ transport }] = [...coreOf(app).hub.clients]
  const server = transport as WebSocketTransport
  let sawPaused = false
  const watch = setInterval(() => { sawPaused ||= server.ws.isPaused }, 1)
  t.teardown(() => clearInterval(watch))
  const files = Array.from({ length: 30 }, (_, i) => Buffer.alloc(512 * 1024, i))
  for (const file of files) client.socket.send(file)
  await client.until((c) => c.json('ack').length === files.length, 30_000, 'every ack')
  clearInterval(watch)
  t.ok(sawPaused, 'the socket was paused while uploads were being written')
  t.equal(server.ws.isPaused, false, 'and resumed once they were all saved')
  const acks = client.json('ack') as Array<{ id: string, sha256: string }>
  t.same(acks.map((a) => a.sha256), files.map((f) => createHash('sha256').update(f).digest('hex')), 'acks in the order sent')
  t.equal((await readdir(uploadDir)).filter((f) => !f.startsWith('.')).length, files.length, 'every file on disk, no temp files')
})
