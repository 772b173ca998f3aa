// The shape of the import graph, read from the sources: no circle, and no import back up the
// layers (lib ← plugins ← routes ← app ← demo ← the two commands). The core of lib/ knows nothing
// of Fastify; the plugin knows nothing of the demo; nothing shipped imports the test tooling.
import { readdirSync, readFileSync } from 'node:fs'
import { dirname, join, normalize, relative } from 'node:path'
import t from 'tap'
import { ROOT } from '../support/helper.js'

const ENTRY_POINTS = ['app.ts', 'server.ts', 'worker.ts']
const FOLDERS = ['lib', 'plugins', 'routes', 'demo']

/** Lower layers may not import higher ones. */
function layer (file: string): number {
  if (file.startsWith('lib/')) return 0
  if (file.startsWith('plugins/')) return 1
  if (file.startsWith('routes/')) return 2
  if (file === 'app.ts') return 3
  if (file.startsWith('demo/')) return 4
  return 5 // server.ts, worker.ts
}

function sources (): string[] {
  const files = [...ENTRY_POINTS]
  for (const folder of FOLDERS) {
    for (const file of readdirSync(join(ROOT, folder), { recursive: true, encoding: 'utf8' })) {
      if (file.endsWith('.ts')) files.push(join(folder, file))
    }
  }
  return files
}

/** Every import of `file`: relative ones as repository paths, packages by name. */
function importsOf (file: string): { local: string[], packages: string[] } {
  const text = readFileSync(join(ROOT, file), 'utf8')
  const specifiers = [...text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^'"]*?\bfrom\s+'([^']+)'|\bimport\('([^']+)'\)/g)].map((m) => m[1] ?? m[2])
  return {
    local: specifiers.filter((s) => s.startsWith('.')).map((s) => normalize(join(dirname(file), s)).replace(/\.js$/, '.ts')),
    packages: specifiers.filter((s) => !s.startsWith('.'))
  }
}

const files = sources()
const graph = new Map(files.map((file) => [file, importsOf(file)]))

t.test('the sources are read: every local import resolves to a source file', async (t) => {
  t.ok(files.length > 30, `${files.length} source files`)
  const unresolved = [...graph].flatMap(([file, { local }]) => local.filter((target) => !graph.has(target)).map((target) => `${file} → ${target}`))
  t.same(unresolved, [], 'no import outside the product (no test tooling, no tools/)')
})

t.test('no import runs back up the layers', async (t) => {
  const upward = [...graph].flatMap(([file, { local }]) => local.filter((target) => layer(target) > layer(file)).map((target) => `${file} → ${target}`))
  t.same(upward, [], 'lib ← plugins ← routes ← app ← demo ← server, worker')
  const intoDemo = [...graph].flatMap(([file, { local }]) => local.filter((target) => target.startsWith('demo/') && layer(file) < 4).map((target) => `${file} → ${target}`))
  t.same(intoDemo, [], 'the plugin does not know the demo')
})

t.test('no circle', async (t) => {
  const circles: string[] = []
  const state = new Map<string, 'open' | 'done'>()
  const visit = (file: string, path: string[]): void => {
    if (state.get(file) === 'done') return
    if (state.get(file) === 'open') {
      circles.push([...path.slice(path.indexOf(file)), file].map((f) => relative('.', f)).join(' → '))
      return
    }
    state.set(file, 'open')
    for (const target of graph.get(file)?.local ?? []) visit(target, [...path, file])
    state.set(file, 'done')
  }
  for (const file of files) visit(file, [])
  t.same(circles, [], 'the import graph is a tree of layers, with no circle')
})

t.test('lib/ knows nothing of Fastify, but for the type of an authorize hook', async (t) => {
  const fastify = [...graph].filter(([file, { packages }]) => file.startsWith('lib/') && packages.some((p) => p === 'fastify' || p.startsWith('@fastify/') || p === 'fastify-plugin'))
  t.same(fastify.map(([file]) => file), ['lib/options.ts'], 'only lib/options.ts, for `Authorize`')
  t.match(readFileSync(join(ROOT, 'lib/options.ts'), 'utf8'), /^import type \{ FastifyRequest \} from 'fastify'$/m, 'and as a type only')
  const faker = [...graph].filter(([, { packages }]) => packages.includes('@faker-js/faker')).map(([file]) => file)
  t.same(faker, ['demo/guests.ts'], 'faker, an optional peer, is the demo\'s alone')
})
