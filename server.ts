#!/usr/bin/env node
import closeWithGrace from 'close-with-grace'
import Fastify from 'fastify'
import fanout from './app.js'
import { loadEnv, type Env } from './lib/config.js'
import { fail } from './lib/fail.js'
import { optionsFromEnv } from './lib/options.js'

let env: Env
try {
  env = loadEnv()
} catch (err) {
  fail('fastify-fanout', err)
}

// Under a file-size limit (RLIMIT_FSIZE: ulimit -f, docker --ulimit fsize) the kernel's default for
// SIGXFSZ kills the whole process on an oversize write. Handled, the write fails with EFBIG instead
// and only that upload is refused (lib/uploads.ts, 'too_big').
process.on('SIGXFSZ', () => {})

// Behind nginx or a load balancer: request.ip (MAX_CONNECTIONS_PER_ADDRESS) and request.protocol
// (the origin's scheme) come from X-Forwarded-* only for the proxies named here; never `true`.
const hops = Number(env.TRUST_PROXY)
const trustProxy = env.TRUST_PROXY === undefined ? false : Number.isInteger(hops) ? (_address: string, hop: number) => hop < hops : env.TRUST_PROXY.split(',')
const app = Fastify({ logger: { level: env.LOG_LEVEL }, trustProxy })
try {
  // The environment becomes the plugin's options and the demo's: the same path as any app's.
  const options = optionsFromEnv(env)
  // The demo page's room view: pages publish in `room:*` themselves (NAMESPACES may say otherwise).
  await app.register(fanout, { ...options, namespaces: { room: { clientPublish: true, historySize: 200 }, ...options.namespaces } })
  // Loaded here, so that a missing optional dependency of the demo (faker) is one clear line.
  const [{ default: fanoutDemo }, { demoOptionsFromEnv }] = await Promise.all([import('./demo/plugin.js'), import('./demo/options.js')])
  await app.register(fanoutDemo, demoOptionsFromEnv(env))
  await app.ready()
} catch (err) {
  fail('fastify-fanout cannot start', err)
}

// SIGTERM/SIGINT: close clients with 1012 over DRAIN_MS, close Redis, exit. The delay is the
// hard stop if that hangs; compose's stop_grace_period must exceed it.
closeWithGrace({ delay: env.DRAIN_MS + 5000 }, async ({ signal, err }) => {
  if (err) app.log.error({ err }, 'closing after an error')
  else app.log.info({ signal }, 'closing')
  await app.close()
})

try {
  await app.listen({ port: env.PORT, host: env.HOST })
} catch (err) {
  fail(`fastify-fanout cannot listen on ${env.HOST}:${env.PORT}`, err)
}
