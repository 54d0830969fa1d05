// CUDA kernels of the pairwise divergence: one thread per chunk computes its derivatives, then
// one thread per pair (forward) or per chunk (backward, summing over its competitors, so no
// atomics) reads them. The math is uepo/divergence.h, shared with the CPU kernels.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "uepo/divergence.h"
#include "uepo/ops.h"

namespace uepo {
namespace {

constexpr int kThreads = 128;

int blocks_for(int64_t items) { return int((items + kThreads - 1) / kThreads); }

template <typename T>
__global__ void derivatives_kernel(const T* __restrict__ chunks, int64_t chunks_count, int64_t H,
                                   int64_t D, T* __restrict__ derivs) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= chunks_count) return;
  chunk_derivatives(chunks + c * H * D, H, D, derivs + c * derivative_size(H, D));
}

template <typename T>
__global__ void divergence_forward_kernel(const T* __restrict__ derivs, const T* __restrict__ mask,
                                          int64_t B, int64_t n, int64_t H, int64_t D, T eps,
                                          T* __restrict__ out) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= B * n * n) return;
  const int64_t b = idx / (n * n), i = (idx / n) % n, j = idx % n;
  if (i == j) {
    out[idx] = T(0);
    return;
  }
  const int64_t S = derivative_size(H, D);
  const StepWeights<T> w(mask ? mask + b * H : nullptr, H);
  out[idx] = pair_divergence(Derivs<T>(derivs + (b * n + i) * S, H, D),
                             Derivs<T>(derivs + (b * n + j) * S, H, D), w, H, D, eps);
}

template <typename T>
__global__ void divergence_backward_kernel(const T* __restrict__ derivs, const T* __restrict__ mask,
                                           const T* __restrict__ grad, int64_t B, int64_t n,
                                           int64_t H, int64_t D, T eps, T* __restrict__ gd,
                                           T* __restrict__ out) {
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r >= B * n) return;
  const int64_t b = r / n, i = r % n;
  const int64_t S = derivative_size(H, D), G = derivative_grad_size(H, D);
  const StepWeights<T> w(mask ? mask + b * H : nullptr, H);
  const Derivs<T> di(derivs + r * S, H, D);
  T* gdi = gd + r * G;
  for (int64_t j = 0; j < n; ++j) {
    if (j == i) continue;
    const T g = grad[(b * n + i) * n + j] + grad[(b * n + j) * n + i];
    if (g == T(0)) continue;
    pair_divergence_grad(di, Derivs<T>(derivs + (b * n + j) * S, H, D), w, H, D, eps, g, gdi,
                         static_cast<T*>(nullptr));
  }
  derivatives_backward(gdi, H, D, out + r * H * D);
}

at::Tensor derivatives_of(const at::Tensor& chunks) {
  const int64_t count = chunks.size(0) * chunks.size(1), H = chunks.size(2), D = chunks.size(3);
  auto derivs = at::empty({count * derivative_size(H, D)}, chunks.options());
  AT_DISPATCH_FLOATING_TYPES(chunks.scalar_type(), "uepo_derivatives_cuda", [&] {
    derivatives_kernel<scalar_t><<<blocks_for(count), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        chunks.data_ptr<scalar_t>(), count, H, D, derivs.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return derivs;
}

at::Tensor divergence_cuda(const at::Tensor& chunks_in, const std::optional<at::Tensor>& mask_in,
                           double eps) {
  const auto mask = check_divergence_inputs(chunks_in, mask_in, "uepo.divergence");
  const c10::cuda::CUDAGuard guard(chunks_in.device());
  const auto chunks = chunks_in.contiguous();
  const int64_t B = chunks.size(0), n = chunks.size(1), H = chunks.size(2), D = chunks.size(3);
  auto out = at::empty({B, n, n}, chunks.options());
  if (out.numel() == 0) return out;
  const auto derivs = derivatives_of(chunks);
  AT_DISPATCH_FLOATING_TYPES(chunks.scalar_type(), "uepo_divergence_cuda", [&] {
    divergence_forward_kernel<scalar_t><<<blocks_for(B * n * n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        derivs.data_ptr<scalar_t>(), mask.defined() ? mask.data_ptr<scalar_t>() : nullptr, B, n, H, D,
        scalar_t(eps), out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor divergence_backward_cuda(const at::Tensor& grad_in, const at::Tensor& chunks_in,
                                    const std::optional<at::Tensor>& mask_in, double eps) {
  const auto mask = check_divergence_inputs(chunks_in, mask_in, "uepo.divergence_backward");
  const c10::cuda::CUDAGuard guard(chunks_in.device());
  const auto chunks = chunks_in.contiguous();
  const int64_t B = chunks.size(0), n = chunks.size(1), H = chunks.size(2), D = chunks.size(3);
  TORCH_CHECK(grad_in.sizes() == at::IntArrayRef({B, n, n}),
              "uepo.divergence_backward: grad must have shape (B, n, n), got ", grad_in.sizes());
  TORCH_CHECK(grad_in.device() == chunks.device(), "uepo.divergence_backward: grad is on ",
              grad_in.device(), " but chunks on ", chunks.device());
  const auto grad = grad_in.to(chunks.scalar_type()).contiguous();
  auto out = at::zeros_like(chunks);
  if (out.numel() == 0) return out;
  const auto derivs = derivatives_of(chunks);
  auto gd = at::zeros({B * n * derivative_grad_size(H, D)}, chunks.options());
  AT_DISPATCH_FLOATING_TYPES(chunks.scalar_type(), "uepo_divergence_backward_cuda", [&] {
    divergence_backward_kernel<scalar_t><<<blocks_for(B * n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        derivs.data_ptr<scalar_t>(), mask.defined() ? mask.data_ptr<scalar_t>() : nullptr,
        grad.data_ptr<scalar_t>(), B, n, H, D, scalar_t(eps), gd.data_ptr<scalar_t>(),
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace uepo

TORCH_LIBRARY_IMPL(uepo, CUDA, m) {
  m.impl("divergence", &uepo::divergence_cuda);
  m.impl("divergence_backward", &uepo::divergence_backward_cuda);
}
