// Routes under the user's control: embedded defaults, each route renamed or off, the
// prefix, uploads off, and registering twice.
import Fastify from 'fastify'
import t from 'tap'
import fanout from '../../app.js'
import fanoutDemo from '../../demo/plugin.js'
import { build, connect, httpStatus, tempDir } from '../support/helper.js'
import { coreOf } from '../../plugins/fanout.js'

/** The plugin as an app registers it: no test defaults, only what is passed. */
async function embedded (t: Parameters<typeof tempDir>[0], options: Parameters<typeof fanout>[1] = {}, setup?: (app: ReturnType<typeof Fastify>) => void) {
  const app = Fastify({ logger: false })
  t.teardown(() => app.close())
  setup?.(app)
  await app.register(fanout, { drainMs: 0, metricsIntervalMs: 0, ...options })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  return { app, url: `http://127.0.0.1:${port}`, ws: `ws://127.0.0.1:${port}` }
}

t.test('embedded defaults: the stream only, so the app keeps its own /, /metrics and health routes', async (t) => {
  const { app, url, ws } = await embedded(t, {}, (app) => {
    app.get('/metrics', async () => 'the app\'s own metrics')
    app.get('/', async () => 'the app\'s own page')
  })
  t.equal(await (await fetch(`${url}/metrics`)).text(), 'the app\'s own metrics', 'no FST_ERR_DUPLICATED_ROUTE: /metrics is the app\'s')
  t.equal(await (await fetch(`${url}/`)).text(), 'the app\'s own page')
  for (const path of ['/healthz', '/readyz', '/client.js', '/style.css']) t.equal(await httpStatus(`${url}${path}`), 404, `${path} is off`)
  await t.rejects(connect(t, `${ws}/ask`), /unexpected response 404/, '/ask is off')
  const client = await connect(t, `${ws}/guest`, { protocols: ['fanout.v1'] })
  const id = await app.fanout.publish({ type: 'news', text: 'hi' })
  await client.until((c) => c.json('news').length === 1)
  t.equal(client.json('news')[0].id, id, '/guest streams')
  client.socket.send(Buffer.from('a file'))
  await client.until((c) => c.json('error').length === 1)
  t.match(client.json('error')[0], { type: 'error', code: 'disabled' }, 'uploads are off: told so')
  t.equal(coreOf(app).stats.uploads, 0)
})

t.test('every route renamed', async (t) => {
  const { url, ws } = await build(t, {
    guestPath: '/live', askPath: '/talk', demoPath: '/demo', metricsPath: '/prom', healthPath: '/alive', readyPath: '/ready'
  })
  for (const path of ['/prom', '/alive', '/ready', '/demo', '/demo/client.js', '/demo/style.css']) t.equal(await httpStatus(`${url}${path}`), 200, `${path} answers`)
  for (const path of ['/metrics', '/healthz', '/readyz', '/', '/client.js']) t.equal(await httpStatus(`${url}${path}`), 404, `${path} is gone`)
  const page = await (await fetch(`${url}/demo`)).text()
  t.match(page, /<meta name="fanout-stream" content="\/live">/, 'the page is told the stream\'s path')
  t.match(page, /href="\/demo\/style\.css"/)
  t.match(page, /src="\/demo\/client\.js"/)
  t.notMatch(page, /"\/guest"|"\/client\.js"|"\/style\.css"/, 'no hard-coded path left')
  const talk = await connect(t, `${ws}/talk`)
  await talk.until((c) => c.messages.length === 1)
  await t.rejects(connect(t, `${ws}/guest`), /unexpected response 404/)
  await connect(t, `${ws}/live`)
})

t.test('every route off', async (t) => {
  const { url, ws, app } = await build(t, {
    guestPath: false, askPath: false, demoPath: false, metricsPath: false, healthPath: false, readyPath: false
  })
  for (const path of ['/guest', '/metrics', '/healthz', '/readyz', '/', '/client.js']) t.equal(await httpStatus(`${url}${path}`), 404, `${path} is off`)
  await t.rejects(connect(t, `${ws}/guest`), /unexpected response 404/)
  t.ok(await app.fanout.publish({ type: 'news' }), 'publishing still works (other replicas may stream)')
})

t.test('prefix: every route under it, the demo page\'s links too', async (t) => {
  const { url, ws, app } = await build(t, { prefix: '/rt' })
  for (const path of ['/rt/healthz', '/rt/readyz', '/rt/metrics', '/rt', '/rt/', '/rt/client.js', '/rt/style.css']) t.equal(await httpStatus(`${url}${path}`), 200, `${path} answers`)
  for (const path of ['/healthz', '/metrics', '/', '/client.js']) t.equal(await httpStatus(`${url}${path}`), 404, `${path} is not at the root`)
  const page = await (await fetch(`${url}/rt`)).text()
  t.match(page, /content="\/rt\/guest"/)
  t.match(page, /src="\/rt\/client\.js"/)
  const client = await connect(t, `${ws}/rt/guest`)
  const id = await app.fanout.publish({ type: 'news' })
  await client.until((c) => c.json('news').length === 1)
  t.equal(client.json('news')[0].id, id)
  await connect(t, `${ws}/rt/ask`)
})

t.test('registering twice on one server is a clear error, in the same scope or another', async (t) => {
  const app = Fastify({ logger: false })
  t.teardown(() => app.close())
  app.register(fanout, {})
  app.register(async (scope) => { await scope.register(fanout, { prefix: '/other' }) })
  await t.rejects(async () => { await app.ready() }, /fastify-fanout is already registered on this server: register it once/)

  const same = Fastify({ logger: false })
  t.teardown(() => same.close())
  same.register(fanout, {})
  same.register(fanout, {})
  await t.rejects(async () => { await same.ready() }, /fastify-fanout is already registered on this server/)
})

t.test('the demo registered under a prefix of its own: its page shows fanout\'s stream, wherever fanout put it', async (t) => {
  const app = Fastify({ logger: false })
  t.teardown(() => app.close())
  await app.register(fanout, { prefix: '/rt', guestPath: '/live', drainMs: 0, metricsIntervalMs: 0 })
  await app.register(fanoutDemo, { prefix: '/demo', demoPath: '/' })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const url = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`
  const page = await (await fetch(`${url}/demo/`)).text()
  t.match(page, /<meta name="fanout-stream" content="\/rt\/live">/, 'the page is told fanout\'s stream, not its own prefix')
  t.match(page, /src="\/demo\/client\.js"/, 'and its own assets under its own prefix')
  t.equal(await httpStatus(`${url}/demo/client.js`), 200)
})

t.test('fastify.fanout.history(since): what a resume replays, and a since that is not an id is refused', async (t) => {
  const { app } = await embedded(t)
  const ids: string[] = []
  for (let i = 0; i < 3; i++) ids.push(await app.fanout.publish({ type: 'news', text: `n${i}` }))
  const replay = await app.fanout.history(ids[0])
  t.same(replay.first.map((e) => e.id), ids.slice(1), 'the events after since')
  t.same(replay.first.map((e) => JSON.parse(e.data.toString()).text), ['n1', 'n2'], 'as the bytes clients get')
  t.equal(replay.lost, false, 'nothing lost')
  t.equal(replay.clamped, false, 'since is in the history')
  t.equal(replay.epoch, JSON.parse(replay.first[0].data.toString()).epoch, 'the history\'s epoch, as its events carry it')
  t.same(await replay.next(), [], 'then nothing: the newest was reached')
  t.throws(() => app.fanout.history('latest'), new TypeError('history: since must be an event id (<ms>-<seq>), got "latest"'))
})
