// The channels scenarios of the benchmark (bench/channels.ts) at a tiny scale: every system of
// the channels run starts, every subscription gets every event of the window, the floor's ratio
// and the Cluster's placement come out. Speed itself is not asserted (that is `npm run bench`).
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import type { ChannelsResult } from '../../bench/channels.js'
import { buildBench } from '../support/bench.js'
import { run, tempDir } from '../support/helper.js'

// Its own deadline inside the file's: a slow machine gets the harness's output, not a bare timeout.
const BENCH_DEADLINE_MS = 240_000
t.setTimeout(BENCH_DEADLINE_MS + 60_000)

t.test('npm run bench -- --scenarios=channels,cluster-spread at a tiny scale', { timeout: BENCH_DEADLINE_MS + 60_000 }, async (t) => {
  await buildBench(t)
  const out = tempDir(t, 'bench-channels-smoke-')
  const bench = run(t, process.execPath, [
    'dist/bench/run.js', '--scenarios=channels,cluster-spread', '--systems=fanout,floor,socketio', '--channels=200',
    '--channel-clients=300', '--publish-rate=100', '--channel-seconds=3', '--client-procs=1', '--settle-ms=200', `--out=${out}`
  ])
  // SIGTERM lets the harness take its redis-servers and replicas down too.
  const timer = setTimeout(() => bench.kill('SIGTERM'), BENCH_DEADLINE_MS)
  const { code } = await bench.exited
  clearTimeout(timer)
  t.equal(code, 0, `the bench exits 0: ${bench.output().slice(-2000)}`)

  const { channels } = JSON.parse(readFileSync(join(out, 'latest.json'), 'utf8')) as { channels: ChannelsResult }
  t.same(channels.errors, [], 'no errors')
  t.same(channels.rows.map((row) => row.system), ['fanout', 'floor', 'socketio', 'socketio-sharded', 'fanout-cluster'],
    'fastify-fanout, the floor, both Socket.IO adapters and the Cluster run')
  for (const row of channels.rows) {
    t.equal(row.connected, 300, `${row.system}: every client connected`)
    t.equal(row.probeDelivered, row.probeExpected, `${row.system}: the probe reached every subscription`)
    t.ok(row.expected > 0, `${row.system}: the window expects deliveries (${row.expected})`)
    t.equal(row.delivered, row.expected, `${row.system}: every subscription got every event of the window`)
    t.ok(row.cpuSecPer1000 > 0 && row.p99Ms >= row.p50Ms && row.p50Ms > 0, `${row.system}: CPU and latency are read`)
  }
  const markdown = readFileSync(join(out, 'latest.md'), 'utf8')
  t.match(markdown, /Replica CPU per delivery ÷ the floor's: fastify-fanout \d+\.\d\d, fastify-fanout, 3-primary Redis Cluster \d+\.\d\d; the floor ÷ Socket\.IO rooms \+ redis-adapter: \d+\.\d\d\./,
    'the floor\'s ratios are reported')

  const cluster = channels.rows.find((row) => row.system === 'fanout-cluster')
  t.equal(cluster?.nodes?.length, 3, 'three primaries are read')
  const placed = (cluster?.nodes ?? []).reduce((sum, node) => sum + node.placed, 0)
  t.equal(placed, cluster?.publishes, 'every publish of the window is placed on the primary owning its channel\'s slot')
  t.ok((cluster?.nodes ?? []).every((node) => node.calls >= node.placed), 'each primary ran at least the publishes placed on it')
  t.match(markdown, /The hottest channel takes \d+\.\d% of the publishes/, 'the hottest channel\'s share is reported')
})
