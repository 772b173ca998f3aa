import type { Socket } from 'node:net'
import type { BrokerEvent } from '../event.js'

/**
 * How a client's bytes reach it: the hub writes a transport's pre-built bytes straight to its TCP
 * socket, so a transport says what that socket is and how an event and a message look on it.
 * WebSocket (websocket.ts) and EventSource (sse.ts) are the two.
 */
export interface Transport {
  readonly raw: Socket
  readonly open: boolean
  /** Whether the peer answers pings; one that does not is kept alive by TCP and the buffer cap alone. */
  readonly answersPings: boolean
  /**
   * Whether this transport's event bytes are WebSocket frames (`frameOf`): the hub then writes a
   * turn's live events as one joined run of frames, shared by every client that gets the same run.
   */
  readonly joinsTurns: boolean
  /**
   * Whether an event's bytes are the same for every client of this transport, so the hub may
   * join them into blocks shared by every resuming client (not so where each client's carry its
   * own positions, as a many-channel EventSource's ids do).
   */
  readonly sharesFrames: boolean
  /** The event's bytes on this transport (from `channel`): built once per event where shared, then reused. */
  frame (event: BrokerEvent, channel: string): Buffer
  /** A message for this client alone; `type` names a control message. */
  message (data: string | Buffer, type?: string): Buffer
  ping (): void
  onPong (listener: () => void): void
  /** A close the server starts; a peer that does not answer it is dropped (CLOSE_GRACE_MS). */
  close (code: number, reason: string): void
  terminate (): void
  onClose (listener: () => void): void
}
