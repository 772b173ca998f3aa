'use strict'
// tap runs each test file in a process of its own, through ts-node (transpile only), which
// transpiled the same sources again in every one of them: the app, lib/ and the helpers, about a
// second and a half of CPU per test file before it ran a line. This is ts-node's own transpiler
// (the one it uses without this file, called the same way), its output kept on disk by a hash of
// everything it depends on, so each source is transpiled once per change.
// tsconfig.tap.json names it ("ts-node": { "transpiler" }); tap's TypeScript plugin picks that
// file over tsconfig.json. Outputs with diagnostics are not kept (ts-node reports them each time).
const { createHash } = require('node:crypto')
const { mkdirSync, readFileSync, renameSync, writeFileSync } = require('node:fs')
const { dirname, join } = require('node:path')
const ts = require('typescript')
// ts-node as tap's TypeScript plugin ships it (a fork); its package exports do not name this file.
const tsNode = dirname(require.resolve('@isaacs/ts-node-temp-fork-for-pr-2009'))
const { createTsTranspileModule } = require(join(tsNode, 'ts-transpile-module.js'))

const CACHE = join(__dirname, '..', '..', 'node_modules', '.cache', 'fastify-fanout-ts')

exports.create = function create ({ service: { config }, nodeModuleEmitKind }) {
  const transpileModule = createTsTranspileModule(ts, { compilerOptions: config.options, reportDiagnostics: true })
  const moduleKind = nodeModuleEmitKind === 'nodeesm' ? 'module' : 'commonjs'
  const salt = JSON.stringify([ts.version, config.options, moduleKind])
  mkdirSync(CACHE, { recursive: true })
  return {
    transpile (input, { fileName }) {
      const key = createHash('sha256').update(salt).update('\0').update(fileName).update('\0').update(input).digest('hex')
      const file = join(CACHE, `${key}.json`)
      try {
        return JSON.parse(readFileSync(file, 'utf8'))
      } catch {} // not there yet (or half a file from a process that died writing it)
      const { outputText, sourceMapText, diagnostics } = transpileModule(input, { fileName }, moduleKind)
      if (diagnostics === undefined || diagnostics.length === 0) {
        // Whole or not at all: another test process may be reading it, or writing the same.
        const temp = `${file}.${process.pid}`
        writeFileSync(temp, JSON.stringify({ outputText, sourceMapText }))
        renameSync(temp, file)
      }
      return { outputText, sourceMapText, diagnostics }
    }
  }
}
