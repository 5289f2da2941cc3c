// conv_can_implement (conv.h): which GEMM family has which implicit-GEMM convolution kernel, and
// the channel rules of conv_rules.h that each checks before it runs.
#include "conv_rules.h"

#include <cstring>

#include "torch_int8/conv.h"

namespace torch_int8::kernels {
namespace {

using ChannelRule = bool (*)(int64_t c, int64_t k, int64_t groups, int64_t out_bytes);

bool wgrad_rule(int64_t c, int64_t k, int64_t groups, int64_t) { return detail::wgrad_channels_ok(c, k, groups); }

// The GEMM families with implicit-GEMM convolution kernels (conv_dispatch.cu runs them); the
// others run every convolution as im2col + GEMM. nullptr: the family has no such kernel.
struct ConvFamily {
  const char* name;
  ChannelRule fprop, wgrad;
};
constexpr ConvFamily kConvFamilies[] = {
    {"sm90", detail::sm90_fprop_channels_ok, wgrad_rule},
    {"sm80", detail::sm80_fprop_channels_ok, wgrad_rule},
};

ChannelRule rule_of(const ConvFamily& f, ConvKernel kernel) { return kernel == ConvKernel::kFprop ? f.fprop : f.wgrad; }

}  // namespace

bool conv_can_implement(ConvKernel kernel, const char* family, int64_t c, int64_t k, int64_t groups,
                        int64_t out_bytes) {
  if (!family) return false;
  for (const ConvFamily& f : kConvFamilies) {
    if (std::strcmp(f.name, family) != 0) continue;
    const ChannelRule rule = rule_of(f, kernel);
    return rule && rule(c, k, groups, out_bytes);
  }
  return false;
}

bool conv_can_implement_everywhere(ConvKernel kernel, int64_t c, int64_t k, int64_t groups, int64_t out_bytes) {
  for (const ConvFamily& f : kConvFamilies) {
    const ChannelRule rule = rule_of(f, kernel);
    if (rule && !rule(c, k, groups, out_bytes)) return false;
  }
  return true;
}

}  // namespace torch_int8::kernels
