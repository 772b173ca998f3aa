// The benchmark's own build (tsconfig.bench.json), for the bench smoke tests: compiled aside and
// moved into dist/bench/ file by file, so a test that reads dist/ meanwhile never sees half a file.
import { copyFileSync, mkdirSync, readdirSync, renameSync, statSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import type { Test } from 'tap'
import { ROOT, run, tempDir } from './helper.js'

export async function buildBench (t: Test): Promise<void> {
  // `npm test` builds the product; the bench has its own build.
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc')
  const aside = tempDir(t, 'bench-build-')
  const build = run(t, process.execPath, [tsc, '-p', 'tsconfig.bench.json', '--outDir', aside])
  t.equal((await build.exited).code, 0, `the bench compiles: ${build.output()}`)
  for (const file of readdirSync(join(aside, 'bench'), { recursive: true, encoding: 'utf8' })) {
    const from = join(aside, 'bench', file)
    const to = join(ROOT, 'dist', 'bench', file)
    if (!statSync(from).isFile()) continue
    mkdirSync(dirname(to), { recursive: true })
    copyFileSync(from, `${to}.${process.pid}`)
    renameSync(`${to}.${process.pid}`, to) // whole or not at all, should anything read it meanwhile
  }
}
