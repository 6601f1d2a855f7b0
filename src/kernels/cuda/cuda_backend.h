// The CUDA backend's entry point, for the backend registry (kernels/cpu/cpu_backend.cpp): plain
// C++, no CUDA headers. Only a -DMLKV_CUDA=ON build has it.
#pragma once

#include "kernels/backend.h"

namespace mlkv::cuda {

// The Backend<float> of GPU `device_index`, with its allocator registered for Device::kCuda.
// Throws mlkv::Error when there is no such GPU (no driver, no device, index out of range).
Backend<float>* make_backend(int device_index);

}  // namespace mlkv::cuda
