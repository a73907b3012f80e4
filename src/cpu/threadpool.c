/* threadpool.c - a fixed pool of worker threads shared by every session.
 *
 * A job is a range split into one contiguous chunk per thread; the caller
 * runs chunk 0 itself. The job counter works as a sequence lock: it is odd
 * while the caller writes a job's fields and even once the job is posted,
 * and a worker that read the fields checks the counter did not move, so a
 * worker that sat out the previous job never runs a half-written one.
 * Jobs are small and frequent (a decoding step of SmolLM2-135M, 30 layers,
 * posts about 150), so hand-offs spin: a worker that finished a job polls
 * the job counter for a while before it sleeps on a condition variable, and
 * the caller polls the count of unfinished chunks. A sleeping worker is woken
 * only when one is known to sleep (the sleeper count and the job counter are
 * sequentially consistent atomics, so no wake-up is lost).
 */
#include "pool.h"

#include "../core/internal.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#define TNN_MAX_THREADS 256
#define SPIN_POLLS 2000 /* a few us of polling before a worker sleeps */

typedef struct {
    pthread_mutex_t use; /* held by the thread that owns the pool for a job */
    pthread_mutex_t mu;  /* guards sleeping and waking */
    pthread_cond_t wake;
    pthread_t threads[TNN_MAX_THREADS];
    int n_workers; /* threads besides the caller */
    int want;      /* requested size (0 = default) */
    bool started;
    atomic_bool stopping;
    atomic_int sleepers;
    /* the current job; gen is odd while the fields below are written */
    atomic_uint_fast64_t gen;
    uint64_t start_gen; /* gen when the workers were made: they wait for a newer one */
    _Atomic(tnn_range_fn) fn;
    _Atomic(void *) ctx;
    atomic_int_fast64_t n;
    atomic_int n_chunks;
    atomic_int pending; /* chunks not yet finished by workers */
} pool_t;

static pool_t pool = {
    .use = PTHREAD_MUTEX_INITIALIZER,
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void chunk_range(int64_t n, int n_chunks, int i, int64_t *b, int64_t *e) {
    *b = n * i / n_chunks;
    *e = n * (i + 1) / n_chunks;
}

/* Waits until gen moves past `seen` (or the pool stops); returns the new gen. */
static uint64_t wait_job(uint64_t seen) {
    for (int i = 0; i < SPIN_POLLS; i++) {
        uint64_t g = atomic_load(&pool.gen);
        if (g != seen || atomic_load(&pool.stopping)) return g;
        cpu_relax();
    }
    pthread_mutex_lock(&pool.mu);
    atomic_fetch_add(&pool.sleepers, 1);
    uint64_t g;
    while ((g = atomic_load(&pool.gen)) == seen && !atomic_load(&pool.stopping))
        pthread_cond_wait(&pool.wake, &pool.mu);
    atomic_fetch_sub(&pool.sleepers, 1);
    pthread_mutex_unlock(&pool.mu);
    return g;
}

static void *worker(void *arg) {
    int idx = (int)(intptr_t)arg; /* chunk index of this worker: 1.. */
    uint64_t seen = pool.start_gen;
    for (;;) {
        uint64_t g = wait_job(seen);
        if (atomic_load(&pool.stopping)) break;
        if (g & 1) { /* the caller is writing a job: look again */
            cpu_relax();
            continue;
        }
        tnn_range_fn fn = atomic_load_explicit(&pool.fn, memory_order_relaxed);
        void *ctx = atomic_load_explicit(&pool.ctx, memory_order_relaxed);
        int64_t n = atomic_load_explicit(&pool.n, memory_order_relaxed);
        int n_chunks = atomic_load_explicit(&pool.n_chunks, memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire); /* the reads above stay above */
        if (atomic_load_explicit(&pool.gen, memory_order_relaxed) != g) continue; /* moved on */
        seen = g;
        if (idx < n_chunks) {
            int64_t b, e;
            chunk_range(n, n_chunks, idx, &b, &e);
            fn(ctx, b, e);
            atomic_fetch_sub(&pool.pending, 1);
        }
    }
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
    atomic_store(&pool.stopping, true);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mu);
    for (int i = 0; i < pool.n_workers; i++) pthread_join(pool.threads[i], NULL);
    atomic_store(&pool.stopping, false);
    pool.started = false;
    pool.n_workers = 0;
}

/* Called with pool.use held. */
static void pool_start(void) {
    if (pool.started) return;
    int n = pool.want > 0 ? pool.want : default_threads();
    pool.n_workers = 0;
    pool.start_gen = atomic_load(&pool.gen); /* no job can be posted until we return */
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
    atomic_fetch_add(&pool.gen, 1); /* odd: writing */
    atomic_store_explicit(&pool.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&pool.ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&pool.n, n, memory_order_relaxed);
    atomic_store_explicit(&pool.n_chunks, n_chunks, memory_order_relaxed);
    atomic_store(&pool.pending, n_chunks - 1);
    atomic_fetch_add(&pool.gen, 1); /* even: the job is posted (seq_cst) */
    if (atomic_load(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool.mu);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.mu);
    }

    int64_t b, e;
    chunk_range(n, n_chunks, 0, &b, &e);
    fn(ctx, b, e);

    for (long spins = 0; atomic_load(&pool.pending) > 0; spins++) {
        if (spins < SPIN_POLLS)
            cpu_relax();
        else
            sched_yield(); /* a worker was descheduled: give it the core */
    }
    pthread_mutex_unlock(&pool.use);
}

/* ------------------------------------------------------------------------ */
/* Per-thread scratch buffers                                               */
/* ------------------------------------------------------------------------ */

typedef struct {
    float *p[TNN_TBUF_COUNT];
    size_t cap[TNN_TBUF_COUNT]; /* in floats */
} thread_bufs;

static pthread_key_t tbuf_key;
static pthread_once_t tbuf_once = PTHREAD_ONCE_INIT;
static bool tbuf_key_ok;

static void tbuf_free(void *v) {
    thread_bufs *tb = v;
    if (!tb) return;
    for (int i = 0; i < TNN_TBUF_COUNT; i++) free(tb->p[i]);
    free(tb);
}

static void tbuf_init(void) { tbuf_key_ok = pthread_key_create(&tbuf_key, tbuf_free) == 0; }

/* The calling thread's buffers, by the time the library unloads. */
__attribute__((destructor)) static void tbuf_atexit(void) {
    if (!tbuf_key_ok) return;
    thread_bufs *tb = pthread_getspecific(tbuf_key);
    if (tb) {
        pthread_setspecific(tbuf_key, NULL);
        tbuf_free(tb);
    }
}

float *tnn__thread_buf(int slot, size_t n) {
    if (slot < 0 || slot >= TNN_TBUF_COUNT) return NULL;
    pthread_once(&tbuf_once, tbuf_init);
    if (!tbuf_key_ok) return NULL;
    thread_bufs *tb = pthread_getspecific(tbuf_key);
    if (!tb) {
        if (!(tb = calloc(1, sizeof *tb))) return NULL;
        if (pthread_setspecific(tbuf_key, tb) != 0) {
            free(tb);
            return NULL;
        }
    }
    if (n > tb->cap[slot]) {
        size_t bytes = (n * sizeof(float) + 63) & ~(size_t)63;
        float *q = aligned_alloc(64, bytes);
        if (!q) return NULL;
        free(tb->p[slot]);
        tb->p[slot] = q;
        tb->cap[slot] = bytes / sizeof(float);
    }
    return tb->p[slot];
}
