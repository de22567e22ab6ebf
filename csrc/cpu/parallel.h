// What the CPU kernels share about OpenMP.
#pragma once

#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace shortcut_fast::cpu {

// Below this many elements an OpenMP region costs more than it saves.
constexpr int64_t kMinParallelWork = 1 << 15;

// The threads an OpenMP region would start here (1 without OpenMP).
inline int64_t max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace shortcut_fast::cpu
