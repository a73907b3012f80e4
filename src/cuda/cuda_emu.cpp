/* cuda_emu.cpp - the CPU emulator behind cuda_emu.h. Device memory is host
 * memory with a registry of live allocations, so copies can check which side
 * each pointer is on. A block's threads are fibers on the launching thread,
 * switched only at barriers, which keeps a block of 256 threads to a few
 * microseconds where one OS thread per emulated thread costs milliseconds.
 */
#include "cuda_emu.h"

#include <sys/mman.h>
#include <unistd.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <algorithm>
#include <atomic>
#include <bit>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define TNN_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TNN_EMU_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define TNN_EMU_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TNN_EMU_TSAN 1
#endif
#endif
#ifdef TNN_EMU_ASAN
#include <sanitizer/asan_interface.h>
#endif
#ifdef TNN_EMU_TSAN
#include <sanitizer/tsan_interface.h>
#endif

thread_local constinit uint3 threadIdx{};
thread_local constinit uint3 blockIdx{};
thread_local constinit dim3 blockDim{};
thread_local constinit dim3 gridDim{};

namespace {

/* 0xFF bytes are NaN as float, double and half and -1 as an integer: reads of
 * memory nobody wrote poison results instead of passing as zeros. */
constexpr unsigned char kGarbage = 0xFF;
constexpr unsigned long long kGarbageBits = ~0ull;
constexpr size_t kMaxSmem = 227 * 1024; /* an H100's opt-in limit */
constexpr size_t kDefaultSmem = 48 * 1024;
constexpr size_t kReportedMem = size_t(16) << 30; /* total when no limit is set */
constexpr size_t kAllocAlign = 256;               /* what cudaMalloc guarantees */
constexpr size_t kFiberStack = 256 * 1024;
constexpr int kVersion = 12040; /* CUDA 12.4, for driver and runtime */
constexpr unsigned kCopyKinds = cudaMemcpyDefault + 1;

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

/* Per host thread, as CUDA keeps it. */
thread_local cudaError_t t_last_error = cudaSuccess;

cudaError_t record(cudaError_t err) {
    if (err != cudaSuccess)
        t_last_error = err;
    return err;
}

/* ------------------------------------------------------------------------ */
/* The device: process-wide, as a GPU is                                    */
/* ------------------------------------------------------------------------ */

struct Device {
    std::mutex mu;                            /* guards the four below */
    std::map<uintptr_t, size_t> allocs;       /* cudaMalloc: base -> bytes */
    std::map<uintptr_t, size_t> host_allocs;  /* cudaMallocHost */
    std::set<const CUstream_st *> streams;
    size_t in_use = 0;
    std::atomic<size_t> limit{0};
    std::atomic<int> count{1};
    std::atomic<long> launches{0};
    std::atomic<long> copies[kCopyKinds] = {};
    /* Held for a whole launch: blocks run one at a time, so a function-static
     * __shared__ array belongs to one block. */
    std::mutex launch_mu;
};

Device &device() {
    static Device d;
    return d;
}

/* The stream being captured (one at a time), what it recorded, and whether
 * an illegal call broke the capture. */
struct Capture {
    cudaStream_t stream = nullptr;
    bool active = false, broken = false;
    std::vector<std::function<void()>> ops;
};
Capture &capture() {
    static Capture c;
    return c;
}
std::atomic<long> g_graph_launches{0};

/* An illegal call during a capture: the capture is broken. */
bool capture_forbids() {
    Capture &c = capture();
    if (!c.active) return false;
    c.broken = true;
    return true;
}

/* The live allocation of `map` that holds address p, or end(). */
std::map<uintptr_t, size_t>::const_iterator find_alloc(const std::map<uintptr_t, size_t> &map,
                                                       const void *p) {
    auto addr = reinterpret_cast<uintptr_t>(p);
    auto it = map.upper_bound(addr);
    if (it == map.begin())
        return map.end();
    --it;
    return addr - it->first < it->second ? it : map.end();
}

bool is_device(const Device &d, const void *p) { return find_alloc(d.allocs, p) != d.allocs.end(); }

/* Whether [p, p+n) lies inside one live cudaMalloc allocation. */
bool is_device_range(const Device &d, const void *p, size_t n) {
    auto it = find_alloc(d.allocs, p);
    return it != d.allocs.end() && n <= it->second - (reinterpret_cast<uintptr_t>(p) - it->first);
}

bool stream_ok(Device &d, cudaStream_t stream) {
    std::lock_guard lock(d.mu);
    return stream == nullptr || d.streams.count(stream) != 0;
}

bool has_device() { return device().count.load() > 0; }

cudaError_t check_device_ordinal(int dev) {
    int n = device().count.load();
    if (n == 0)
        return cudaErrorNoDevice;
    return dev >= 0 && dev < n ? cudaSuccess : cudaErrorInvalidDevice;
}

thread_local int t_device = 0;

/* ------------------------------------------------------------------------ */
/* Copies                                                                   */
/* ------------------------------------------------------------------------ */

cudaMemcpyKind kind_of(bool src_device, bool dst_device) {
    if (src_device)
        return dst_device ? cudaMemcpyDeviceToDevice : cudaMemcpyDeviceToHost;
    return dst_device ? cudaMemcpyHostToDevice : cudaMemcpyHostToHost;
}

/* A copy whose pointers are not on the sides `kind` names fails: that is the
 * host/device mix-up this registry is for. */
cudaError_t copy(void *dst, const void *src, size_t count, cudaMemcpyKind kind) {
    if (count == 0)
        return cudaSuccess;
    if (dst == nullptr || src == nullptr || (unsigned)kind >= kCopyKinds)
        return record(cudaErrorInvalidValue);
    Device &d = device();
    {
        std::lock_guard lock(d.mu);
        bool src_dev = is_device(d, src), dst_dev = is_device(d, dst);
        cudaMemcpyKind actual = kind_of(src_dev, dst_dev);
        if (kind != cudaMemcpyDefault && kind != actual)
            return record(cudaErrorInvalidValue);
        if ((src_dev && !is_device_range(d, src, count)) ||
            (dst_dev && !is_device_range(d, dst, count)))
            return record(cudaErrorInvalidValue);
        kind = actual;
    }
    std::memcpy(dst, src, count);
    d.copies[kind]++;
    return cudaSuccess;
}

cudaError_t set(void *ptr, int value, size_t count) {
    if (count == 0)
        return cudaSuccess;
    Device &d = device();
    {
        std::lock_guard lock(d.mu);
        if (!is_device_range(d, ptr, count))
            return record(cudaErrorInvalidValue);
    }
    std::memset(ptr, value, count);
    return cudaSuccess;
}

/* ------------------------------------------------------------------------ */
/* Fibers                                                                   */
/* ------------------------------------------------------------------------ */

/* The registers of a suspended context. On x86-64 a switch saves the
 * callee-saved registers on the old stack and returns on the new one: a few
 * nanoseconds, and calls and returns stay paired for the CPU's return
 * predictor. Elsewhere swapcontext, which costs a system call. */
#if defined(__x86_64__)
extern "C" void tnn_emu_swap_stack(void **save_sp, void *load_sp);
asm(R"(
    .text
    .p2align 4
    .globl tnn_emu_swap_stack
    .hidden tnn_emu_swap_stack
    .type tnn_emu_swap_stack, @function
tnn_emu_swap_stack:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size tnn_emu_swap_stack, .-tnn_emu_swap_stack
)");

struct Regs {
    void *sp = nullptr;
};

/* A stack whose first switch pops six zero registers and returns into
 * `entry`, as if called, with a zero return address to end backtraces. */
void regs_init(Regs &r, char *stack_lo, size_t size, void (*entry)()) {
    auto *top = reinterpret_cast<uintptr_t *>(
        reinterpret_cast<uintptr_t>(stack_lo + size) & ~uintptr_t(15));
    top[-1] = 0;
    top[-2] = reinterpret_cast<uintptr_t>(entry);
    for (int i = 3; i <= 8; i++)
        top[-i] = 0;
    r.sp = top - 8;
}

void regs_swap(Regs &from, const Regs &to) { tnn_emu_swap_stack(&from.sp, to.sp); }
#else
struct Regs {
    ucontext_t uc{};
};

void regs_init(Regs &r, char *stack_lo, size_t size, void (*entry)()) {
    getcontext(&r.uc);
    r.uc.uc_stack.ss_sp = stack_lo;
    r.uc.uc_stack.ss_size = size;
    r.uc.uc_link = nullptr;
    makecontext(&r.uc, entry, 0);
}

void regs_swap(Regs &from, const Regs &to) { swapcontext(&from.uc, &to.uc); }
#endif

/* A context: the host thread's own, or a fiber's. */
struct Ctx {
    Regs regs;
    const void *stack_lo = nullptr; /* ASan needs each stack's bounds */
    size_t stack_size = 0;
    void *asan_fake_stack = nullptr;
    void *tsan_fiber = nullptr;
};

struct Fiber {
    Ctx ctx;
    void *mapping = nullptr; /* stack plus guard page */
    size_t mapping_size = 0;
    unsigned tid = 0; /* linear id of the emulated thread it runs */
    uint3 idx{};
    unsigned long long shfl_result = 0;
};

/* What a warp round is for: lanes meeting in different ones fail the block. */
enum class Round { sync, shuffle, activemask };

/* The barrier state of one warp. A round opens when a lane arrives and
 * completes when every lane of its mask that has not returned has arrived. */
struct Warp {
    unsigned live = 0;    /* lanes that exist and have not returned */
    unsigned mask = 0;    /* lanes taking part in the open round */
    unsigned arrived = 0; /* lanes waiting in it; 0: no round open */
    Round kind = Round::sync;
    unsigned long long value[32] = {};
    unsigned src[32] = {};
    Fiber *waiter[32] = {};
};

/* Thrown into each thread of a block that failed, to unwind it. */
struct BlockAbort {};

/* Per host thread: its fibers and the block it is running. */
struct Sched {
    Ctx host;
    Ctx *from = nullptr;      /* the context that switched to the running one */
    Fiber *current = nullptr; /* null while the host context runs */
    std::vector<Fiber *> fibers;
    std::vector<Fiber *> idle;
    std::deque<Fiber *> ready;

    const std::function<void()> *body = nullptr;
    std::unique_ptr<unsigned char[]> smem;
    size_t smem_size = 0;
    unsigned nthreads = 0, started = 0, finished = 0;
    bool reverse = false, aborting = false;
    unsigned bar_arrived = 0;
    std::vector<Fiber *> bar_waiters;
    /* __syncthreads_or: the predicates of the open barrier, and the answer
     * of the last one completed (kept until the next completes, which its
     * waiters cannot reach before they have read it) */
    int bar_or = 0, bar_result = 0;
    std::vector<Warp> warps;

    Sched();
    ~Sched();
};

Sched &sched() {
    thread_local Sched s;
    return s;
}

void on_arrival(Sched &s, Ctx *self) {
#ifdef TNN_EMU_ASAN
    __sanitizer_finish_switch_fiber(self->asan_fake_stack, &s.from->stack_lo, &s.from->stack_size);
#else
    (void)s, (void)self;
#endif
}

/* Suspends `from` and runs `to` (the host context when null) until something
 * switches back to `from`. */
void switch_to(Sched &s, Ctx *from, Fiber *to) {
    Ctx *dest = to != nullptr ? &to->ctx : &s.host;
    s.current = to;
    s.from = from;
#ifdef TNN_EMU_ASAN
    __sanitizer_start_switch_fiber(&from->asan_fake_stack, dest->stack_lo, dest->stack_size);
#endif
#ifdef TNN_EMU_TSAN
    __tsan_switch_to_fiber(dest->tsan_fiber, 0);
#endif
    regs_swap(from->regs, dest->regs);
    on_arrival(s, from);
}

void fiber_entry();

Fiber *new_fiber() {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t bytes = kFiberStack + page;
    void *m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK,
                   -1, 0);
    if (m == MAP_FAILED)
        return nullptr;
    /* The guard page turns a stack overflow into a fault, not corruption. */
    mprotect(m, page, PROT_NONE);
    auto *f = new Fiber;
    f->mapping = m;
    f->mapping_size = bytes;
    Ctx &c = f->ctx;
    c.stack_lo = static_cast<char *>(m) + page;
    c.stack_size = kFiberStack;
    regs_init(c.regs, static_cast<char *>(m) + page, kFiberStack, fiber_entry);
#ifdef TNN_EMU_TSAN
    c.tsan_fiber = __tsan_create_fiber(0);
#endif
    return f;
}

Sched::Sched() {
#ifdef TNN_EMU_TSAN
    host.tsan_fiber = __tsan_get_current_fiber();
#endif
}

/* The fibers are idle, suspended where nothing on their stacks needs
 * destroying: their stacks are simply unmapped. */
Sched::~Sched() {
    for (Fiber *f : fibers) {
#ifdef TNN_EMU_TSAN
        __tsan_destroy_fiber(f->ctx.tsan_fiber);
#endif
#ifdef TNN_EMU_ASAN
        /* Stale poison would misfire on whatever reuses the addresses. */
        __asan_unpoison_memory_region(f->mapping, f->mapping_size);
#endif
        munmap(f->mapping, f->mapping_size);
        delete f;
    }
}

bool ensure_fibers(Sched &s, unsigned n) {
    while (s.fibers.size() < n) {
        Fiber *f = new_fiber();
        if (f == nullptr)
            return false;
        s.fibers.push_back(f);
        s.idle.push_back(f);
    }
    return true;
}

/* ------------------------------------------------------------------------ */
/* Blocks                                                                   */
/* ------------------------------------------------------------------------ */

void assign_next_thread(Sched &s, Fiber *f) {
    unsigned k = s.started++;
    unsigned t = s.reverse ? s.nthreads - 1 - k : k;
    f->tid = t;
    f->idx = {t % blockDim.x, t / blockDim.x % blockDim.y, t / (blockDim.x * blockDim.y)};
}

/* Fails the block: every waiting thread is made ready to unwind, no new one
 * starts. `culprit` (may be null) is the running thread, named in the
 * message and left to unwind itself. */
void abort_block(Sched &s, const Fiber *culprit, const char *why) {
    std::fprintf(stderr, "cuda_emu: kernel failed in block (%u,%u,%u)", blockIdx.x, blockIdx.y,
                 blockIdx.z);
    if (culprit != nullptr)
        std::fprintf(stderr, " thread (%u,%u,%u)", culprit->idx.x, culprit->idx.y, culprit->idx.z);
    std::fprintf(stderr, ": %s\n", why);
    s.aborting = true;
    for (Fiber *f : s.bar_waiters)
        if (f != culprit)
            s.ready.push_back(f);
    s.bar_waiters.clear();
    s.bar_arrived = 0;
    for (Warp &w : s.warps) {
        for (unsigned lane = 0; lane < 32; lane++)
            if ((w.arrived >> lane & 1) && w.waiter[lane] != culprit)
                s.ready.push_back(w.waiter[lane]);
        w.arrived = 0;
    }
}

[[noreturn]] void fault(Sched &s, const char *why) {
    abort_block(s, s.current, why);
    throw BlockAbort{};
}

void deadlock(Sched &s, const Fiber *culprit) {
    unsigned at_warp = 0;
    for (const Warp &w : s.warps)
        at_warp += (unsigned)std::popcount(w.arrived);
    char why[256];
    std::snprintf(why, sizeof why,
                  "deadlock: %u threads wait at __syncthreads and %u at warp intrinsics, and "
                  "none can complete (a barrier in divergent code?)",
                  s.bar_arrived, at_warp);
    abort_block(s, culprit, why);
}

void release_block_barrier(Sched &s) {
    s.bar_result = s.bar_or;
    s.bar_or = 0;
    s.ready.insert(s.ready.end(), s.bar_waiters.begin(), s.bar_waiters.end());
    s.bar_waiters.clear();
    s.bar_arrived = 0;
}

/* Completes a warp round: a shuffling lane gets the value of the lane it
 * reads (garbage if that lane is not in the round), __activemask the lanes
 * that met. The running fiber (if it took part) carries on; the others
 * become ready. */
void release_warp(Sched &s, Warp &w) {
    for (unsigned lane = 0; lane < 32; lane++) {
        if (!(w.arrived >> lane & 1))
            continue;
        Fiber *f = w.waiter[lane];
        unsigned src = w.src[lane];
        if (w.kind == Round::activemask)
            f->shfl_result = w.arrived;
        else
            f->shfl_result = w.arrived >> src & 1 ? w.value[src] : kGarbageBits;
        if (f != s.current)
            s.ready.push_back(f);
    }
    w.arrived = 0;
}

Fiber *pop_ready(Sched &s) {
    if (s.ready.empty())
        return nullptr;
    Fiber *f = s.ready.front();
    s.ready.pop_front();
    return f;
}

/* Called when no thread can run: the lanes still missing from an
 * __activemask round wait elsewhere, so they have diverged and the round
 * completes without them, as the GPU would answer. Returns whether the
 * running thread's own round completed. */
bool settle_activemask(Sched &s) {
    bool own = false;
    for (Warp &w : s.warps) {
        if (w.arrived == 0 || w.kind != Round::activemask)
            continue;
        const Fiber *f = s.current;
        own |= f != nullptr && &w == &s.warps[f->tid / 32] && (w.arrived >> f->tid % 32 & 1);
        release_warp(s, w);
    }
    return own;
}

/* Blocks the running thread: runs a ready thread, or starts a new one, or
 * settles __activemask rounds, or, when nothing is left, fails the block as
 * deadlocked. */
void suspend(Sched &s, Fiber *self) {
    Fiber *next = pop_ready(s);
    if (next == nullptr && s.started < s.nthreads) {
        next = s.idle.back();
        s.idle.pop_back();
        assign_next_thread(s, next);
    }
    if (next == nullptr) {
        if (settle_activemask(s))
            return;
        next = pop_ready(s);
    }
    if (next == nullptr) {
        deadlock(s, self);
        throw BlockAbort{};
    }
    switch_to(s, &self->ctx, next);
    threadIdx = self->idx;
    if (s.aborting)
        throw BlockAbort{};
}

/* A returned thread drops out of the barriers, which may complete them. */
void leave_barriers(Sched &s, const Fiber *self) {
    if (s.bar_arrived > 0 && s.bar_arrived == s.nthreads - s.finished)
        release_block_barrier(s);
    Warp &w = s.warps[self->tid / 32];
    w.live &= ~(1u << self->tid % 32);
    if (w.arrived != 0 && w.arrived == (w.mask & w.live))
        release_warp(s, w);
}

void run_thread(Sched &s, Fiber *self) {
    threadIdx = self->idx;
    try {
        (*s.body)();
    } catch (const BlockAbort &) {
    } catch (...) {
        abort_block(s, self, "the kernel threw a C++ exception");
    }
    s.finished++;
    if (!s.aborting)
        leave_barriers(s, self);
}

/* What runs after a fiber's thread returned and no thread is left to start:
 * a ready thread, else the host if the block is done, else (threads wait on
 * barriers nobody else can reach) a settled __activemask round or the
 * unwinding of a deadlocked block. */
Fiber *next_after_finish(Sched &s) {
    if (s.ready.empty() && s.finished == s.started)
        return nullptr;
    if (s.ready.empty())
        settle_activemask(s);
    if (s.ready.empty())
        deadlock(s, nullptr);
    return pop_ready(s);
}

/* A fiber runs threads until none is left to start, then idles until it is
 * given a new one (by suspend). It never returns. */
void fiber_entry() {
    Sched &s = sched();
    Fiber *self = s.current;
    on_arrival(s, &self->ctx);
    for (;;) {
        run_thread(s, self);
        if (!s.aborting && s.started < s.nthreads) {
            assign_next_thread(s, self);
            continue;
        }
        s.idle.push_back(self);
        switch_to(s, &self->ctx, next_after_finish(s));
    }
}

/* Runs the block blockIdx names; returns false if it failed. */
bool run_block(Sched &s, bool reverse) {
    s.reverse = reverse;
    s.started = s.finished = 0;
    s.aborting = false;
    s.bar_arrived = 0;
    s.bar_or = 0;
    for (unsigned w = 0; w < s.warps.size(); w++) {
        unsigned lanes = std::min(32u, s.nthreads - 32 * w);
        s.warps[w].live = lanes == 32 ? ~0u : (1u << lanes) - 1;
        s.warps[w].arrived = 0;
    }
    std::memset(s.smem.get(), kGarbage, s.smem_size);
    Fiber *first = s.idle.back();
    s.idle.pop_back();
    assign_next_thread(s, first);
    switch_to(s, &s.host, first);
    return !s.aborting;
}

/* Runs the blocks in CUDA's order, x fastest, up to the first that fails.
 * The launch's serial number alternates the thread order with the block's. */
bool run_grid(Sched &s, dim3 grid, long serial) {
    unsigned long long nblock = 0;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                blockIdx = {x, y, z};
                if (!run_block(s, (serial + nblock++) & 1))
                    return false;
            }
    return true;
}

cudaError_t check_launch(dim3 grid, dim3 block, size_t smem, cudaStream_t stream) {
    if (!has_device())
        return cudaErrorNoDevice;
    if (!stream_ok(device(), stream))
        return cudaErrorInvalidResourceHandle;
    unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    bool ok = threads >= 1 && threads <= 1024 && block.x <= 1024 && block.y <= 1024 &&
              block.z <= 64 && grid.x >= 1 && grid.x <= INT_MAX && grid.y >= 1 &&
              grid.y <= 65535 && grid.z >= 1 && grid.z <= 65535 && smem <= kMaxSmem;
    return ok ? cudaSuccess : cudaErrorInvalidConfiguration;
}

/* The one lane a shuffle reads, by CUDA's rules: within the caller's segment
 * of `width` lanes; up/down/xor past the segment read the caller itself. */
unsigned shfl_source(tnn_emu_shfl_mode mode, unsigned lane, int arg, unsigned width) {
    unsigned base = lane & ~(width - 1), pos = lane - base;
    switch (mode) {
    case TNN_EMU_SHFL_IDX:
        return base + ((unsigned)arg & (width - 1));
    case TNN_EMU_SHFL_UP:
        return pos >= (unsigned)arg ? lane - (unsigned)arg : lane;
    case TNN_EMU_SHFL_DOWN:
        return (unsigned)arg < width - pos ? lane + (unsigned)arg : lane;
    case TNN_EMU_SHFL_XOR: {
        unsigned src = lane ^ (unsigned)arg;
        return src < base + width ? src : lane;
    }
    }
    return lane;
}

/* One round of the calling lane at its warp's barrier; returns the value
 * read from lane `src` (for a shuffle). */
unsigned long long warp_round(unsigned mask, Round kind, unsigned long long value, unsigned src) {
    Sched &s = sched();
    Fiber *self = s.current;
    unsigned lane = self->tid % 32;
    Warp &w = s.warps[self->tid / 32];
    if (!(mask >> lane & 1))
        fault(s, "a warp intrinsic's mask leaves out the calling lane");
    if (w.arrived == 0) {
        w.mask = mask;
        w.kind = kind;
    } else if (w.mask != mask || w.kind != kind) {
        fault(s, "lanes of one warp meet in different warp intrinsics or with different "
                 "masks (divergent warp code is not emulated)");
    }
    w.value[lane] = value;
    w.src[lane] = src;
    w.waiter[lane] = self;
    w.arrived |= 1u << lane;
    if (w.arrived == (w.mask & w.live))
        release_warp(s, w);
    else
        suspend(s, self);
    return self->shfl_result;
}

} // namespace

/* ------------------------------------------------------------------------ */
/* Launch and test hooks                                                    */
/* ------------------------------------------------------------------------ */

void tnn_emu_launch(dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                    const std::function<void()> &body) {
    cudaError_t err = check_launch(grid, block, smem, stream);
    if (err != cudaSuccess) {
        record(err);
        return;
    }
    Capture &cap = capture();
    if (cap.active && cap.stream == stream) { /* recorded: replayed by cudaGraphLaunch */
        std::function<void()> copy = body;
        cap.ops.push_back([=] { tnn_emu_launch(grid, block, smem, stream, copy); });
        return;
    }
    Sched &s = sched();
    if (s.body != nullptr) { /* from inside a kernel: no dynamic parallelism */
        record(cudaErrorLaunchFailure);
        return;
    }
    Device &d = device();
    std::lock_guard lock(d.launch_mu);
    unsigned nthreads = block.x * block.y * block.z;
    if (!ensure_fibers(s, nthreads)) {
        record(cudaErrorMemoryAllocation);
        return;
    }
    s.body = &body;
    s.nthreads = nthreads;
    s.warps.assign((nthreads + 31) / 32, Warp{});
    s.smem.reset(new unsigned char[smem]);
    s.smem_size = smem;
    gridDim = grid;
    blockDim = block;
    if (!run_grid(s, grid, d.launches++))
        record(cudaErrorLaunchFailure);
    s.body = nullptr;
    s.smem.reset();
}

void *tnn_emu_dyn_smem() { return sched().smem.get(); }

void tnn_emu_set_device_count(int n) { device().count = n < 0 ? 0 : n; }
void tnn_emu_set_mem_limit(size_t bytes) { device().limit = bytes; }

size_t tnn_emu_mem_in_use() {
    Device &d = device();
    std::lock_guard lock(d.mu);
    return d.in_use;
}

long tnn_emu_launch_count() { return device().launches.load(); }

long tnn_emu_copy_count(cudaMemcpyKind kind) {
    return (unsigned)kind < kCopyKinds ? device().copies[kind].load() : -1;
}

/* ------------------------------------------------------------------------ */
/* Runtime API                                                              */
/* ------------------------------------------------------------------------ */

cudaError_t cudaGetLastError() {
    cudaError_t err = t_last_error;
    t_last_error = cudaSuccess;
    return err;
}

cudaError_t cudaPeekAtLastError() { return t_last_error; }

const char *cudaGetErrorName(cudaError_t error) {
    switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    }
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t error) {
    switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInsufficientDriver:
        return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    }
    return "unrecognized error code";
}

cudaError_t cudaGetDeviceCount(int *count) {
    if (count == nullptr)
        return record(cudaErrorInvalidValue);
    *count = device().count.load();
    return record(*count > 0 ? cudaSuccess : cudaErrorNoDevice);
}

cudaError_t cudaSetDevice(int dev) {
    cudaError_t err = check_device_ordinal(dev);
    if (err == cudaSuccess)
        t_device = dev;
    return record(err);
}

cudaError_t cudaGetDevice(int *dev) {
    if (dev == nullptr)
        return record(cudaErrorInvalidValue);
    if (!has_device())
        return record(cudaErrorNoDevice);
    *dev = t_device;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int dev) {
    if (prop == nullptr)
        return record(cudaErrorInvalidValue);
    cudaError_t err = check_device_ordinal(dev);
    if (err != cudaSuccess)
        return record(err);
    size_t limit = device().limit.load();
    *prop = cudaDeviceProp{};
    std::snprintf(prop->name, sizeof prop->name, "tinynn CUDA emulator");
    prop->totalGlobalMem = limit != 0 ? limit : kReportedMem;
    prop->sharedMemPerBlock = kDefaultSmem;
    prop->sharedMemPerBlockOptin = kMaxSmem;
    prop->major = 9;
    prop->minor = 0;
    /* Few SMs: grids sized from this stay small (blocks run one at a time)
     * and grid-stride loops take several turns. */
    prop->multiProcessorCount = 4;
    prop->warpSize = warpSize;
    prop->maxThreadsPerBlock = 1024;
    return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int *version) {
    if (version == nullptr)
        return record(cudaErrorInvalidValue);
    *version = kVersion;
    return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int *version) { return cudaDriverGetVersion(version); }

/* Exactly `size` bytes, so ASan catches a kernel reading one element past
 * the end of a buffer; garbage-filled, as a GPU gives no zeros either. */
cudaError_t cudaMalloc(void **ptr, size_t size) {
    if (capture_forbids())
        return record(cudaErrorStreamCaptureUnsupported);
    if (ptr == nullptr)
        return record(cudaErrorInvalidValue);
    *ptr = nullptr;
    if (!has_device())
        return record(cudaErrorNoDevice);
    if (size == 0)
        return cudaSuccess;
    Device &d = device();
    std::lock_guard lock(d.mu);
    size_t limit = d.limit.load();
    if (limit != 0 && size > limit - std::min(limit, d.in_use))
        return record(cudaErrorMemoryAllocation);
    void *p = ::operator new(size, std::align_val_t(kAllocAlign), std::nothrow);
    if (p == nullptr)
        return record(cudaErrorMemoryAllocation);
    std::memset(p, kGarbage, size);
    d.allocs[reinterpret_cast<uintptr_t>(p)] = size;
    d.in_use += size;
    *ptr = p;
    return cudaSuccess;
}

cudaError_t cudaFree(void *ptr) {
    if (capture_forbids())
        return record(cudaErrorStreamCaptureUnsupported);
    if (ptr == nullptr)
        return cudaSuccess;
    Device &d = device();
    std::lock_guard lock(d.mu);
    auto it = d.allocs.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == d.allocs.end())
        return record(cudaErrorInvalidValue);
    d.in_use -= it->second;
    d.allocs.erase(it);
    ::operator delete(ptr, std::align_val_t(kAllocAlign));
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **ptr, size_t size) {
    if (ptr == nullptr)
        return record(cudaErrorInvalidValue);
    *ptr = nullptr;
    if (size == 0)
        return cudaSuccess;
    void *p = ::operator new(size, std::align_val_t(kAllocAlign), std::nothrow);
    if (p == nullptr)
        return record(cudaErrorMemoryAllocation);
    std::memset(p, kGarbage, size);
    Device &d = device();
    std::lock_guard lock(d.mu);
    d.host_allocs[reinterpret_cast<uintptr_t>(p)] = size;
    *ptr = p;
    return cudaSuccess;
}

cudaError_t cudaFreeHost(void *ptr) {
    if (ptr == nullptr)
        return cudaSuccess;
    Device &d = device();
    std::lock_guard lock(d.mu);
    if (d.host_allocs.erase(reinterpret_cast<uintptr_t>(ptr)) == 0)
        return record(cudaErrorInvalidValue);
    ::operator delete(ptr, std::align_val_t(kAllocAlign));
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    if (free_bytes == nullptr || total_bytes == nullptr)
        return record(cudaErrorInvalidValue);
    Device &d = device();
    std::lock_guard lock(d.mu);
    size_t limit = d.limit.load();
    *total_bytes = limit != 0 ? limit : kReportedMem;
    *free_bytes = *total_bytes - std::min(*total_bytes, d.in_use);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, cudaMemcpyKind kind) {
    return copy(dst, src, count, kind);
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, cudaMemcpyKind kind,
                            cudaStream_t stream) {
    if (!stream_ok(device(), stream))
        return record(cudaErrorInvalidResourceHandle);
    Capture &c = capture();
    if (c.active && c.stream == stream) {
        if (kind != cudaMemcpyDeviceToDevice) { /* host memory in a graph: not emulated */
            c.broken = true;
            return record(cudaErrorStreamCaptureUnsupported);
        }
        c.ops.push_back([=] { copy(dst, src, count, kind); });
        return cudaSuccess;
    }
    return copy(dst, src, count, kind);
}

cudaError_t cudaMemset(void *ptr, int value, size_t count) { return set(ptr, value, count); }

cudaError_t cudaMemsetAsync(void *ptr, int value, size_t count, cudaStream_t stream) {
    if (!stream_ok(device(), stream))
        return record(cudaErrorInvalidResourceHandle);
    Capture &c = capture();
    if (c.active && c.stream == stream) {
        c.ops.push_back([=] { set(ptr, value, count); });
        return cudaSuccess;
    }
    return set(ptr, value, count);
}

struct CUstream_st {
    unsigned flags;
};

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags) {
    if (stream == nullptr || (flags & ~cudaStreamNonBlocking) != 0)
        return record(cudaErrorInvalidValue);
    if (!has_device())
        return record(cudaErrorNoDevice);
    auto *s = new CUstream_st{flags};
    Device &d = device();
    std::lock_guard lock(d.mu);
    d.streams.insert(s);
    *stream = s;
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *stream) {
    return cudaStreamCreateWithFlags(stream, cudaStreamDefault);
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    Device &d = device();
    std::lock_guard lock(d.mu);
    if (d.streams.erase(stream) == 0)
        return record(cudaErrorInvalidResourceHandle);
    delete stream;
    return cudaSuccess;
}

/* Work is done by the time a call returns; what is left to report is a
 * launch that failed and has not been read with cudaGetLastError. */
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    if (!stream_ok(device(), stream))
        return record(cudaErrorInvalidResourceHandle);
    return cudaDeviceSynchronize();
}

cudaError_t cudaDeviceSynchronize() {
    if (capture_forbids())
        return record(cudaErrorStreamCaptureUnsupported);
    return t_last_error == cudaErrorLaunchFailure ? cudaErrorLaunchFailure : cudaSuccess;
}

struct CUgraph_st {
    std::vector<std::function<void()>> ops;
};
struct CUgraphExec_st {
    std::vector<std::function<void()>> ops;
};

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
    if (!stream_ok(device(), stream) || stream == nullptr)
        return record(cudaErrorInvalidResourceHandle);
    Capture &c = capture();
    if (c.active)
        return record(cudaErrorStreamCaptureUnsupported);
    c.stream = stream;
    c.active = true;
    c.broken = false;
    c.ops.clear();
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *graph) {
    Capture &c = capture();
    if (!c.active || c.stream != stream || graph == nullptr)
        return record(cudaErrorInvalidValue);
    c.active = false;
    *graph = nullptr;
    if (c.broken) {
        c.ops.clear();
        return record(cudaErrorStreamCaptureInvalidated);
    }
    *graph = new CUgraph_st{std::move(c.ops)};
    c.ops.clear();
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph,
                                 unsigned long long flags) {
    if (exec == nullptr || graph == nullptr)
        return record(cudaErrorInvalidValue);
    *exec = new CUgraphExec_st{graph->ops};
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
    if (exec == nullptr)
        return record(cudaErrorInvalidValue);
    if (!stream_ok(device(), stream))
        return record(cudaErrorInvalidResourceHandle);
    if (capture().active)
        return record(cudaErrorStreamCaptureUnsupported);
    for (const auto &op : exec->ops) op();
    g_graph_launches++;
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    delete exec;
    return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    delete graph;
    return cudaSuccess;
}

long tnn_emu_graph_launch_count() { return g_graph_launches.load(); }

cudaError_t cudaFuncSetAttribute(const void *func, cudaFuncAttribute attr, int value) {
    bool ok = func != nullptr && attr == cudaFuncAttributeMaxDynamicSharedMemorySize &&
              value >= 0 && (size_t)value <= kMaxSmem;
    return record(ok ? cudaSuccess : cudaErrorInvalidValue);
}

/* ------------------------------------------------------------------------ */
/* Device intrinsics                                                        */
/* ------------------------------------------------------------------------ */

void __syncthreads() {
    Sched &s = sched();
    Fiber *self = s.current;
    if (s.bar_arrived + 1 == s.nthreads - s.finished) {
        release_block_barrier(s);
        return;
    }
    s.bar_arrived++;
    s.bar_waiters.push_back(self);
    suspend(s, self);
}

int __syncthreads_or(int predicate) {
    sched().bar_or |= predicate != 0;
    __syncthreads();
    return sched().bar_result;
}

void __syncwarp(unsigned mask) {
    warp_round(mask, Round::sync, 0, 0);
}

/* A round of every lane that has not returned, so converged lanes answer
 * alike however far the others have run. */
unsigned __activemask() { return (unsigned)warp_round(~0u, Round::activemask, 0, 0); }

unsigned long long tnn_emu_shfl(tnn_emu_shfl_mode mode, unsigned mask, unsigned long long bits,
                                int arg, int width) {
    Sched &s = sched();
    if (width < 1 || width > warpSize || (width & (width - 1)) != 0)
        fault(s, "a shuffle's width is not a power of two in 1..32");
    unsigned src = shfl_source(mode, s.current->tid % 32, arg, (unsigned)width);
    return warp_round(mask, Round::shuffle, bits, src);
}

/* std::atomic_ref makes these atomic against host threads as well, at no
 * cost worth measuring next to the emulation. */
template <class T> T atomic_add(T *address, T value) {
    return std::atomic_ref<T>(*address).fetch_add(value);
}
template <class T, class Better> T atomic_pick(T *address, T value, Better better) {
    std::atomic_ref<T> ref(*address);
    T old = ref.load();
    while (better(value, old) && !ref.compare_exchange_weak(old, value)) {
    }
    return old;
}
template <class T> T atomic_cas(T *address, T compare, T value) {
    std::atomic_ref<T>(*address).compare_exchange_strong(compare, value);
    return compare;
}
template <class T> T atomic_exch(T *address, T value) {
    return std::atomic_ref<T>(*address).exchange(value);
}

float atomicAdd(float *address, float value) { return atomic_add(address, value); }
double atomicAdd(double *address, double value) { return atomic_add(address, value); }
int atomicAdd(int *address, int value) { return atomic_add(address, value); }
unsigned atomicAdd(unsigned *address, unsigned value) { return atomic_add(address, value); }
unsigned long long atomicAdd(unsigned long long *address, unsigned long long value) {
    return atomic_add(address, value);
}
int atomicMax(int *address, int value) {
    return atomic_pick(address, value, [](int a, int b) { return a > b; });
}
unsigned atomicMax(unsigned *address, unsigned value) {
    return atomic_pick(address, value, [](unsigned a, unsigned b) { return a > b; });
}
int atomicMin(int *address, int value) {
    return atomic_pick(address, value, [](int a, int b) { return a < b; });
}
unsigned atomicMin(unsigned *address, unsigned value) {
    return atomic_pick(address, value, [](unsigned a, unsigned b) { return a < b; });
}
int atomicCAS(int *address, int compare, int value) { return atomic_cas(address, compare, value); }
unsigned atomicCAS(unsigned *address, unsigned compare, unsigned value) {
    return atomic_cas(address, compare, value);
}
unsigned long long atomicCAS(unsigned long long *address, unsigned long long compare,
                             unsigned long long value) {
    return atomic_cas(address, compare, value);
}
int atomicExch(int *address, int value) { return atomic_exch(address, value); }
unsigned atomicExch(unsigned *address, unsigned value) { return atomic_exch(address, value); }
unsigned long long atomicExch(unsigned long long *address, unsigned long long value) {
    return atomic_exch(address, value);
}
float atomicExch(float *address, float value) { return atomic_exch(address, value); }

extern "C" float rsqrtf(float x) noexcept { return 1.0f / std::sqrt(x); }
extern "C" float __expf(float x) noexcept { return std::exp(x); }
extern "C" float __logf(float x) noexcept { return std::log(x); }
float __fdividef(float x, float y) { return x / y; }
/* NaN saturates to 0, as on the GPU. */
float __saturatef(float x) { return x >= 1.0f ? 1.0f : x > 0.0f ? x : 0.0f; }
float __fmaf_rn(float x, float y, float z) { return std::fma(x, y, z); }
int __float_as_int(float x) { return std::bit_cast<int>(x); }
float __int_as_float(int x) { return std::bit_cast<float>(x); }
unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
