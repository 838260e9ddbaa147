/**
 * Import first. Every spooled message costs several fsyncs, which run on libuv's thread pool (4 threads
 * by default): with many sessions committing at once the pool, not the disk, was the bottleneck
 * (test/bench). Must be set before the pool starts, i.e. before the first asynchronous fs call.
 */
process.env.UV_THREADPOOL_SIZE ??= '32';
