import { Worker } from 'node:worker_threads';
const t0 = performance.now();
const w = new Worker(`const { parentPort } = require('node:worker_threads'); const { stripTypeScriptTypes } = require('node:module'); parentPort.on('message', (s) => parentPort.postMessage(stripTypeScriptTypes(s, {mode:'strip'})));`, { eval: true, execArgv: process.env.X ? [] : ['--disable-warning=ExperimentalWarning'] });
w.postMessage('let x: number = 1');
w.once('message', (m) => { console.log(JSON.stringify(m), performance.now() - t0); setTimeout(() => w.terminate(), 200); });
