/*
 * A timing model of one Arm Cortex-A53 or Cortex-A72 core, as a QEMU TCG plugin (linux-user).
 *
 * qemu runs the real aarch64 code; this plugin sees every translated block and every data
 * access and turns them into a modeled cycle count, the same on every run and every machine.
 * Where its figures come from and what it leaves out: rpc/TIMING_MODEL.md. The parameters come
 * from the device class's `timing_model:` section (pipeline.farm.modeled passes them as plugin
 * arguments); MODEL_VERSION changes whenever the same parameters would give other figures.
 *
 * The guest asks for the counters with a system call no kernel has (EDGE_SYSCALL): qemu-user
 * calls this plugin before it fails the call with ENOSYS. Command 1 writes the counters (struct
 * report) at offset 0 of the file descriptor in the second argument (the guest's descriptors
 * are qemu's own); command 2 empties the caches and the pipeline, so that every measurement
 * starts from the same state; command 3 marks the counters, and the report carries them as they
 * were at the mark too, so that a measurement holds no work of the guest's own bookkeeping
 * after it. The model counts nothing before the first command 2: starting Python and TVM under
 * it would take five times longer.
 *
 * The plugin API declarations below are the few we use from QEMU's public plugin API, version
 * 1 (QEMU 7.2+); the version QEMU reports is checked at load. Errors at load go to stderr
 * (qemu's own plugin log is off by default).
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* ---- QEMU plugin API, version 1 (only what this plugin uses) ---- */
typedef uint64_t qemu_plugin_id_t;
typedef uint32_t qemu_plugin_meminfo_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
typedef struct {
    const char *target_name;
    struct { int min; int cur; } version;
    bool system_emulation;
    union { struct { int smp_vcpus; int max_vcpus; } system; };
} qemu_info_t;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS };
enum qemu_plugin_mem_rw { QEMU_PLUGIN_MEM_R = 1, QEMU_PLUGIN_MEM_W, QEMU_PLUGIN_MEM_RW };
void qemu_plugin_register_vcpu_tb_trans_cb(
    qemu_plugin_id_t id, void (*cb)(qemu_plugin_id_t, struct qemu_plugin_tb *));
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb,
                                          void (*cb)(unsigned int, void *),
                                          enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_mem_cb(struct qemu_plugin_insn *insn,
                                      void (*cb)(unsigned int, qemu_plugin_meminfo_t,
                                                 uint64_t, void *),
                                      enum qemu_plugin_cb_flags flags,
                                      enum qemu_plugin_mem_rw rw, void *userdata);
void qemu_plugin_register_vcpu_syscall_cb(
    qemu_plugin_id_t id,
    void (*cb)(qemu_plugin_id_t, unsigned int, int64_t, uint64_t, uint64_t, uint64_t,
               uint64_t, uint64_t, uint64_t, uint64_t, uint64_t));
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
bool qemu_plugin_mem_is_store(qemu_plugin_meminfo_t info);
void qemu_plugin_outs(const char *string);

EXPORT int qemu_plugin_version = 1;
#define API_VERSION 1

/* ---- the model ---- */
#define MODEL_VERSION 3
#define EDGE_SYSCALL 0xED6E
#define REPORT_MAGIC 0x4544474554494D45ull /* "EDGETIME" */

enum kind { ALU, MUL, DIV, BRANCH, LOAD, STORE, FP, FMA, VALU, VMUL, VPERM, NKINDS };
/* Issue pipes; kinds that share a pipe on a core are mapped to one (set_pipes). */
enum pipe { P_ALU, P_MAC, P_BR, P_LD, P_ST, P_FP, P_FMAC, NPIPES };
static const char *KIND_NAME[NKINDS] = {"alu", "mul", "div", "branch", "load", "store", "fp",
                                        "fma", "valu", "vmul", "vperm"};
static uint8_t pipe_of[NKINDS];
#define MAX_UNITS 4
#define NOREG 0xff
#define ROB_MAX 256

static struct {
    unsigned out_of_order, width, rob;
    unsigned latency[NKINDS];
    unsigned fma_accumulate_latency; /* a multiply-accumulate's result into the next one's addend */
    unsigned units[NPIPES];
    unsigned store_shares_load, fmac_shares_fp; /* one pipe for both on this core */
    unsigned q_load_cycles, q_store_cycles, q_fp_cycles; /* pipe cycles of a 128-bit op */
    unsigned q_load_exclusive; /* in order: nothing issues beside a 128-bit load (A53) */
    unsigned freq_mhz;
    unsigned l1_kb, l1_ways, l2_kb, l2_ways, line;
    unsigned l2_cycles, dram_cycles, dram_bytes_per_kcycle, streams;
    unsigned stride_prefetch; /* a per-instruction stride prefetcher covers strided misses */
    unsigned exposed_percent; /* share of a miss's latency the core cannot hide */
} cfg = {
    /* Placeholders only: pipeline.farm.modeled passes every value from the device class. */
    .out_of_order = 0, .width = 1, .rob = 0,
    .latency = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, .fma_accumulate_latency = 1,
    .units = {1, 1, 1, 1, 1, 1, 1}, .store_shares_load = 1, .fmac_shares_fp = 1,
    .q_load_cycles = 1, .q_store_cycles = 1, .q_fp_cycles = 1, .q_load_exclusive = 0,
    .freq_mhz = 1000,
    .l1_kb = 32, .l1_ways = 4, .l2_kb = 512, .l2_ways = 16, .line = 64,
    .l2_cycles = 10, .dram_cycles = 100, .dram_bytes_per_kcycle = 1000, .streams = 0,
    .stride_prefetch = 0,
    .exposed_percent = 100,
};

static void set_pipes(void) {
    static const uint8_t natural[NKINDS] = {P_ALU, P_MAC, P_MAC, P_BR, P_LD, P_ST,
                                            P_FP, P_FMAC, P_FP, P_FMAC, P_FP};
    for (int k = 0; k < NKINDS; k++) {
        uint8_t p = natural[k];
        if (p == P_ST && cfg.store_shares_load) p = P_LD;
        if (p == P_FMAC && cfg.fmac_shares_fp) p = P_FP;
        pipe_of[k] = p;
    }
}

struct insn {
    uint8_t kind, occupancy, nsrc, ndst;
    uint8_t src[4], dst[2];
    uint8_t accumulator; /* the source that is a multiply-accumulate's addend, or NOREG */
    uint8_t writeback;   /* the base register a pre/post-indexed access updates, or NOREG */
    uint8_t wide;        /* a 128-bit (Q) access or operation */
};

struct block {
    uint32_t n;
    struct insn insns[];
};

/* The stride prefetcher's entry of one load or store instruction (a PC-indexed table: the
 * line it touched last, the stride between its last two lines, and how often it repeated). */
struct stride {
    uint64_t last_line;
    int64_t stride;
    uint32_t confidence;
};

/* Registers 0-31: general (31 is sp/zr, never a dependency); 32-63: SIMD&FP. */
static uint64_t ready[64];
static uint64_t ready_for_accumulate[64]; /* when a MAC may take it as its addend */
static uint64_t unit_free[NPIPES][MAX_UNITS];
static uint64_t cycle, issued_in_cycle, last_done;
static uint64_t rob_done[ROB_MAX];

/* Out of order, a unit can take an instruction that became ready early while a later-issued
 * one waits for its operands: each pipe books cycles in a window, not a single "free from". */
#define WINDOW 1024
static struct booking { uint64_t cycle; uint8_t count; } booked[NPIPES][WINDOW];

static uint64_t book(unsigned pipe, uint64_t t, unsigned occupancy) {
    for (;; t++) {
        unsigned c;
        for (c = 0; c < occupancy; c++) {
            struct booking *b = &booked[pipe][(t + c) % WINDOW];
            if (b->cycle == t + c && b->count >= cfg.units[pipe]) break;
        }
        if (c == occupancy) break;
    }
    for (unsigned c = 0; c < occupancy; c++) {
        struct booking *b = &booked[pipe][(t + c) % WINDOW];
        if (b->cycle != t + c) { b->cycle = t + c; b->count = 0; }
        b->count++;
    }
    return t;
}
static uint64_t rob_pos;
static uint64_t insns_done, loads, stores, l1_misses, l2_misses, prefetched, dram_bytes;
static uint64_t kind_count[NKINDS];
static bool active;

struct cache {
    unsigned sets, ways, shift;
    uint64_t *tags; /* sets x ways, 0 = empty, else line + 1 */
    uint32_t *age;
    uint32_t clock;
};
static struct cache l1, l2;

/* Caches are indexed by "physical" addresses: pages numbered in the order they are first
 * touched after a reset, as an OS hands out page frames. The same accesses then give the same
 * figure wherever the allocator placed the buffers this time (virtual addresses differ from one
 * RPC session to the next). */
#define PAGE_SHIFT 12
static uint64_t *page_keys; /* virtual page + 1, 0 = empty */
static uint64_t *page_frames;
static size_t page_capacity, pages_used;

static size_t page_slot(uint64_t *keys, size_t capacity, uint64_t key) {
    size_t slot = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & (capacity - 1);
    while (keys[slot] && keys[slot] != key) slot = (slot + 1) & (capacity - 1);
    return slot;
}

static void pages_reset(void) {
    free(page_keys);
    free(page_frames);
    page_capacity = 1 << 16;
    pages_used = 0;
    page_keys = calloc(page_capacity, sizeof *page_keys);
    page_frames = calloc(page_capacity, sizeof *page_frames);
}

static uint64_t physical(uint64_t vaddr) {
    uint64_t key = (vaddr >> PAGE_SHIFT) + 1;
    size_t slot = page_slot(page_keys, page_capacity, key);
    if (!page_keys[slot]) {
        if (2 * (pages_used + 1) > page_capacity) { /* grow, keeping every frame number */
            size_t capacity = 2 * page_capacity;
            uint64_t *keys = calloc(capacity, sizeof *keys);
            uint64_t *frames = calloc(capacity, sizeof *frames);
            for (size_t i = 0; i < page_capacity; i++) {
                if (!page_keys[i]) continue;
                size_t j = page_slot(keys, capacity, page_keys[i]);
                keys[j] = page_keys[i];
                frames[j] = page_frames[i];
            }
            free(page_keys);
            free(page_frames);
            page_keys = keys;
            page_frames = frames;
            page_capacity = capacity;
            slot = page_slot(page_keys, page_capacity, key);
        }
        page_keys[slot] = key;
        page_frames[slot] = pages_used++;
    }
    return (page_frames[slot] << PAGE_SHIFT) | (vaddr & ((1u << PAGE_SHIFT) - 1));
}
static uint64_t *stream_next;
static unsigned stream_victim;

static void cache_init(struct cache *c, unsigned kb, unsigned ways) {
    c->ways = ways;
    c->sets = kb * 1024 / (cfg.line * ways);
    free(c->tags);
    free(c->age);
    c->tags = calloc((size_t)c->sets * ways, sizeof *c->tags);
    c->age = calloc((size_t)c->sets * ways, sizeof *c->age);
    c->clock = 0;
}

/* True if `line` was present; it is present and most recently used afterwards. */
static bool cache_access(struct cache *c, uint64_t line) {
    unsigned set = (unsigned)(line % c->sets);
    uint64_t *tags = c->tags + (size_t)set * c->ways;
    uint32_t *age = c->age + (size_t)set * c->ways;
    unsigned victim = 0;
    c->clock++;
    for (unsigned w = 0; w < c->ways; w++) {
        if (tags[w] == line + 1) {
            age[w] = c->clock;
            return true;
        }
        if (age[w] < age[victim]) victim = w;
    }
    tags[victim] = line + 1;
    age[victim] = c->clock;
    return false;
}

static void reset_state(void) {
    memset(ready, 0, sizeof ready);
    memset(ready_for_accumulate, 0, sizeof ready_for_accumulate);
    memset(unit_free, 0, sizeof unit_free);
    memset(rob_done, 0, sizeof rob_done);
    memset(booked, 0xff, sizeof booked);
    cycle = issued_in_cycle = last_done = rob_pos = 0;
    insns_done = loads = stores = l1_misses = l2_misses = prefetched = dram_bytes = 0;
    memset(kind_count, 0, sizeof kind_count);
    pages_reset();
    cache_init(&l1, cfg.l1_kb, cfg.l1_ways);
    cache_init(&l2, cfg.l2_kb, cfg.l2_ways);
    free(stream_next);
    stream_next = calloc(cfg.streams ? cfg.streams : 1, sizeof *stream_next);
    stream_victim = 0;
}

/* ---- decoding: instruction class, occupancy and register operands ---- */

static inline unsigned bits(uint32_t x, int hi, int lo) {
    return (x >> lo) & ((1u << (hi - lo + 1)) - 1);
}

static void add_src(struct insn *d, unsigned reg) {
    if (reg != 31 && reg != NOREG && d->nsrc < 4) d->src[d->nsrc++] = (uint8_t)reg;
}
static void add_src_v(struct insn *d, unsigned reg) { add_src(d, 32 + reg); }
static void add_accumulator(struct insn *d, unsigned reg) {
    d->accumulator = (uint8_t)(32 + reg);
    add_src_v(d, reg);
}
static void add_dst(struct insn *d, unsigned reg) {
    if (reg != 31 && reg != NOREG && d->ndst < 2) d->dst[d->ndst++] = (uint8_t)reg;
}
static void add_dst_v(struct insn *d, unsigned reg) { add_dst(d, 32 + reg); }

static void decode_load_store(uint32_t x, struct insn *d) {
    unsigned rt = bits(x, 4, 0), rn = bits(x, 9, 5), vector = bits(x, 26, 26);
    bool load, wide = false;
    unsigned regs = 1;
    if (bits(x, 31, 31) == 0 && bits(x, 29, 24) == 0x0c) { /* SIMD multiple structures */
        load = bits(x, 22, 22);
        unsigned opcode = bits(x, 15, 12);
        regs = opcode == 0x2 || opcode == 0x0 ? 4 : opcode == 0x6 || opcode == 0x4 ? 3
             : opcode == 0xa || opcode == 0x8 ? 2 : 1;
        wide = bits(x, 30, 30);
        if (bits(x, 23, 23)) d->writeback = (uint8_t)rn; /* post-index */
        add_src(d, rn);
        for (unsigned r = 0; r < regs; r++) {
            if (load) add_dst_v(d, (rt + r) % 32);
            else add_src_v(d, (rt + r) % 32);
        }
    } else if (bits(x, 29, 27) == 0x5) { /* pairs */
        load = bits(x, 22, 22);
        regs = 2;
        wide = vector && bits(x, 31, 30) == 2;
        unsigned rt2 = bits(x, 14, 10);
        add_src(d, rn);
        if (bits(x, 24, 23) == 1 || bits(x, 24, 23) == 3) d->writeback = (uint8_t)rn;
        if (load) {
            if (vector) { add_dst_v(d, rt); add_dst_v(d, rt2); } else { add_dst(d, rt); add_dst(d, rt2); }
        } else if (vector) { add_src_v(d, rt); add_src_v(d, rt2); }
        else { add_src(d, rt); add_src(d, rt2); }
    } else if (bits(x, 29, 27) == 0x7) { /* single register */
        unsigned opc = bits(x, 23, 22);
        load = vector ? (opc & 1) : opc != 0;
        wide = vector && bits(x, 31, 30) == 0 && (opc & 2);
        add_src(d, rn);
        if (bits(x, 24, 24) == 0 && bits(x, 21, 21) == 1 && bits(x, 11, 10) == 2)
            add_src(d, bits(x, 20, 16)); /* register offset */
        else if (bits(x, 24, 24) == 0 && bits(x, 21, 21) == 0 && bits(x, 10, 10) == 1)
            d->writeback = (uint8_t)rn; /* pre/post-index */
        if (load) { if (vector) add_dst_v(d, rt); else add_dst(d, rt); }
        else if (vector) add_src_v(d, rt); else add_src(d, rt);
    } else if (bits(x, 29, 27) == 0x3) { /* literal */
        load = true;
        if (vector) add_dst_v(d, rt); else add_dst(d, rt);
    } else { /* exclusives, atomics and the rest: treat as a scalar access */
        load = bits(x, 22, 22);
        add_src(d, rn);
        if (load) add_dst(d, rt); else add_src(d, rt);
    }
    d->kind = load ? LOAD : STORE;
    d->wide = wide;
    unsigned per = wide ? (load ? cfg.q_load_cycles : cfg.q_store_cycles) : 1;
    d->occupancy = (uint8_t)(per * regs);
}

static void decode_simd_fp(uint32_t x, struct insn *d) {
    unsigned rd = bits(x, 4, 0), rn = bits(x, 9, 5), rm = bits(x, 20, 16);
    unsigned q = bits(x, 30, 30), u = bits(x, 29, 29);
    bool scalar_fp = bits(x, 28, 28) == 1 && bits(x, 30, 30) == 0;
    d->kind = VALU;
    d->occupancy = 1;
    add_src_v(d, rn);
    if (scalar_fp) {
        if (bits(x, 28, 24) == 0x1f) { /* FMADD family */
            d->kind = FMA;
            add_src_v(d, rm);
            add_accumulator(d, bits(x, 14, 10));
            add_dst_v(d, rd);
            return;
        }
        if (bits(x, 21, 21) == 1 && bits(x, 15, 10) == 0) { /* FP <-> general register */
            unsigned opcode = bits(x, 18, 16);
            d->kind = FP;
            d->nsrc = 0;
            if (opcode == 2 || opcode == 3 || opcode == 7) { add_src(d, rn); add_dst_v(d, rd); }
            else { add_src_v(d, rn); add_dst(d, rd); }
            return;
        }
        d->kind = FP;
        if (bits(x, 21, 21) == 1 && bits(x, 11, 10) == 2) add_src_v(d, rm);
        if (bits(x, 21, 21) == 1 && bits(x, 11, 10) == 3) { add_src_v(d, rm); add_src(d, NOREG); }
        add_dst_v(d, rd);
        return;
    }
    bool wide = q || bits(x, 28, 28); /* 128-bit vector (scalar SIMD counts as one unit) */
    unsigned top = bits(x, 28, 24);
    if (top == 0x0e || top == 0x1e) {
        if (bits(x, 21, 21) == 1 && bits(x, 10, 10) == 1) { /* three same */
            unsigned opcode = bits(x, 15, 11);
            add_src_v(d, rm);
            if (opcode >= 0x18) {
                d->kind = (opcode == 0x19 && !u) ? FMA : FP;
                if (d->kind == FMA) add_accumulator(d, rd);
            } else if (opcode == 0x12 || opcode == 0x13 || opcode == 0x16) {
                d->kind = VMUL;
                if (opcode == 0x12) add_src_v(d, rd);
            }
        } else if (bits(x, 21, 21) == 1 && bits(x, 11, 10) == 0) { /* three different */
            unsigned opcode = bits(x, 15, 12);
            add_src_v(d, rm);
            if (opcode >= 0x8 && opcode <= 0xe) {
                d->kind = VMUL;
                if (opcode <= 0xb) add_src_v(d, rd);
            } else if (opcode == 0x5 || opcode == 0x1 || opcode == 0x3) {
                if (opcode == 0x5) add_src_v(d, rd);
            }
        } else if (bits(x, 21, 17) == 0x10 && bits(x, 11, 10) == 2) { /* two-register misc */
            unsigned opcode = bits(x, 16, 12);
            if (opcode == 0x06) add_src_v(d, rd); /* SADALP/UADALP accumulate */
            if (opcode >= 0x16 || (opcode >= 0x0c && bits(x, 23, 23))) d->kind = FP;
        } else if (bits(x, 21, 17) == 0x18 && bits(x, 11, 10) == 2) { /* across lanes */
            d->kind = VPERM;
        } else if (top == 0x0e && bits(x, 29, 21) == 0x070 && bits(x, 15, 15) == 0 &&
                   bits(x, 10, 10) == 1) { /* DUP, INS, UMOV, SMOV */
            unsigned imm4 = bits(x, 14, 11);
            d->kind = VPERM;
            if (imm4 == 1 || imm4 == 3) { d->nsrc = 0; add_src(d, rn); }
            if (imm4 == 3 || bits(x, 29, 29)) add_src_v(d, rd);
            if (imm4 == 5 || imm4 == 7) { add_dst(d, rd); d->occupancy = 1; return; }
        } else { /* permutes, EXT, TBL */
            d->kind = VPERM;
            add_src_v(d, rm);
        }
    } else if (top == 0x0f || top == 0x1f) {
        if (bits(x, 10, 10) == 0) { /* by element */
            unsigned opcode = bits(x, 15, 12);
            add_src_v(d, bits(x, 20, 16) & (bits(x, 23, 22) == 1 ? 0xf : 0x1f));
            if (!u && (opcode == 0x1 || opcode == 0x5)) { d->kind = FMA; add_accumulator(d, rd); }
            else if (!u && opcode == 0x9) d->kind = FP;
            else {
                d->kind = VMUL;
                if (opcode == 0x0 || opcode == 0x4 || opcode == 0x2 || opcode == 0x6 ||
                    opcode == 0xe || opcode == 0x3 || opcode == 0x7) add_src_v(d, rd);
            }
        } else if (bits(x, 23, 19) == 0) { /* modified immediate (MOVI): no source */
            d->nsrc = 0;
        } else { /* shift by immediate */
            unsigned opcode = bits(x, 15, 11);
            if (opcode == 0x02 || opcode == 0x06 || opcode == 0x0a) add_src_v(d, rd);
            if (opcode >= 0x1c) d->kind = FP; /* fixed-point conversions */
        }
    }
    add_dst_v(d, rd);
    if (wide) d->occupancy = (uint8_t)cfg.q_fp_cycles;
}

static void decode(uint32_t x, struct insn *d) {
    memset(d, 0, sizeof *d);
    d->occupancy = 1;
    d->accumulator = d->writeback = NOREG;
    unsigned op0 = bits(x, 28, 25);
    unsigned rd = bits(x, 4, 0), rn = bits(x, 9, 5), rm = bits(x, 20, 16);
    if ((op0 & 0x5) == 0x4) { decode_load_store(x, d); return; }
    if ((op0 & 0x7) == 0x7) { decode_simd_fp(x, d); return; }
    if ((op0 & 0xe) == 0xa) { /* branches, exceptions, system */
        d->kind = BRANCH;
        if (bits(x, 30, 26) == 0x0d || bits(x, 30, 25) == 0x1a) add_src(d, rd); /* CBZ, TBZ */
        if (bits(x, 31, 25) == 0x6b) add_src(d, rn); /* BR, BLR, RET */
        if (bits(x, 31, 31) && bits(x, 30, 26) == 0x05) add_dst(d, 30); /* BL */
        return;
    }
    if ((op0 & 0xe) == 0x8) { /* data processing, immediate */
        d->kind = ALU;
        if (bits(x, 28, 23) != 0x25) add_src(d, rn); /* MOVZ/MOVN/MOVK have no Rn */
        else if (bits(x, 30, 29) == 3) add_src(d, rd); /* MOVK keeps the other bits */
        add_dst(d, rd);
        return;
    }
    /* data processing, register */
    d->kind = ALU;
    add_src(d, rn);
    add_src(d, rm);
    if (bits(x, 28, 24) == 0x1b) { /* MADD, MSUB, SMULL, UMULH ... */
        d->kind = MUL;
        add_src(d, bits(x, 14, 10));
    } else if (bits(x, 30, 21) == 0x0d6 && (bits(x, 15, 10) >> 1) == 1) {
        d->kind = DIV;
    }
    add_dst(d, rd);
}

/* ---- execution ---- */

static void issue(const struct insn *d) {
    uint64_t t = 0;
    for (unsigned s = 0; s < d->nsrc; s++) {
        unsigned r = d->src[s];
        uint64_t at = r == d->accumulator ? ready_for_accumulate[r] : ready[r];
        if (at > t) t = at;
    }
    unsigned pipe = pipe_of[d->kind];
    if (cfg.out_of_order) {
        /* Dispatch in order, `width` a cycle, at most `rob` in flight; execution as soon as the
         * operands are ready and a unit has a free cycle. */
        uint64_t slot = cycle + (issued_in_cycle >= (uint64_t)cfg.width);
        if (slot != cycle) { cycle = slot; issued_in_cycle = 0; }
        issued_in_cycle++;
        uint64_t *oldest = &rob_done[rob_pos % (uint64_t)cfg.rob];
        if (*oldest > cycle) { cycle = *oldest; issued_in_cycle = 1; }
        if (cycle > t) t = cycle;
        t = book(pipe, t, d->occupancy);
        uint64_t done = t + cfg.latency[d->kind];
        *oldest = done;
        rob_pos++;
        if (done > last_done) last_done = done;
    } else {
        /* In order: an instruction issues with or after the one before it, at most `width` a
         * cycle, once its operands and a unit are free. */
        unsigned best = 0, units = cfg.units[pipe];
        for (unsigned u = 1; u < units; u++)
            if (unit_free[pipe][u] < unit_free[pipe][best]) best = u;
        if (unit_free[pipe][best] > t) t = unit_free[pipe][best];
        if (t < cycle) t = cycle;
        if (t == cycle && issued_in_cycle >= (uint64_t)cfg.width) t++;
        if (t != cycle) { cycle = t; issued_in_cycle = 0; }
        issued_in_cycle++;
        unit_free[pipe][best] = t + d->occupancy;
        if (t + cfg.latency[d->kind] > last_done) last_done = t + cfg.latency[d->kind];
        if (cfg.q_load_exclusive && d->kind == LOAD && d->wide) {
            cycle = t + d->occupancy; /* the load takes every issue slot while it issues */
            issued_in_cycle = 0;
        }
    }
    /* The address adder updates the base register once the base is ready: it waits neither
     * for the loaded data nor (out of order) for the data a store writes. */
    if (d->writeback != NOREG && d->writeback != 31) {
        uint64_t base = cfg.out_of_order ? ready[d->writeback] : t;
        if (base < cycle) base = cycle;
        ready[d->writeback] = ready_for_accumulate[d->writeback] = base + cfg.latency[ALU];
    }
    for (unsigned k = 0; k < d->ndst; k++) {
        ready[d->dst[k]] = t + cfg.latency[d->kind];
        ready_for_accumulate[d->dst[k]] = t + (d->kind == FMA ? cfg.fma_accumulate_latency
                                                              : cfg.latency[d->kind]);
    }
    kind_count[d->kind]++;
}

static void on_block(unsigned int vcpu, void *userdata) {
    (void)vcpu;
    if (!active) return;
    const struct block *b = userdata;
    for (uint32_t i = 0; i < b->n; i++) issue(&b->insns[i]);
    insns_done += b->n;
}

static void stall(uint64_t cycles) {
    cycles = cycles * cfg.exposed_percent / 100;
    cycle += cycles;
    issued_in_cycle = 0;
}

/* True when the instruction's accesses have walked a constant stride at least twice and this
 * line is the next one along it: a stride prefetcher had fetched it. */
static bool strided(struct stride *entry, uint64_t line) {
    int64_t step = (int64_t)(line - entry->last_line);
    bool predicted = entry->confidence >= 2 && entry->stride != 0 && step == entry->stride;
    if (step != 0) {
        if (step == entry->stride) {
            entry->confidence++;
        } else {
            entry->stride = step;
            entry->confidence = 0;
        }
        entry->last_line = line;
    }
    return predicted;
}

static void on_memory(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr,
                      void *userdata) {
    (void)vcpu;
    if (!active) return;
    uint64_t line = physical(vaddr) / cfg.line;
    bool predicted = cfg.stride_prefetch && strided(userdata, line);
    if (qemu_plugin_mem_is_store(info)) {
        /* Stores retire through the store buffer; a line written is fetched and later
         * written back (counted against the DRAM bandwidth). */
        stores++;
        if (!cache_access(&l1, line) && !cache_access(&l2, line)) dram_bytes += 2 * cfg.line;
        return;
    }
    loads++;
    if (cache_access(&l1, line)) return;
    l1_misses++;
    bool in_l2 = cache_access(&l2, line);
    if (!in_l2) {
        l2_misses++;
        dram_bytes += cfg.line;
    }
    if (predicted) {
        prefetched++;
        return;
    }
    for (unsigned s = 0; s < cfg.streams; s++) {
        if (stream_next[s] == line) {
            /* A sequential stream: the prefetcher has run ahead of it, so the line costs DRAM
             * bandwidth (the ceiling applied over the measurement), not latency. */
            stream_next[s] = line + 1;
            prefetched++;
            return;
        }
    }
    if (cfg.streams) {
        stream_next[stream_victim] = line + 1;
        stream_victim = (stream_victim + 1) % cfg.streams;
    }
    stall(in_l2 ? cfg.l2_cycles : cfg.dram_cycles);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    struct block *b = malloc(sizeof *b + n * sizeof(struct insn)); /* lives as long as the TB */
    b->n = (uint32_t)n;
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint32_t word = 0;
        memcpy(&word, qemu_plugin_insn_data(insn), qemu_plugin_insn_size(insn) < 4 ? 0 : 4);
        decode(word, &b->insns[i]);
        if (b->insns[i].kind == LOAD || b->insns[i].kind == STORE)
            qemu_plugin_register_vcpu_mem_cb(insn, on_memory, QEMU_PLUGIN_CB_NO_REGS,
                                             QEMU_PLUGIN_MEM_RW,
                                             calloc(1, sizeof(struct stride)));
    }
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_block, QEMU_PLUGIN_CB_NO_REGS, b);
}

struct counters {
    uint64_t cycles, dram_bytes, instructions, loads, stores, l1_misses, l2_misses, prefetched;
};

struct report {
    uint64_t magic, version, freq_mhz, dram_bytes_per_kcycle;
    struct counters now, mark;
    uint64_t kinds[NKINDS];
};

static struct counters marked;

static struct counters current(void) {
    struct counters c = {cycle > last_done ? cycle : last_done, dram_bytes, insns_done, loads,
                         stores, l1_misses, l2_misses, prefetched};
    return c;
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1,
                       uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                       uint64_t a7, uint64_t a8) {
    (void)id; (void)vcpu; (void)a3; (void)a4; (void)a5; (void)a6; (void)a7; (void)a8;
    if (num != EDGE_SYSCALL) return;
    if (a1 == 2) {
        reset_state();
        memset(&marked, 0, sizeof marked);
        active = true;
        return;
    }
    if (a1 == 3) { marked = current(); return; }
    if (a1 != 1) return;
    struct report r = {REPORT_MAGIC, MODEL_VERSION, cfg.freq_mhz, cfg.dram_bytes_per_kcycle,
                       current(), marked, {0}};
    memcpy(r.kinds, kind_count, sizeof r.kinds);
    if (pwrite((int)a2, &r, sizeof r, 0) != (ssize_t)sizeof r)
        qemu_plugin_outs("timing_model: could not write the report\n");
}

static bool set_option(const char *key, const char *value) {
    static const struct { const char *name; unsigned *field; } options[] = {
        {"width", &cfg.width}, {"rob", &cfg.rob}, {"out_of_order", &cfg.out_of_order},
        {"fma_accumulate_latency", &cfg.fma_accumulate_latency},
        {"alu_units", &cfg.units[P_ALU]}, {"mac_units", &cfg.units[P_MAC]},
        {"branch_units", &cfg.units[P_BR]}, {"load_units", &cfg.units[P_LD]},
        {"store_units", &cfg.units[P_ST]}, {"fp_units", &cfg.units[P_FP]},
        {"fmac_units", &cfg.units[P_FMAC]}, {"store_shares_load", &cfg.store_shares_load},
        {"fmac_shares_fp", &cfg.fmac_shares_fp},
        {"q_load_cycles", &cfg.q_load_cycles}, {"q_store_cycles", &cfg.q_store_cycles},
        {"q_fp_cycles", &cfg.q_fp_cycles}, {"q_load_exclusive", &cfg.q_load_exclusive},
        {"freq_mhz", &cfg.freq_mhz},
        {"l1_kb", &cfg.l1_kb}, {"l1_ways", &cfg.l1_ways}, {"l2_kb", &cfg.l2_kb},
        {"l2_ways", &cfg.l2_ways}, {"line", &cfg.line}, {"l2_cycles", &cfg.l2_cycles},
        {"dram_cycles", &cfg.dram_cycles},
        {"dram_bytes_per_kcycle", &cfg.dram_bytes_per_kcycle}, {"streams", &cfg.streams},
        {"stride_prefetch", &cfg.stride_prefetch},
        {"exposed_percent", &cfg.exposed_percent},
    };
    char *end;
    unsigned long v = strtoul(value, &end, 10);
    if (*end || !*value) return false;
    for (size_t i = 0; i < sizeof options / sizeof options[0]; i++)
        if (!strcmp(key, options[i].name)) { *options[i].field = (unsigned)v; return true; }
    for (int k = 0; k < NKINDS; k++) {
        char name[32];
        snprintf(name, sizeof name, "latency_%s", KIND_NAME[k]);
        if (!strcmp(key, name)) { cfg.latency[k] = (unsigned)v; return true; }
    }
    return false;
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                               char **argv) {
    char message[256];
    if (info->version.cur < API_VERSION || info->version.min > API_VERSION) {
        snprintf(message, sizeof message,
                 "timing_model: needs QEMU plugin API %d; this QEMU has %d..%d\n",
                 API_VERSION, info->version.min, info->version.cur);
        fputs(message, stderr);
        return -1;
    }
    if (info->system_emulation || strcmp(info->target_name, "aarch64") != 0) {
        fputs("timing_model: models aarch64 linux-user only\n", stderr);
        return -1;
    }
    for (int i = 0; i < argc; i++) {
        char key[64];
        const char *eq = strchr(argv[i], '=');
        size_t len = eq ? (size_t)(eq - argv[i]) : 0;
        if (!eq || len >= sizeof key) {
            fprintf(stderr, "timing_model: %s is not NAME=VALUE\n", argv[i]);
            return -1;
        }
        memcpy(key, argv[i], len);
        key[len] = 0;
        if (!set_option(key, eq + 1)) {
            snprintf(message, sizeof message, "timing_model: unknown option %s\n", argv[i]);
            fputs(message, stderr);
            return -1;
        }
    }
    if (cfg.width < 1 || cfg.line < 16 || cfg.l1_ways < 1 || cfg.l2_ways < 1 ||
        (cfg.out_of_order && (cfg.rob < 1 || cfg.rob > ROB_MAX))) {
        fputs("timing_model: invalid parameters\n", stderr);
        return -1;
    }
    for (int p = 0; p < NPIPES; p++) {
        if (cfg.units[p] < 1 || cfg.units[p] > MAX_UNITS) {
            fprintf(stderr, "timing_model: every pipe needs 1 to %d units\n", MAX_UNITS);
            return -1;
        }
    }
    set_pipes();
    reset_state();
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    return 0;
}
