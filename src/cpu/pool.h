/* pool.h - the process-wide thread pool: one set of worker threads made on
 * first use and kept, so no call pays for starting threads.
 */
#ifndef TNN_POOL_H
#define TNN_POOL_H

#include <stddef.h>
#include <stdint.h>

/* Runs fn(ctx, begin, end) over [0, n) split into contiguous chunks, one per
 * thread (at most n / min_chunk chunks). Returns when every chunk is done.
 * Callers must make each output element's value independent of the split
 * (that is what keeps results bit-identical for any thread count). When
 * another thread holds the pool, the work runs on the caller's thread. */
typedef void (*tnn_range_fn)(void *ctx, int64_t begin, int64_t end);
void tnn__parallel_for(int64_t n, int64_t min_chunk, tnn_range_fn fn, void *ctx);

/* Threads the pool runs with (>= 1). */
int tnn__pool_threads(void);

/* Per-thread scratch: the calling thread's buffer `slot`, at least n floats,
 * 64-byte aligned; grown when a call needs more, kept for the next call,
 * freed when the thread exits (or, for the main thread, when the library
 * unloads). NULL when memory runs out. Each slot has one user at a time on a
 * thread, so a kernel that calls another gives them different slots. */
enum { TNN_TBUF_PACK_A, TNN_TBUF_PACK_B, TNN_TBUF_DEQUANT, TNN_TBUF_B_ROWS, TNN_TBUF_COUNT };
float *tnn__thread_buf(int slot, size_t n);

#endif
