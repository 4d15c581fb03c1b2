// The runtime of the CPU emulation tier (see fj_emu.h): a launch runs its blocks one after another
// on the calling OS thread; a block's blockDim.x threads are fibers (own stacks, switched by a
// dozen instructions of assembly on x86-64, ucontext elsewhere) driven by a round-robin scheduler.
// A fiber runs until it blocks in __syncthreads, a warp collective or __activemask, or exits; the
// scheduler resumes only fibers that can go on (and the __activemask waiters, whose condition is
// "nobody else in my warp can run"). A pass over the block in which nothing changed is a deadlock
// (a barrier or collective some thread never reaches), reported as an error, as are a lane calling
// a collective outside its own mask, lanes of one mask in different collectives, a shuffle from a
// lane outside the mask, a collective waiting for an exited lane and two call sites in one barrier.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include <vector>

#include "fj_emu.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace fj_emu {
thread_local const fj_dim3* t_thread_idx;
thread_local fj_dim3 t_block_idx, t_block_dim, t_grid_dim;

enum Wait { RUN = 0, BAR, COLL, ACTIVE };
enum Kind { SHFL_XOR = 1, MATCH_ANY = 2 };

// Launch flags (crates/featjnd-emu/src/lib.rs mirrors them).
enum { FLAG_REVERSE = 1, FLAG_ALTERNATE = 2, FLAG_DIVERGED = 4, FLAG_BLOCKS_BACKWARD = 8, FLAG_SHUFFLE = 16 };

struct Fiber {
#if defined(__x86_64__)
    void* sp;
#else
    ucontext_t ctx;
#endif
    fj_dim3 tid;
    bool started, done;
    int wait;
    // a collective: what this lane brought, and its result once the group completed
    int kind, arg, line;
    unsigned mask;
    uint64_t val, res;
};

struct Block {
    std::vector<Fiber> f;
    char* stacks;
    size_t stack_size;
#if defined(__x86_64__)
    void* sched_sp;
#else
    ucontext_t sched;
#endif
    Fiber* cur;
    unsigned n, bar_count, bar_line;
    unsigned exited;
    bool progress, diverged;
    void (*thunk)(const void*);
    const void* params;
    char error[512];
    bool failed;
};
thread_local Block* tb;

#if defined(__x86_64__)
// fj_emu_swap(save, load): saves the callee-saved registers, MXCSR and the x87 control word on the
// current stack, stores the stack pointer in *save, switches to `load` and restores the same there.
extern "C" void fj_emu_swap(void** save, void* load);
asm(R"(
    .text
    .globl fj_emu_swap
    .type fj_emu_swap, @function
fj_emu_swap:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size fj_emu_swap, .-fj_emu_swap
)");
#endif

static void fail(const char* fmt, ...) {
    Block& b = *tb;
    if (!b.failed) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(b.error, sizeof b.error, fmt, ap);
        va_end(ap);
        b.failed = true;
    }
    // Back to the scheduler for good: it abandons the launch (the fibers hold no resources).
    Fiber& me = *b.cur;
#if defined(__x86_64__)
    fj_emu_swap(&me.sp, b.sched_sp);
#else
    swapcontext(&me.ctx, &b.sched);
#endif
    abort();  // never resumed
}

static void yield() {
    Block& b = *tb;
    Fiber& me = *b.cur;
#if defined(__x86_64__)
    fj_emu_swap(&me.sp, b.sched_sp);
#else
    swapcontext(&me.ctx, &b.sched);
#endif
}

static void release_barrier(Block& b) {
    for (Fiber& o : b.f)
        if (o.wait == BAR) o.wait = RUN;
    b.bar_count = 0;
    b.progress = true;
}

// The body of every fiber: the kernel, then back to the scheduler for good.
static void fiber_main() {
    Block& b = *tb;
    b.thunk(b.params);
    Fiber& me = *b.cur;
    me.done = true;
    b.exited++;
    b.progress = true;
    if (b.bar_count > 0 && b.bar_count + b.exited == b.n) release_barrier(b);
    yield();
    abort();  // a finished fiber is never resumed
}

#if defined(__x86_64__)
extern "C" void fj_emu_fiber_entry() { fiber_main(); }
#else
static void fiber_entry_uc() { fiber_main(); }
#endif

void syncthreads(int line) {
    Block& b = *tb;
    Fiber& me = *b.cur;
    if (b.bar_count == 0) b.bar_line = (unsigned)line;
    else if (b.bar_line != (unsigned)line)
        fail("block %u: __syncthreads at line %d and line %u meet in one barrier (thread %u)", t_block_idx.x, line, b.bar_line,
             me.tid.x);
    b.bar_count++;
    b.progress = true;
    if (b.bar_count + b.exited == b.n) {
        release_barrier(b);
        return;
    }
    me.wait = BAR;
    while (me.wait == BAR) yield();
}

// A collective of the lanes in `mask` (all in the calling lane's warp).
static uint64_t collective(int kind, unsigned mask, uint64_t val, int arg) {
    Block& b = *tb;
    Fiber& me = *b.cur;
    const unsigned lane = me.tid.x & 31u, base = me.tid.x & ~31u;
    if (!((mask >> lane) & 1u)) fail("thread %u: warp collective with mask %08x that leaves out its own lane", me.tid.x, mask);
    me.kind = kind;
    me.mask = mask;
    me.val = val;
    me.arg = arg;
    me.wait = COLL;
    b.progress = true;
    for (;;) {
        if (me.wait != COLL) return me.res;  // completed by another lane
        bool all = true;
        for (unsigned l = 0; l < 32 && all; ++l) {
            if (!((mask >> l) & 1u)) continue;
            if (base + l >= b.n) fail("thread %u: mask %08x names lane %u past the block", me.tid.x, mask, l);
            const Fiber& o = b.f[base + l];
            if (o.done) fail("thread %u: warp collective (mask %08x) waits for lane %u, which has exited", me.tid.x, mask, l);
            if (o.wait != COLL) {
                all = false;
            } else if (o.kind != kind || o.mask != mask) {
                fail("threads %u and %u: different warp collectives (kind %d mask %08x vs kind %d mask %08x)", me.tid.x, base + l, kind,
                     mask, o.kind, o.mask);
            }
        }
        if (all) {
            for (unsigned l = 0; l < 32; ++l) {
                if (!((mask >> l) & 1u)) continue;
                Fiber& o = b.f[base + l];
                if (kind == SHFL_XOR) {
                    const unsigned src = l ^ (unsigned)arg;
                    if (src >= 32 || !((mask >> src) & 1u))
                        fail("thread %u: __shfl_xor_sync from lane %u outside mask %08x", base + l, src, mask);
                    o.res = b.f[base + src].val;
                } else {
                    unsigned m = 0;
                    for (unsigned k = 0; k < 32; ++k)
                        if (((mask >> k) & 1u) && b.f[base + k].val == o.val) m |= 1u << k;
                    o.res = m;
                }
            }
            for (unsigned l = 0; l < 32; ++l)
                if ((mask >> l) & 1u) b.f[base + l].wait = RUN;
            return me.res;
        }
        yield();
    }
}

uint64_t shfl_xor(unsigned mask, uint64_t v, int lane_mask) { return collective(SHFL_XOR, mask, v, lane_mask); }
unsigned match_any(unsigned mask, uint64_t key) { return (unsigned)collective(MATCH_ANY, mask, key, 0); }

unsigned activemask(int line) {
    Block& b = *tb;
    Fiber& me = *b.cur;
    const unsigned lane = me.tid.x & 31u, base = me.tid.x & ~31u;
    if (b.diverged) return 1u << lane;
    me.wait = ACTIVE;
    me.line = line;
    b.progress = true;
    for (;;) {
        if (me.wait != ACTIVE) return (unsigned)me.res;
        bool stuck = true;  // can no other lane of the warp run?
        for (unsigned l = 0; l < 32 && base + l < b.n; ++l) {
            const Fiber& o = b.f[base + l];
            if (!o.done && o.wait == RUN) stuck = false;
        }
        if (stuck) {
            unsigned m = 0;
            for (unsigned l = 0; l < 32 && base + l < b.n; ++l)
                if (b.f[base + l].wait == ACTIVE && b.f[base + l].line == line) m |= 1u << l;
            for (unsigned l = 0; l < 32; ++l)
                if ((m >> l) & 1u) {
                    b.f[base + l].res = m;
                    b.f[base + l].wait = RUN;
                }
            b.progress = true;
            return m;
        }
        yield();
    }
}

static int run_launch(Block& b, unsigned grid, unsigned flags) {
    for (unsigned step = 0; step < grid; ++step) {
        // Blocks one after another, first to last or last to first: a kernel whose blocks
        // depended on each other within one launch would see the difference.
        const unsigned blk = (flags & FLAG_BLOCKS_BACKWARD) ? grid - 1 - step : step;
        t_block_idx = fj_dim3{blk, 0, 0};
        for (unsigned i = 0; i < b.n; ++i) {
            Fiber& f = b.f[i];
            f.tid = fj_dim3{i, 0, 0};
            f.started = f.done = false;
            f.wait = RUN;
        }
        b.bar_count = 0;
        b.exited = 0;
        const bool reverse = (flags & FLAG_REVERSE) || ((flags & FLAG_ALTERNATE) && (blk & 1u));
        unsigned live = b.n;
        // FLAG_SHUFFLE: each pass resumes the threads in another order, (start + k * stride) mod n
        // with an odd stride (a permutation for a power-of-two block), from a fixed LCG seeded by
        // the block index: deterministic, but no fixed order for a race to hide behind.
        uint32_t rng = 0x9e3779b9u ^ (blk * 0x85ebca6bu);
        const bool shuffle = (flags & FLAG_SHUFFLE) && (b.n & (b.n - 1)) == 0;
        while (live > 0) {
            b.progress = false;
            rng = rng * 1664525u + 1013904223u;
            const unsigned start = (rng >> 8) % b.n, stride = shuffle ? (((rng >> 20) % b.n) | 1u) : 1u;
            for (unsigned k = 0; k < b.n; ++k) {
                const unsigned i = shuffle ? (start + k * stride) % b.n : reverse ? b.n - 1 - k : k;
                Fiber& f = b.f[i];
                // Blocked fibers are resumed only to re-check __activemask (see above).
                if (f.done || f.wait == BAR || f.wait == COLL) continue;
                b.cur = &f;
                t_thread_idx = &f.tid;
                char* top = b.stacks + (size_t)(&f - b.f.data() + 1) * b.stack_size;
                if (!f.started) {
                    f.started = true;
                    b.progress = true;
#if defined(__x86_64__)
                    // A frame fj_emu_swap can return into: MXCSR/x87 control words, six registers,
                    // then the entry as return address. Its `ret` leaves rsp at top - 8, i.e.
                    // rsp % 16 == 8 at the entry, as right after a call (the ABI's alignment; the
                    // word at top - 8 stands for the entry's own return address, never used).
                    uint64_t* sp = (uint64_t*)((uintptr_t)top & ~(uintptr_t)15) - 1;
                    *--sp = (uint64_t)(uintptr_t)&fj_emu_fiber_entry;
                    for (int r = 0; r < 6; ++r) *--sp = 0;
                    *--sp = (uint64_t)0x1f80u | ((uint64_t)0x037fu << 32);
                    f.sp = sp;
#else
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = top - b.stack_size;
                    f.ctx.uc_stack.ss_size = b.stack_size;
                    f.ctx.uc_link = nullptr;
                    makecontext(&f.ctx, fiber_entry_uc, 0);
#endif
                }
#if defined(__x86_64__)
                fj_emu_swap(&b.sched_sp, f.sp);
#else
                swapcontext(&b.sched, &f.ctx);
#endif
                if (b.failed) return 1;
                if (f.done) --live;
            }
            if (!b.progress) {
                char what[256];
                int at = 0;
                for (unsigned i = 0; i < b.n && at < 200; ++i)
                    if (!b.f[i].done) at += snprintf(what + at, sizeof what - at, " t%u:%s", i, b.f[i].wait == BAR ? "bar" : b.f[i].wait == COLL ? "warp" : "active");
                snprintf(b.error, sizeof b.error, "block %u deadlocks: no thread can go on (%u live;%s ...)", blk, live, what);
                return 1;
            }
        }
    }
    return 0;
}

}  // namespace fj_emu

using namespace fj_emu;

// Launches `kernel` over `grid` blocks of `block` threads (blockDim.x; y = z = 1). Returns 0, or 1
// with a message in `err`.
extern "C" int fj_emu_run(const FjEmuKernel* kernel, const void* params, unsigned grid, unsigned block, unsigned flags, char* err,
                          size_t errlen) {
    if (block == 0 || block > 1024 || grid == 0) {
        snprintf(err, errlen, "bad launch: %u blocks of %u threads", grid, block);
        return 1;
    }
    Block b;
    b.n = block;
    b.f.assign(block, Fiber{});
    // Fiber stacks: 128 KiB each (a kernel's frame holds its parameter struct, up to ~4.2 KiB for a
    // batch), kept per OS thread across launches and never zeroed, so untouched pages cost nothing.
    static thread_local char* stack_mem = nullptr;
    static thread_local size_t stack_cap = 0;
    b.stack_size = 128 * 1024;
    if (stack_cap < b.stack_size * block) {
        free(stack_mem);
        stack_cap = b.stack_size * block;
        stack_mem = (char*)malloc(stack_cap);
        if (!stack_mem) {
            stack_cap = 0;
            snprintf(err, errlen, "no memory for %u fiber stacks", block);
            return 1;
        }
    }
    b.stacks = stack_mem;
    b.thunk = kernel->thunk;
    b.params = params;
    b.failed = false;
    b.error[0] = 0;
    b.diverged = (flags & FLAG_DIVERGED) != 0;
    b.bar_count = b.bar_line = 0;
    Block* saved = tb;
    tb = &b;
    t_block_dim = fj_dim3{block, 1, 1};
    t_grid_dim = fj_dim3{grid, 1, 1};
    const int rc = run_launch(b, grid, flags);
    tb = saved;
    if (rc) snprintf(err, errlen, "%s: %s", kernel->name, b.error);
    return rc;
}
