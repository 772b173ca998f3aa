import { createHash, randomBytes } from 'node:crypto'
import { constants as fsConstants } from 'node:fs'
import { access, mkdir, open, rename, statfs, unlink, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { fileTypeFromBuffer } from 'file-type'

export interface UploadOptions {
  dir: string
  /** Refuse an upload that would leave less than this many bytes free on the upload filesystem. */
  minFreeBytes: number
}

export interface SavedUpload {
  name: string
  bytes: number
  sha256: string
  mime: string
}

export type UploadErrorCode = 'disk_full' | 'write_failed' | 'unauthorized' | 'too_big'

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
  constructor (readonly options: UploadOptions) {}

  /** Creates the directory and proves it writable; throws a message fit for an operator. */
  async init (): Promise<void> {
    const { dir } = this.options
    try {
      await mkdir(dir, { recursive: true })
      await access(dir, fsConstants.W_OK)
    } catch (err) {
      throw new Error(`UPLOAD_DIR ${dir} is not a writable directory (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`)
    }
  }

  async save (data: Buffer): Promise<SavedUpload> {
    const { dir, minFreeBytes } = this.options
    const free = await freeBytes(dir)
    if (free - data.length < minFreeBytes) {
      throw new UploadError('disk_full', `not enough space for ${data.length} bytes: the upload directory keeps ${minFreeBytes} bytes free`)
    }
    const type = await fileTypeFromBuffer(data)
    const name = `${stamp(new Date())}-${randomBytes(6).toString('hex')}.${type?.ext ?? 'bin'}`
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
      throw toUploadError(err as NodeJS.ErrnoException)
    }
    return {
      name,
      bytes: data.length,
      sha256: createHash('sha256').update(data).digest('hex'),
      mime: type?.mime ?? 'application/octet-stream'
    }
  }
}

function toUploadError (err: NodeJS.ErrnoException): UploadError {
  if (err.code === 'ENOSPC' || err.code === 'EDQUOT') return new UploadError('disk_full', 'the upload directory is full')
  if (err.code === 'EFBIG') return new UploadError('too_big', 'the file is larger than the filesystem allows')
  return new UploadError('write_failed', `the upload could not be saved (${err.code ?? 'error'})`)
}

async function freeBytes (dir: string): Promise<number> {
  const fs = await statfs(dir)
  return fs.bavail * fs.bsize
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
