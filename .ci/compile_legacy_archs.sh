#!/usr/bin/env bash
# Compile-only proof that the kernels for the GPUs CUDA 13 dropped still build:
# sm_53 (Jetson Nano), sm_61 (Pascal), sm_62 (Jetson TX2), sm_70 (Volta) and
# sm_72 (Jetson Xavier). Builds for them need CUDA 12, so this unpacks a CUDA 12
# nvcc into a throw-away folder and compiles, once per architecture, every
# source a build for that architecture compiles: the simt family (sm_50+), the
# dp4a family (sm_61+) and the files all families share. The tensor-core
# families (*_smNN.cu, *_mma.cu) need sm_75+ and are the CUDA 13 build's job.
#
# Where CUDA 12 comes from: the PyPI wheel nvidia-cuda-nvcc-cu12 holds ptxas,
# libdevice and the crt headers but not the nvcc driver, cicc or cudafe++, so
# the compiler comes from Debian's non-free nvidia-cuda-toolkit (trixie: CUDA
# 12.4.1), unpacked, not installed; the runtime and CCCL headers come from the
# PyPI wheels of that same release, because the crt headers must match cicc.
#
# Prints one line per (source, architecture); exits non-zero if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_TOOLKIT_DEB="nvidia-cuda-toolkit=12.4.131~12.4.1-2"
CUDA_WHEELS=(nvidia-cuda-nvcc-cu12==12.4.131 nvidia-cuda-runtime-cu12==12.4.127 nvidia-cuda-cccl-cu12==12.4.127.post1)
CUTLASS_WHEEL="nvidia-cutlass==4.2.0.0"
ARCHS=(53 61 62 70 72)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Downloads the toolkit .deb through a private apt configuration, so that the
# machine's own package sources stay untouched, and unpacks only the compiler.
unpack_cuda_compiler() {
  local dest="$1" apt="$work/apt" mirror
  # The machine's own Debian mirror: the suite without -updates / -security.
  mirror="$(apt-get indextargets --no-release-info --format '$(RELEASE) $(REPO_URI)' 'Created-By: Packages' |
    awk '$1 !~ /-/ { print $2; exit }')"
  [[ -n "$mirror" ]] || { echo "no Debian package source configured (apt)"; return 1; }
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$dest"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie non-free" > "$apt/sources.list"
  # The sandbox user _apt cannot enter the private mktemp folder.
  local opts=(-q -o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o Dir::State::status=/dev/null
    -o APT::Sandbox::User=root)
  (cd "$apt" && apt-get "${opts[@]}" update && apt-get "${opts[@]}" download "$CUDA_TOOLKIT_DEB") > "$apt/log" 2>&1 ||
    { cat "$apt/log"; return 1; }
  dpkg-deb --fsys-tarfile "$apt"/nvidia-cuda-toolkit_*.deb | tar -x -C "$dest" \
    ./usr/lib/nvidia-cuda-toolkit/bin ./usr/bin/cudafe++ ./usr/bin/ptxas ./usr/bin/fatbinary ./usr/bin/cuobjdump
}

install_wheels() {
  local dest="$1"
  python3 -m venv "$work/venv"
  "$work/venv/bin/python" -m pip install -q --no-deps --target "$dest" "${CUDA_WHEELS[@]}" "$CUTLASS_WHEEL"
}

# nvcc reads nvcc.profile beside its binary; Debian's points at /etc, so write
# one that finds the tools of the .deb and the headers and libdevice of the wheels.
write_nvcc_profile() {
  local deb="$1" site="$2/nvidia"
  rm -f "$deb/usr/lib/nvidia-cuda-toolkit/bin/nvcc.profile"
  cat > "$deb/usr/lib/nvidia-cuda-toolkit/bin/nvcc.profile" <<EOF
PATH += \$(_HERE_):$deb/usr/bin:
NVVMIR_LIBRARY_DIR = $site/cuda_nvcc/nvvm/libdevice
INCLUDES += "-I$site/cuda_runtime/include" "-I$site/cuda_cccl/include" "-I$site/cuda_nvcc/include" \$(_SPACE_)
EOF
}

# The oldest architecture a kernel source builds for, or nothing for the
# tensor-core families: the split cmake/CudaArchs.cmake and cpp/core/CMakeLists.txt
# make (shared files: every architecture). A new kernel source that needs more
# than sm_50 must be added here.
min_arch() {
  case "$(basename "$1")" in
    *_sm[0-9]*.cu | *_mma.cu) ;;  # tensor cores (*_mma.cu: mma.sync m16n8k32, sm_80+)
    gemm_dp4a.cu | gemm_skinny.cu) echo 61 ;;  # __dp4a
    *) echo 50 ;;
  esac
}

# Compiles one source for one architecture with the flags cpp/core/CMakeLists.txt
# gives the kernel library in a Release build, plus the family defines that
# CMake gives dispatch.cu (the other files ignore them), and checks that the
# object holds machine code for that architecture.
compile_one() {
  local src="$1" arch="$2" name obj log start
  name="$(basename "$src" .cu)"
  obj="$work/obj/$name.sm_$arch.o"
  log="$work/logs/$name.sm_$arch.log"
  local families=(-DTORCH_INT8_SIMT_ARCHS="\"$arch\"")
  if (( arch >= 61 )); then families+=(-DTORCH_INT8_DP4A_ARCHS="\"$arch\""); fi
  start=$SECONDS
  if "$NVCC" -ccbin "$HOST_CXX" -c "$src" -o "$obj" -gencode "arch=compute_$arch,code=sm_$arch" \
       -std=c++17 -O3 -DNDEBUG --expt-relaxed-constexpr -DCUTLASS_ENABLE_TENSOR_CORE_MMA=1 \
       -DTORCH_INT8_WITH_CUDA "${families[@]}" -Xcompiler=-fPIC -Icpp/include -isystem "$CUTLASS_INCLUDE" \
       > "$log" 2>&1 &&
     "$CUOBJDUMP" --list-elf "$obj" 2>> "$log" | grep -q "\.sm_$arch\.cubin$"; then
    printf 'ok    sm_%s  %-20s %4ds\n' "$arch" "$name.cu" $((SECONDS - start))
  else
    printf 'FAIL  sm_%s  %-20s %4ds  (log below)\n' "$arch" "$name.cu" $((SECONDS - start))
    touch "$log.failed"
  fi
}

echo "host compiler: $(g++ --version | head -n 1)"
unpack_cuda_compiler "$work/deb"
install_wheels "$work/site"
write_nvcc_profile "$work/deb" "$work/site"
export NVCC="$work/deb/usr/lib/nvidia-cuda-toolkit/bin/nvcc"
export CUOBJDUMP="$work/deb/usr/bin/cuobjdump"
export HOST_CXX="$(command -v g++)"
export CUTLASS_INCLUDE="$work/site/cutlass_library/source/include"
export work
export -f compile_one
"$NVCC" --version | tail -n 2
mkdir -p "$work/obj" "$work/logs"

compiles=()
for src in cpp/core/cuda/*.cu; do
  lowest="$(min_arch "$src")"
  for arch in "${ARCHS[@]}"; do
    if [[ -n "$lowest" ]] && (( arch >= lowest )); then compiles+=("$src $arch"); fi
  done
done
printf '%s\n' "${compiles[@]}" | xargs -P "${MAX_JOBS:-2}" -L 1 bash -c 'compile_one "$0" "$1"'

failed=("$work"/logs/*.failed)
if [[ -e "${failed[0]}" ]]; then
  for f in "${failed[@]}"; do
    echo "--- $(basename "${f%.failed}")"
    tail -n 40 "${f%.failed}"
  done
  echo "legacy archs: ${#failed[@]} of ${#compiles[@]} compiles FAILED"
  exit 1
fi
echo "legacy archs: all ${#compiles[@]} compiles succeeded"
