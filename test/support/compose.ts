// The machinery of the compose tests (test/system/compose.test.ts, compose-ha.test.ts): commands run
// to their end, whether an engine and compose are here, the base and app images built, a project
// of its own brought up from a compose file and removed at teardown, whatever happens.
import { execFile, spawn } from 'node:child_process'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ROOT, waitFor } from './helper.js'

type Tap = {
  teardown (fn: () => unknown): void
  comment (...args: unknown[]): void
  passing (): boolean
}

export interface Run { stdout: string, ms: number }

/** The parts of `docker inspect` the checks read. */
export interface Inspected {
  Config: { User: string }
  RestartCount: number
  State: { Status: string, Running: boolean, StartedAt: string, ExitCode: number, Health?: { Status: string } }
}

/** Runs a command to its end; rejects with its output when it fails. */
export async function sh (cmd: string, args: string[], options: { env?: NodeJS.ProcessEnv, timeoutMs?: number } = {}): Promise<Run> {
  const started = Date.now()
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { cwd: ROOT, env: options.env ?? process.env, timeout: options.timeoutMs ?? 120_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')}: ${err.message}\n${stderr.slice(-4000)}`))
      else resolve({ stdout, ms: Date.now() - started })
    })
  })
}

export async function answers (cmd: string, args: string[]): Promise<boolean> {
  return sh(cmd, args, { timeoutMs: 20_000 }).then(() => true, () => false)
}

/**
 * Holds this machine's Docker engine for the rest of the test process: `shared` for compose
 * projects (several run side by side), `exclusive` for a swarm (`docker swarm init` and `leave`
 * break the networks of compose projects, and two swarms cannot share one engine). Waits for the
 * holders of the other kind to finish first. So test/system and test/swarm can run in one `tap`
 * invocation, beside each other's other files, never beside each other's Docker topologies.
 * The lock is flock(1)'s, held by a child that ends when this process does, however it ends.
 */
export async function holdEngine (t: Tap, mode: 'shared' | 'exclusive'): Promise<void> {
  const started = Date.now()
  const holder = spawn('flock', [`--${mode}`, ENGINE_LOCK, '-c', 'echo held; exec cat'], { stdio: ['pipe', 'pipe', 'inherit'] })
  await new Promise<void>((resolve, reject) => {
    holder.stdout.once('data', () => resolve())
    holder.once('error', (err) => reject(new Error(`flock ${ENGINE_LOCK}: ${err.message}`)))
    holder.once('exit', (code) => reject(new Error(`flock ${ENGINE_LOCK} exited with ${code} before it held the lock`)))
  })
  const waited = Date.now() - started
  if (waited > 1000) t.comment(`waited ${waited} ms for the Docker engine (${mode}): another test's ${mode === 'shared' ? 'swarm' : 'compose projects or swarm'} held it`)
  t.teardown(async () => {
    const exited = new Promise((resolve) => holder.once('exit', resolve))
    holder.stdin.end()
    await exited
  })
}

const ENGINE_LOCK = join(tmpdir(), 'fastify-fanout-docker-engine.lock')

/** Why a compose topology cannot run here, or undefined when it can. */
export async function unavailable (): Promise<string | undefined> {
  if (!await answers('docker', ['info'])) return 'no Docker engine answers `docker info` (.ci/run starts dockerd)'
  if (!await answers('docker-compose', ['version']) && !await answers('docker', ['compose', 'version'])) {
    return 'neither docker-compose nor `docker compose` is installed'
  }
}

/**
 * The base images (official, or stand-ins from deploy/standin/build-bases.sh) and the app image
 * from the real Dockerfile, tagged `image`.
 */
export async function buildImages (t: Tap, image: string): Promise<void> {
  const bases = await sh(join(ROOT, 'deploy/standin/build-bases.sh'), [], { timeoutMs: 15 * 60_000 })
  t.comment(`base images: ${bases.stdout.trim()} (${bases.ms} ms)`)
  // The legacy builder on the host's network: only it reaches npm's registry from a build here.
  // One build at a time (flock on the Dockerfile): two test files building at once would each run
  // every step (npm ci included); one after the other, the second finds every layer cached.
  const built = await sh('flock', [join(ROOT, 'Dockerfile'), 'docker', 'build', '--network', 'host', '-t', image, '.'], {
    env: { ...process.env, DOCKER_BUILDKIT: '0' },
    timeoutMs: 15 * 60_000
  })
  t.comment(`docker build of the app image: ${built.ms} ms (a wait for another test's build included)`)
}

export interface Project {
  name: string
  label: string
  /** docker-compose 1.x (with --compatibility), not the v2 plugin. */
  v1: boolean
  compose (args: string[], timeoutMs?: number): Promise<Run>
  /** Running containers of one service, sorted. */
  containers (service: string): Promise<string[]>
  inspect (id: string): Promise<Inspected>
  health (id: string): Promise<string>
  /** Once the service has `n` running containers, every one healthy; rejects saying what it saw. */
  healthy (service: string, n: number, timeoutMs?: number): Promise<string[]>
  /** What is left of the project: containers, networks and volumes, by its label and by name. */
  leftovers (): Promise<string[]>
}

/**
 * A compose project of its own (a unique name) from `file`, with `env` for the file's variables.
 * At teardown, the last log lines if a check failed, then `down -v` and whatever down missed.
 */
export async function composeProject (t: Tap, file: string, name: string, env: NodeJS.ProcessEnv): Promise<Project> {
  // v1 (Debian's docker-compose 1.29) honours deploy.replicas only with --compatibility; v2 always does.
  const v1 = await answers('docker-compose', ['version'])
  const label = `com.docker.compose.project=${name}`
  const full = { ...process.env, ...env }
  const compose = (args: string[], timeoutMs = 180_000) =>
    v1
      ? sh('docker-compose', ['--compatibility', '-p', name, '-f', join(ROOT, file), ...args], { env: full, timeoutMs })
      : sh('docker', ['compose', '-p', name, '-f', join(ROOT, file), ...args], { env: full, timeoutMs })
  const ids = async (args: string[]): Promise<string[]> =>
    (await sh('docker', args)).stdout.split('\n').filter(Boolean).sort()
  const inspect = async (id: string): Promise<Inspected> => JSON.parse((await sh('docker', ['inspect', id])).stdout)[0]
  const health = async (id: string): Promise<string> => (await inspect(id)).State.Health?.Status ?? 'none'
  const project: Project = {
    name,
    label,
    v1,
    compose,
    containers: (service) => ids(['ps', '-q', '--filter', `label=${label}`, '--filter', `label=com.docker.compose.service=${service}`]),
    inspect,
    health,
    async healthy (service, n, timeoutMs = 180_000) {
      let seen = ''
      const found = await waitFor(async () => {
        const list = await project.containers(service)
        const states = await Promise.all(list.map(health))
        seen = states.join(', ')
        return list.length === n && states.every((s) => s === 'healthy') && list
      }, timeoutMs, `${n} healthy ${service} containers`).catch((err) => {
        throw new Error(`${err.message}; ${service} containers: ${seen || 'none'}`)
      })
      return found as string[]
    },
    async leftovers () {
      const left: string[] = []
      for (const kind of ['ps -aq', 'network ls -q', 'volume ls -q']) {
        for (const id of await ids([...kind.split(' '), '--filter', `label=${label}`])) left.push(`${kind.split(' ')[0]} ${id}`)
      }
      for (const id of await ids(['volume', 'ls', '-q', '--filter', `name=${name}_`])) left.push(`volume ${id}`)
      return [...new Set(left)]
    }
  }
  t.teardown(async () => {
    if (!t.passing()) {
      const logs = await compose(['logs', '--no-color', '--tail', '30'], 60_000).catch((err) => ({ stdout: err.message }))
      console.error(`# compose logs of ${name} (a check failed):\n${logs.stdout}`)
    }
    await compose(['down', '-v', '--remove-orphans', '-t', '5'], 120_000).catch((err) => console.error(err.message))
    // Whatever down missed (a half-created project), by the project's label.
    for (const [kind, rm] of [['ps -aq', 'rm -fv'], ['network ls -q', 'network rm'], ['volume ls -q', 'volume rm -f']]) {
      const { stdout } = await sh('docker', [...kind.split(' '), '--filter', `label=${label}`]).catch(() => ({ stdout: '' }))
      const found = stdout.split('\n').filter(Boolean)
      if (found.length > 0) await sh('docker', [...rm.split(' '), ...found]).catch((err) => console.error(err.message))
    }
  })
  return project
}

export interface Inside { status: number, body: string }

// Run by the image's node inside a container: one GET with exactly these headers (Host included,
// which fetch will not set); an admitted event stream is read only up to its headers.
const GET_INSIDE = `
const [url, headers] = process.argv.slice(1)
require('node:http').get(url, { headers: JSON.parse(headers) }, (res) => {
  const done = (body) => { process.stdout.write(JSON.stringify({ status: res.statusCode, body })); process.exit(0) }
  if (String(res.headers['content-type']).startsWith('text/event-stream')) return done('')
  let body = ''
  res.setEncoding('utf8')
  res.on('data', (chunk) => { body += chunk })
  res.on('end', () => done(body))
}).on('error', (err) => { console.error(err.message); process.exit(1) })`

/**
 * A GET made from inside a container that has node (an app or worker container): the request
 * comes from that container's address on the project's network, as Prometheus's scrape would,
 * or a client other than the test's own.
 */
export async function getFrom (container: string, url: string, headers: Record<string, string> = {}): Promise<Inside> {
  const { stdout } = await sh('docker', ['exec', container, 'node', '-e', GET_INSIDE, url, JSON.stringify(headers)], { timeoutMs: 30_000 })
  return JSON.parse(stdout)
}
