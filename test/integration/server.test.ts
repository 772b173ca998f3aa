// The standalone server (dist/server.js) as `npm start` runs it: configuration errors, the guest
// schedule, and a graceful stop. Build first: `npx tsc -p tsconfig.json` (npm test does).
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { connect, run, startServer, tempDir } from '../support/helper.js'

/** Runs the server with a bad environment; resolves to its exit code and what it printed. */
async function startBadly (t: Test, env: Record<string, string>) {
  const proc = run(t, process.execPath, ['dist/server.js'], { HOST: '127.0.0.1', PORT: '0', UPLOAD_DIR: tempDir(t), ...env })
  let stderr = ''
  proc.child.stderr?.on('data', (d) => { stderr += d })
  const { code } = await proc.exited
  return { code, stderr, output: proc.output() }
}

const badConfigs: Array<[string, (scratch: string) => Record<string, string>, string[]]> = [
  ['a port that is not a number', () => ({ PORT: 'abc' }), ['PORT', '"abc"']],
  ['a minimum delay over the maximum', () => ({ GUEST_MIN_DELAY_MS: '9000', GUEST_MAX_DELAY_MS: '1000' }), ['GUEST_MIN_DELAY_MS', 'GUEST_MAX_DELAY_MS']],
  ['an upload dir that is a regular file', (scratch) => {
    const file = join(scratch, 'not-a-dir')
    writeFileSync(file, 'x')
    return { UPLOAD_DIR: file }
  }, ['UPLOAD_DIR', 'not-a-dir']],
  ['an unknown log level', () => ({ LOG_LEVEL: 'loud' }), ['LOG_LEVEL', 'info']]
]

for (const [what, makeEnv, names] of badConfigs) {
  t.test(`bad configuration stops start-up with one clear line: ${what}`, async (t) => {
    const { code, stderr, output } = await startBadly(t, makeEnv(tempDir(t)))
    t.equal(code, 1, 'exits 1')
    const lines = stderr.trimEnd().split('\n')
    t.equal(lines.length, 1, `one line: ${stderr}`)
    for (const name of names) t.match(lines[0], name, `names ${name}`)
    t.notMatch(output, /^\s+at /m, 'no stack trace')
    t.notMatch(output, /Server listening/)
  })
}

t.test('guests arrive on the GUEST_MIN/MAX_DELAY_MS schedule', async (t) => {
  const server = await startServer(t, { GUEST_MIN_DELAY_MS: '200', GUEST_MAX_DELAY_MS: '400' })
  const client = await connect(t, `${server.ws}/guest`)
  await client.until((c) => c.events().length >= 5, 20_000, 'five guests')
  const events = client.events()
  for (const e of events) t.match(e, { type: 'guest', id: /^\d+-\d+$/, guest: /^[\u4e00-\u9fff]{2,4}$/, time: /^\d\d:\d\d:\d\d$/, ts: Number })
  // ts is taken after each wait, so consecutive events are at least the minimum apart. A busy
  // machine only ever makes a gap longer, so the upper end is held to the middle gap, which one
  // stall cannot move: below the 3 s default minimum, so the variables were read.
  const gaps = events.slice(1).map((e, i) => e.ts - events[i].ts)
  for (const gap of gaps) t.ok(gap >= 198, `gap ${gap} ms is at least GUEST_MIN_DELAY_MS, give or take a timer's rounding`)
  const median = [...gaps].sort((a, b) => a - b)[Math.floor(gaps.length / 2)]
  t.ok(median < 3000, `the middle gap (${median} ms) is far below the default 3 s minimum`)
})

t.test('SIGTERM closes connected clients with 1012 and exits 0', async (t) => {
  const server = await startServer(t, { DRAIN_MS: '200', PUBLISHER: 'off' })
  const clients = await Promise.all([1, 2, 3].map(() => connect(t, `${server.ws}/guest`)))
  server.child.kill('SIGTERM')
  for (const client of clients) {
    const { code, reason } = await client.closed
    t.equal(code, 1012, 'service restart')
    t.equal(reason, 'service restart')
  }
  const { code, signal } = await server.exited
  t.equal(code, 0)
  t.equal(signal, null)
  t.ok(server.logs().some((l) => l.msg === 'closing' && l.signal === 'SIGTERM'), 'logs why it closes')
})

t.test('TRUST_PROXY: the address behind one proxy is X-Forwarded-For\'s, for MAX_CONNECTIONS_PER_ADDRESS; unset, the proxy\'s own', async (t) => {
  const streamFrom = async (url: string, forwardedFor: string): Promise<number> => {
    const controller = new AbortController()
    t.teardown(() => controller.abort())
    const res = await fetch(`${url}/guest`, { headers: { accept: 'text/event-stream', 'x-forwarded-for': forwardedFor }, signal: controller.signal })
    return res.status
  }
  const behind = await startServer(t, { TRUST_PROXY: '1', MAX_CONNECTIONS_PER_ADDRESS: '1' })
  t.equal(await streamFrom(behind.url, '198.51.100.1'), 200, 'a first client')
  t.equal(await streamFrom(behind.url, '198.51.100.1'), 429, 'a second from the same address: over its share')
  t.equal(await streamFrom(behind.url, '198.51.100.2'), 200, 'another address still connects')
  const direct = await startServer(t, { MAX_CONNECTIONS_PER_ADDRESS: '1' })
  t.equal(await streamFrom(direct.url, '198.51.100.1'), 200, 'without TRUST_PROXY: a first client')
  t.equal(await streamFrom(direct.url, '198.51.100.2'), 429, 'X-Forwarded-For is not believed: both come from 127.0.0.1')
})
