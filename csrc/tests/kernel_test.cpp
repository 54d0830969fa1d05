// C++ checks of the registered ops through the dispatcher, without Python: the divergence's
// defining properties, its backward against central finite differences, and the sampler's
// determinism and shapes, the residual head against its definition. The Python suite compares against the pure-PyTorch references.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

at::Tensor divergence(const at::Tensor& chunks, const std::optional<at::Tensor>& mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("uepo::divergence", "")
                       .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, double)>();
  return op.call(chunks, mask, 1e-4);
}

at::Tensor divergence_backward(const at::Tensor& grad, const at::Tensor& chunks,
                               const std::optional<at::Tensor>& mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("uepo::divergence_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, double)>();
  return op.call(grad, chunks, mask, 1e-4);
}

void divergence_properties() {
  at::manual_seed(0);
  const auto chunks = at::randn({5, 4, 8, 3}, at::kDouble);
  const auto d = divergence(chunks, std::nullopt);
  expect(d.sizes() == at::IntArrayRef({5, 4, 4}), "divergence shape (B, n, n)");
  expect(at::equal(d, d.transpose(1, 2)), "divergence is symmetric");
  expect(d.diagonal(0, 1, 2).abs().max().item<double>() == 0.0, "zero on identical chunks");
  const auto offset = at::randn({5, 1, 1, 3}, at::kDouble);
  expect(at::allclose(divergence(chunks + offset, std::nullopt), d, 1e-10, 1e-12),
         "invariant to a common offset");
  const auto constant = at::randn({2, 3, 1, 2}, at::kDouble).expand({2, 3, 6, 2}).contiguous();
  const auto dc = divergence(constant, std::nullopt);
  expect(at::isfinite(dc).all().item<bool>() && dc.abs().max().item<double>() < 1e-12,
         "finite (zero) on constant chunks");
  bool threw = false;
  try {
    divergence(at::randn({1, 2, 2, 3}, at::kDouble), std::nullopt);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("H >= 3") != std::string::npos;
  }
  expect(threw, "H < 3 raises a clear error");
}

void divergence_backward_matches_finite_differences() {
  at::manual_seed(1);
  const auto chunks = at::randn({2, 3, 6, 2}, at::kDouble);
  auto mask = at::ones({2, 6}, at::kDouble);
  mask.index_put_({1, at::indexing::Slice(4, at::indexing::None)}, 0.0);
  const auto upstream = at::randn({2, 3, 3}, at::kDouble);
  const auto grad = divergence_backward(upstream, chunks, mask);
  auto numeric = at::zeros_like(chunks);
  const double h = 1e-6;
  auto flat = chunks.flatten();
  auto nflat = numeric.flatten();
  for (int64_t k = 0; k < flat.numel(); ++k) {
    auto plus = flat.clone(), minus = flat.clone();
    plus[k] += h;
    minus[k] -= h;
    const double fp = (divergence(plus.view(chunks.sizes()), mask) * upstream).sum().item<double>();
    const double fm = (divergence(minus.view(chunks.sizes()), mask) * upstream).sum().item<double>();
    nflat[k] = (fp - fm) / (2 * h);
  }
  const double err = (grad - numeric).abs().max().item<double>();
  expect(err < 1e-6, "backward matches central differences (max err " + std::to_string(err) + ")");
}

void sampler_determinism() {
  at::manual_seed(2);
  const int64_t B = 3, n = 4, H = 8, D = 2, C = 5, W = 16, T = 8, K = 5;
  std::vector<at::Tensor> w = {at::randn({T, 2 * T}), at::randn({2 * T}), at::randn({2 * T, T}),
                               at::randn({T}),         at::randn({H * D + T + C, W}) * 0.2,
                               at::randn({W})};
  w.insert(w.end(), {at::ones({W}), at::zeros({W}), at::randn({W, W}) * 0.2, at::randn({W}),
                     at::randn({W, W}) * 0.2, at::randn({W})});
  w.insert(w.end(), {at::ones({W}), at::zeros({W}), at::randn({W, H * D}) * 0.2, at::randn({H * D})});
  const auto cond = at::randn({B, C});
  const auto noise = at::randn({n, H, D});
  const auto perturb = at::randn({n, K, H, D});
  const std::vector<int64_t> timesteps = {99, 74, 49, 24, 0};
  const std::vector<double> alpha_bars = {1e-4, 0.2, 0.5, 0.8, 0.99, 1.0};
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("uepo::multiseed_sample", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, at::TensorList,
                           c10::IntArrayRef, c10::ArrayRef<double>, int64_t, double, double, double, bool,
                           c10::string_view)>();
  auto [a, da] = op.call(cond, noise, perturb, w, timesteps, alpha_bars, H, 0.1, 1.0, 1e-4, true, "eps");
  auto [b, db] = op.call(cond, noise, perturb, w, timesteps, alpha_bars, H, 0.1, 1.0, 1e-4, true, "eps");
  expect(a.sizes() == at::IntArrayRef({B, n, H, D}) && da.sizes() == at::IntArrayRef({B, n, K}),
         "sampler shapes (B, n, H, d_a) and (B, n, K_s)");
  expect(at::equal(a, b) && at::equal(da, db), "sampler is deterministic");
  expect(a.abs().max().item<float>() <= 1.0f, "chunks lie in [-1, 1]");
  auto [c, dc] = op.call(cond, -noise, perturb, w, timesteps, alpha_bars, H, 0.1, 1.0, 1e-4, false, "eps");
  expect(!at::allclose(a, c), "other noise, other chunks");
}

void residual_head_matches_its_definition() {
  at::manual_seed(3);
  const int64_t B = 3, S = 5, D = 2, W = 7;
  const auto obs = at::randn({B, S}, at::kDouble), base = at::rand({B, D}, at::kDouble);
  const auto z = at::randn({B, D}, at::kDouble);
  const std::vector<at::Tensor> head = {at::randn({W, S + D}, at::kDouble), at::randn({W}, at::kDouble),
                                        at::randn({D, W}, at::kDouble),     at::randn({D}, at::kDouble),
                                        at::randn({D, W}, at::kDouble),     at::randn({D}, at::kDouble)};
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("uepo::residual_head", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, at::TensorList, double, double, const at::Tensor&)>();
  auto [action, mean, scale] = op.call(obs, base, head, -5.0, 0.0, z);
  const auto h = at::relu(at::cat({obs, base}, 1).matmul(head[0].t()) + head[1]);
  const auto want_mean = base + at::tanh(h.matmul(head[2].t()) + head[3]);
  const auto want_scale = at::exp(-5.0 + 2.5 * (at::tanh(h.matmul(head[4].t()) + head[5]) + 1));
  expect(at::allclose(mean, want_mean, 1e-10, 1e-12) && at::allclose(scale, want_scale, 1e-10, 1e-12),
         "residual head: mean = base + tanh(.), log-std in [min, max]");
  expect(at::allclose(action, mean + z * scale, 1e-12, 1e-12), "residual head: action = mean + scale z");
  bool threw = false;
  try {
    const std::vector<at::Tensor> odd(head.begin(), head.end() - 1);
    op.call(obs, base, odd, -5.0, 0.0, z);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("(weight, bias) pairs") != std::string::npos;
  }
  expect(threw, "residual head: an odd head list raises a clear error");
}

}  // namespace

int main() {
  divergence_properties();
  divergence_backward_matches_finite_differences();
  sampler_determinism();
  residual_head_matches_its_definition();
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
