// Real headless Chromium against the plugin: the demo page, and the seed article's own client
// code opened from a file:// page, unchanged.
import { readFileSync, writeFileSync } from 'node:fs'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { chromium, type Page } from 'playwright-core'
import t, { type Test } from 'tap'
import { compareIds } from '../../lib/event.js'
import { build, tempDir, waitFor, ROOT } from '../support/helper.js'
import { coreOf } from '../../plugins/fanout.js'

const CHINESE_NAME = /^[\u4e00-\u9fff]{2,4}$/
const PNG = Buffer.concat([Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex'), Buffer.alloc(300, 5)])

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking']
})
t.teardown(() => browser.close())

interface TestPage {
  page: Page
  /** Every console message, as text. */
  console: string[]
  /** Uncaught exceptions in the page. */
  errors: Error[]
}

async function openPage (t: Test): Promise<TestPage> {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } })
  t.teardown(() => context.close())
  const page = await context.newPage()
  const opened: TestPage = { page, console: [], errors: [] }
  page.on('console', (message) => opened.console.push(message.text()))
  page.on('pageerror', (err) => opened.errors.push(err))
  return opened
}

/** The files in the upload dir, temp files excluded, once there are `count` of them. */
async function uploadsIn (dir: string, count: number): Promise<string[]> {
  return waitFor(async () => {
    const files = (await readdir(dir)).filter((f) => !f.startsWith('.'))
    return files.length === count && files
  }, 10_000, `${count} upload(s) in ${dir}`) as Promise<string[]>
}

const stateIs = (page: Page, text: string) =>
  page.waitForFunction((expected) => document.getElementById('state')?.textContent === expected, text, { timeout: 10_000 })

const guestCount = (page: Page) => page.locator('#guests li').count()

t.test('the demo page shows arriving guests and uploads a file', async (t) => {
  const { url, uploadDir, logs } = await build(t, { publisher: { minDelayMs: 100, maxDelayMs: 200 } })
  const { page, errors } = await openPage(t)
  await page.goto(url)
  await stateIs(page, 'connected')
  await page.waitForFunction(() => document.querySelectorAll('#guests li').length >= 3, undefined, { timeout: 10_000 })
  const seen = await guestCount(page)
  await page.waitForFunction((n) => document.querySelectorAll('#guests li').length > n, seen, { timeout: 10_000 })
  t.ok(await page.locator('#empty').isHidden(), 'the waiting note is gone')

  const rows = await page.locator('#guests li').evaluateAll((lis) => lis.map((li) => ({
    id: (li as HTMLElement).dataset.id ?? '',
    guest: li.querySelector('.guest')?.textContent ?? '',
    time: li.querySelector('.time')?.textContent ?? ''
  })))
  for (const row of rows.slice(0, 5)) {
    t.match(row.guest, CHINESE_NAME)
    t.match(row.time, /^\d\d:\d\d:\d\d$/)
  }
  t.ok(compareIds(rows[0].id, rows[1].id) > 0, 'newest first')

  await page.setInputFiles('#file', { name: 'photo.png', mimeType: 'image/png', buffer: PNG })
  const ack = page.locator('#uploads li', { hasText: 'saved as' })
  await ack.waitFor({ timeout: 10_000 })
  const text = await ack.textContent() ?? ''
  t.match(text, new RegExp(`^photo\\.png saved as \\S+\\.png \\(${PNG.length} bytes, sha256 [0-9a-f]{12}…\\)$`))
  const [file] = await uploadsIn(uploadDir, 1)
  t.ok(text.includes(file), 'the ack names the saved file')
  t.same(await readFile(join(uploadDir, file)), PNG, 'byte for byte')

  // Text typed into the box goes to the server as a text message.
  await page.fill('#text', 'Hello from the page')
  await page.click('#say button')
  await waitFor(() => logs.find('received: Hello from the page')[0], 10_000, 'the server to log the text')
  t.equal(await page.inputValue('#text'), '', 'the box is cleared')
  t.same(errors, [], 'no errors in the page')
})

/** The seed client, its URL pointed at this test's server, in a temp dir: a file:// page. */
function seedPage (t: Test, port: number): string {
  const html = readFileSync(join(ROOT, 'test/support/fixtures/seed-client.html'), 'utf8')
  t.ok(html.includes('ws://localhost:8080/guest'), 'the fixture has the seed\'s URL')
  const file = join(tempDir(t, 'fanout-seed-'), 'index.html')
  writeFileSync(file, html.replace('ws://localhost:8080/guest', `ws://127.0.0.1:${port}/guest`))
  return pathToFileURL(file).href
}

/** Runs one of the fixture's text/plain snippets at global scope, as typed into the console. */
async function runSnippet (page: Page, id: string): Promise<void> {
  await page.evaluate((snippetId) => {
    const code = document.getElementById(snippetId)?.textContent ?? ''
    ;(0, eval)(code) // eslint-disable-line no-eval
  }, id)
}

t.test('the seed article\'s client, unchanged, from a file:// page with allowedOrigins null', async (t) => {
  const { port, uploadDir, logs } = await build(t, { allowedOrigins: ['null'], publisher: { minDelayMs: 100, maxDelayMs: 200 } })
  const { page, console, errors } = await openPage(t)
  await page.goto(seedPage(t, port))
  await waitFor(() => console.includes('WebSocket conntected.'), 10_000, 'the seed\'s "conntected" log')
  const guestLine = /^Guest at \d\d:\d\d:\d\d: [\u4e00-\u9fff]{2,4}$/
  await waitFor(() => console.filter((l) => guestLine.test(l)).length >= 3, 10_000, 'three "Guest at" lines')
  t.same(console.filter((l) => l.startsWith('Guest at') && !guestLine.test(l)), [], 'every event reads as a guest and a time')

  await runSnippet(page, 'send-text')
  const line = await waitFor(() => logs.find('received: Hello, server!')[0], 10_000, 'the server to log the text')
  t.equal(line.msg, 'received: Hello, server!')

  await runSnippet(page, 'binary-type')
  await page.setInputFiles('#image_upload', { name: 'upload.png', mimeType: 'image/png', buffer: PNG })
  await runSnippet(page, 'send-file')
  const [file] = await uploadsIn(uploadDir, 1)
  t.match(file, /\.png$/)
  t.same(await readFile(join(uploadDir, file)), PNG, 'the Blob is on disk byte for byte')

  t.notOk(console.includes('WebSocket closed.'), 'still connected')
  t.same(errors, [], 'no JSON.parse errors: the plain client got only events')
})

t.test('without allowedOrigins null, the file:// page is refused', async (t) => {
  const { port, logs, app } = await build(t, { publisher: { minDelayMs: 100, maxDelayMs: 200 } })
  const { page, console } = await openPage(t)
  await page.goto(seedPage(t, port))
  await waitFor(() => console.includes('WebSocket closed.'), 10_000, 'the seed\'s "closed" log')
  t.notOk(console.includes('WebSocket conntected.'), 'never connected')
  t.ok(console.some((l) => l.startsWith('WebSocket error:')), 'onerror ran')
  t.match(logs.find('websocket refused: origin not allowed')[0], { origin: 'null' })
  t.equal(coreOf(app).hub.size, 0)
})

t.test('the demo page reconnects with ?since and shows what it recovered', async (t) => {
  const { app, url, logs } = await build(t)
  const { page } = await openPage(t)
  await page.goto(url)
  await stateIs(page, 'connected')
  const publish = (guest: string) => app.fanout.publish({ type: 'guest', guest, time: '12:00:00', ts: Date.now() })
  const first = await publish('张三')
  const lastSeen = await publish('李四')
  await page.waitForFunction(() => document.querySelectorAll('#guests li').length === 2, undefined, { timeout: 10_000 })
  t.ok(await page.locator('#recovered').isHidden())

  // Cut every socket, and publish before the page can come back: these it must recover.
  for (const client of coreOf(app).hub.clients) client.terminate()
  const missed = await Promise.all(['王五', '赵六', '孙七'].map(publish))

  const note = page.locator('#recovered', { hasText: 'Reconnected' })
  await note.waitFor({ timeout: 15_000 })
  t.equal(await note.textContent(), 'Reconnected: recovered 3 missed events.')
  await stateIs(page, 'connected')
  const ids = await page.locator('#guests li').evaluateAll((lis) => lis.map((li) => (li as HTMLElement).dataset.id))
  t.same(ids, [...missed].reverse().concat([lastSeen, first]), 'the missed events, newest first, no duplicates')
  t.match(logs.find('resumed')[0], { since: lastSeen, replayed: 3, lost: false })

  // Live events flow again after the resume.
  const live = await publish('周八')
  await page.waitForFunction((id) => document.querySelector('#guests li')?.getAttribute('data-id') === id, live, { timeout: 10_000 })
})
