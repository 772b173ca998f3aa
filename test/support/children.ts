import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process'
import type { Socket } from 'node:net'
import type { Writable } from 'node:stream'

// A process killed with SIGKILL runs no handler, so whatever it started would outlive it: a
// redis-server, an nginx with its workers, a replica, a tmpfs mount. A watchdog outside this
// process holds a list of them and reads a pipe from us; the kernel closes the pipe however we
// die, and on end of file the watchdog kills every process group, lazily unmounts every mount and
// removes every temp dir still listed. On a clean exit the list is empty and it just ends.
const WATCHDOG = `
declare -A groups mounts dirs
while read -r op kind what; do
  case "$op $kind" in
    "+ group") groups[$what]=1 ;;
    "- group") unset "groups[$what]" ;;
    "+ mount") mounts[$what]=1 ;;
    "- mount") unset "mounts[$what]" ;;
    "+ dir") dirs[$what]=1 ;;
    "- dir") unset "dirs[$what]" ;;
  esac
done
for g in "\${!groups[@]}"; do kill -KILL -- "-$g" 2>/dev/null; done
for m in "\${!mounts[@]}"; do umount -l -- "$m" 2>/dev/null; rmdir -- "$m" 2>/dev/null; done
for d in "\${!dirs[@]}"; do rm -rf -- "$d"; done
exit 0
`

let watchdog: Writable | undefined

function tell (line: string): void {
  if (watchdog === undefined) {
    // In its own session, so a Ctrl-C or a group kill aimed at us does not take it first.
    const child = spawn('bash', ['-c', WATCHDOG], { detached: true, stdio: ['pipe', 'ignore', 'ignore'] })
    child.on('error', () => {}) // without bash nothing is watched; the spawns below still work
    child.unref()
    const stdin = child.stdin as Socket
    stdin.on('error', () => {})
    stdin.unref() // the pipe must not keep this process alive
    watchdog = stdin
  }
  watchdog.write(`${line}\n`)
}

function killGroup (pgid: number): void {
  try {
    process.kill(-pgid, 'SIGKILL')
  } catch {} // the group is already empty
}

/**
 * `spawn`, with the child leading its own process group, which dies with this process however
 * this process ends (SIGKILL included), and is killed whole once its leader exits: whatever the
 * child started and left behind goes with it.
 */
export function spawnOwned (command: string, args: readonly string[], options: SpawnOptions = {}): ChildProcess {
  const child = spawn(command, args, { ...options, detached: true })
  const pgid = child.pid
  if (pgid !== undefined) {
    tell(`+ group ${pgid}`)
    child.once('exit', () => {
      killGroup(pgid)
      tell(`- group ${pgid}`)
    })
  }
  return child
}

/** Kills the child's whole process group now. */
export function killOwned (child: ChildProcess, signal: NodeJS.Signals = 'SIGKILL'): void {
  if (child.pid === undefined) return
  try {
    process.kill(-child.pid, signal)
  } catch {}
}

/**
 * Has the watchdog clean up `path` should this process die before `release()`: a mount point is
 * lazily unmounted and its (empty) directory removed; a dir is removed with what it holds.
 */
export function ownPath (kind: 'mount' | 'dir', path: string): { release (): void } {
  tell(`+ ${kind} ${path}`)
  return { release: () => tell(`- ${kind} ${path}`) }
}
