// Canny edges on uint8 images, the integer algorithm of OpenCV's cv::Canny (aperture 3, L1
// gradient) so the CUDA path equals kernels/reference.py: canny bit for bit:
//   gray_u8          RGB(A)/gray NHWC -> gray, OpenCV's fixed-point RGB2GRAY      grid-stride 1-D
//   sobel_mag        |dx| + |dy| of the 3x3 Sobel, replicated border               grid-stride 1-D
//   canny_classify   non-maximum suppression (OpenCV's tan 22.5 test in fixed point) and the
//                    two thresholds: map = 0 none, 1 weak (> low), 2 strong (> high)
//   canny_hysteresis weak pixels 8-connected to strong ones become strong; one launch
//                    propagates inside 16x16 tiles in shared memory until the tile is stable
//                    and sets *changed; the host repeats launches until nothing changed.
#include "tb_common.cuh"

#define TB_TILE 16
#define TB_TG22 13573  // (int)(tan(22.5 deg) * 2^15 + 0.5)

__device__ __forceinline__ int tb_clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

extern "C" __global__ void gray_u8(const unsigned char* img, unsigned char* gray, long long total,
                                   int channels) {
    for (long long p = (long long)blockIdx.x * TB_BLOCK + threadIdx.x; p < total;
         p += (long long)gridDim.x * TB_BLOCK) {
        gray[p] = (unsigned char)tb_gray(img + p * channels, channels);
    }
}

__device__ __forceinline__ void tb_sobel(const unsigned char* g, int h, int w, int y, int x, int* dx, int* dy) {
    const int ym = tb_clampi(y - 1, 0, h - 1), yp = tb_clampi(y + 1, 0, h - 1);
    const int xm = tb_clampi(x - 1, 0, w - 1), xp = tb_clampi(x + 1, 0, w - 1);
    const unsigned char *a = g + ym * w, *b = g + y * w, *c = g + yp * w;
    *dx = ((int)a[xp] + 2 * (int)b[xp] + (int)c[xp]) - ((int)a[xm] + 2 * (int)b[xm] + (int)c[xm]);
    *dy = ((int)c[xm] + 2 * (int)c[x] + (int)c[xp]) - ((int)a[xm] + 2 * (int)a[x] + (int)a[xp]);
}

extern "C" __global__ void sobel_mag(const unsigned char* gray, int* mag, int h, int w, long long total) {
    for (long long p = (long long)blockIdx.x * TB_BLOCK + threadIdx.x; p < total;
         p += (long long)gridDim.x * TB_BLOCK) {
        const long long n = p / ((long long)h * w);
        const int r = (int)(p - n * h * w);
        int dx, dy;
        tb_sobel(gray + n * h * w, h, w, r / w, r % w, &dx, &dy);
        mag[p] = (dx < 0 ? -dx : dx) + (dy < 0 ? -dy : dy);
    }
}

__device__ __forceinline__ int tb_mag_at(const int* mag, int h, int w, int y, int x) {
    return (y < 0 || y >= h || x < 0 || x >= w) ? 0 : mag[y * w + x];
}

extern "C" __global__ void canny_classify(const unsigned char* gray, const int* mag, unsigned char* map,
                                          int h, int w, long long total, int low, int high) {
    for (long long p = (long long)blockIdx.x * TB_BLOCK + threadIdx.x; p < total;
         p += (long long)gridDim.x * TB_BLOCK) {
        const long long n = p / ((long long)h * w);
        const int r = (int)(p - n * h * w), y = r / w, x = r % w;
        const int* M = mag + n * h * w;
        const int m = M[r];
        unsigned char out = 0;
        if (m > low) {
            int dx, dy;
            tb_sobel(gray + n * h * w, h, w, y, x, &dx, &dy);
            const long long ax = dx < 0 ? -dx : dx, ay = dy < 0 ? -dy : dy;
            const long long tg22x = ax * TB_TG22, yv = ay << 15;
            bool keep;
            if (yv < tg22x) {
                keep = m > tb_mag_at(M, h, w, y, x - 1) && m >= tb_mag_at(M, h, w, y, x + 1);
            } else if (yv > tg22x + (ax << 16)) {
                keep = m > tb_mag_at(M, h, w, y - 1, x) && m >= tb_mag_at(M, h, w, y + 1, x);
            } else {
                const int s = ((dx ^ dy) < 0) ? -1 : 1;
                keep = m > tb_mag_at(M, h, w, y - 1, x - s) && m > tb_mag_at(M, h, w, y + 1, x + s);
            }
            if (keep) out = m > high ? 2 : 1;
        }
        map[p] = out;
    }
}

// grid (ceil(w/16), ceil(h/16), N), block (16, 16).
extern "C" __global__ void canny_hysteresis(unsigned char* map, int* changed, int h, int w) {
    __shared__ unsigned char tile[TB_TILE + 2][TB_TILE + 2];
    __shared__ int tile_changed;
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * TB_TILE + tx;
    const int x0 = blockIdx.x * TB_TILE, y0 = blockIdx.y * TB_TILE;
    unsigned char* m = map + (long long)blockIdx.z * h * w;
    for (int k = tid; k < (TB_TILE + 2) * (TB_TILE + 2); k += TB_TILE * TB_TILE) {
        const int ly = k / (TB_TILE + 2), lx = k % (TB_TILE + 2);
        const int gy = y0 + ly - 1, gx = x0 + lx - 1;
        tile[ly][lx] = (gy >= 0 && gy < h && gx >= 0 && gx < w) ? m[gy * w + gx] : 0;
    }
    const int gx = x0 + tx, gy = y0 + ty;
    const bool inside = gx < w && gy < h;
    bool mine = false;
    int again;
    do {
        __syncthreads();  // tile loaded, and every thread has read tile_changed
        if (tid == 0) tile_changed = 0;
        __syncthreads();
        if (inside && tile[ty + 1][tx + 1] == 1) {
            bool strong = false;
            for (int dy = 0; dy < 3; ++dy)
                for (int dx = 0; dx < 3; ++dx) strong = strong || tile[ty + dy][tx + dx] == 2;
            if (strong) {
                tile[ty + 1][tx + 1] = 2;  // monotone (weak -> strong only): races are benign
                tile_changed = 1;
                mine = true;
            }
        }
        __syncthreads();
        again = tile_changed;
    } while (again);
    if (mine) {
        m[gy * w + gx] = 2;
        *changed = 1;
    }
}
