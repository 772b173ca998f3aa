// lib/uploads.ts: the upload store, against real file systems (tmpfs where root may mount one).
import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { readdir, readFile, rm, stat, statfs, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { UploadError, UploadStore } from '../../lib/uploads.js'
import { tempDir } from '../support/helper.js'

const PNG = Buffer.concat([Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex'), Buffer.alloc(64, 7)])

t.test('UploadStore: server-chosen names, type from content, no execute bits', async (t) => {
  const dir = join(tempDir(t), 'nested', 'uploads')
  const store = new UploadStore({ dir, minFreeBytes: 0 })
  await store.init()
  t.ok((await stat(dir)).isDirectory(), 'init creates the directory')

  const png = await store.save(PNG)
  t.match(png.name, /^\d{8}-\d{6}-[0-9a-f]{12}\.png$/)
  t.equal(png.mime, 'image/png')
  t.equal(png.bytes, PNG.length)
  t.equal(png.sha256, sha256(PNG))
  t.same(await readFile(join(dir, png.name)), PNG, 'byte for byte')
  t.equal((await stat(join(dir, png.name))).mode & 0o111, 0, 'no execute bits')

  const text = Buffer.from('#!/bin/sh\nrm -rf /\n')
  const unknown = await store.save(text)
  t.match(unknown.name, /\.bin$/, 'unknown content: .bin')
  t.equal(unknown.mime, 'application/octet-stream')
  t.equal((await stat(join(dir, unknown.name))).mode & 0o111, 0)

  const again = await store.save(PNG)
  t.not(again.name, png.name, 'the same content twice: two files')
  t.equal(again.sha256, png.sha256)
  t.same((await readdir(dir)).sort(), [png.name, unknown.name, again.name].sort(), 'no temp files left')
})

t.test('UploadStore: init refuses a path that is not a writable directory', async (t) => {
  const file = join(tempDir(t), 'a-file')
  await writeFile(file, 'x')
  await t.rejects(new UploadStore({ dir: file, minFreeBytes: 0 }).init(), /UPLOAD_DIR .*a-file/)
})

t.test('UploadStore: a directory removed after init: the save fails, nothing is created', async (t) => {
  const dir = join(tempDir(t), 'gone')
  const store = new UploadStore({ dir, minFreeBytes: 0 })
  await store.init()
  await rm(dir, { recursive: true })
  await t.rejects(store.save(PNG))
  await t.rejects(stat(dir), { code: 'ENOENT' }, 'the save did not recreate anything')
})

// A full filesystem is a real failure only a real small filesystem gives: a 64 KiB tmpfs (root only).
const tmpfsProbe = mkdtempSync(join(tmpdir(), 'fanout-tmpfs-probe-'))
const canMountTmpfs = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', tmpfsProbe]).status === 0
if (canMountTmpfs) spawnSync('umount', [tmpfsProbe])
rmSync(tmpfsProbe, { recursive: true, force: true })

async function smallFilesystem (t: Test): Promise<string> {
  const dir = tempDir(t, 'fanout-tmpfs-')
  t.equal(spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', dir]).status, 0, 'tmpfs mounted')
  t.teardown(() => { spawnSync('umount', [dir]) })
  return dir
}

t.test('UploadStore: writes that run out of space fail and leave no file, not even a partial one',
  { skip: canMountTmpfs ? false : 'needs root to mount a tmpfs' }, async (t) => {
    const dir = await smallFilesystem(t)
    const store = new UploadStore({ dir, minFreeBytes: 0 })
    await store.init()
    const freeBefore = await freeBytes(dir)

    // Four 40 KiB uploads at once pass the free-space check together (64 KiB free), then race for
    // the space: at most one fits, the others fail part way through their write.
    const files = [1, 2, 3, 4].map((n) => Buffer.alloc(40 * 1024, n))
    const results = await Promise.allSettled(files.map((f) => store.save(f)))
    const saved = results.flatMap((r) => r.status === 'fulfilled' ? [r.value] : [])
    const failed = results.flatMap((r) => r.status === 'rejected' ? [r.reason as unknown] : [])
    t.ok(failed.length >= 3, `${failed.length} of 4 failed`)
    for (const err of failed) {
      t.type(err, UploadError)
      t.equal((err as UploadError).code, 'disk_full')
    }
    t.same((await readdir(dir)).sort(), saved.map((s) => s.name).sort(), 'only whole uploads are in the directory')
    for (const s of saved) t.equal(sha256(await readFile(join(dir, s.name))), s.sha256, `${s.name} whole`)
    t.ok(saved.every((s) => files.some((f) => sha256(f) === s.sha256)), 'each saved file is one of the uploads')
    t.equal(await freeBytes(dir), freeBefore - saved.length * 40 * 1024, 'the partial writes were freed, not just hidden')
  })

t.test('UploadStore: the free-space floor refuses before writing',
  { skip: canMountTmpfs ? false : 'needs root to mount a tmpfs' }, async (t) => {
    const dir = await smallFilesystem(t)
    const store = new UploadStore({ dir, minFreeBytes: 32 * 1024 })
    await store.init()
    await t.rejects(store.save(Buffer.alloc(40 * 1024, 1)), { name: 'UploadError', code: 'disk_full' })
    const small = await store.save(Buffer.alloc(8 * 1024, 2))
    t.same(await readdir(dir), [small.name])
  })

function sha256 (data: Buffer): string {
  return createHash('sha256').update(data).digest('hex')
}

async function freeBytes (dir: string): Promise<number> {
  const fs = await statfs(dir)
  return fs.bavail * fs.bsize
}
