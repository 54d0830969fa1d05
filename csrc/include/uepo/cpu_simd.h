// Vectorised CPU building blocks of the fused sampler. Each is compiled for AVX-512, AVX2 and
// baseline x86-64 and picked at load time (GCC target_clones), so one wheel runs everywhere and
// uses the widest vectors the machine has. All work on a range of rows, single-threaded: the
// caller splits rows across threads.
#pragma once

#include <cstdint>

namespace uepo {
namespace cpu {

// y[r, :] = (accumulate ? y[r, :] : 0) + x[r, :] @ wt + bias, then Mish if `mish`.
// x (M, K) with row stride ldx, wt (K, N) contiguous, bias (N) or nullptr, y (M, N) with ldy.
void linear(const float* x, int64_t ldx, int64_t M, int64_t K, const float* wt, int64_t N,
            const float* bias, bool accumulate, bool mish, float* y, int64_t ldy);
void linear(const double* x, int64_t ldx, int64_t M, int64_t K, const double* wt, int64_t N,
            const double* bias, bool accumulate, bool mish, double* y, int64_t ldy);

// out[r, :] = LayerNorm(h[r, :]) * gamma + beta (eps 1e-5), then Mish if `mish`; rows of W.
void layernorm(const float* h, int64_t R, int64_t W, const float* gamma, const float* beta,
               bool mish, float* out);
void layernorm(const double* h, int64_t R, int64_t W, const double* gamma, const double* beta,
               bool mish, double* out);

// p[r, :W] = Mish(p[r, :W]) for R rows of stride ld.
void mish_rows(float* p, int64_t R, int64_t W, int64_t ld);
void mish_rows(double* p, int64_t R, int64_t W, int64_t ld);

// y[o] = b[o] + sum_k W[o, k] x[k] for o < O: one row through an nn.Linear layer, W (O, K) contiguous.
void matvec(const float* W, const float* x, const float* b, int64_t O, int64_t K, float* y);
void matvec(const double* W, const double* x, const double* b, int64_t O, int64_t K, double* y);

}  // namespace cpu
}  // namespace uepo
