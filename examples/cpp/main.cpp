// Checks its own results: torch_int8::gemm / scaled_gemm / scaled_conv2d on at::Tensor, and
// the torch-free kernel layer on raw pointers, against plain int64 loops.
// Runs on the CPU, and on the GPU too when one is visible.
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "torch_int8/kernels.h"
#include "torch_int8/torch_int8.h"

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  std::printf("%-58s %s\n", what, ok ? "ok" : "FAILED");
  failures += ok ? 0 : 1;
}

// The at::Tensor API on one device: an exact int32 GEMM with ragged sizes and
// a transposed operand, and a dequantizing GEMM against float64.
void check_tensor_api(const torch::Device& device) {
  torch::manual_seed(0);
  const auto i8 = torch::TensorOptions().dtype(torch::kInt8);
  const torch::Tensor a = torch::randint(-128, 128, {37, 91}, i8);
  const torch::Tensor w = torch::randint(-128, 128, {53, 91}, i8);  // [N, K]: w.t() is column-major
  const torch::Tensor out = torch_int8::gemm(a.to(device), w.to(device).t()).cpu();
  const torch::Tensor ref = torch::matmul(a.to(torch::kLong), w.t().to(torch::kLong));
  expect(out.dtype() == torch::kInt && torch::equal(out.to(torch::kLong), ref),
         device.is_cuda() ? "gemm (cuda) is exact" : "gemm (cpu) is exact");

  const torch::Tensor x = torch::randn({37, 91}), y = torch::randn({91, 53});
  auto [xq, xs, xz] = torch_int8::quantize(x.to(device), 0);
  auto [yq, ys, yz] = torch_int8::quantize(y.to(device), 1);
  const torch::Tensor z = torch_int8::scaled_gemm(xq, yq, xs, ys, std::nullopt, std::nullopt, torch::kFloat).cpu();
  const torch::Tensor zref = torch::matmul(torch_int8::dequantize(xq, xs, std::nullopt, 0).cpu().to(torch::kDouble),
                                           torch_int8::dequantize(yq, ys, std::nullopt, 1).cpu().to(torch::kDouble));
  const double err = (z.to(torch::kDouble) - zref).abs().max().item<double>();
  expect(err < 1e-4, device.is_cuda() ? "scaled_gemm (cuda) matches float64" : "scaled_gemm (cpu) matches float64");
}

// A dequantizing, ReLU-fused convolution through the C++ API (every argument
// of the op's schema) against float64.
void check_conv_api(const torch::Device& device) {
  torch::manual_seed(1);
  const torch::Tensor x = torch::randn({2, 8, 9, 7}), w = torch::randn({6, 8, 3, 3});
  auto [xq, xs, xz] = torch_int8::quantize(x.to(device), 0);  // per image
  auto [wq, ws, wz] = torch_int8::quantize(w.to(device), 0);  // per output channel
  const torch::Tensor y = torch_int8::scaled_conv2d(xq, wq, xs, ws, std::nullopt, std::nullopt, {1, 1}, {1, 1},
                                                    {1, 1}, 1, torch::kFloat, 1.0, 0, /*relu=*/true)
                              .cpu();
  const torch::Tensor yref = torch::relu(torch::conv2d(
      torch_int8::dequantize(xq, xs, std::nullopt, 0).cpu().to(torch::kDouble),
      torch_int8::dequantize(wq, ws, std::nullopt, 0).cpu().to(torch::kDouble), {}, 1, 1));
  const double err = (y.to(torch::kDouble) - yref).abs().max().item<double>();
  expect(y.sizes() == yref.sizes() && err < 1e-4 && y.min().item<float>() == 0.f,
         device.is_cuda() ? "scaled_conv2d + relu (cuda) matches float64" : "scaled_conv2d + relu (cpu) matches float64");
  // The same quantization and convolution from the float tensors in one call (nn.Conv2d's forward).
  auto [yd, xq_d, xs_d] = torch_int8::dynamic_conv2d(x.to(device), w.to(device), std::nullopt, {1, 1}, {1, 1}, {1, 1},
                                                     1, /*per_channel=*/true, torch::kFloat);
  const torch::Tensor plain = torch_int8::scaled_conv2d(xq, wq, xs, ws, std::nullopt, std::nullopt, {1, 1}, {1, 1},
                                                        {1, 1}, 1, torch::kFloat);
  expect(torch::equal(yd, plain) && torch::equal(xq_d, xq),
         device.is_cuda() ? "dynamic_conv2d (cuda) = quantize + scaled_conv2d" : "dynamic_conv2d (cpu) = quantize + scaled_conv2d");
}

// The backward ops of the layers through the C++ API, each against the exact op it rescales.
void check_backward_api(const torch::Device& device) {
  torch::manual_seed(2);
  const torch::Tensor x = torch::randn({37, 16}).to(device);
  auto [xt, xt_scale] = torch_int8::quantize_columns_t(x, torch_int8::column_amax(x));
  auto [xq, xq_scale, xq_zero] = torch_int8::quantize(x, 1);
  expect(torch::equal(xt, xq.t().contiguous()) && torch::equal(xt_scale, xq_scale),
         "quantize_columns_t = quantize(x, 1) transposed");
  const torch::Tensor dy = torch::randint(-127, 128, {2, 6, 9, 7}, torch::kChar).to(device);
  const torch::Tensor im = torch::randint(-127, 128, {2, 8, 9, 7}, torch::kChar).to(device);
  const torch::Tensor w = torch::randint(-127, 128, {6, 8, 3, 3}, torch::kChar).to(device);
  const torch::Tensor s2 = torch::rand({2}).to(device) + 0.5, s8 = torch::rand({8}).to(device) + 0.5;
  const torch::Tensor dx = torch_int8::scaled_conv2d_dgrad(dy, w, s2, s8, {9, 7}, {1, 1}, {1, 1}, {1, 1});
  const torch::Tensor dx_ref = torch_int8::conv2d_dgrad(dy, w, {9, 7}, {1, 1}, {1, 1}, {1, 1}).to(torch::kFloat) *
                               s2.reshape({2, 1, 1, 1}) * s8.reshape({1, 8, 1, 1});
  expect(torch::allclose(dx, dx_ref), "scaled_conv2d_dgrad = conv2d_dgrad rescaled");
  const torch::Tensor dw = torch_int8::scaled_conv2d_wgrad(dy, im, s2, s2, {3, 3}, {1, 1}, {1, 1}, {1, 1});
  torch::Tensor dw_ref = torch::zeros_like(dw);
  for (int64_t n = 0; n < 2; ++n)
    dw_ref += torch_int8::conv2d_wgrad(dy.narrow(0, n, 1), im.narrow(0, n, 1), {3, 3}, {1, 1}, {1, 1}, {1, 1})
                  .to(torch::kFloat) * (s2[n] * s2[n]);
  expect(torch::allclose(dw, dw_ref, 1e-5, 1e-2), "scaled_conv2d_wgrad = the images' exact wgrads rescaled");
}

// The kernel layer with no torch at all: what deployment code calls.
void check_raw_kernels() {
  const int64_t m = 5, n = 3, k = 7;
  std::vector<int8_t> a(m * k), b(n * k);  // a row-major, b column-major (K-contiguous)
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<int8_t>((i * 37) % 256 - 128);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<int8_t>((i * 91) % 256 - 128);
  std::vector<int32_t> d(m * n);
  torch_int8::kernels::GemmProblem p;
  p.m = m, p.n = n, p.k = k;
  p.a = a.data(), p.lda = k, p.b = b.data(), p.ldb = k, p.d = d.data(), p.ldd = n;
  const bool ran = torch_int8::kernels::gemm_cpu(p, {}) == torch_int8::kernels::Status::kSuccess;
  bool exact = ran;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      int64_t s = 0;
      for (int64_t t = 0; t < k; ++t) s += int64_t{a[i * k + t]} * b[j * k + t];
      exact = exact && d[i * n + j] == s;
    }
  expect(exact, "kernels::gemm_cpu (raw pointers, no torch) is exact");
}

}  // namespace

int main() {
  check_tensor_api(torch::kCPU);
  check_conv_api(torch::kCPU);
  check_backward_api(torch::kCPU);
  if (torch::cuda::is_available()) {
    check_tensor_api(torch::kCUDA);
    check_conv_api(torch::kCUDA);
    check_backward_api(torch::kCUDA);
  }
  check_raw_kernels();
  std::printf("%s\n", failures == 0 ? "all checks passed" : "some checks FAILED");
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
