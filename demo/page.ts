import { existsSync, readFileSync } from 'node:fs'
import { dirname, join, posix } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance } from 'fastify'
import { coreOf } from '../plugins/fanout.js'
import type { ResolvedDemoOptions } from './options.js'

/** The package's root, from source (ts) or from dist/ alike. */
function packageRoot (): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, 'package.json'))) {
    if (dirname(dir) === dir) throw new Error('fastify-fanout: cannot find its package root for demo/public/')
    dir = dirname(dir)
  }
  return dir
}

/**
 * The demo page at `demoPath`, its script and style beside it (`/client.js` for a page at `/`,
 * `/demo/client.js` for one at `/demo`). The page is told every URL it uses, prefix included, so
 * it follows fanout's stream wherever it is (its `guestPath` under fanout's `prefix`) and the
 * `prefix` the page itself is served under (at `/rt` and `/rt/` alike).
 */
export default async function pageRoutes (fastify: FastifyInstance, { demoPath }: ResolvedDemoOptions): Promise<void> {
  const { streamPath: stream } = coreOf(fastify)
  if (demoPath === false || stream === undefined) return
  const pagePath = posix.join(fastify.prefix || '/', demoPath)
  const assetDir = escapeHtml(pagePath.endsWith('/') ? pagePath : `${pagePath}/`)
  const publicDir = join(packageRoot(), 'demo', 'public')
  const streamPath = escapeHtml(stream)
  const page = readFileSync(join(publicDir, 'index.html'), 'utf8')
    .replace('href="style.css"', `href="${assetDir}style.css"`)
    .replace('src="client.js"', `src="${assetDir}client.js"`)
    .replace('content="guest"', `content="${streamPath}"`)
    .replace('<code>/guest</code>', `<code>${streamPath}</code>`)
  const assets = { 'client.js': 'text/javascript; charset=utf-8', 'style.css': 'text/css; charset=utf-8' }
  // Routes are relative to the scope's prefix; the files are small and read once.
  const local = demoPath.endsWith('/') ? demoPath : `${demoPath}/`
  fastify.get(demoPath, async (_request, reply) => reply.type('text/html; charset=utf-8').send(page))
  for (const [file, type] of Object.entries(assets)) {
    const body = readFileSync(join(publicDir, file))
    fastify.get(`${local}${file}`, async (_request, reply) => reply.type(type).send(body))
  }
}

function escapeHtml (text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)
}
