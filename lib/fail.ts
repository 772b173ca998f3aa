/** Prints one clear line and exits 1: bad configuration is not a crash, so no stack trace. */
export function fail (what: string, err: unknown): never {
  process.stderr.write(`${what}: ${(err as Error).message}\n`)
  process.exit(1)
}
