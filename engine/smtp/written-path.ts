/**
 * The path a MAIL or RCPT command names, as the client wrote it, for the decision line of a refusal of that
 * command when no parsed address stands for it: a path that does not parse (`<a@b@x>`, no angle brackets), one
 * refused before smtp-server parses it (a quoted local part that needs its quotes, a character no address carries,
 * a parameter with a control character). Those lines named the recipients accepted before it instead
 * (`to=<accepted@x> nrcpt=1` on the refusal of `<a@b@x>`), or no sender at all at MAIL; Postfix names the path
 * refused. Shown as clientText() shows what a client chose: bounded, what a terminal would act on escaped.
 */
import { clientText } from '../logging/logger.ts';
import type { DecisionFacts, DecisionStage } from './decision-log.ts';

/** `command`: the whole line, verb included (`RCPT TO:<…> PARAM=…`). */
export function writtenPath(command: Buffer): string {
  const line = command.toString('utf8');
  const colon = line.indexOf(':');
  const rest = colon < 0 ? '' : line.slice(colon + 1).trimStart();
  // Within angle brackets, up to the closing one (a quoted local part may hold spaces); else the first word.
  const close = rest.startsWith('<') ? rest.indexOf('>') : -1;
  const path = rest.startsWith('<') ? rest.slice(1, close < 0 ? undefined : close) : rest.split(/\s/, 1)[0]!;
  // Blanks and angle brackets escaped as well: the line's text names its addresses `from=<…> to=<…>`, and a path that
  // never parsed could otherwise write fields of its own there (`<x; to=<ceo@x> nrcpt=1>`) for a reader of the text.
  return clientText(path).replace(/[\s<>]/gu, (c) => `\\u{${c.codePointAt(0)!.toString(16)}}`);
}

/**
 * The facts of a refusal Postern decided at MAIL or RCPT, with the written path where they name no address: the
 * refusals made before smtp-server parses the command (envelope-path.ts, parameter-controls.ts) carry none.
 */
export function withWrittenPath(stage: DecisionStage, facts: DecisionFacts | undefined, command: Buffer | null): DecisionFacts | undefined {
  if (command === null) return facts;
  if (stage === 'RCPT' && facts?.to === undefined) return { ...facts, to: writtenPath(command) };
  if (stage === 'MAIL' && facts?.from === undefined) return { ...facts, from: writtenPath(command) };
  return facts;
}
