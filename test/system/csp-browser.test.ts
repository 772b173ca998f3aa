// Issue 22, "The edge": the demo page in real headless Chromium with its Content-Security-Policy
// enforced. Events arrive over the WebSocket and over EventSource, and the page causes not one
// CSP violation, console error or page error; an inline script added afterwards is blocked,
// which shows the policy is the one in force.
import { chromium, type ConsoleMessage, type Page } from 'playwright-core'
import t, { type Test } from 'tap'
import { build } from '../support/helper.js'

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking']
})
t.teardown(() => browser.close())

interface Violation { directive: string, blocked: string, sample: string }

interface WatchedPage {
  page: Page
  /** Console messages of type error (Chromium reports each CSP violation there too). */
  consoleErrors: string[]
  errors: Error[]
  /** The page's `securitypolicyviolation` events, so far. */
  violations: () => Promise<Violation[]>
}

async function openWatched (t: Test): Promise<WatchedPage> {
  const context = await browser.newContext()
  t.teardown(() => context.close())
  const page = await context.newPage()
  // Before any of the page's own code: every violation the document reports is kept.
  await page.addInitScript(() => {
    const seen: Violation[] = []
    ;(window as unknown as { cspViolations: Violation[] }).cspViolations = seen
    document.addEventListener('securitypolicyviolation', (e) => {
      seen.push({ directive: e.effectiveDirective, blocked: e.blockedURI, sample: e.sample })
    })
  })
  const watched: WatchedPage = {
    page,
    consoleErrors: [],
    errors: [],
    violations: () => page.evaluate(() => (window as unknown as { cspViolations: Violation[] }).cspViolations)
  }
  page.on('console', (message: ConsoleMessage) => { if (message.type() === 'error') watched.consoleErrors.push(message.text()) })
  page.on('pageerror', (err) => watched.errors.push(err))
  return watched
}

const stateIs = (page: Page, text: string) =>
  page.waitForFunction((expected) => document.getElementById('state')?.textContent === expected, text, { timeout: 10_000 })

for (const [transport, query, state] of [['WebSocket', '', 'connected'], ['EventSource', '?transport=sse', 'connected (EventSource)']] as const) {
  t.test(`the demo page under its CSP, over ${transport}: events arrive, no violation, no console error`, async (t) => {
    const { url } = await build(t, { publisher: { minDelayMs: 100, maxDelayMs: 200 } })
    const { page, consoleErrors, errors, violations } = await openWatched(t)
    const response = await page.goto(`${url}/${query}`)
    const csp = response?.headers()['content-security-policy'] ?? ''
    t.match(csp, /script-src 'self'/, 'served with its CSP')
    await stateIs(page, state)
    await page.waitForFunction(() => document.querySelectorAll('#guests li').length >= 3, undefined, { timeout: 10_000 })
    t.ok(await page.locator('#empty').isHidden(), 'events arrived and are shown')
    // Text goes out over the WebSocket (the connect-src the policy names); on EventSource the box is off.
    if (transport === 'WebSocket') {
      await page.fill('#text', 'hello under CSP')
      await page.click('#say button')
      await page.waitForFunction(() => (document.getElementById('text') as HTMLInputElement).value === '', undefined, { timeout: 10_000 })
    }
    t.same(await violations(), [], 'no securitypolicyviolation')
    t.same(consoleErrors, [], 'no console error')
    t.same(errors, [], 'no page error')

    // The policy is in force: an inline script added now is blocked, and reported.
    const ran = await page.evaluate(() => {
      const script = document.createElement('script')
      script.textContent = 'window.inlineRan = true'
      document.body.append(script)
      return (window as unknown as { inlineRan?: boolean }).inlineRan === true
    })
    t.equal(ran, false, 'an inline script does not run')
    await page.waitForFunction(() => (window as unknown as { cspViolations: unknown[] }).cspViolations.length > 0, undefined, { timeout: 10_000 })
    t.match(await violations(), [{ directive: 'script-src-elem', blocked: 'inline' }], 'and is reported as a violation')
  })
}
