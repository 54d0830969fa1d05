// CPU elementwise kernels of the fused sampler; the GEMMs run through ATen (MKL/oneDNN).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "uepo/divergence.h"
#include "uepo/ops.h"

namespace uepo {
namespace {

constexpr int64_t kRowGrain = 16;  // rows per parallel task: amortises the fork cost

void add_state_and_step_bias_cpu(at::Tensor& h, const at::Tensor& state_proj,
                                 const at::Tensor& step_bias, int64_t seeds) {
  const int64_t R = h.size(0), W = h.size(1);
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "uepo_add_bias_cpu", [&] {
    auto* hp = h.data_ptr<scalar_t>();
    const auto* sp = state_proj.data_ptr<scalar_t>();
    const auto* cp = step_bias.data_ptr<scalar_t>();
    at::parallel_for(0, R, kRowGrain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* srow = sp + (r / seeds) * W;
        scalar_t* hrow = hp + r * W;
        for (int64_t k = 0; k < W; ++k) hrow[k] += srow[k] + cp[k];
      }
    });
  });
}

void layernorm_cpu(const at::Tensor& h, const at::Tensor& gamma, const at::Tensor& beta,
                   at::Tensor& out, bool apply_mish) {
  const int64_t R = h.size(0), W = h.size(1);
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "uepo_layernorm_cpu", [&] {
    const auto* hp = h.data_ptr<scalar_t>();
    const auto* g = gamma.data_ptr<scalar_t>();
    const auto* be = beta.data_ptr<scalar_t>();
    auto* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, R, kRowGrain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* x = hp + r * W;
        scalar_t* y = op + r * W;
        scalar_t mean = 0;
        for (int64_t k = 0; k < W; ++k) mean += x[k];
        mean /= scalar_t(W);
        scalar_t var = 0;
        for (int64_t k = 0; k < W; ++k) var += (x[k] - mean) * (x[k] - mean);
        const scalar_t inv = scalar_t(1) / std::sqrt(var / scalar_t(W) + scalar_t(1e-5));
        for (int64_t k = 0; k < W; ++k) {
          const scalar_t v = (x[k] - mean) * inv * g[k] + be[k];
          y[k] = apply_mish ? mish(v) : v;
        }
      }
    });
  });
}

void mish_cpu(at::Tensor& t) {
  // t may be a column slice of a wider buffer: walk it row by row.
  const int64_t R = t.size(0), W = t.size(1), stride = t.stride(0);
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "uepo_mish_cpu", [&] {
    auto* p = t.data_ptr<scalar_t>();
    at::parallel_for(0, R, kRowGrain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        scalar_t* row = p + r * stride;
        for (int64_t k = 0; k < W; ++k) row[k] = mish(row[k]);
      }
    });
  });
}

void ddim_step_cpu(at::Tensor& x, const at::Tensor& eps_hat, at::Tensor& x0, at::Tensor& d,
                   const at::Tensor& perturb, at::Tensor& div_out, const SamplerShape& sh,
                   const StepParams& p) {
  const int64_t n = sh.seeds, Hd = sh.chunk_dim, K = sh.steps;
  const int64_t perturb_batch_stride = sh.perturb_per_state ? n * K * Hd : 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "uepo_ddim_step_cpu", [&] {
    using T = scalar_t;
    auto* xp = x.data_ptr<T>();
    const auto* ep = eps_hat.data_ptr<T>();
    auto* x0p = x0.data_ptr<T>();
    auto* dp = d.data_ptr<T>();
    const auto* zp = perturb.data_ptr<T>();
    T* divp = div_out.defined() && div_out.numel() > 0 ? div_out.data_ptr<T>() : nullptr;
    const T sab = T(p.sqrt_ab), s1m = T(p.sqrt_1m_ab);
    const T sab_prev = T(p.sqrt_ab_prev), s1m_prev = T(p.sqrt_1m_ab_prev);
    at::parallel_for(0, sh.batch, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        T* xb = x0p + b * n * Hd;
        for (int64_t e = 0; e < n * Hd; ++e) {
          const int64_t k = b * n * Hd + e;
          xb[e] = clip_unit((xp[k] - s1m * ep[k]) / sab);
        }
        if (p.compute_div) {
          for (int64_t i = 0; i < n; ++i) {
            dp[b * n + i] = nearest_competitor_divergence(xb, i, n, sh.horizon, sh.action_dim, T(p.eps));
            if (divp) divp[(b * n + i) * K + p.step] = dp[b * n + i];
          }
        }
        for (int64_t i = 0; i < n; ++i) {
          T* xi = xb + i * Hd;
          const T sigma = p.perturb ? perturbation_scale(dp[b * n + i], T(p.tau), T(p.eta)) : T(0);
          if (sigma > T(0)) {
            const T* z = zp + b * perturb_batch_stride + (i * K + p.step) * Hd;
            for (int64_t e = 0; e < Hd; ++e) xi[e] = clip_unit(xi[e] + sigma * z[e]);
          }
          const int64_t r = b * n + i;
          for (int64_t e = 0; e < Hd; ++e) {
            xp[r * Hd + e] = sab_prev * xi[e] + s1m_prev * ep[r * Hd + e];
          }
        }
      }
    });
  });
}

const SamplerKernels kCpuKernels{&add_state_and_step_bias_cpu, &layernorm_cpu, &mish_cpu,
                                 &ddim_step_cpu};

std::tuple<at::Tensor, at::Tensor> multiseed_sample_cpu(
    const at::Tensor& cond, const at::Tensor& noise, const at::Tensor& perturb,
    at::TensorList weights, at::IntArrayRef timesteps, at::ArrayRef<double> alpha_bars,
    int64_t horizon, double eta, double tau, double eps, bool return_div) {
  return multiseed_sample_impl(kCpuKernels, cond, noise, perturb, weights, timesteps, alpha_bars,
                               horizon, eta, tau, eps, return_div);
}

}  // namespace
}  // namespace uepo

TORCH_LIBRARY_IMPL(uepo, CPU, m) { m.impl("multiseed_sample", &uepo::multiseed_sample_cpu); }
