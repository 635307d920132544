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

#include "vfpga_emu.h"
#include "vfpga_ddr.h"

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
    std::map<uint32_t, uint64_t> answers;  // this frame's uncached answers: kind -> cycles
    uint32_t asked_kind = 0, asked_rnn = 0;
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

// PoolTimeline._bytes: the frame's instructions (through the stripe mapping
// when its segment is striped), false when any of them is outside memory. The
// striped flag leads the key: the same instructions demand a striped
// segment's banks together, or one bank.
bool frame_bytes(const vf_emu_t *e, const vf_disp_frame_t &f, std::string *key) {
    const uint64_t n = (uint64_t)f.n_insns * VF_INSN_BYTES;
    if (n == 0) return false;
    const vf_ddr_t d = vf_ddr_for(vf_ddr_window(e->batch_mem, e->batch_bytes), f.striped);
    key->assign(1, f.striped ? '\1' : '\0');
    for (uint64_t k = 0; k < n;) {  // one run per bus word of a striped segment, else one
        const uint64_t m = d.striped ? vf_ddr_min(VF_DDR_WORD - (f.frame_offset + k) % VF_DDR_WORD, n - k) : n;
        const uint64_t at = vf_seg_window(d, f.seg_win, f.frame_offset + k);
        if (at + m > e->batch_bytes) return false;
        key->append((const char *)e->batch_mem + at, m);
        k += m;
    }
    return true;
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
        if (frame_bytes(e, f, &key)) {
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

// PoolTimeline.pop: the frame ending first (of equal ends, the one issued first) leaves; its bank is shared anew.
Flight pop(vf_emu_t *e) {
    size_t best = 0;
    for (size_t i = 1; i < e->inflight.size(); ++i) {
        const Flight &a = e->inflight[i], &b = e->inflight[best];
        if (a.end < b.end || (a.end == b.end && a.order < b.order)) best = i;
    }
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
            Flight f = pop(e);
            e->regs->g.cycles = e->now;
            vf_dispatch_retire(e->regs, e->state, f.core, f.has_result ? &f.result : nullptr,
                               f.has_result ? &f.counters : nullptr, nullptr);
            continue;
        }
        if (e->regs->g.irq) irq_raise(e);
        while (!e->dirty && !e->stop && e->running) e->wake.wait(lk);
    }
}

