// Issue 11 in real headless Chromium: the demo page under a prefix and renamed paths, and the
// EventSource transport, with the browser's own Last-Event-ID resume.
import { chromium, type Page } from 'playwright-core'
import t, { type Test } from 'tap'
import { refuse } from '../../app.js'
import { build, waitFor } from '../support/helper.js'
import { coreOf } from '../../plugins/fanout.js'

const PNG = Buffer.concat([Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex'), Buffer.alloc(300, 5)])

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking']
})
t.teardown(() => browser.close())

async function openPage (t: Test): Promise<{ page: Page, errors: Error[], failed: string[] }> {
  const context = await browser.newContext()
  t.teardown(() => context.close())
  const page = await context.newPage()
  const opened = { page, errors: [] as Error[], failed: [] as string[] }
  page.on('pageerror', (err) => opened.errors.push(err))
  page.on('response', (response) => { if (response.status() >= 400) opened.failed.push(`${response.status()} ${response.url()}`) })
  return opened
}

const stateIs = (page: Page, text: string) =>
  page.waitForFunction((expected) => document.getElementById('state')?.textContent === expected, text, { timeout: 15_000 })

t.test('the demo page under a prefix, with the stream renamed, streams and uploads', async (t) => {
  const { url, app } = await build(t, { prefix: '/rt', guestPath: '/live', publisher: { minDelayMs: 100, maxDelayMs: 200 } })
  const { page, errors, failed } = await openPage(t)
  await page.goto(`${url}/rt`)
  await stateIs(page, 'connected')
  await page.waitForFunction(() => document.querySelectorAll('#guests li').length >= 2, undefined, { timeout: 10_000 })
  t.equal(await page.locator('.subtitle code').textContent(), '/rt/live', 'the page names the stream it follows')
  const loaded = await page.evaluate(() => performance.getEntriesByType('resource').map((e) => new URL(e.name).pathname))
  t.ok(loaded.includes('/rt/style.css') && loaded.includes('/rt/client.js'), 'script and style came from under the prefix')
  await page.setInputFiles('#file', { name: 'photo.png', mimeType: 'image/png', buffer: PNG })
  await page.locator('#uploads li', { hasText: 'saved as' }).waitFor({ timeout: 10_000 })
  t.equal(coreOf(app).stats.uploads, 1)
  t.same(failed, [], 'no request of the page failed (script, style, stream)')
  t.same(errors, [], 'no errors in the page')
})

t.test('EventSource in Chromium: the demo page on ?transport=sse, and Last-Event-ID resume after a cut', async (t) => {
  const { url, app, logs } = await build(t)
  const { page, errors, failed } = await openPage(t)
  await page.goto(`${url}/?transport=sse`)
  await stateIs(page, 'connected (EventSource)')
  t.equal(coreOf(app).hub.size, 1)
  const publish = (guest: string) => app.fanout.publish({ type: 'guest', guest, time: '12:00:00', ts: Date.now() })
  const first = await publish('张三')
  const lastSeen = await publish('李四')
  await page.waitForFunction(() => document.querySelectorAll('#guests li').length === 2, undefined, { timeout: 10_000 })

  // Cut the stream and publish before the browser reconnects: it resumes by itself with Last-Event-ID.
  for (const client of coreOf(app).hub.clients) client.terminate()
  const missed = await Promise.all(['王五', '赵六', '孙七'].map(publish))
  const note = page.locator('#recovered', { hasText: 'Reconnected' })
  await note.waitFor({ timeout: 15_000 })
  t.equal(await note.textContent(), 'Reconnected: recovered 3 missed events.', 'the named resume event reached the page')
  const ids = await page.locator('#guests li').evaluateAll((lis) => lis.map((li) => (li as HTMLElement).dataset.id))
  t.same(ids, [...missed].reverse().concat([lastSeen, first]), 'exactly the missed events, no duplicates')
  t.match(logs.find('resumed')[0], { since: lastSeen, replayed: 3, lost: false })
  const live = await publish('周八')
  await page.waitForFunction((id) => document.querySelector('#guests li')?.getAttribute('data-id') === id, live, { timeout: 10_000 })
  t.same(errors, [])
  t.same(failed, [])
})

t.test('where WebSockets are blocked, the demo page falls back to EventSource by itself', async (t) => {
  // As a proxy that drops upgrades would: every WebSocket handshake refused, plain GETs admitted.
  const { url, app } = await build(t, {
    authorize: (request) => request.headers.upgrade ? refuse(403, 'no WebSockets through here') : {},
    publisher: { minDelayMs: 100, maxDelayMs: 200 }
  })
  const { page, errors } = await openPage(t)
  await page.goto(url)
  await stateIs(page, 'connected (EventSource)')
  await page.waitForFunction(() => document.querySelectorAll('#guests li').length >= 2, undefined, { timeout: 10_000 })
  t.ok(coreOf(app).stats.handshakesRefused >= 2, 'it tried the WebSocket first')
  t.same(errors, [])
})

t.test('EventSource from another origin: admitted when listed, with its CORS header; refused otherwise', async (t) => {
  const server = await build(t, { allowedOrigins: ['http://localhost:1'] })
  const other = await build(t)
  const { page } = await openPage(t)
  // A page of another origin (127.0.0.1:<other port>) whose own CSP does not stand in the way: the
  // demo page's connect-src admits its own host only, as it should.
  await page.goto(`${other.url}/healthz`)
  const result = (target: string) => page.evaluate((src) => new Promise<string>((resolve) => {
    const source = new EventSource(src)
    source.onopen = () => { source.close(); resolve('open') }
    source.onerror = () => { source.close(); resolve('error') }
  }), target)
  t.equal(await result(`${server.url}/guest`), 'error', 'a foreign origin is refused')
  await waitFor(() => server.logs.find('event stream refused: origin not allowed').length === 1, 5000, 'the refusal to be logged')

  const listed = await build(t, { allowedOrigins: [other.url] })
  t.equal(await result(`${listed.url}/guest`), 'open', 'a listed origin is admitted')
})
