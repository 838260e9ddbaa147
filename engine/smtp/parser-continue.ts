/**
 * smtp-server's parser (smtp-stream.js) resumes the input after a message with continue(): it runs the
 * continuation the end of the message left, then clears it. Postern answers MAIL, RCPT and DATA without
 * waiting, so that continuation can read a whole next message pipelined behind the first one and leave that
 * message's own continuation, which the clearing then lost: the commands after it were never read, and the
 * session stopped answering until its idle timeout. Cleared before it runs, as a callback taken once should be.
 */

interface ContinuableParser {
  _continueCallback: false | true | (() => void);
  continue(): void;
}

export function continueInOrder(parser: object): void {
  const p = parser as Partial<ContinuableParser>;
  if (!('_continueCallback' in p) || typeof p.continue !== 'function') return;
  p.continue = continueParser;
}

function continueParser(this: ContinuableParser): void {
  const next = this._continueCallback;
  if (typeof next === 'function') {
    this._continueCallback = false;
    next();
  } else {
    // continue() before the message's end was read: the end carries on at once (smtp-stream.js).
    this._continueCallback = true;
  }
}
