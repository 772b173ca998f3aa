// What the channel tests share: a fanout.v1 subscriber of /stream, and the check that every
// (client, channel) ended with every event of its channel exactly once and in order, or was told.
import { setTimeout as sleep } from 'node:timers/promises'
import type { Test } from 'tap'
import { connect, type TestApp, type TestClient } from './helper.js'

type Tap = Test

/** A fanout.v1 client of `/stream`, subscribed (acknowledged) to every channel of `channels`. */
export async function subscriber (t: Tap, app: TestApp, channels: string[], timeoutMs = 30_000): Promise<TestClient> {
  const client = await connect(t, `${app.ws}/stream`, { protocols: ['fanout.v1'] })
  for (const channel of channels) client.socket.send(JSON.stringify({ type: 'subscribe', channel }))
  await client.until((c) => channels.every((ch) => c.json('subscribed').some((m) => m.channel === ch)) || c.json('error').length > 0,
    timeoutMs, `${channels.length} subscribed`)
  if (client.json('error').length > 0) t.fail('a subscribe was refused', { errors: client.json('error') })
  return client
}

/**
 * Waits until each client has the last event of each of its channels (or a gap notice for it),
 * then compares what each received with `expected` (the confirmed ids per channel, in order).
 * A (client, channel) that differs and was told of no gap fails the test; the counts are returned.
 */
export async function checkEveryChannel (t: Tap, clients: TestClient[], channelsOf: (i: number) => string[], expected: Map<string, string[]>): Promise<{ exact: number, told: string[] }> {
  const received = (client: TestClient, channel: string) => client.json('chat').filter((e) => e.channel === channel).map((e) => String(e.id))
  const done = (client: TestClient, mine: string[]) => mine.every((ch) => {
    const want = expected.get(ch) ?? []
    return want.length === 0 || received(client, ch).includes(want[want.length - 1]) || client.json('gap').some((g) => g.channel === ch)
  })
  await Promise.all(clients.map((c, i) => c.until((client) => done(client, channelsOf(i)), 60_000, `client ${i}: the last event of each channel`)))
  await sleep(300) // room for a duplicate to show
  let exact = 0
  const told: string[] = []
  for (const [i, client] of clients.entries()) {
    for (const channel of channelsOf(i)) {
      const got = received(client, channel)
      const want = expected.get(channel) ?? []
      const gaps = client.json('gap').filter((g) => g.channel === channel)
      if (gaps.length > 0) told.push(`client ${i} ${channel}: ${JSON.stringify(gaps)}`)
      if (got.length === want.length && got.every((id, k) => id === want[k])) exact++
      else if (gaps.length === 0) t.fail(`client ${i} ${channel}: got ${got.length} of ${want.length}, not in order or not once, and not told`, { got, want })
    }
    const foreign = client.json('chat').filter((e) => !channelsOf(i).includes(String(e.channel)))
    if (foreign.length > 0) t.fail(`client ${i}: events of channels it did not subscribe to`, { foreign })
  }
  return { exact, told }
}
