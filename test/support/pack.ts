// The package as a fresh clone packs it: a copy of what git tracks (no dist/: `prepack` builds
// it), packed with its own npm cache. For the tests that install the tarball into a new app.
import { execFile } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, symlinkSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { ROOT } from './helper.js'

const exec = promisify(execFile)

export type Npm = (args: string[], cwd: string) => Promise<{ stdout: string, stderr: string }>

/** Packs a clean copy of the sources into `dir`; returns the tarball's name, its files, and npm with `dir`'s cache. */
export async function packClean (dir: string): Promise<{ filename: string, files: Array<{ path: string }>, npm: Npm }> {
  const src = join(dir, 'src')
  const { stdout: tracked } = await exec('git', ['ls-files', '-z'], { cwd: ROOT })
  for (const file of tracked.split('\0').filter(Boolean)) {
    if (!existsSync(join(ROOT, file))) continue
    mkdirSync(join(src, file, '..'), { recursive: true })
    cpSync(join(ROOT, file), join(src, file))
  }
  symlinkSync(join(ROOT, 'node_modules'), join(src, 'node_modules'))
  const cache = join(dir, 'npm-cache')
  const npm: Npm = async (args, cwd) => exec('npm', [...args, '--cache', cache, '--no-audit', '--no-fund', '--loglevel=error'], { cwd, maxBuffer: 16 * 1024 * 1024 })
  const { stdout: packed } = await npm(['pack', '--json', '--pack-destination', dir], src)
  const [{ filename, files }] = JSON.parse(packed) as Array<{ filename: string, files: Array<{ path: string }> }>
  return { filename, files, npm }
}
