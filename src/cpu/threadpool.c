/* threadpool.c - a fixed pool of worker threads shared by every session.
 * A job is a range split into one contiguous chunk per thread; the caller
 * runs chunk 0 itself. Workers sleep on a condition variable between jobs.
 */
#include "pool.h"

#include "../core/internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#define TNN_MAX_THREADS 256

typedef struct {
    pthread_mutex_t use; /* held by the thread that owns the pool for a job */
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    pthread_t threads[TNN_MAX_THREADS];
    int n_workers;  /* threads besides the caller */
    int want;       /* requested size (0 = default) */
    bool started, stopping;
    /* the current job */
    uint64_t gen;
    uint64_t start_gen; /* gen when the workers were made: they wait for a newer one */
    tnn_range_fn fn;
    void *ctx;
    int64_t n;
    int n_chunks;
    int pending;
} pool_t;

static pool_t pool = {
    .use = PTHREAD_MUTEX_INITIALIZER,
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
    .done = PTHREAD_COND_INITIALIZER,
};

static void chunk_range(int64_t n, int n_chunks, int i, int64_t *b, int64_t *e) {
    *b = n * i / n_chunks;
    *e = n * (i + 1) / n_chunks;
}

static void *worker(void *arg) {
    int idx = (int)(intptr_t)arg; /* chunk index of this worker: 1.. */
    pthread_mutex_lock(&pool.mu);
    uint64_t seen = pool.start_gen;
    for (;;) {
        while (!pool.stopping && pool.gen == seen) pthread_cond_wait(&pool.wake, &pool.mu);
        if (pool.stopping) break;
        seen = pool.gen;
        if (idx < pool.n_chunks) {
            tnn_range_fn fn = pool.fn;
            void *ctx = pool.ctx;
            int64_t b, e;
            chunk_range(pool.n, pool.n_chunks, idx, &b, &e);
            pthread_mutex_unlock(&pool.mu);
            fn(ctx, b, e);
            pthread_mutex_lock(&pool.mu);
            if (--pool.pending == 0) pthread_cond_signal(&pool.done);
        }
    }
    pthread_mutex_unlock(&pool.mu);
    return NULL;
}

static int default_threads(void) {
    const char *e = getenv("TNN_THREADS");
    if (e && *e) {
        char *end;
        long v = strtol(e, &end, 10);
        if (*end == '\0' && v >= 1 && v <= TNN_MAX_THREADS) return (int)v;
        tnn__log(TNN_LOG_WARN, "TNN_THREADS=%s is not a count in 1..%d; ignored", e,
                 TNN_MAX_THREADS);
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    if (n > TNN_MAX_THREADS) n = TNN_MAX_THREADS;
    return (int)n;
}

/* Called with pool.use held. */
static void pool_stop(void) {
    if (!pool.started) return;
    pthread_mutex_lock(&pool.mu);
    pool.stopping = true;
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mu);
    for (int i = 0; i < pool.n_workers; i++) pthread_join(pool.threads[i], NULL);
    pool.stopping = false;
    pool.started = false;
    pool.n_workers = 0;
}

/* Called with pool.use held. */
static void pool_start(void) {
    if (pool.started) return;
    int n = pool.want > 0 ? pool.want : default_threads();
    pool.n_workers = 0;
    pool.start_gen = pool.gen; /* no job can be posted until we return */
    for (int i = 1; i < n; i++) {
        if (pthread_create(&pool.threads[pool.n_workers], NULL, worker, (void *)(intptr_t)i)) {
            tnn__log(TNN_LOG_WARN, "could only start %d of %d threads", i, n);
            break;
        }
        pool.n_workers++;
    }
    pool.started = true;
}

__attribute__((destructor)) static void pool_atexit(void) {
    if (pthread_mutex_trylock(&pool.use) == 0) {
        pool_stop();
        pthread_mutex_unlock(&pool.use);
    }
}

int tnn_set_num_threads(int n) {
    if (n < 0 || n > TNN_MAX_THREADS)
        return TNN_ERR(TNN_ERR_ARG, "n=%d: want 0 (default) or 1..%d", n, TNN_MAX_THREADS);
    pthread_mutex_lock(&pool.use);
    if (n != pool.want || !pool.started) {
        pool_stop();
        pool.want = n;
        pool_start();
    }
    pthread_mutex_unlock(&pool.use);
    return TNN_OK;
}

int tnn_get_num_threads(void) {
    pthread_mutex_lock(&pool.use);
    pool_start();
    int n = pool.n_workers + 1;
    pthread_mutex_unlock(&pool.use);
    return n;
}

int tnn__pool_threads(void) { return tnn_get_num_threads(); }

void tnn__parallel_for(int64_t n, int64_t min_chunk, tnn_range_fn fn, void *ctx) {
    if (n <= 0) return;
    if (min_chunk < 1) min_chunk = 1;
    if (n <= min_chunk || pthread_mutex_trylock(&pool.use) != 0) {
        fn(ctx, 0, n);
        return;
    }
    pool_start();
    int64_t chunks = n / min_chunk;
    int n_chunks = (int)(chunks < pool.n_workers + 1 ? chunks : pool.n_workers + 1);
    if (n_chunks <= 1) {
        pthread_mutex_unlock(&pool.use);
        fn(ctx, 0, n);
        return;
    }
    pthread_mutex_lock(&pool.mu);
    pool.fn = fn;
    pool.ctx = ctx;
    pool.n = n;
    pool.n_chunks = n_chunks;
    pool.pending = n_chunks - 1;
    pool.gen++;
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mu);

    int64_t b, e;
    chunk_range(n, n_chunks, 0, &b, &e);
    fn(ctx, b, e);

    pthread_mutex_lock(&pool.mu);
    while (pool.pending > 0) pthread_cond_wait(&pool.done, &pool.mu);
    pthread_mutex_unlock(&pool.mu);
    pthread_mutex_unlock(&pool.use);
}
