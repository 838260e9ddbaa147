/**
 * A message as spooled, for a terminal: whoever sent it chose its bytes, and a terminal acts on the control
 * characters among them (ESC sequences clear the screen, set the window title, write the clipboard; a bare
 * CR overwrites the line it ends, hiding what came before). Shown as `cat -v` does (`^[`, `^M`, `^?`, and
 * `<U+009B>` for a C1 control in UTF-8, `<U+202E>` for a bidi embedding, override or isolate: an SMTPUTF8
 * address may carry them, and U+202E shows `evil` as `live`); tabs and line ends stay. Sent to a file or a pipe, the bytes are
 * written as they are.
 */
const CR = 0x0d;
const LF = 0x0a;
const TAB = 0x09;

/** The UTF-8 bytes after E2 of U+202A–U+202E (embeddings, overrides) and U+2066–U+2069 (isolates). */
function isBidiControl(second: number, third: number): boolean {
  return (second === 0x80 && third >= 0xaa && third <= 0xae) || (second === 0x81 && third >= 0xa6 && third <= 0xa9);
}

export function terminalSafe(message: Buffer): Buffer {
  const out: Buffer[] = [];
  let from = 0;
  const put = (i: number, text: string, skip = 1): void => {
    out.push(message.subarray(from, i), Buffer.from(text, 'latin1'));
    from = i + skip;
  };
  for (let i = 0; i < message.length; i++) {
    const b = message[i]!;
    if (b === LF || b === TAB || (b === CR && message[i + 1] === LF)) continue;
    if (b < 0x20) put(i, `^${String.fromCharCode(b + 0x40)}`);
    else if (b === 0x7f) put(i, '^?');
    else if (b === 0xc2 && message[i + 1]! >= 0x80 && message[i + 1]! <= 0x9f) put(i, `<U+00${message[i + 1]!.toString(16).toUpperCase()}>`, 2);
    else if (b === 0xe2 && isBidiControl(message[i + 1]!, message[i + 2]!)) put(i, `<U+${message.toString('utf8', i, i + 3).codePointAt(0)!.toString(16).toUpperCase()}>`, 3);
  }
  if (from === 0) return message;
  out.push(message.subarray(from));
  return Buffer.concat(out);
}
