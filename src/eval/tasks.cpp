// Zero-shot task loading, templating, encoding and scoring. See tasks.h and docs/EVAL.md.
#include "eval/tasks.h"

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/timer.h"
#include "eval/loglik.h"
#include "eval/metrics.h"

namespace mlkv::eval {

using json = nlohmann::json;

namespace {

bool is_space(char ch) {
  return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

std::string_view rstrip(std::string_view s) {
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

bool starts_with(std::string_view s, std::string_view p) {
  return s.substr(0, p.size()) == p;
}
bool ends_with(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.substr(s.size() - p.size()) == p;
}

std::string lower(std::string s) {
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

// Multiple-choice continuation: lm-eval's target_delimiter " " before the choice.
std::string mc_continuation(const std::string& choice) {
  return " " + choice;
}

}  // namespace

std::string apply_template(const std::string& tmpl, const std::string& query) {
  if (tmpl == "qa") {
    // llm-foundry writes "Question: <q>" (ARC) or "Question: <goal>\n" (PIQA); lm-eval's prompt
    // is "Question: <q>\nAnswer:".
    std::string_view q = rstrip(query);
    if (ends_with(q, "Answer:")) return std::string(q);
    return std::string(q) + "\nAnswer:";
  }
  if (tmpl == "sciq") {
    // lm-eval: "{support.lstrip()}\nQuestion: ...\nAnswer:", which starts with "\n" when the
    // support is empty; llm-foundry dropped that newline.
    return starts_with(query, "Question:") ? "\n" + query : query;
  }
  if (tmpl == "plain" || tmpl == "lambada") return query;
  fail("unknown task template '", tmpl, "' (known: qa, sciq, plain, lambada)");
}

std::string default_template(const std::string& stem, const std::string& first_query) {
  const std::string s = lower(stem);
  if (starts_with(s, "lambada")) return "lambada";
  if (starts_with(s, "piqa") || starts_with(s, "arc")) return "qa";
  if (starts_with(s, "sciq")) return "sciq";
  if (starts_with(s, "hellaswag")) return "plain";
  return starts_with(first_query, "Question:") ? "qa" : "plain";
}

std::pair<std::string, std::string> lambada_split(const std::string& text) {
  const size_t sp = text.rfind(' ');
  if (sp == std::string::npos) return {"", " " + text};
  return {text.substr(0, sp), text.substr(sp)};
}

Task load_task(const std::string& path, const std::string& tmpl, int64_t limit) {
  std::ifstream in(path);
  if (!in.good()) fail_errno("cannot open task file", path, errno);
  Task task;
  task.path = path;
  task.name = std::filesystem::path(path).stem().string();
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (rstrip(line).empty()) continue;
    if (limit > 0 && static_cast<int64_t>(task.docs.size()) >= limit) break;
    json rec;
    try {
      rec = json::parse(line);
    } catch (const json::exception& e) {
      fail(path, ":", line_no, ": not valid JSON: ", e.what());
    }
    MLKV_REQUIRE(rec.is_object(), path, ":", line_no, ": expected a JSON object");
    auto str = [&](const char* key) {
      MLKV_REQUIRE(rec.contains(key) && rec[key].is_string(), path, ":", line_no, ": '", key,
                   "' must be a string");
      return rec[key].get<std::string>();
    };
    if (task.docs.empty()) {
      const std::string q =
          rec.contains("query") && rec["query"].is_string() ? rec["query"].get<std::string>() : "";
      task.tmpl = tmpl.empty() ? default_template(task.name, q) : tmpl;
      if (tmpl.empty() && (rec.contains("text") || rec.contains("continuation")) &&
          !rec.contains("choices")) {
        task.tmpl = "lambada";
      }
      task.kind = task.tmpl == "lambada" ? TaskKind::kLambada : TaskKind::kMultipleChoice;
    }
    TaskDoc doc;
    if (task.kind == TaskKind::kLambada) {
      if (rec.contains("text")) {
        auto [ctx, cont] = lambada_split(str("text"));
        doc.context = ctx;
        doc.continuations = {cont};
      } else {
        doc.context = str("context");
        std::string cont = str("continuation");
        MLKV_REQUIRE(!cont.empty(), path, ":", line_no, ": empty continuation");
        // The target is a word after a space (lm-eval's ' ' + word), unless the split already
        // carries the whitespace.
        const bool has_space =
            (!doc.context.empty() && is_space(doc.context.back())) || is_space(cont.front());
        doc.continuations = {has_space ? cont : " " + cont};
      }
      std::string_view word = doc.continuations[0];
      while (!word.empty() && is_space(word.front())) word.remove_prefix(1);
      doc.choices = {std::string(word)};
      doc.gold = 0;
    } else {
      doc.context = apply_template(task.tmpl, str("query"));
      MLKV_REQUIRE(rec.contains("choices") && rec["choices"].is_array() && !rec["choices"].empty(),
                   path, ":", line_no, ": 'choices' must be a non-empty list of strings");
      for (const auto& ch : rec["choices"]) {
        MLKV_REQUIRE(ch.is_string(), path, ":", line_no, ": 'choices' must be a list of strings");
        doc.choices.push_back(ch.get<std::string>());
        doc.continuations.push_back(mc_continuation(doc.choices.back()));
      }
      MLKV_REQUIRE(rec.contains("gold") && rec["gold"].is_number_integer(), path, ":", line_no,
                   ": 'gold' must be an integer");
      doc.gold = rec["gold"].get<int>();
      MLKV_REQUIRE(doc.gold >= 0 && doc.gold < static_cast<int>(doc.choices.size()), path, ":",
                   line_no, ": gold ", doc.gold, " is not a choice index (", doc.choices.size(),
                   " choices)");
    }
    task.docs.push_back(std::move(doc));
  }
  MLKV_REQUIRE(!task.docs.empty(), "task file '", path, "' holds no items");
  return task;
}

std::pair<std::vector<int32_t>, std::vector<int32_t>> encode_pair(const Tokenizer& tok,
                                                                  std::string_view context,
                                                                  std::string_view continuation,
                                                                  int32_t prefix_token,
                                                                  bool add_bos) {
  std::vector<int32_t> ctx_enc, cont_enc;
  if (context.empty()) {
    MLKV_REQUIRE(prefix_token >= 0,
                 "an item has an empty context and the tokenizer has no BOS/EOS token to "
                 "stand for it");
    return {{prefix_token}, tok.encode(continuation, false)};
  }
  std::string ctx(context), cont(continuation);
  const size_t kept = rstrip(ctx).size();
  if (kept < ctx.size()) {
    cont = ctx.substr(kept) + cont;
    ctx.resize(kept);
  }
  const std::vector<int32_t> whole = tok.encode(ctx + cont, false);
  ctx_enc = tok.encode(ctx, false);
  if (ctx_enc.size() < whole.size()) {
    cont_enc.assign(whole.begin() + static_cast<std::ptrdiff_t>(ctx_enc.size()), whole.end());
  } else {
    // The pair merged into fewer tokens than the context alone: encode the parts separately.
    cont_enc = tok.encode(cont, false);
  }
  if (ctx_enc.empty()) {
    MLKV_REQUIRE(prefix_token >= 0,
                 "an item's context encodes to no tokens and the tokenizer has no BOS/EOS token");
    ctx_enc.push_back(prefix_token);
  }
  if (add_bos && tok.bos_id() >= 0) ctx_enc.insert(ctx_enc.begin(), tok.bos_id());
  return {ctx_enc, cont_enc};
}

const Metric* TaskResult::find(const std::string& n) const {
  for (const Metric& m : metrics) {
    if (m.name == n) return &m;
  }
  return nullptr;
}

TaskResult run_task(Model& model, const Tokenizer& tok, const Task& task, const TaskOptions& opt) {
  Timer timer;
  TaskResult res;
  res.name = task.name;
  res.path = task.path;
  res.tmpl = task.tmpl;
  res.n_items = static_cast<int64_t>(task.docs.size());
  const int32_t prefix =
      opt.prefix_token >= 0 ? opt.prefix_token : (tok.bos_id() >= 0 ? tok.bos_id() : tok.eos_id());

  // One request per (item, choice), choices of an item adjacent so their contexts are shared.
  std::vector<LoglikRequest> reqs;
  std::vector<int64_t> item_of_req;
  std::vector<size_t> first_req(task.docs.size());
  for (size_t i = 0; i < task.docs.size(); ++i) {
    const TaskDoc& d = task.docs[i];
    first_req[i] = reqs.size();
    for (const std::string& cont : d.continuations) {
      auto [ctx_enc, cont_enc] = encode_pair(tok, d.context, cont, prefix, opt.add_bos);
      MLKV_REQUIRE(!cont_enc.empty(), task.path, ": item ", i,
                   ": the continuation encodes to no tokens");
      reqs.push_back({std::move(ctx_enc), std::move(cont_enc)});
      item_of_req.push_back(static_cast<int64_t>(i));
    }
  }
  res.n_requests = static_cast<int64_t>(reqs.size());

  LoglikOptions lo;
  lo.batch = opt.batch;
  lo.share_context = opt.share_context;
  lo.max_ctx = opt.max_ctx;
  lo.cache_type = opt.cache_type;
  if (opt.on_progress) {
    lo.on_progress = [&](int64_t done) {
      // Items whose every request is done.
      const int64_t items =
          done >= res.n_requests ? res.n_items : item_of_req[static_cast<size_t>(done)];
      opt.on_progress(items, res.n_items);
    };
  }
  const std::vector<LoglikResult> out = score_loglik(model, reqs, lo);
  for (const LoglikResult& r : out) res.n_truncated += r.truncated_tokens > 0 ? 1 : 0;

  if (task.kind == TaskKind::kLambada) {
    std::vector<double> acc, ll;
    for (size_t i = 0; i < task.docs.size(); ++i) {
      const LoglikResult& r = out[first_req[i]];
      acc.push_back(r.greedy ? 1.0 : 0.0);
      ll.push_back(r.logprob);
      res.predictions.push_back(r.greedy ? 0 : -1);
    }
    res.target_loglik = ll;
    res.metrics.push_back({"acc", mean(acc), mean_stderr(acc)});
    res.metrics.push_back({"perplexity", perplexity(ll), perplexity_bootstrap_stderr(ll)});
  } else {
    std::vector<double> acc, acc_norm;
    for (size_t i = 0; i < task.docs.size(); ++i) {
      const TaskDoc& d = task.docs[i];
      std::vector<double> ll;
      std::vector<int64_t> chars;
      for (size_t k = 0; k < d.choices.size(); ++k) {
        ll.push_back(out[first_req[i] + k].logprob);
        chars.push_back(utf8_length(d.choices[k]));
      }
      const ChoiceScores s = score_choices(ll, chars);
      acc.push_back(s.pred == d.gold ? 1.0 : 0.0);
      acc_norm.push_back(s.pred_norm == d.gold ? 1.0 : 0.0);
      res.predictions.push_back(s.pred);
    }
    res.metrics.push_back({"acc", mean(acc), mean_stderr(acc)});
    res.metrics.push_back({"acc_norm", mean(acc_norm), mean_stderr(acc_norm)});
  }
  res.seconds = timer.seconds();
  return res;
}

}  // namespace mlkv::eval
