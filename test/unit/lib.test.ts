// lib/ on its own: no Fastify, no sockets. What the rest of the product builds on.
import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { readdir, readFile, rm, stat, statfs, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { demoOptionsFromEnv } from '../../demo/options.js'
import { ConfigError, loadEnv } from '../../lib/config.js'
import { optionsFromEnv } from '../../lib/options.js'
import { compareIds, encodeBody, epochOf, ID_PATTERN, idOf, withId } from '../../lib/event.js'
import { clockTime, makeGuest, nextDelay } from '../../demo/guests.js'
import { MemoryBroker } from '../../lib/memory-broker.js'
import { originAllowed } from '../../lib/origins.js'
import { startPublisher } from '../../demo/publisher.js'
import { UploadError, UploadStore } from '../../lib/uploads.js'
import { tempDir, waitFor } from '../support/helper.js'

const CHINESE_NAME = /^[\u4e00-\u9fff]{2,4}$/
const PNG = Buffer.concat([Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex'), Buffer.alloc(64, 7)])

t.test('nextDelay stays within [min, max] and reaches both ends', async (t) => {
  t.equal(nextDelay(3000, 8000, () => 0), 3000, 'the lowest draw gives min')
  t.equal(nextDelay(3000, 8000, () => 0.999999999), 8000, 'the highest draw gives max')
  t.equal(nextDelay(3000, 8000, () => 0.5), 5500)
  t.equal(nextDelay(0, 0), 0, '0 and 0: as fast as possible')
  t.equal(nextDelay(250, 250), 250)

  // Math.random, many draws: every value of a small range occurs, nothing falls outside it.
  const counts = new Map<number, number>()
  for (let i = 0; i < 20_000; i++) {
    const d = nextDelay(10, 19)
    counts.set(d, (counts.get(d) ?? 0) + 1)
  }
  t.same([...counts.keys()].sort((a, b) => a - b), [10, 11, 12, 13, 14, 15, 16, 17, 18, 19], 'min, max and all between occur')
  // Uniform: 2000 expected per value; 1600 is more than 9 standard deviations away.
  for (const [value, n] of counts) t.ok(n > 1600 && n < 2400, `${value} drawn ${n} times of 20000`)

  const wide = Array.from({ length: 2000 }, () => nextDelay(3000, 8000))
  t.ok(wide.every((d) => Number.isInteger(d) && d >= 3000 && d <= 8000), 'integers within the bounds')
  t.ok(Math.min(...wide) < 3500 && Math.max(...wide) > 7500, 'spread over the whole range')
})

t.test('makeGuest: the event the seed sends, plus type and ts', async (t) => {
  const now = new Date(2024, 0, 2, 3, 4, 5)
  const guest = makeGuest(now)
  t.same(Object.keys(guest).sort(), ['guest', 'time', 'ts', 'type'])
  t.equal(guest.type, 'guest')
  t.match(guest.guest, CHINESE_NAME)
  t.equal(guest.time, '03:04:05')
  t.equal(guest.ts, now.getTime())
  t.equal(clockTime(new Date(2024, 0, 2, 23, 59, 9)), '23:59:09')

  const names = Array.from({ length: 200 }, () => makeGuest().guest)
  t.ok(names.every((n) => CHINESE_NAME.test(n)), 'every name is 2–4 Chinese characters')
  t.ok(new Set(names).size > 100, 'names vary')
  const fresh = makeGuest()
  t.match(fresh.time, /^\d\d:\d\d:\d\d$/)
  t.ok(Math.abs(fresh.ts - Date.now()) < 60_000, 'ts defaults to now')
})

t.test('event ids and bytes', async (t) => {
  t.ok(ID_PATTERN.test('1764082000000-0'))
  t.notOk(ID_PATTERN.test('abc'))
  t.notOk(ID_PATTERN.test('1-2-3'))
  t.ok(compareIds('1-0', '2-0') < 0)
  t.ok(compareIds('2-0', '1-5') > 0)
  t.ok(compareIds('5-2', '5-10') < 0, 'sequence compared as a number, not as text')
  t.ok(compareIds('99-0', '100-0') < 0, 'ms compared as a number, not as text')
  t.equal(compareIds('7-3', '7-3'), 0)
  t.ok(compareIds('9007199254740993-0', '9007199254740992-0') > 0, 'beyond 2^53: still exact')
  t.ok(compareIds('1764082000000-9999999999999999', '1764082000001-0') < 0)
  t.equal(compareIds('007-1', '7-1'), 0, 'leading zeros do not count')

  const body = encodeBody({ type: 'guest', guest: '张伟', time: '15:26:01', ts: 1 })
  const data = withId('1764082000000-3', 'e9Pq_2-x', body)
  t.equal(idOf(data), '1764082000000-3')
  t.equal(epochOf(data), 'e9Pq_2-x')
  t.same(JSON.parse(data.toString()), { id: '1764082000000-3', epoch: 'e9Pq_2-x', type: 'guest', guest: '张伟', time: '15:26:01', ts: 1 })

  t.throws(() => encodeBody({ type: 'guest', id: 'mine' }), TypeError, 'the id is the broker\'s')
  t.throws(() => encodeBody({ type: 'guest', epoch: 'mine' }), TypeError, 'the epoch is the broker\'s')
  t.throws(() => encodeBody({ guest: '张伟' } as never), TypeError, 'type is required')
  t.throws(() => encodeBody({ type: 3 } as never), TypeError, 'type is a string')
  t.throws(() => encodeBody(null as never), TypeError)
})

t.test('MemoryBroker: ids, delivery, history', async (t) => {
  const broker = new MemoryBroker(5)
  t.teardown(() => broker.close())
  const delivered: string[] = []
  await broker.subscribe((event) => delivered.push(idOf(event.data)))
  t.equal(broker.state, 'ready')

  // Published in one synchronous burst: most share a millisecond, ids must still grow.
  const ids = await Promise.all(Array.from({ length: 8 }, (_, i) => broker.publish({ type: 'guest', n: i })))
  for (let i = 1; i < ids.length; i++) t.ok(compareIds(ids[i - 1], ids[i]) < 0, `${ids[i - 1]} < ${ids[i]}`)
  t.equal(new Set(ids).size, 8)
  await new Promise(setImmediate)
  t.same(delivered, ids, 'the listener gets every event once, in id order')

  t.equal(broker.stats().historyLength, 5, 'the ring keeps historySize events')
  const all = await broker.history('0-0')
  t.same(all.first.map((e) => e.id), ids.slice(3), 'the oldest were trimmed')
  t.equal(all.lost, true, 'events after 0-0 were trimmed')

  const sinceTrimmed = await broker.history(ids[2])
  t.same(sinceTrimmed.first.map((e) => e.id), ids.slice(3))
  t.equal(sinceTrimmed.lost, false, 'since the last trimmed id: nothing after it is missing')

  const sinceOlder = await broker.history(ids[1])
  t.equal(sinceOlder.lost, true, 'ids[2] is after since and gone')

  const recent = await broker.history(ids[5])
  t.same(recent.first.map((e) => e.id), ids.slice(6))
  t.equal(recent.lost, false)
  t.same(JSON.parse(recent.first[0].data.toString()), { id: ids[6], epoch: broker.epoch, type: 'guest', n: 6 })

  const latest = await broker.history(ids[7])
  t.same(latest.first, [], 'nothing after the newest')
  t.equal(latest.lost, false)

  await broker.close()
  t.equal(broker.state, 'closed')
  await t.rejects(broker.publish({ type: 'guest' }), /closed/)
})

t.test('MemoryBroker: nothing lost while the history still holds everything', async (t) => {
  const broker = new MemoryBroker(100)
  t.teardown(() => broker.close())
  const ids = []
  for (let i = 0; i < 10; i++) ids.push(await broker.publish({ type: 'guest', n: i }))
  const history = await broker.history('0-0')
  t.same(history.first.map((e) => e.id), ids)
  t.equal(history.lost, false)
  t.same((await broker.history(ids[3])).first.map((e) => e.id), ids.slice(4))
})

t.test('MemoryBroker: a since ahead of the history, from an earlier run, or huge', async (t) => {
  const broker = new MemoryBroker(100)
  t.teardown(() => broker.close())
  const empty = await broker.history('0-0')
  t.same({ first: empty.first, lost: empty.lost, clamped: empty.clamped }, { first: [], lost: false, clamped: false }, '0-0 on an empty history: nothing missing')
  const beforeAnything = await broker.history('1764082000000-4')
  t.same({ lost: beforeAnything.lost, clamped: beforeAnything.clamped }, { lost: true, clamped: true }, 'a position in an empty history came from another run')

  const ids = []
  for (let i = 0; i < 5; i++) ids.push(await broker.publish({ type: 'guest', n: i }))
  const ahead = await broker.history(`${Number(ids[4].split('-')[0]) + 3_600_000}-0`)
  t.same({ first: ahead.first, from: ahead.from, lost: ahead.lost, clamped: ahead.clamped }, { first: [], from: ids[4], lost: false, clamped: true },
    'an hour ahead: clamped to the newest, so the next live event is not skipped')
  const huge = await broker.history('9999999999999999-9999999999999999')
  t.same({ from: huge.from, clamped: huge.clamped }, { from: ids[4], clamped: true }, 'more digits than a double holds: still ahead')
  const earlier = await broker.history('1000-0')
  t.same({ ids: earlier.first.map((e) => e.id), lost: earlier.lost }, { ids, lost: true }, 'an id from before this run: everything, and lost')
  t.equal(earlier.epoch, broker.epoch)
  t.ok(earlier.first.every((e) => JSON.parse(e.data.toString()).epoch === broker.epoch), 'every event names its epoch')
  t.not(new MemoryBroker(1).epoch, broker.epoch, 'each broker is a new epoch')
})

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

t.test('loadEnv: defaults, and one clear message per bad variable', async (t) => {
  const env = loadEnv({})
  t.equal(env.PORT, 8080)
  t.equal(env.HOST, '0.0.0.0')
  t.equal(env.GUEST_MIN_DELAY_MS, 3000)
  t.equal(env.GUEST_MAX_DELAY_MS, 8000)
  t.equal(env.UPLOAD_DIR, './uploads')
  t.equal(env.MAX_UPLOAD_BYTES, 10 * 1024 * 1024)
  t.equal(env.LOG_LEVEL, 'info')
  t.equal(env.METRICS_INTERVAL_MS, 10_000)
  t.equal(env.REDIS_URL, undefined)
  t.equal(env.ALLOWED_ORIGINS, undefined)
  t.equal(env.GUEST_COUNT, undefined)

  const set = loadEnv({ PORT: '9000', GUEST_MIN_DELAY_MS: '0', GUEST_MAX_DELAY_MS: '0', GUEST_COUNT: '5', HOST: '' })
  t.equal(set.PORT, 9000, 'numbers are read from strings')
  t.equal(set.GUEST_MAX_DELAY_MS, 0)
  t.equal(set.GUEST_COUNT, 5)
  t.equal(set.HOST, '0.0.0.0', 'an empty variable counts as unset')

  const badPort = configError(() => loadEnv({ PORT: 'abc' }))
  t.type(badPort, ConfigError)
  t.match(badPort.message, /PORT/)
  t.match(badPort.message, /"abc"/, 'shows the value it got')
  t.notMatch(badPort.message, /\n/, 'one line')

  t.match(configError(() => loadEnv({ PORT: '70000' })).message, /PORT/)
  const level = configError(() => loadEnv({ LOG_LEVEL: 'loud' }))
  t.match(level.message, /LOG_LEVEL .*one of fatal, error, warn, info, debug, trace, silent.*"loud"/, 'names the allowed values')
  t.notMatch(level.message, /;/, 'one message for one bad variable')
  t.match(configError(() => loadEnv({ PUBLISHER: 'yes' })).message, /PUBLISHER .*one of on, off/)
  t.match(configError(() => loadEnv({ MAX_UPLOAD_BYTES: '-1' })).message, /MAX_UPLOAD_BYTES/)
  t.match(configError(() => loadEnv({ REDIS_URL: 'localhost:6379' })).message, /REDIS_URL/)

  const range = configError(() => loadEnv({ GUEST_MIN_DELAY_MS: '9000', GUEST_MAX_DELAY_MS: '1000' }))
  t.type(range, ConfigError)
  t.match(range.message, /GUEST_MIN_DELAY_MS/)
  t.match(range.message, /GUEST_MAX_DELAY_MS/)

  const two = configError(() => loadEnv({ PORT: 'x', METRICS_INTERVAL_MS: 'y' }))
  t.match(two.message, /PORT/)
  t.match(two.message, /METRICS_INTERVAL_MS/)
})

function configError (fn: () => unknown): Error {
  try {
    fn()
  } catch (err) {
    return err as Error
  }
  throw new Error('expected a ConfigError')
}

t.test('optionsFromEnv and demoOptionsFromEnv: origins, publisher on without Redis and off with it', async (t) => {
  const publisher = (env: NodeJS.ProcessEnv) => demoOptionsFromEnv(loadEnv(env)).publisher
  t.same(publisher({}), { minDelayMs: 3000, maxDelayMs: 8000 }, 'publisher on when embedded')
  const embedded = optionsFromEnv(loadEnv({}))
  t.equal(embedded.redisUrl, undefined)
  t.equal(embedded.allowedOrigins, undefined, 'unset: same origin only')
  t.equal(embedded.uploadDir, './uploads')

  t.equal(publisher({ REDIS_URL: 'redis://127.0.0.1:1' }), false, 'off with Redis')
  t.same(publisher({ REDIS_URL: 'redis://127.0.0.1:1', PUBLISHER: 'on' }), { minDelayMs: 3000, maxDelayMs: 8000 })
  t.equal(publisher({ PUBLISHER: 'off' }), false)
  t.same(publisher({ GUEST_MIN_DELAY_MS: '10', GUEST_MAX_DELAY_MS: '20', GUEST_COUNT: '3' }), { minDelayMs: 10, maxDelayMs: 20, count: 3 })

  t.same(optionsFromEnv(loadEnv({ ALLOWED_ORIGINS: ' https://a.example , null,,http://b.example:8080 ' })).allowedOrigins,
    ['https://a.example', 'null', 'http://b.example:8080'])
  t.same(optionsFromEnv(loadEnv({ ALLOWED_ORIGINS: '*' })).allowedOrigins, ['*'])
})

t.test('originAllowed', async (t) => {
  const host = '127.0.0.1:8080'
  t.ok(originAllowed(undefined, host, []), 'no Origin: not a browser, admitted')
  t.ok(originAllowed('http://127.0.0.1:8080', host, []), 'same origin')
  t.ok(originAllowed('https://127.0.0.1:8080', host, []), 'same host and port behind TLS')
  t.ok(originAllowed('http://Example.COM', 'example.com', []), 'host compared case-insensitively')
  t.ok(originAllowed('http://example.com', 'EXAMPLE.com', []))
  t.notOk(originAllowed('http://127.0.0.1:9090', host, []), 'another port is another origin')
  t.notOk(originAllowed('http://evil.example', host, []), 'foreign origin')
  t.notOk(originAllowed('http://evil.example', undefined, []))
  t.notOk(originAllowed('null', host, []), 'file:// pages only when listed')
  t.notOk(originAllowed('not a url', host, []))
  t.ok(originAllowed('null', host, ['null']))
  t.ok(originAllowed('http://evil.example', host, ['http://evil.example']), 'listed exactly')
  t.notOk(originAllowed('http://evil.example:81', host, ['http://evil.example']), 'exact match, not a prefix')
  t.ok(originAllowed('http://anything.example', host, ['*']))
  t.ok(originAllowed('null', host, ['*']))
})

t.test('the publisher keeps to its schedule while the broker confirms nothing (Redis down)', async (t) => {
  let made = 0
  const run = startPublisher({
    publish: () => { made++; return new Promise<string>(() => {}) }, // never confirmed
    minDelayMs: 0,
    maxDelayMs: 0,
    count: 300,
    stallMs: 5
  })
  t.teardown(() => run.stop())
  await waitFor(() => made === 300, 10_000, '300 events made')
  t.equal(made, 300, 'made every event, past the 256 waiting for confirmation')
})

t.test('the publisher stays in step with a broker that confirms', async (t) => {
  const order: number[] = []
  let made = 0
  const run = startPublisher({
    publish: () => { const n = made++; return new Promise<string>((resolve) => setImmediate(() => { order.push(n); resolve(String(n)) })) },
    minDelayMs: 0,
    maxDelayMs: 0,
    count: 1000
  })
  await run.done
  t.equal(made, 1000)
  t.same(order, Array.from({ length: 1000 }, (_, i) => i), 'all confirmed, in order, before done resolves')
})
