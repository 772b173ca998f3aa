import { existsSync, readFileSync } from 'node:fs'
import { dirname, join, posix } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { IncomingMessage } from 'node:http'
import helmet from '@fastify/helmet'
import type { FastifyInstance } from 'fastify'
import { hostAllowed } from '../lib/origins.js'
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
  const { streamPath: stream, options } = coreOf(fastify)
  if (demoPath === false || stream === undefined) return
  const pagePath = posix.join(fastify.prefix || '/', demoPath)
  const assetDir = escapeHtml(pagePath.endsWith('/') ? pagePath : `${pagePath}/`)
  const publicDir = join(packageRoot(), 'demo', 'public')
  const streamPath = escapeHtml(stream)
  // The stream of channels (the room view) sits beside the guest stream, under fanout's prefix.
  const fanoutPrefix = stream.slice(0, stream.length - posix.join('/', options.guestPath || '/').length)
  const channels = options.streamPath === false ? '' : escapeHtml(posix.join(fanoutPrefix || '/', options.streamPath))
  const rooms = options.streamPath !== false && options.namespaces.room?.clientPublish === true
  const page = readFileSync(join(publicDir, 'index.html'), 'utf8')
    .replace('href="style.css"', `href="${assetDir}style.css"`)
    .replace('href="favicon.svg"', `href="${assetDir}favicon.svg"`)
    .replace('src="client.js"', `src="${assetDir}client.js"`)
    .replace('content="guest"', `content="${streamPath}"`)
    .replace('content="stream"', `content="${channels}"`)
    .replace('content="rooms"', `content="${rooms ? 'on' : ''}"`)
    .replace('<code>/guest</code>', `<code>${streamPath}</code>`)
  const assets: Record<string, [string, Buffer]> = {
    'client.js': ['text/javascript; charset=utf-8', readFileSync(join(publicDir, 'client.js'))],
    'style.css': ['text/css; charset=utf-8', readFileSync(join(publicDir, 'style.css'))],
    'favicon.svg': ['image/svg+xml', readFileSync(join(publicDir, 'favicon.svg'))],
    // fastify-fanout/client, as the page imports it: the built library, one copy of its logic.
    'fanout-client.js': ['text/javascript; charset=utf-8', Buffer.from(readFileSync(clientLibrary(), 'utf8').replace(/\n\/\/# sourceMappingURL=\S*\s*$/, '\n'))]
  }
  // Security headers on the page and its files, this scope only (docs/security.md, "Security headers on the demo page").
  await fastify.register(helmet, {
    contentSecurityPolicy: {
      useDefaults: false,
      directives: {
        defaultSrc: ["'self'"],
        // Every script and style is a file beside the page: no inline code, no eval, no nonce needed.
        scriptSrc: ["'self'"],
        scriptSrcAttr: ["'none'"],
        styleSrc: ["'self'"],
        imgSrc: ["'self'", 'data:'],
        fontSrc: ["'self'"],
        // The page's streams: EventSource on its own origin, the WebSocket on the same host.
        connectSrc: ["'self'", sameHostSockets],
        objectSrc: ["'none'"],
        baseUri: ["'none'"],
        formAction: ["'self'"],
        frameAncestors: ["'none'"]
      }
    },
    frameguard: { action: 'deny' },
    // Browsers heed it on https only; not for the subdomains, which this page knows nothing about.
    strictTransportSecurity: { maxAge: 31_536_000, includeSubDomains: false }
  })
  const { allowedHosts } = options
  if (allowedHosts !== undefined && allowedHosts.length > 0) {
    fastify.addHook('onRequest', async (request, reply) => {
      if (hostAllowed(request.headers.host, allowedHosts)) return
      coreOf(fastify).stats.hostsRefused++
      request.log.warn({ host: request.headers.host }, 'demo page refused: host not in allowedHosts')
      return reply.code(403).send({ error: 'host not allowed', host: request.headers.host ?? null })
    })
  }
  // Routes are relative to the scope's prefix; the files are small and read once.
  const local = demoPath.endsWith('/') ? demoPath : `${demoPath}/`
  fastify.get(demoPath, async (_request, reply) => reply.type('text/html; charset=utf-8').send(page))
  for (const [file, [type, body]] of Object.entries(assets)) {
    fastify.get(`${local}${file}`, async (_request, reply) => reply.type(type).send(body))
  }
}

/** dist/client/index.js: beside this file's own directory when running from dist/, else the package's dist/. */
function clientLibrary (): string {
  const built = fileURLToPath(new URL('../client/index.js', import.meta.url))
  if (existsSync(built)) return built
  const dist = join(packageRoot(), 'dist', 'client', 'index.js')
  if (!existsSync(dist)) throw new Error('fastify-fanout: the demo page needs the built client, dist/client/index.js: run the build first')
  return dist
}

/**
 * `ws://host wss://host` for the Host the page was asked for: the WebSocket's origins, named
 * explicitly (CSP Level 3 lets `'self'` match them, older browsers do not). A Host that is not a
 * plain host[:port] adds nothing, so no header value can smuggle in a directive.
 */
function sameHostSockets (request: IncomingMessage): string {
  const host = request.headers.host ?? ''
  return /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$/.test(host) ? `ws://${host} wss://${host}` : "'self'"
}

function escapeHtml (text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)
}
