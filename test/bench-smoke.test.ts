// The benchmark harness at a tiny scale: every system starts, every client gets every event, and
// the report comes out with sane numbers. Speed itself is not asserted here (that is `npm run bench`).
import { copyFileSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import t from 'tap'
import type { Results } from '../bench/report.js'
import { LABELS, SYSTEMS } from '../bench/systems.js'
import { ROOT, run, tempDir } from './helper.js'

const CLIENTS = 20
const EVENTS = 50
const SCENARIOS = ['steady', 'burst', 'scale']

t.test('npm run bench at a tiny scale measures all four systems', async (t) => {
  // `npm test` builds the product; the bench has its own build (tsconfig.bench.json). Compiled in
  // place it would also rewrite the dist/lib files it imports while other test files load them:
  // it is compiled aside, and only dist/bench, which no other test loads, is put in place.
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc')
  const aside = tempDir(t, 'bench-build-')
  const build = run(t, process.execPath, [tsc, '-p', 'tsconfig.bench.json', '--outDir', aside])
  t.equal((await build.exited).code, 0, `the bench compiles: ${build.output()}`)
  for (const file of readdirSync(join(aside, 'bench'), { recursive: true, encoding: 'utf8' })) {
    const from = join(aside, 'bench', file)
    const to = join(ROOT, 'dist', 'bench', file)
    if (!statSync(from).isFile()) continue
    mkdirSync(dirname(to), { recursive: true })
    copyFileSync(from, `${to}.${process.pid}`)
    renameSync(`${to}.${process.pid}`, to) // whole or not at all, should anything read it meanwhile
  }

  const out = tempDir(t, 'bench-smoke-')
  const bench = run(t, process.execPath, [
    'dist/bench/run.js', `--clients=${CLIENTS}`, `--events=${EVENTS}`, '--rounds=1', '--rate=100',
    `--scenarios=${SCENARIOS.join(',')}`, '--client-procs=2', '--settle-ms=200', `--out=${out}`
  ])
  // SIGTERM, not the helper's SIGKILL, lets the harness take its redis-server and replicas down too.
  const timer = setTimeout(() => bench.kill('SIGTERM'), 120_000)
  const { code } = await bench.exited
  clearTimeout(timer)
  t.equal(code, 0, `the bench exits 0: ${bench.output().slice(-2000)}`)

  const table = bench.output()
  t.match(table, /\| system \| delivered \/ expected \| deliveries\/s \| server CPU µs\/delivery \| p50 ms \| p99 ms \|/)
  t.match(table, /## fastify-fanout ÷ baseline \(same run\)/)
  t.match(table, /## Targets \(issue 6\)/)
  const markdown = readFileSync(join(out, 'latest.md'), 'utf8')
  for (const label of Object.values(LABELS)) t.ok(markdown.includes(`| ${label} | 1,000 / 1,000 |`), `latest.md has a full row for ${label}`)

  const results = JSON.parse(readFileSync(join(out, 'latest.json'), 'utf8')) as Results
  t.ok(results.machine.cores > 0 && results.machine.cpu.length > 0 && results.machine.node === process.version, 'the machine is described')
  t.match(results.command, /dist\/bench\/run\.js --clients=20/)
  t.same(results.errors, [])
  t.equal(results.rows.length, SYSTEMS.length * SCENARIOS.length, 'one row per system and scenario')
  for (const row of results.rows) {
    const name = `${row.scenario} ${row.system}`
    t.equal(row.connected, CLIENTS, `${name}: every client connected`)
    t.equal(row.expected, CLIENTS * EVENTS, `${name}: expects clients × events`)
    t.equal(row.delivered, row.expected, `${name}: every client got every event`)
    t.ok(row.deliveriesPerSec > 0 && row.cpuUsPerDelivery > 0, `${name}: throughput and CPU are positive`)
    t.ok(row.p50Ms > 0 && row.p99Ms >= row.p50Ms && row.maxMs >= row.p99Ms, `${name}: 0 < p50 ≤ p99 ≤ max (${row.p50Ms}, ${row.p99Ms}, ${row.maxMs})`)
    t.ok(row.p99Ms < 60_000, `${name}: latencies are milliseconds, not clock skew`)
    if (row.scenario === 'scale') t.ok(Number.isFinite(row.rssPerConnKB) && (row.idleRssMB ?? 0) > 0, `${name}: RSS is read`)
  }
})
