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
  endif()
  find_package(Torch REQUIRED)
endmacro()
