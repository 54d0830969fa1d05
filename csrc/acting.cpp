// Phase E's acting, per env step: uepo::residual_head (the residual Gaussian head and its draw) and
// uepo::acting_step (normalise the state histories, the fused sampler for sub-policy i, the head).
// acting_step is composite: it calls the two ops through the dispatcher, so it runs on every device
// they have kernels for, as one call from Python (at B = 1 the ~20 Python calls of an unfused step
// cost about as much as the head's matmuls). The head's CPU kernel is cpu/head.cpp; here its checks
// and the ATen version that CUDA and large batches run.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <tuple>

#include "uepo/ops.h"

namespace uepo {

int64_t check_head_inputs(const at::Tensor& obs_n, const at::Tensor& base, at::TensorList head,
                          const at::Tensor& z) {
  constexpr const char* op = "uepo::residual_head";
  TORCH_CHECK(obs_n.dim() == 2 && base.dim() == 2 && obs_n.size(0) == base.size(0), op,
              ": obs_n must be (B, d_s) and base (B, d_a), got ", obs_n.sizes(), " and ", base.sizes());
  TORCH_CHECK(z.sizes() == base.sizes(), op, ": z must be (B, d_a) = ", base.sizes(), " standard normals, got ",
              z.sizes());
  TORCH_CHECK(head.size() >= 4 && head.size() % 2 == 0, op,
              ": head must list (weight, bias) pairs: the trunk's, then the mean and log-std layers'; got ",
              head.size(), " tensors");
  TORCH_CHECK(obs_n.scalar_type() == at::kFloat || obs_n.scalar_type() == at::kDouble, op,
              ": inputs must be float32 or float64, got ", obs_n.scalar_type());
  for (const at::Tensor& t : {base, z}) {
    TORCH_CHECK(t.scalar_type() == obs_n.scalar_type() && t.device() == obs_n.device(), op,
                ": base and z must have obs_n's dtype and device (", obs_n.scalar_type(), ", ", obs_n.device(), ")");
  }
  const int64_t trunk = (int64_t(head.size()) - 4) / 2, d_a = base.size(1);
  int64_t width = obs_n.size(1) + d_a;
  for (size_t l = 0; l < head.size(); l += 2) {
    const at::Tensor &w = head[l], &b = head[l + 1];
    const bool output = int64_t(l / 2) >= trunk;
    TORCH_CHECK(w.scalar_type() == obs_n.scalar_type() && b.scalar_type() == obs_n.scalar_type() &&
                    w.device() == obs_n.device() && b.device() == obs_n.device(),
                op, ": head tensor ", l, " must have obs_n's dtype and device (", obs_n.scalar_type(), ", ",
                obs_n.device(), ")");
    TORCH_CHECK(w.dim() == 2 && w.size(1) == width && b.dim() == 1 && b.size(0) == w.size(0) &&
                    (!output || w.size(0) == d_a),
                op, ": layer ", l / 2, " must be weight (", output ? d_a : w.size(0), ", ", width,
                ") and bias (", output ? d_a : w.size(0), ") in nn.Linear layout, got ", w.sizes(), " and ",
                b.sizes());
    if (!output) width = w.size(0);
  }
  return trunk;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> residual_head_aten(const at::Tensor& obs_n, const at::Tensor& base,
                                                                  at::TensorList head, double log_std_min,
                                                                  double log_std_max, const at::Tensor& z) {
  const int64_t trunk = 2 * check_head_inputs(obs_n, base, head, z);
  at::Tensor h = at::cat({obs_n, base}, -1);
  for (int64_t l = 0; l < trunk; l += 2) h = at::linear(h, head[l], head[l + 1]).relu_();
  const at::Tensor mean = base + at::tanh(at::linear(h, head[trunk], head[trunk + 1]));
  const at::Tensor scale = at::tanh(at::linear(h, head[trunk + 2], head[trunk + 3]))
                               .add_(1)
                               .mul_(0.5 * (log_std_max - log_std_min))
                               .add_(log_std_min)
                               .exp_();
  return {z.mul(scale).add_(mean), mean, scale};
}

namespace {

using SampleFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                    at::TensorList, at::IntArrayRef, at::ArrayRef<double>,
                                                    int64_t, double, double, double, bool, c10::string_view);
using HeadFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, at::TensorList,
                                                              double, double, const at::Tensor&);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> acting_step(
    const at::Tensor& hist, const at::Tensor& obs_mean, const at::Tensor& obs_std, const at::Tensor& noise,
    const at::Tensor& perturb, at::TensorList weights, at::IntArrayRef timesteps, at::ArrayRef<double> alpha_bars,
    int64_t horizon, double eta, double tau, double eps, int64_t seed_index, at::TensorList head,
    double log_std_min, double log_std_max, const at::Tensor& z, c10::string_view prediction) {
  TORCH_CHECK(hist.dim() == 3, "uepo::acting_step: hist must be (B, T_o, d_s), got ", hist.sizes());
  const int64_t B = hist.size(0), n = noise.size(-3);
  TORCH_CHECK(0 <= seed_index && seed_index < n, "uepo::acting_step: seed_index ", seed_index,
              " is not one of the ", n, " seeds");
  static const auto sample =
      c10::Dispatcher::singleton().findSchemaOrThrow("uepo::multiseed_sample", "").typed<SampleFn>();
  static const auto residual_head =
      c10::Dispatcher::singleton().findSchemaOrThrow("uepo::residual_head", "").typed<HeadFn>();
  const at::Tensor cond = (hist - obs_mean) / obs_std;  // (B, T_o, d_s)
  const auto chunks = std::get<0>(
      sample.call(cond.view({B, -1}), noise, perturb, weights, timesteps, alpha_bars, horizon, eta, tau, eps, false,
                  prediction));
  const at::Tensor base = chunks.select(1, seed_index).select(1, 0);  // μ^i_1 (B, d_a)
  auto [action, mean, scale] =
      residual_head.call(cond.select(1, cond.size(1) - 1), base, head, log_std_min, log_std_max, z);
  return {base, action, mean, scale};
}

}  // namespace
}  // namespace uepo

TORCH_LIBRARY_IMPL(uepo, CompositeImplicitAutograd, m) { m.impl("acting_step", &uepo::acting_step); }

#ifdef UEPO_WITH_CUDA
TORCH_LIBRARY_IMPL(uepo, CUDA, m) { m.impl("residual_head", &uepo::residual_head_aten); }
#endif
