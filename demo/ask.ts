import type { FastifyInstance } from 'fastify'
import { ANONYMOUS } from '../lib/auth.js'
import { PROTOCOL } from '../lib/protocol.js'
import { coreOf } from '../plugins/fanout.js'
import { admitConnection, logText, onInbound } from '../routes/connection.js'
import { makeGuest } from './guests.js'
import type { ResolvedDemoOptions } from './options.js'

export const GREETING = 'The server is listening to you now.'

/** The seed's PHP server: a greeting on open, then one fresh guest event per text message, to that client alone. */
export default async function askRoutes (fastify: FastifyInstance, { askPath }: ResolvedDemoOptions): Promise<void> {
  if (askPath === false) return
  const { hub } = coreOf(fastify)
  fastify.get(askPath, { websocket: true, onRequest: admitConnection }, (socket, request) => {
    const client = hub.add(socket, socket.protocol === PROTOCOL)
    client.identity = request.fanoutIdentity ?? ANONYMOUS
    onInbound(fastify, socket, request, (data, isBinary) => {
      if (isBinary) return // the PHP server answers text; uploads belong to /guest
      logText(fastify, request, data)
      hub.send(client, JSON.stringify(makeGuest()))
    })
    hub.send(client, GREETING)
  })
}
