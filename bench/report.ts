// The bench's results: one row per scenario and system, the ratios of fastify-fanout to each
// baseline from the same run, and the issues' targets judged on those ratios.
import { LABELS, type SystemName } from './systems.js'

/** One measured round of one system. */
export interface RoundFigures { deliveriesPerSec: number, cpuUsPerDelivery: number, p50Ms: number, p99Ms: number }

export function median (values: number[]): number {
  if (values.length === 0) return NaN
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

/** deliveriesPerSec, cpuUsPerDelivery, p50Ms and p99Ms are medians of the measured rounds. */
export interface Row {
  scenario: string
  system: SystemName
  replicas: number
  clients: number
  connected: number
  events: number
  rate: number
  rounds: number
  expected: number
  delivered: number
  /** From the first publish of each round to the last receipt, summed over rounds. */
  seconds: number
  /** Per round: deliveries over the time from its first publish to its last receipt. */
  deliveriesPerSec: number
  /** utime + stime of all replicas over the measured rounds. */
  serverCpuSec: number
  cpuUsPerDelivery: number
  p50Ms: number
  p99Ms: number
  /** The slowest delivery of all rounds. */
  maxMs: number
  perRound: RoundFigures[]
  /** Load-client CPU: the busiest client process, and all of them, in % of one core. */
  clientCpuMaxPct: number
  clientCpuSumPct: number
  /** The whole machine (all cores) while measuring. */
  machineBusyPct: number
  idleRssMB?: number
  loadedRssMB?: number
  rssPerConnKB?: number
  connectSeconds?: number
}

/** The reconnect storm (bench/run.ts runStorm). */
export interface StormResult {
  system: SystemName
  replicas: number
  clients: number
  /** Clients of the killed replica, and how many of them were live again when measuring ended. */
  resuming: number
  live: number
  rate: number
  /** From the SIGKILL until the last of them received an event published after it; NaN if some never did. */
  secondsToAllLive: number
  p50SecondsToLive: number
  survivorsRssBeforeMB: number
  survivorsRssPeakMB: number
  rssGrowthMB: number
  /** Over every resuming client: events of the publisher's numbering never received, and received twice. */
  gaps: number
  duplicates: number
  /** Reconnect attempts refused or failed (each retried after 50–150 ms). */
  retries: number
  errors: string[]
}

export interface Results {
  startedAt: string
  command: string
  machine: { cpu: string, cores: number, ramGB: number, node: string, kernel: string, loadAvgAtStart: number[] }
  replicas: number
  clientProcs: number
  scenarios: Array<{ name: string, clients: number, events: number, rate: number, rounds: number }>
  /** The systems measured, and those left out because this machine cannot run them. */
  systems: SystemName[]
  missing: Array<{ system: SystemName, why: string }>
  rows: Row[]
  storms: StormResult[]
  errors: string[]
}

export interface Target {
  name: string
  /** The measured value the target is judged on, as printed. */
  measured: string
  pass: boolean | undefined
}

const BASELINES: SystemName[] = ['floor', 'nchan', 'socketio', 'naive']

function find (rows: Row[], scenario: string, system: SystemName): Row | undefined {
  return rows.find((r) => r.scenario === scenario && r.system === system)
}

const fixed = (n: number | undefined, digits: number): string => n === undefined || !Number.isFinite(n) ? '–' : n.toFixed(digits)
const thousands = (n: number): string => Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '–'

/** The issues' targets (6 and 13), each judged from medians of rounds of this run only. */
export function targets (rows: Row[]): Target[] {
  const ratio = (scenario: string, metric: keyof Row, a: SystemName, b: SystemName): number | undefined => {
    const x = find(rows, scenario, a)?.[metric]
    const y = find(rows, scenario, b)?.[metric]
    return typeof x === 'number' && typeof y === 'number' ? x / y : undefined
  }
  const judged = (name: string, value: number | undefined, pass: (v: number) => boolean, show: (v: number) => string): Target =>
    value === undefined || !Number.isFinite(value)
      ? { name, measured: 'not measured', pass: undefined }
      : { name, measured: show(value), pass: pass(value) }
  const rss = find(rows, 'scale', 'fanout')?.rssPerConnKB
  return [
    judged('steady: CPU per delivery ≤ Nchan\'s (issue 13)', ratio('steady', 'cpuUsPerDelivery', 'fanout', 'nchan'),
      (v) => v <= 1, (v) => `${v.toFixed(2)}× Nchan's`),
    judged('steady: p99 ≤ Nchan\'s (issue 13)', ratio('steady', 'p99Ms', 'fanout', 'nchan'),
      (v) => v <= 1, (v) => `${v.toFixed(2)}× Nchan's`),
    judged('steady: CPU per delivery ≤ 1.15× the floor', ratio('steady', 'cpuUsPerDelivery', 'fanout', 'floor'),
      (v) => v <= 1.15, (v) => `${v.toFixed(2)}× the floor`),
    judged('steady: CPU per delivery ≥ 1.3× better than Socket.IO', ratio('steady', 'cpuUsPerDelivery', 'socketio', 'fanout'),
      (v) => v >= 1.3, (v) => `${v.toFixed(2)}× better`),
    judged('burst: deliveries/s ≥ 3× Socket.IO (issues 6, 13)', ratio('burst', 'deliveriesPerSec', 'fanout', 'socketio'),
      (v) => v >= 3, (v) => `${v.toFixed(2)}×`),
    judged('scale: ≤ 10 KB RSS per idle connection', rss, (v) => v <= 10, (v) => `${v.toFixed(1)} KB`),
    judged('latency (4,000 × 10/s): p99 no worse than Socket.IO', ratio('latency', 'p99Ms', 'fanout', 'socketio'),
      (v) => v <= 1, (v) => `${v.toFixed(2)}× Socket.IO's p99`)
  ]
}

function describe (s: Results['scenarios'][number]): string {
  const pace = s.rate > 0 ? `${s.rate} events/s` : 'as fast as possible'
  const rounds = s.rounds > 1 ? ` × ${s.rounds} rounds` : ''
  return `${s.clients.toLocaleString('en-US')} clients, ${s.events} events${rounds}, ${pace}`
}

export function markdown (results: Results): string {
  const { machine, rows } = results
  const lines: string[] = [
    `# fastify-fanout benchmark, ${results.startedAt}`,
    '',
    `Command: \`${results.command}\``,
    '',
    `Machine: ${machine.cpu}, ${machine.cores} cores, ${machine.ramGB} GB RAM, Node ${machine.node}, Linux ${machine.kernel}; ` +
      `load average at start ${machine.loadAvgAtStart.join(' ')}. ${results.replicas} replicas of each system; ` +
      'load clients, publishers and redis-server run on the same machine, each in its own process.',
    '',
    'Columns: deliveries/s counts from the first publish of a round to the last receipt; server CPU is ' +
      'user + system time of all replicas of the system over its measured rounds, divided by deliveries; ' +
      'latency runs from the `ts` stamped at publish to receipt by the load client; client CPU is the ' +
      'busiest load-client process and all of them together, in % of one core; machine busy is all cores. ' +
      'In steady, burst and latency the systems take turns, round by round; deliveries/s, CPU, p50 and p99 ' +
      'are the medians of the rounds (each round listed below its table), max is the slowest delivery of all rounds.',
    ''
  ]
  for (const { system, why } of results.missing) lines.push(`**${LABELS[system]} not measured**: ${why}.`, '')
  for (const s of results.scenarios) {
    const scenarioRows = rows.filter((r) => r.scenario === s.name)
    if (scenarioRows.length === 0) continue
    const scale = s.name === 'scale'
    lines.push(`## ${s.name}: ${describe(s)}`, '')
    lines.push(`| system | delivered / expected | deliveries/s | server CPU µs/delivery | p50 ms | p99 ms |${scale ? ' RSS idle → loaded MB | RSS KB/conn | connect s |' : ''} client CPU max / sum % | machine busy % |`)
    lines.push(`|---|---:|---:|---:|---:|---:|${scale ? '---:|---:|---:|' : ''}---:|---:|`)
    for (const r of scenarioRows) {
      lines.push(`| ${LABELS[r.system]} | ${thousands(r.delivered)} / ${thousands(r.expected)} | ${thousands(r.deliveriesPerSec)} | ${fixed(r.cpuUsPerDelivery, 2)} | ` +
        `${fixed(r.p50Ms, 2)} | ${fixed(r.p99Ms, 2)} |` +
        (scale ? ` ${fixed(r.idleRssMB, 0)} → ${fixed(r.loadedRssMB, 0)} | ${fixed(r.rssPerConnKB, 1)} | ${fixed(r.connectSeconds, 1)} |` : '') +
        ` ${fixed(r.clientCpuMaxPct, 0)} / ${fixed(r.clientCpuSumPct, 0)} | ${fixed(r.machineBusyPct, 0)} |`)
    }
    lines.push('')
    if (s.rounds > 1) {
      lines.push('Rounds (CPU µs/delivery, p99 ms): ' + scenarioRows.map((r) =>
        `${LABELS[r.system]} ${r.perRound.map((x) => `${fixed(x.cpuUsPerDelivery, 2)}/${fixed(x.p99Ms, 0)}`).join(', ')}`).join('; ') + '.', '')
    }
  }

  const ratioRows: string[] = []
  for (const s of results.scenarios) {
    const fanout = find(rows, s.name, 'fanout')
    if (!fanout) continue
    for (const baseline of BASELINES) {
      const base = find(rows, s.name, baseline)
      if (!base) continue
      const rss = s.name === 'scale' ? fixed((fanout.rssPerConnKB ?? NaN) / (base.rssPerConnKB ?? NaN), 2) : '–'
      ratioRows.push(`| ${s.name} | ${LABELS[baseline]} | ${fixed(fanout.deliveriesPerSec / base.deliveriesPerSec, 2)} | ` +
        `${fixed(fanout.cpuUsPerDelivery / base.cpuUsPerDelivery, 2)} | ${fixed(fanout.p50Ms / base.p50Ms, 2)} | ${fixed(fanout.p99Ms / base.p99Ms, 2)} | ${rss} |`)
    }
  }
  if (ratioRows.length > 0) {
    lines.push('## fastify-fanout ÷ baseline (same run)', '',
      'deliveries/s: higher is better for fastify-fanout; CPU/delivery, latency and RSS: lower is better.', '',
      '| scenario | baseline | deliveries/s | CPU/delivery | p50 | p99 | RSS/conn |',
      '|---|---|---:|---:|---:|---:|---:|', ...ratioRows, '')
  }

  const clusterRows = results.scenarios.flatMap((s) => {
    const single = find(rows, s.name, 'fanout')
    const cluster = find(rows, s.name, 'fanout-cluster')
    if (!single || !cluster) return []
    return [`| ${s.name} | ${fixed(cluster.deliveriesPerSec / single.deliveriesPerSec, 2)} | ${fixed(cluster.cpuUsPerDelivery / single.cpuUsPerDelivery, 2)} | ` +
      `${fixed(cluster.p50Ms / single.p50Ms, 2)} | ${fixed(cluster.p99Ms / single.p99Ms, 2)} |`]
  })
  if (clusterRows.length > 0) {
    lines.push('## fastify-fanout on a 3-primary Redis Cluster ÷ on one Redis (same run)', '',
      'The same product, replica count, clients and schedule; only the Redis topology differs (ioredis Cluster, ' +
      'SSUBSCRIBE/SPUBLISH on the shard that owns the deployment\'s hash tag). Above 1 is what the Cluster costs: ' +
      'CPU/delivery is the replicas\' own, not the Redis servers\'.', '',
      '| scenario | deliveries/s | CPU/delivery | p50 | p99 |', '|---|---:|---:|---:|---:|', ...clusterRows, '')
  }

  if (results.storms.length > 0) {
    const s = results.storms[0]
    lines.push(`## storm: ${s.clients.toLocaleString('en-US')} clients over ${s.replicas} replicas, ${s.rate} events/s; one replica SIGKILLed, ` +
      'its clients reconnect at once to the others with `?since=<last id>`', '',
    'Live again: the client received an event published after the kill. RSS: the surviving replicas together, ' +
      'before the kill and at the peak until a few seconds after the last client was live. Gaps and duplicates: ' +
      'in the publisher\'s own numbering of the events, over all reconnecting clients.', '',
    '| system | live / reconnecting | all live after s | p50 s | survivors RSS before → peak MB | growth MB | gaps | duplicates | refused, retried |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|')
    for (const st of results.storms) {
      lines.push(`| ${LABELS[st.system]} | ${thousands(st.live)} / ${thousands(st.resuming)} | ${fixed(st.secondsToAllLive, 2)} | ${fixed(st.p50SecondsToLive, 2)} | ` +
        `${fixed(st.survivorsRssBeforeMB, 0)} → ${fixed(st.survivorsRssPeakMB, 0)} | ${fixed(st.rssGrowthMB, 0)} | ${thousands(st.gaps)} | ${thousands(st.duplicates)} | ${thousands(st.retries)} |`)
    }
    const fanout = results.storms.find((st) => st.system === 'fanout')
    const floor = results.storms.find((st) => st.system === 'floor')
    if (fanout && floor) {
      lines.push('', `fastify-fanout ÷ floor (a bare reconnect, no resume): time to all live ${fixed(fanout.secondsToAllLive / floor.secondsToAllLive, 2)}, ` +
        `RSS growth ${fixed(fanout.rssGrowthMB / floor.rssGrowthMB, 2)}, peak RSS ${fixed(fanout.survivorsRssPeakMB / floor.survivorsRssPeakMB, 2)}.`)
    }
    lines.push('')
  }

  lines.push('## Targets', '', '| target | measured | result |', '|---|---|---|')
  for (const target of targets(rows)) {
    lines.push(`| ${target.name} | ${target.measured} | ${target.pass === undefined ? 'not run' : target.pass ? 'pass' : 'FAIL'} |`)
  }
  if (results.errors.length > 0) lines.push('', '## Errors', '', ...results.errors.map((e) => `- ${e}`))
  return lines.join('\n')
}
