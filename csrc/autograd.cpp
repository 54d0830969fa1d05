// Autograd for uepo::divergence, in C++ so that a forward + backward costs no Python calls.
// The backward is uepo::divergence_backward (registered per device in cpu/ and cuda/).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>

namespace uepo {
namespace {

at::Tensor divergence_redispatch(const at::Tensor& chunks, const std::optional<at::Tensor>& mask,
                                 double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("uepo::divergence", "")
                       .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, double)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(chunks, mask, eps);
}

at::Tensor divergence_backward_call(const at::Tensor& grad, const at::Tensor& chunks,
                                    const std::optional<at::Tensor>& mask, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("uepo::divergence_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, double)>();
  return op.call(grad, chunks, mask, eps);
}

class DivergenceFunction : public torch::autograd::Function<DivergenceFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& chunks,
                            const std::optional<at::Tensor>& mask, double eps) {
    ctx->save_for_backward({chunks, mask.has_value() ? *mask : at::Tensor()});
    ctx->saved_data["eps"] = eps;
    return divergence_redispatch(chunks, mask, eps);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::optional<at::Tensor> mask =
        saved[1].defined() ? std::optional<at::Tensor>(saved[1]) : std::nullopt;
    const auto grad = divergence_backward_call(grads[0], saved[0], mask, ctx->saved_data["eps"].toDouble());
    return {grad, at::Tensor(), at::Tensor()};
  }
};

at::Tensor divergence_autograd(const at::Tensor& chunks, const std::optional<at::Tensor>& mask,
                               double eps) {
  return DivergenceFunction::apply(chunks, mask, eps);
}

}  // namespace
}  // namespace uepo

TORCH_LIBRARY_IMPL(uepo, Autograd, m) { m.impl("divergence", &uepo::divergence_autograd); }
