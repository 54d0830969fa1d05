// CUDA kernels of the fused sampler. The GEMMs run through cuBLAS (ATen); the elementwise work
// of each step is fused into a few launches: row init, Mish, LayerNorm(+Mish) with one warp per
// row, and the DDIM step (x0, per-seed derivatives, nearest-competitor divergence, perturbation,
// update). The host driver is shared with the CPU backend (ops.cpp).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "uepo/divergence.h"
#include "uepo/ops.h"

namespace uepo {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

int blocks_for(int64_t items) { return int((items + kThreads - 1) / kThreads); }
cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

template <typename T>
__global__ void init_rows_kernel(T* __restrict__ h, const T* __restrict__ state_proj,
                                 const T* __restrict__ step_bias, int64_t R, int64_t W,
                                 int64_t seeds) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= R * W) return;
  const int64_t r = idx / W, k = idx % W;
  h[idx] = state_proj[(r / seeds) * W + k] + step_bias[k];
}

template <typename T>
__global__ void mish_kernel(T* __restrict__ p, int64_t R, int64_t W, int64_t ld) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= R * W) return;
  T* e = p + (idx / W) * ld + idx % W;
  *e = mish(*e);
}

template <typename T>
__device__ T warp_sum(T v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// One warp per row: mean, then variance about it, then the affine map (+ Mish).
template <typename T>
__global__ void layernorm_kernel(const T* __restrict__ h, int64_t R, int64_t W,
                                 const T* __restrict__ gamma, const T* __restrict__ beta,
                                 bool apply_mish, T* __restrict__ out) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x / kWarp) + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= R) return;
  const T* x = h + row * W;
  T s = 0;
  for (int64_t k = lane; k < W; k += kWarp) s += x[k];
  const T mean = warp_sum(s) / T(W);
  T q = 0;
  for (int64_t k = lane; k < W; k += kWarp) q += (x[k] - mean) * (x[k] - mean);
  const T inv = T(1) / sqrt(warp_sum(q) / T(W) + T(1e-5));
  for (int64_t k = lane; k < W; k += kWarp) {
    const T y = (x[k] - mean) * inv * gamma[k] + beta[k];
    out[row * W + k] = apply_mish ? mish(y) : y;
  }
}

template <typename T>
__global__ void x0_kernel(const T* __restrict__ x, const T* __restrict__ eps_hat, int64_t count,
                          T sqrt_ab, T sqrt_1m_ab, T* __restrict__ x0) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= count) return;
  x0[idx] = clip_unit((x[idx] - sqrt_1m_ab * eps_hat[idx]) / sqrt_ab);
}

template <typename T>
__global__ void chunk_derivatives_kernel(const T* __restrict__ x0, int64_t R, int64_t H, int64_t D,
                                         T* __restrict__ derivs) {
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r >= R) return;
  chunk_derivatives(x0 + r * H * D, H, D, derivs + r * derivative_size(H, D));
}

template <typename T>
__global__ void nearest_competitor_kernel(const T* __restrict__ derivs, int64_t B, int64_t n,
                                          int64_t H, int64_t D, T eps, int64_t step, int64_t K,
                                          T* __restrict__ d, T* __restrict__ div_out) {
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r >= B * n) return;
  const int64_t b = r / n, i = r % n;
  const T v = nearest_competitor_divergence(derivs + b * n * derivative_size(H, D), i, n, H, D, eps);
  d[r] = v;
  if (div_out) div_out[r * K + step] = v;
}

// Perturb x0 (sigma from the seed's divergence) and take the DDIM step, one element per thread.
template <typename T>
__global__ void update_kernel(T* __restrict__ x, const T* __restrict__ eps_hat,
                              const T* __restrict__ x0, const T* __restrict__ d,
                              const T* __restrict__ perturb, int64_t R, int64_t n, int64_t Hd,
                              int64_t K, int64_t step, int64_t perturb_batch_stride, bool do_perturb,
                              T tau, T eta, T sqrt_ab_prev, T sqrt_1m_ab_prev) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= R * Hd) return;
  const int64_t r = idx / Hd, e = idx % Hd, b = r / n, i = r % n;
  T v = x0[idx];
  if (do_perturb) {
    const T sigma = perturbation_scale(d[r], tau, eta);
    if (sigma > T(0)) v = clip_unit(v + sigma * perturb[b * perturb_batch_stride + (i * K + step) * Hd + e]);
  }
  x[idx] = sqrt_ab_prev * v + sqrt_1m_ab_prev * eps_hat[idx];
}

void init_rows_cuda(at::Tensor& h, const at::Tensor& state_proj, const at::Tensor& step_bias,
                    int64_t seeds) {
  const int64_t R = h.size(0), W = h.size(1);
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "uepo_init_rows_cuda", [&] {
    init_rows_kernel<scalar_t><<<blocks_for(R * W), kThreads, 0, stream()>>>(
        h.data_ptr<scalar_t>(), state_proj.data_ptr<scalar_t>(), step_bias.data_ptr<scalar_t>(), R, W, seeds);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void linear_cuda(const at::Tensor& x, const at::Tensor& wt, const at::Tensor& bias, at::Tensor& y,
                 bool accumulate, bool apply_mish) {
  if (accumulate) {
    y.addmm_(x, wt);
    if (bias.defined()) y.add_(bias);
  } else if (bias.defined()) {
    at::addmm_out(y, bias, x, wt);
  } else {
    at::mm_out(y, x, wt);
  }
  if (!apply_mish) return;
  const int64_t R = y.size(0), W = y.size(1);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "uepo_mish_cuda", [&] {
    mish_kernel<scalar_t><<<blocks_for(R * W), kThreads, 0, stream()>>>(y.data_ptr<scalar_t>(), R, W, y.stride(0));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void layernorm_cuda(const at::Tensor& h, const at::Tensor& gamma, const at::Tensor& beta,
                    at::Tensor& out, bool apply_mish) {
  const int64_t R = h.size(0), W = h.size(1);
  constexpr int rows_per_block = kThreads / kWarp;
  const int blocks = int((R + rows_per_block - 1) / rows_per_block);
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "uepo_layernorm_cuda", [&] {
    layernorm_kernel<scalar_t><<<blocks, kThreads, 0, stream()>>>(
        h.data_ptr<scalar_t>(), R, W, gamma.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(), apply_mish,
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void ddim_step_cuda(at::Tensor& x, const at::Tensor& eps_hat, at::Tensor& x0, at::Tensor& d,
                    const at::Tensor& perturb, at::Tensor& div_out, const SamplerShape& sh,
                    const StepParams& p) {
  const int64_t n = sh.seeds, H = sh.horizon, D = sh.action_dim, Hd = sh.chunk_dim, K = sh.steps;
  const int64_t R = sh.batch * n;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "uepo_ddim_step_cuda", [&] {
    using T = scalar_t;
    x0_kernel<T><<<blocks_for(R * Hd), kThreads, 0, stream()>>>(
        x.data_ptr<T>(), eps_hat.data_ptr<T>(), R * Hd, T(p.sqrt_ab), T(p.sqrt_1m_ab), x0.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (p.compute_div) {
      auto derivs = at::empty({R * derivative_size(H, D)}, x.options());
      chunk_derivatives_kernel<T><<<blocks_for(R), kThreads, 0, stream()>>>(x0.data_ptr<T>(), R, H, D,
                                                                           derivs.data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      nearest_competitor_kernel<T><<<blocks_for(R), kThreads, 0, stream()>>>(
          derivs.data_ptr<T>(), sh.batch, n, H, D, T(p.eps), p.step, K, d.data_ptr<T>(),
          div_out.numel() > 0 ? div_out.data_ptr<T>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    update_kernel<T><<<blocks_for(R * Hd), kThreads, 0, stream()>>>(
        x.data_ptr<T>(), eps_hat.data_ptr<T>(), x0.data_ptr<T>(), d.data_ptr<T>(), perturb.data_ptr<T>(), R,
        n, Hd, K, p.step, sh.perturb_per_state ? n * K * Hd : 0, p.perturb, T(p.tau), T(p.eta),
        T(p.sqrt_ab_prev), T(p.sqrt_1m_ab_prev));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

const SamplerKernels kCudaKernels{&init_rows_cuda, &linear_cuda, &layernorm_cuda, &ddim_step_cuda};

std::tuple<at::Tensor, at::Tensor> multiseed_sample_cuda(
    const at::Tensor& cond, const at::Tensor& noise, const at::Tensor& perturb,
    at::TensorList weights, at::IntArrayRef timesteps, at::ArrayRef<double> alpha_bars,
    int64_t horizon, double eta, double tau, double eps, bool return_div, c10::string_view prediction) {
  const c10::cuda::CUDAGuard guard(cond.device());
  return multiseed_sample_impl(kCudaKernels, cond, noise, perturb, weights, timesteps, alpha_bars,
                               horizon, eta, tau, eps, return_div, prediction);
}

}  // namespace
}  // namespace uepo

TORCH_LIBRARY_IMPL(uepo, CUDA, m) { m.impl("multiseed_sample", &uepo::multiseed_sample_cuda); }
