// The benchmark harness at a tiny scale: every system starts, every client gets every event, and
// the report comes out with sane numbers. Speed itself is not asserted here (that is `npm run bench`).
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import type { Results } from '../../bench/report.js'
import { LABELS, SYSTEMS } from '../../bench/systems.js'
import { buildBench } from '../support/bench.js'
import { run, tempDir } from '../support/helper.js'

const CLIENTS = 20
const EVENTS = 50
const SCENARIOS = ['steady', 'burst', 'scale']
const RATE = 100

// Its own deadlines, inside the runner's: the bench is stopped at BENCH_DEADLINE_MS, well before
// the test's timeout, so a slow machine gets the harness's output, not a bare timeout.
const BENCH_DEADLINE_MS = 420_000

t.test('npm run bench at a tiny scale measures every system this machine can run', { timeout: BENCH_DEADLINE_MS + 120_000 }, async (t) => {
  await buildBench(t)

  const out = tempDir(t, 'bench-smoke-')
  const bench = run(t, process.execPath, [
    'dist/bench/run.js', `--clients=${CLIENTS}`, `--events=${EVENTS}`, '--rounds=1', `--rate=${RATE}`,
    `--scenarios=${[...SCENARIOS, 'storm'].join(',')}`, '--client-procs=1', '--settle-ms=200', `--out=${out}`
  ])
  // SIGTERM, not the helper's SIGKILL, lets the harness take its redis-server and replicas down too.
  // Six systems, four scenarios: ~80 s on a quiet 2-core machine, several times that beside a CPU hog.
  const timer = setTimeout(() => bench.kill('SIGTERM'), BENCH_DEADLINE_MS)
  const { code } = await bench.exited
  clearTimeout(timer)
  t.equal(code, 0, `the bench exits 0: ${bench.output().slice(-2000)}`)

  const table = bench.output()
  t.match(table, /\| system \| delivered \/ expected \| deliveries\/s \| server CPU µs\/delivery \| p50 ms \| p99 ms \|/)
  t.match(table, /## fastify-fanout ÷ baseline \(same run\)/)
  t.match(table, /## Targets/)
  const markdown = readFileSync(join(out, 'latest.md'), 'utf8')
  const results = JSON.parse(readFileSync(join(out, 'latest.json'), 'utf8')) as Results
  // Nchan is the one system that needs more than npm ci (nginx and its module): a machine without
  // it runs the rest and says so; every other system is always measured.
  t.same(results.systems, SYSTEMS.filter((system) => !results.missing.some((m) => m.system === system)), 'every system runs unless reported missing')
  t.same(results.missing.map((m) => m.system).filter((system) => system !== 'nchan'), [], 'only Nchan may be missing')
  for (const { system, why } of results.missing) t.ok(markdown.includes(`**${LABELS[system]} not measured**: ${why}`), `latest.md says why ${system} was not measured`)
  for (const system of results.systems) t.ok(markdown.includes(`| ${LABELS[system]} | 1,000 / 1,000 |`), `latest.md has a full row for ${LABELS[system]}`)

  t.ok(results.machine.cores > 0 && results.machine.cpu.length > 0 && results.machine.node === process.version, 'the machine is described')
  t.match(results.command, /dist\/bench\/run\.js --clients=20/)
  t.same(results.errors, [])
  // The Cluster row is measured in steady only: what a Cluster costs against one Redis.
  const expectedRows = SCENARIOS.flatMap((scenario) => results.systems
    .filter((system) => system !== 'fanout-cluster' || scenario === 'steady').map((system) => `${scenario} ${system}`))
  t.same(results.rows.map((row) => `${row.scenario} ${row.system}`).sort(), expectedRows.sort(), 'one row per system and scenario, the Cluster in steady only')
  // The chart: a bar per system in each panel (steady CPU and p99, burst deliveries/s, scale
  // RSS per connection where it came out positive at this tiny scale).
  const svg = readFileSync(join(out, 'latest.svg'), 'utf8')
  const inScenario = (scenario: string) => results.rows.filter((row) => row.scenario === scenario)
  const bars = 2 * inScenario('steady').length + inScenario('burst').length + inScenario('scale').filter((row) => (row.rssPerConnKB ?? 0) > 0).length
  t.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/, 'latest.svg is an SVG')
  t.equal(svg.match(/<rect x=/g)?.length, bars, 'latest.svg has a bar per system in each panel')
  t.match(markdown, /## fastify-fanout on a 3-primary Redis Cluster ÷ on one Redis \(same run\)\n[^#]*\| steady \| \d/, 'the Cluster ratio is reported')
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

  // The reconnect storm: fastify-fanout's clients of the killed replica all resume, and miss nothing.
  t.same(results.storms.map((st) => st.system), ['fanout', 'floor'], 'the storm runs fastify-fanout and the floor')
  for (const st of results.storms) {
    t.equal(st.resuming, CLIENTS / 2, `storm ${st.system}: the killed replica's half of the clients reconnect`)
    t.equal(st.live, st.resuming, `storm ${st.system}: every one of them is live again`)
    t.ok(st.secondsToAllLive > 0 && st.secondsToAllLive < 60, `storm ${st.system}: time to all live is measured (${st.secondsToAllLive} s)`)
    t.ok(st.survivorsRssPeakMB >= st.survivorsRssBeforeMB && st.survivorsRssBeforeMB > 0, `storm ${st.system}: survivors' RSS is read`)
  }
  const fanout = results.storms.find((st) => st.system === 'fanout')
  t.equal(fanout?.gaps, 0, 'storm: a resumed fastify-fanout client misses no event')
  t.equal(fanout?.duplicates, 0, 'storm: and gets none twice')
  t.match(markdown, /## storm: 20 clients over 2 replicas/)
})
