// The run's headline figures as an SVG bar chart (bench/results/latest.svg, shown in the README and docs/performance.md):
// one panel per figure, one bar per system, every value printed at its bar. Plain SVG text, no
// dependency; a figure the run did not measure is left out.
import type { ChannelRow, ChannelsResult, ChannelSystem } from './channels.js'
import type { Results, Row } from './report.js'
import type { SystemName } from './systems.js'

interface Panel { title: string, scenario: string, value: (row: Row) => number | undefined, format: (n: number) => string }

const PANELS: Panel[] = [
  { title: 'steady: server CPU µs per delivery (lower is better)', scenario: 'steady', value: (r) => r.cpuUsPerDelivery, format: (n) => n.toFixed(2) },
  { title: 'steady: p99 latency, ms (lower is better)', scenario: 'steady', value: (r) => r.p99Ms, format: (n) => n.toFixed(1) },
  { title: 'burst: deliveries per second (higher is better)', scenario: 'burst', value: (r) => r.deliveriesPerSec, format: (n) => Math.round(n).toLocaleString('en-US') },
  { title: 'scale: RSS per idle connection, KB (lower is better)', scenario: 'scale', value: (r) => r.rssPerConnKB, format: (n) => n.toFixed(1) }
]

interface ChannelPanel { title: string, value: (row: ChannelRow) => number, format: (n: number) => string }

const CHANNEL_PANELS: ChannelPanel[] = [
  { title: 'channels: replica CPU µs per delivery (lower is better)', value: (r) => r.cpuSecPer1000 * 1000, format: (n) => n.toFixed(1) },
  { title: 'channels: p99 latency, ms (lower is better)', value: (r) => r.p99Ms, format: (n) => n.toFixed(0) },
  { title: 'channels: Redis CPU µs per publish (lower is better)', value: (r) => r.redisCpuUsPerPublish, format: (n) => n.toFixed(1) }
]

const WIDTH = 800
const MARGIN = 12
const LABEL_WIDTH = 240
const BAR_HEIGHT = 18
const GAP = 6
const VALUE_ROOM = 90
/** Short enough to sit left of a bar; docs/performance.md says what each is. */
const NAMES: Record<SystemName | ChannelSystem, string> = {
  fanout: 'fastify-fanout',
  'fanout-cluster': 'fastify-fanout, Redis Cluster',
  'socketio-sharded': 'Socket.IO + sharded adapter',
  floor: 'floor (bare ws, same write path)',
  nchan: 'Nchan',
  socketio: 'Socket.IO + redis-adapter',
  naive: 'naive ws'
}
const COLOURS: Record<SystemName | ChannelSystem, string> = {
  fanout: '#2563eb',
  'fanout-cluster': '#60a5fa',
  'socketio-sharded': '#f59e0b',
  floor: '#6b7280',
  nchan: '#059669',
  socketio: '#d97706',
  naive: '#dc2626'
}

const escape = (text: string): string => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')

type Bar = { system: SystemName | ChannelSystem, value: number }

/** The run's panels (and, when it ran them, the channels scenario's), every value at its bar. */
export function chartSvg (results: Results, channels?: ChannelsResult): string {
  const panels: Array<{ title: string, format: (n: number) => string, bars: Array<{ system: SystemName | ChannelSystem, value: number | undefined }> }> = [
    ...PANELS.map((panel) => ({
      ...panel,
      bars: results.rows.filter((row) => row.scenario === panel.scenario).map((row) => ({ system: row.system, value: panel.value(row) }))
    })),
    ...CHANNEL_PANELS.map((panel) => ({ ...panel, bars: (channels?.rows ?? []).map((row) => ({ system: row.system, value: panel.value(row) })) }))
  ]
  const parts: string[] = []
  let y = 40
  for (const panel of panels) {
    const bars = panel.bars.filter((bar): bar is Bar => bar.value !== undefined && Number.isFinite(bar.value) && bar.value > 0)
    if (bars.length === 0) continue
    const max = Math.max(...bars.map((bar) => bar.value))
    parts.push(`<text x="0" y="${y}" class="title">${escape(panel.title)}</text>`)
    y += 10
    for (const bar of bars) {
      const length = Math.max(1, ((WIDTH - 2 * MARGIN - LABEL_WIDTH - VALUE_ROOM) * bar.value) / max)
      parts.push(
        `<text x="${LABEL_WIDTH - 8}" y="${y + BAR_HEIGHT - 5}" class="label">${escape(NAMES[bar.system])}</text>`,
        `<rect x="${LABEL_WIDTH}" y="${y}" width="${length.toFixed(1)}" height="${BAR_HEIGHT}" fill="${COLOURS[bar.system]}"/>`,
        `<text x="${(LABEL_WIDTH + length + 6).toFixed(1)}" y="${y + BAR_HEIGHT - 5}" class="value">${escape(panel.format(bar.value))}</text>`)
      y += BAR_HEIGHT + GAP
    }
    y += 30
  }
  const caption = `npm run bench, ${results.startedAt.slice(0, 16).replace('T', ' ')} UTC; ${results.machine.cores} cores, ` +
    `Node ${results.machine.node}; medians of rounds, all systems in the same run (latest.md beside this chart)`
  parts.push(`<text x="0" y="${y - 10}" class="caption">${escape(caption)}</text>`)
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${y}" viewBox="0 0 ${WIDTH} ${y}" font-family="system-ui, sans-serif">`,
    '<style>.title{font-size:15px;font-weight:600;fill:#111827}.label{font-size:13px;text-anchor:end;fill:#374151}' +
      '.value{font-size:12px;fill:#111827}.caption{font-size:10.5px;fill:#6b7280}</style>',
    `<rect width="${WIDTH}" height="${y}" fill="#ffffff"/>`,
    `<g transform="translate(${MARGIN},0)">`,
    ...parts,
    '</g>',
    '</svg>',
    ''
  ].join('\n')
}
