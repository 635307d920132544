// The emulated dispatcher's event loop in C++ (see vfpga_emu.h). Emulation
// library only: it uses the host's threads and the standard library, and is
// never part of a synthesized top.
//
// It is the loop driver/emulated_dispatcher.py runs in Python (kept there as
// the reference, loop="python"), step for step: the same register stamps of
// the clock, the same frame order, and the timeline rules of
// runtime/hw/timeline.py (PoolTimeline.issue / pop / _share) with the frames in
// flight in the same list order and the same float operations in the same
// order, so every revised frame end is the same number.
//
// Frames run ahead. A frame's fault outcome is fixed by what the units check:
// instruction fields and addresses against the segment (its bytes, where they
// sit, the segment and the window), and one datum, the PARAM shifts a CONV
// (ACC_FINAL) or RNN_GATES reads. A frame whose knowledge key (scan:
// the instructions, their place, the segment, the bytes its PARAM loads read)
// once ran without a fault, on a core whose PARAM shifts are all valid, runs
// without a fault again, so it is timed from the cache at issue (a frame that
// does not fault is timed from its bytes alone) and runs on a worker thread
// while the loop goes on; the loop waits for it only when it retires, and
// retires it with its real result, checking the claim. Other frames are run
// and waited for at issue, as the Python loop does with every frame. The
// frames in flight together are independent (one layer of a tenant between
// barriers, or disjoint segments), a core's next frame is issued only after
// its frame retired, and records are written at retire. A program whose
// frames of one layer write where another's instructions or PARAM loads
// read (a bad program) gets no run-ahead there: such a frame starts after
// the running frames of its segment ended (start_batch). What such frames
// read of each other's data is as racy as on the board, where they run
// together.

#include "vfpga_emu.h"
#include "vfpga_ddr.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <utility>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace {

const size_t kCacheLimit = 1u << 16;  // instruction byte strings whose timings are kept
const size_t kCleanLimit = 1u << 13;  // knowledge keys of frames seen to run without a fault
const uint64_t kParamKeyLimit = 1u << 20;  // PARAM load bytes a knowledge key may hold

struct Flight {
    uint64_t end;
    uint64_t order;
    uint32_t core;
    uint32_t has_result;  // 0 on the timing-only board (retired with NULL result and counters)
    vf_core_state_t result;
    vf_core_counters_t counters;
    uint32_t bank;
    uint32_t tenant;
    double demand;
    uint64_t start, at, solo;
    double left, stretch;  // cycles alone still to run, and the bank's stretch since `at`
};

// frame_timing.bank_stretches: max-min fair shares of a bank by water-filling.
std::vector<double> bank_stretches(const std::vector<double> &demands) {
    double sum = 0.0;
    for (double d : demands) sum += d;
    std::vector<double> out(demands.size(), 1.0);
    if (sum <= 1.0) return out;
    std::vector<double> ranked(demands);
    std::sort(ranked.begin(), ranked.end());
    double left = 1.0, share = 0.0;
    for (size_t i = 0; i < ranked.size(); ++i) {
        share = left / (double)(ranked.size() - i);
        if (ranked[i] > share) break;
        left -= ranked[i];
    }
    for (size_t i = 0; i < demands.size(); ++i) out[i] = std::max(1.0, demands[i] / share);
    return out;
}

struct Timing {
    uint64_t solo = 0;     // cycles alone
    double demand = 0.0;   // bank share alone
    double demand_scrubbed = 0.0;  // the same with the scrub's cycles added to its time
};

struct Issued {
    vf_disp_frame_t frame;
    uint32_t core;
    vf_core_state_t result;
    vf_core_counters_t counters;
};

// A frame's execution on its core (one per core: a core's next frame comes after this one retired).
enum JobState { kIdle, kQueued, kRunning, kDone };
struct Job {
    vf_disp_frame_t frame;
    int8_t *mem = nullptr;  // the window it was issued with
    uint64_t bytes = 0;
    vf_core_state_t result;
    vf_core_counters_t counters;
    JobState state = kIdle;  // under pool_mu
    bool ahead = false;      // timed at issue from the knowledge, without its result
    std::string clean;       // its knowledge key; empty: it never runs ahead
    // segment ranges [lo, hi): what its fault outcome reads (instructions, PARAM load sources) and what it may write
    std::vector<std::pair<uint64_t, uint64_t>> reads, writes;
};

}  // namespace

struct vf_emu {
    vf_emu_config_t cfg;
    vf_disp_regs_t *regs;
    vf_disp_state_t *state;

    std::mutex mu;  // registers, state, clock, timeline (the Python loop's device lock)
    std::condition_variable wake;
    // a host write since the loop last looked: set under mu, also read without it while the loop polls
    std::atomic<bool> dirty{false};
    bool stop = false, running = false;
    int8_t *mem = nullptr;
    uint64_t mem_bytes = 0;
    std::vector<void *> buffers;

    std::mutex irq_mu;
    std::condition_variable irq_cv;
    uint64_t irq_events = 0;

    uint64_t now = 0, order = 0, frames = 0;
    std::vector<Flight> inflight;
    std::unordered_map<std::string, Timing> cache[2];  // [rnn]: instruction bytes -> timings

    // the frames of the last advance: run once, then timed in pool order
    std::vector<Issued> batch;
    size_t next = 0;
    bool batch_ran = false;
    int8_t *batch_mem = nullptr;
    uint64_t batch_bytes = 0;
    std::map<uint32_t, uint64_t> answers;  // this frame's uncached answers: kind -> cycles
    uint32_t asked_kind = 0, asked_rnn = 0;
    std::string asked_key;

    // frames run on these threads and the loop's own (while it waits for one)
    std::vector<std::thread> workers;
    std::mutex pool_mu;
    std::condition_variable pool_cv, done_cv;
    std::vector<Job> jobs;       // per core
    std::deque<uint32_t> queue;  // cores whose job waits for a thread
    bool pool_stop = false;

    std::unordered_set<std::string> clean;  // knowledge keys seen to run without a fault
    uint64_t ahead = 0;         // frames run ahead
    bool trust_cached = false;  // test hook: corrupted knowledge (every frame with a cached timing runs ahead)
    std::string error;          // an internal error (vf_emu_run returns VF_EMU_ERROR)
};

namespace {

void irq_raise(vf_emu_t *e) {
    {
        std::lock_guard<std::mutex> l(e->irq_mu);
        e->irq_events++;
    }
    e->irq_cv.notify_all();
}

void run_job(vf_emu_t *e, uint32_t core) {
    Job &j = e->jobs[core];
    std::memset(&j.result, 0, sizeof(j.result));
    std::memset(&j.counters, 0, sizeof(j.counters));
    void *buf = e->buffers[core];
    if (core < VF_CNN_CORES)
        vf_dispatch_run_frame(j.mem, j.bytes, &j.frame, (vf_cnn_buffers_t *)buf, &j.result, &j.counters, nullptr);
    else
        vf_dispatch_run_rnn_frame(j.mem, j.bytes, &j.frame, (vf_rnn_buffers_t *)buf, &j.result, &j.counters,
                                  nullptr);
}

// Takes the first queued job and runs it (pool_mu held on entry and exit, released while it runs).
void run_next(vf_emu_t *e, std::unique_lock<std::mutex> &l) {
    uint32_t core = e->queue.front();
    e->queue.pop_front();
    e->jobs[core].state = kRunning;
    l.unlock();
    run_job(e, core);
    l.lock();
    e->jobs[core].state = kDone;
    e->done_cv.notify_all();
}

void worker(vf_emu_t *e) {
    std::unique_lock<std::mutex> l(e->pool_mu);
    for (;;) {
        e->pool_cv.wait(l, [&] { return e->pool_stop || !e->queue.empty(); });
        if (e->pool_stop) return;
        run_next(e, l);
    }
}

// Queues the jobs of `cores` for the threads (e->mu not held).
void start_jobs(vf_emu_t *e, const std::vector<uint32_t> &cores) {
    if (cores.empty()) return;
    if (e->workers.empty())
        for (uint32_t t = 1; t < e->cfg.threads; ++t) e->workers.emplace_back(worker, e);
    bool alone;
    {
        std::lock_guard<std::mutex> l(e->pool_mu);
        alone = cores.size() == 1 && e->queue.empty();
        for (const Job &j : e->jobs) alone &= j.state != kRunning;
        for (uint32_t c : cores) {
            e->jobs[c].state = kQueued;
            e->queue.push_back(c);
        }
    }
    // a frame with nothing to run beside it is left to the loop's thread (wait_job takes it): handing
    // it to a worker costs a thread switch and a cold cache, and gains nothing
    if (!alone) e->pool_cv.notify_all();
}

// Returns once core's job has run; meanwhile the loop's thread runs queued jobs itself (e->mu not held).
void wait_job(vf_emu_t *e, uint32_t core) {
    std::unique_lock<std::mutex> l(e->pool_mu);
    while (e->jobs[core].state != kDone && e->jobs[core].state != kIdle) {
        if (!e->queue.empty())
            run_next(e, l);
        else
            e->done_cv.wait(l);
    }
}

bool job_done(vf_emu_t *e, uint32_t core) {
    std::lock_guard<std::mutex> l(e->pool_mu);
    return e->jobs[core].state == kDone || e->jobs[core].state == kIdle;
}

// Runs (helping) or waits for every job not finished: the frames in flight have all written their outputs.
void finish_jobs(vf_emu_t *e) {
    std::unique_lock<std::mutex> l(e->pool_mu);
    for (;;) {
        if (!e->queue.empty()) {
            run_next(e, l);
            continue;
        }
        bool running = false;
        for (const Job &j : e->jobs) running |= j.state == kRunning;
        if (!running) return;
        e->done_cv.wait(l);
    }
}

// Drops the queued jobs and waits for the running ones (the loop stops: nothing may touch memory after).
void drain_jobs(vf_emu_t *e) {
    std::unique_lock<std::mutex> l(e->pool_mu);
    for (uint32_t c : e->queue) e->jobs[c].state = kIdle;
    e->queue.clear();
    e->done_cv.wait(l, [&] {
        for (const Job &j : e->jobs)
            if (j.state == kRunning) return false;
        return true;
    });
}

uint32_t ask(vf_emu_t *e, vf_emu_need_t *need, uint32_t kind, const Issued &it, uint32_t rnn) {
    std::memset(need, 0, sizeof(*need));
    need->kind = kind;
    need->core = it.core;
    need->rnn = rnn;
    need->mem = e->batch_mem;
    need->mem_bytes = e->batch_bytes;
    need->frame = it.frame;
    need->result = it.result;
    need->counters = it.counters;
    e->asked_kind = kind;
    e->asked_rnn = rnn;
    return kind;
}

bool answered(vf_emu_t *e, uint32_t kind, uint64_t *cycles) {
    auto a = e->answers.find(kind);
    if (a == e->answers.end()) return false;
    *cycles = a->second;
    return true;
}

// PoolTimeline._share: the frames on `bank` brought up to now, then stretched by its current sharing.
void share(vf_emu_t *e, uint32_t bank) {
    std::vector<size_t> on;
    std::vector<double> demands;
    for (size_t i = 0; i < e->inflight.size(); ++i)
        if (e->inflight[i].bank == bank) {
            on.push_back(i);
            demands.push_back(e->inflight[i].demand);
        }
    std::vector<double> s = bank_stretches(demands);
    for (size_t k = 0; k < on.size(); ++k) {
        Flight &f = e->inflight[on[k]];
        f.left = std::max(0.0, f.left - (double)(e->now - f.at) / f.stretch);
        f.at = e->now;
        f.stretch = s[k];
        f.end = e->now + (uint64_t)std::ceil(f.left * s[k] - 1e-9);
    }
}

// Appends n bytes of the segment at segment offset `off` as the cores read
// them (through the stripe mapping when striped); false when any is outside
// the window.
bool seg_bytes(const vf_ddr_t &d, int8_t *mem, uint64_t mem_bytes, uint64_t seg_win, uint64_t off, uint64_t n,
               std::string *out) {
    for (uint64_t k = 0; k < n;) {  // one run per bus word of a striped segment, else one
        const uint64_t m = d.striped ? vf_ddr_min(VF_DDR_WORD - (off + k) % VF_DDR_WORD, n - k) : n;
        const uint64_t at = vf_seg_window(d, seg_win, off + k);
        if (at > mem_bytes || m > mem_bytes - at) return false;
        out->append((const char *)mem + at, m);
        k += m;
    }
    return true;
}

// PoolTimeline._bytes: the frame's instructions (through the stripe mapping
// when its segment is striped), false when any of them is outside memory. The
// striped flag leads the key: the same instructions demand a striped
// segment's banks together, or one bank.
bool frame_bytes(int8_t *mem, uint64_t mem_bytes, const vf_disp_frame_t &f, std::string *key) {
    const uint64_t n = (uint64_t)f.n_insns * VF_INSN_BYTES;
    if (n == 0) return false;
    const vf_ddr_t d = vf_ddr_for(vf_ddr_window(mem, mem_bytes), f.striped);
    key->assign(1, f.striped ? '\1' : '\0');
    return seg_bytes(d, mem, mem_bytes, f.seg_win, f.frame_offset, n, key);
}

template <class T>
void put(std::string *key, T v) {
    key->append((const char *)&v, sizeof(v));
}

// The PARAM shifts of a core's buffers all in [0, 62] (the only buffer words a unit's fault check reads)?
bool shifts_valid(const vf_emu_t *e, uint32_t core) {
    const bool rnn = core >= VF_CNN_CORES;
    const int32_t *p = rnn ? ((const vf_rnn_buffers_t *)e->buffers[core])->param
                           : ((const vf_cnn_buffers_t *)e->buffers[core])->param;
    const uint64_t entries = rnn ? VF_RNN_PARAM_ENTRIES : VF_PARAM_ENTRIES;
    for (uint64_t i = 0; i < entries; ++i) {
        const int32_t s = p[i * VF_PARAM_ENTRY_WORDS + 2];
        if (s < 0 || s > 62) return false;
    }
    return true;
}

bool overlap(const std::vector<std::pair<uint64_t, uint64_t>> &a, const std::vector<std::pair<uint64_t, uint64_t>> &b) {
    for (const auto &x : a)
        for (const auto &y : b)
            if (x.first < y.second && y.first < x.second) return true;
    return false;
}

// The knowledge key of frame j about to run on `core` (j.clean, "" when it
// may not run ahead), and the segment ranges of j.reads / j.writes. What
// fixes its fault outcome: the core kind; the instruction bytes and where
// they are (the fetch checks frame_offset against the limit); the segment and
// the window (the core's limit is 0 when the segment is not inside its
// banks); and the bytes of every PARAM load (the shifts a CONV or RNN_GATES
// checks are the last loaded there, or the core's own, which must then all be
// valid). Only one-step frames: the instructions of a later step are fetched
// after the earlier ones ran, and a SAVE may have rewritten them. The write
// ranges bound the SAVEs' views (a SAVE outside its view faults before it
// writes); start_batch keeps them apart from the read ranges of the frames
// still running, so the bytes a key holds stay as they are until the frame ends.
void scan(const vf_emu_t *e, Job &j, uint32_t core) {
    const vf_disp_frame_t &f = j.frame;
    const bool rnn = core >= VF_CNN_CORES;
    j.clean.clear();
    j.reads.assign(1, {f.frame_offset, (uint64_t)f.frame_offset + (uint64_t)f.n_insns * VF_INSN_BYTES});
    j.writes.clear();
    std::string insns;
    if (!frame_bytes(j.mem, j.bytes, f, &insns)) {
        j.writes.assign(1, {0, UINT64_MAX});  // unknown: anything
        return;
    }
    std::string key(1, rnn ? 'r' : 'c');
    put(&key, f.frame_offset);
    put(&key, f.seg_win);
    put(&key, f.seg_limit);
    put(&key, j.bytes);
    put(&key, (uint64_t)insns.size());
    key += insns;
    const vf_ddr_t d = vf_ddr_for(vf_ddr_window(j.mem, j.bytes), f.striped);
    const size_t start = key.size();
    bool ok = true;
    for (uint32_t i = 0; i < f.n_insns; ++i) {
        const char *raw = insns.data() + 1 + (size_t)i * VF_INSN_BYTES;
        const uint8_t op = (uint8_t)raw[0];
        if (op == VF_OP_END) break;  // nothing after it runs
        if ((op == VF_OP_FRAME && i > 0) || (op == VF_OP_BARRIER && i + 1 < f.n_insns)) ok = false;
        if (!rnn && op == VF_OP_SAVE) {
            vf_insn_mem_t m;
            std::memcpy(&m, raw, sizeof(m));
            j.writes.push_back({m.dram_addr, (uint64_t)m.dram_addr + (uint64_t)m.height * m.width * m.pixel_stride});
        } else if (rnn && op == VF_RNN_OP_SAVE) {
            vf_insn_rnn_mem_t m;
            std::memcpy(&m, raw, sizeof(m));
            const uint64_t span = (uint64_t)(m.planes ? m.planes - 1 : 0) * m.plane_stride
                                  + (uint64_t)(m.rows ? m.rows - 1 : 0) * m.row_stride + m.row_bytes;
            j.writes.push_back({m.dram_addr, (uint64_t)m.dram_addr + span});
        } else if (!rnn && op == VF_OP_LOAD_LINEAR) {
            vf_insn_linear_t l;
            std::memcpy(&l, raw, sizeof(l));
            if (l.buffer != VF_BUF_PARAM) continue;
            j.reads.push_back({l.dram_addr, (uint64_t)l.dram_addr + l.nbytes});
            put(&key, i);
            if (key.size() - start + l.nbytes > kParamKeyLimit
                || !seg_bytes(d, j.mem, j.bytes, f.seg_win, l.dram_addr, l.nbytes, &key))
                ok = false;
        } else if (rnn && op == VF_RNN_OP_LOAD) {
            vf_insn_rnn_mem_t m;
            std::memcpy(&m, raw, sizeof(m));
            if (m.buffer != VF_RNN_BUF_PARAM) continue;
            const uint64_t span = (uint64_t)(m.planes ? m.planes - 1 : 0) * m.plane_stride
                                  + (uint64_t)(m.rows ? m.rows - 1 : 0) * m.row_stride + m.row_bytes;
            j.reads.push_back({m.dram_addr, (uint64_t)m.dram_addr + span});
            put(&key, i);
            if (!ok || key.size() - start + (uint64_t)m.planes * m.rows * m.row_bytes > kParamKeyLimit) {
                ok = false;
                continue;
            }
            for (uint32_t p = 0; p < m.planes && ok; ++p)
                for (uint32_t r = 0; r < m.rows && ok; ++r)
                    ok = seg_bytes(d, j.mem, j.bytes, f.seg_win,
                                   (uint64_t)m.dram_addr + (uint64_t)p * m.plane_stride + (uint64_t)r * m.row_stride,
                                   m.row_bytes, &key);
        }
    }
    if (overlap(j.writes, j.reads)) {  // it rewrites what it runs or loads: later steps may write anywhere
        j.writes.assign(1, {0, UINT64_MAX});
        return;
    }
    if (ok && shifts_valid(e, core)) j.clean = std::move(key);
}

// Frame j may not start while frame o (not finished) runs: one writes where the other's outcome reads.
bool conflicts(const Job &j, const Job &o) {
    return j.frame.seg_win == o.frame.seg_win && (overlap(j.writes, o.reads) || overlap(j.reads, o.writes));
}

// PoolTimeline.issue for batch frame it; 0 when scheduled, else the question for Python.
uint32_t time_frame(vf_emu_t *e, const Issued &it, vf_emu_need_t *need) {
    const vf_disp_frame_t &f = it.frame;
    uint32_t rnn = it.core >= VF_CNN_CORES;
    // PoolTimeline.bank_of: a striped segment's frames load its banks together (bank n_banks)
    uint64_t b = f.seg_win / e->cfg.bank_stride;
    uint32_t bank = f.striped ? e->cfg.n_banks : (uint32_t)std::min<uint64_t>(b, e->cfg.n_banks - 1);
    bool scrub = f.scrub && e->cfg.charge_scrubs;
    uint64_t solo;
    double demand = 0.0;  // faulting frames and frames outside memory move no DDR bytes
    if (e->cfg.compute && it.result.fault) {
        if (!answered(e, VF_EMU_FAULTED, &solo)) return ask(e, need, VF_EMU_FAULTED, it, rnn);
    } else {
        std::string key;
        if (frame_bytes(e->batch_mem, e->batch_bytes, f, &key)) {
            auto found = e->cache[rnn].find(key);
            if (found == e->cache[rnn].end()) {
                e->asked_key = key;
                return ask(e, need, VF_EMU_SOLO, it, rnn);
            }
            solo = found->second.solo;
            demand = scrub ? found->second.demand_scrubbed : found->second.demand;
        } else if (!answered(e, VF_EMU_UNTIMED, &solo)) {
            return ask(e, need, VF_EMU_UNTIMED, it, rnn);
        }
    }
    if (scrub) solo += rnn ? e->cfg.rnn_scrub_cycles : e->cfg.scrub_cycles;
    e->frames++;
    e->order++;
    Flight fl;
    std::memset(&fl, 0, sizeof(fl));
    fl.end = e->now + solo;
    fl.order = e->order;
    fl.core = it.core;
    fl.has_result = e->cfg.compute;
    fl.result = it.result;
    fl.counters = it.counters;
    fl.bank = bank;
    fl.tenant = f.tenant;
    fl.demand = demand;
    fl.start = fl.at = e->now;
    fl.solo = solo;
    fl.left = (double)solo;
    fl.stretch = 1.0;
    e->inflight.push_back(fl);
    if (demand > 0) share(e, bank);
    return 0;
}

// The index of the frame pop() takes next: the one ending first (of equal ends, the one issued first).
size_t next_out(const vf_emu_t *e) {
    size_t best = 0;
    for (size_t i = 1; i < e->inflight.size(); ++i) {
        const Flight &a = e->inflight[i], &b = e->inflight[best];
        if (a.end < b.end || (a.end == b.end && a.order < b.order)) best = i;
    }
    return best;
}

// PoolTimeline.pop: the frame ending first (of equal ends, the one issued first) leaves; its bank is shared anew.
Flight pop(vf_emu_t *e) {
    size_t best = next_out(e);
    Flight f = e->inflight[best];
    e->inflight.erase(e->inflight.begin() + best);
    e->now = std::max(e->now, f.end);
    e->cfg.core_busy_cycles[f.core] += (int64_t)(f.end - f.start);
    e->cfg.tenant_frame_cycles[f.tenant] += (int64_t)(f.end - f.start);
    e->cfg.tenant_solo_cycles[f.tenant] += (int64_t)f.solo;
    if (f.demand > 0) share(e, f.bank);
    return f;
}

Timing &cached(vf_emu_t *e) {
    auto &c = e->cache[e->asked_rnn];
    if (c.size() >= kCacheLimit && !c.count(e->asked_key)) c.clear();
    return c[e->asked_key];
}

}  // namespace

vf_emu_t *vf_emu_new(const vf_emu_config_t *config, vf_disp_regs_t *regs, vf_disp_state_t *state) {
    vf_emu_t *e = new vf_emu_t();
    e->cfg = *config;
    if (e->cfg.threads < 1) e->cfg.threads = 1;
    e->regs = regs;
    e->state = state;
    e->buffers.assign(VF_POOL_CORES, nullptr);
    e->jobs.resize(VF_POOL_CORES);
    return e;
}

void vf_emu_free(vf_emu_t *e) {
    drain_jobs(e);
    {
        std::lock_guard<std::mutex> l(e->pool_mu);
        e->pool_stop = true;
    }
    e->pool_cv.notify_all();
    for (auto &w : e->workers) w.join();
    delete e;
}

void vf_emu_set_window(vf_emu_t *e, int8_t *mem, uint64_t mem_bytes) {
    std::lock_guard<std::mutex> l(e->mu);
    e->mem = mem;
    e->mem_bytes = mem_bytes;
    e->dirty = true;
    e->wake.notify_all();
}

void vf_emu_set_buffers(vf_emu_t *e, uint32_t core, void *buffers) {
    std::lock_guard<std::mutex> l(e->mu);
    if (core < VF_POOL_CORES) e->buffers[core] = buffers;
}

uint32_t vf_emu_read_word(vf_emu_t *e, uint32_t word) {
    std::lock_guard<std::mutex> l(e->mu);
    return reinterpret_cast<const uint32_t *>(e->regs)[word];
}

void vf_emu_write_word(vf_emu_t *e, uint32_t word, uint32_t value) {
    std::lock_guard<std::mutex> l(e->mu);
    reinterpret_cast<uint32_t *>(e->regs)[word] = value;
    e->dirty = true;
    e->wake.notify_all();
}

void vf_emu_set_running(vf_emu_t *e, uint32_t running) {
    std::lock_guard<std::mutex> l(e->mu);
    e->running = running != 0;
    e->dirty = true;
    e->wake.notify_all();
}

void vf_emu_poke(vf_emu_t *e) {
    std::lock_guard<std::mutex> l(e->mu);
    e->dirty = true;
    e->wake.notify_all();
}

void vf_emu_stop(vf_emu_t *e) {
    std::lock_guard<std::mutex> l(e->mu);
    e->stop = true;
    e->running = false;
    e->wake.notify_all();
}

uint64_t vf_emu_now(vf_emu_t *e) {
    std::lock_guard<std::mutex> l(e->mu);
    return e->now;
}

uint64_t vf_emu_frames(vf_emu_t *e) {
    std::lock_guard<std::mutex> l(e->mu);
    return e->frames;
}

uint64_t vf_emu_cache_entries(vf_emu_t *e) {
    std::lock_guard<std::mutex> l(e->mu);
    return e->cache[0].size() + e->cache[1].size();
}

void vf_emu_bank_stretches(const double *demands, uint32_t n, double *stretches) {
    std::vector<double> s = bank_stretches(std::vector<double>(demands, demands + n));
    std::copy(s.begin(), s.end(), stretches);
}

uint32_t vf_emu_set_clock(vf_emu_t *e, uint64_t now) {
    std::lock_guard<std::mutex> l(e->mu);
    if (!e->inflight.empty() || !e->batch.empty()) return 0;
    e->now = now;
    return 1;
}

uint64_t vf_emu_irq_wait(vf_emu_t *e, uint64_t seen, double timeout_s) {
    std::unique_lock<std::mutex> l(e->irq_mu);
    auto news = [&] { return e->irq_events != seen; };
    if (timeout_s < 0)
        e->irq_cv.wait(l, news);
    else
        e->irq_cv.wait_for(l, std::chrono::duration<double>(timeout_s), news);
    return e->irq_events;
}

void vf_emu_irq_raise(vf_emu_t *e) { irq_raise(e); }

void vf_emu_put_solo(vf_emu_t *e, uint64_t cycles, double demand, double demand_scrubbed) {
    std::lock_guard<std::mutex> l(e->mu);
    Timing &t = cached(e);
    t.solo = cycles;
    t.demand = demand;
    t.demand_scrubbed = demand_scrubbed;
}

void vf_emu_put_cycles(vf_emu_t *e, uint64_t cycles) {
    std::lock_guard<std::mutex> l(e->mu);
    e->answers[e->asked_kind] = cycles;
}

uint64_t vf_emu_frames_ahead(vf_emu_t *e) {
    std::lock_guard<std::mutex> l(e->mu);
    return e->ahead;
}

void vf_emu_test_trust_cached(vf_emu_t *e, uint32_t on) {
    std::lock_guard<std::mutex> l(e->mu);
    e->trust_cached = on != 0;
}

namespace {

// The batch's frames start on the threads: those known clean are timed now
// without their results, the others are waited for (run_batch's question
// for buffers comes first). A frame that could change what a frame still
// running reads, or read what it may write, starts after the running frames
// of its segment ended, and does not run ahead.
void start_batch(vf_emu_t *e, std::unique_lock<std::mutex> &lk) {
    std::vector<uint32_t> cores;
    for (Issued &it : e->batch) {
        Job &j = e->jobs[it.core];
        j.frame = it.frame;
        j.mem = e->batch_mem;
        j.bytes = e->batch_bytes;
        scan(e, j, it.core);
        cores.push_back(it.core);
    }
    const bool trust = e->trust_cached;
    lk.unlock();
    size_t started = 0;
    for (size_t k = 0; k < cores.size(); ++k) {
        Job &j = e->jobs[cores[k]];
        bool clash = false;
        {
            std::lock_guard<std::mutex> l(e->pool_mu);
            for (uint32_t c = 0; c < VF_POOL_CORES && !clash; ++c) {
                const Job &o = e->jobs[c];
                const bool open = o.state == kQueued || o.state == kRunning
                                  || std::find(cores.begin(), cores.begin() + k, c) != cores.begin() + k;
                clash = c != cores[k] && open && conflicts(j, o);
            }
        }
        if (clash) {  // the frames before it in the batch start, then those of its segment end
            start_jobs(e, std::vector<uint32_t>(cores.begin() + started, cores.begin() + k));
            started = k;
            for (uint32_t c = 0; c < VF_POOL_CORES; ++c)
                if (c != cores[k] && e->jobs[c].frame.seg_win == j.frame.seg_win) wait_job(e, c);
        }
        // the knowledge and the timing cache are the loop thread's own (Python answers on this thread)
        std::string bytes;
        j.ahead = e->cfg.run_ahead && !clash && !j.clean.empty() && e->clean.count(j.clean) != 0;
        if (trust && !j.ahead && frame_bytes(j.mem, j.bytes, j.frame, &bytes))
            j.ahead = e->cache[cores[k] >= VF_CNN_CORES].count(bytes) != 0;
    }
    start_jobs(e, std::vector<uint32_t>(cores.begin() + started, cores.end()));
    for (Issued &it : e->batch) {
        if (e->jobs[it.core].ahead) continue;  // its result stays zero: it does not fault
        wait_job(e, it.core);
        it.result = e->jobs[it.core].result;
        it.counters = e->jobs[it.core].counters;
    }
    lk.lock();
    for (Issued &it : e->batch) e->ahead += e->jobs[it.core].ahead;
}

// The retiring frame f gets its job's result; false (e->error set) if it ran ahead and faulted.
bool finish_job(vf_emu_t *e, Flight &f) {
    Job &j = e->jobs[f.core];
    f.result = j.result;
    f.counters = j.counters;
    if (j.ahead && j.result.fault) {
        char msg[400];
        std::snprintf(msg, sizeof(msg),
                      "a frame known to run without a fault faulted: tenant %u request %u entry %u on core %u "
                      "(%u instructions at segment offset %u), fault %u at instruction %u address 0x%x; the loop "
                      "timed it as a clean frame",
                      j.frame.tenant, j.frame.seq, j.frame.entry, f.core, j.frame.n_insns, j.frame.frame_offset,
                      j.result.fault, j.result.fault_insn, j.result.fault_addr);
        e->error = msg;
        return false;
    }
    if (!j.ahead && !j.result.fault && !j.clean.empty()) {
        if (e->clean.size() >= kCleanLimit) e->clean.clear();
        e->clean.insert(std::move(j.clean));
    }
    j.clean.clear();
    j.state = kIdle;
    return true;
}

uint32_t stopped(vf_emu_t *e, std::unique_lock<std::mutex> &lk) {
    lk.unlock();
    drain_jobs(e);
    lk.lock();
    return VF_EMU_STOP;
}

}  // namespace

namespace {
// Out of work, the loop polls for a host write before it sleeps, as the free-running dispatcher polls
// its registers in hardware: a doorbell or an acknowledgement written meanwhile then wakes no thread
// (a wake-up is a futex call and, to a halted vCPU, an interrupt: 17-40 us of the writer's CPU on a
// VM). Bounded by cfg.idle_poll_us, so an idle device sleeps; mu is released while it polls.
void idle_poll(vf_emu_t *e, std::unique_lock<std::mutex> &lk) {
    if (e->cfg.idle_poll_us == 0 || e->dirty || e->stop || !e->running) return;
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(e->cfg.idle_poll_us);
    lk.unlock();
    for (unsigned n = 0; !e->dirty.load(std::memory_order_acquire); ++n)
        if ((n & 63) == 0 && std::chrono::steady_clock::now() >= until) break;
    lk.lock();
}
}  // namespace

uint32_t vf_emu_run(vf_emu_t *e, vf_emu_need_t *need) {
    std::unique_lock<std::mutex> lk(e->mu);
    std::vector<vf_disp_frame_t> issued(VF_POOL_CORES);
    for (;;) {
        if (!e->error.empty()) {  // stays stopped: the dispatcher's `error`
            lk.unlock();
            drain_jobs(e);
            lk.lock();
            std::memset(need, 0, sizeof(*need));
            need->kind = VF_EMU_ERROR;
            std::snprintf(need->message, sizeof(need->message), "%s", e->error.c_str());
            return VF_EMU_ERROR;
        }
        if (!e->batch.empty()) {  // the last advance's frames: start them, then schedule their ends
            if (!e->batch_ran) {
                if (e->cfg.compute) {
                    for (const Issued &it : e->batch)
                        if (!e->buffers[it.core]) {
                            std::memset(need, 0, sizeof(*need));
                            need->kind = VF_EMU_BUFFERS;
                            need->core = it.core;
                            return VF_EMU_BUFFERS;
                        }
                    start_batch(e, lk);
                }
                e->batch_ran = true;
            }
            for (; e->next < e->batch.size(); ++e->next) {
                uint32_t kind = time_frame(e, e->batch[e->next], need);
                if (kind) return kind;
                e->answers.clear();
            }
            e->batch.clear();
            e->next = 0;
            e->batch_ran = false;
            continue;  // the dispatcher iterates until an iteration does nothing
        }
        if (!e->stop && !e->running) {  // stopped with frames in flight: they run to their end, as the cores do
            lk.unlock();
            finish_jobs(e);
            lk.lock();
        }
        while (!e->stop && !e->running) e->wake.wait(lk);
        if (e->stop) return stopped(e, lk);
        e->dirty = false;
        vf_disp_report_t report;
        std::memset(&report, 0, sizeof(report));
        e->regs->g.cycles = e->now;
        uint32_t mask = vf_dispatch_advance(e->regs, e->state, e->mem, e->mem_bytes, issued.data(), &report);
        uint32_t records = report.requests_ok + report.requests_failed + report.requests_aborted;
        e->now += e->cfg.issue_cycles * report.frames_issued + e->cfg.barrier_cycles * report.barriers
                  + e->cfg.completion_cycles * records;
        if (records || report.faults) {
            e->regs->g.cycles = e->now;
            irq_raise(e);
        }
        for (uint32_t c = 0; c < VF_POOL_CORES; ++c)
            if (mask >> c & 1) {
                Issued it;
                std::memset(&it, 0, sizeof(it));
                it.frame = issued[c];
                it.core = c;
                e->batch.push_back(it);
            }
        if (!e->batch.empty()) {
            e->batch_mem = e->mem;
            e->batch_bytes = e->mem_bytes;
            continue;
        }
        if (report.progress) continue;
        if (!e->inflight.empty()) {  // the frame ending next retires, then the dispatcher advances
            if (e->cfg.compute) {
                const uint32_t core = e->inflight[next_out(e)].core;
                if (!job_done(e, core)) {  // it still runs: wait for it (the host may use the registers)
                    lk.unlock();
                    wait_job(e, core);
                    lk.lock();
                }
            }
            Flight f = pop(e);
            if (f.has_result && !finish_job(e, f)) continue;  // reported at the loop's top
            e->regs->g.cycles = e->now;
            vf_dispatch_retire(e->regs, e->state, f.core, f.has_result ? &f.result : nullptr,
                               f.has_result ? &f.counters : nullptr, nullptr);
            continue;
        }
        if (e->regs->g.irq) irq_raise(e);
        idle_poll(e, lk);
        while (!e->dirty && !e->stop && e->running) e->wake.wait(lk);
    }
}
