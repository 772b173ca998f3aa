// Issue 5, "Fuzzing": thousands of random and mutated frames, from a fixed seed, thrown at the
// server over raw TCP connections (handshake first, a new connection per batch). Afterwards the
// server is up, serves a new client, has let go of every fuzz connection and has not grown.
import { readdir } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import t from 'tap'
import { build, connect, holds, waitFor } from '../support/helper.js'
import { closePayload, encodeFrame, Opcode, RawClient, servesNewClient } from '../support/raw-ws.js'
import { coreOf } from '../../plugins/fanout.js'

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

/**
 * What a batch of client frames, read as the server reads them, holds: the codes of its close
 * frames (which a server echoes), and whether it ends with a whole close frame. When it does not
 * (the last header claimed more bytes than followed and swallowed our close frame, or a message
 * is left unfinished) the server may rightly sit waiting for the rest.
 */
function readBatch (batch: Buffer): { closeCodes: Set<number>, endsWithClose: boolean } {
  const closeCodes = new Set<number>()
  let offset = 0
  let lastOpcode = -1
  while (offset < batch.length) {
    if (batch.length - offset < 2) return { closeCodes, endsWithClose: false }
    const opcode = batch[offset] & 0x0f
    const masked = (batch[offset + 1] & 0x80) !== 0
    let length = BigInt(batch[offset + 1] & 0x7f)
    let header = 2
    if (length === 126n) {
      if (batch.length - offset < 4) return { closeCodes, endsWithClose: false }
      length = BigInt(batch.readUInt16BE(offset + 2))
      header = 4
    } else if (length === 127n) {
      if (batch.length - offset < 10) return { closeCodes, endsWithClose: false }
      length = batch.readBigUInt64BE(offset + 2)
      header = 10
    }
    const key = masked ? batch.subarray(offset + header, offset + header + 4) : undefined
    header += masked ? 4 : 0
    if (BigInt(batch.length - offset - header) < length) return { closeCodes, endsWithClose: false }
    const payload = Buffer.from(batch.subarray(offset + header, offset + header + Number(length)))
    if (key) for (let i = 0; i < payload.length; i++) payload[i] ^= key[i & 3]
    if (opcode === Opcode.CLOSE && payload.length >= 2) closeCodes.add(payload.readUInt16BE(0))
    offset += header + Number(length)
    lastOpcode = opcode
  }
  return { closeCodes, endsWithClose: lastOpcode === Opcode.CLOSE }
}

/** The codes the server itself closes with: normal, protocol error, bad UTF-8, policy, too big. */
const SERVER_CODES = new Set([1000, 1002, 1007, 1008, 1009])

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
  // Connections whose close the server had no reason for: a code it neither owns nor was sent,
  // or no close at all although a whole close frame had arrived.
  const unexplained: string[] = []
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
    const bytes = Buffer.concat([...batch, encodeFrame({ opcode: Opcode.CLOSE, payload: closePayload(1000) })])
    const sent = readBatch(bytes)
    raw.write(bytes)
    // The server closes on the first bad frame, or answers the close; one rightly still waiting
    // for bytes is cut off after 200 ms. Owed a close, it gets 10 s, however busy the machine.
    const { code } = await Promise.race([raw.closed, sleep(sent.endsWithClose ? 10_000 : 200).then(() => ({ code: 'none' as const }))])
    closeCodes.set(String(code), (closeCodes.get(String(code)) ?? 0) + 1)
    const explained = code === 'none'
      ? !sent.endsWithClose
      : code !== undefined && (SERVER_CODES.has(code) || sent.closeCodes.has(code))
    if (!explained && unexplained.length < 20) unexplained.push(`close ${code} after ${bytes.toString('hex').slice(0, 200)}`)
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
  await waitFor(() => coreOf(app).hub.size === 0, 10_000, 'the warm-up connections to go')
  const before = heapAfterGc()
  await fuzz(CONNECTIONS)
  const hubEmptied = await holds(() => coreOf(app).hub.size === 0, 30_000)
  const after = heapAfterGc()
  t.comment(`close codes: ${JSON.stringify(Object.fromEntries([...closeCodes].sort()))}`)
  t.comment(`${cases} cases over ${CONNECTIONS + CONNECTIONS / 5} connections; heap ${(before / 2 ** 20).toFixed(1)} MiB -> ${(after / 2 ** 20).toFixed(1)} MiB; ` +
    `${coreOf(app).stats.uploads} uploads, ${coreOf(app).stats.textMessages} text messages got through`)

  t.equal(refusedHandshakes, 0, 'every handshake was admitted')
  t.same(unexplained, [], 'every connection was closed with its own code or the one it sent, or was still owed bytes')
  t.ok((closeCodes.get('1002') ?? 0) > 0 && (closeCodes.get('1007') ?? 0) > 0, 'protocol errors (1002) and bad UTF-8 (1007) among them')
  t.ok(hubEmptied, `every fuzz connection left the hub (${coreOf(app).hub.size} left)`)
  t.ok(after - before < 4 * 2 ** 20, `the heap did not grow (${((after - before) / 2 ** 20).toFixed(1)} MiB)`)
  t.same(errorLines, [], 'nothing was logged as an error')
  t.notOk((await readdir(uploadDir)).some((f) => f.startsWith('.')), 'no temp file left behind')

  // Still serving: a fresh client gets a published event, and /ask still answers.
  t.ok(await servesNewClient(t, app, ws), 'a new client receives a published event')
  const ask = await connect(t, `${ws}/ask`)
  ask.socket.send('Hello, server!')
  t.ok(await holds(() => ask.events().length === 1), '/ask still answers')
})
