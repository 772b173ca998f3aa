// A TCP proxy in front of a port, for the network paths a failover travels: a replication link
// that stalls (what the primary sends is held back, and lost with it), and a service address that
// moves to another server (a managed Redis's primary endpoint after a failover, a VIP, DNS).
import { connect as netConnect, createServer, type Socket } from 'node:net'
import type { Test } from 'tap'

export interface TcpProxy {
  port: number
  url: string
  /** From now on, what the server sends is held back (never delivered); the client's side still goes through. */
  stall (): void
  /** Cuts every connection; new ones reach `port`. */
  retarget (port: number): void
}

export async function tcpProxy (t: Test, targetPort: number): Promise<TcpProxy> {
  let target = targetPort
  let stalled = false
  const upstreams = new Set<Socket>()
  const sockets = new Set<Socket>()
  const server = createServer((client) => {
    const upstream = netConnect(target, '127.0.0.1')
    upstreams.add(upstream)
    for (const socket of [client, upstream]) {
      sockets.add(socket)
      socket.on('error', () => {}).on('close', () => {
        client.destroy()
        upstream.destroy()
        sockets.delete(socket)
        upstreams.delete(upstream)
      })
    }
    client.pipe(upstream)
    upstream.on('data', (data: Buffer) => { if (!stalled) client.write(data) })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const socket of sockets) socket.destroy()
    server.close()
  })
  const port = (server.address() as { port: number }).port
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    stall () { stalled = true },
    retarget (next) {
      target = next
      stalled = false
      for (const socket of sockets) socket.destroy()
    }
  }
}
