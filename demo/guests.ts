import type { EventBody } from '../lib/event.js'

// Guest names come from faker, an optional peer dependency: only the demo needs it, not the plugin.
const { fakerZH_CN: faker } = await import('@faker-js/faker').catch((err: Error) => {
  throw new Error(`the fastify-fanout demo needs @faker-js/faker for its guest names: npm install @faker-js/faker (${err.message})`)
})

export interface GuestBody extends EventBody {
  type: 'guest'
  guest: string
  time: string
  ts: number
}

/** A guest event as the seed article sends it (`{guest, time}`), plus `ts` for latency. */
export function makeGuest (now = new Date()): GuestBody {
  // The zh_CN locale writes a full name family name first, with no space: 张伟.
  return { type: 'guest', guest: faker.person.fullName(), time: clockTime(now), ts: now.getTime() }
}

/** `HH:MM:SS` in the server's local time zone, like the seed's dateFormat(…, "HH:MM:ss"). */
export function clockTime (date: Date): string {
  const pad = (n: number) => String(n).padStart(2, '0')
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`
}

/** A delay drawn uniformly from [min, max] milliseconds. */
export function nextDelay (minMs: number, maxMs: number, random: () => number = Math.random): number {
  return minMs + Math.floor(random() * (maxMs - minMs + 1))
}
