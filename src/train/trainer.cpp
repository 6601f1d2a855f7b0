// The training loop (trainer.h). One optimizer step:
//   zero grads; for each micro-step a of this rank: fetch its rows (data.h), forward + backward
//   with grad scale 1 / (global batch * ctx) (so the summed gradient is that of the global mean
//   loss); allreduce-sum gradients and the loss over ranks; global grad norm; clip; AdamW at the
//   scheduled lr.
// Every rank holds the same parameters (same init, same averaged gradients, same update), so rank
// 0 alone writes the log, checkpoints and the model.
#include "train/trainer.h"

#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/check.h"
#include "core/mmap_file.h"
#include "core/progress.h"
#include "kernels/backend.h"
#include "kernels/threads.h"
#include "core/timer.h"
#include "io/hf_model.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/dist.h"
#include "train/plot.h"

namespace mlkv::train {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string options_to_json(const TrainOptions& o, int64_t steps, int64_t warmup, int world) {
  json j = {{"out", o.out_dir},
            {"init", o.init},
            {"data", o.data},
            {"val", o.val},
            {"val_fraction", o.val_fraction},
            {"ctx", o.ctx},
            {"batch", o.batch},
            {"accum", o.accum},
            {"steps", steps},
            {"lr", o.lr},
            {"min_lr_ratio", o.min_lr_ratio},
            {"warmup", warmup},
            {"schedule", o.schedule},
            {"beta1", o.adam.beta1},
            {"beta2", o.adam.beta2},
            {"eps", o.adam.eps},
            {"weight_decay", o.adam.weight_decay},
            {"clip", o.clip},
            {"eval_every", o.eval_every},
            {"eval_rows", o.eval_rows},
            {"save_every", o.save_every},
            {"seed", o.seed},
            {"shuffle", o.shuffle},
            {"world", world},
            {"init_std", o.init_std},
            {"skip_nonfinite", o.skip_nonfinite}};
  if (!o.distill.teacher.empty()) {
    j["teacher"] = o.distill.teacher;
    j["distill_alpha"] = o.distill.alpha;
    j["distill_temp"] = o.distill.temp;
  }
  return j.dump();
}

// The options that shape the weights from a resumed step on (the learning-rate schedule, AdamW,
// clipping): the options_to_json key and the CLI name.
constexpr std::pair<const char*, const char*> kUpdateOptions[] = {
    {"lr", "--lr"},         {"min_lr_ratio", "--min-lr-ratio"},
    {"warmup", "--warmup"}, {"schedule", "--schedule"},
    {"steps", "--steps"},   {"weight_decay", "--weight-decay"},
    {"beta1", "--beta1"},   {"beta2", "--beta2"},
    {"eps", "--adam-eps"},  {"clip", "--clip"},
    {"distill_alpha", "--distill-alpha"}, {"distill_temp", "--distill-temp"}};

// Which of those differ between the checkpoint's run and this one: {"--lr": [old, new], ...}.
json changed_options(const std::string& before, const std::string& now) {
  json changes = json::object();
  const json a = json::parse(before, nullptr, false), b = json::parse(now);
  if (!a.is_object()) return changes;
  for (const auto& [key, flag] : kUpdateOptions) {
    if (a.contains(key) && b.contains(key) && a[key] != b[key]) changes[flag] = {a[key], b[key]};
  }
  return changes;
}

std::string describe(const DataFingerprint& f, int ctx) {
  return cat(f.tokens, " tokens, ", f.rows, " rows of ", ctx + 1, ", hash ", f.hash_hex());
}

// A resume must read the data the checkpoint was trained on (the row rule makes the data position
// a function of the step only): refused when the training or validation tokens differ, unless
// allow_data_change, which is then reported.
void check_resume_data(const CheckpointState& st, const DataFingerprint& train,
                       const DataFingerprint& val, const TrainOptions& opt, bool root) {
  if (!st.has_data) {
    if (root)
      std::fprintf(stderr,
                   "mlkv: warning: train: --resume: the checkpoint does not record its data "
                   "(written by an older mlkv), so they cannot be checked\n");
    return;
  }
  const std::pair<const char*, std::pair<DataFingerprint, DataFingerprint>> splits[] = {
      {"training", {st.train_data, train}}, {"validation", {st.val_data, val}}};
  for (const auto& [name, fp] : splits) {
    if (fp.first.same_data(fp.second)) continue;
    const std::string what =
        cat("the ", name, " data are not the ones the checkpoint was trained on (checkpoint: ",
            describe(fp.first, opt.ctx), "; now: ", describe(fp.second, opt.ctx), ")");
    MLKV_REQUIRE(opt.allow_data_change, "train: --resume: ", what,
                 ", so the run would not continue on the rows of the interrupted one. Restore "
                 "those data (the same shards, --val and --val-fraction), or pass "
                 "--allow-data-change to continue on these");
    if (root)
      std::fprintf(stderr, "train: --resume --allow-data-change: %s; continuing on them\n",
                   what.c_str());
  }
}

// The teacher is part of a distilled run: a resume needs the checkpoint's (the same config and
// weights, wherever they are now) and a plain run cannot turn into a distilled one or back.
void check_resume_teacher(const CheckpointState& st, const Teacher* teacher,
                          const TrainOptions& opt, bool root) {
  const std::string fresh = cat("start a new run from its model instead (--init ", opt.out_dir,
                                teacher ? cat(" --teacher ", opt.distill.teacher) : "", ")");
  if (st.teacher.empty()) {
    MLKV_REQUIRE(teacher == nullptr, "train: --resume: the checkpoint's run trained without a "
                 "teacher; --teacher would change its loss from step ", st.step + 1, " on. To "
                 "distil from here, ", fresh);
    return;
  }
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(st.teacher_hash));
  MLKV_REQUIRE(teacher != nullptr, "train: --resume: the checkpoint's run distils from --teacher ",
               st.teacher, " (hash ", hash, "); give it again to continue the run, or ", fresh);
  const TeacherFingerprint& fp = teacher->fingerprint();
  MLKV_REQUIRE(fp.hash == st.teacher_hash, "train: --resume: --teacher ", fp.path, " (hash ",
               fp.hash_hex(), ") is not the teacher the checkpoint's run distils from (",
               st.teacher, ", hash ", hash, "); give that one, or ", fresh);
  if (root && fp.path != st.teacher)
    std::fprintf(stderr, "train: --resume: the teacher %s is the checkpoint's %s (same hash %s)\n",
                 fp.path.c_str(), st.teacher.c_str(), hash);
}

// Copies the tokenizer files found at src (a file or a folder) into dir, so that the trained
// model folder works with --text / --prompt.
void copy_tokenizer(const std::string& src, const std::string& dir) {
  if (src.empty() || !fs::exists(src)) return;
  const fs::path p(src);
  std::vector<fs::path> files;
  if (fs::is_directory(p)) {
    for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                             "tokenizer.model", "encoder.json", "vocab.bpe", "tokenizer.bin"}) {
      if (fs::is_regular_file(p / name)) files.push_back(p / name);
    }
  } else {
    files.push_back(p);
    if (p.filename() == "encoder.json" || p.extension() == ".bpe") {
      files = {p.parent_path() / "encoder.json", p.parent_path() / "vocab.bpe"};
    }
  }
  for (const auto& f : files) {
    fs::path dst = fs::path(dir) / f.filename();
    if (f.extension() == ".json" && f.filename() != "encoder.json" &&
        f.filename() != "tokenizer_config.json" && f.filename() != "special_tokens_map.json") {
      dst = fs::path(dir) / "tokenizer.json";
    }
    if (!fs::is_regular_file(f) || (fs::exists(dst) && fs::equivalent(f, dst))) continue;
    write_text_file(dst.string(), read_text_file(f.string()));  // atomic: never half a file
  }
}

// Keeps the log records of steps <= keep_step (and non-step records), then appends `extra`.
void truncate_log(const std::string& path, int64_t keep_step, const json& extra) {
  std::string kept;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto j = json::parse(line, nullptr, false);
    if (j.is_discarded()) continue;  // a line cut by a crash
    if (j.contains("step") && j["step"].is_number() && j["step"].get<int64_t>() > keep_step &&
        !j.contains("event")) {
      continue;
    }
    kept += line + "\n";
  }
  kept += extra.dump() + "\n";
  write_text_file(path, kept);
}

// Test hook: MLKV_TEST_CRASH_IN_CHECKPOINT=k makes the k-th checkpoint write of this process die
// (SIGKILL) half-way through the file, as a power cut would. tests/train uses it.
int crash_at_checkpoint() {
  const char* v = std::getenv("MLKV_TEST_CRASH_IN_CHECKPOINT");
  return v ? std::atoi(v) : 0;
}

// Test hook: MLKV_TEST_NAN_GRAD=<step>:<tensor> puts a NaN into the gradient of that tensor (HF
// name) at that step (1-based), before the allreduce: a non-finite gradient with a finite loss.
void inject_nan_grad(const ModelConfig& cfg, ModelWeights& grads, int64_t step) {
  const char* v = std::getenv("MLKV_TEST_NAN_GRAD");
  if (v == nullptr) return;
  const std::string spec(v);
  const size_t colon = spec.find(':');
  if (colon == std::string::npos || std::atoll(spec.c_str()) != step) return;
  for (auto& p : list_params(cfg, grads)) {
    if (p.name == spec.substr(colon + 1)) p.tensor->data()[p.tensor->numel() / 2] = NAN;
  }
}

// Why step `step` cannot update the weights, and what to do.
std::string nonfinite_message(int64_t step, double loss, double norm, const std::string& tensor,
                              const TrainOptions& opt, int64_t saved_step) {
  std::string what = cat("train: step ", step, ": ");
  if (!std::isfinite(loss)) what += cat("the loss is ", loss, ", ");
  what += tensor.empty() ? cat("the gradient norm is ", norm)
                         : cat("the gradient of ", tensor,
                               " is not finite (the first such tensor, gradient norm ", norm, ")");
  what += cat("; the weights were not updated with it (",
              saved_step > 0 ? cat("last checkpoint: step ", saved_step) : "no checkpoint yet",
              "). Lower --lr (now ", opt.lr, ") or lengthen --warmup");
  if (opt.clip > 0) what += cat("; --clip ", opt.clip, " cannot bound a non-finite gradient");
  return what + "; --skip-nonfinite N skips up to N such steps";
}

std::string fmt_num(double v, const char* f) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

}  // namespace

std::string format_profile(const OpProfile& p, double total) {
  std::string s = "op                                  forward   backward      total   share\n";
  double sum = 0;
  for (int i = 0; i < static_cast<int>(Op::kCount); ++i) sum += p.fwd[i] + p.bwd[i];
  for (int i = 0; i < static_cast<int>(Op::kCount); ++i) {
    const double t = p.fwd[i] + p.bwd[i];
    char buf[160];
    std::snprintf(buf, sizeof buf, "%-34s %8.3fs %9.3fs %8.3fs %6.1f%%\n",
                  op_name(static_cast<Op>(i)), p.fwd[i], p.bwd[i], t,
                  total > 0 ? 100 * t / total : 0.0);
    s += buf;
  }
  char buf[160];
  std::snprintf(buf, sizeof buf, "%-34s %29.3fs %6.1f%%\n", "optimizer, allreduce, data, other",
                total - sum, total > 0 ? 100 * (total - sum) / total : 0.0);
  s += buf;
  return s;
}

TrainSummary run_training(const TrainOptions& opt) {
  Dist& dist = Dist::get();
  const int world = dist.size(), rank = dist.rank();
  const bool root = dist.is_root();

  // ---- threads ----
  int threads = opt.threads;
  if (threads <= 0 && dist.local_size() > 1) {
    threads =
        std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / dist.local_size());
  }
  set_num_threads(threads);

  // ---- options ----
  MLKV_REQUIRE(!opt.out_dir.empty(), "train: --out is required");
  MLKV_REQUIRE(opt.ctx >= 1, "train: --ctx must be at least 1");
  MLKV_REQUIRE(opt.batch >= 1 && opt.accum >= 1, "train: --batch and --accum must be positive");
  MLKV_REQUIRE(opt.batch % (int64_t{world} * opt.accum) == 0, "train: --batch ", opt.batch,
               " must be a multiple of ranks x --accum = ", world, " x ", opt.accum);
  const int micro = static_cast<int>(opt.batch / (int64_t{world} * opt.accum));
  const int64_t tokens_per_step = opt.batch * opt.ctx;
  int64_t total_steps = opt.steps;
  if (total_steps <= 0 && opt.tokens > 0)
    total_steps = (opt.tokens + tokens_per_step - 1) / tokens_per_step;
  MLKV_REQUIRE(total_steps > 0, "train: give --steps or --tokens");
  MLKV_REQUIRE(opt.val_fraction >= 0 && opt.val_fraction < 1,
               "train: --val-fraction must be in [0, 1)");
  MLKV_REQUIRE(opt.val.empty() || opt.val_fraction == 0,
               "train: give --val or --val-fraction, not both");
  MLKV_REQUIRE(opt.lr > 0 && opt.min_lr_ratio >= 0 && opt.min_lr_ratio <= 1,
               "train: --lr must be > 0 and --min-lr-ratio in [0, 1] (got ", opt.lr, ", ",
               opt.min_lr_ratio, ")");
  MLKV_REQUIRE(opt.warmup >= -1 && opt.warmup <= total_steps && opt.warmup_ratio >= 0 &&
                   opt.warmup_ratio < 1,
               "train: --warmup must be in [0, steps = ", total_steps,
               "] and --warmup-ratio in [0, 1) (got ", opt.warmup, ", ", opt.warmup_ratio, ")");
  MLKV_REQUIRE(opt.skip_nonfinite >= 0, "train: --skip-nonfinite must be >= 0");
  const int64_t warmup =
      opt.warmup >= 0 ? opt.warmup
                      : static_cast<int64_t>(opt.warmup_ratio * static_cast<double>(total_steps));
  LrSchedule sched;
  sched.kind = LrSchedule::parse(opt.schedule);
  sched.lr = opt.lr;
  sched.warmup = warmup;
  sched.total = total_steps;
  sched.min_ratio = opt.min_lr_ratio;

  const bool distilling = !opt.distill.teacher.empty();
  if (distilling) {
    validate_distill_options(opt.distill);
    MLKV_REQUIRE(opt.device == Device::kCpu, "train: --teacher trains on the CPU only for now (the "
                 "distillation op has no CUDA kernel yet); leave out --device or give --device cpu");
  }

  const fs::path out(opt.out_dir);
  const std::string ckpt_path = (out / kCheckpointFile).string();
  const std::string log_path = (out / kLogFile).string();
  const bool have_ckpt = fs::exists(ckpt_path);
  if (have_ckpt && !opt.resume && !opt.overwrite) {
    fail("train: ", ckpt_path,
         " exists: pass --resume to continue that run or --overwrite to start over");
  }
  MLKV_REQUIRE(!opt.resume || have_ckpt, "train: --resume: no checkpoint at ", ckpt_path);
  if (root) fs::create_directories(out);

  // ---- data ----
  const DataFiles files = find_data_files(opt.data);
  TokenStream train_stream(files.train);
  std::vector<std::string> val_files = files.val;
  if (!opt.val.empty()) {
    // A shard file, or a folder: its validation shards when it has any, else its training shards.
    const DataFiles v = find_data_files(opt.val);
    val_files = v.val.empty() ? v.train : v.val;
  }
  std::unique_ptr<TokenStream> val_stream;
  int64_t train_end = train_stream.n_tokens();
  if (opt.val_fraction > 0) {
    train_end =
        train_stream.n_tokens() -
        static_cast<int64_t>(opt.val_fraction * static_cast<double>(train_stream.n_tokens()));
  } else if (!val_files.empty()) {
    val_stream = std::make_unique<TokenStream>(val_files);
  }
  RowSource train_rows(train_stream, 0, train_end, opt.ctx, opt.seed, opt.shuffle);
  MLKV_REQUIRE(train_rows.n_rows() > 0, "train: the training data holds ", train_end,
               " tokens, fewer than one row of ", opt.ctx + 1);
  std::unique_ptr<RowSource> val_rows;
  if (opt.val_fraction > 0) {
    val_rows = std::make_unique<RowSource>(train_stream, train_end, train_stream.n_tokens(),
                                           opt.ctx, 0, false);
  } else if (val_stream) {
    val_rows =
        std::make_unique<RowSource>(*val_stream, 0, val_stream->n_tokens(), opt.ctx, 0, false);
  }
  if (val_rows && val_rows->n_rows() == 0) {
    // Validation asked for but shorter than one row: an error, like the same shortfall in the
    // training data; the data folder's own val shards (not asked for): a warning.
    const int64_t n =
        opt.val_fraction > 0 ? train_stream.n_tokens() - train_end : val_stream->n_tokens();
    const std::string what =
        cat(opt.val_fraction > 0 ? cat("--val-fraction ", opt.val_fraction, " holds out ")
            : !opt.val.empty()   ? cat("the validation data of --val ", opt.val, " hold ")
                                 : cat("the validation shards of ", opt.data, " hold "),
            n, " tokens, fewer than one row of ", opt.ctx + 1, " (--ctx ", opt.ctx, " + 1)");
    MLKV_REQUIRE(opt.val.empty() && opt.val_fraction == 0, "train: ", what,
                 ": give more validation data or a smaller --ctx");
    if (root)
      std::fprintf(stderr, "mlkv: warning: train: %s: training without validation\n", what.c_str());
    val_rows.reset();
  }
  MLKV_REQUIRE(val_rows || opt.eval_every == 0, "train: --eval-every ", opt.eval_every,
               " but there is no validation data (give --val or --val-fraction)");
  // What the checkpoint records of the data, to refuse a resume on other data.
  const DataFingerprint train_fp = train_rows.fingerprint();
  const DataFingerprint val_fp = val_rows ? val_rows->fingerprint() : DataFingerprint{};

  // ---- model and optimizer state ----
  ModelConfig cfg;
  ModelWeights params;
  CheckpointState state;
  std::unique_ptr<AdamW> adam;
  std::string tokenizer_src = !opt.tokenizer.empty() ? opt.tokenizer : files.tokenizer;
  if (opt.resume) {
    Checkpoint ck = load_checkpoint(ckpt_path);
    cfg = ck.config;
    params = std::move(ck.params);
    state = ck.state;
    MLKV_REQUIRE(state.global_batch == opt.batch && state.ctx == opt.ctx &&
                     state.seed == opt.seed && state.shuffle == opt.shuffle,
                 "train: --resume needs the checkpoint's batch (", state.global_batch, "), ctx (",
                 state.ctx, "), seed (", state.seed, ") and shuffle (",
                 state.shuffle ? "on" : "off", ") so that the data continues where it stopped");
    MLKV_REQUIRE(total_steps >= state.step, "train: --resume: --steps ", total_steps,
                 " is below the checkpoint's step ", state.step);
    check_resume_data(state, train_fp, val_fp, opt, root);
    adam = std::make_unique<AdamW>(cfg, opt.adam, params.tok_embd.device());
    adam->m() = std::move(ck.adam_m);
    adam->v() = std::move(ck.adam_v);
    adam->set_steps(state.adam_steps >= 0 ? state.adam_steps : state.step);
  } else {
    if (!opt.init.empty()) {
      LoadedModel lm = load_model(opt.init);
      cfg = lm.config;
      params = std::move(lm.weights);
      if (tokenizer_src.empty()) tokenizer_src = opt.init;
    } else {
      cfg = opt.config;
      cfg.validate();
      init_weights_random(cfg, &params, opt.init_seed ? opt.init_seed : opt.seed, opt.init_std);
    }
    adam = std::make_unique<AdamW>(cfg, opt.adam, params.tok_embd.device());
    state.global_batch = opt.batch;
    state.ctx = opt.ctx;
    state.seed = opt.seed;
    state.shuffle = opt.shuffle;
  }
  if (opt.device != params.tok_embd.device()) {
    // Parameters and moments move to the training device once; the data stays on the host.
    MLKV_REQUIRE(world == 1, "train: data-parallel training over MPI runs on the CPU (one GPU per "
                 "run for now)");
    const int64_t steps_done = adam->steps();
    ModelWeights m = std::move(adam->m()), v = std::move(adam->v());
    move_weights(cfg, &params, opt.device);
    adam = std::make_unique<AdamW>(cfg, opt.adam, opt.device);
    move_weights(cfg, &m, opt.device);
    move_weights(cfg, &v, opt.device);
    adam->m() = std::move(m);
    adam->v() = std::move(v);
    adam->set_steps(steps_done);
  }
  MLKV_REQUIRE(opt.ctx <= cfg.n_ctx, "train: --ctx ", opt.ctx, " exceeds the model's context of ",
               cfg.n_ctx, " positions");
  MLKV_REQUIRE(train_stream.n_vocab() <= static_cast<uint32_t>(cfg.n_vocab),
               "train: the data's vocabulary (", train_stream.n_vocab(),
               " ids) is larger than the model's (", cfg.n_vocab, ")");
  // The teacher: loaded and checked against the student (vocabulary, context) once the student's
  // config is known; on resume it must be the checkpoint's.
  std::unique_ptr<Teacher> teacher;
  if (distilling) teacher = std::make_unique<Teacher>(opt.distill.teacher, cfg, micro, opt.ctx);
  if (opt.resume) check_resume_teacher(state, teacher.get(), opt, root);
  if (teacher) {
    state.teacher = teacher->fingerprint().path;
    state.teacher_hash = teacher->fingerprint().hash;
  }
  state.total_steps = total_steps;
  const std::string options_json = options_to_json(opt, total_steps, warmup, world);
  // Schedule or optimizer options changed on resume apply from here on: reported, not silent.
  const json changed =
      opt.resume ? changed_options(state.options_json, options_json) : json::object();
  if (root && !changed.empty()) {
    std::string list;
    for (const auto& [flag, v] : changed.items())
      list += cat(list.empty() ? "" : ", ", flag, " ", v[0].dump(), " -> ", v[1].dump());
    std::fprintf(stderr,
                 "train: --resume: options differ from the checkpoint's run and apply from step "
                 "%lld on: %s\n",
                 static_cast<long long>(state.step + 1), list.c_str());
  }
  state.options_json = options_json;
  state.has_data = true;
  state.train_data = train_fp;
  state.val_data = val_fp;

  // Gradients, moments and the graph's activations live where the parameters are.
  const Device device = params.tok_embd.device();
  ModelWeights grads;
  allocate_weights(cfg, &grads, DType::kF32, device);
  Backend<float>& be = backend<float>(device);
  be.set_matmul_dtype(opt.precision);
  struct PrecisionReset {  // later work in this process multiplies in f32 again
    Backend<float>& be;
    ~PrecisionReset() { be.set_matmul_dtype(DType::kF32); }
  } precision_reset{be};
  TrainGraph<float> graph(cfg, micro, opt.ctx, be);
  TrainSummary summary;
  summary.n_params = cfg.n_params();
  if (opt.profile) graph.profile = &summary.profile;
  // The teacher's forward is forward work of the same ops: it adds to the same columns.
  if (opt.profile && teacher) teacher->set_profile(&summary.profile);
  const Distillation<float> distill =
      teacher ? teacher->distillation(opt.distill.alpha, opt.distill.temp) : Distillation<float>{};
  std::vector<int32_t> rows(static_cast<size_t>(micro) * (opt.ctx + 1));
  const float grad_scale = static_cast<float>(1.0 / static_cast<double>(tokens_per_step));

  // ---- log ----
  const int64_t start_step = state.step;
  if (root) {
    json header = {
        {"event", opt.resume ? "resume" : "start"},
        {"step", start_step},
        {"config", cfg.summary()},
        {"n_params", cfg.n_params()},
        {"world", world},
        {"micro_batch", micro},
        {"threads", num_threads()},
        {"backend", backend<float>(device).name()},
        {"precision", dtype_name(opt.precision)},
        {"activation_bytes", TrainGraph<float>::arena_bytes(cfg, micro, opt.ctx, 4)},
        {"options", json::parse(state.options_json)},
        {"data",
         {{"train", {{"tokens", train_fp.tokens}, {"hash", train_fp.hash_hex()}}},
          {"val", {{"tokens", val_fp.tokens}, {"hash", val_fp.hash_hex()}}}}},
        {"changed", changed}};  // options changed on resume ({} when none)
    if (teacher) {
      header["teacher"] = {{"path", teacher->fingerprint().path},
                           {"hash", teacher->fingerprint().hash_hex()},
                           {"config", teacher->config().summary()},
                           {"n_params", teacher->config().n_params()},
                           {"weight_bytes", teacher->weight_bytes()},
                           {"activation_bytes", teacher->activation_bytes()}};
    }
    if (opt.resume) {
      truncate_log(log_path, start_step, header);
    } else {
      write_text_file(log_path, header.dump() + "\n");
    }
    if (opt.resume || opt.overwrite) {
      // Temp files of checkpoint writes that were killed.
      for (const auto& e : fs::directory_iterator(out)) {
        if (e.path().filename().string().rfind(std::string(kCheckpointFile) + ".tmp.", 0) == 0)
          fs::remove(e.path());
      }
    }
  }
  std::ofstream log;
  if (root) log.open(log_path, std::ios::app);

  auto evaluate = [&]() -> double {
    if (!val_rows) return -1;
    int64_t n = val_rows->n_rows();
    if (opt.eval_rows > 0) n = std::min(n, opt.eval_rows);
    double acc[2] = {0, 0};  // loss sum, tokens
    std::vector<int32_t> buf(rows.size());
    // Rank k evaluates rows k, k + W, ... in micro-batches.
    std::vector<int64_t> mine;
    for (int64_t r = rank; r < n; r += world) mine.push_back(r);
    for (size_t i = 0; i < mine.size(); i += static_cast<size_t>(micro)) {
      const int cnt =
          static_cast<int>(std::min<size_t>(static_cast<size_t>(micro), mine.size() - i));
      for (int j = 0; j < cnt; ++j)
        val_rows->fetch(mine[i + static_cast<size_t>(j)], buf.data() + int64_t{j} * (opt.ctx + 1));
      acc[0] += graph.forward_backward(params, buf.data(), nullptr, 1.0f, cnt);
      acc[1] += static_cast<double>(cnt) * opt.ctx;
    }
    dist.allreduce_sum(acc, 2);
    return acc[1] > 0 ? acc[0] / acc[1] : -1;
  };

  int n_saves = 0;
  int64_t saved_step = opt.resume ? start_step : 0;
  const int crash_at = crash_at_checkpoint();
  auto save = [&](double elapsed) {
    if (!root) return;
    ++n_saves;
    saved_step = state.step;
    CheckpointState st = state;
    st.elapsed_s = elapsed;
    WriteProgress hook;
    if (crash_at == n_saves) {
      hook = [](uint64_t done, uint64_t total) {
        if (done * 2 >= total) {
          std::fflush(nullptr);
          ::kill(::getpid(), SIGKILL);
        }
      };
    }
    SaveOptions so;
    so.dtype = opt.out_dtype;
    if (device == Device::kCpu) {
      save_checkpoint(ckpt_path, cfg, params, adam->m(), adam->v(), st, hook);
      save_model(opt.out_dir, cfg, params, so);
    } else {
      // One host copy of each, for the checkpoint and the model: the same files whatever device
      // trained them.
      const ModelWeights hp = copy_weights(cfg, params, Device::kCpu);
      save_checkpoint(ckpt_path, cfg, hp, copy_weights(cfg, adam->m(), Device::kCpu),
                      copy_weights(cfg, adam->v(), Device::kCpu), st, hook);
      save_model(opt.out_dir, cfg, hp, so);
    }
    copy_tokenizer(tokenizer_src, opt.out_dir);
    write_text_file((out / kPlotFile).string(),
                    loss_plot_svg({read_train_log(log_path, out.filename().string())},
                                  "mlkv train: " + cfg.summary()));
  };

  // ---- loop ----
  const bool show = root && !opt.quiet;
  std::unique_ptr<ProgressBar> bar;
  if (show && ProgressBar::enabled())
    bar = std::make_unique<ProgressBar>("train", static_cast<double>(total_steps - start_step),
                                        "step");
  const int64_t line_every = std::max<int64_t>(1, (total_steps - start_step) / 20);
  if (show) {
    std::fprintf(
        stderr,
        "train: %s, %.2fM params, %d rank(s) x %d thread(s) on %s, %lld rows x %d tokens per step "
        "(micro-batch %d x %d accum), %lld steps, activations %.1f MiB per rank\n",
        cfg.summary().c_str(), static_cast<double>(cfg.n_params()) / 1e6, world, num_threads(),
        backend<float>(device).name().c_str(),
        static_cast<long long>(opt.batch), opt.ctx, micro, opt.accum,
        static_cast<long long>(total_steps),
        static_cast<double>(TrainGraph<float>::arena_bytes(cfg, micro, opt.ctx, 4)) / (1 << 20));
    if (teacher) {
      std::fprintf(stderr,
                   "train: distilling from %s (%s, %.2fM params): loss = %g CE + %g x %g^2 KL; "
                   "teacher weights %.1f MiB, activations %.1f MiB per rank\n",
                   teacher->fingerprint().path.c_str(), teacher->config().summary().c_str(),
                   static_cast<double>(teacher->config().n_params()) / 1e6, opt.distill.alpha,
                   1 - opt.distill.alpha, opt.distill.temp,
                   static_cast<double>(teacher->weight_bytes()) / (1 << 20),
                   static_cast<double>(teacher->activation_bytes()) / (1 << 20));
    }
  }
  const double t_start = now_seconds();
  double last_val = -1;
  for (int64_t step = start_step; step < total_steps; ++step) {
    // Gradients are zero here: freshly allocated, then zeroed by each AdamW pass.
    double sums[2] = {0, 0};  // cross-entropy, KL (distilling) over this rank's positions
    for (int a = 0; a < opt.accum; ++a) {
      const int64_t g0 = step * opt.batch + (int64_t{rank} * opt.accum + a) * micro;
      train_rows.fetch_rows(g0, micro, rows.data());
      if (teacher) {
        // The teacher runs on this rank's rows of this micro-step, then the student reads its
        // logits chunk by chunk in the output layer.
        teacher->forward(rows.data(), micro);
        const LossSums l =
            graph.forward_backward(params, rows.data(), &grads, grad_scale, micro, distill);
        sums[0] += l.ce;
        sums[1] += l.kl;
      } else {
        sums[0] += graph.forward_backward(params, rows.data(), &grads, grad_scale);
      }
    }
    inject_nan_grad(cfg, grads, step + 1);
    const double t_comm = now_seconds();
    if (world > 1) {
      for (auto& p : list_params(cfg, grads))
        dist.allreduce_sum(p.tensor->data(), p.tensor->numel());
      dist.allreduce_sum(sums, teacher ? 2 : 1);
    }
    const double comm_s = now_seconds() - t_comm;
    const double ce = sums[0] / static_cast<double>(tokens_per_step);
    const double kl = sums[1] / static_cast<double>(tokens_per_step);
    // The objective the gradient is of; alpha = 1 gives the cross-entropy bit for bit.
    const double loss =
        teacher ? (opt.distill.alpha * sums[0] + (1 - opt.distill.alpha) * opt.distill.temp *
                                                     opt.distill.temp * sums[1]) /
                      static_cast<double>(tokens_per_step)
                : ce;
    std::string bad_tensor;  // the first tensor with a non-finite gradient
    const double norm = global_grad_norm(cfg, grads, &bad_tensor);
    const double lr = sched.at(step);
    // A non-finite gradient (or loss) never reaches the weights: every rank sees the same
    // summed values, so all stop or all skip.
    const bool skip = !std::isfinite(loss) || !std::isfinite(norm);
    if (skip) {
      const std::string why = nonfinite_message(step + 1, loss, norm, bad_tensor, opt, saved_step);
      MLKV_REQUIRE(state.skipped_steps < opt.skip_nonfinite, why);
      ++state.skipped_steps;
      if (root)
        std::fprintf(stderr, "mlkv: warning: %s: skipped (%lld of --skip-nonfinite %lld)\n",
                     why.substr(0, why.find(';')).c_str(),
                     static_cast<long long>(state.skipped_steps),
                     static_cast<long long>(opt.skip_nonfinite));
      zero_grads(cfg, grads);
    } else {
      const double scale = (opt.clip > 0 && norm > opt.clip) ? opt.clip / norm : 1.0;
      adam->step(params, grads, lr, scale, /*zero_grads_after=*/true);
      state.last_loss = loss;
      if (teacher) {
        state.last_ce = ce;
        state.last_kl = kl;
      }
    }
    state.step = step + 1;
    state.adam_steps = adam->steps();
    state.next_row = state.step * opt.batch;
    state.tokens_seen += static_cast<double>(tokens_per_step);

    const bool last = step + 1 == total_steps;
    double val = -1;
    if (val_rows && ((opt.eval_every > 0 && (step + 1) % opt.eval_every == 0) || last)) {
      val = evaluate();
      last_val = val;
      state.last_val_loss = val;
    }
    const double elapsed = now_seconds() - t_start;
    const double tps =
        static_cast<double>(step + 1 - start_step) * static_cast<double>(tokens_per_step) / elapsed;
    if (root) {
      json rec = {{"step", step + 1},
                  {"loss", loss},
                  {"lr", lr},
                  {"grad_norm", norm},
                  {"tokens", state.tokens_seen},
                  {"time_s", state.elapsed_s + elapsed},
                  {"tok_per_s", tps}};
      if (teacher) {
        rec["ce"] = ce;
        rec["kl"] = kl;
      }
      if (world > 1) rec["allreduce_s"] = comm_s;
      if (val >= 0) rec["val_loss"] = val;
      if (skip) rec["skipped"] = true;  // (a non-finite loss or norm is written as null)
      log << rec.dump() << "\n";
      log.flush();
    }
    if (show) {
      std::string suffix = "step " + std::to_string(step + 1) + " | loss " + fmt_num(loss, "%.4f");
      if (teacher) suffix += " (ce " + fmt_num(ce, "%.4f") + ", kl " + fmt_num(kl, "%.4f") + ")";
      if (last_val >= 0) suffix += " | val " + fmt_num(last_val, "%.4f");
      suffix += " | " + fmt_num(tps, "%.0f") + " tok/s | lr " + fmt_num(lr, "%.2e");
      if (bar) {
        bar->update(static_cast<double>(step + 1 - start_step), suffix);
      } else if ((step + 1 - start_step) % line_every == 0 || last || val >= 0) {
        const double eta = elapsed / static_cast<double>(step + 1 - start_step) *
                           static_cast<double>(total_steps - step - 1);
        std::fprintf(stderr, "train: %s | ETA %s\n", suffix.c_str(), format_duration(eta).c_str());
      }
    }
    if ((opt.save_every > 0 && (step + 1) % opt.save_every == 0) || last)
      save(state.elapsed_s + elapsed);
  }
  if (bar) bar->finish();
  summary.seconds = now_seconds() - t_start;
  summary.steps = state.step;
  summary.skipped_steps = state.skipped_steps;
  // The run's last losses, also when this session ran no step (a finished run resumed).
  summary.last_loss = state.last_loss;
  summary.last_ce = state.last_ce;
  summary.last_kl = state.last_kl;
  summary.val_loss = state.last_val_loss;
  summary.tokens_per_s = summary.seconds > 0
                             ? static_cast<double>(state.step - start_step) *
                                   static_cast<double>(tokens_per_step) / summary.seconds
                             : 0;
  if (start_step == total_steps && root)
    save(state.elapsed_s);  // resumed a finished run: rewrite outputs
  dist.barrier();
  return summary;
}

}  // namespace mlkv::train
