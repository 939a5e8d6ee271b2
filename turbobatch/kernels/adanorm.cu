// DiT block norm + modulation (+ gated residual), one row (token) of D channels per block:
//
//   with y:    x_new = x + gate * ynorm(y)      ynorm: RMSNorm with weight (Z-Image's attention_norm2 /
//                                               ffn_norm2) or none (FLUX.2); gate absent: 1
//              (fp16 and clip: x_new clipped to +-65504, as Flux2's blocks do)
//   then       h = norm(x_new) * (1 + scale) + shift
//                                               norm: RMSNorm with weight (Z-Image) or LayerNorm without
//                                               affine (FLUX.2); scale, shift optional; norm absent: no h
//   without y: h = norm(x) * (1 + scale) + shift
//
// Every value is rounded to x's dtype exactly where diffusers' torch code rounds it (reference.py,
// ``modulated_norm`` and ``gated_residual``, spells each step out), all arithmetic in float32. So the
// kernel and diffusers differ only in how the row's float32 sum of squares (and mean) is reduced:
// a fixed tree here, torch's own order there; that moves rstd by an ulp of float32 or two, which
// flips a rounding to the dtype now and then (tests/unit/kernels/test_adanorm_cu.py states the bound).
//
// Layout: x, y, x_out, h_out are contiguous [rows, D]; weights [D]; gate/scale/shift are [M, D] with
// their own row stride (chunks of one modulation tensor, no copy), row r using modulation row
// r / rows_per_mod. One block of TB_BLOCK threads per row; thread t keeps channels t + j * TB_BLOCK
// (j < TB_AN_MAXJ) in registers, so D <= TB_AN_MAXJ * TB_BLOCK (launchers.py checks). Reductions are
// one shared-memory tree, the same on the GPU and in the host shim, so both give the same bits.
#include "tb_common.cuh"
#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#define TB_AN_F32 0
#define TB_AN_F16 1
#define TB_AN_BF16 2
#if defined(__CUDACC__)
#define TB_AN_UNROLL _Pragma("unroll")  // the v[] arrays stay in registers only when fully unrolled
#else
#define TB_AN_UNROLL
#endif
#define TB_AN_MAXJ 16  // channels per thread: D <= 16 * 256 = 4096 (Z-Image 3840, FLUX.2 klein 4B 3072)

// dtype helpers as in groupnorm.cu: the hardware's conversions on the GPU, tb_common.cuh's on the host
// (the same bits for every non-NaN value).
template <int DT>
__device__ __forceinline__ float tb_an_load(const void* p, long long i) {
    if (DT == TB_AN_F32) return ((const float*)p)[i];
    const unsigned short b = ((const unsigned short*)p)[i];
#if defined(__CUDA_ARCH__)
    if (DT == TB_AN_F16) return __half2float(__ushort_as_half(b));
    return __bfloat162float(__ushort_as_bfloat16(b));
#else
    if (DT == TB_AN_F16) return tb_half_to_float(b);
    return tb_bf16_to_float(b);
#endif
}

// v rounded to the dtype, as float32 (the identity for float32).
template <int DT>
__device__ __forceinline__ float tb_an_round(float v) {
    if (DT == TB_AN_F32) return v;
#if defined(__CUDA_ARCH__)
    if (DT == TB_AN_F16) return __half2float(__float2half_rn(v));
    return __bfloat162float(__float2bfloat16_rn(v));
#else
    if (DT == TB_AN_F16) return tb_half_to_float(tb_float_to_half(v));
    return tb_bf16_to_float(tb_float_to_bf16(v));
#endif
}

// Store v, already rounded to the dtype (so the conversion is exact).
template <int DT>
__device__ __forceinline__ void tb_an_store(void* p, long long i, float v) {
    if (DT == TB_AN_F32) {
        ((float*)p)[i] = v;
        return;
    }
#if defined(__CUDA_ARCH__)
    if (DT == TB_AN_F16) ((unsigned short*)p)[i] = __half_as_ushort(__float2half_rn(v));
    else ((unsigned short*)p)[i] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
#else
    ((unsigned short*)p)[i] = DT == TB_AN_F16 ? tb_float_to_half(v) : tb_float_to_bf16(v);
#endif
}

// Sum of v over the block: a fixed shared-memory tree (every thread gets the total).
__device__ __forceinline__ float tb_an_block_sum(float v, float* s) {
    const int tid = threadIdx.x;
    s[tid] = v;
    __syncthreads();
    for (int k = TB_BLOCK / 2; k > 0; k >>= 1) {
        if (tid < k) s[tid] = __fadd_rn(s[tid], s[tid + k]);
        __syncthreads();
    }
    const float total = s[0];
    __syncthreads();  // s is reused by the next reduction
    return total;
}

// torch's RMSNorm (diffusers.models.normalization.RMSNorm): rsqrt(mean(x^2) + eps), mean in float32.
__device__ __forceinline__ float tb_an_rstd(float sumsq, int dim, float eps) {
    return 1.0f / sqrtf(__fadd_rn(sumsq / (float)dim, eps));
}

template <int DT>
__device__ void tb_adanorm(const void* x, const void* y, const void* gate, long long gate_stride, const void* y_w,
                           const void* w, const void* scale, long long scale_stride, const void* shift,
                           long long shift_stride, void* x_out, void* h_out, int dim, int rows_per_mod,
                           float y_eps, float eps, int y_norm, int norm, int clip) {
    __shared__ float s[TB_BLOCK];
    const int tid = threadIdx.x;
    const long long row = blockIdx.x;
    const long long base = row * dim;
    const long long mod = row / rows_per_mod;
    float v[TB_AN_MAXJ];
TB_AN_UNROLL
    for (int j = 0; j < TB_AN_MAXJ; ++j) {
        const int c = tid + j * TB_BLOCK;
        v[j] = c < dim ? tb_an_load<DT>(x, base + c) : 0.0f;
    }
    if (y) {
        float yv[TB_AN_MAXJ];
        float ss = 0.0f;
TB_AN_UNROLL
        for (int j = 0; j < TB_AN_MAXJ; ++j) {
            const int c = tid + j * TB_BLOCK;
            yv[j] = c < dim ? tb_an_load<DT>(y, base + c) : 0.0f;
            ss = __fadd_rn(ss, __fmul_rn(yv[j], yv[j]));
        }
        const float ry = y_norm ? tb_an_rstd(tb_an_block_sum(ss, s), dim, y_eps) : 1.0f;
TB_AN_UNROLL
        for (int j = 0; j < TB_AN_MAXJ; ++j) {
            const int c = tid + j * TB_BLOCK;
            if (c >= dim) continue;
            float t = yv[j];
            if (y_norm) {  // RMSNorm: (y * rstd) to the dtype, times the weight (rounded)
                t = tb_an_round<DT>(__fmul_rn(t, ry));
                if (y_w) t = tb_an_round<DT>(__fmul_rn(t, tb_an_load<DT>(y_w, c)));
            }
            if (gate) t = tb_an_round<DT>(__fmul_rn(tb_an_load<DT>(gate, mod * gate_stride + c), t));
            float r = tb_an_round<DT>(__fadd_rn(v[j], t));
            if (clip && DT == TB_AN_F16) r = r > 65504.0f ? 65504.0f : (r < -65504.0f ? -65504.0f : r);  // NaN stays
            tb_an_store<DT>(x_out, base + c, r);
            v[j] = r;
        }
    }
    if (!norm) return;
    float mean = 0.0f, rstd;
    if (norm == 2) {  // LayerNorm without affine: mean, then the centred sum of squares (two passes)
        float sum = 0.0f;
TB_AN_UNROLL
        for (int j = 0; j < TB_AN_MAXJ; ++j) sum = __fadd_rn(sum, v[j]);  // padding is 0
        mean = tb_an_block_sum(sum, s) / (float)dim;
        float m2 = 0.0f;
TB_AN_UNROLL
        for (int j = 0; j < TB_AN_MAXJ; ++j) {
            const float d = tid + j * TB_BLOCK < dim ? __fadd_rn(v[j], -mean) : 0.0f;
            m2 = __fadd_rn(m2, __fmul_rn(d, d));
        }
        rstd = tb_an_rstd(tb_an_block_sum(m2, s), dim, eps);  // population variance, as torch
    } else {
        float ss = 0.0f;
TB_AN_UNROLL
        for (int j = 0; j < TB_AN_MAXJ; ++j) ss = __fadd_rn(ss, __fmul_rn(v[j], v[j]));
        rstd = tb_an_rstd(tb_an_block_sum(ss, s), dim, eps);
    }
TB_AN_UNROLL
    for (int j = 0; j < TB_AN_MAXJ; ++j) {
        const int c = tid + j * TB_BLOCK;
        if (c >= dim) continue;
        float h;
        if (norm == 2) {
            h = tb_an_round<DT>(__fmul_rn(__fadd_rn(v[j], -mean), rstd));
        } else {
            h = tb_an_round<DT>(__fmul_rn(v[j], rstd));
            if (w) h = tb_an_round<DT>(__fmul_rn(h, tb_an_load<DT>(w, c)));
        }
        if (scale) {
            const float sc = tb_an_round<DT>(__fadd_rn(1.0f, tb_an_load<DT>(scale, mod * scale_stride + c)));
            h = tb_an_round<DT>(__fmul_rn(h, sc));
        }
        if (shift) h = tb_an_round<DT>(__fadd_rn(h, tb_an_load<DT>(shift, mod * shift_stride + c)));
        tb_an_store<DT>(h_out, base + c, h);
    }
}

// ---- the kernels (names listed in kernels/build.py KERNELS, in this order)

extern "C" __global__ void adanorm_f32(const float* x, const float* y, const float* gate, long long gate_stride,
                                       const float* y_w, const float* w, const float* scale, long long scale_stride,
                                       const float* shift, long long shift_stride, float* x_out, float* h_out,
                                       int dim, int rows_per_mod, float y_eps, float eps, int y_norm, int norm,
                                       int clip) {
    tb_adanorm<TB_AN_F32>(x, y, gate, gate_stride, y_w, w, scale, scale_stride, shift, shift_stride, x_out, h_out,
                          dim, rows_per_mod, y_eps, eps, y_norm, norm, clip);
}

extern "C" __global__ void adanorm_f16(const unsigned short* x, const unsigned short* y, const unsigned short* gate,
                                       long long gate_stride, const unsigned short* y_w, const unsigned short* w,
                                       const unsigned short* scale, long long scale_stride,
                                       const unsigned short* shift, long long shift_stride, unsigned short* x_out,
                                       unsigned short* h_out, int dim, int rows_per_mod, float y_eps, float eps,
                                       int y_norm, int norm, int clip) {
    tb_adanorm<TB_AN_F16>(x, y, gate, gate_stride, y_w, w, scale, scale_stride, shift, shift_stride, x_out, h_out,
                          dim, rows_per_mod, y_eps, eps, y_norm, norm, clip);
}

extern "C" __global__ void adanorm_bf16(const unsigned short* x, const unsigned short* y, const unsigned short* gate,
                                        long long gate_stride, const unsigned short* y_w, const unsigned short* w,
                                        const unsigned short* scale, long long scale_stride,
                                        const unsigned short* shift, long long shift_stride, unsigned short* x_out,
                                        unsigned short* h_out, int dim, int rows_per_mod, float y_eps, float eps,
                                        int y_norm, int norm, int clip) {
    tb_adanorm<TB_AN_BF16>(x, y, gate, gate_stride, y_w, w, scale, scale_stride, shift, shift_stride, x_out, h_out,
                           dim, rows_per_mod, y_eps, eps, y_norm, norm, clip);
}
