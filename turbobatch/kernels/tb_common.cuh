// Helpers shared by kernels/*.cu. Float16/bfloat16 conversions are written with integer bit
// operations (no cuda_fp16.h) so the host shim (kernels/host_shim.h, g++) runs the very same
// code as the GPU and the CPU tests check the conversions too.
#pragma once

#define TB_BLOCK 256  // threads per block of every 1-D kernel; the launchers use the same number

__device__ __forceinline__ float tb_bits_float(unsigned int b) { return __uint_as_float(b); }
__device__ __forceinline__ unsigned int tb_float_bits(float f) { return __float_as_uint(f); }

__device__ __forceinline__ float tb_half_to_float(unsigned short h) {
    unsigned int sign = ((unsigned int)h & 0x8000u) << 16;
    unsigned int exp = ((unsigned int)h >> 10) & 0x1fu;
    unsigned int man = (unsigned int)h & 0x3ffu;
    unsigned int bits;
    if (exp == 0x1fu) {
        bits = sign | 0x7f800000u | (man << 13);  // inf / nan
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {  // subnormal: normalise into a float32 normal
        unsigned int e = 113u;
        while (!(man & 0x400u)) { man <<= 1; e -= 1u; }
        bits = sign | (e << 23) | ((man & 0x3ffu) << 13);
    }
    return tb_bits_float(bits);
}

// float32 -> float16, round to nearest even (what torch does after every half op).
__device__ __forceinline__ unsigned short tb_float_to_half(float f) {
    unsigned int x = tb_float_bits(f);
    unsigned int sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u) return (unsigned short)(sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (x >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // >= 65520 rounds to inf
    if (x >= 0x38800000u) {                                          // normal half
        unsigned int r = x - 0x38000000u;
        r += 0xfffu + ((r >> 13) & 1u);
        return (unsigned short)(sign | (r >> 13));
    }
    if (x <= 0x33000000u) return (unsigned short)sign;  // <= 2^-25 rounds (ties to even) to 0
    unsigned int e = x >> 23;
    unsigned int m = (x & 0x7fffffu) | 0x800000u;
    unsigned int shift = 126u - e;  // 14..24
    unsigned int q = m >> shift;
    unsigned int rem = m & ((1u << shift) - 1u);
    unsigned int halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (q & 1u))) q += 1u;
    return (unsigned short)(sign | q);
}

__device__ __forceinline__ float tb_bf16_to_float(unsigned short h) {
    return tb_bits_float((unsigned int)h << 16);
}

__device__ __forceinline__ unsigned short tb_float_to_bf16(float f) {
    unsigned int x = tb_float_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((x >> 16) | 0x40u);  // quiet nan
    x += 0x7fffu + ((x >> 16) & 1u);
    return (unsigned short)(x >> 16);
}

// RGB(A)/gray uint8 pixel -> gray: (4899 R + 9617 G + 1868 B + 2^13) >> 14, as reference.gray.
__device__ __forceinline__ int tb_gray(const unsigned char* px, int channels) {
    if (channels < 3) return px[0];
    return (4899 * (int)px[0] + 9617 * (int)px[1] + 1868 * (int)px[2] + 8192) >> 14;
}
