import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import fastifyStatic from '@fastify/static'
import fp from 'fastify-plugin'
import type { ResolvedOptions } from '../lib/options.js'

/** The package's root, from source (ts) or from dist/ alike. */
function packageRoot (): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, 'package.json'))) {
    if (dirname(dir) === dir) throw new Error('fastify-fanout: cannot find its package root for public/')
    dir = dirname(dir)
  }
  return dir
}

/** The demo page at `/`. */
export default fp<ResolvedOptions>(async (fastify, options) => {
  if (!options.demoPage) return
  await fastify.register(fastifyStatic, { root: join(packageRoot(), 'public'), prefix: '/', decorateReply: false })
}, { name: 'fanout-static' })
