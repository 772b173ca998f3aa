// Issue 5, "Fuzzing": thousands of random and mutated frames, from a fixed seed, thrown at the
// server over raw TCP connections (handshake first, a new connection per batch). Afterwards the
// server is up, serves a new client, has let go of every fuzz connection and has not grown.
import { readdir } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import t from 'tap'
import { build, connect, waitFor } from './helper.js'
import { closePayload, encodeFrame, Opcode, RawClient, servesNewClient } from './raw-ws.js'

const SEED = Number(process.env.FUZZ_SEED ?? 0x5eed5)
const CONNECTIONS = 2000
const MAX_CASES_PER_CONNECTION = 4
const PARALLEL = 16

/** mulberry32: a tiny seeded PRNG, so a failing run can be replayed with its FUZZ_SEED. */
function mulberry32 (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = Math.imul(a ^ (a >>> 15), 1 | a)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

const random = mulberry32(SEED)
const int = (n: number): number => Math.floor(random() * n)
const pick = <T>(items: readonly T[]): T => items[int(items.length)]
const bytes = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => int(256)))

const TEXTS = ['Hello, server!', '你好，服务器', '', '{"type":"guest"}', '🙂'.repeat(40), 'x'.repeat(300)]
const CLOSE_CODES = [1000, 1001, 1003, 1008, 1011, 3000, 4999]

/** A frame a well-behaved client could send. */
function validFrame (): Buffer {
  switch (int(6)) {
    case 0: return encodeFrame({ opcode: Opcode.TEXT, payload: pick(TEXTS) })
    case 1: return encodeFrame({ opcode: Opcode.BINARY, payload: bytes(int(2048)) })
    case 2: return encodeFrame({ opcode: Opcode.PING, payload: bytes(int(126)) })
    case 3: return encodeFrame({ opcode: Opcode.PONG, payload: bytes(int(126)) })
    case 4: return encodeFrame({ opcode: Opcode.CLOSE, payload: closePayload(pick(CLOSE_CODES), 'bye') })
    default: return Buffer.concat([
      encodeFrame({ opcode: Opcode.TEXT, fin: false, payload: 'frag' }),
      encodeFrame({ opcode: Opcode.CONTINUATION, fin: false, payload: bytes(int(64)) }),
      encodeFrame({ opcode: Opcode.CONTINUATION, payload: 'ment' })
    ])
  }
}

/** One fuzz case: valid, bit-flipped, a random header, a truncated header, or noise. */
function fuzzCase (): Buffer {
  switch (int(5)) {
    case 0: return validFrame()
    case 1: {
      const frame = validFrame()
      for (let flips = 1 + int(4); flips > 0; flips--) {
        const bit = int(Math.min(frame.length, 16) * 8) // mostly in the header, where it matters
        frame[bit >> 3] ^= 1 << (bit & 7)
      }
      return frame
    }
    case 2: return encodeFrame({
      opcode: int(16),
      fin: random() < 0.7,
      rsv: random() < 0.8 ? 0 : int(8),
      mask: random() < 0.9,
      payload: bytes(int(300)),
      length: pick([undefined, int(126), 126 + int(65_000), 65_536 + int(1 << 20), BigInt(int(2 ** 31)) << BigInt(int(33))])
    })
    case 3: return validFrame().subarray(0, 1 + int(6))
    default: return bytes(int(200))
  }
}

/** `gc` without --expose-gc on the command line (tap starts the process). */
function collectGarbage (): () => void {
  setFlagsFromString('--expose-gc')
  return runInNewContext('gc') as () => void
}

t.test(`random and mutated frames (seed ${SEED}) do not crash, leak or wedge the server`, async (t) => {
  const { app, ws, port, logs, uploadDir } = await build(t, { maxUploadBytes: 64 * 1024 })
  const gc = collectGarbage()
  // Fuzz connections are many: each cleans up itself, and the teardown only catches stragglers.
  const live = new Set<RawClient>()
  t.teardown(() => { for (const raw of live) raw.destroy() })
  const noTeardown = { teardown: () => {} }
  let refusedHandshakes = 0

  const closeCodes = new Map<string, number>()
  let cases = 0
  async function fuzzConnection (): Promise<void> {
    const batch = Array.from({ length: 1 + int(MAX_CASES_PER_CONNECTION) }, fuzzCase)
    cases += batch.length
    let raw: RawClient
    try {
      raw = await RawClient.open(noTeardown, port, { path: pick(['/guest', '/ask']), protocols: random() < 0.5 ? ['fanout.v1'] : undefined })
    } catch {
      refusedHandshakes++
      return
    }
    live.add(raw)
    // The batch, then a clean close: a server that found it all valid closes with 1000 at once.
    raw.write(Buffer.concat([...batch, encodeFrame({ opcode: Opcode.CLOSE, payload: closePayload(1000) })]))
    // The server closes on the first bad frame; one still waiting for a payload is cut off here.
    const { code } = await Promise.race([raw.closed, sleep(200).then(() => ({ code: 'none' }))])
    closeCodes.set(String(code), (closeCodes.get(String(code)) ?? 0) + 1)
    raw.destroy()
    await raw.ended
    live.delete(raw)
  }

  async function fuzz (connections: number): Promise<void> {
    let next = 0
    await Promise.all(Array.from({ length: PARALLEL }, async () => {
      while (next++ < connections) await fuzzConnection()
    }))
  }

  // The captured log lines live in this heap too: checked for errors, then let go before measuring.
  const errorLines: unknown[] = []
  const heapAfterGc = (): number => {
    errorLines.push(...logs.lines.filter((l) => (l.level as number) >= 50))
    logs.lines.length = 0
    gc()
    gc()
    return process.memoryUsage().heapUsed
  }
  await fuzz(CONNECTIONS / 5) // warm-up: every code path loaded, every pool allocated
  await waitFor(() => app.fanout.hub.size === 0, 10_000, 'the warm-up connections to go')
  const before = heapAfterGc()
  await fuzz(CONNECTIONS)
  await waitFor(() => app.fanout.hub.size === 0, 10_000, 'every fuzz connection to leave the hub')
  const after = heapAfterGc()
  t.comment(`close codes: ${JSON.stringify(Object.fromEntries([...closeCodes].sort()))}`)
  t.comment(`${cases} cases over ${CONNECTIONS + CONNECTIONS / 5} connections; heap ${(before / 2 ** 20).toFixed(1)} MiB -> ${(after / 2 ** 20).toFixed(1)} MiB; ` +
    `${app.fanout.stats.uploads} uploads, ${app.fanout.stats.textMessages} text messages got through`)

  t.equal(refusedHandshakes, 0, 'every handshake was admitted')
  t.equal(app.fanout.hub.size, 0, 'hub.size is back to 0')
  t.ok(after - before < 4 * 2 ** 20, `the heap did not grow (${((after - before) / 2 ** 20).toFixed(1)} MiB)`)
  t.same(errorLines, [], 'nothing was logged as an error')
  t.notOk((await readdir(uploadDir)).some((f) => f.startsWith('.')), 'no temp file left behind')

  // Still serving: a fresh client gets a published event, and /ask still answers.
  t.ok(await servesNewClient(t, app, ws), 'a new client receives a published event')
  const ask = await connect(t, `${ws}/ask`)
  ask.socket.send('Hello, server!')
  await ask.until((c) => c.events().length === 1)
  t.pass('/ask still answers')
})
