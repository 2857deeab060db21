// fastclip's CUDA kernels, compiled at run time by NVRTC through CuPy (fastclip/_cuda/kernels.py).
//
// Two kernels over a *block table* (multi_tensor_apply style, one launch for any number of
// tensors): block b works on elements [block_start[b], block_start[b] + chunk) of tensor
// block_tensor[b]. The host builds the table (fastclip/_cuda/partials.py) and passes
// chunk = CUDA_BLOCK_ELEMS.
//
// - fastclip_norm_partials writes, per block, sum (|x| s1 s2)^p and max |x| in float64: a fixed
//   per-thread order and a fixed shared-memory tree, so the result is deterministic.
// - fastclip_apply scales (x <- x * a) or clamps (x <- min(max(x, lo), hi), NaN unchanged) in
//   place, rounding each element once (the host has already rounded the factor and bounds).
//
// The host must define FC_THREADS (threads per block, a power of two) with -DFC_THREADS=<n>; the
// enums below are mirrored by fastclip/_cuda/kernels.py (tests/test_cuda.py checks both agree).
// float16 is converted with the PTX cvt instructions and bfloat16 by shifting its bits, so no CUDA
// header is needed.

#ifndef FC_THREADS
#error "compile with -DFC_THREADS=<threads per block> (fastclip/_cuda/kernels.py passes it)"
#endif

// Storage dtype of a tensor (codes[t]).
enum fc_code { FC_F32 = 0, FC_F64 = 1, FC_F16 = 2, FC_BF16 = 3 };
// What fastclip_norm_partials sums: |x|, |x|^2, |x|^p, or nothing (the max only, p = inf).
enum fc_mode { FC_MODE_P1 = 0, FC_MODE_P2 = 1, FC_MODE_P = 2, FC_MODE_MAX = 3 };
// What fastclip_apply does.
enum fc_op { FC_OP_SCALE = 0, FC_OP_CLAMP = 1 };

typedef unsigned short fc_u16;
typedef unsigned long long fc_u64;

__device__ __forceinline__ float fc_h2f(fc_u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ fc_u16 fc_f2h(float f) {  // round to nearest even
    fc_u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ float fc_bf2f(fc_u16 b) { return __uint_as_float(((unsigned)b) << 16); }
__device__ __forceinline__ fc_u16 fc_f2bf(float f) {  // round to nearest even; NaN stays quiet NaN
    unsigned x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (fc_u16)((x >> 16) | 0x40u);
    if ((x & 0x8000u) && (x & 0x17fffu)) return (fc_u16)((x >> 16) + 1u);
    return (fc_u16)(x >> 16);
}

template <int CODE> __device__ __forceinline__ double fc_load(const void* p, long long i);
template <> __device__ __forceinline__ double fc_load<FC_F32>(const void* p, long long i) {
    return (double)((const float*)p)[i];
}
template <> __device__ __forceinline__ double fc_load<FC_F64>(const void* p, long long i) {
    return ((const double*)p)[i];
}
template <> __device__ __forceinline__ double fc_load<FC_F16>(const void* p, long long i) {
    return (double)fc_h2f(((const fc_u16*)p)[i]);
}
template <> __device__ __forceinline__ double fc_load<FC_BF16>(const void* p, long long i) {
    return (double)fc_bf2f(((const fc_u16*)p)[i]);
}

// NaN-sticky max: once NaN, stays NaN.
__device__ __forceinline__ double fc_max(double m, double v) { return (v > m || v != v) ? v : m; }

template <int CODE, int MODE>
__device__ __forceinline__ void fc_accumulate(const void* p, long long lo, long long hi, double s1, double s2,
                                              double pw, double* sum, double* mx) {
    double acc = 0.0, m = 0.0;
    for (long long i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        double v = fabs(fc_load<CODE>(p, i));
        m = fc_max(m, v);
        if (MODE == FC_MODE_P1) acc += v * s1 * s2;
        else if (MODE == FC_MODE_P2) { double w = v * s1 * s2; acc += w * w; }
        else if (MODE == FC_MODE_P) acc += pow(v * s1 * s2, pw);
    }
    *sum = acc;
    *mx = m;
}

template <int CODE>
__device__ __forceinline__ void fc_accumulate_mode(int mode, const void* p, long long lo, long long hi, double s1,
                                                   double s2, double pw, double* sum, double* mx) {
    switch (mode) {
        case FC_MODE_P1: fc_accumulate<CODE, FC_MODE_P1>(p, lo, hi, s1, s2, pw, sum, mx); break;
        case FC_MODE_P2: fc_accumulate<CODE, FC_MODE_P2>(p, lo, hi, s1, s2, pw, sum, mx); break;
        case FC_MODE_P: fc_accumulate<CODE, FC_MODE_P>(p, lo, hi, s1, s2, pw, sum, mx); break;
        default: fc_accumulate<CODE, FC_MODE_MAX>(p, lo, hi, s1, s2, pw, sum, mx); break;
    }
}

// One block per block-table entry: sum (|x| s1 s2)^p (per mode) and max |x| of chunk elements of
// one tensor, in float64, written to out_sum/out_max[block].
extern "C" __global__ void fastclip_norm_partials(
        const fc_u64* ptrs, const long long* sizes, const int* codes, const double* s1, const double* s2,
        const int* block_tensor, const long long* block_start, long long chunk, int mode, double pw,
        double* out_sum, double* out_max) {
    __shared__ double sh_sum[FC_THREADS];
    __shared__ double sh_max[FC_THREADS];
    const int t = block_tensor[blockIdx.x];
    const long long lo = block_start[blockIdx.x];
    const long long hi = min(lo + chunk, sizes[t]);
    const void* p = (const void*)ptrs[t];
    double sum = 0.0, mx = 0.0;
    switch (codes[t]) {
        case FC_F32: fc_accumulate_mode<FC_F32>(mode, p, lo, hi, s1[t], s2[t], pw, &sum, &mx); break;
        case FC_F64: fc_accumulate_mode<FC_F64>(mode, p, lo, hi, s1[t], s2[t], pw, &sum, &mx); break;
        case FC_F16: fc_accumulate_mode<FC_F16>(mode, p, lo, hi, s1[t], s2[t], pw, &sum, &mx); break;
        default: fc_accumulate_mode<FC_BF16>(mode, p, lo, hi, s1[t], s2[t], pw, &sum, &mx); break;
    }
    sh_sum[threadIdx.x] = sum;
    sh_max[threadIdx.x] = mx;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half >>= 1) {  // fixed tree: deterministic
        if (threadIdx.x < half) {
            sh_sum[threadIdx.x] += sh_sum[threadIdx.x + half];
            sh_max[threadIdx.x] = fc_max(sh_max[threadIdx.x], sh_max[threadIdx.x + half]);
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        out_sum[blockIdx.x] = sh_sum[0];
        out_max[blockIdx.x] = sh_max[0];
    }
}

// In place, one block per block-table entry. FC_OP_SCALE: x <- x * a[t]; FC_OP_CLAMP:
// x <- clamp(x, a[t], b[t]), NaN unchanged. a and b are already rounded on the host (factor to
// float32 unless float64, bounds to the storage dtype), so each element is rounded once, as on
// the CPU.
template <int CODE>
__device__ __forceinline__ void fc_apply_one(void* p, long long lo, long long hi, int op, double a, double b) {
    for (long long i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        if (CODE == FC_F64) {
            double* q = (double*)p;
            double x = q[i];
            if (op == FC_OP_SCALE) q[i] = x * a;
            else if (x < a) q[i] = a;
            else if (x > b) q[i] = b;
        } else if (CODE == FC_F32) {
            float* q = (float*)p;
            float x = q[i];
            if (op == FC_OP_SCALE) q[i] = x * (float)a;
            else if (x < (float)a) q[i] = (float)a;
            else if (x > (float)b) q[i] = (float)b;
        } else {
            fc_u16* q = (fc_u16*)p;
            float x = CODE == FC_F16 ? fc_h2f(q[i]) : fc_bf2f(q[i]);
            float y;
            if (op == FC_OP_SCALE) y = x * (float)a;
            else if (x < (float)a) y = (float)a;
            else if (x > (float)b) y = (float)b;
            else continue;  // unchanged: keep the exact bits (NaN payloads too)
            q[i] = CODE == FC_F16 ? fc_f2h(y) : fc_f2bf(y);
        }
    }
}

extern "C" __global__ void fastclip_apply(
        const fc_u64* ptrs, const long long* sizes, const int* codes, const double* a, const double* b,
        const int* block_tensor, const long long* block_start, long long chunk, int op) {
    const int t = block_tensor[blockIdx.x];
    const long long lo = block_start[blockIdx.x];
    const long long hi = min(lo + chunk, sizes[t]);
    void* p = (void*)ptrs[t];
    switch (codes[t]) {
        case FC_F32: fc_apply_one<FC_F32>(p, lo, hi, op, a[t], b[t]); break;
        case FC_F64: fc_apply_one<FC_F64>(p, lo, hi, op, a[t], b[t]); break;
        case FC_F16: fc_apply_one<FC_F16>(p, lo, hi, op, a[t], b[t]); break;
        default: fc_apply_one<FC_BF16>(p, lo, hi, op, a[t], b[t]); break;
    }
}
