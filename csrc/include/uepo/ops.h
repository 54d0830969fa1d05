// Host-side declarations shared by the CPU and CUDA backends: input checks and the
// device-agnostic driver of the fused multi-seed DDIM sampler.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace uepo {

// ---- divergence -------------------------------------------------------------------------------

// Checks chunks (B, n, H, d_a) and an optional mask (B, H); returns the mask converted to the
// chunks' dtype and made contiguous, or an undefined tensor when there is none.
at::Tensor check_divergence_inputs(const at::Tensor& chunks, const std::optional<at::Tensor>& mask,
                                   const char* op);

// ---- sampler ----------------------------------------------------------------------------------

// Problem sizes of one sampler call, derived from and checked against the inputs.
struct SamplerShape {
  int64_t batch = 0;        // B state histories
  int64_t seeds = 0;        // n sub-policies
  int64_t horizon = 0;      // H actions per chunk
  int64_t action_dim = 0;   // d_a
  int64_t chunk_dim = 0;    // H * d_a
  int64_t cond_dim = 0;     // flattened state-history width
  int64_t width = 0;        // residual MLP width
  int64_t time_dim = 0;     // sinusoidal time-embedding width
  int64_t blocks = 0;       // residual blocks
  int64_t steps = 0;        // K_s sampling steps
  bool noise_per_state = false;    // noise is (B, n, H, d_a) rather than (n, H, d_a)
  bool perturb_per_state = false;  // perturb is (B, n, K_s, H, d_a) rather than (n, K_s, H, d_a)
};

// Coefficients of one DDIM step and what it must do.
struct StepParams {
  int64_t step = 0;               // index s of the step, 0 = first (noisiest)
  double sqrt_ab = 1, sqrt_1m_ab = 0;            // sqrt(abar_k), sqrt(1 - abar_k)
  double sqrt_ab_prev = 1, sqrt_1m_ab_prev = 0;  // the same for the next step
  bool compute_div = false;       // compute nearest-competitor divergences
  bool perturb = false;           // apply the adaptive perturbation
  double eta = 0, tau = 0, eps = 1e-4;
};

// What a backend supplies; the driver (ops.cpp) strings them into the DDIM chain.
struct SamplerKernels {
  // h[r, :] = state_proj[r / n, :] + step_bias[:] for r in 0..B*n
  void (*init_rows)(at::Tensor& h, const at::Tensor& state_proj, const at::Tensor& step_bias,
                    int64_t seeds);
  // y = (accumulate ? y : 0) + x @ wt + bias (bias may be undefined), then Mish if `mish`.
  // x and y may be column slices (row stride >= width); wt is (K, N) contiguous.
  void (*linear)(const at::Tensor& x, const at::Tensor& wt, const at::Tensor& bias, at::Tensor& y,
                 bool accumulate, bool mish);
  // out = LayerNorm(h) * gamma + beta, then Mish if `mish`
  void (*layernorm)(const at::Tensor& h, const at::Tensor& gamma, const at::Tensor& beta,
                    at::Tensor& out, bool mish);
  // One DDIM step over x (B*n, H*d_a) given the predicted noise eps_hat; writes per-seed
  // divergences into div_out[:, :, step] when div_out is non-empty. x0 and d are scratch.
  void (*ddim_step)(at::Tensor& x, const at::Tensor& eps_hat, at::Tensor& x0, at::Tensor& d,
                    const at::Tensor& perturb, at::Tensor& div_out, const SamplerShape& shape,
                    const StepParams& p);
};

// The fused sampler for any backend: checks, the whole chain, returns (chunks, divergences).
// `prediction` is what the network outputs: "eps" (ε̂), "x0" (x̂_0) or "v" (v̂ = √ᾱ ε − √(1−ᾱ) x_0);
// x0 and v are turned into the ε̂ they imply before each DDIM step, as uepo.diffusion's wrappers do.
std::tuple<at::Tensor, at::Tensor> multiseed_sample_impl(
    const SamplerKernels& kernels, const at::Tensor& cond, const at::Tensor& noise,
    const at::Tensor& perturb, at::TensorList weights, at::IntArrayRef timesteps,
    at::ArrayRef<double> alpha_bars, int64_t horizon, double eta, double tau, double eps,
    bool return_div, c10::string_view prediction);

// ---- residual Gaussian head (phase E's acting) --------------------------------------------------

// Checks the head's inputs (obs_n (B, d_s), base (B, d_a), (weight, bias) pairs in nn.Linear layout:
// the trunk's, then the mean and log-std layers', z (B, d_a)), all of one dtype and device; returns the
// trunk's depth in layers.
int64_t check_head_inputs(const at::Tensor& obs_n, const at::Tensor& base, at::TensorList head,
                          const at::Tensor& z);

// The head written with ATen ops (any device, any B): (action, mean, scale).
std::tuple<at::Tensor, at::Tensor, at::Tensor> residual_head_aten(const at::Tensor& obs_n, const at::Tensor& base,
                                                                  at::TensorList head, double log_std_min,
                                                                  double log_std_max, const at::Tensor& z);

}  // namespace uepo
