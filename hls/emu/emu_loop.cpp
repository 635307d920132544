// The emulated dispatcher's event loop in C++ (see vfpga_emu.h). Emulation
// library only: it uses the host's threads and the standard library, and is
// never part of a synthesized top.
//
// It is the loop driver/emulated_dispatcher.py runs in Python (kept there as
// the reference, loop="python"), step for step: the same register stamps of
// the clock, the same frame order, and the timeline rules of
// runtime/hw/timeline.py (PoolTimeline.issue / pop) with the in-flight frames
// kept in the same binary-heap order as Python's heapq, so the bank load
// (a float sum over that order) is the same number.

#include "vfpga_emu.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

const size_t kCacheLimit = 1u << 16;  // instruction byte strings whose timings are kept

struct Flight {
    uint64_t end;
    uint64_t order;
    uint32_t core;
    uint32_t has_result;  // 0 on the timing-only board (retired with NULL result and counters)
    vf_core_state_t result;
    vf_core_counters_t counters;
    uint32_t bank;
    double demand;
};

bool before(const Flight &a, const Flight &b) { return a.end < b.end || (a.end == b.end && a.order < b.order); }

// Python's heapq (_siftdown / _siftup), so that the array order matches.
void sift_down(std::vector<Flight> &h, size_t start, size_t pos) {
    Flight item = h[pos];
    while (pos > start) {
        size_t parent = (pos - 1) >> 1;
        if (before(item, h[parent])) {
            h[pos] = h[parent];
            pos = parent;
            continue;
        }
        break;
    }
    h[pos] = item;
}

void sift_up(std::vector<Flight> &h, size_t pos) {
    size_t end = h.size(), start = pos, child = 2 * pos + 1;
    Flight item = h[pos];
    while (child < end) {
        size_t right = child + 1;
        if (right < end && !before(h[child], h[right])) child = right;
        h[pos] = h[child];
        pos = child;
        child = 2 * pos + 1;
    }
    h[pos] = item;
    sift_down(h, start, pos);
}

void heap_push(std::vector<Flight> &h, const Flight &f) {
    h.push_back(f);
    sift_down(h, 0, h.size() - 1);
}

Flight heap_pop(std::vector<Flight> &h) {
    Flight last = h.back();
    h.pop_back();
    if (h.empty()) return last;
    Flight top = h[0];
    h[0] = last;
    sift_up(h, 0);
    return top;
}

struct Timing {
    bool have_solo = false;
    uint64_t solo = 0;
    double demand = 0.0;
    std::unordered_map<uint32_t, uint64_t> shared;  // bank load in eighths -> cycles
};

struct Issued {
    vf_disp_frame_t frame;
    uint32_t core;
    vf_core_state_t result;
    vf_core_counters_t counters;
};

}  // namespace

struct vf_emu {
    vf_emu_config_t cfg;
    vf_disp_regs_t *regs;
    vf_disp_state_t *state;

    std::mutex mu;  // registers, state, clock, timeline (the Python loop's device lock)
    std::condition_variable wake;
    bool dirty = false, stop = false, running = false;
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
    std::map<uint32_t, uint64_t> answers;  // this frame's uncached answers: kind << 8 | eighths -> cycles
    uint32_t asked_kind = 0, asked_eighths = 0, asked_rnn = 0;
    std::string asked_key;

    // frames issued together run on these threads and the loop's own
    std::vector<std::thread> workers;
    std::mutex pool_mu;
    std::condition_variable pool_cv, done_cv;
    uint64_t gen = 0;
    size_t pool_next = 0, pool_n = 0, pool_pending = 0;
    bool pool_stop = false;
};

namespace {

void irq_raise(vf_emu_t *e) {
    {
        std::lock_guard<std::mutex> l(e->irq_mu);
        e->irq_events++;
    }
    e->irq_cv.notify_all();
}

void run_one(vf_emu_t *e, Issued &it) {
    std::memset(&it.result, 0, sizeof(it.result));
    std::memset(&it.counters, 0, sizeof(it.counters));
    void *buf = e->buffers[it.core];
    if (it.core < VF_CNN_CORES)
        vf_dispatch_run_frame(e->batch_mem, e->batch_bytes, &it.frame, (vf_cnn_buffers_t *)buf, &it.result,
                              &it.counters, nullptr);
    else
        vf_dispatch_run_rnn_frame(e->batch_mem, e->batch_bytes, &it.frame, (vf_rnn_buffers_t *)buf, &it.result,
                                  &it.counters, nullptr);
}

void work(vf_emu_t *e) {
    for (;;) {
        size_t i;
        {
            std::lock_guard<std::mutex> l(e->pool_mu);
            if (e->pool_next >= e->pool_n) return;
            i = e->pool_next++;
        }
        run_one(e, e->batch[i]);
        std::lock_guard<std::mutex> l(e->pool_mu);
        if (--e->pool_pending == 0) e->done_cv.notify_all();
    }
}

void worker(vf_emu_t *e) {
    uint64_t seen = 0;
    for (;;) {
        {
            std::unique_lock<std::mutex> l(e->pool_mu);
            e->pool_cv.wait(l, [&] { return e->pool_stop || e->gen != seen; });
            if (e->pool_stop) return;
            seen = e->gen;
        }
        work(e);
    }
}

// Runs the batch's frames, several at once when there are several (the loop's mutex is not held).
void run_batch(vf_emu_t *e) {
    size_t n = e->batch.size();
    if (n == 1 || e->cfg.threads <= 1) {
        for (auto &it : e->batch) run_one(e, it);
        return;
    }
    if (e->workers.empty())
        for (uint32_t t = 1; t < e->cfg.threads; ++t) e->workers.emplace_back(worker, e);
    {
        std::lock_guard<std::mutex> l(e->pool_mu);
        e->pool_next = 0;
        e->pool_n = e->pool_pending = n;
        e->gen++;
    }
    e->pool_cv.notify_all();
    work(e);
    std::unique_lock<std::mutex> l(e->pool_mu);
    e->done_cv.wait(l, [&] { return e->pool_pending == 0; });
    e->pool_n = 0;  // a late worker finds nothing to take
}

uint32_t ask(vf_emu_t *e, vf_emu_need_t *need, uint32_t kind, const Issued &it, uint32_t rnn, uint32_t eighths) {
    std::memset(need, 0, sizeof(*need));
    need->kind = kind;
    need->core = it.core;
    need->rnn = rnn;
    need->eighths = eighths;
    need->mem = e->batch_mem;
    need->mem_bytes = e->batch_bytes;
    need->frame = it.frame;
    need->result = it.result;
    need->counters = it.counters;
    e->asked_kind = kind;
    e->asked_eighths = eighths;
    e->asked_rnn = rnn;
    return kind;
}

bool answered(vf_emu_t *e, uint32_t kind, uint32_t eighths, uint64_t *cycles) {
    auto a = e->answers.find(kind << 8 | eighths);
    if (a == e->answers.end()) return false;
    *cycles = a->second;
    return true;
}

// PoolTimeline.issue for batch frame it; 0 when scheduled, else the question for Python.
uint32_t time_frame(vf_emu_t *e, const Issued &it, vf_emu_need_t *need) {
    const vf_disp_frame_t &f = it.frame;
    uint32_t rnn = it.core >= VF_CNN_CORES;
    uint64_t b = f.seg_win / e->cfg.bank_stride;
    uint32_t bank = (uint32_t)std::min<uint64_t>(b, e->cfg.n_banks - 1);
    uint64_t cycles, solo;
    double demand = 0.0;
    if (e->cfg.compute && it.result.fault) {
        if (!answered(e, VF_EMU_FAULTED, 0, &solo)) return ask(e, need, VF_EMU_FAULTED, it, rnn, 0);
        cycles = solo;
    } else {
        uint64_t n = f.n_insns, start = f.seg_win + f.frame_offset;
        bool inside = n > 0 && start + n * VF_INSN_BYTES <= e->batch_bytes;
        Timing *t = nullptr;
        std::string key;
        if (inside) {
            key.assign((const char *)e->batch_mem + start, n * VF_INSN_BYTES);
            auto found = e->cache[rnn].find(key);
            if (found == e->cache[rnn].end() || !found->second.have_solo) {
                e->asked_key = key;
                return ask(e, need, VF_EMU_SOLO, it, rnn, 8);
            }
            t = &found->second;
            solo = t->solo;
            demand = t->demand;
        } else if (!answered(e, VF_EMU_UNTIMED, 8, &solo)) {
            return ask(e, need, VF_EMU_UNTIMED, it, rnn, 8);
        }
        double sum = 0.0;  // Python's sum() over the heap array, then demand + it
        for (const Flight &g : e->inflight)
            if (g.bank == bank) sum += g.demand;
        double load = demand + sum;
        cycles = solo;
        if (load > 1.0) {
            uint32_t eighths = (uint32_t)std::ceil(load * 8);
            if (t) {
                auto s = t->shared.find(eighths);
                if (s == t->shared.end()) {
                    e->asked_key = key;
                    return ask(e, need, VF_EMU_SHARED, it, rnn, eighths);
                }
                cycles = s->second;
            } else if (!answered(e, VF_EMU_UNTIMED, eighths, &cycles)) {
                return ask(e, need, VF_EMU_UNTIMED, it, rnn, eighths);
            }
        }
    }
    if (f.scrub && e->cfg.charge_scrubs) {
        uint64_t scrub = rnn ? e->cfg.rnn_scrub_cycles : e->cfg.scrub_cycles;
        cycles += scrub;
        solo += scrub;
    }
    e->cfg.core_busy_cycles[it.core] += (int64_t)cycles;
    e->cfg.tenant_frame_cycles[f.tenant] += (int64_t)cycles;
    e->cfg.tenant_solo_cycles[f.tenant] += (int64_t)solo;
    e->frames++;
    e->order++;
    Flight fl;
    fl.end = e->now + cycles;
    fl.order = e->order;
    fl.core = it.core;
    fl.has_result = e->cfg.compute;
    fl.result = it.result;
    fl.counters = it.counters;
    fl.bank = bank;
    fl.demand = demand;
    heap_push(e->inflight, fl);
    return 0;
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
    return e;
}

void vf_emu_free(vf_emu_t *e) {
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

void vf_emu_put_solo(vf_emu_t *e, uint64_t cycles, double demand) {
    std::lock_guard<std::mutex> l(e->mu);
    Timing &t = cached(e);
    t.have_solo = true;
    t.solo = cycles;
    t.demand = demand;
}

void vf_emu_put_cycles(vf_emu_t *e, uint64_t cycles) {
    std::lock_guard<std::mutex> l(e->mu);
    if (e->asked_kind == VF_EMU_SHARED)
        cached(e).shared[e->asked_eighths] = cycles;
    else
        e->answers[e->asked_kind << 8 | e->asked_eighths] = cycles;
}

uint32_t vf_emu_run(vf_emu_t *e, vf_emu_need_t *need) {
    std::unique_lock<std::mutex> lk(e->mu);
    std::vector<vf_disp_frame_t> issued(VF_POOL_CORES);
    for (;;) {
        if (!e->batch.empty()) {  // the last advance's frames: run them, then schedule their ends
            if (!e->batch_ran) {
                if (e->cfg.compute) {
                    for (const Issued &it : e->batch)
                        if (!e->buffers[it.core]) {
                            std::memset(need, 0, sizeof(*need));
                            need->kind = VF_EMU_BUFFERS;
                            need->core = it.core;
                            return VF_EMU_BUFFERS;
                        }
                    lk.unlock();
                    run_batch(e);
                    lk.lock();
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
        while (!e->stop && !e->running) e->wake.wait(lk);
        if (e->stop) return VF_EMU_STOP;
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
            Flight f = heap_pop(e->inflight);
            e->now = std::max(e->now, f.end);
            e->regs->g.cycles = e->now;
            vf_dispatch_retire(e->regs, e->state, f.core, f.has_result ? &f.result : nullptr,
                               f.has_result ? &f.counters : nullptr, nullptr);
            continue;
        }
        if (e->regs->g.irq) irq_raise(e);
        while (!e->dirty && !e->stop && e->running) e->wake.wait(lk);
    }
}

