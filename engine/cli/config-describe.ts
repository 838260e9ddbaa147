/** `postern config describe`: the configuration reference from the schema, as text, Markdown or JSON Schema, or written into the docs. */
import { CONFIGURATION_DOC, configJsonSchema, referenceMarkdown, referenceText, writeDocument } from '../config/describe.ts';

export interface DescribeOptions { markdown?: boolean; json?: boolean; writeDocs?: string | boolean }

export async function configDescribeCommand(opts: DescribeOptions): Promise<number> {
  if (opts.writeDocs) {
    const file = typeof opts.writeDocs === 'string' ? opts.writeDocs : CONFIGURATION_DOC;
    try {
      const changed = await writeDocument(file);
      process.stdout.write(`${file}: ${changed ? 'reference updated' : 'reference already up to date'}\n`);
      return 0;
    } catch (err) {
      process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
      return 1;
    }
  }
  if (opts.json) process.stdout.write(`${JSON.stringify(configJsonSchema(), null, 2)}\n`);
  else process.stdout.write(opts.markdown ? referenceMarkdown() : referenceText());
  return 0;
}
