// CPU kernels of the pairwise divergence, forward and backward, parallel over the batch. Each
// chunk's derivatives are computed once per state; the pairs then only read them.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "uepo/divergence.h"
#include "uepo/ops.h"

namespace uepo {
namespace {

constexpr int64_t kBatchGrain = 16;

// Calls f(std::integral_constant<int64_t, D>) for the common small action sizes, so that the
// inlined divergence loops unroll; f(-1 marker) with the runtime D otherwise.
template <typename F>
void with_static_dim(int64_t D, F&& f) {
  switch (D) {
    case 1: return f(std::integral_constant<int64_t, 1>{});
    case 2: return f(std::integral_constant<int64_t, 2>{});
    case 3: return f(std::integral_constant<int64_t, 3>{});
    case 4: return f(std::integral_constant<int64_t, 4>{});
    case 6: return f(std::integral_constant<int64_t, 6>{});
    case 7: return f(std::integral_constant<int64_t, 7>{});
    case 8: return f(std::integral_constant<int64_t, 8>{});
    default: return f(D);
  }
}

at::Tensor divergence_cpu(const at::Tensor& chunks_in, const std::optional<at::Tensor>& mask_in,
                          double eps) {
  const auto mask = check_divergence_inputs(chunks_in, mask_in, "uepo.divergence");
  const auto chunks = chunks_in.contiguous();
  const int64_t B = chunks.size(0), n = chunks.size(1), H = chunks.size(2);
  auto out = at::empty({B, n, n}, chunks.options());
  AT_DISPATCH_FLOATING_TYPES(chunks.scalar_type(), "uepo_divergence_cpu", [&] {
   with_static_dim(chunks.size(3), [&](auto Dc) {
    const int64_t D = Dc;
    using T = scalar_t;
    const T* a = chunks.data_ptr<T>();
    const T* m = mask.defined() ? mask.data_ptr<T>() : nullptr;
    T* o = out.data_ptr<T>();
    const int64_t S = derivative_size(H, D);
    at::parallel_for(0, B, kBatchGrain, [&](int64_t b0, int64_t b1) {
      std::vector<T> derivs(n * S);
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t i = 0; i < n; ++i) chunk_derivatives(a + (b * n + i) * H * D, H, D, derivs.data() + i * S);
        const StepWeights<T> w(m ? m + b * H : nullptr, H);
        T* ob = o + b * n * n;
        for (int64_t i = 0; i < n; ++i) {
          ob[i * n + i] = T(0);
          const Derivs<T> di(derivs.data() + i * S, H, D);
          for (int64_t j = i + 1; j < n; ++j) {
            const T v = pair_divergence(di, Derivs<T>(derivs.data() + j * S, H, D), w, H, D, T(eps));
            ob[i * n + j] = v;
            ob[j * n + i] = v;
          }
        }
      }
    });
   });
  });
  return out;
}

at::Tensor divergence_backward_cpu(const at::Tensor& grad_in, const at::Tensor& chunks_in,
                                   const std::optional<at::Tensor>& mask_in, double eps) {
  const auto mask = check_divergence_inputs(chunks_in, mask_in, "uepo.divergence_backward");
  const auto chunks = chunks_in.contiguous();
  const int64_t B = chunks.size(0), n = chunks.size(1), H = chunks.size(2);
  TORCH_CHECK(grad_in.sizes() == at::IntArrayRef({B, n, n}),
              "uepo.divergence_backward: grad must have shape (B, n, n), got ", grad_in.sizes());
  const auto grad = grad_in.to(chunks.scalar_type()).contiguous();
  auto out = at::zeros_like(chunks);
  AT_DISPATCH_FLOATING_TYPES(chunks.scalar_type(), "uepo_divergence_backward_cpu", [&] {
   with_static_dim(chunks.size(3), [&](auto Dc) {
    const int64_t D = Dc;
    using T = scalar_t;
    const T* a = chunks.data_ptr<T>();
    const T* g = grad.data_ptr<T>();
    const T* m = mask.defined() ? mask.data_ptr<T>() : nullptr;
    T* o = out.data_ptr<T>();
    const int64_t S = derivative_size(H, D);
    const int64_t G = derivative_grad_size(H, D);
    at::parallel_for(0, B, kBatchGrain, [&](int64_t b0, int64_t b1) {
      std::vector<T> derivs(n * S), gd(n * G);
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t i = 0; i < n; ++i) chunk_derivatives(a + (b * n + i) * H * D, H, D, derivs.data() + i * S);
        std::fill(gd.begin(), gd.end(), T(0));
        const StepWeights<T> w(m ? m + b * H : nullptr, H);
        const T* gb = g + b * n * n;
        // div is symmetric: entries (i, j) and (j, i) pull on the pair the same way.
        for (int64_t i = 0; i < n; ++i) {
          const Derivs<T> di(derivs.data() + i * S, H, D);
          for (int64_t j = i + 1; j < n; ++j) {
            const T gij = gb[i * n + j] + gb[j * n + i];
            if (gij == T(0)) continue;
            pair_divergence_grad(di, Derivs<T>(derivs.data() + j * S, H, D), w, H, D, T(eps), gij,
                                 gd.data() + i * G, gd.data() + j * G);
          }
        }
        for (int64_t i = 0; i < n; ++i) derivatives_backward(gd.data() + i * G, H, D, o + (b * n + i) * H * D);
      }
    });
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
