import { timingSafeEqual } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { IDEMPOTENCY_KEY_PATTERN } from '../lib/broker.js'
import { CHANNEL_PATTERN } from '../lib/channels.js'
import { encodeBody, type EventBody } from '../lib/event.js'
import { coreOf } from '../plugins/fanout.js'

interface PublishRequest {
  // A wildcard, not `:channel`: Fastify's router refuses parameters over its maxParamLength (100
  // by default, the app's to set) before any handler runs, and a channel name may be 128 long.
  Params: { '*': string }
  Headers: { 'idempotency-key'?: string }
  Body: EventBody
}

/** How long a request waits for the broker to take its event; past it, 503 and the client retries (with its Idempotency-Key). */
const PUBLISH_WAIT_MS = 5000

/**
 * HTTP publishing for publishers in any language: `POST <publishPath>/:channel` with
 * `Authorization: Bearer <publishApiKey>` and the event as JSON; 202 with its id. With an
 * `Idempotency-Key`, a retry (to any replica) makes no second event and answers the same id.
 * Off unless `publishApiKey` is set.
 */
export default async function publishRoutes (fastify: FastifyInstance): Promise<void> {
  const { options, publish, stats } = coreOf(fastify)
  if (options.publishPath === false || options.publishApiKey === undefined) return
  const expected = Buffer.from(`Bearer ${options.publishApiKey}`)

  fastify.post<PublishRequest>(`${options.publishPath.replace(/\/$/, '')}/*`, {
    bodyLimit: options.maxUploadBytes,
    schema: {
      params: { type: 'object', properties: { '*': { type: 'string', pattern: CHANNEL_PATTERN.source } } },
      headers: { type: 'object', properties: { 'idempotency-key': { type: 'string', pattern: IDEMPOTENCY_KEY_PATTERN.source } } },
      // The body's fields are checked by encodeBody, not here: the schema would coerce `"type": 7` to "7".
      body: { type: 'object' }
    },
    onRequest: async (request, reply) => {
      const given = Buffer.from(request.headers.authorization ?? '')
      if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
        request.log.warn('publish refused: no valid API key')
        return reply.code(401).header('www-authenticate', 'Bearer').send({ error: 'an API key is needed: Authorization: Bearer <key>' })
      }
    }
  }, async (request, reply) => {
    const channel = request.params['*']
    try {
      encodeBody(request.body)
    } catch (err) {
      return reply.code(400).send({ error: (err as Error).message })
    }
    const key = request.headers['idempotency-key']
    const published = publish(channel, request.body, key)
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<undefined>((resolve) => { timer = setTimeout(resolve, PUBLISH_WAIT_MS, undefined) })
    try {
      const id = await Promise.race([published, late])
      if (id === undefined) {
        // Still queued for Redis: it may yet be published. A retry with the same key cannot make it twice.
        published.catch(() => {})
        request.log.warn({ channel }, 'HTTP publish not confirmed in time')
        return reply.code(503).header('retry-after', '2').send({ error: 'the broker has not taken the event yet: retry with the same Idempotency-Key' })
      }
      stats.httpPublishes++
      return reply.code(202).send({ id, channel })
    } catch (err) {
      request.log.warn({ channel, err: (err as Error).message }, 'HTTP publish failed')
      return reply.code(503).header('retry-after', '2').send({ error: 'the event could not be published: retry with the same Idempotency-Key' })
    } finally {
      clearTimeout(timer)
    }
  })
}
