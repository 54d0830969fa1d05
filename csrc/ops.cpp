// Op schemas of the uepo library, the input checks shared by every backend, and the
// device-agnostic driver of the fused sampler. Backends register their kernels in cpu/ and cuda/.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <sstream>

#include "uepo/ops.h"

namespace uepo {
namespace {

std::string shape_str(const at::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64, got ", t.scalar_type(),
              "; convert it with .float() or .double()");
}

void check_same(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but ", ref_name, " has ", ref.scalar_type(),
              "; pass all tensors in one dtype");
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ",
              ref_name, " is on ", ref.device(), "; move all tensors to one device");
}

void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* op,
                 const std::string& name) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must have shape ", expected, ", got ",
              t.sizes());
}

// Sinusoidal embedding of the DDIM timesteps, (K_s, time_dim), computed in double on the host.
at::Tensor sinusoidal_embedding(at::IntArrayRef timesteps, int64_t time_dim) {
  const int64_t half = time_dim / 2;
  auto emb = at::empty({(int64_t)timesteps.size(), time_dim}, at::kDouble);
  auto* e = emb.data_ptr<double>();
  const double scale = std::log(10000.0) / double(half - 1);
  for (size_t s = 0; s < timesteps.size(); ++s) {
    for (int64_t k = 0; k < half; ++k) {
      const double arg = double(timesteps[s]) * std::exp(-scale * double(k));
      e[s * time_dim + k] = std::sin(arg);
      e[s * time_dim + half + k] = std::cos(arg);
    }
  }
  return emb;
}

}  // namespace

at::Tensor check_divergence_inputs(const at::Tensor& chunks, const std::optional<at::Tensor>& mask,
                                   const char* op) {
  TORCH_CHECK(chunks.dim() == 4, op, ": chunks must have shape (B, n, H, d_a), got ",
              shape_str(chunks));
  check_float(chunks, op, "chunks");
  TORCH_CHECK(chunks.size(2) >= 3, op, ": the divergence needs chunks of H >= 3 steps (it uses ",
              "accelerations), got H = ", chunks.size(2));
  if (!mask.has_value() || !mask->defined()) return at::Tensor();
  const auto& m = *mask;
  TORCH_CHECK(m.dim() == 2 && m.size(0) == chunks.size(0) && m.size(1) == chunks.size(2), op,
              ": mask must have shape (B, H) = (", chunks.size(0), ", ", chunks.size(2), "), got ",
              shape_str(m));
  TORCH_CHECK(m.device() == chunks.device(), op, ": mask is on ", m.device(),
              " but chunks are on ", chunks.device(), "; move both to one device");
  return m.to(chunks.scalar_type()).contiguous();
}

std::tuple<at::Tensor, at::Tensor> multiseed_sample_impl(
    const SamplerKernels& kernels, const at::Tensor& cond_in, const at::Tensor& noise_in,
    const at::Tensor& perturb_in, at::TensorList weights, at::IntArrayRef timesteps,
    at::ArrayRef<double> alpha_bars, int64_t horizon, double eta, double tau, double eps,
    bool return_div, c10::string_view prediction) {
  const char* op = "uepo.multiseed_sample";
  const bool predicts_x0 = prediction == "x0", predicts_v = prediction == "v";
  TORCH_CHECK(predicts_x0 || predicts_v || prediction == "eps", op, ": prediction must be 'eps', 'x0' or 'v' ",
              "(what the denoiser outputs), got '", std::string(prediction), "'");
  TORCH_CHECK(weights.size() >= 10 && (weights.size() - 10) % 6 == 0, op,
              ": weights must be the residual-MLP denoiser's kernel_weights() (6 time/input ",
              "tensors, 6 per block, 4 output tensors), got ", weights.size(), " tensors");
  const auto& in_w = weights[4];
  check_float(in_w, op, "weights");
  for (size_t k = 0; k < weights.size(); ++k) check_same(weights[k], in_w, op, "a weight", "weights[4]");
  check_same(cond_in, in_w, op, "cond", "the weights");
  check_same(noise_in, in_w, op, "noise", "the weights");
  check_same(perturb_in, in_w, op, "perturb", "the weights");

  SamplerShape sh;
  sh.blocks = int64_t(weights.size() - 10) / 6;
  TORCH_CHECK(in_w.dim() == 2, op, ": the input layer weight must be 2-D, got ", shape_str(in_w));
  sh.width = in_w.size(1);
  sh.time_dim = weights[3].size(0);
  TORCH_CHECK(sh.time_dim >= 4 && sh.time_dim % 2 == 0, op,
              ": the time embedding width must be even and >= 4, got ", sh.time_dim);
  sh.chunk_dim = weights.back().size(0);
  TORCH_CHECK(horizon >= 1 && sh.chunk_dim % horizon == 0, op, ": horizon ", horizon,
              " does not divide the denoiser's output width ", sh.chunk_dim);
  sh.horizon = horizon;
  sh.action_dim = sh.chunk_dim / horizon;
  sh.cond_dim = in_w.size(0) - sh.chunk_dim - sh.time_dim;
  TORCH_CHECK(sh.cond_dim >= 0, op, ": the input layer has ", in_w.size(0),
              " inputs, fewer than chunk + time embedding = ", sh.chunk_dim + sh.time_dim);

  // Every weight's shape, in kernel_weights() order; matrices are stored (in, out).
  const int64_t T = sh.time_dim, W = sh.width;
  const int64_t T1 = weights[0].size(1);
  check_shape(weights[0], {T, T1}, op, "weights[0] (time layer 1 weight)");
  check_shape(weights[1], {T1}, op, "weights[1] (time layer 1 bias)");
  check_shape(weights[2], {T1, T}, op, "weights[2] (time layer 2 weight)");
  check_shape(weights[5], {W}, op, "weights[5] (input bias)");
  std::vector<int64_t> hidden(sh.blocks);
  for (int64_t j = 0; j < sh.blocks; ++j) {
    const size_t o = 6 + 6 * j;
    const std::string b = "block " + std::to_string(j) + " ";
    hidden[j] = weights[o + 2].size(1);
    check_shape(weights[o], {W}, op, b + "LayerNorm weight");
    check_shape(weights[o + 1], {W}, op, b + "LayerNorm bias");
    check_shape(weights[o + 2], {W, hidden[j]}, op, b + "fc1 weight");
    check_shape(weights[o + 3], {hidden[j]}, op, b + "fc1 bias");
    check_shape(weights[o + 4], {hidden[j], W}, op, b + "fc2 weight");
    check_shape(weights[o + 5], {W}, op, b + "fc2 bias");
  }
  const size_t o = weights.size() - 4;
  check_shape(weights[o], {W}, op, "output LayerNorm weight");
  check_shape(weights[o + 1], {W}, op, "output LayerNorm bias");
  check_shape(weights[o + 2], {W, sh.chunk_dim}, op, "output weight");

  TORCH_CHECK(cond_in.dim() == 2 && cond_in.size(1) == sh.cond_dim, op,
              ": cond must have shape (B, ", sh.cond_dim,
              ") (the flattened, normalised state history), got ", shape_str(cond_in));
  sh.batch = cond_in.size(0);
  const int64_t H = sh.horizon, D = sh.action_dim;
  TORCH_CHECK((noise_in.dim() == 3 || noise_in.dim() == 4) && noise_in.size(-2) == H &&
                  noise_in.size(-1) == D && (noise_in.dim() == 3 || noise_in.size(0) == sh.batch),
              op, ": noise must have shape (n, H, d_a) or (B, n, H, d_a) with H = ", H,
              ", d_a = ", D, ", B = ", sh.batch, "; got ", shape_str(noise_in));
  sh.noise_per_state = noise_in.dim() == 4;
  sh.seeds = noise_in.size(noise_in.dim() - 3);
  TORCH_CHECK(sh.seeds >= 1, op, ": need at least one seed");
  sh.steps = int64_t(timesteps.size());
  TORCH_CHECK(sh.steps >= 1, op, ": need at least one sampling step");
  TORCH_CHECK(int64_t(alpha_bars.size()) == sh.steps + 1, op, ": alpha_bars must hold K_s + 1 = ",
              sh.steps + 1, " values (abar at each step, then 1 after the last), got ",
              alpha_bars.size());
  for (double ab : alpha_bars) {
    TORCH_CHECK(ab > 0.0 && ab <= 1.0, op, ": alpha_bars must lie in (0, 1], got ", ab);
  }
  const int64_t K = sh.steps;
  TORCH_CHECK((perturb_in.dim() == 4 || perturb_in.dim() == 5) &&
                  perturb_in.size(-4) == sh.seeds && perturb_in.size(-3) == K &&
                  perturb_in.size(-2) == H && perturb_in.size(-1) == D &&
                  (perturb_in.dim() == 4 || perturb_in.size(0) == sh.batch),
              op, ": perturb must have shape (n, K_s, H, d_a) or (B, n, K_s, H, d_a) = (", sh.seeds,
              ", ", K, ", ", H, ", ", D, "), got ", shape_str(perturb_in));
  sh.perturb_per_state = perturb_in.dim() == 5;
  TORCH_CHECK(!(eta > 0.0 && tau > 0.0) || H >= 3, op,
              ": the adaptive perturbation needs chunks of H >= 3 (it uses accelerations)");
  TORCH_CHECK(!return_div || H >= 3, op, ": return_div needs chunks of H >= 3");

  // ---- preparation: everything that does not change across steps ----
  std::vector<at::Tensor> wc(weights.begin(), weights.end());
  for (auto& t : wc) t = t.contiguous();
  const int64_t B = sh.batch, n = sh.seeds, R = B * n, Hd = sh.chunk_dim, C = sh.cond_dim;
  const auto opts = in_w.options();
  auto cond = cond_in.contiguous();
  auto perturb = perturb_in.contiguous();
  // The input layer splits into the chunk rows (every step), the time rows (once per step,
  // shared by all states) and the state rows (once per call, shared by all seeds and steps).
  const auto& in_wc = wc[4];
  auto wx = in_wc.narrow(0, 0, Hd);  // a contiguous row block: h = x @ wx
  auto state_proj = C > 0 ? at::mm(cond, in_wc.narrow(0, Hd + T, C)) : at::zeros({B, W}, opts);
  state_proj = state_proj.contiguous();
  auto temb = sinusoidal_embedding(timesteps, T).to(opts);
  temb = at::mish(at::addmm(wc[1], temb, wc[0]));
  temb = at::addmm(wc[3], temb, wc[2]);
  auto step_bias = at::addmm(wc[5], temb, in_wc.narrow(0, Hd, T)).contiguous();  // (K, W)
  int64_t max_hidden = 1;
  for (int64_t j = 0; j < sh.blocks; ++j) max_hidden = std::max(max_hidden, hidden[j]);

  auto x = noise_in.expand({B, n, H, D}).reshape({R, Hd}).clone(at::MemoryFormat::Contiguous);
  auto h = at::empty({R, W}, opts), u = at::empty({R, W}, opts);
  auto hid = at::empty({R, max_hidden}, opts);
  auto eps_hat = at::empty({R, Hd}, opts), x0 = at::empty({R, Hd}, opts);
  auto d = at::empty({B, n}, opts);
  auto div_out = return_div ? at::empty({B, n, K}, opts) : at::empty({0}, opts);

  const at::Tensor no_bias;
  for (int64_t s = 0; s < K; ++s) {
    kernels.init_rows(h, state_proj, step_bias[s], n);
    kernels.linear(x, wx, no_bias, h, /*accumulate=*/true, /*mish=*/false);
    for (int64_t j = 0; j < sh.blocks; ++j) {
      const size_t b = 6 + 6 * j;
      auto t = hid.narrow(1, 0, hidden[j]);
      kernels.layernorm(h, wc[b], wc[b + 1], u, false);
      kernels.linear(u, wc[b + 2], wc[b + 3], t, false, /*mish=*/true);
      kernels.linear(t, wc[b + 4], wc[b + 5], h, /*accumulate=*/true, false);
    }
    kernels.layernorm(h, wc[o], wc[o + 1], u, true);
    kernels.linear(u, wc[o + 2], wc[o + 3], eps_hat, false, false);

    StepParams p;
    p.step = s;
    p.sqrt_ab = std::sqrt(alpha_bars[s]);
    p.sqrt_1m_ab = std::sqrt(1.0 - alpha_bars[s]);
    p.sqrt_ab_prev = std::sqrt(alpha_bars[s + 1]);
    p.sqrt_1m_ab_prev = std::sqrt(1.0 - alpha_bars[s + 1]);
    // SPEC: perturb while k > 2, k = K_s - s counting down; never when it cannot act.
    p.perturb = (K - s > 2) && eta > 0.0 && tau > 0.0 && n > 1;
    p.compute_div = return_div || p.perturb;
    p.eta = eta;
    p.tau = tau;
    p.eps = eps;
    // Rounded as ops.implied_eps rounds (no fused multiply-add): the first step divides x̂_0 by √ᾱ ≈ 5e-4.
    if (predicts_x0) {  // ε̂ = (x_k − √ᾱ x̂_0) / √(1 − ᾱ)
      eps_hat.mul_(-p.sqrt_ab).add_(x).div_(p.sqrt_1m_ab);
    } else if (predicts_v) {  // ε̂ = √ᾱ v̂ + √(1 − ᾱ) x_k
      eps_hat.mul_(p.sqrt_ab).add_(x.mul(p.sqrt_1m_ab));
    }
    kernels.ddim_step(x, eps_hat, x0, d, perturb, div_out, sh, p);
  }
  return {x.view({B, n, H, D}), div_out};
}

// What the library was built with, checked at import against the running torch.
std::string build_info() {
#ifndef UEPO_TORCH_VERSION
#define UEPO_TORCH_VERSION "unknown"
#endif
#ifdef UEPO_WITH_CUDA
  return std::string("torch=") + UEPO_TORCH_VERSION + ";cuda=1";
#else
  return std::string("torch=") + UEPO_TORCH_VERSION + ";cuda=0";
#endif
}

}  // namespace uepo

TORCH_LIBRARY(uepo, m) {
  m.def("divergence(Tensor chunks, Tensor? mask, float eps) -> Tensor");
  m.def("divergence_backward(Tensor grad, Tensor chunks, Tensor? mask, float eps) -> Tensor");
  m.def(
      "multiseed_sample(Tensor cond, Tensor noise, Tensor perturb, Tensor[] weights, "
      "int[] timesteps, float[] alpha_bars, int horizon, float eta, float tau, float eps, "
      "bool return_div, str prediction=\"eps\") -> (Tensor, Tensor)");
  m.def(
      "residual_head(Tensor obs_n, Tensor base, Tensor[] head, float log_std_min, float log_std_max, Tensor z) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "acting_step(Tensor hist, Tensor obs_mean, Tensor obs_std, Tensor noise, Tensor perturb, "
      "Tensor[] weights, int[] timesteps, float[] alpha_bars, int horizon, float eta, float tau, float eps, "
      "int seed_index, Tensor[] head, float log_std_min, float log_std_max, Tensor z, str prediction=\"eps\") "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("build_info() -> str", &uepo::build_info);
}

// Sampling has no gradient: fall through Autograd so outputs simply do not require grad.
TORCH_LIBRARY_IMPL(uepo, Autograd, m) {
  m.impl("multiseed_sample", torch::CppFunction::makeFallthrough());
  m.impl("residual_head", torch::CppFunction::makeFallthrough());  // acting only: no gradient either
}
