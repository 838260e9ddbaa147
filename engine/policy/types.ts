/** Names shared across policy modules. */
export type { HookName } from '../sandbox/api/index.ts';
export type { ListenerConfig } from '../config/schema.ts';
