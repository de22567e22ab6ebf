// Shared pieces of the CUDA kernels of shortcut_fast: the storage-dtype
// dispatch and the warp reductions.
#pragma once

#include <ATen/Dispatch.h>

namespace shortcut_fast::cuda {

// fp32, fp16 and bf16 storage (no fp64: these kernels sum in fp32).
#define SHORTCUT_FAST_DISPATCH(dtype, name, ...)                                                        \
  AT_DISPATCH_SWITCH(dtype, name,                                                                       \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) \
                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float x) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(kFullMask, x, offset);
  return x;
}

__device__ __forceinline__ float warp_max(float x) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, offset));
  return x;
}

}  // namespace shortcut_fast::cuda
