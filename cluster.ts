// `npm run cluster`: the compose topology without Docker. A private redis-server (AOF on, in a
// temp dir) unless REDIS_URL is given, the publisher worker, CLUSTER_REPLICAS [3] replicas on free
// ports, and nginx on PORT [8080] with the same deploy/nginx.conf compose uses. The tests run the
// same topology through startCluster(). CLUSTER_HA=sentinel runs the high-availability topology of
// docker-compose.ha.yml instead: a primary and a replica watched by three Sentinels, two workers.
import type { ChildProcess } from 'node:child_process'
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { basename, dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { ownPath, spawnOwned } from './test/support/children.js'
import { fail } from './lib/fail.js'
import { freePort } from './test/support/free-port.js'

const here = dirname(fileURLToPath(import.meta.url))
/** The package root, whether this runs as dist/cluster.js or from source. */
const ROOT = basename(here) === 'dist' ? dirname(here) : here

export interface ClusterOptions {
  /** nginx's port [8080]; 0 picks a free one. */
  port?: number
  /** nginx's listen address [0.0.0.0]; the replicas and Redis listen on 127.0.0.1 only. */
  host?: string
  replicas?: number
  /** An existing Redis; without it a private redis-server is started. */
  redisUrl?: string
  /** 'sentinel': a private primary, replica and three Sentinels, and two workers (one leads). */
  ha?: 'sentinel'
  /** Environment of the worker and the replicas [process.env]. */
  env?: NodeJS.ProcessEnv
  /** Where each line of output goes, prefixed with its process's name [stdout]. */
  log?: (line: string) => void
}

export interface Cluster {
  /** nginx, the one address clients use. */
  url: string
  port: number
  redisUrl: string
  replicas: Array<{ port: number, process: ChildProcess }>
  /** The Redis processes and the workers, by name, for an operator to kill and watch (HA). */
  processes: Record<string, ChildProcess>
  /** The temp dir: nginx's config and temp files, the private Redis's data; removed by stop(). */
  dir: string
  /** Stops everything (worker and replicas first, then nginx, then Redis) and removes the temp dir. */
  stop (): Promise<void>
}

export async function startCluster (options: ClusterOptions = {}): Promise<Cluster> {
  const log = options.log ?? ((line) => process.stdout.write(`${line}\n`))
  const env = options.env ?? process.env
  const replicas = options.replicas ?? 3
  const host = options.host ?? '0.0.0.0'
  const dir = mkdtempSync(join(tmpdir(), 'fanout-cluster-'))
  const ownDir = ownPath('dir', dir)
  // Each child in its own process group, so a Ctrl-C reaches only us and we stop them in order;
  // and whatever ends this process, SIGKILL included, no child outlives it (test/support/children.ts).
  const start = (name: string, command: string, args: string[], childEnv: NodeJS.ProcessEnv = env, cwd = ROOT) => {
    const child = spawnOwned(command, args, { cwd, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] })
    const prefix = `${name.padEnd(10)}|`
    for (const stream of [child.stdout, child.stderr]) if (stream !== null) createInterface({ input: stream }).on('line', (line) => log(`${prefix} ${line}`))
    child.once('error', (err) => log(`${prefix} cannot start: ${err.message}`))
    child.once('exit', (code, signal) => log(`${prefix} exited (${signal ?? `code ${code}`})`))
    return child
  }

  const redisNodes: ChildProcess[] = [] // Redis, and with HA its replica and the Sentinels
  let nginx: ChildProcess | undefined
  const nodes: ChildProcess[] = [] // the workers and the replicas
  const processes: Record<string, ChildProcess> = {}

  let stopped: Promise<void> | undefined
  function stop (): Promise<void> {
    stopped ??= (async () => {
      // Replicas drain (1012 to their clients, through nginx) while Redis is still there.
      await Promise.all(nodes.map((child) => terminate(child, 20_000)))
      await terminate(nginx, 5000)
      await Promise.all(redisNodes.map((child) => terminate(child, 5000)))
      rmSync(dir, { recursive: true, force: true })
      ownDir.release()
    })()
    return stopped
  }

  try {
    const redisServer = async (name: string, args: string[] = []): Promise<number> => {
      const port = await freePort()
      mkdirSync(join(dir, name))
      const child = start(name, 'redis-server', ['--port', String(port), '--bind', '127.0.0.1',
        '--dir', join(dir, name), '--appendonly', 'yes', '--save', '', ...args])
      redisNodes.push(child)
      processes[name] = child
      await waitForOutput(child, 'Ready to accept connections')
      return port
    }
    let redisUrl = options.redisUrl
    let redisEnv: NodeJS.ProcessEnv
    if (options.ha === 'sentinel') {
      const primary = await redisServer('redis-primary')
      await redisServer('redis-replica', ['--replicaof', '127.0.0.1', String(primary)])
      const sentinels = await Promise.all([1, 2, 3].map(async (i) => {
        const port = await freePort()
        const name = `sentinel-${i}`
        mkdirSync(join(dir, name))
        const conf = join(dir, name, 'sentinel.conf') // Sentinel rewrites its own config
        writeFileSync(conf, [`port ${port}`, 'bind 127.0.0.1', `dir ${join(dir, name)}`,
          `sentinel monitor fanout 127.0.0.1 ${primary} 2`, 'sentinel down-after-milliseconds fanout 2000',
          'sentinel failover-timeout fanout 10000', ''].join('\n'))
        const child = start(name, 'redis-server', [conf, '--sentinel'])
        redisNodes.push(child)
        await waitForOutput(child, 'Sentinel ID')
        return `127.0.0.1:${port}`
      }))
      redisEnv = { REDIS_SENTINELS: sentinels.join(','), REDIS_SENTINEL_NAME: 'fanout', REDIS_URL: undefined }
      redisUrl = `sentinel fanout via ${sentinels.join(',')}`
    } else {
      redisUrl ??= `redis://127.0.0.1:${await redisServer('redis')}`
      redisEnv = { REDIS_URL: redisUrl }
    }

    for (const name of options.ha === 'sentinel' ? ['worker-1', 'worker-2'] : ['worker']) {
      processes[name] = start(name, process.execPath, ['dist/worker.js'], { ...env, ...redisEnv })
      nodes.push(processes[name])
    }
    const started = await Promise.all(Array.from({ length: replicas }, async (_, i) => {
      const port = await freePort()
      const child = start(`replica-${i + 1}`, process.execPath, ['dist/server.js'],
        { ...env, ...redisEnv, PORT: String(port), HOST: '127.0.0.1' })
      nodes.push(child)
      await waitForHttp(child, `http://127.0.0.1:${port}/healthz`)
      return { port, process: child }
    }))

    const port = options.port || await freePort()
    const conf = join(dir, 'nginx')
    mkdirSync(conf)
    copyFileSync(join(ROOT, 'deploy', 'nginx.conf'), join(conf, 'nginx.conf'))
    // As deploy/compose/upstream.conf, with this cluster's replicas.
    writeFileSync(join(conf, 'upstream.conf'), [
      'upstream fanout_replicas {',
      '  least_conn;',
      '  zone fanout_replicas 64k;',
      ...started.map((r) => `  server 127.0.0.1:${r.port} max_fails=1 fail_timeout=5s;`),
      '}', ''
    ].join('\n'))
    writeFileSync(join(conf, 'listen.conf'), `listen ${host}:${port};\n`)
    // Run as root, nginx's workers switch to nobody: they must be able to enter their temp dirs.
    chmodSync(dir, 0o755)
    nginx = start('nginx', 'nginx', ['-p', `${conf}/`, '-c', join(conf, 'nginx.conf'),
      '-g', `daemon off; pid ${join(conf, 'nginx.pid')};`])
    await waitForHttp(nginx, `http://127.0.0.1:${port}/healthz`)

    return { url: `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${port}`, port, redisUrl, replicas: started, processes, dir, stop }
  } catch (err) {
    await stop()
    throw err
  }
}

function running (child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null
}

/** SIGTERM, then SIGKILL if it is still there after `graceMs`. */
async function terminate (child: ChildProcess | undefined, graceMs: number): Promise<void> {
  if (child === undefined || !running(child)) return
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
  await exited
  clearTimeout(timer)
}

async function waitForOutput (child: ChildProcess, text: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const onData = (data: Buffer) => { if (data.toString().includes(text)) resolve() }
    child.stdout?.on('data', onData)
    child.once('exit', (code) => reject(new Error(`${child.spawnfile} exited (code ${code}) before it was ready`)))
    child.once('error', reject)
  })
}

async function waitForHttp (child: ChildProcess, url: string): Promise<void> {
  for (let attempt = 0; attempt < 300; attempt++) {
    if (!running(child)) throw new Error(`${child.spawnargs.join(' ')} exited before ${url} answered`)
    const ok = await fetch(url).then((res) => res.ok, () => false)
    if (ok) return
    await sleep(100)
  }
  throw new Error(`${url} did not answer within 30 s`)
}

async function main (): Promise<void> {
  const port = Number(process.env.PORT ?? 8080)
  const replicas = Number(process.env.CLUSTER_REPLICAS ?? 3)
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail('fastify-fanout cluster', new Error(`PORT must be a port number, got "${process.env.PORT}"`))
  if (!Number.isInteger(replicas) || replicas < 1) fail('fastify-fanout cluster', new Error(`CLUSTER_REPLICAS must be a positive integer, got "${process.env.CLUSTER_REPLICAS}"`))
  const ha = process.env.CLUSTER_HA || undefined
  if (ha !== undefined && ha !== 'sentinel') fail('fastify-fanout cluster', new Error(`CLUSTER_HA must be "sentinel" or unset, got "${ha}"`))
  const log = (line: string) => process.stdout.write(`${'cluster'.padEnd(10)}| ${line}\n`)
  let cluster: Cluster
  try {
    cluster = await startCluster({ port, replicas, host: process.env.HOST, redisUrl: process.env.REDIS_URL || undefined, ha })
  } catch (err) {
    fail('fastify-fanout cluster cannot start', err)
  }
  log(`ready: ${cluster.url}/ (WebSocket ${cluster.url.replace('http', 'ws')}/guest), through nginx`)
  log(`replicas on ${cluster.replicas.map((r) => `127.0.0.1:${r.port}`).join(', ')}`)
  log(process.env.REDIS_URL ? `Redis at ${cluster.redisUrl}` : `private Redis at ${cluster.redisUrl}, data in ${cluster.dir} (removed on exit)`)
  if (ha) {
    // For an operator trying a failover with the demo page open.
    for (const [name, child] of Object.entries(cluster.processes)) log(`${name}: kill -9 ${child.pid}`)
    log('the leading worker is the one that logged "this worker holds the lease"')
  }
  const shutdown = (signal: NodeJS.Signals) => {
    log(`${signal}: stopping`)
    cluster.stop().then(() => process.exit(0), (err: Error) => fail('fastify-fanout cluster', err))
  }
  process.once('SIGINT', shutdown)
  process.once('SIGTERM', shutdown)
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) await main()
