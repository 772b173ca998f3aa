// What a killed process leaves behind: nothing. `npm run cluster` SIGKILLed takes Redis, the
// worker, the replicas and nginx (its workers too) with it; a test process SIGKILLed takes its
// processes, temp dirs and tmpfs mounts (test/support/children.ts).
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import t from 'tap'
import { freePort, holds, missing, ROOT, run, tempDir, waitFor } from '../support/helper.js'

/** Every live descendant of `pid`, from /proc. */
function descendants (pid: number): number[] {
  const parents = new Map<number, number>()
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      // The command may hold spaces and parentheses: the fields after it start after the last ')'.
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      parents.set(Number(entry), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]))
    } catch {} // gone meanwhile
  }
  const found: number[] = []
  const walk = (parent: number) => {
    for (const [child, ppid] of parents) if (ppid === parent) { found.push(child); walk(child) }
  }
  walk(pid)
  return found
}

const alive = (pid: number): boolean => existsSync(`/proc/${pid}`) && !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'))

t.test('npm run cluster killed with SIGKILL: Redis, worker, replicas and nginx die with it', { skip: missing('redis-server', 'nginx') }, async (t) => {
  const port = await freePort()
  const cluster = run(t, process.execPath, ['dist/cluster.js'], {
    PORT: String(port),
    HOST: '127.0.0.1',
    CLUSTER_REPLICAS: '2',
    REDIS_URL: undefined,
    UPLOAD_DIR: tempDir(t, 'fanout-uploads-'),
    LOG_LEVEL: 'warn',
    METRICS_INTERVAL_MS: '0'
  })
  await waitFor(() => cluster.output().includes('| ready:') || cluster.child.exitCode !== null, 120_000, 'the cluster to start')
  const dir = /data in (\S+) \(removed on exit\)/.exec(cluster.output())?.[1]
  const pids = descendants(cluster.child.pid as number)
  const names = pids.map((pid) => readFileSync(`/proc/${pid}/comm`, 'utf8').trim())
  t.ok(names.includes('redis-server') && names.includes('nginx') && names.filter((n) => n === 'node').length >= 3,
    `redis-server, nginx and the node processes are running (${names.join(', ')})`)
  t.ok(dir !== undefined && existsSync(dir), 'and its temp dir exists')

  cluster.child.kill('SIGKILL')
  t.ok(await holds(() => pids.every((pid) => !alive(pid)), 30_000), `every one of its ${pids.length} processes is gone (${pids.filter(alive).join(', ') || 'none'} left)`)
  t.ok(await holds(() => !existsSync(String(dir)), 30_000), 'its temp dir is removed')
  // Its ports are not checked: free again, they are anyone's, and a parallel test may take one.
})

// A stand-in for a test file: it starts a process that starts another, owns a temp dir and, as
// root, a tmpfs mount, says where they are, then waits to be killed.
const OWNER = `
import { execFileSync } from 'node:child_process'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ownPath, spawnOwned } from '${pathToFileURL(join(ROOT, 'dist/test/support/children.js')).href}'
const child = spawnOwned('sh', ['-c', 'sleep 600 & sleep 600'], { stdio: 'ignore' })
const dir = mkdtempSync(join(tmpdir(), 'fanout-owned-'))
ownPath('dir', dir)
let mount = ''
if (process.getuid() === 0) {
  mount = mkdtempSync(join(tmpdir(), 'fanout-owned-tmpfs-'))
  ownPath('mount', mount)
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mount])
}
console.log(JSON.stringify({ child: child.pid, dir, mount }))
setInterval(() => {}, 1000)
`

/** Whether `dir` is a mount point now. */
const mounted = (dir: string): boolean => readFileSync('/proc/self/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === dir)

t.test('a process killed with SIGKILL leaves no process, temp dir or mount behind', async (t) => {
  const owner = run(t, process.execPath, ['--input-type=module', '-e', OWNER])
  await waitFor(() => /^\{.*\}$/m.test(owner.output()) || owner.child.exitCode !== null, 60_000, 'the owner to start')
  const { child, dir, mount } = JSON.parse(/^\{.*\}$/m.exec(owner.output())?.[0] ?? owner.output()) as { child: number, dir: string, mount: string }
  const group = [child, ...descendants(child)]
  t.equal(group.length, 3, 'its child and grandchild are running')
  t.ok(existsSync(dir), 'its temp dir exists')
  if (mount) t.ok(mounted(mount), 'its tmpfs is mounted')

  owner.child.kill('SIGKILL')
  t.ok(await holds(() => group.every((pid) => !alive(pid)), 30_000), `its child and grandchild are gone (${group.filter(alive).join(', ') || 'none'} left)`)
  t.ok(await holds(() => !existsSync(dir), 30_000), 'its temp dir is removed')
  if (mount) t.ok(await holds(() => !mounted(mount) && !existsSync(mount), 30_000), 'its tmpfs is unmounted and removed')
  else t.comment('NOT TESTED here: the tmpfs mount needs root (CI runs as root)')
})
