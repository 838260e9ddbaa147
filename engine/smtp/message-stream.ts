/**
 * The stream a message's DATA arrives on, in place of smtp-server's PassThrough: smtp-server's parser writes
 * the unescaped message into it, the intake reads it (message-intake.ts). A PassThrough is a Readable and a
 * Writable with their states, buffering and ticks, per message (perf: about 1 KB and several ticks a
 * message); this hands each chunk to the 'data' listeners as it is written.
 *
 * It keeps the part of the stream contract smtp-server (smtp-stream.js, smtp-connection.js) and the intake
 * use: write() (false while nobody reads: the parser then waits for 'drain' or 'close'), end(), destroy(),
 * resume() (smtp-server drains a message nobody read), 'data', then 'end' and 'close' on later ticks as a
 * stream emits them, 'error' (only to a listener, as smtp-server asks); readable, writable, destroyed,
 * readableEnded, writableEnded, readableFlowing; byteLength and sizeExceeded, which the parser sets.
 */
import { EventEmitter } from 'node:events';

export class MessageStream extends EventEmitter {
  /** Set by smtp-server's parser as the message comes in. */
  byteLength = 0;
  sizeExceeded = false;
  /** null until someone reads (a 'data' listener or resume()), then true. */
  readableFlowing: boolean | null = null;
  readableEnded = false;
  writableEnded = false;
  destroyed = false;
  /** Chunks written while nobody read yet. */
  #held: Buffer[] = [];
  /** A write returned false: 'drain' is owed. */
  #drainOwed = false;

  get readable(): boolean { return !this.destroyed && !this.readableEnded; }
  get writable(): boolean { return !this.destroyed && !this.writableEnded; }

  /** As a Readable's: a 'data' listener starts the flow. */
  override on(event: string | symbol, listener: (...args: unknown[]) => void): this {
    super.on(event, listener);
    if (event === 'data' && this.readableFlowing !== true) this.resume();
    return this;
  }

  override addListener(event: string | symbol, listener: (...args: unknown[]) => void): this {
    return this.on(event, listener);
  }

  resume(): this {
    if (this.readableFlowing === true) return this;
    this.readableFlowing = true;
    // What came before anyone read goes out on the next tick, after the listeners now being added.
    if (this.#held.length > 0 || this.writableEnded) process.nextTick(() => this.#flow());
    return this;
  }

  /** A chunk of the message; false when it is held because nobody reads yet. */
  write(chunk: Buffer): boolean {
    if (!this.writable) return false;
    if (this.readableFlowing === true && this.#held.length === 0) {
      this.emit('data', chunk);
      return true;
    }
    this.#held.push(chunk);
    this.#drainOwed = true;
    return false;
  }

  /** The end of the message (after `chunk`): 'end' then 'close' follow once everything was read. */
  end(chunk?: Buffer): this {
    if (!this.writable) return this;
    if (chunk && chunk.length > 0) this.write(chunk);
    this.writableEnded = true;
    if (this.readableFlowing === true && this.#held.length === 0) process.nextTick(() => this.#finish());
    return this;
  }

  /** Stop (the client went away): 'error' with `err` to its listeners, then 'close'. */
  destroy(err?: Error): this {
    if (this.destroyed) return this;
    this.destroyed = true;
    this.#held = [];
    process.nextTick(() => {
      if (err && this.listenerCount('error') > 0) this.emit('error', err);
      this.emit('close');
    });
    return this;
  }

  #flow(): void {
    const held = this.#held;
    this.#held = [];
    for (const chunk of held) {
      if (this.destroyed) return;
      this.emit('data', chunk);
    }
    if (this.#drainOwed && !this.destroyed) {
      this.#drainOwed = false;
      this.emit('drain');
    }
    if (this.writableEnded && this.#held.length === 0) this.#finish();
  }

  #finish(): void {
    if (this.destroyed || this.readableEnded) return;
    this.readableEnded = true;
    this.emit('end');
    this.destroyed = true;
    process.nextTick(() => this.emit('close'));
  }
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
