// Host shim: compiles kernels/*.cu with g++ so the CPU tests run the very same CUDA C source
// and compare it with the torch reference (see tests/kernels/shim.py).
//
// Each block runs its threads as ucontext fibers on one OS thread. __syncthreads() switches
// back to the block scheduler, which resumes every fiber in turn, so no thread passes a
// barrier before all threads of its block reached it; __shared__ variables become statics,
// shared by the fibers of the block being run (blocks run one after another).
// TB_EXPORT(kernel) defines extern "C" tb_launch_<kernel>(const unsigned dims[6], void** args)
// with cuLaunchKernel's argument convention: args[i] points to the i-th parameter.
#pragma once
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <utility>
#include <vector>

#define TB_HOST_SHIM 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__ __restrict

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
using uint3 = dim3;

inline dim3 gridDim, blockDim, blockIdx, threadIdx;

inline float __uint_as_float(unsigned int b) { float f; std::memcpy(&f, &b, 4); return f; }
inline unsigned int __float_as_uint(float f) { unsigned int b; std::memcpy(&b, &f, 4); return b; }
inline float __fmul_rn(float a, float b) { return a * b; }  // built with -ffp-contract=off
inline float __fadd_rn(float a, float b) { return a + b; }
using std::rintf;

namespace tb_shim {
constexpr size_t kStack = 64 * 1024;
inline ucontext_t scheduler;
inline std::vector<ucontext_t> fibers;
inline std::vector<std::vector<char>> stacks;
inline std::vector<char> finished;
inline std::function<void()> body;
inline unsigned current = 0;

inline void trampoline() {
    body();
    finished[current] = 1;  // uc_link returns to the scheduler
}

inline void run_block(unsigned threads) {
    if (fibers.size() < threads) {
        fibers.resize(threads);
        stacks.resize(threads);
        for (auto& s : stacks) s.resize(kStack);
    }
    finished.assign(threads, 0);
    for (unsigned t = 0; t < threads; ++t) {
        getcontext(&fibers[t]);
        fibers[t].uc_stack.ss_sp = stacks[t].data();
        fibers[t].uc_stack.ss_size = kStack;
        fibers[t].uc_link = &scheduler;
        makecontext(&fibers[t], trampoline, 0);
    }
    unsigned alive = threads;
    while (alive) {
        for (unsigned t = 0; t < threads; ++t) {
            if (finished[t]) continue;
            current = t;
            threadIdx.x = t % blockDim.x;
            threadIdx.y = (t / blockDim.x) % blockDim.y;
            threadIdx.z = t / (blockDim.x * blockDim.y);
            swapcontext(&scheduler, &fibers[t]);
            if (finished[t]) alive -= 1;
        }
    }
}
}  // namespace tb_shim

inline void __syncthreads() { swapcontext(&tb_shim::fibers[tb_shim::current], &tb_shim::scheduler); }

template <class... P, size_t... I>
void tb_launch_impl(void (*kernel)(P...), void** args, std::index_sequence<I...>) {
    tb_shim::body = [=] { kernel(*static_cast<P*>(args[I])...); };
    const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
    for (unsigned z = 0; z < gridDim.z; ++z)
        for (unsigned y = 0; y < gridDim.y; ++y)
            for (unsigned x = 0; x < gridDim.x; ++x) {
                blockIdx.x = x; blockIdx.y = y; blockIdx.z = z;
                tb_shim::run_block(threads);
            }
}

template <class... P>
void tb_launch(void (*kernel)(P...), const unsigned* dims, void** args) {
    gridDim.x = dims[0]; gridDim.y = dims[1]; gridDim.z = dims[2];
    blockDim.x = dims[3]; blockDim.y = dims[4]; blockDim.z = dims[5];
    tb_launch_impl(kernel, args, std::index_sequence_for<P...>{});
}

#define TB_EXPORT(kernel) \
    extern "C" void tb_launch_##kernel(const unsigned* dims, void** args) { tb_launch(kernel, dims, args); }
