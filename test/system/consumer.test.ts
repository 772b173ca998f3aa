// The package as a new user meets it: packed from a clean copy of the sources (so
// `prepack` must build dist/), installed into a separate app with its own fastify 5 from the
// registry, the README's example compiled with `tsc --strict` (NodeNext) and run, the typed client
// of docs/protocol.md compiled against it; an event
// published through its route reaches a WebSocket and an EventSource client, and after SIGTERM
// (the example's `app.close()`) the process exits on its own.
import { execFile } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { connect, freePort, ROOT, run, tempDir, waitFor } from '../support/helper.js'
import { packClean } from '../support/pack.js'

const exec = promisify(execFile)
const devDependencies = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).devDependencies as Record<string, string>

/** A documented example: the ts block after `<!-- name` in `file`. */
function example (file: string, name: string): string {
  const text = readFileSync(join(ROOT, file), 'utf8')
  const marker = text.indexOf(`<!-- ${name}`)
  const match = /```ts\n([\s\S]*?)```/.exec(text.slice(marker))
  if (marker === -1 || !match) throw new Error(`${file} has no ${name} block`)
  return match[1]
}

t.test('npm pack, install into a strict TypeScript app, the README example compiles, serves and exits', { timeout: 360_000 }, async (t) => {
  const dir = tempDir(t, 'fanout-consumer-')
  // A clean copy of what git tracks, no dist/: what a fresh clone packs.
  const { filename, files, npm } = await packClean(dir)
  const paths = files.map((f) => f.path)
  for (const needed of ['dist/app.js', 'dist/app.d.ts', 'dist/demo/plugin.js', 'dist/server.js', 'dist/worker.js', 'demo/public/index.html', 'demo/public/client.js', 'docs/protocol.md']) {
    t.ok(paths.includes(needed), `the tarball holds ${needed}`)
  }
  t.same(paths.filter((p) => /^(dist\/)?(test|bench|tools|cluster)\b|\.map$|^lib\/|\.ts$(?<!\.d\.ts)/.test(p)), [],
    'no tests, test helpers, benchmark, sources or source maps in the tarball')

  const app = join(dir, 'app')
  mkdirSync(app)
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }))
  writeFileSync(join(app, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, skipLibCheck: false, outDir: 'dist', types: ['node'] },
    include: ['app.ts']
  }))
  writeFileSync(join(app, 'app.ts'), example('README.md', 'consumer-example'))
  // The typed client of docs/protocol.md, a browser script: DOM types, no Node.
  const client = example('docs/protocol.md', 'typed-client')
  t.notMatch(client, /\bas [A-Z]|<[A-Z]\w*>\s*JSON/, 'the typed client casts nothing')
  writeFileSync(join(app, 'client.ts'), client)
  writeFileSync(join(app, 'client-missing-gap.ts'), client.replace(/ {4}case 'gap':[\s\S]*?break\n/, ''))
  const clientConfig = (file: string) => JSON.stringify({
    compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, skipLibCheck: false, noEmit: true, lib: ['ES2022', 'DOM'], types: [] },
    files: [file]
  })
  writeFileSync(join(app, 'tsconfig.client.json'), clientConfig('client.ts'))
  writeFileSync(join(app, 'tsconfig.missing-gap.json'), clientConfig('client-missing-gap.ts'))
  // The app's own fastify 5 from the registry, as a user's app has it; typescript and node types
  // as any TypeScript app has them. Nothing else: the package must bring what its types need.
  await npm(['install', join(dir, filename), 'fastify@5', `typescript@${devDependencies.typescript}`, `@types/node@${devDependencies['@types/node']}`], app)
  t.notOk(existsSync(join(app, 'node_modules/fastify-fanout/node_modules/fastify')), 'one fastify: the app\'s (a peer dependency, not a nested copy)')

  const tsc = await exec(join(app, 'node_modules/.bin/tsc'), ['-p', 'tsconfig.json'], { cwd: app }).then(() => '', (err: { stdout: string }) => err.stdout)
  t.equal(tsc, '', 'tsc --strict compiles the README example with no error')
  if (tsc !== '') return
  const compile = async (config: string) => exec(join(app, 'node_modules/.bin/tsc'), ['-p', config], { cwd: app }).then(() => '', (err: { stdout: string }) => err.stdout)
  t.equal(await compile('tsconfig.client.json'), '', 'the typed client compiles: every documented message type, an exhaustive switch')
  t.match(await compile('tsconfig.missing-gap.json'), /TS2322: Type 'GapMessage' is not assignable to type 'never'/,
    'and without its gap case the switch is no longer exhaustive: the compiler says which message is unhandled')
  t.ok(existsSync(join(app, 'node_modules/.bin/fastify-fanout')) && existsSync(join(app, 'node_modules/.bin/fastify-fanout-worker')), 'the server and the worker are installed as commands')
  t.notOk(existsSync(join(app, 'node_modules/@faker-js/faker')), 'faker is not installed for the plugin: only the demo needs it')
  t.notOk(existsSync(join(app, 'node_modules/fastify-fanout/node_modules/pino')), 'one pino: the package takes the range fastify takes')
  const bin = run(t, join(app, 'node_modules/.bin/fastify-fanout'), [], { PORT: String(await freePort()), REDIS_URL: undefined }, app)
  const binExit = await bin.exited
  t.equal(binExit.code, 1, 'the standalone server without faker: exits 1')
  t.match(bin.output(), /the fastify-fanout demo needs @faker-js\/faker for its guest names: npm install @faker-js\/faker/, 'and says what to install')
  // With faker, the command serves the demo from the package: fastify-fanout/demo, its page from demo/public.
  await npm(['install', `@faker-js/faker@${devDependencies['@faker-js/faker']}`], app)
  const standalonePort = await freePort()
  const standalone = run(t, join(app, 'node_modules/.bin/fastify-fanout'), [], { PORT: String(standalonePort), HOST: '127.0.0.1', GUEST_MIN_DELAY_MS: '50', GUEST_MAX_DELAY_MS: '100', REDIS_URL: undefined }, app)
  await waitFor(() => standalone.output().includes('Server listening') || standalone.child.exitCode !== null, 15_000, 'the standalone server to listen')
  const page = await (await fetch(`http://127.0.0.1:${standalonePort}/`)).text()
  t.match(page, /<meta name="fanout-stream" content="\/guest">/, 'the standalone server serves the demo page from the installed package')
  const guests = await connect(t, `ws://127.0.0.1:${standalonePort}/guest`)
  await guests.until((c) => c.json('guest').length >= 2, 10_000, 'guests from the in-process publisher')
  t.match(guests.json('guest')[0], { type: 'guest', guest: /\p{Script=Han}/u }, 'guest events with Chinese names')
  standalone.child.kill('SIGTERM')
  t.equal((await standalone.exited).code, 0, 'and stops on SIGTERM')
  t.ok(readdirSync(join(app, 'dist')).includes('app.js'))

  const port = await freePort()
  const proc = run(t, process.execPath, ['dist/app.js'], { PORT: String(port), REDIS_URL: undefined }, app)
  await waitFor(() => proc.output().includes('Server listening') || proc.child.exitCode !== null, 15_000, 'the example to listen')
  t.equal(proc.child.exitCode, null, 'the example runs')
  if (proc.child.exitCode !== null) return t.comment(proc.output())
  const base = `127.0.0.1:${port}`

  const ws = await connect(t, `ws://${base}/live/guest`)
  const abort = new AbortController()
  t.teardown(() => abort.abort())
  const stream = await fetch(`http://${base}/live/guest`, { headers: { accept: 'text/event-stream' }, signal: abort.signal })
  t.equal(stream.headers.get('content-type'), 'text/event-stream; charset=utf-8')
  let sse = ''
  const reading = (async () => {
    const decoder = new TextDecoder()
    try {
      for await (const chunk of stream.body as unknown as AsyncIterable<Uint8Array>) sse += decoder.decode(chunk, { stream: true })
    } catch {} // aborted at the end
  })()

  const published = await fetch(`http://${base}/news`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ text: 'hello' }) })
  const { id } = await published.json() as { id: string }
  t.match(id, /^\d+-\d+$/, 'publish resolved to the event id')
  await ws.until((c) => c.json('news').length === 1, 10_000, 'the event over the WebSocket')
  t.match(ws.json('news'), [{ id, type: 'news', text: 'hello' }], 'the WebSocket client got it')
  await waitFor(() => sse.includes(`id: ${id}\n`), 10_000, 'the event over EventSource')
  t.ok(sse.includes(`id: ${id}\ndata: ${ws.messages[0]}\n\n`), 'the EventSource client got it, with its id, the same bytes')
  t.equal((await fetch(`http://${base}/live/readyz`)).status, 200, 'readyPath under the prefix')
  t.equal((await fetch(`http://${base}/metrics`)).status, 404, 'routes not asked for are off')

  ws.socket.close()
  await ws.closed
  abort.abort()
  await reading
  const started = Date.now()
  proc.child.kill('SIGTERM')
  const exit = await Promise.race([proc.exited, new Promise<'hung'>((resolve) => setTimeout(() => resolve('hung'), 15_000))])
  t.same(exit, { code: 0, signal: null }, `app.close() and the process exits on its own (${Date.now() - started} ms)`)
})
