// CPU kernels of the fused sampler: vectorised linear layers with fused epilogues (cpu/simd.cpp),
// LayerNorm(+Mish), and the DDIM step with the in-loop divergence and adaptive perturbation.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "uepo/cpu_simd.h"
#include "uepo/divergence.h"
#include "uepo/ops.h"

namespace uepo {
namespace {

constexpr int64_t kRowGrain = 32;  // rows per parallel task: amortises the fork cost

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

void init_rows_cpu(at::Tensor& h, const at::Tensor& state_proj, const at::Tensor& step_bias,
                   int64_t seeds) {
  const int64_t R = h.size(0), W = h.size(1);
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "uepo_init_rows_cpu", [&] {
    auto* hp = h.data_ptr<scalar_t>();
    const auto* sp = state_proj.data_ptr<scalar_t>();
    const auto* cp = step_bias.data_ptr<scalar_t>();
    at::parallel_for(0, R, kRowGrain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* srow = sp + (r / seeds) * W;
        scalar_t* hrow = hp + r * W;
        for (int64_t k = 0; k < W; ++k) hrow[k] = srow[k] + cp[k];
      }
    });
  });
}

}  // namespace

// The register-tiled GEMM keeps 16 accumulators of 512 bits in registers: with AVX-512 (32 zmm) it
// runs at the BLAS rate, but on a 256-bit machine each accumulator takes two of 16 ymm registers
// and the tile spills (measured on an AVX2 EPYC: 6x slower than the PyTorch reference at B = 32).
// There the GEMM goes to the BLAS torch was built with and only the epilogue (Mish) stays ours.
// UEPO_CPU_GEMM=tiles|blas forces either path (tests).
bool cpu_gemm_uses_blas() {
  static const bool blas = [] {
    const char* forced = std::getenv("UEPO_CPU_GEMM");
    if (forced != nullptr && std::strcmp(forced, "tiles") == 0) return false;
    if (forced != nullptr && std::strcmp(forced, "blas") == 0) return true;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return !__builtin_cpu_supports("avx512f");
#else
    return true;
#endif
  }();
  return blas;
}

namespace {

void linear_cpu(const at::Tensor& x, const at::Tensor& wt, const at::Tensor& bias, at::Tensor& y,
                bool accumulate, bool mish) {
  const int64_t M = x.size(0), K = x.size(1), N = wt.size(1);
  if (cpu_gemm_uses_blas()) {  // y = (accumulate ? y : 0) + bias + x @ wt, then Mish
    if (!accumulate) {
      bias.defined() ? y.copy_(bias.expand_as(y)) : y.zero_();
    } else if (bias.defined()) {
      y.add_(bias);
    }
    y.addmm_(x, wt);
    if (mish) {
      AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "uepo_mish_cpu", [&] {
        auto* yp = y.data_ptr<scalar_t>();
        const int64_t ldy = y.stride(0);
        at::parallel_for(0, M, kRowGrain, [&](int64_t r0, int64_t r1) {
          cpu::mish_rows(yp + r0 * ldy, r1 - r0, N, ldy);
        });
      });
    }
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "uepo_linear_cpu", [&] {
    const auto* xp = x.data_ptr<scalar_t>();
    const auto* wp = wt.data_ptr<scalar_t>();
    const auto* bp = ptr_or_null<scalar_t>(bias);
    auto* yp = y.data_ptr<scalar_t>();
    const int64_t ldx = x.stride(0), ldy = y.stride(0);
    at::parallel_for(0, M, kRowGrain, [&](int64_t r0, int64_t r1) {
      cpu::linear(xp + r0 * ldx, ldx, r1 - r0, K, wp, N, bp, accumulate, mish, yp + r0 * ldy, ldy);
    });
  });
}

void layernorm_cpu(const at::Tensor& h, const at::Tensor& gamma, const at::Tensor& beta,
                   at::Tensor& out, bool mish) {
  const int64_t R = h.size(0), W = h.size(1);
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "uepo_layernorm_cpu", [&] {
    const auto* hp = h.data_ptr<scalar_t>();
    const auto* g = gamma.data_ptr<scalar_t>();
    const auto* b = beta.data_ptr<scalar_t>();
    auto* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, R, kRowGrain, [&](int64_t r0, int64_t r1) {
      cpu::layernorm(hp + r0 * W, r1 - r0, W, g, b, mish, op + r0 * W);
    });
  });
}

void ddim_step_cpu(at::Tensor& x, const at::Tensor& eps_hat, at::Tensor& x0, at::Tensor& d,
                   const at::Tensor& perturb, at::Tensor& div_out, const SamplerShape& sh,
                   const StepParams& p) {
  const int64_t n = sh.seeds, H = sh.horizon, D = sh.action_dim, Hd = sh.chunk_dim, K = sh.steps;
  const int64_t perturb_batch_stride = sh.perturb_per_state ? n * K * Hd : 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "uepo_ddim_step_cpu", [&] {
    using T = scalar_t;
    auto* xp = x.data_ptr<T>();
    const auto* ep = eps_hat.data_ptr<T>();
    auto* x0p = x0.data_ptr<T>();
    auto* dp = d.data_ptr<T>();
    const auto* zp = perturb.data_ptr<T>();
    T* divp = div_out.numel() > 0 ? div_out.data_ptr<T>() : nullptr;
    const T sab = T(p.sqrt_ab), s1m = T(p.sqrt_1m_ab);
    const T sab_prev = T(p.sqrt_ab_prev), s1m_prev = T(p.sqrt_1m_ab_prev);
    const int64_t S = derivative_size(H, D);
    at::parallel_for(0, sh.batch, 8, [&](int64_t b0, int64_t b1) {
      std::vector<T> derivs(p.compute_div ? n * S : 0);
      for (int64_t b = b0; b < b1; ++b) {
        T* xb = x0p + b * n * Hd;
        for (int64_t e = 0; e < n * Hd; ++e) {
          const int64_t k = b * n * Hd + e;
          xb[e] = clip_unit((xp[k] - s1m * ep[k]) / sab);
        }
        if (p.compute_div) {
          for (int64_t i = 0; i < n; ++i) chunk_derivatives(xb + i * Hd, H, D, derivs.data() + i * S);
          for (int64_t i = 0; i < n; ++i) {
            dp[b * n + i] = nearest_competitor_divergence(derivs.data(), i, n, H, D, T(p.eps));
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
          for (int64_t e = 0; e < Hd; ++e) xp[r * Hd + e] = sab_prev * xi[e] + s1m_prev * ep[r * Hd + e];
        }
      }
    });
  });
}

const SamplerKernels kCpuKernels{&init_rows_cpu, &linear_cpu, &layernorm_cpu, &ddim_step_cpu};

std::tuple<at::Tensor, at::Tensor> multiseed_sample_cpu(
    const at::Tensor& cond, const at::Tensor& noise, const at::Tensor& perturb,
    at::TensorList weights, at::IntArrayRef timesteps, at::ArrayRef<double> alpha_bars,
    int64_t horizon, double eta, double tau, double eps, bool return_div, c10::string_view prediction) {
  return multiseed_sample_impl(kCpuKernels, cond, noise, perturb, weights, timesteps, alpha_bars,
                               horizon, eta, tau, eps, return_div, prediction);
}

}  // namespace
}  // namespace uepo

TORCH_LIBRARY_IMPL(uepo, CPU, m) { m.impl("multiseed_sample", &uepo::multiseed_sample_cpu); }
