import type { FastifyInstance } from 'fastify'
import { makeGuest } from './guests.js'
import { ANONYMOUS } from '../lib/auth.js'
import { PROTOCOL } from '../lib/protocol.js'
import { admitConnection, logText, onInbound } from '../routes/connection.js'

export const GREETING = 'The server is listening to you now.'

/** The seed's PHP server: a greeting on open, then one fresh guest event per text message, to that client alone. */
export default async function askRoutes (fastify: FastifyInstance): Promise<void> {
  const { hub, options } = fastify.fanout
  if (options.askPath === false) return
  fastify.get(options.askPath, { websocket: true, onRequest: admitConnection }, (socket, request) => {
    const client = hub.add(socket, socket.protocol === PROTOCOL, false)
    client.identity = request.fanoutIdentity ?? ANONYMOUS
    onInbound(fastify, socket, request, (data, isBinary) => {
      if (isBinary) return // the PHP server answers text; uploads belong to /guest
      logText(fastify, request, data)
      hub.send(client, JSON.stringify(makeGuest()))
    })
    hub.send(client, GREETING)
  })
}
