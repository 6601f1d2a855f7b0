// Where a tensor's memory lives, and the allocator of each device. The CPU allocator is built in;
// another device's backend (kernels/backend.h) registers its allocator when it starts, and tensors
// on a device without one cannot be created (mlkv::Error naming the device).
#pragma once

#include <cstddef>
#include <string>

namespace mlkv {

enum class Device { kCpu, kCuda };

const char* device_name(Device d);  // "cpu", "cuda"
// Parses "cpu", "cuda" or "cuda:N" (the index is returned in *index when not null); throws
// mlkv::Error naming the text otherwise.
Device parse_device(const std::string& s, int* index = nullptr);

// Memory of one device: zero-filled allocation, release, copies within the device and to or from
// the host. All sizes in bytes.
class DeviceAllocator {
 public:
  virtual ~DeviceAllocator() = default;
  virtual void* allocate(size_t bytes) = 0;  // zero-filled; throws std::bad_alloc
  virtual void deallocate(void* p, size_t bytes) noexcept = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;  // device -> same device
  virtual void to_host(void* host, const void* src, size_t bytes) = 0;
  virtual void from_host(void* dst, const void* host, size_t bytes) = 0;
};

// The allocator of a device; throws mlkv::Error when no backend for it was registered.
DeviceAllocator& device_allocator(Device d);
// Installs the allocator of a device (a backend does this once; it must outlive all tensors).
void register_device_allocator(Device d, DeviceAllocator* a);

}  // namespace mlkv
