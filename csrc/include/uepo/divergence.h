// Velocity/acceleration divergence between two action chunks (SPEC §3), shared by the CPU and
// CUDA kernels. A chunk is H x D, row-major. The optional mask m (length H, 0/1 weights) marks
// valid steps: a velocity term needs both of its steps, an acceleration term all three.
//
//   div(a, b) = mean_t |v^a_t - v^b_t|_2
//             + mean_t (1 - (<c^a_t, c^b_t> + eps) / (|c^a_t| |c^b_t| + eps))
//
// Everything is computed on the fly from the chunks, with no scratch arrays, so one GPU thread
// can run a whole pair.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define UEPO_HD __host__ __device__ __forceinline__
#else
#define UEPO_HD inline
#endif

namespace uepo {

using std::exp;
using std::sqrt;

template <typename T>
UEPO_HD T velocity_weight(const T* m, int64_t t) {  // v_t = a_{t+1} - a_t
  return m == nullptr ? T(1) : m[t] * m[t + 1];
}

template <typename T>
UEPO_HD T acceleration_weight(const T* m, int64_t t) {  // c_t = a_{t+1} - 2 a_t + a_{t-1}
  return m == nullptr ? T(1) : m[t - 1] * m[t] * m[t + 1];
}

template <typename T>
UEPO_HD T velocity(const T* a, int64_t t, int64_t d, int64_t D) {
  return a[(t + 1) * D + d] - a[t * D + d];
}

template <typename T>
UEPO_HD T acceleration(const T* a, int64_t t, int64_t d, int64_t D) {
  return a[(t + 1) * D + d] - T(2) * a[t * D + d] + a[(t - 1) * D + d];
}

template <typename T>
UEPO_HD T acceleration_sq_norm(const T* a, int64_t t, int64_t D) {
  T s = 0;
  for (int64_t d = 0; d < D; ++d) {
    const T c = acceleration(a, t, d, D);
    s += c * c;
  }
  return s;
}

// div(a, b); a and b are H x D chunks, m is a length-H mask or nullptr.
template <typename T>
UEPO_HD T pair_divergence(const T* a, const T* b, const T* m, int64_t H, int64_t D, T eps) {
  T vel_sum = 0, vel_w = 0;
  for (int64_t t = 0; t + 1 < H; ++t) {
    const T w = velocity_weight(m, t);
    if (w == T(0)) continue;
    T s = 0;
    for (int64_t d = 0; d < D; ++d) {
      const T diff = velocity(a, t, d, D) - velocity(b, t, d, D);
      s += diff * diff;
    }
    vel_sum += w * sqrt(s);
    vel_w += w;
  }
  T acc_sum = 0, acc_w = 0;
  for (int64_t t = 1; t + 1 < H; ++t) {
    const T w = acceleration_weight(m, t);
    if (w == T(0)) continue;
    T dot = 0, na = 0, nb = 0;
    for (int64_t d = 0; d < D; ++d) {
      const T ca = acceleration(a, t, d, D), cb = acceleration(b, t, d, D);
      dot += ca * cb;
      na += ca * ca;
      nb += cb * cb;
    }
    acc_sum += w * (T(1) - (dot + eps) / (sqrt(na) * sqrt(nb) + eps));
    acc_w += w;
  }
  T out = 0;
  if (vel_w > T(0)) out += vel_sum / vel_w;
  if (acc_w > T(0)) out += acc_sum / acc_w;
  return out;
}

// grad_a += g * d div(a, b) / d a. Norms at exactly zero get the zero subgradient, as in
// torch.linalg.vector_norm's backward.
template <typename T>
UEPO_HD void pair_divergence_grad_first(const T* a, const T* b, const T* m, int64_t H, int64_t D,
                                        T eps, T g, T* grad_a) {
  T vel_w = 0, acc_w = 0;
  for (int64_t t = 0; t + 1 < H; ++t) vel_w += velocity_weight(m, t);
  for (int64_t t = 1; t + 1 < H; ++t) acc_w += acceleration_weight(m, t);

  if (vel_w > T(0)) {
    for (int64_t t = 0; t + 1 < H; ++t) {
      const T w = velocity_weight(m, t);
      if (w == T(0)) continue;
      T s = 0;
      for (int64_t d = 0; d < D; ++d) {
        const T diff = velocity(a, t, d, D) - velocity(b, t, d, D);
        s += diff * diff;
      }
      const T norm = sqrt(s);
      if (norm == T(0)) continue;
      const T scale = g * w / (vel_w * norm);
      for (int64_t d = 0; d < D; ++d) {
        const T gv = scale * (velocity(a, t, d, D) - velocity(b, t, d, D));
        grad_a[(t + 1) * D + d] += gv;
        grad_a[t * D + d] -= gv;
      }
    }
  }
  if (acc_w > T(0)) {
    for (int64_t t = 1; t + 1 < H; ++t) {
      const T w = acceleration_weight(m, t);
      if (w == T(0)) continue;
      T dot = 0, na2 = 0, nb2 = 0;
      for (int64_t d = 0; d < D; ++d) {
        const T ca = acceleration(a, t, d, D), cb = acceleration(b, t, d, D);
        dot += ca * cb;
        na2 += ca * ca;
        nb2 += cb * cb;
      }
      const T na = sqrt(na2), nb = sqrt(nb2);
      const T denom = na * nb + eps;
      // term = 1 - (dot + eps) / denom; d term / d c_a = -cb / denom + (dot + eps) / denom^2 * dq
      // with dq = nb * c_a / na (zero when na == 0).
      const T coef_b = -g * w / (acc_w * denom);
      const T coef_a = na == T(0) ? T(0) : g * w * (dot + eps) * nb / (acc_w * denom * denom * na);
      for (int64_t d = 0; d < D; ++d) {
        const T gc = coef_b * acceleration(b, t, d, D) + coef_a * acceleration(a, t, d, D);
        grad_a[(t + 1) * D + d] += gc;
        grad_a[t * D + d] -= T(2) * gc;
        grad_a[(t - 1) * D + d] += gc;
      }
    }
  }
}

// Nearest competitor of chunk i among the n chunks at `chunks` (n x H x D): min_{j != i} div.
// Returns +inf when n == 1.
template <typename T>
UEPO_HD T nearest_competitor_divergence(const T* chunks, int64_t i, int64_t n, int64_t H,
                                        int64_t D, T eps) {
  T best = INFINITY;
  const int64_t stride = H * D;
  for (int64_t j = 0; j < n; ++j) {
    if (j == i) continue;
    const T d = pair_divergence(chunks + i * stride, chunks + j * stride, (const T*)nullptr, H, D, eps);
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
// exp + log1p + tanh. For x > 20, tanh(softplus(x)) == 1 in double precision.
template <typename T>
UEPO_HD T mish(T x) {
  if (x > T(20)) return x;
  const T e = exp(x);
  const T n = e * (e + T(2));
  return x * n / (n + T(2));
}

}  // namespace uepo
