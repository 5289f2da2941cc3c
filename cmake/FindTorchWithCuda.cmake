# find_package(Torch) that also works with a slim CUDA 13 toolkit and pip-installed
# CUDA libraries. Used by torch_int8's own build and by its installed package config.
#
# torch's bundled FindCUDA looks for device_functions.h, which slim CUDA 13
# installs lack, and torch links nvrtc, which a slim toolkit may not have but
# torch's nvidia wheel does. Point both at what FindCUDAToolkit / the wheel provide.
macro(torch_int8_find_torch)
  if(TORCH_INT8_WITH_CUDA)
    find_package(CUDAToolkit REQUIRED)
    find_package(Python COMPONENTS Interpreter)
    if(Python_EXECUTABLE)
      execute_process(COMMAND "${Python_EXECUTABLE}" -c
          "import glob, os, torch; print(';'.join(glob.glob(os.path.join(os.path.dirname(torch.__path__[0]), 'nvidia', 'cu*'))))"
        OUTPUT_VARIABLE TORCH_INT8_NVIDIA_WHEEL_ROOTS OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    endif()
    list(GET CUDAToolkit_INCLUDE_DIRS 0 CUDA_TOOLKIT_INCLUDE)
    set(CUDA_CUDART_LIBRARY "${CUDA_cudart_LIBRARY}")
    find_library(CUDA_nvrtc_LIBRARY nvrtc libnvrtc.so.13 libnvrtc.so.12
      HINTS ${CUDAToolkit_LIBRARY_DIR} ${TORCH_INT8_NVIDIA_WHEEL_ROOTS} PATH_SUFFIXES lib lib64)
    find_package(Torch REQUIRED)
  else()
    torch_int8_find_torch_cpu()
  endif()
endmacro()

# Torch for a build without CUDA. With a CPU build of torch, find_package(Torch). With a CUDA
# build, find_package(Torch) looks for the CUDA toolkit and fails without one ("Your installed
# Caffe2 version uses CUDA but I cannot find the CUDA libraries"), though nothing here is then
# compiled for CUDA: the CPU libraries and headers that torch.utils.cpp_extension names serve, as
# an imported target, with the variables find_package(Torch) sets that the build reads.
macro(torch_int8_find_torch_cpu)
  find_package(Python COMPONENTS Interpreter REQUIRED)
  execute_process(COMMAND "${Python_EXECUTABLE}" -c
      "import os, torch, torch.utils.cpp_extension as e; print(torch.version.cuda or ''); \
print(torch.__version__.split('+')[0]); print(os.path.dirname(torch.__file__)); \
print(';'.join(e.include_paths())); print(int(torch.compiled_with_cxx11_abi()))"
    OUTPUT_VARIABLE _torch_int8_torch RESULT_VARIABLE _torch_int8_rc OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT _torch_int8_rc EQUAL 0)
    message(FATAL_ERROR "torch_int8: ${Python_EXECUTABLE} cannot import torch")
  endif()
  string(REPLACE "\n" ";" _torch_int8_torch "${_torch_int8_torch}")
  list(GET _torch_int8_torch 0 _torch_int8_cuda)
  if(_torch_int8_cuda STREQUAL "")
    find_package(Torch REQUIRED)
  else()
    list(GET _torch_int8_torch 1 Torch_VERSION)
    list(GET _torch_int8_torch 2 TORCH_INSTALL_PREFIX)
    list(SUBLIST _torch_int8_torch 3 -1 _torch_int8_rest)
    list(POP_BACK _torch_int8_rest _torch_int8_abi)
    if(NOT TARGET torch_int8_torch_cpu)
      add_library(torch_int8_torch_cpu INTERFACE IMPORTED)
      set(_torch_int8_libs "")
      foreach(lib torch torch_cpu c10)
        find_library(_torch_int8_lib_${lib} ${lib} PATHS "${TORCH_INSTALL_PREFIX}/lib" NO_DEFAULT_PATH REQUIRED)
        list(APPEND _torch_int8_libs "${_torch_int8_lib_${lib}}")
      endforeach()
      set_target_properties(torch_int8_torch_cpu PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_torch_int8_rest}"
        INTERFACE_LINK_LIBRARIES "${_torch_int8_libs}"
        INTERFACE_COMPILE_DEFINITIONS "_GLIBCXX_USE_CXX11_ABI=${_torch_int8_abi}")
    endif()
    set(TORCH_LIBRARIES torch_int8_torch_cpu)
    set(TORCH_CXX_FLAGS "-D_GLIBCXX_USE_CXX11_ABI=${_torch_int8_abi}")
    message(STATUS "torch_int8: CPU-only build against torch ${Torch_VERSION} (a CUDA ${_torch_int8_cuda} build)")
  endif()
endmacro()
