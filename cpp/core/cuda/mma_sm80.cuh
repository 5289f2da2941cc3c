// The int8 tensor-core instruction of the hand-written sm_80+ kernels
// (gemm_skinny_mma.cu, conv_wgrad_mma.cu): mma.sync m16n8k32.
//
// Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k32"), lane = 4 group + quad:
//   A (16 x 32, row-major)   a0: row group,     k = 4 quad + 0..3   a1: row group + 8, same k
//                            a2: row group,     k + 16              a3: row group + 8, k + 16
//   B (32 x 8, column-major) b0: column group,  k = 4 quad + 0..3   b1: k + 16
//   C (16 x 8, int32)        c0, c1: row group, columns 2 quad, 2 quad + 1   c2, c3: row group + 8
#pragma once

namespace torch_int8::kernels::detail {

// c += a (16 x 32, row-major) * b (32 x 8, column-major), int8 in, int32 sums.
__device__ __forceinline__ void mma_s8(int (&c)[4], int a0, int a1, int a2, int a3, int b0, int b1) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

}  // namespace torch_int8::kernels::detail
