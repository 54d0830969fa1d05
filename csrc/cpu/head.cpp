// CPU kernel of uepo::residual_head. At the few rows of an acting step (B = 1 … 16 envs) each layer is
// a matrix-vector product done in place (cpu::matvec), without ATen's per-op allocation and
// dispatch; larger batches go to the ATen version, whose GEMMs are BLAS's.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "uepo/cpu_simd.h"
#include "uepo/ops.h"

namespace uepo {
namespace {

constexpr int64_t kMaxMatvecRows = 16;  // above this the GEMM path wins

template <typename T>
void head_rows(const at::Tensor& obs_n, const at::Tensor& base, const std::vector<at::Tensor>& head,
               int64_t trunk, T log_std_min, T log_std_max, const at::Tensor& z, at::Tensor& action,
               at::Tensor& mean, at::Tensor& scale) {
  const int64_t B = obs_n.size(0), d_s = obs_n.size(1), d_a = base.size(1);
  int64_t widest = d_s + d_a;
  for (int64_t l = 0; l < trunk; ++l) widest = std::max(widest, head[2 * l].size(0));
  std::vector<T> x(widest), y(widest), u(2 * d_a);
  const T half = T(0.5) * (log_std_max - log_std_min);
  for (int64_t r = 0; r < B; ++r) {
    const T* o = obs_n.data_ptr<T>() + r * obs_n.stride(0);
    const T* b = base.data_ptr<T>() + r * base.stride(0);
    for (int64_t k = 0; k < d_s; ++k) x[k] = o[k * obs_n.stride(1)];
    for (int64_t k = 0; k < d_a; ++k) x[d_s + k] = b[k * base.stride(1)];
    int64_t width = d_s + d_a;
    for (int64_t l = 0; l < trunk; ++l) {
      const at::Tensor& w = head[2 * l];
      cpu::matvec(w.data_ptr<T>(), x.data(), head[2 * l + 1].data_ptr<T>(), w.size(0), width, y.data());
      width = w.size(0);
      for (int64_t k = 0; k < width; ++k) x[k] = y[k] > T(0) ? y[k] : T(0);
    }
    cpu::matvec(head[2 * trunk].data_ptr<T>(), x.data(), head[2 * trunk + 1].data_ptr<T>(), d_a, width, u.data());
    cpu::matvec(head[2 * trunk + 2].data_ptr<T>(), x.data(), head[2 * trunk + 3].data_ptr<T>(), d_a, width,
                u.data() + d_a);
    T* a_out = action.data_ptr<T>() + r * d_a;
    T* m_out = mean.data_ptr<T>() + r * d_a;
    T* s_out = scale.data_ptr<T>() + r * d_a;
    const T* zr = z.data_ptr<T>() + r * z.stride(0);
    for (int64_t k = 0; k < d_a; ++k) {
      m_out[k] = b[k * base.stride(1)] + std::tanh(u[k]);
      s_out[k] = std::exp((std::tanh(u[d_a + k]) + T(1)) * half + log_std_min);
      a_out[k] = zr[k * z.stride(1)] * s_out[k] + m_out[k];
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> residual_head_cpu(const at::Tensor& obs_n, const at::Tensor& base,
                                                                 at::TensorList head, double log_std_min,
                                                                 double log_std_max, const at::Tensor& z) {
  const int64_t trunk = check_head_inputs(obs_n, base, head, z);
  if (obs_n.size(0) > kMaxMatvecRows) return residual_head_aten(obs_n, base, head, log_std_min, log_std_max, z);
  std::vector<at::Tensor> weights;  // contiguous (nn.Linear's are already: no copies)
  weights.reserve(head.size());
  for (const at::Tensor& t : head) weights.push_back(t.contiguous());
  at::Tensor action = at::empty_like(base, at::MemoryFormat::Contiguous);
  at::Tensor mean = at::empty_like(action), scale = at::empty_like(action);
  AT_DISPATCH_FLOATING_TYPES(obs_n.scalar_type(), "uepo_residual_head_cpu", [&] {
    head_rows<scalar_t>(obs_n, base, weights, trunk, scalar_t(log_std_min), scalar_t(log_std_max), z, action, mean,
                        scale);
  });
  return {action, mean, scale};
}

}  // namespace
}  // namespace uepo

TORCH_LIBRARY_IMPL(uepo, CPU, m) { m.impl("residual_head", &uepo::residual_head_cpu); }
