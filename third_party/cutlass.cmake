# Finds the CUTLASS / CuTe headers: the pinned nvidia-cutlass wheel from PyPI
# (its headers live under cutlass_library/source/include), or a checkout named
# by CUTLASS_DIR. Defines the interface target torch_int8::cutlass_headers.
set(TORCH_INT8_CUTLASS_PIN "4.2.0")
set(CUTLASS_DIR "$ENV{CUTLASS_DIR}" CACHE PATH "CUTLASS checkout (overrides the nvidia-cutlass wheel)")

if(CUTLASS_DIR)
  set(_cutlass_include "${CUTLASS_DIR}/include")
else()
  find_package(Python COMPONENTS Interpreter REQUIRED)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import importlib.util, os; s = importlib.util.find_spec('cutlass_library'); print(os.path.join(os.path.dirname(s.origin), 'source', 'include') if s else '')"
    OUTPUT_VARIABLE _cutlass_include OUTPUT_STRIP_TRAILING_WHITESPACE)
endif()

if(NOT EXISTS "${_cutlass_include}/cutlass/version.h")
  message(FATAL_ERROR "CUTLASS headers not found. Install them with "
    "'pip install nvidia-cutlass==${TORCH_INT8_CUTLASS_PIN}.0' or set CUTLASS_DIR to a CUTLASS checkout.")
endif()

file(STRINGS "${_cutlass_include}/cutlass/version.h" _v REGEX "#define CUTLASS_(MAJOR|MINOR|PATCH) ")
string(REGEX REPLACE ".*CUTLASS_MAJOR ([0-9]+).*CUTLASS_MINOR ([0-9]+).*CUTLASS_PATCH ([0-9]+).*" "\\1.\\2.\\3" CUTLASS_VERSION "${_v}")
if(NOT CUTLASS_VERSION VERSION_EQUAL TORCH_INT8_CUTLASS_PIN)
  message(WARNING "CUTLASS ${CUTLASS_VERSION} found at ${_cutlass_include}; torch_int8 is tested with ${TORCH_INT8_CUTLASS_PIN}")
endif()
message(STATUS "torch_int8: CUTLASS ${CUTLASS_VERSION} headers at ${_cutlass_include}")

add_library(torch_int8_cutlass_headers INTERFACE)
add_library(torch_int8::cutlass_headers ALIAS torch_int8_cutlass_headers)
target_include_directories(torch_int8_cutlass_headers SYSTEM INTERFACE
  "$<BUILD_INTERFACE:${_cutlass_include}>")
