// CPU kernels of the pairwise divergence, forward and backward, parallel over the batch.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "uepo/divergence.h"
#include "uepo/ops.h"

namespace uepo {
namespace {

at::Tensor divergence_cpu(const at::Tensor& chunks_in, const std::optional<at::Tensor>& mask_in,
                          double eps) {
  const auto mask = check_divergence_inputs(chunks_in, mask_in, "uepo.divergence");
  const auto chunks = chunks_in.contiguous();
  const int64_t B = chunks.size(0), n = chunks.size(1), H = chunks.size(2), D = chunks.size(3);
  auto out = at::zeros({B, n, n}, chunks.options());
  AT_DISPATCH_FLOATING_TYPES(chunks.scalar_type(), "uepo_divergence_cpu", [&] {
    const auto* a = chunks.data_ptr<scalar_t>();
    const scalar_t* m = mask.defined() ? mask.data_ptr<scalar_t>() : nullptr;
    auto* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t* ab = a + b * n * H * D;
        const scalar_t* mb = m ? m + b * H : nullptr;
        for (int64_t i = 0; i < n; ++i) {
          for (int64_t j = i + 1; j < n; ++j) {
            const scalar_t v = pair_divergence(ab + i * H * D, ab + j * H * D, mb, H, D, scalar_t(eps));
            o[(b * n + i) * n + j] = v;
            o[(b * n + j) * n + i] = v;
          }
        }
      }
    });
  });
  return out;
}

at::Tensor divergence_backward_cpu(const at::Tensor& grad_in, const at::Tensor& chunks_in,
                                   const std::optional<at::Tensor>& mask_in, double eps) {
  const auto mask = check_divergence_inputs(chunks_in, mask_in, "uepo.divergence_backward");
  const auto chunks = chunks_in.contiguous();
  const int64_t B = chunks.size(0), n = chunks.size(1), H = chunks.size(2), D = chunks.size(3);
  TORCH_CHECK(grad_in.sizes() == at::IntArrayRef({B, n, n}),
              "uepo.divergence_backward: grad must have shape (B, n, n), got ", grad_in.sizes());
  const auto grad = grad_in.to(chunks.scalar_type()).contiguous();
  auto out = at::zeros_like(chunks);
  AT_DISPATCH_FLOATING_TYPES(chunks.scalar_type(), "uepo_divergence_backward_cpu", [&] {
    const auto* a = chunks.data_ptr<scalar_t>();
    const auto* g = grad.data_ptr<scalar_t>();
    const scalar_t* m = mask.defined() ? mask.data_ptr<scalar_t>() : nullptr;
    auto* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, B * n, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / n, i = r % n;
        const scalar_t* ab = a + b * n * H * D;
        const scalar_t* mb = m ? m + b * H : nullptr;
        // div is symmetric, so entry (i, j) and (j, i) both pull on chunk i the same way.
        for (int64_t j = 0; j < n; ++j) {
          if (j == i) continue;
          const scalar_t gij = g[(b * n + i) * n + j] + g[(b * n + j) * n + i];
          if (gij == scalar_t(0)) continue;
          pair_divergence_grad_first(ab + i * H * D, ab + j * H * D, mb, H, D, scalar_t(eps), gij,
                                     o + r * H * D);
        }
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace uepo

TORCH_LIBRARY_IMPL(uepo, CPU, m) {
  m.impl("divergence", &uepo::divergence_cpu);
  m.impl("divergence_backward", &uepo::divergence_backward_cpu);
}
