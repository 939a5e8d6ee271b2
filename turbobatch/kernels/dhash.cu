// dhash64 in two kernels (definition in kernels/reference.py: dhash64).
// dhash_cells: grid (72, N), block TB_BLOCK. Block (cell, n) sums the gray values of one
// box of the 8-row x 9-column grid: rows [i*H/8, (i+1)*H/8), cols [j*W/9, (j+1)*W/9),
// cell = i*9 + j, into cells[n*72 + cell] (int64, exact).
// dhash_bits: one thread per image compares neighbouring boxes by their means, exactly, as
// sum_left * count_right > sum_right * count_left, and sets bit i*8 + j of the hash.
#include "tb_common.cuh"

__device__ __forceinline__ void tb_box(int cell, int h, int w, int* r0, int* r1, int* c0, int* c1) {
    int i = cell / 9, j = cell % 9;
    *r0 = i * h / 8; *r1 = (i + 1) * h / 8;
    *c0 = j * w / 9; *c1 = (j + 1) * w / 9;
}

extern "C" __global__ void dhash_cells(const unsigned char* img, long long* cells, int h, int w,
                                       int channels) {
    __shared__ long long red[TB_BLOCK];
    const int cell = blockIdx.x, n = blockIdx.y, tid = threadIdx.x;
    int r0, r1, c0, c1;
    tb_box(cell, h, w, &r0, &r1, &c0, &c1);
    const int bw = c1 - c0, count = (r1 - r0) * bw;
    const unsigned char* base = img + (long long)n * h * w * channels;
    long long sum = 0;
    for (int k = tid; k < count; k += TB_BLOCK) {
        int r = r0 + k / bw, c = c0 + k % bw;
        sum += tb_gray(base + ((long long)r * w + c) * channels, channels);
    }
    red[tid] = sum;
    __syncthreads();
    for (int s = TB_BLOCK / 2; s > 0; s >>= 1) {
        if (tid < s) red[tid] += red[tid + s];
        __syncthreads();
    }
    if (tid == 0) cells[(long long)n * 72 + cell] = red[0];
}

extern "C" __global__ void dhash_bits(const long long* cells, long long* out, int h, int w, int n_images) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= n_images) return;
    unsigned long long bits = 0;
    for (int i = 0; i < 8; ++i) {
        for (int j = 0; j < 8; ++j) {
            int r0, r1, c0, c1, q0, q1, d0, d1;
            tb_box(i * 9 + j, h, w, &r0, &r1, &c0, &c1);
            tb_box(i * 9 + j + 1, h, w, &q0, &q1, &d0, &d1);
            long long left = cells[(long long)n * 72 + i * 9 + j];
            long long right = cells[(long long)n * 72 + i * 9 + j + 1];
            long long count_left = (long long)(r1 - r0) * (c1 - c0);
            long long count_right = (long long)(q1 - q0) * (d1 - d0);
            if (left * count_right > right * count_left) bits |= 1ull << (i * 8 + j);
        }
    }
    out[n] = (long long)bits;
}
