/**
 * The stream a message's DATA arrives on, in place of smtp-server's PassThrough: smtp-server's parser writes
 * the unescaped message into it, the intake reads it (message-intake.ts). A PassThrough is a Readable and a
 * Writable with their states, buffering and ticks, per message (perf: about 1 KB and several ticks a
 * message); this hands each chunk to the 'data' listeners as it is written.
 *
 * It keeps the part of the stream contract smtp-server (smtp-stream.js, smtp-connection.js) and the intake
 * use: write() (false while nobody reads: the parser then waits for 'drain' or 'close'), end(), destroy(),
 * resume() (smtp-server drains a message nobody read), 'data', then 'end' and 'close' on a later tick than
 * end(), as a stream emits them, 'error' (only to a listener, as smtp-server asks); readable, writable, destroyed,
 * readableEnded, writableEnded, readableFlowing; byteLength and sizeExceeded, which the parser sets.
 */
import { EventEmitter } from 'node:events';

type Listener = Parameters<EventEmitter['on']>[1];

export class MessageStream extends EventEmitter {
  /** Set by smtp-server's parser as the message comes in. */
  byteLength = 0;
  sizeExceeded = false;
  /** null until someone reads (a 'data' listener or resume()), then true. */
  readableFlowing: boolean | null = null;
  readableEnded = false;
  writableEnded = false;
  destroyed = false;
  /** Chunks written while nobody read yet (made when needed: normally the intake reads from the start). */
  #held: Buffer[] | null = null;
  /** A write returned false: 'drain' is owed. */
  #drainOwed = false;

  get readable(): boolean { return !this.destroyed && !this.readableEnded; }
  get writable(): boolean { return !this.destroyed && !this.writableEnded; }

  /** As a Readable's: a 'data' listener starts the flow. */
  override on(event: string | symbol, listener: Listener): this {
    super.on(event, listener);
    if (event === 'data' && this.readableFlowing !== true) this.resume();
    return this;
  }

  override addListener(event: string | symbol, listener: Listener): this {
    return this.on(event, listener);
  }

  resume(): this {
    if (this.readableFlowing === true) return this;
    this.readableFlowing = true;
    // What came before anyone read goes out on the next tick, after the listeners now being added.
    if (this.#held !== null || this.writableEnded) process.nextTick(flow, this);
    return this;
  }

  /** A chunk of the message; false when it is held because nobody reads yet. */
  write(chunk: Buffer): boolean {
    if (!this.writable) return false;
    if (this.readableFlowing === true && this.#held === null) {
      this.emit('data', chunk);
      return true;
    }
    (this.#held ??= []).push(chunk);
    this.#drainOwed = true;
    return false;
  }

  /** The end of the message (after `chunk`): 'end' then 'close' follow once everything was read. */
  end(chunk?: Buffer): this {
    if (!this.writable) return this;
    if (chunk && chunk.length > 0) this.write(chunk);
    this.writableEnded = true;
    if (this.readableFlowing === true && this.#held === null) process.nextTick(finish, this);
    return this;
  }

  /** Stop (the client went away): 'error' with `err` to its listeners, then 'close'. */
  destroy(err?: Error): this {
    if (this.destroyed) return this;
    this.destroyed = true;
    this.#held = null;
    process.nextTick(destroyed, this, err);
    return this;
  }

  /** On resume(): what was held, then 'drain', and the end if it came. */
  static flow(stream: MessageStream): void {
    const held = stream.#held ?? [];
    stream.#held = null;
    for (const chunk of held) {
      if (stream.destroyed) return;
      stream.emit('data', chunk);
    }
    if (stream.#drainOwed && !stream.destroyed) {
      stream.#drainOwed = false;
      stream.emit('drain');
    }
    if (stream.writableEnded && stream.#held === null) finish(stream);
  }
}

// Tick callbacks at module level: process.nextTick(fn, stream) makes no closure per message.
const flow = MessageStream.flow;

/** 'end', then 'close' at once: nothing waits in between (a stream's own tick between them cost one more per message). */
function finish(stream: MessageStream): void {
  if (stream.destroyed || stream.readableEnded) return;
  stream.readableEnded = true;
  stream.emit('end');
  stream.destroyed = true;
  stream.emit('close');
}

function destroyed(stream: MessageStream, err: Error | undefined): void {
  if (err && stream.listenerCount('error') > 0) stream.emit('error', err);
  stream.emit('close');
}


/** smtp-server's parser (SMTPStream), as far as switching it to data mode goes. */
interface DataModeParser {
  startDataMode(maxBytes?: number): unknown;
  _dataMode: boolean;
  _maxBytes: number;
  dataBytes: number;
  _atDataStart: boolean;
  _dataStream: unknown;
}

/**
 * Have smtp-server's parser hand each message to a MessageStream. Its startDataMode() does what
 * smtp-server's does (smtp-stream.js) with another stream; a parser without those fields (another
 * smtp-server version) keeps its own, and a test compares the two.
 */
export function useMessageStream(parser: object): void {
  const p = parser as Partial<DataModeParser>;
  if (!('_dataMode' in p && '_maxBytes' in p && 'dataBytes' in p && '_atDataStart' in p && '_dataStream' in p)) return;
  p.startDataMode = startDataMode;
}

function startDataMode(this: DataModeParser, maxBytes?: number): MessageStream {
  this._dataMode = true;
  this._maxBytes = (maxBytes && Number(maxBytes)) || Infinity;
  this.dataBytes = 0;
  this._atDataStart = true;
  const stream = new MessageStream();
  this._dataStream = stream;
  return stream;
}
