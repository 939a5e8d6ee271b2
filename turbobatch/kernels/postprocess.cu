// Fused VAE post-process: float NCHW in [-1, 1] -> uint8 NHWC, plus per-block image stats.
// Arithmetic follows kernels/reference.py op by op: x / 2 + 0.5 rounded to the input dtype
// after each op (as torch does for half types), clamp to [0, 1] (NaN stays NaN), widen to
// float32, * 255, round half to even, NaN -> 0. __fmul_rn/__fadd_rn forbid FMA contraction.
// Grid: (blocks_per_image, N); block: TB_BLOCK threads. Each thread walks pixels with a grid
// stride inside its image. With partials != 0, each block writes 6 int64 per image slot:
// [nan count, inf count, sum of u8, sum of u8^2, min u8, max u8] at partials[(n*B + b)*6].
#include "tb_common.cuh"

#define TB_F32 0
#define TB_F16 1
#define TB_BF16 2

template <int DT>
__device__ __forceinline__ float tb_load_scale(const void* x, long long i) {
    if (DT == TB_F32) {
        float v = ((const float*)x)[i];
        return __fadd_rn(__fmul_rn(v, 0.5f), 0.5f);
    } else if (DT == TB_F16) {
        float v = tb_half_to_float(((const unsigned short*)x)[i]);
        float h = tb_half_to_float(tb_float_to_half(__fmul_rn(v, 0.5f)));
        return tb_half_to_float(tb_float_to_half(__fadd_rn(h, 0.5f)));
    } else {
        float v = tb_bf16_to_float(((const unsigned short*)x)[i]);
        float h = tb_bf16_to_float(tb_float_to_bf16(__fmul_rn(v, 0.5f)));
        return tb_bf16_to_float(tb_float_to_bf16(__fadd_rn(h, 0.5f)));
    }
}

template <int DT>
__device__ __forceinline__ float tb_raw(const void* x, long long i) {
    if (DT == TB_F32) return ((const float*)x)[i];
    if (DT == TB_F16) return tb_half_to_float(((const unsigned short*)x)[i]);
    return tb_bf16_to_float(((const unsigned short*)x)[i]);
}

template <int DT>
__device__ void tb_postprocess(const void* x, unsigned char* out, long long* partials,
                               int channels, int hw, int blocks_per_image) {
    __shared__ long long red[6][TB_BLOCK];
    const int n = blockIdx.y;
    const int tid = threadIdx.x;
    const long long in_base = (long long)n * channels * hw;
    const long long out_base = (long long)n * hw * channels;
    long long nan_count = 0, inf_count = 0, sum = 0, sumsq = 0, lo = 255, hi = 0;
    for (int p = blockIdx.x * TB_BLOCK + tid; p < hw; p += blocks_per_image * TB_BLOCK) {
        for (int c = 0; c < channels; ++c) {
            long long i = in_base + (long long)c * hw + p;
            float v = tb_load_scale<DT>(x, i);
            v = v < 0.0f ? 0.0f : v;  // comparisons with NaN are false: NaN passes through
            v = v > 1.0f ? 1.0f : v;
            float r = rintf(__fmul_rn(v, 255.0f));
            int u = (r == r) ? (int)r : 0;
            out[out_base + (long long)p * channels + c] = (unsigned char)u;
            if (partials) {
                float raw = tb_raw<DT>(x, i);
                nan_count += (raw != raw);
                inf_count += ((tb_float_bits(raw) & 0x7fffffffu) == 0x7f800000u);
                sum += u;
                sumsq += u * u;
                lo = u < lo ? u : lo;
                hi = u > hi ? u : hi;
            }
        }
    }
    if (!partials) return;  // uniform across the grid: no thread waits at a barrier below
    red[0][tid] = nan_count; red[1][tid] = inf_count; red[2][tid] = sum;
    red[3][tid] = sumsq; red[4][tid] = lo; red[5][tid] = hi;
    __syncthreads();
    for (int s = TB_BLOCK / 2; s > 0; s >>= 1) {
        if (tid < s) {
            red[0][tid] += red[0][tid + s];
            red[1][tid] += red[1][tid + s];
            red[2][tid] += red[2][tid + s];
            red[3][tid] += red[3][tid + s];
            red[4][tid] = red[4][tid + s] < red[4][tid] ? red[4][tid + s] : red[4][tid];
            red[5][tid] = red[5][tid + s] > red[5][tid] ? red[5][tid + s] : red[5][tid];
        }
        __syncthreads();
    }
    if (tid == 0) {
        long long* o = partials + ((long long)n * blocks_per_image + blockIdx.x) * 6;
        for (int k = 0; k < 6; ++k) o[k] = red[k][0];
    }
}

extern "C" __global__ void postprocess_f32(const float* x, unsigned char* out, long long* partials,
                                           int channels, int hw, int blocks_per_image) {
    tb_postprocess<TB_F32>(x, out, partials, channels, hw, blocks_per_image);
}

extern "C" __global__ void postprocess_f16(const unsigned short* x, unsigned char* out,
                                           long long* partials, int channels, int hw,
                                           int blocks_per_image) {
    tb_postprocess<TB_F16>(x, out, partials, channels, hw, blocks_per_image);
}

extern "C" __global__ void postprocess_bf16(const unsigned short* x, unsigned char* out,
                                            long long* partials, int channels, int hw,
                                            int blocks_per_image) {
    tb_postprocess<TB_BF16>(x, out, partials, channels, hw, blocks_per_image);
}
