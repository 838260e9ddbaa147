/**
 * The parts of prom-client the server uses, each from its own file. The package's index loads all of its parts
 * at once, with its Pushgateway (node:http, node:https, node:url), its Summary (tdigest, bintrees), its bucket
 * helpers and its cluster aggregator: ~20 ms of CPU in every process of `postern serve`, in every command that
 * loads the server, and in every test process that runs one. Same package, same files, fewer of them.
 * (prom-client declares no `exports` map: its lib/ files are its public layout, as its own index names them.)
 */
import { createRequire } from 'node:module';
import type * as PromClient from 'prom-client';
import { deferModule } from '../loading/deferred-module.ts';

const require = createRequire(import.meta.url);

export const Registry = require('prom-client/lib/registry') as typeof PromClient.Registry;
export type Registry = PromClient.Registry;
export const Counter = require('prom-client/lib/counter') as typeof PromClient.Counter;
export const Gauge = require('prom-client/lib/gauge') as typeof PromClient.Gauge;
export const Histogram = require('prom-client/lib/histogram') as typeof PromClient.Histogram;
/**
 * Its default metrics' process CPU counter requires @opentelemetry/api (51 files, ~30 ms of CPU at every process
 * start) for the trace ids of exemplars, which the server never enables: that require gets a stand-in that loads the
 * real package at its first use (none, unless exemplars are turned on).
 */
deferModule(require, '@opentelemetry/api', { requirer: 'prom-client/lib/metrics/processCpuTotal' });
export const collectDefaultMetrics = require('prom-client/lib/defaultMetrics') as typeof PromClient.collectDefaultMetrics;
/** The supervisor's alone (cluster-metrics.ts, which merges its children's answers): loaded by the first call. */
export const aggregatorRegistry = (): typeof PromClient.AggregatorRegistry => require('prom-client/lib/cluster') as typeof PromClient.AggregatorRegistry;
