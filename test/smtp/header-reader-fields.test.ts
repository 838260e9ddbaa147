// HeaderReader's field count (limits.maxHeaderFields) is decided byte by byte as the message streams past: the
// same count whatever the chunking, every split point of sections with folded lines, mixed CRLF and LF, and a
// line that starts with a lone CR included, and always what the data hook is given (headers()).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HeaderReader } from '../../engine/smtp/header-reader.ts';

const SECTIONS = [
  'Subject: a\r\nX-B: b\r\n folded\r\n\tagain\r\nX-C: c\r\n\r\nbody\r\nNot-A: field\r\n',
  'Subject: a\nX-B: b\n folded\nX-C: c\n\nbody\n',
  'A: 1\r\n\rB: lone CR\r\nC: 3\n\r\nbody',
  'A: 1\r\nB: 2\r\n', // no empty line: all header section
  '\r\nbody only\r\nX: y\r\n',
];

for (const section of SECTIONS) {
  test(`fields of ${JSON.stringify(section.slice(0, 24))}… are counted alike at every split`, () => {
    const bytes = Buffer.from(section);
    const whole = new HeaderReader(1 << 20);
    whole.push(bytes); // false for the lone CR's section (bareCr): it is still read to its end
    assert.equal(whole.tooLarge, false);
    const expected = whole.headers().length;
    assert.equal(whole.fields, expected);
    for (let a = 0; a <= bytes.length; a++) {
      for (let b = a; b <= bytes.length; b++) {
        const r = new HeaderReader(1 << 20);
        for (const piece of [bytes.subarray(0, a), bytes.subarray(a, b), bytes.subarray(b)]) r.push(piece);
        assert.equal(r.fields, expected, `split at ${a}, ${b}`);
        assert.equal(r.sectionBytes, whole.sectionBytes, `split at ${a}, ${b}`);
      }
      const byByte = new HeaderReader(1 << 20);
      for (const byte of bytes) byByte.push(Buffer.from([byte]));
      assert.equal(byByte.fields, expected, 'one byte at a time');
    }
  });
}

test('one field over maxFields refuses the section; exactly maxFields does not', () => {
  const section = Buffer.from('A: 1\r\nB: 2\r\n folded\r\nC: 3\r\n\r\n');
  const atLimit = new HeaderReader(1 << 20, 3);
  assert.equal(atLimit.push(section), true);
  assert.equal(atLimit.tooManyFields, false);
  const over = new HeaderReader(1 << 20, 2);
  assert.equal(over.push(section), false);
  assert.equal(over.tooManyFields, true);
  assert.equal(over.tooLarge, true);
  assert.deepEqual(over.headers(), []);
});
