// torch_int8._C: what is not an op — build information and backend queries.
// Importing it loads libtorch_int8_ops, whose static initializers register
// the torch.ops.int8.* ops.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <optional>
#include <string>

#include "torch_int8/conv.h"
#include "torch_int8/kernels.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "torch_int8 native module: build information and backend queries";
  m.def("build_info", [] {
    py::dict info;
    info["version"] = TORCH_INT8_VERSION;
#ifdef TORCH_INT8_WITH_CUDA
    info["cuda"] = true;
    info["cuda_arch_list"] = TORCH_INT8_CUDA_ARCH_LIST;
#else
    info["cuda"] = false;
    info["cuda_arch_list"] = "";
#endif
    info["gemm_families"] = torch_int8::kernels::built_gemm_families();
    return info;
  });
  m.def(
      "gemm_backend",
      [](int cc) -> py::object {
        const char* name = torch_int8::kernels::gemm_backend(cc);
        return name ? py::object(py::str(name)) : py::none();
      },
      py::arg("compute_capability"),
      "Kernel family that serves a GPU of this compute capability (e.g. 90), or None.");
  m.def(
      "set_gemm_backend",
      [](const std::optional<std::string>& name) {
        using torch_int8::kernels::Status;
        if (torch_int8::kernels::set_gemm_backend(name ? name->c_str() : nullptr) == Status::kSuccess) return;
        const std::string built = torch_int8::kernels::built_gemm_families();
        throw py::value_error("unknown GEMM backend '" + *name + "': this build has " +
                              (built.empty() ? std::string("no GPU kernel families (built without CUDA)")
                                             : "the families " + built + " (name:architectures)"));
      },
      py::arg("name"),
      "Forces a GEMM kernel family for the whole process; None ends the override "
      "(back to TORCH_INT8_GEMM_BACKEND, else the compute capability).");
  m.def(
      "gemm_backend_override",
      []() -> py::object {
        const char* name = torch_int8::kernels::gemm_backend_override();
        return name ? py::object(py::str(name)) : py::none();
      },
      "The family set_gemm_backend forces, or None.");
  m.def(
      "implicit_conv_can_implement",
      [](const std::string& kernel, std::optional<int> device_index, int64_t c, int64_t k, int64_t groups,
         int64_t out_bytes) {
        using torch_int8::kernels::ConvKernel;
        if (kernel != "fprop" && kernel != "wgrad")
          throw py::value_error("implicit_conv_can_implement: kernel must be 'fprop' or 'wgrad', got '" + kernel + "'");
        const ConvKernel which = kernel == "fprop" ? ConvKernel::kFprop : ConvKernel::kWgrad;
        if (!device_index) return torch_int8::kernels::conv_can_implement_everywhere(which, c, k, groups, out_bytes);
        const char* family = torch_int8::kernels::device_gemm_backend(*device_index);
        return torch_int8::kernels::conv_can_implement(which, family, c, k, groups, out_bytes);
      },
      py::arg("kernel"), py::arg("device_index"), py::arg("c"), py::arg("k"), py::arg("groups"), py::arg("out_bytes"),
      "Whether the implicit-GEMM convolution kernel 'fprop' (conv2d_fprop_cuda) or 'wgrad' "
      "(conv2d_wgrad_scaled_cuda) of the GEMM family that CUDA device device_index runs takes a convolution of c "
      "input and k output channels in `groups` groups with out_bytes-byte output elements (wgrad: ignored): the "
      "channel rule the family checks before it runs (geometry limits and pointer alignment are checked then). "
      "False for a family without the kernel and in a build without CUDA. device_index None: whether every "
      "family with the kernel takes it (a rule that holds on any GPU; answers in every build).");
  m.def(
      "dgrad_as_forward_padding",
      [](std::array<int64_t, 2> filter, std::array<int64_t, 2> stride, std::array<int64_t, 2> padding,
         std::array<int64_t, 2> dilation) -> py::object {
        torch_int8::kernels::ConvProblem p;
        p.r = filter[0], p.s = filter[1], p.stride_h = stride[0], p.stride_w = stride[1];
        p.pad_h = padding[0], p.pad_w = padding[1], p.dilation_h = dilation[0], p.dilation_w = dilation[1];
        const auto f = torch_int8::kernels::dgrad_as_forward_padding(p);
        return f.valid() ? py::object(py::make_tuple(f.h, f.w)) : py::none();
      },
      py::arg("filter"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
      "The padding (h, w) of the forward convolution with the rotated, transposed filter that equals a "
      "convolution's input gradient (stride 1: dilation * (filter - 1) - padding), or None where there is none "
      "(conv.h's dgrad_as_forward_padding).");
  m.attr("max_k") = torch_int8::kernels::kMaxK;
}
