// Where a replica's CPU went: self time per function from a V8 .cpuprofile (`node --cpu-prof`),
// grouped into the categories that matter for the broadcast path.
import { readFileSync } from 'node:fs'

interface ProfileNode {
  id: number
  callFrame: { functionName: string, url: string, lineNumber: number }
  children?: number[]
}
/** `startTime` and the samples' times are V8 TimeTicks: µs of the machine's monotonic clock. */
interface CpuProfile { nodes: ProfileNode[], samples: number[], timeDeltas: number[], startTime: number }

/** A stretch of time, in µs of the monotonic clock (`process.hrtime`), to count samples in. */
export type Window = [startUs: number, endUs: number]

export function monotonicUs (): number {
  return Number(process.hrtime.bigint() / 1000n)
}

export interface ProfileSummary {
  /** Sampled time, idle excluded, in ms. */
  busyMs: number
  idleMs: number
  categories: Array<{ name: string, ms: number, share: number }>
  functions: Array<{ name: string, where: string, category: string, ms: number, share: number }>
}

// First match wins; checked against "<function> <where>", where is e.g. `node:net:927` or
// `dist/lib/hub.js:155`. Native functions (the syscalls among them) have no location.
const CATEGORIES: Array<[string, RegExp]> = [
  ['GC', /^\(garbage collector\) $/],
  ['write/writev syscalls (native)', /^(writeBuffer|writev|writeUtf8String|writeLatin1String|writeAsciiString|writeUcs2String) $/],
  ['socket reads', /^onStreamRead |^(readStart|readStop) $/],
  ['Node streams: Writable, cork/uncork, net.Socket writes', /node:internal\/streams|node:net|node:stream|node:internal\/stream_base_commons/],
  ['framing (ws Sender, Buffer.concat)', /ws\/lib\/sender|^(concat|allocUnsafe|allocate|from|byteLength) node:buffer/],
  ['ioredis, redis-parser (reading pub/sub)', /ioredis|redis-parser|standard-as-callback|cluster-key-slot|denque/],
  ['hub broadcast loop (lib/hub.js)', /dist\/lib\/hub\.js/],
  ['broker: receiving, ordering, dedupe (lib/redis/, lib/event.js)', /dist\/lib\/(redis\/|event\.js)/],
  ['the baseline server\'s own loop (bench/servers)', /dist\/bench\/servers/],
  ['Socket.IO, engine.io', /socket\.io|engine\.io/],
  ['ws (other than framing)', /ws\/lib/],
  ['event loop, nextTick, timers', /node:internal\/process\/task_queues|node:internal\/timers|node:timers|^\(program\) $|^runMicrotasks /],
  ['other dependencies (fastify, pino, ...)', /node_modules/]
]

export function categoryOf (functionName: string, url: string): string {
  const key = `${functionName} ${url}`
  for (const [name, pattern] of CATEGORIES) if (pattern.test(key)) return name
  return 'other'
}

/** Self time per function over the samples that fall in `windows` (all samples without). */
export function summarise (files: string[], windows: Window[] = [], top = 15): ProfileSummary {
  const selfMs = new Map<string, { name: string, where: string, ms: number }>()
  const counted = (us: number): boolean => windows.length === 0 || windows.some(([start, end]) => us >= start && us <= end)
  let idleMs = 0
  for (const file of files) {
    const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile
    const nodes = new Map(profile.nodes.map((node) => [node.id, node]))
    let at = profile.startTime
    for (let i = 0; i < profile.samples.length; i++) {
      at += profile.timeDeltas[i] ?? 0
      const node = nodes.get(profile.samples[i])
      if (!node || !counted(at)) continue
      const ms = (profile.timeDeltas[i] ?? 0) / 1000
      const { functionName, url, lineNumber } = node.callFrame
      if (functionName === '(idle)') { idleMs += ms; continue }
      const name = functionName || '(anonymous)'
      const where = url ? `${url.replace(/^file:\/\/.*?\/(node_modules|dist)\//, '$1/')}:${lineNumber + 1}` : ''
      const key = `${name} ${where}`
      const entry = selfMs.get(key) ?? { name, where, ms: 0 }
      entry.ms += ms
      selfMs.set(key, entry)
    }
  }
  const busyMs = [...selfMs.values()].reduce((sum, e) => sum + e.ms, 0)
  const byCategory = new Map<string, number>()
  const functions = [...selfMs.values()]
    .map((e) => ({ ...e, category: categoryOf(e.name, e.where), share: e.ms / busyMs }))
    .sort((a, b) => b.ms - a.ms)
  for (const f of functions) byCategory.set(f.category, (byCategory.get(f.category) ?? 0) + f.ms)
  return {
    busyMs,
    idleMs,
    categories: [...byCategory].map(([name, ms]) => ({ name, ms, share: ms / busyMs })).sort((a, b) => b.ms - a.ms),
    functions: functions.slice(0, top)
  }
}

export function profileMarkdown (summary: ProfileSummary): string {
  const pct = (share: number): string => `${(share * 100).toFixed(1)}%`
  return [
    `Sampled busy time ${summary.busyMs.toFixed(0)} ms (idle ${summary.idleMs.toFixed(0)} ms), self time:`,
    '',
    '| category | ms | share |',
    '|---|---:|---:|',
    ...summary.categories.map((c) => `| ${c.name} | ${c.ms.toFixed(0)} | ${pct(c.share)} |`),
    '',
    '| function | where | category | ms | share |',
    '|---|---|---|---:|---:|',
    ...summary.functions.map((f) => `| ${f.name} | ${f.where} | ${f.category} | ${f.ms.toFixed(0)} | ${pct(f.share)} |`)
  ].join('\n')
}
