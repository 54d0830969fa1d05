// Vectorised CPU building blocks (see uepo/cpu_simd.h), written with GCC vector extensions so
// that one source serves every target_clones variant.
#include "uepo/cpu_simd.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "uepo/divergence.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define UEPO_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define UEPO_CLONES
#endif
#define UEPO_INLINE inline __attribute__((always_inline))

namespace uepo {
namespace cpu {
namespace {

typedef float vf32 __attribute__((vector_size(64)));
typedef double vf64 __attribute__((vector_size(64)));
typedef int32_t vi32 __attribute__((vector_size(64)));

template <typename T>
struct Simd;
template <>
struct Simd<float> {
  using V = vf32;
  static constexpr int L = 16;
};
template <>
struct Simd<double> {
  using V = vf64;
  static constexpr int L = 8;
};

template <typename V, typename T>
UEPO_INLINE V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
UEPO_INLINE void store(T* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

template <typename V, typename T>
UEPO_INLINE V splat(T x) {
  V v = {};
  return v + x;
}

// e^x for x in [-87, 20]: Cephes expf (range reduction by ln 2, degree-6 polynomial, ~1 ulp).
UEPO_INLINE vf32 exp_f32(vf32 x) {
  const vf32 t = x * 1.44269504088896341f + 0.5f;
  vi32 n = __builtin_convertvector(t, vi32);  // truncates toward zero
  n += (t < __builtin_convertvector(n, vf32));  // true is -1: floor for negative t
  const vf32 nf = __builtin_convertvector(n, vf32);
  const vf32 r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  vf32 p = splat<vf32>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const vi32 bits = (n + 127) << 23;
  return p * (vf32)bits;
}

UEPO_INLINE vf32 mish_vec(vf32 x) {
  vf32 xc = x < -87.0f ? splat<vf32>(-87.0f) : x;
  xc = xc > 20.0f ? splat<vf32>(20.0f) : xc;
  const vf32 e = exp_f32(xc);
  const vf32 n = e * (e + 2.0f);
  const vf32 m = x * n / (n + 2.0f);
  return x > 20.0f ? x : m;
}

UEPO_INLINE vf64 mish_vec(vf64 x) {  // double: exact libm exp, lane by lane
  for (int i = 0; i < 8; ++i) x[i] = mish(x[i]);
  return x;
}

template <typename V>
UEPO_INLINE auto hsum(V v) {
  auto s = v[0];
  for (int i = 1; i < int(sizeof(V) / sizeof(s)); ++i) s += v[i];
  return s;
}

// MR rows x NV vectors of outputs; the accumulators stay in registers over the K loop.
template <typename T, int MR, int NV>
UEPO_INLINE void linear_tile(const T* x, int64_t ldx, int64_t K, const T* wt, int64_t ldw,
                             const T* bias, bool accumulate, bool mish_out, T* y, int64_t ldy) {
  using V = typename Simd<T>::V;
  constexpr int L = Simd<T>::L;
  V acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v)
      acc[r][v] = accumulate ? load<V>(y + r * ldy + v * L) : (bias ? load<V>(bias + v * L) : V{});
  if (accumulate && bias)
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] += load<V>(bias + v * L);
  for (int64_t k = 0; k < K; ++k) {
    V w[NV];
    for (int v = 0; v < NV; ++v) w[v] = load<V>(wt + k * ldw + v * L);
    for (int r = 0; r < MR; ++r) {
      const V xb = splat<V>(x[r * ldx + k]);
      for (int v = 0; v < NV; ++v) acc[r][v] += xb * w[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) store(y + r * ldy + v * L, mish_out ? mish_vec(acc[r][v]) : acc[r][v]);
}

template <typename T, int NV>
UEPO_INLINE void linear_columns(const T* x, int64_t ldx, int64_t M, int64_t K, const T* wt,
                                int64_t ldw, const T* bias, bool accumulate, bool mish_out, T* y,
                                int64_t ldy) {
  int64_t r = 0;
  for (; r + 4 <= M; r += 4)
    linear_tile<T, 4, NV>(x + r * ldx, ldx, K, wt, ldw, bias, accumulate, mish_out, y + r * ldy, ldy);
  for (; r < M; ++r)
    linear_tile<T, 1, NV>(x + r * ldx, ldx, K, wt, ldw, bias, accumulate, mish_out, y + r * ldy, ldy);
}

// Columns j0.. of width NV vectors, zero-padded where the matrix ends mid-vector: the ragged
// edge (e.g. the output layer's H*d_a = 24 columns) still runs 4-row register tiles.
template <typename T, int NV>
UEPO_INLINE void linear_padded_columns(const T* x, int64_t ldx, int64_t M, int64_t K, const T* wt,
                                       int64_t N, int64_t j0, const T* bias, bool accumulate,
                                       bool mish_out, T* y, int64_t ldy) {
  constexpr int L = Simd<T>::L, P = NV * L;
  const int64_t width = N - j0;
  std::vector<T> wpad(K * P, T(0));
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < width; ++c) wpad[k * P + c] = wt[k * N + j0 + c];
  T bpad[P] = {};
  if (bias)
    for (int64_t c = 0; c < width; ++c) bpad[c] = bias[j0 + c];
  T ypad[4 * P];
  auto run = [&](int64_t r, auto rows) {
    constexpr int MR = decltype(rows)::value;
    if (accumulate)
      for (int i = 0; i < MR; ++i)
        for (int64_t c = 0; c < width; ++c) ypad[i * P + c] = y[(r + i) * ldy + j0 + c];
    linear_tile<T, MR, NV>(x + r * ldx, ldx, K, wpad.data(), P, bias ? bpad : nullptr, accumulate,
                           mish_out, ypad, P);
    for (int i = 0; i < MR; ++i)
      for (int64_t c = 0; c < width; ++c) y[(r + i) * ldy + j0 + c] = ypad[i * P + c];
  };
  int64_t r = 0;
  for (; r + 4 <= M; r += 4) run(r, std::integral_constant<int, 4>{});
  for (; r < M; ++r) run(r, std::integral_constant<int, 1>{});
}

template <typename T>
UEPO_INLINE void linear_impl(const T* x, int64_t ldx, int64_t M, int64_t K, const T* wt,
                             int64_t N, const T* bias, bool accumulate, bool mish_out, T* y,
                             int64_t ldy) {
  constexpr int L = Simd<T>::L;
  int64_t j = 0;
  for (; j + 4 * L <= N; j += 4 * L)
    linear_columns<T, 4>(x, ldx, M, K, wt + j, N, bias ? bias + j : nullptr, accumulate, mish_out, y + j, ldy);
  const int64_t rest = N - j;
  if (rest == 0) return;
  const T* b = bias ? bias + j : nullptr;
  if (rest % L == 0) {  // whole vectors left
    switch (rest / L) {
      case 1: return linear_columns<T, 1>(x, ldx, M, K, wt + j, N, b, accumulate, mish_out, y + j, ldy);
      case 2: return linear_columns<T, 2>(x, ldx, M, K, wt + j, N, b, accumulate, mish_out, y + j, ldy);
      default: return linear_columns<T, 3>(x, ldx, M, K, wt + j, N, b, accumulate, mish_out, y + j, ldy);
    }
  }
  switch ((rest + L - 1) / L) {
    case 1: return linear_padded_columns<T, 1>(x, ldx, M, K, wt, N, j, bias, accumulate, mish_out, y, ldy);
    case 2: return linear_padded_columns<T, 2>(x, ldx, M, K, wt, N, j, bias, accumulate, mish_out, y, ldy);
    case 3: return linear_padded_columns<T, 3>(x, ldx, M, K, wt, N, j, bias, accumulate, mish_out, y, ldy);
    default: return linear_padded_columns<T, 4>(x, ldx, M, K, wt, N, j, bias, accumulate, mish_out, y, ldy);
  }
}

template <typename T>
UEPO_INLINE void layernorm_impl(const T* h, int64_t R, int64_t W, const T* g, const T* b,
                                bool mish_out, T* out) {
  using V = typename Simd<T>::V;
  constexpr int L = Simd<T>::L;
  const int64_t Wv = W / L * L;
  for (int64_t r = 0; r < R; ++r) {
    const T* x = h + r * W;
    T* o = out + r * W;
    V vs = {};
    for (int64_t k = 0; k < Wv; k += L) vs += load<V>(x + k);
    T s = hsum(vs);
    for (int64_t k = Wv; k < W; ++k) s += x[k];
    const T mean = s / T(W);
    V vq = {};
    for (int64_t k = 0; k < Wv; k += L) {
      const V d = load<V>(x + k) - mean;
      vq += d * d;
    }
    T q = hsum(vq);
    for (int64_t k = Wv; k < W; ++k) q += (x[k] - mean) * (x[k] - mean);
    const T inv = T(1) / std::sqrt(q / T(W) + T(1e-5));
    for (int64_t k = 0; k < Wv; k += L) {
      const V y = (load<V>(x + k) - mean) * inv * load<V>(g + k) + load<V>(b + k);
      store(o + k, mish_out ? mish_vec(y) : y);
    }
    for (int64_t k = Wv; k < W; ++k) {
      const T y = (x[k] - mean) * inv * g[k] + b[k];
      o[k] = mish_out ? mish(y) : y;
    }
  }
}

template <typename T>
UEPO_INLINE void mish_rows_impl(T* p, int64_t R, int64_t W, int64_t ld) {
  using V = typename Simd<T>::V;
  constexpr int L = Simd<T>::L;
  for (int64_t r = 0; r < R; ++r) {
    T* row = p + r * ld;
    int64_t k = 0;
    for (; k + L <= W; k += L) store(row + k, mish_vec(load<V>(row + k)));
    for (; k < W; ++k) row[k] = mish(row[k]);
  }
}

}  // namespace

UEPO_CLONES void linear(const float* x, int64_t ldx, int64_t M, int64_t K, const float* wt,
                        int64_t N, const float* bias, bool accumulate, bool mish, float* y,
                        int64_t ldy) {
  linear_impl(x, ldx, M, K, wt, N, bias, accumulate, mish, y, ldy);
}
UEPO_CLONES void linear(const double* x, int64_t ldx, int64_t M, int64_t K, const double* wt,
                        int64_t N, const double* bias, bool accumulate, bool mish, double* y,
                        int64_t ldy) {
  linear_impl(x, ldx, M, K, wt, N, bias, accumulate, mish, y, ldy);
}
UEPO_CLONES void layernorm(const float* h, int64_t R, int64_t W, const float* gamma,
                           const float* beta, bool mish, float* out) {
  layernorm_impl(h, R, W, gamma, beta, mish, out);
}
UEPO_CLONES void layernorm(const double* h, int64_t R, int64_t W, const double* gamma,
                           const double* beta, bool mish, double* out) {
  layernorm_impl(h, R, W, gamma, beta, mish, out);
}
template <typename T>
UEPO_INLINE void matvec_impl(const T* W, const T* x, const T* b, int64_t O, int64_t K, T* y) {
  using V = typename Simd<T>::V;
  constexpr int L = Simd<T>::L;
  for (int64_t o = 0; o < O; ++o) {
    const T* w = W + o * K;
    V acc = {};
    int64_t k = 0;
    for (; k + L <= K; k += L) acc += load<V>(w + k) * load<V>(x + k);
    T sum = hsum(acc);
    for (; k < K; ++k) sum += w[k] * x[k];
    y[o] = sum + b[o];
  }
}

UEPO_CLONES void matvec(const float* W, const float* x, const float* b, int64_t O, int64_t K, float* y) {
  matvec_impl(W, x, b, O, K, y);
}
UEPO_CLONES void matvec(const double* W, const double* x, const double* b, int64_t O, int64_t K, double* y) {
  matvec_impl(W, x, b, O, K, y);
}

UEPO_CLONES void mish_rows(float* p, int64_t R, int64_t W, int64_t ld) { mish_rows_impl(p, R, W, ld); }
UEPO_CLONES void mish_rows(double* p, int64_t R, int64_t W, int64_t ld) { mish_rows_impl(p, R, W, ld); }

}  // namespace cpu
}  // namespace uepo
