// The demo page on fastify-fanout/client, in real headless Chromium: a server restarted for about
// 5 s (history in a real redis-server), WebSockets blocked by a real proxy and unblocked, two pages
// in one room, EventSource mode with what cannot work switched off, the favicon; and the seed
// article's own client, unchanged, beside it.
import { readFileSync, writeFileSync } from 'node:fs'
import { createServer, request as httpRequest, type Server } from 'node:http'
import { connect as netConnect, type Socket } from 'node:net'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import Fastify, { type FastifyInstance } from 'fastify'
import { chromium, type Page } from 'playwright-core'
import t, { type Test } from 'tap'
import fanout from '../../app.js'
import fanoutDemo from '../../demo/plugin.js'
import { STANDALONE } from '../../lib/options.js'
import { build, freePort, ROOT, startRedis, tempDir, waitFor } from '../support/helper.js'

const NAMESPACES = { room: { clientPublish: true, historySize: 200 } }

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking']
})
t.teardown(() => browser.close())

interface TestPage { page: Page, console: string[], errors: Error[], failed: string[] }

async function openPage (t: Test): Promise<TestPage> {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } })
  t.teardown(() => context.close())
  const page = await context.newPage()
  const opened: TestPage = { page, console: [], errors: [], failed: [] }
  page.on('console', (message) => opened.console.push(message.text()))
  page.on('pageerror', (err) => opened.errors.push(err))
  page.on('response', (res) => { if (res.status() >= 400) opened.failed.push(`${res.status()} ${res.url()}`) })
  return opened
}

/** The plugin and the demo page on a given port, on the test's Redis: a server that can be restarted in place. */
async function serve (t: Test, port: number, redisUrl: string): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(fanout, { ...STANDALONE, redisUrl, namespaces: NAMESPACES, drainMs: 0, metricsIntervalMs: 0, uploadMinFreeBytes: 0, uploadDir: tempDir(t, 'fanout-uploads-') })
  await app.register(fanoutDemo, { demoPath: '/' })
  t.teardown(() => app.close())
  await app.listen({ port, host: '127.0.0.1' })
  return app
}

let guestNumber = 0
const guest = () => ({ type: 'guest', guest: `张${String.fromCharCode(0x4e00 + guestNumber++)}`, time: '12:00:00', ts: Date.now() })

/** The ids the page lists, oldest first. */
const pageIds = (page: Page) => page.locator('#guests li').evaluateAll((lis) => lis.map((li) => (li as HTMLElement).dataset.id ?? '').reverse())
const stateOf = (page: Page) => page.evaluate(() => ({ text: document.getElementById('state')?.textContent, transport: document.getElementById('state')?.dataset.transport }))
const stateIs = (page: Page, text: string, timeout = 30_000) =>
  page.waitForFunction((expected) => document.getElementById('state')?.textContent === expected, text, { timeout })

t.test('a server restarted for 5 s: the page is back on WebSocket with every guest event, in order, once', async (t) => {
  const redis = await startRedis(t)
  const port = await freePort()
  let server = await serve(t, port, redis.url)
  // The publisher: another replica on the same Redis, which stays up.
  const { app: publisher } = await build(t, { redisUrl: redis.url })
  const { page, errors, failed } = await openPage(t)
  const states: string[] = []
  await page.exposeFunction('recordState', (s: string) => states.push(s))
  await page.addInitScript(() => {
    const seen = () => (window as unknown as { recordState (s: string): void }).recordState(document.getElementById('state')?.textContent ?? '')
    document.addEventListener('DOMContentLoaded', () => new MutationObserver(seen).observe(document.getElementById('state')!, { childList: true, characterData: true, subtree: true }))
  })
  await page.goto(`http://127.0.0.1:${port}/`)
  await stateIs(page, 'connected')

  const published: string[] = []
  for (let i = 0; i < 5; i++) published.push(await publisher.fanout.publish(guest()))
  await waitFor(async () => (await pageIds(page)).length === 5, 10_000, 'the first five events')

  await server.close() // a restart: 1012 to the page, then nothing listens
  const down = Date.now()
  for (let i = 0; i < 10; i++) published.push(await publisher.fanout.publish(guest()))
  await waitFor(() => Date.now() - down >= 5000, 10_000, 'five seconds down') // the scenario: a restart of about 5 s
  t.notOk(await page.evaluate(() => document.body.classList.contains('receive-only')), 'a restart is not a blocked WebSocket: no EventSource')
  server = await serve(t, port, redis.url)

  await stateIs(page, 'connected', 60_000)
  for (let i = 0; i < 5; i++) published.push(await publisher.fanout.publish(guest()))
  await waitFor(async () => (await pageIds(page)).length >= published.length, 30_000, 'every event on the page')
  await page.waitForTimeout(300) // room for a duplicate to show
  t.same(await pageIds(page), published, 'every event, in order, once')
  t.same(await stateOf(page), { text: 'connected', transport: 'websocket' }, 'back on WebSocket')
  t.notOk(states.some((s) => s.includes('EventSource')), 'never on EventSource')
  t.ok(states.some((s) => s.startsWith('disconnected (1012)')), 'the page said it was restarting')
  t.match(await page.locator('#recovered').textContent(), /^Reconnected: recovered 10 missed events\.$/, 'and what it recovered')
  t.same(errors, [], 'no errors in the page')
  t.same(failed, [], 'no failed request, the favicon included')
})

/** A real HTTP proxy in front of `target` that can refuse WebSocket upgrades (403), as some proxies do. */
async function proxy (t: Test, target: number): Promise<{ port: number, blocked: boolean, refused: number }> {
  const sockets = new Set<Socket>()
  const state = { port: 0, blocked: true, refused: 0 }
  const server: Server = createServer((req, res) => {
    const upstream = httpRequest({ host: '127.0.0.1', port: target, path: req.url, method: req.method, headers: req.headers }, (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers)
      up.pipe(res)
    })
    upstream.on('error', () => res.destroy())
    req.pipe(upstream)
  })
  server.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)) })
  server.on('upgrade', (req, socket: Socket, head: Buffer) => {
    if (state.blocked) {
      state.refused++
      socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n')
      return
    }
    const upstream = netConnect(target, '127.0.0.1', () => {
      const headers = Object.entries(req.headers).flatMap(([k, v]) => (Array.isArray(v) ? v : [v]).map((x) => `${k}: ${x}\r\n`)).join('')
      upstream.write(`${req.method} ${req.url} HTTP/1.1\r\n${headers}\r\n`)
      upstream.write(head)
      upstream.pipe(socket)
      socket.pipe(upstream)
    })
    sockets.add(upstream)
    for (const s of [socket, upstream]) s.on('error', () => {}).on('close', () => { socket.destroy(); upstream.destroy() })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const s of sockets) s.destroy()
    server.close()
  })
  state.port = (server.address() as { port: number }).port
  return state
}

t.test('WebSockets blocked at a proxy: EventSource, sending off with the reason shown; unblocked: back on WebSocket', async (t) => {
  const { app, port } = await build(t)
  const gate = await proxy(t, port)
  const { page, errors } = await openPage(t)
  const published: string[] = []
  await page.goto(`http://127.0.0.1:${gate.port}/?probe=2000`)
  await stateIs(page, 'connected (EventSource)')
  t.ok(gate.refused >= 3, 'it tried WebSockets first')
  for (const selector of ['#text', '#say button', '#file']) t.ok(await page.locator(selector).isDisabled(), `${selector} is disabled`)
  const why = page.locator('.why-off').first()
  t.ok(await why.isVisible(), 'with the reason visible')
  t.match(await why.textContent(), /Needs a WebSocket/)
  for (let i = 0; i < 3; i++) published.push(await app.fanout.publish(guest()))
  await waitFor(async () => (await pageIds(page)).length === 3, 10_000, 'events over EventSource')

  gate.blocked = false
  await stateIs(page, 'connected')
  t.equal((await stateOf(page)).transport, 'websocket')
  for (let i = 0; i < 3; i++) published.push(await app.fanout.publish(guest()))
  await waitFor(async () => (await pageIds(page)).length >= 6, 10_000, 'events over the WebSocket')
  await page.waitForTimeout(300)
  t.same(await pageIds(page), published, 'every event once, in order, across the switch')
  t.ok(await page.locator('#text').isEnabled(), 'sending is on again')
  t.ok(await page.locator('.why-off').first().isHidden(), 'and the reason gone')
  t.same(errors, [], 'no errors in the page')
})

t.test('EventSource mode (?transport=sse): events arrive, sending is switched off and says why', async (t) => {
  const { app, url, logs } = await build(t, { namespaces: NAMESPACES })
  const { page, errors } = await openPage(t)
  await page.goto(`${url}/?transport=sse`)
  await stateIs(page, 'connected (EventSource)')
  const id = await app.fanout.publish(guest())
  await page.waitForFunction((expected) => document.querySelector('#guests li')?.getAttribute('data-id') === expected, id, { timeout: 10_000 })
  t.ok(await page.locator('body.receive-only').count(), 'receive-only')
  t.ok(await page.locator('#text').isDisabled(), 'the text box is off')
  t.ok(await page.locator('#file').isDisabled(), 'the upload is off')
  t.ok(await page.locator('.why-off').first().isVisible(), 'with its reason')
  t.same(logs.find(/^received:/), [], 'nothing was silently sent or dropped')
  t.same(errors, [], 'no errors in the page')
})

async function joinRoom (page: Page, room: string): Promise<void> {
  await page.fill('#room-name', room)
  await page.click('#join button')
  await page.locator('#chat').waitFor({ state: 'visible', timeout: 10_000 })
  await page.waitForFunction(() => document.getElementById('room-state')?.textContent === 'connected', undefined, { timeout: 10_000 })
}

const messagesOf = (page: Page) => page.locator('#messages li').evaluateAll((lis) => lis.map((li) => li.textContent))

async function say (page: Page, text: string): Promise<void> {
  await page.fill('#chat-text', text)
  await page.click('#chat button')
}

t.test('two pages in one room see each other\'s messages; a third page in another room sees none', async (t) => {
  const { url } = await build(t, { namespaces: NAMESPACES })
  const [one, two, other] = [await openPage(t), await openPage(t), await openPage(t)]
  for (const { page } of [one, two, other]) await page.goto(url)
  t.ok(await one.page.locator('#room').isVisible(), 'the room view is shown')
  await joinRoom(one.page, 'tea')
  await joinRoom(two.page, 'tea')
  await joinRoom(other.page, 'coffee')
  await say(one.page, 'hello from one')
  await two.page.locator('#messages li', { hasText: 'hello from one' }).waitFor({ timeout: 10_000 })
  await say(two.page, 'hi one, two here')
  await one.page.locator('#messages li', { hasText: 'hi one, two here' }).waitFor({ timeout: 10_000 })
  const [a, b] = [await messagesOf(one.page), await messagesOf(two.page)]
  t.equal(a.length, 2)
  t.same(a, b, 'both pages, the same messages in the same order')
  t.match(a[0], /hello from one$/)
  t.equal(await one.page.locator('#messages li.mine').count(), 1, 'its own message marked as its own')

  // A page joining later gets the room's history first.
  const late = await openPage(t)
  await late.page.goto(url)
  await joinRoom(late.page, 'tea')
  await late.page.waitForFunction(() => document.querySelectorAll('#messages li').length === 2, undefined, { timeout: 10_000 })
  t.same(await messagesOf(late.page), a, 'a late page: the history, in order')
  t.same(await messagesOf(other.page), [], 'another room hears nothing')
  for (const p of [one, two, other, late]) t.same(p.errors, [], 'no errors in the page')
})

t.test('the favicon is served and linked', async (t) => {
  const { url } = await build(t)
  const res = await fetch(`${url}/favicon.svg`)
  t.equal(res.status, 200)
  t.match(res.headers.get('content-type'), /^image\/svg\+xml/)
  t.match(await res.text(), /^<svg /)
  t.match(await (await fetch(url)).text(), /<link rel="icon" href="\/favicon.svg"/)
})

t.test('the seed article\'s client, unchanged, beside the new page', async (t) => {
  const { app, port } = await build(t, { allowedOrigins: ['null'] })
  const html = readFileSync(join(ROOT, 'test/support/fixtures/seed-client.html'), 'utf8')
  const file = join(tempDir(t, 'fanout-seed-'), 'index.html')
  writeFileSync(file, html.replace('ws://localhost:8080/guest', `ws://127.0.0.1:${port}/guest`))
  const { page, console, errors } = await openPage(t)
  await page.goto(pathToFileURL(file).href)
  await waitFor(() => console.includes('WebSocket conntected.'), 10_000, 'the seed\'s "conntected" log')
  await app.fanout.publish({ type: 'guest', guest: '王五', time: '12:00:01', ts: Date.now() })
  await waitFor(() => console.includes('Guest at 12:00:01: 王五'), 10_000, 'the seed\'s "Guest at" line')
  t.same(errors, [], 'no errors: the plain client got only events')
})
