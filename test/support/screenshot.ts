// Makes docs/screenshot.png, the README's picture of the demo page: several guests and an upload
// ack, in real headless Chromium at 1280x800. Not a test; run it after changing demo/public/:
//   npx tsc -p tsconfig.json && TS_NODE_TRANSPILE_ONLY=1 node --import @tapjs/typescript/import test/support/screenshot.ts [out.png]
import { mkdirSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { chromium } from 'playwright-core'
import { makeGuest, nextDelay } from '../../demo/guests.js'
import { build, ROOT } from './helper.js'

const out = resolve(process.argv[2] ?? join(ROOT, 'docs/screenshot.png'))
const cleanups: Array<() => unknown> = []
const scope = { teardown: (fn: () => unknown) => { cleanups.push(fn) } }

try {
  const { app, url } = await build(scope)
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking']
  })
  cleanups.push(() => browser.close())
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } })
  await page.goto(url)
  await page.waitForFunction(() => document.getElementById('state')?.textContent === 'connected')
  // A minute of guests on the default 3–8 s schedule, without waiting a minute for them.
  const delays = Array.from({ length: 16 }, () => nextDelay(3000, 8000))
  let at = Date.now() - delays.reduce((sum, d) => sum + d, 0)
  for (const delay of delays) {
    await app.fanout.publish(makeGuest(new Date(at)))
    at += delay
  }
  await page.waitForFunction(() => document.querySelectorAll('#guests li').length === 16, undefined, { timeout: 10_000 })
  await page.fill('#text', 'Hello, server!')
  const png = Buffer.concat([Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex'), Buffer.alloc(48_000, 1)])
  await page.setInputFiles('#file', { name: 'holiday-photo.png', mimeType: 'image/png', buffer: png })
  await page.locator('#uploads li', { hasText: 'saved as' }).waitFor({ timeout: 10_000 })
  await page.setInputFiles('#file', { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('meeting notes\n') })
  await page.waitForFunction(() => document.querySelectorAll('#uploads li').length === 2 &&
    !document.querySelector('#uploads li')?.textContent?.includes('uploading'), undefined, { timeout: 10_000 })
  await app.fanout.publish(makeGuest())
  await page.waitForTimeout(300) // the newest guest, half way through its highlight
  mkdirSync(dirname(out), { recursive: true })
  await page.screenshot({ path: out })
  console.log(`wrote ${out}`)
} finally {
  for (const cleanup of cleanups.reverse()) await cleanup()
}
