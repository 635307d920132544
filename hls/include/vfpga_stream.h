/*
 * vf_stream<T, DEPTH>: the FIFO channel between the processes of the
 * dispatcher top (C++ only). Under synthesis it is Vitis HLS's hls::stream
 * with that depth (the vendor header comes with the tool; nothing of it is
 * copied here). Everywhere else it is this small project-owned shim with the
 * same calls the top uses -- empty, full, read_nb, write_nb, read, write --
 * so the C-simulation runs the same code. A blocking read of an empty shim
 * or a blocking write to a full one is a deadlock in the C-simulation of a
 * process that runs one iteration per call: the shim stops the program
 * (hls::stream's C-simulation warns and returns garbage instead).
 */
#ifndef VFPGA_STREAM_H
#define VFPGA_STREAM_H

#ifdef __SYNTHESIS__
#include <hls_stream.h>

template <class T, int DEPTH>
using vf_stream = hls::stream<T, DEPTH>;

#else
#include <stdio.h>
#include <stdlib.h>

template <class T, int DEPTH>
class vf_stream {
    static_assert(DEPTH >= 1, "a stream holds at least one element");

public:
    vf_stream() : head_(0), count_(0) {}

    bool empty() const { return count_ == 0; }
    bool full() const { return count_ == DEPTH; }
    unsigned size() const { return count_; }

    bool read_nb(T &v)
    {
        if (count_ == 0)
            return false;
        v = items_[head_];
        head_ = (head_ + 1) % DEPTH;
        --count_;
        return true;
    }

    bool write_nb(const T &v)
    {
        if (count_ == DEPTH)
            return false;
        items_[(head_ + count_) % DEPTH] = v;
        ++count_;
        return true;
    }

    T read()
    {
        T v;
        if (!read_nb(v))
            stall("read of an empty");
        return v;
    }

    void write(const T &v)
    {
        if (!write_nb(v))
            stall("write to a full");
    }

    /* C-simulation only: empties the shim, so that a caller can reuse one
     * (the unit scheduler's per-thread streams, a step after a fault). */
    void clear()
    {
        head_ = 0;
        count_ = 0;
    }

private:
    static void stall(const char *what)
    {
        fprintf(stderr, "vf_stream: blocking %s stream in the C-simulation (a process would wait forever)\n", what);
        abort();
    }

    T items_[DEPTH];
    unsigned head_, count_;
};
#endif

#endif /* VFPGA_STREAM_H */
