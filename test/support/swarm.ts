// The machinery of the Swarm tests (test/swarm/): a swarm of this test's own on the local engine
// (refused if the engine is already in one), a stack deployed from deploy/stack.yml (and any
// override, such as deploy/stack-sentinel.yml) under a unique name, and at teardown, whatever
// happens, `docker stack rm`, its volumes, and `docker swarm leave --force`. Also a client of the
// client library that records what it receives, as the tests connect many of them.
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { WebSocket } from 'ws'
import { createClient, type FanoutClient } from '../../client/index.js'
import type { Received } from './audit.js'
import { ROOT } from './helper.js'
import { answers, sh } from './compose.js'

type Tap = {
  teardown (fn: () => unknown): void
  comment (...args: unknown[]): void
  passing (): boolean
}

/** Why the Swarm test cannot run here, or undefined when it can. */
export async function swarmUnavailable (): Promise<string | undefined> {
  if (!await answers('docker', ['info'])) return 'no Docker engine answers `docker info` (.ci/run starts dockerd)'
  const state = (await sh('docker', ['info', '--format', '{{.Swarm.LocalNodeState}}'])).stdout.trim()
  if (state !== 'inactive') {
    return `the engine is already in a swarm (state ${state}) that this test did not create; it will not deploy into ` +
      'it nor leave it (`docker swarm leave --force` first, if that swarm is yours to end)'
  }
}

/** Polls `fn` every `everyMs` until it returns a truthy value; rejects after `timeoutMs` saying what. */
export async function poll<T> (fn: () => T | Promise<T>, timeoutMs: number, what: string, everyMs = 500): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await fn()
    if (value) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(everyMs)
  }
}

export interface Stack {
  name: string
  /** `docker stack deploy` of the stack's files (deploy/stack.yml by default) with `env` for their variables. */
  deploy (): Promise<number>
  /** The running containers of one service on this node. */
  containers (service: string): Promise<string[]>
  /** Tasks of a service that Swarm wants running and that run (healthy, when it has a check). */
  runningTasks (service: string): Promise<number>
  /** The service's update state (`updating`, `completed`, `rollback_completed`…), '' before any. */
  updateState (service: string): Promise<string>
  /** Removes the stack, waits for its containers to go, removes its volumes, leaves the swarm. */
  remove (): Promise<void>
  /** What is left: containers, networks, volumes of the stack; the swarm if still active. */
  leftovers (): Promise<string[]>
}

const lines = (stdout: string): string[] => stdout.split('\n').map((l) => l.trim()).filter(Boolean)

/**
 * The variables both Swarm tests deploy with: their image and port, a guest event every 200-400 ms,
 * a 3 s lease, and a history that holds the whole run (the checks read it all back from the stream).
 */
export function testStackEnv (image: string, lbPort: number): NodeJS.ProcessEnv {
  return {
    FANOUT_IMAGE: image,
    LB_PORT: String(lbPort),
    GUEST_MIN_DELAY_MS: '200',
    GUEST_MAX_DELAY_MS: '400',
    WORKER_LEASE_MS: '3000',
    HISTORY_SIZE: '20000'
  }
}

export interface StackOptions {
  /** The compose files, in order, relative to the repository (later ones override). */
  files?: string[]
  /** The services whose tasks and last log lines are printed when a check failed. */
  services?: string[]
}

/** `docker swarm init` now; the stack `name` deployable; everything removed at teardown. */
export async function swarmStack (t: Tap, name: string, env: NodeJS.ProcessEnv, options: StackOptions = {}): Promise<Stack> {
  const { files = ['deploy/stack.yml'], services = ['app', 'worker', 'lb'] } = options
  const hadGwbridge = (await sh('docker', ['network', 'ls', '-q', '--filter', 'name=^docker_gwbridge$'])).stdout.trim() !== ''
  const init = await sh('docker', ['swarm', 'init', '--advertise-addr', '127.0.0.1'])
  t.comment(`docker swarm init --advertise-addr 127.0.0.1: ${init.ms} ms`)
  const label = `com.docker.stack.namespace=${name}`
  let removed = false
  const stack: Stack = {
    name,
    async deploy () {
      const { ms } = await sh('docker', ['stack', 'deploy', '--resolve-image', 'never', ...files.flatMap((f) => ['-c', join(ROOT, f)]), name], {
        env: { ...process.env, ...env }
      })
      return ms
    },
    async containers (service) {
      return lines((await sh('docker', ['ps', '-q', '--filter', `label=com.docker.swarm.service.name=${name}_${service}`])).stdout)
    },
    async runningTasks (service) {
      const { stdout } = await sh('docker', ['service', 'ps', `${name}_${service}`, '--filter', 'desired-state=running', '--format', '{{.CurrentState}}'])
      return lines(stdout).filter((l) => l.startsWith('Running')).length
    },
    async updateState (service) {
      return (await sh('docker', ['service', 'inspect', `${name}_${service}`, '--format', '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}'])).stdout.trim()
    },
    async remove () {
      if (removed) return
      removed = true
      await sh('docker', ['stack', 'rm', name]).catch((err) => console.error(err.message))
      // stack rm returns at once; the tasks stop (draining) afterwards, and only then can the
      // network and the volumes go.
      await poll(async () => lines((await sh('docker', ['ps', '-aq', '--filter', `label=${label}`])).stdout).length === 0, 90_000, 'the stack\'s containers to go', 1000)
        .catch((err) => console.error(err.message))
      const left = lines((await sh('docker', ['ps', '-aq', '--filter', `label=${label}`])).stdout)
      if (left.length > 0) await sh('docker', ['rm', '-fv', ...left]).catch((err) => console.error(err.message))
      await poll(async () => lines((await sh('docker', ['network', 'ls', '-q', '--filter', `label=${label}`])).stdout).length === 0, 30_000, 'the stack\'s network to go', 1000)
        .catch((err) => console.error(err.message))
      const volumes = lines((await sh('docker', ['volume', 'ls', '-q', '--filter', `label=${label}`])).stdout)
      if (volumes.length > 0) await sh('docker', ['volume', 'rm', '-f', ...volumes]).catch((err) => console.error(err.message))
      await sh('docker', ['swarm', 'leave', '--force']).catch((err) => console.error(err.message))
      // Made by the first overlay network a container joined; not there before this test: removed.
      if (!hadGwbridge) await sh('docker', ['network', 'rm', 'docker_gwbridge']).catch(() => {})
    },
    async leftovers () {
      const left: string[] = []
      for (const [kind, args] of [['container', ['ps', '-aq']], ['network', ['network', 'ls', '-q']], ['volume', ['volume', 'ls', '-q']]] as const) {
        for (const id of lines((await sh('docker', [...args, '--filter', `label=${label}`])).stdout)) left.push(`${kind} ${id}`)
      }
      for (const id of lines((await sh('docker', ['volume', 'ls', '-q', '--filter', `name=${name}_`])).stdout)) left.push(`volume ${id}`)
      const state = (await sh('docker', ['info', '--format', '{{.Swarm.LocalNodeState}}'])).stdout.trim()
      if (state !== 'inactive') left.push(`swarm ${state}`)
      if (!hadGwbridge && (await sh('docker', ['network', 'ls', '-q', '--filter', 'name=^docker_gwbridge$'])).stdout.trim() !== '') left.push('network docker_gwbridge')
      return [...new Set(left)]
    }
  }
  t.teardown(async () => {
    if (!t.passing() && !removed) {
      for (const service of services) {
        const ps = await sh('docker', ['service', 'ps', '--no-trunc', `${name}_${service}`]).catch((err) => ({ stdout: err.message }))
        const logs = await sh('docker', ['service', 'logs', '--tail', '20', `${name}_${service}`]).catch((err) => ({ stdout: err.message }))
        console.error(`# ${name}_${service} (a check failed):\n${ps.stdout}\n${logs.stdout}`)
      }
    }
    await stack.remove()
  })
  return stack
}

/**
 * A client of the client library on /guest (`single: 'guest'`), as the demo page is: it reconnects
 * and resumes by itself; every event its `onEvent` delivers and every notice is recorded.
 */
export class LibraryFollower {
  failedOpens = 0
  readonly ids: string[] = []
  /** Arrival time of each event (ms), parallel to `ids`. */
  readonly at: number[] = []
  /** Events and loss notices in the order they came (test/support/audit.ts). */
  readonly order: Received = []
  /** When it was closed (ms). */
  readonly closes: number[] = []
  #client?: FanoutClient

  constructor (readonly url: string) {}

  async start (): Promise<void> {
    const client = createClient({ url: this.url, single: 'guest', WebSocket: WebSocket as never, EventSource: false })
    this.#client = client
    let opened = false
    client.on((notice) => {
      if (notice.type !== 'state') return
      if (notice.state === 'open') opened = true
      if (notice.state === 'reconnecting') {
        if (opened) this.closes.push(Date.now())
        else this.failedOpens++
        opened = false
      }
    })
    client.subscribe<{ type: string }>('guest', {
      onEvent: (e) => { this.order.push({ id: e.id }); this.ids.push(e.id); this.at.push(Date.now()) },
      onGap: (gap) => { this.order.push({ lostAfter: gap.after ?? null }) },
      onLost: () => { this.order.push({ lostAfter: this.ids.at(-1) ?? null }) }
    })
    await poll(() => client.state === 'open', 30_000, 'the library client to open', 50).catch(() => {})
  }

  stop (): void {
    this.#client?.close()
  }

  /** An event arrived after `since` (ms). */
  liveAfter (since: number): boolean {
    return (this.at.at(-1) ?? 0) > since
  }
}
