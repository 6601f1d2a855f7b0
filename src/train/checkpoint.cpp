// Checkpoint save/load (checkpoint.h).
#include "train/checkpoint.h"

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/mmap_file.h"
#include "io/hf_config.h"
#include "io/safetensors.h"

namespace mlkv::train {

using nlohmann::json;

namespace {

constexpr const char* kFormat = "mlkv-train-checkpoint";
constexpr const char* kVersion = "1";

json fingerprint_to_json(const DataFingerprint& f) {
  return {{"tokens", f.tokens}, {"rows", f.rows}, {"hash", f.hash_hex()}};
}

DataFingerprint fingerprint_from_json(const json& j) {
  DataFingerprint f;
  f.tokens = j.at("tokens").get<int64_t>();
  f.rows = j.at("rows").get<int64_t>();
  f.hash = std::stoull(j.at("hash").get<std::string>(), nullptr, 16);
  return f;
}

json state_to_json(const CheckpointState& s) {
  json j = {{"step", s.step},
            {"next_row", s.next_row},
            {"global_batch", s.global_batch},
            {"ctx", s.ctx},
            {"seed", s.seed},
            {"shuffle", s.shuffle},
            {"total_steps", s.total_steps},
            {"tokens_seen", s.tokens_seen},
            {"elapsed_s", s.elapsed_s},
            {"options", s.options_json},
            {"adam_steps", s.adam_steps},
            {"skipped_steps", s.skipped_steps},
            {"last_val_loss", s.last_val_loss}};
  if (std::isfinite(s.last_loss)) j["last_loss"] = s.last_loss;
  if (!s.teacher.empty()) {
    char hash[17];
    std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(s.teacher_hash));
    j["teacher"] = {{"path", s.teacher}, {"hash", hash}};
    if (std::isfinite(s.last_ce)) j["last_ce"] = s.last_ce;
    if (std::isfinite(s.last_kl)) j["last_kl"] = s.last_kl;
  }
  if (s.has_data)
    j["data"] = {{"train", fingerprint_to_json(s.train_data)},
                 {"val", fingerprint_to_json(s.val_data)}};
  return j;
}

CheckpointState state_from_json(const json& j) {
  CheckpointState s;
  s.step = j.at("step").get<int64_t>();
  s.next_row = j.at("next_row").get<int64_t>();
  s.global_batch = j.at("global_batch").get<int64_t>();
  s.ctx = j.at("ctx").get<int>();
  s.seed = j.at("seed").get<uint64_t>();
  s.shuffle = j.at("shuffle").get<bool>();
  s.total_steps = j.at("total_steps").get<int64_t>();
  s.tokens_seen = j.at("tokens_seen").get<double>();
  s.elapsed_s = j.at("elapsed_s").get<double>();
  s.options_json = j.at("options").get<std::string>();
  s.adam_steps = j.value("adam_steps", s.step);
  s.skipped_steps = j.value("skipped_steps", int64_t{0});
  s.last_val_loss = j.value("last_val_loss", -1.0);
  if (j.contains("last_loss") && j["last_loss"].is_number()) s.last_loss = j["last_loss"];
  if (j.contains("teacher")) {
    s.teacher = j["teacher"].at("path").get<std::string>();
    s.teacher_hash = std::stoull(j["teacher"].at("hash").get<std::string>(), nullptr, 16);
    if (j.contains("last_ce") && j["last_ce"].is_number()) s.last_ce = j["last_ce"];
    if (j.contains("last_kl") && j["last_kl"].is_number()) s.last_kl = j["last_kl"];
  }
  if (j.contains("data")) {
    s.has_data = true;
    s.train_data = fingerprint_from_json(j["data"].at("train"));
    s.val_data = fingerprint_from_json(j["data"].at("val"));
  }
  return s;
}

struct Item {
  std::string name;
  const Tensor* t;
};

}  // namespace

void save_checkpoint(const std::string& path, const ModelConfig& cfg, const ModelWeights& params,
                     const ModelWeights& adam_m, const ModelWeights& adam_v,
                     const CheckpointState& state, const WriteProgress& progress) {
  std::vector<Item> items;
  for (const auto& [name, t] : list_params(cfg, params)) items.push_back({"param/" + name, t});
  for (const auto& [name, t] : list_params(cfg, adam_m)) items.push_back({"adam_m/" + name, t});
  for (const auto& [name, t] : list_params(cfg, adam_v)) items.push_back({"adam_v/" + name, t});
  json header = json::object();
  uint64_t offset = 0;
  for (const auto& it : items) {
    const uint64_t n_bytes = static_cast<uint64_t>(it.t->numel()) * 4;
    header[it.name] = {
        {"dtype", "F32"}, {"shape", it.t->shape()}, {"data_offsets", {offset, offset + n_bytes}}};
    offset += n_bytes;
  }
  header["__metadata__"] = {{"format", kFormat},
                            {"version", kVersion},
                            {"config", hf_config_to_json(cfg)},
                            {"state", state_to_json(state).dump()}};
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_len = text.size();
  const uint64_t total = 8 + header_len + offset;

  AtomicFileWriter w(path);
  w.write(&header_len, 8);
  w.write(text.data(), text.size());
  uint64_t done = 8 + header_len;
  for (const auto& it : items) {
    const uint64_t n_bytes = static_cast<uint64_t>(it.t->numel()) * 4;
    w.write(it.t->data(), n_bytes);
    done += n_bytes;
    if (progress) progress(done, total);
  }
  w.commit();
}

Checkpoint load_checkpoint(const std::string& path) {
  SafeTensorsFile f(path);
  const auto& meta = f.metadata();
  auto get = [&](const char* key) -> const std::string& {
    auto it = meta.find(key);
    MLKV_REQUIRE(it != meta.end(), path, ": not an mlkv training checkpoint (no '", key,
                 "' in its metadata)");
    return it->second;
  };
  MLKV_REQUIRE(get("format") == kFormat, path, ": not an mlkv training checkpoint (format '",
               get("format"), "')");
  MLKV_REQUIRE(get("version") == kVersion, path, ": checkpoint version ", get("version"),
               " is not supported (this mlkv reads version ", kVersion, ")");
  Checkpoint ck;
  ck.config = parse_hf_config(get("config"), path + " (embedded config)");
  const json sj = json::parse(get("state"), nullptr, false);
  MLKV_REQUIRE(!sj.is_discarded(), path, ": the embedded training state is not valid JSON");
  try {
    ck.state = state_from_json(sj);
  } catch (const std::exception& e) {  // json errors, and std::stoull on a bad hash
    fail(path, ": bad training state: ", e.what());
  }
  allocate_weights(ck.config, &ck.params);
  allocate_weights(ck.config, &ck.adam_m);
  allocate_weights(ck.config, &ck.adam_v);
  auto load_set = [&](const char* prefix, ModelWeights& w) {
    for (auto& r : list_params(ck.config, w)) {
      const std::string name = std::string(prefix) + r.name;
      const TensorEntry* e = f.find(name);
      MLKV_REQUIRE(e != nullptr, path, ": tensor ", name, " is missing");
      MLKV_REQUIRE(e->shape == r.tensor->shape(), path, ": tensor ", name, " has shape ",
                   e->shape_str(), ", expected ", r.tensor->shape_str());
      MLKV_REQUIRE(e->dtype == DType::kF32, path, ": tensor ", name, " is not F32");
      entry_to_f32(*e, r.tensor->data());
    }
  };
  load_set("param/", ck.params);
  load_set("adam_m/", ck.adam_m);
  load_set("adam_v/", ck.adam_v);
  return ck;
}

}  // namespace mlkv::train
