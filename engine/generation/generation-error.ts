/**
 * What stops a generation's build, as lines that name their file, and the one check the supervisor of `postern
 * serve` makes before it binds (the policy services' sockets). Apart from build-generation.ts so that the
 * supervisor, which builds no generation, does not load the sandbox, the TLS stack and the SMTP server.
 */
import type { LoadedConfig } from '../config/load-config.ts';
import { ConfigError, formatProblem, keyPath, type ConfigProblem } from '../config/config-error.ts';
import { policySocketProblems } from '../policy-service/listen.ts';
import type { GenerationWarning } from './build-generation.ts';

/** Every problem that stopped a build, in the order the parts are read. */
export class GenerationError extends ConfigError {
  readonly lines: readonly string[];
  /** Found on the way, as a successful build would have returned them. */
  readonly warnings: readonly GenerationWarning[];
  constructor(configFile: string, lines: readonly string[], warnings: readonly GenerationWarning[] = []) {
    super(lines.map((line) => asProblem(configFile, line)));
    this.name = 'GenerationError';
    this.lines = lines;
    this.warnings = warnings;
  }
}

/**
 * Why the policy services' unix sockets could not be made, as problem lines. Also what `postern serve`'s
 * supervisor checks before it binds them (it binds before any generation is built), so that its start is
 * refused with the lines `postern check` prints.
 */
export async function policySocketLines(loaded: LoadedConfig): Promise<string[]> {
  const lines: string[] = [];
  for (const [i, p] of loaded.config.policyServices.entries()) {
    for (const problem of await policySocketProblems(p)) lines.push(located(loaded, ['policyServices', i, ...problem.key], problem.message));
  }
  return lines;
}

/** A problem at a key of the configuration, as `file:line:col: key: message`. */
export function located(loaded: LoadedConfig, path: PropertyKey[], message: string): string {
  return formatProblem({ file: loaded.file, ...loaded.locate?.(path), path: keyPath(path), message });
}

/** `<file[:line[:col]]>: <message>` back into a problem that formats to the same line. */
function asProblem(configFile: string, line: string): ConfigProblem {
  const at = line.indexOf(': ');
  return at > 0 ? { file: line.slice(0, at), message: line.slice(at + 2) } : { file: configFile, message: line };
}
