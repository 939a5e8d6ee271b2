// GroupNorm (+ fused SiLU) over [N, C, *spatial], S = prod(spatial), for contiguous NCHW
// ([N, C, S] in memory) and channels_last ([N, S, C] in memory), float32/float16/bfloat16.
// Three deterministic launches (no atomics; fixed reduction orders), see kernels/launchers.py:
//   gn_stats_nchw_*   grid (chunks, G, N): block (chunk, g, n) reads `chunk_len` consecutive
//                     elements of group (n, g) (a group is one contiguous span of Cg*S in NCHW).
//   gn_stats_nhwc_*   grid (chunks, N): block (chunk, n) reads `rows` whole pixel rows of C
//                     channels (one contiguous span); each thread keeps fixed channels, the
//                     block combines its threads into per-group partials in shared memory.
//     Both write partials[((n*G + g)*chunks + chunk)*3 + {0,1,2}] = (count, mean, M2), float32.
//     Threads accumulate Welford (count, mean, M2) in float32: 4 loads at a time (issued together),
//     their exact two-pass mean/M2, merged into the running triple with Chan's formula.
//   gn_finalize       grid (N*G): block ng merges its chunks (thread t: chunks t, t+B, ..., then a
//                     fixed shared-memory tree) into stats[ng*2] = mean, stats[ng*2+1] =
//                     rstd = 1/sqrt(M2/count + eps) (population variance, as torch).
//   gn_apply_nchw_*   grid (span chunks of S, C, N) / gn_apply_nhwc_* grid (chunks, N):
//                     y = ((x - mean) * rstd) * w + b in float32, rounded to x's dtype (torch's
//                     group_norm output); with silu, y / (1 + exp(-y)) in float32 from that
//                     rounded y (torch's SiLU formula), rounded again. Same layout out as in.
// A GPU reads x twice (stats, apply) and writes y once; every warp access is coalesced.
// __fmul_rn/__fadd_rn forbid FMA contraction, and / and sqrtf are IEEE on both nvcc (default
// -prec-div/-prec-sqrt) and g++, so the host shim computes the very same bits as a GPU except
// for expf (CUDA's is within 2 ulp of float32, glibc's within 1): silu only, rarely visible.
#include "tb_common.cuh"
#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#define TB_F32 0
#define TB_F16 1
#define TB_BF16 2
#define TB_GN_MAXJ 8  // channels_last: at most 8 channels per thread, C <= 8 * TB_BLOCK (launchers.py)

// Loads are split into the raw bits and their conversion, so the 4 loads of a batch are issued
// back to back, before the (branchy) 16-bit conversions of tb_common.cuh need their values.
template <int DT>
__device__ __forceinline__ unsigned int tb_gn_bits(const void* x, long long i) {
    if (DT == TB_F32) return ((const unsigned int*)x)[i];
    return ((const unsigned short*)x)[i];
}

// On the GPU the 16-bit conversions are the hardware's (one instruction each; IEEE round to
// nearest even, so the same bits as tb_common.cuh's integer code for every non-NaN value); the
// host shim runs tb_common.cuh's. This kernel is otherwise bound by those conversions.
template <int DT>
__device__ __forceinline__ float tb_gn_float(unsigned int bits) {
    if (DT == TB_F32) return tb_bits_float(bits);
#if defined(__CUDA_ARCH__)
    if (DT == TB_F16) return __half2float(__ushort_as_half((unsigned short)bits));
    return __bfloat162float(__ushort_as_bfloat16((unsigned short)bits));
#else
    if (DT == TB_F16) return tb_half_to_float((unsigned short)bits);
    return tb_bf16_to_float((unsigned short)bits);
#endif
}

template <int DT>
__device__ __forceinline__ unsigned short tb_gn_round(float v) {
#if defined(__CUDA_ARCH__)
    if (DT == TB_F16) return __half_as_ushort(__float2half_rn(v));
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
#else
    if (DT == TB_F16) return tb_float_to_half(v);
    return tb_float_to_bf16(v);
#endif
}

template <int DT>
__device__ __forceinline__ float tb_gn_load(const void* x, long long i) {
    return tb_gn_float<DT>(tb_gn_bits<DT>(x, i));
}

// Round v to the dtype, store it, and return the rounded value as float32.
template <int DT>
__device__ __forceinline__ float tb_gn_store(void* y, long long i, float v) {
    if (DT == TB_F32) {
        ((float*)y)[i] = v;
        return v;
    } else {
        unsigned short h = tb_gn_round<DT>(v);
        ((unsigned short*)y)[i] = h;
        return tb_gn_float<DT>(h);
    }
}

template <int DT>
__device__ __forceinline__ void tb_gn_store_final(void* y, long long i, float v, int silu) {
    float r = tb_gn_store<DT>(y, i, v);
    if (silu) tb_gn_store<DT>(y, i, r / __fadd_rn(1.0f, expf(-r)));
}

__device__ __forceinline__ int tb_gn_mini(int a, int b) { return a < b ? a : b; }

// Welford triple (count, mean, M2); merges use Chan's parallel formula.
struct tb_wf {
    float n, mean, m2;
};

// a <- a (+) (nb, mb, m2b).
__device__ __forceinline__ void tb_wf_merge(tb_wf& a, float nb, float mb, float m2b) {
    if (nb == 0.0f) return;
    if (a.n == 0.0f) {  // exact copy (delta * delta could overflow to inf, and inf * 0 is NaN)
        a.n = nb; a.mean = mb; a.m2 = m2b;
        return;
    }
    const float n = __fadd_rn(a.n, nb);
    const float r = nb / n;
    const float delta = __fadd_rn(mb, -a.mean);
    a.mean = __fadd_rn(a.mean, __fmul_rn(delta, r));
    a.m2 = __fadd_rn(__fadd_rn(a.m2, m2b), __fmul_rn(__fmul_rn(delta, delta), __fmul_rn(a.n, r)));
    a.n = n;
}

// Merge 4 values: their mean and M2 exactly two-pass, then one Chan step (one division per 4).
__device__ __forceinline__ void tb_wf_push4(tb_wf& a, float v0, float v1, float v2, float v3) {
    const float m = __fmul_rn(__fadd_rn(__fadd_rn(v0, v1), __fadd_rn(v2, v3)), 0.25f);
    const float d0 = __fadd_rn(v0, -m), d1 = __fadd_rn(v1, -m), d2 = __fadd_rn(v2, -m), d3 = __fadd_rn(v3, -m);
    const float m2 = __fadd_rn(__fadd_rn(__fmul_rn(d0, d0), __fmul_rn(d1, d1)),
                               __fadd_rn(__fmul_rn(d2, d2), __fmul_rn(d3, d3)));
    tb_wf_merge(a, 4.0f, m, m2);
}

__device__ __forceinline__ void tb_wf_push(tb_wf& a, float v) { tb_wf_merge(a, 1.0f, v, 0.0f); }

__device__ __forceinline__ void tb_gn_write_partial(float* partials, long long slot, const tb_wf& a) {
    partials[slot * 3] = a.n;
    partials[slot * 3 + 1] = a.mean;
    partials[slot * 3 + 2] = a.m2;
}

// ---- stats, NCHW: block (chunk, g, n) over elements [chunk*chunk_len, ...) of group (n, g).
template <int DT>
__device__ void tb_gn_stats_nchw(const void* x, float* partials, int group_len, int chunk_len, int chunks) {
    __shared__ float sn[TB_BLOCK], smean[TB_BLOCK], sm2[TB_BLOCK];
    const int tid = threadIdx.x;
    const long long ng = (long long)blockIdx.z * gridDim.y + blockIdx.y;
    const long long base = ng * group_len;
    const int start = blockIdx.x * chunk_len;
    const int end = tb_gn_mini(group_len, start + chunk_len);
    tb_wf a = {0.0f, 0.0f, 0.0f};
    int i = start + tid;
    for (; i + 3 * TB_BLOCK < end; i += 4 * TB_BLOCK) {
        const long long at = base + i;
        const unsigned int u0 = tb_gn_bits<DT>(x, at), u1 = tb_gn_bits<DT>(x, at + TB_BLOCK);
        const unsigned int u2 = tb_gn_bits<DT>(x, at + 2 * TB_BLOCK), u3 = tb_gn_bits<DT>(x, at + 3 * TB_BLOCK);
        const float v0 = tb_gn_float<DT>(u0), v1 = tb_gn_float<DT>(u1);
        const float v2 = tb_gn_float<DT>(u2), v3 = tb_gn_float<DT>(u3);
        tb_wf_push4(a, v0, v1, v2, v3);
    }
    for (; i < end; i += TB_BLOCK) tb_wf_push(a, tb_gn_load<DT>(x, base + i));
    sn[tid] = a.n; smean[tid] = a.mean; sm2[tid] = a.m2;
    __syncthreads();
    for (int s = TB_BLOCK / 2; s > 0; s >>= 1) {
        if (tid < s) {
            tb_wf m = {sn[tid], smean[tid], sm2[tid]};
            tb_wf_merge(m, sn[tid + s], smean[tid + s], sm2[tid + s]);
            sn[tid] = m.n; smean[tid] = m.mean; sm2[tid] = m.m2;
        }
        __syncthreads();
    }
    if (tid == 0) {
        const tb_wf m = {sn[0], smean[0], sm2[0]};
        tb_gn_write_partial(partials, ng * chunks + blockIdx.x, m);
    }
}

// Channels_last thread layout, shared by stats and apply: with C <= TB_BLOCK, P = TB_BLOCK / C
// pixel rows per step and thread t < P*C owns channel t % C of row offset t / C (threads
// >= P*C idle); with C > TB_BLOCK, P = 1 and thread t owns channels t, t + TB_BLOCK, ... < C.
struct tb_gn_cl {
    int cw, p, row0, active;
};

__device__ __forceinline__ tb_gn_cl tb_gn_cl_layout(int channels) {
    tb_gn_cl l;
    l.cw = channels < TB_BLOCK ? channels : TB_BLOCK;
    l.p = channels < TB_BLOCK ? TB_BLOCK / channels : 1;
    l.row0 = threadIdx.x / l.cw;
    l.active = l.row0 < l.p;
    return l;
}

// ---- stats, channels_last: block (chunk, n) over pixel rows [chunk*rows, ...) of image n.
// Channel by channel of the thread (j outermost) so one accumulator and 4 loads are live.
template <int DT>
__device__ void tb_gn_stats_nhwc(const void* x, float* partials, int channels, int spatial, int groups,
                                 int rows, int chunks) {
    __shared__ float sn[TB_GN_MAXJ * TB_BLOCK], smean[TB_GN_MAXJ * TB_BLOCK], sm2[TB_GN_MAXJ * TB_BLOCK];
    const int tid = threadIdx.x;
    const int n = blockIdx.y;
    const tb_gn_cl l = tb_gn_cl_layout(channels);
    const int c0 = tid % l.cw;
    const int r_begin = blockIdx.x * rows;
    const int r_end = tb_gn_mini(spatial, r_begin + rows);
    const long long img = (long long)n * spatial * channels;
    const long long step = (long long)l.p * channels;
    // Slot of (channel c, row offset q): (c / TB_BLOCK) * TB_BLOCK + q * cw + c % TB_BLOCK, i.e.
    // j * TB_BLOCK + tid for the thread's j-th channel; slots no thread owns are never read.
    for (int j = 0; j * TB_BLOCK < channels; ++j) {
        const int c = c0 + j * TB_BLOCK;
        tb_wf a = {0.0f, 0.0f, 0.0f};
        if (l.active && c < channels) {
            int r = r_begin + l.row0;
            for (; r + 3 * l.p < r_end; r += 4 * l.p) {
                const long long at = img + (long long)r * channels + c;
                const unsigned int u0 = tb_gn_bits<DT>(x, at), u1 = tb_gn_bits<DT>(x, at + step);
                const unsigned int u2 = tb_gn_bits<DT>(x, at + 2 * step), u3 = tb_gn_bits<DT>(x, at + 3 * step);
                const float v0 = tb_gn_float<DT>(u0), v1 = tb_gn_float<DT>(u1);
                const float v2 = tb_gn_float<DT>(u2), v3 = tb_gn_float<DT>(u3);
                tb_wf_push4(a, v0, v1, v2, v3);
            }
            for (; r < r_end; r += l.p) tb_wf_push(a, tb_gn_load<DT>(x, img + (long long)r * channels + c));
        }
        sn[j * TB_BLOCK + tid] = a.n;
        smean[j * TB_BLOCK + tid] = a.mean;
        sm2[j * TB_BLOCK + tid] = a.m2;
    }
    __syncthreads();
    const int cg = channels / groups;
    for (int g = tid; g < groups; g += TB_BLOCK) {  // fixed order: row offsets, then channels
        tb_wf m = {0.0f, 0.0f, 0.0f};
        for (int q = 0; q < l.p; ++q) {
            for (int c = g * cg; c < (g + 1) * cg; ++c) {
                const int s = (c / TB_BLOCK) * TB_BLOCK + q * l.cw + c % TB_BLOCK;
                tb_wf_merge(m, sn[s], smean[s], sm2[s]);
            }
        }
        tb_gn_write_partial(partials, ((long long)n * groups + g) * chunks + blockIdx.x, m);
    }
}

// ---- finalize: block ng merges partials[ng*chunks .. +chunks) -> stats[ng*2] = (mean, rstd).
__device__ void tb_gn_finalize(const float* partials, float* stats, int chunks, float eps) {
    __shared__ float sn[TB_BLOCK], smean[TB_BLOCK], sm2[TB_BLOCK];
    const int tid = threadIdx.x;
    const long long ng = blockIdx.x;
    const float* p = partials + ng * chunks * 3;
    tb_wf a = {0.0f, 0.0f, 0.0f};
    for (int k = tid; k < chunks; k += TB_BLOCK) tb_wf_merge(a, p[k * 3], p[k * 3 + 1], p[k * 3 + 2]);
    sn[tid] = a.n; smean[tid] = a.mean; sm2[tid] = a.m2;
    __syncthreads();
    for (int s = TB_BLOCK / 2; s > 0; s >>= 1) {
        if (tid < s) {
            tb_wf m = {sn[tid], smean[tid], sm2[tid]};
            tb_wf_merge(m, sn[tid + s], smean[tid + s], sm2[tid + s]);
            sn[tid] = m.n; smean[tid] = m.mean; sm2[tid] = m.m2;
        }
        __syncthreads();
    }
    if (tid == 0) {
        float var = sm2[0] / sn[0];
        var = var > 0.0f ? var : 0.0f;
        stats[ng * 2] = smean[0];
        stats[ng * 2 + 1] = 1.0f / sqrtf(__fadd_rn(var, eps));
    }
}

__device__ __forceinline__ float tb_gn_affine(float v, float mean, float rstd, float w, float b) {
    return __fadd_rn(__fmul_rn(__fmul_rn(__fadd_rn(v, -mean), rstd), w), b);
}

template <int DT>
__device__ __forceinline__ float tb_gn_param(const void* p, int c, float absent) {
    return p ? tb_gn_load<DT>(p, c) : absent;
}

// ---- apply, NCHW: block (span chunk, c, n) over y[n, c, chunk*span ...) with per-block constants.
template <int DT>
__device__ void tb_gn_apply_nchw(const void* x, void* y, const void* w, const void* b, const float* stats,
                                 int spatial, int groups, int span, int silu) {
    const int c = blockIdx.y, channels = gridDim.y;
    const long long nc = (long long)blockIdx.z * channels + c;
    const long long ng = (long long)blockIdx.z * groups + c / (channels / groups);
    const float mean = stats[ng * 2], rstd = stats[ng * 2 + 1];
    const float wc = tb_gn_param<DT>(w, c, 1.0f), bc = tb_gn_param<DT>(b, c, 0.0f);
    const long long base = nc * spatial;
    const int start = blockIdx.x * span;
    const int end = tb_gn_mini(spatial, start + span);
    int i = start + threadIdx.x;
    for (; i + 3 * TB_BLOCK < end; i += 4 * TB_BLOCK) {
        const long long at = base + i;
        const unsigned int u0 = tb_gn_bits<DT>(x, at), u1 = tb_gn_bits<DT>(x, at + TB_BLOCK);
        const unsigned int u2 = tb_gn_bits<DT>(x, at + 2 * TB_BLOCK), u3 = tb_gn_bits<DT>(x, at + 3 * TB_BLOCK);
        const float v0 = tb_gn_float<DT>(u0), v1 = tb_gn_float<DT>(u1);
        const float v2 = tb_gn_float<DT>(u2), v3 = tb_gn_float<DT>(u3);
        tb_gn_store_final<DT>(y, at, tb_gn_affine(v0, mean, rstd, wc, bc), silu);
        tb_gn_store_final<DT>(y, at + TB_BLOCK, tb_gn_affine(v1, mean, rstd, wc, bc), silu);
        tb_gn_store_final<DT>(y, at + 2 * TB_BLOCK, tb_gn_affine(v2, mean, rstd, wc, bc), silu);
        tb_gn_store_final<DT>(y, at + 3 * TB_BLOCK, tb_gn_affine(v3, mean, rstd, wc, bc), silu);
    }
    for (; i < end; i += TB_BLOCK)
        tb_gn_store_final<DT>(y, base + i, tb_gn_affine(tb_gn_load<DT>(x, base + i), mean, rstd, wc, bc), silu);
}

// ---- apply, channels_last: block (chunk, n) over pixel rows [chunk*rows, ...), the thread
// layout of tb_gn_cl_layout, channel by channel of the thread with its constants in registers.
template <int DT>
__device__ void tb_gn_apply_nhwc(const void* x, void* y, const void* w, const void* b, const float* stats,
                                 int channels, int spatial, int groups, int rows, int silu) {
    const int n = blockIdx.y;
    const tb_gn_cl l = tb_gn_cl_layout(channels);
    if (!l.active) return;  // no barrier in this kernel
    const int c0 = threadIdx.x % l.cw;
    const int cg = channels / groups;
    const int r_begin = blockIdx.x * rows;
    const int r_end = tb_gn_mini(spatial, r_begin + rows);
    const long long img = (long long)n * spatial * channels;
    const long long step = (long long)l.p * channels;
    for (int c = c0; c < channels; c += TB_BLOCK) {
        const long long ng = (long long)n * groups + c / cg;
        const float mean = stats[ng * 2], rstd = stats[ng * 2 + 1];
        const float wc = tb_gn_param<DT>(w, c, 1.0f), bc = tb_gn_param<DT>(b, c, 0.0f);
        int r = r_begin + l.row0;
        for (; r + 3 * l.p < r_end; r += 4 * l.p) {
            const long long at = img + (long long)r * channels + c;
            const unsigned int u0 = tb_gn_bits<DT>(x, at), u1 = tb_gn_bits<DT>(x, at + step);
            const unsigned int u2 = tb_gn_bits<DT>(x, at + 2 * step), u3 = tb_gn_bits<DT>(x, at + 3 * step);
            const float v0 = tb_gn_float<DT>(u0), v1 = tb_gn_float<DT>(u1);
            const float v2 = tb_gn_float<DT>(u2), v3 = tb_gn_float<DT>(u3);
            tb_gn_store_final<DT>(y, at, tb_gn_affine(v0, mean, rstd, wc, bc), silu);
            tb_gn_store_final<DT>(y, at + step, tb_gn_affine(v1, mean, rstd, wc, bc), silu);
            tb_gn_store_final<DT>(y, at + 2 * step, tb_gn_affine(v2, mean, rstd, wc, bc), silu);
            tb_gn_store_final<DT>(y, at + 3 * step, tb_gn_affine(v3, mean, rstd, wc, bc), silu);
        }
        for (; r < r_end; r += l.p) {
            const long long at = img + (long long)r * channels + c;
            tb_gn_store_final<DT>(y, at, tb_gn_affine(tb_gn_load<DT>(x, at), mean, rstd, wc, bc), silu);
        }
    }
}

// ---- the kernels (names listed in kernels/build.py KERNELS, in this order)

extern "C" __global__ void gn_stats_nchw_f32(const float* x, float* partials, int group_len, int chunk_len,
                                             int chunks) {
    tb_gn_stats_nchw<TB_F32>(x, partials, group_len, chunk_len, chunks);
}

extern "C" __global__ void gn_stats_nchw_f16(const unsigned short* x, float* partials, int group_len,
                                             int chunk_len, int chunks) {
    tb_gn_stats_nchw<TB_F16>(x, partials, group_len, chunk_len, chunks);
}

extern "C" __global__ void gn_stats_nchw_bf16(const unsigned short* x, float* partials, int group_len,
                                              int chunk_len, int chunks) {
    tb_gn_stats_nchw<TB_BF16>(x, partials, group_len, chunk_len, chunks);
}

extern "C" __global__ void gn_stats_nhwc_f32(const float* x, float* partials, int channels, int spatial,
                                             int groups, int rows, int chunks) {
    tb_gn_stats_nhwc<TB_F32>(x, partials, channels, spatial, groups, rows, chunks);
}

extern "C" __global__ void gn_stats_nhwc_f16(const unsigned short* x, float* partials, int channels,
                                             int spatial, int groups, int rows, int chunks) {
    tb_gn_stats_nhwc<TB_F16>(x, partials, channels, spatial, groups, rows, chunks);
}

extern "C" __global__ void gn_stats_nhwc_bf16(const unsigned short* x, float* partials, int channels,
                                              int spatial, int groups, int rows, int chunks) {
    tb_gn_stats_nhwc<TB_BF16>(x, partials, channels, spatial, groups, rows, chunks);
}

extern "C" __global__ void gn_finalize(const float* partials, float* stats, int chunks, float eps) {
    tb_gn_finalize(partials, stats, chunks, eps);
}

extern "C" __global__ void gn_apply_nchw_f32(const float* x, float* y, const float* w, const float* b,
                                             const float* stats, int spatial, int groups, int span,
                                             int silu) {
    tb_gn_apply_nchw<TB_F32>(x, y, w, b, stats, spatial, groups, span, silu);
}

extern "C" __global__ void gn_apply_nchw_f16(const unsigned short* x, unsigned short* y,
                                             const unsigned short* w, const unsigned short* b,
                                             const float* stats, int spatial, int groups, int span,
                                             int silu) {
    tb_gn_apply_nchw<TB_F16>(x, y, w, b, stats, spatial, groups, span, silu);
}

extern "C" __global__ void gn_apply_nchw_bf16(const unsigned short* x, unsigned short* y,
                                              const unsigned short* w, const unsigned short* b,
                                              const float* stats, int spatial, int groups, int span,
                                              int silu) {
    tb_gn_apply_nchw<TB_BF16>(x, y, w, b, stats, spatial, groups, span, silu);
}

extern "C" __global__ void gn_apply_nhwc_f32(const float* x, float* y, const float* w, const float* b,
                                             const float* stats, int channels, int spatial, int groups,
                                             int rows, int silu) {
    tb_gn_apply_nhwc<TB_F32>(x, y, w, b, stats, channels, spatial, groups, rows, silu);
}

extern "C" __global__ void gn_apply_nhwc_f16(const unsigned short* x, unsigned short* y,
                                             const unsigned short* w, const unsigned short* b,
                                             const float* stats, int channels, int spatial, int groups,
                                             int rows, int silu) {
    tb_gn_apply_nhwc<TB_F16>(x, y, w, b, stats, channels, spatial, groups, rows, silu);
}

extern "C" __global__ void gn_apply_nhwc_bf16(const unsigned short* x, unsigned short* y,
                                              const unsigned short* w, const unsigned short* b,
                                              const float* stats, int channels, int spatial, int groups,
                                              int rows, int silu) {
    tb_gn_apply_nhwc<TB_BF16>(x, y, w, b, stats, channels, spatial, groups, rows, silu);
}
