// Safetensors reader/writer: round trip in every dtype, corrupt files rejected with errors that
// name the problem, and the layout rule of the format: the tensors tile the data buffer exactly.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/check.h"
#include "io/safetensors.h"

namespace mlkv {
namespace {

namespace fs = std::filesystem;

std::string tmp_path(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / "mlkv_safetensors_test";
  fs::create_directories(dir);
  return (dir / name).string();
}

void write_raw(const std::string& path, const std::string& header, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  const uint64_t n = header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << header << data;
}

// Expects opening `path` to throw an Error whose message contains `needle`.
void expect_error(const std::string& path, const std::string& needle) {
  try {
    SafeTensorsFile f(path);
    FAIL() << "no error for " << path;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(SafeTensors, RoundTripAllDtypes) {
  std::vector<float> a = {1.0f, -2.5f, 3.25f, 0.0f, 1e-3f, 7.0f};
  std::vector<float> b = {0.5f, 0.25f};
  const std::string path = tmp_path("rt.safetensors");
  write_safetensors(path, {{"a", {2, 3}, a.data(), DType::kF32},
                           {"b16", {2}, b.data(), DType::kF16},
                           {"bb", {2}, b.data(), DType::kBF16}},
                    {{"k", "v"}});
  SafeTensorsFile f(path);
  ASSERT_NE(f.find("a"), nullptr);
  EXPECT_EQ(f.find("a")->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f.metadata().at("k"), "v");
  std::vector<float> got(6);
  entry_to_f32(*f.find("a"), got.data());
  EXPECT_EQ(got, a);
  std::vector<float> got2(2);
  entry_to_f32(*f.find("b16"), got2.data());
  EXPECT_EQ(got2, b);
  entry_to_f32(*f.find("bb"), got2.data());
  EXPECT_EQ(got2, b);
  EXPECT_EQ(f.find("missing"), nullptr);
}

TEST(SafeTensors, Truncated) {
  std::vector<float> a(100, 1.0f);
  const std::string good = tmp_path("good.safetensors");
  write_safetensors(good, {{"a", {100}, a.data(), DType::kF32}});
  const auto size = fs::file_size(good);
  const std::string bad = tmp_path("trunc.safetensors");
  fs::copy_file(good, bad, fs::copy_options::overwrite_existing);
  fs::resize_file(bad, size - 8);
  expect_error(bad, "outside the data buffer");
  fs::resize_file(bad, 4);
  expect_error(bad, "shorter than the 8-byte header");
  fs::resize_file(bad, 20);
  expect_error(bad, "truncated");
}

TEST(SafeTensors, LyingHeaders) {
  const std::string p = tmp_path("lie.safetensors");
  const std::string data(16, '\0');
  write_raw(p, R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,32]}})", data);
  expect_error(p, "outside the data buffer");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[5],"data_offsets":[0,16]}})", data);
  expect_error(p, "needs 20");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[8,4]}})", data);
  expect_error(p, "outside the data buffer");
  write_raw(p, R"({"a":{"dtype":"Q4","shape":[4],"data_offsets":[0,16]}})", data);
  expect_error(p, "unknown dtype 'Q4'");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", data);
  expect_error(p, "bad dimension");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[4]}})", data);
  expect_error(p, "lacks dtype, shape or data_offsets");
  write_raw(p, R"({"a": not json)", data);
  expect_error(p, "not valid JSON");
  write_raw(p, R"([1,2,3])", data);
  expect_error(p, "not a JSON object");
  // Header length field larger than the file.
  {
    std::ofstream f(p, std::ios::binary);
    const uint64_t n = 1000;
    f.write(reinterpret_cast<const char*>(&n), 8);
    f << "{}";
  }
  expect_error(p, "truncated");
  expect_error(tmp_path("does_not_exist.safetensors"), "cannot open");
}

// Four f32 tensors' worth of header entries: name -> [begin, end) in bytes, shape [n].
std::string entry(const std::string& name, int begin, int end) {
  return cat("\"", name, "\":{\"dtype\":\"F32\",\"shape\":[", (end - begin) / 4,
             "],\"data_offsets\":[", begin, ",", end, "]}");
}

// Every way for tensors not to tile the buffer is refused, naming the tensors involved; the
// same bytes laid out properly load.
TEST(SafeTensors, TensorsMustTileTheBuffer) {
  const std::string p = tmp_path("tile.safetensors");
  const std::string data(32, '\0');
  // The issue's case: an output head with the embedding's offsets (it would alias it).
  write_raw(p, "{" + entry("model.embed_tokens.weight", 0, 16) + "," +
                   entry("lm_head.weight", 0, 16) + "," + entry("tail", 16, 32) + "}",
            data);
  expect_error(p, "tensors 'lm_head.weight' (bytes [0, 16)) and 'model.embed_tokens.weight' (bytes [0, 16)) overlap");
  // Partial overlap, whatever the order of the header.
  write_raw(p, "{" + entry("b", 8, 24) + "," + entry("a", 0, 16) + "}", std::string(24, '\0'));
  expect_error(p, "tensors 'a' (bytes [0, 16)) and 'b' (bytes [8, 24)) overlap");
  // A tensor inside another one, even an empty one.
  write_raw(p, "{" + entry("big", 0, 32) + "," + entry("empty", 8, 8) + "}", data);
  expect_error(p, "tensors 'big' (bytes [0, 32)) and 'empty' (bytes [8, 8)) overlap");
  // A hole between two tensors, before the first, after the last; bytes but no tensors.
  write_raw(p, "{" + entry("a", 0, 8) + "," + entry("b", 16, 32) + "}", data);
  expect_error(p, "bytes [8, 16) of the data buffer belong to no tensor (a hole between 'a' and 'b')");
  write_raw(p, "{" + entry("a", 8, 32) + "}", data);
  expect_error(p, "bytes [0, 8) of the data buffer belong to no tensor (a hole before 'a')");
  write_raw(p, "{" + entry("a", 0, 24) + "}", data);
  expect_error(p, "bytes [24, 32) of the data buffer belong to no tensor (after 'a')");
  write_raw(p, "{}", data);
  expect_error(p, "bytes [0, 32) of the data buffer belong to no tensor (the file has no tensors)");
  // Exact tilings load: any header order, empty tensors at a boundary, no tensors and no bytes.
  write_raw(p, "{" + entry("b", 16, 32) + "," + entry("e", 16, 16) + "," + entry("a", 0, 16) +
                   "," + entry("z", 32, 32) + "}",
            data);
  SafeTensorsFile f(p);
  EXPECT_EQ(f.tensors().size(), 4u);
  EXPECT_EQ(f.find("b")->data - f.find("a")->data, 16);
  write_raw(p, "{}", "");
  EXPECT_TRUE(SafeTensorsFile(p).tensors().empty());
}

// "__metadata__": null is no metadata (the reference reader's Option); anything but an object
// of strings is still refused.
TEST(SafeTensors, NullMetadataIsAbsent) {
  const std::string p = tmp_path("meta.safetensors");
  write_raw(p, "{\"__metadata__\":null," + entry("a", 0, 16) + "}", std::string(16, '\0'));
  SafeTensorsFile f(p);
  EXPECT_TRUE(f.metadata().empty());
  EXPECT_NE(f.find("a"), nullptr);
  write_raw(p, "{\"__metadata__\":[1]," + entry("a", 0, 16) + "}", std::string(16, '\0'));
  expect_error(p, "__metadata__ is not an object");
  write_raw(p, "{\"__metadata__\":{\"k\":1}," + entry("a", 0, 16) + "}", std::string(16, '\0'));
  expect_error(p, "__metadata__ value for 'k' is not a string");
}

// A tensor with no elements (a zero dimension) converts to f32 with nothing to write to: the
// destination of an empty vector is null, and no copy may touch it (found by safetensors_fuzz:
// UBSan's null pointer passed to memcpy; the input is fuzz/corpus/safetensors/
// empty_tensor_null_copy.st).
TEST(SafeTensors, EmptyTensorsConvertWithoutADestination) {
  const std::string p = tmp_path("empty.safetensors");
  for (const char* dt : {"F32", "F16", "BF16", "F64"}) {
    write_raw(p, std::string("{\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},") +
                     "\"e\":{\"dtype\":\"" + dt + "\",\"shape\":[0,3],\"data_offsets\":[4,4]}}",
              std::string(4, '\0'));
    SafeTensorsFile f(p);
    const TensorEntry* e = f.find("e");
    ASSERT_NE(e, nullptr) << dt;
    EXPECT_EQ(e->numel(), 0) << dt;
    std::vector<float> none;
    entry_to_f32(*e, none.data());
  }
}

// The in-memory parser is what the file reader runs: same tensors, same errors.
TEST(SafeTensors, ParseFromMemory) {
  std::vector<float> a = {1, 2, 3, 4};
  const std::string path = tmp_path("mem.safetensors");
  write_safetensors(path, {{"a", {4}, a.data(), DType::kF32}}, {{"k", "v"}});
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string name = "memory";
  const SafeTensorsLayout l =
      parse_safetensors(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), name);
  ASSERT_EQ(l.tensors.count("a"), 1u);
  EXPECT_EQ(std::memcmp(l.tensors.at("a").data, a.data(), 16), 0);
  EXPECT_EQ(l.metadata.at("k"), "v");
  EXPECT_EQ(*l.tensors.at("a").file, "memory");
  try {
    parse_safetensors(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size() - 4, name);
    FAIL() << "a truncated image parsed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'memory': tensor 'a'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mlkv
