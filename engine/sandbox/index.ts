/**
 * The policy-script sandbox: load a scripts folder, check it, run it on a pool of isolates.
 * The script-facing types live in ./api (and are published to script authors as scripts/postern.d.ts).
 */
export { Sandbox } from './sandbox.ts';
export type { SandboxOptions, SandboxStats, IsolateStats, IsolateState } from './sandbox.ts';
export { checkScripts, checkScriptDirectory } from './check-scripts.ts';
export type { CheckOptions } from './check-scripts.ts';
export { loadScriptDirectory, strayScriptFiles } from './load-scripts.ts';
export { prepareScript, prepareScripts } from './script-source.ts';
export type { ScriptSource, ScriptFile } from './script-source.ts';
export { ScriptError, ScriptErrors, ScriptFailure } from './errors.ts';
export type { FailureKind } from './errors.ts';
export type { HostBridge, LogLevel } from './host-callbacks.ts';
export { HOOK_NAMES, isHookName, parseScriptFileName } from './hooks.ts';
export { DEADLINE_SLACK_MS, OVERDUE_CAP_MS } from './sandbox.ts';
export { runningCall, runningCallTable, describeRunning, readMirror, removeMirror, StallMirror } from './running-call.ts';
export type { RunningScript, RunningCallTable } from './running-call.ts';
export { abandonedRunningScripts, exitMayHang, mustRecycle, onMustRecycle, onUnrecoverable, stuckLoadScripts, unrecoverableReasons } from './unrecoverable.ts';
export type { UnrecoverableListener } from './unrecoverable.ts';
export { openMessageText, closeMessageText, copyMessageText, MAX_MESSAGE_TEXT_BYTES, NO_MESSAGE_BODY } from './message-texts.ts';
export type { BodyReader } from './message-texts.ts';
export { GrowingList, KEPT_LIST_MIN, ListView } from './kept-lists.ts';
