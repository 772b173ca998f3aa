import { createSocket, type Socket as UdpSocket } from 'node:dgram'
import { readFileSync } from 'node:fs'
import { createServer } from 'node:net'

/**
 * 10240–19999, below the kernel's ephemeral range (/proc/sys/net/ipv4/ip_local_port_range), where
 * no outgoing connection is ever given a local port: only an explicit listener can take one. The
 * Redis Cluster harness (test/support/redis-topology.ts) picks its node ports from 20000 up and their bus
 * ports (+10000) above that, so the two never meet.
 */
function candidates (): { low: number, high: number } {
  let ephemeralLow = 32768
  try {
    ephemeralLow = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || ephemeralLow
  } catch {}
  return { low: 10_240, high: Math.min(20_000, ephemeralLow) }
}

/** Reservations held until this process exits: a port handed out is never handed out again. */
const held: UdpSocket[] = []

function reserve (port: number): Promise<UdpSocket | undefined> {
  return new Promise((resolve) => {
    const socket = createSocket({ type: 'udp4', reuseAddr: false })
    socket.once('error', () => { socket.close(); resolve(undefined) })
    socket.bind(port, '127.0.0.1', () => { socket.unref(); resolve(socket) })
  })
}

function listenable (port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer()
    server.unref()
    server.once('error', () => resolve(false))
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
  })
}

/**
 * A TCP port on 127.0.0.1 that nothing listens on and nothing else will be given, for the life of
 * this process (the cluster, the benchmark and the tests start servers on them, and a test may
 * restart a server on the same port). Outside the ephemeral range no connection can take it; the
 * UDP socket bound to the same number, held until exit, keeps every other caller of freePort, in
 * this process or another, off it. The kernel drops that reservation however the process ends.
 */
export async function freePort (): Promise<number> {
  const { low, high } = candidates()
  if (high - low < 1000) throw new Error(`freePort needs ports ${low}–19999 outside the ephemeral range; ip_local_port_range starts at ${high}`)
  for (let attempt = 0; attempt < 1000; attempt++) {
    const port = low + Math.floor(Math.random() * (high - low))
    const reservation = await reserve(port)
    if (reservation === undefined) continue
    if (await listenable(port)) {
      held.push(reservation)
      return port
    }
    reservation.close()
  }
  throw new Error(`no free port between ${low} and ${high}`)
}
