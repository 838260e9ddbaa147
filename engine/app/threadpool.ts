/**
 * Import first. Every spooled message waits for an fdatasync and a directory sync on libuv's thread pool
 * (4 threads by default); with many sessions committing at once they queue behind each other. Must be set
 * before the pool starts, i.e. before the first asynchronous fs call. An operator's own value wins.
 */
process.env.UV_THREADPOOL_SIZE ??= '16';
