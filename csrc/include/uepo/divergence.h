// Velocity/acceleration divergence between two action chunks (SPEC §3), shared by the CPU and
// CUDA kernels. A chunk is H x D, row-major. The optional mask m (length H, 0/1 weights) marks
// valid steps: a velocity term needs both of its steps, an acceleration term all three.
//
//   div(a, b) = mean_t |v^a_t - v^b_t|_2
//             + mean_t (1 - (<c^a_t, c^b_t> + eps) / (|c^a_t| |c^b_t| + eps))
//
// Each chunk's derivatives are computed once (`chunk_derivatives`), then every pair reads them:
// with n chunks there are n(n-1)/2 pairs but only n derivative passes.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define UEPO_HD __host__ __device__ __forceinline__
#else
// Always inlined, so that a caller passing a compile-time H or D gets fully unrolled loops.
#define UEPO_HD inline __attribute__((always_inline))
#endif

namespace uepo {

using std::exp;
using std::sqrt;

// Layout of one chunk's derivatives:
//   [vel (H-1) x D | acc (H-2) x D | |acc_t| (H-2) | 1/|acc_t| (H-2), 0 where |acc_t| = 0].
UEPO_HD int64_t derivative_size(int64_t H, int64_t D) { return (2 * H - 3) * D + 2 * (H - 2); }

template <typename T>
struct Derivs {
  const T* vel;
  const T* acc;
  const T* acc_norm;
  const T* acc_inv_norm;
  UEPO_HD Derivs(const T* base, int64_t H, int64_t D)
      : vel(base),
        acc(base + (H - 1) * D),
        acc_norm(base + (2 * H - 3) * D),
        acc_inv_norm(base + (2 * H - 3) * D + (H - 2)) {}
};

// Mask weights of the velocity and acceleration terms, and their totals (SPEC: means over the
// unmasked indices). m == nullptr means every step is valid.
template <typename T>
struct StepWeights {
  const T* m;
  T vel_total, acc_total;
  UEPO_HD StepWeights(const T* mask, int64_t H) : m(mask), vel_total(0), acc_total(0) {
    for (int64_t t = 0; t + 1 < H; ++t) vel_total += vel(t);
    for (int64_t t = 1; t + 1 < H; ++t) acc_total += acc(t);
  }
  UEPO_HD T vel(int64_t t) const { return m == nullptr ? T(1) : m[t] * m[t + 1]; }  // v_t
  UEPO_HD T acc(int64_t t) const {  // c_t, t = 1..H-2, stored at t - 1
    return m == nullptr ? T(1) : m[t - 1] * m[t] * m[t + 1];
  }
};

template <typename T>
UEPO_HD void chunk_derivatives(const T* a, int64_t H, int64_t D, T* out) {
  T* vel = out;
  T* acc = out + (H - 1) * D;
  T* acc_norm = out + (2 * H - 3) * D;
  T* acc_inv_norm = acc_norm + (H - 2);
  for (int64_t t = 0; t + 1 < H; ++t)
    for (int64_t d = 0; d < D; ++d) vel[t * D + d] = a[(t + 1) * D + d] - a[t * D + d];
  for (int64_t t = 1; t + 1 < H; ++t) {
    T s = 0;
    for (int64_t d = 0; d < D; ++d) {
      const T c = a[(t + 1) * D + d] - T(2) * a[t * D + d] + a[(t - 1) * D + d];
      acc[(t - 1) * D + d] = c;
      s += c * c;
    }
    acc_norm[t - 1] = sqrt(s);
    acc_inv_norm[t - 1] = s > T(0) ? T(1) / acc_norm[t - 1] : T(0);  // zero subgradient at 0
  }
}

template <typename T>
UEPO_HD T pair_divergence(const Derivs<T>& a, const Derivs<T>& b, const StepWeights<T>& w,
                          int64_t H, int64_t D, T eps) {
  T out = 0;
  if (w.vel_total > T(0)) {
    T sum = 0;
    for (int64_t t = 0; t + 1 < H; ++t) {
      const T wt = w.vel(t);
      if (wt == T(0)) continue;
      T s = 0;
      for (int64_t d = 0; d < D; ++d) {
        const T diff = a.vel[t * D + d] - b.vel[t * D + d];
        s += diff * diff;
      }
      sum += wt * sqrt(s);
    }
    out += sum / w.vel_total;
  }
  if (w.acc_total > T(0)) {
    T sum = 0;
    for (int64_t t = 1; t + 1 < H; ++t) {
      const T wt = w.acc(t);
      if (wt == T(0)) continue;
      const int64_t k = t - 1;
      T dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += a.acc[k * D + d] * b.acc[k * D + d];
      sum += wt * (T(1) - (dot + eps) / (a.acc_norm[k] * b.acc_norm[k] + eps));
    }
    out += sum / w.acc_total;
  }
  return out;
}

// Size of the gradient w.r.t. one chunk's derivatives: [vel (H-1) x D | acc (H-2) x D].
UEPO_HD int64_t derivative_grad_size(int64_t H, int64_t D) { return (2 * H - 3) * D; }

// ga += g * d div(a, b) / d(vel_a, acc_a) and, when gb != nullptr, the same for b, in
// derivative space (see derivative_grad_size); `derivatives_backward` maps that to the chunk.
// Norms at exactly zero get the zero subgradient, as in torch.linalg.vector_norm's backward.
template <typename T>
UEPO_HD void pair_divergence_grad(const Derivs<T>& a, const Derivs<T>& b, const StepWeights<T>& w,
                                  int64_t H, int64_t D, T eps, T g, T* ga, T* gb) {
  if (w.vel_total > T(0)) {
    const T gscale = g / w.vel_total;
    for (int64_t t = 0; t + 1 < H; ++t) {
      const T wt = w.vel(t);
      if (wt == T(0)) continue;
      const T* va = a.vel + t * D;
      const T* vb = b.vel + t * D;
      T s = 0;
      for (int64_t d = 0; d < D; ++d) s += (va[d] - vb[d]) * (va[d] - vb[d]);
      if (s == T(0)) continue;
      const T scale = gscale * wt / sqrt(s);
      T* out_a = ga + t * D;
      for (int64_t d = 0; d < D; ++d) out_a[d] += scale * (va[d] - vb[d]);
      if (gb) {
        T* out_b = gb + t * D;
        for (int64_t d = 0; d < D; ++d) out_b[d] -= scale * (va[d] - vb[d]);
      }
    }
  }
  if (w.acc_total > T(0)) {
    const T gscale = g / w.acc_total;
    T* acc_ga = ga + (H - 1) * D;
    T* acc_gb = gb ? gb + (H - 1) * D : nullptr;
    for (int64_t t = 1; t + 1 < H; ++t) {
      const T wt = w.acc(t);
      if (wt == T(0)) continue;
      const int64_t k = t - 1;
      const T* ca = a.acc + k * D;
      const T* cb = b.acc + k * D;
      const T na = a.acc_norm[k], nb = b.acc_norm[k];
      T dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += ca[d] * cb[d];
      // term = 1 - (dot + eps) / q, q = |ca||cb| + eps:
      //   d term / d ca = -cb / q + (dot + eps) / q^2 * |cb| ca / |ca|, and symmetrically for cb.
      const T inv_q = T(1) / (na * nb + eps);
      const T cross = -gscale * wt * inv_q;
      const T self_scale = gscale * wt * (dot + eps) * inv_q * inv_q;
      const T self_a = self_scale * nb * a.acc_inv_norm[k];
      T* out_a = acc_ga + k * D;
      for (int64_t d = 0; d < D; ++d) out_a[d] += cross * cb[d] + self_a * ca[d];
      if (acc_gb) {
        const T self_b = self_scale * na * b.acc_inv_norm[k];
        T* out_b = acc_gb + k * D;
        for (int64_t d = 0; d < D; ++d) out_b[d] += cross * ca[d] + self_b * cb[d];
      }
    }
  }
}

// grad_chunk += the adjoint of chunk_derivatives applied to a derivative-space gradient gd.
// Gather form: each chunk entry is written once (v_t pulls on a_{t+1}, a_t; c_t on a_{t+1},
// a_t, a_{t-1}; c_t is stored at t - 1).
template <typename T>
UEPO_HD void derivatives_backward(const T* gd, int64_t H, int64_t D, T* grad_chunk) {
  const T* gv = gd;
  const T* gc = gd + (H - 1) * D;
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t d = 0; d < D; ++d) {
      T s = 0;
      if (h >= 1) s += gv[(h - 1) * D + d];
      if (h + 1 < H) s -= gv[h * D + d];
      if (h >= 2) s += gc[(h - 2) * D + d];
      if (h >= 1 && h + 1 < H) s -= T(2) * gc[(h - 1) * D + d];
      if (h + 2 < H) s += gc[h * D + d];
      grad_chunk[h * D + d] += s;
    }
  }
}

// min_{j != i} div(chunk i, chunk j) over n chunks whose derivatives lie back to back at
// `derivs`; +inf when n == 1. No mask: the sampler's chunks are always whole.
template <typename T>
UEPO_HD T nearest_competitor_divergence(const T* derivs, int64_t i, int64_t n, int64_t H,
                                        int64_t D, T eps) {
  const int64_t S = derivative_size(H, D);
  const StepWeights<T> w(nullptr, H);
  const Derivs<T> a(derivs + i * S, H, D);
  T best = INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    if (j == i) continue;
    const T d = pair_divergence(a, Derivs<T>(derivs + j * S, H, D), w, H, D, eps);
    best = d < best ? d : best;
  }
  return best;
}

// Adaptive perturbation scale sigma_i = eta * max(0, tau - d_i) / tau (0 when tau <= 0).
template <typename T>
UEPO_HD T perturbation_scale(T d, T tau, T eta) {
  if (!(tau > T(0)) || !(d < tau)) return T(0);
  return eta * (tau - d) / tau;
}

template <typename T>
UEPO_HD T clip_unit(T x) {
  return x < T(-1) ? T(-1) : (x > T(1) ? T(1) : x);
}

// Mish(x) = x tanh(softplus(x)) = x * n / (n + 2) with n = e^x (e^x + 2): one exp instead of
// exp + log1p + tanh. For x > 20, tanh(softplus(x)) == 1 in float and double.
template <typename T>
UEPO_HD T mish(T x) {
  if (x > T(20)) return x;
  const T e = exp(x);
  const T n = e * (e + T(2));
  return x * n / (n + T(2));
}

}  // namespace uepo
