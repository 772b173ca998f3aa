import { createHash, randomBytes } from 'node:crypto'
import { constants as fsConstants } from 'node:fs'
import { access, mkdir, open, readdir, rename, stat, statfs, unlink, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { fileTypeFromBuffer } from 'file-type'
import type { UploadErrorCode } from './protocol.js'

export interface UploadOptions {
  dir: string
  /** Refuse an upload that would leave less than this many bytes free on the upload filesystem. */
  minFreeBytes: number
  /** Refuse an upload that would bring the uploads in `dir` over this many bytes; undefined: none. */
  quotaBytes?: number | undefined
}

export interface SavedUpload {
  name: string
  bytes: number
  sha256: string
  mime: string
}

export class UploadError extends Error {
  constructor (readonly code: UploadErrorCode, message: string) {
    super(message)
    this.name = 'UploadError'
  }
}

/**
 * Saves uploads under server-chosen names: written to a temp file, fsynced, then renamed into
 * place, so a reader never sees half a file and a failed write leaves nothing behind. The
 * extension comes from the content's magic bytes, never from the client.
 */
export class UploadStore {
  /** Bytes of the uploads in the directory, counted at init and kept up to date since. */
  #used = 0
  /** Bytes promised to uploads being written now: checked against both limits, never overshot. */
  #reserved = 0

  constructor (readonly options: UploadOptions) {}

  /** What the quota counts: saved uploads, and the ones being written. */
  get usedBytes (): number { return this.#used + this.#reserved }

  /** Creates the directory and proves it writable; throws a message fit for an operator. */
  async init (): Promise<void> {
    const { dir } = this.options
    try {
      await mkdir(dir, { recursive: true })
      await access(dir, fsConstants.W_OK)
    } catch (err) {
      throw new Error(`UPLOAD_DIR ${dir} is not a writable directory (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`)
    }
    if (this.options.quotaBytes !== undefined) this.#used = await sizeOfFiles(dir)
  }

  /** Saves one upload; `owner` (an identity's id) goes into its name. */
  async save (data: Buffer, owner?: string): Promise<SavedUpload> {
    const { dir, minFreeBytes, quotaBytes } = this.options
    // Nothing to keep, and each would still cost an inode: a few thousand fill a small filesystem.
    if (data.length === 0) throw new UploadError('empty', 'an upload must have at least one byte')
    const { free, inodesFree } = await space(dir)
    // One inode for the temp file (renamed into place, not copied). Filesystems without a fixed
    // inode count (btrfs, some network ones) report none at all, and are not checked here.
    if (inodesFree === 0) throw new UploadError('disk_full', NO_INODES)
    // Check and reserve with no await in between: concurrent uploads each see the others' bytes.
    if (quotaBytes !== undefined && this.#used + this.#reserved + data.length > quotaBytes) {
      throw new UploadError('quota', `the upload directory's quota of ${quotaBytes} bytes has no room for ${data.length} more`)
    }
    if (free - this.#reserved - data.length < minFreeBytes) {
      throw new UploadError('disk_full', `not enough space for ${data.length} bytes: the upload directory keeps ${minFreeBytes} bytes free`)
    }
    this.#reserved += data.length
    try {
      const saved = await this.#write(data, owner)
      this.#used += data.length
      return saved
    } finally {
      this.#reserved -= data.length
    }
  }

  async #write (data: Buffer, owner: string | undefined): Promise<SavedUpload> {
    const { dir } = this.options
    const type = await fileTypeFromBuffer(data)
    const who = owner === undefined ? '' : `${owner.replace(/[^A-Za-z0-9_-]/g, '_').slice(0, 32)}-`
    const name = `${stamp(new Date())}-${who}${randomBytes(6).toString('hex')}.${type?.ext ?? 'bin'}`
    const temp = join(dir, `.tmp-${name}`)
    const final = join(dir, name)
    let file: FileHandle | undefined
    let renamed = false
    try {
      // wx: never follow or overwrite an existing path; 0o640: no execute bits, whatever the umask.
      file = await open(temp, 'wx', 0o640)
      await file.writeFile(data)
      await file.sync()
      await file.close()
      file = undefined
      await rename(temp, final)
      renamed = true
      await syncDir(dir)
    } catch (err) {
      await file?.close().catch(() => {})
      // Whatever failed, nothing stays: the client is told the upload was not saved.
      await unlink(renamed ? final : temp).catch(() => {})
      throw await toUploadError(err as NodeJS.ErrnoException, dir, data.length)
    }
    return {
      name,
      bytes: data.length,
      sha256: createHash('sha256').update(data).digest('hex'),
      mime: type?.mime ?? 'application/octet-stream'
    }
  }
}

const NO_INODES = 'the upload filesystem has no free inodes (too many files), though it may have free bytes'

async function toUploadError (err: NodeJS.ErrnoException, dir: string, bytes: number): Promise<UploadError> {
  if (err.code === 'ENOSPC') {
    // ENOSPC is both "no blocks" and "no inodes": statfs tells which. At most one inode left (the
    // temp file's own, given back by its removal) while the bytes were there: out of inodes.
    const left = await space(dir).catch(() => undefined)
    if (left?.inodesFree !== undefined && left.inodesFree <= 1 && left.free >= bytes) return new UploadError('disk_full', NO_INODES)
    return new UploadError('disk_full', 'the upload directory\'s filesystem is full (no space left)')
  }
  if (err.code === 'EDQUOT') return new UploadError('disk_full', 'the disk quota of the user the server runs as is used up (EDQUOT)')
  if (err.code === 'EFBIG') return new UploadError('too_big', 'the file is larger than the filesystem allows')
  return new UploadError('write_failed', `the upload could not be saved (${err.code ?? 'error'})`)
}

/**
 * One upload at a time per connection, so acks come back in the order the files were sent. While
 * one is being written the connection is paused: memory per client stays at about one message,
 * however slow the disk and whatever the rate limit admits. Tasks handle their own errors.
 */
export class UploadQueue {
  #tail = Promise.resolve()
  #pending = 0

  constructor (readonly pause: () => void, readonly resume: () => void) {}

  push (task: () => Promise<void>): void {
    if (this.#pending++ === 0) this.pause()
    this.#tail = this.#tail.then(task).finally(() => {
      if (--this.#pending === 0) this.resume()
    })
  }
}

/** Bytes of the saved files in `dir`; temp files of writes in progress are not uploads yet. */
async function sizeOfFiles (dir: string): Promise<number> {
  let total = 0
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (!entry.isFile() || entry.name.startsWith('.tmp-')) continue
    total += (await stat(join(dir, entry.name)).catch(() => ({ size: 0 }))).size
  }
  return total
}

/** Free bytes for an unprivileged writer, and free inodes (undefined where the filesystem has no fixed count). */
async function space (dir: string): Promise<{ free: number, inodesFree: number | undefined }> {
  const fs = await statfs(dir)
  return { free: fs.bavail * fs.bsize, inodesFree: fs.files > 0 ? fs.ffree : undefined }
}

/** The rename is durable only once the directory entry is on disk too. */
async function syncDir (dir: string): Promise<void> {
  const handle = await open(dir, 'r')
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}

function stamp (d: Date): string {
  return d.toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15)
}
