// attune-parity-dump CASE OUT.pt
//
// Runs one attention module of worker/models on fixed random parameters and
// inputs, backpropagates a random cotangent through every output, and writes
// everything (parameters, buffers, inputs, outputs, cotangents, gradients and
// the sizes used) to OUT.pt as a pickled Dict[str, Tensor] that Python's
// torch.load reads. tests/worker/parity_oracle.py rebuilds each module in
// PyTorch from the header docs and compares.
//
// Keys:
//   param.<name>, buffer.<name>      as named_parameters() / named_buffers()
//   input.<name>                     every input (bool masks and int64 too)
//   output.<name>                    every output; traces as output.trace.<trace name>
//   cot.<name>                       the cotangent of each floating output, ~ N(0, 0.1²);
//                                    the loss is Σ (output · cot).sum()
//   grad.param.<name>, grad.input.<name>
//   config.<key>                     0-dim int64 / float64 sizes and flags;
//     config.model                   the whole-model cases' ModelConfig as JSON
//                                    (uint8 bytes)
//     config.detached.<output> = 1   a floating output that does not require grad
//                                    (left out of the loss)
//     config.nograd.<param> = 1      a parameter whose grad was undefined (zeros written)
//
// Exit status: 0 written, 1 error, 2 unknown case / usage.
#include <torch/torch.h>

#include <cstdint>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "attune/models/attention.h"
#include "attune/models/blocks.h"
#include "attune/models/encoders.h"
#include "attune/models/fusion.h"
#include "attune/worker/model.h"
#include "bench/model_variants.h"
#include "bench/random_batch.h"
#include "worker/batches.h"

namespace am = attune::models;
namespace am_bench = attune::bench;

namespace {

constexpr int64_t kSeed = 20240517;
constexpr double kScale = 0.3;  // parameters ~ N(0, 0.3²): nothing saturated, nothing zero
// Cotangents ~ N(0, 0.1²): keeps the largest gradients (sums over every
// token of a window / axial grid) small enough that float32 rounding stays
// well under the oracle's 1e-5 absolute tolerance (at scale 1 it reaches it).
constexpr double kCotScale = 0.1;
constexpr int64_t kB = 2;       // batch
constexpr int64_t kD = 16;      // d_model
constexpr int64_t kHeads = 4;

// [B, L] bool padding mask: true at positions >= lengths[b].
torch::Tensor Pad(int64_t L, const std::vector<int64_t>& lengths) {
  auto pad = torch::zeros({static_cast<int64_t>(lengths.size()), L}, torch::kBool);
  for (size_t b = 0; b < lengths.size(); ++b)
    for (int64_t j = lengths[b]; j < L; ++j) pad.index_put_({static_cast<int64_t>(b), j}, true);
  return pad;
}

// Random bool mask over the last dim with ~35% masked, never a row fully masked.
torch::Tensor RandomMask(at::IntArrayRef shape) {
  auto r = torch::rand(shape);
  auto keep = r == std::get<0>(r.min(-1, /*keepdim=*/true));
  return (r < 0.35).logical_and(keep.logical_not());
}

void Randomise(torch::nn::Module& m) {
  torch::NoGradGuard no_grad;
  for (auto& p : m.named_parameters()) p.value().normal_(0, kScale);
}

// Collects the dump; Write() runs the backward pass and writes the file.
class Dump {
 public:
  void Config(const std::string& key, int64_t v) {
    Put("config." + key, torch::scalar_tensor(v, torch::kInt64));
  }
  void ConfigF(const std::string& key, double v) {
    Put("config." + key, torch::scalar_tensor(v, torch::kFloat64));
  }
  // Text (a JSON document) as its UTF-8 bytes.
  void ConfigText(const std::string& key, const std::string& v) {
    Put("config." + key, torch::tensor(std::vector<uint8_t>(v.begin(), v.end()), torch::kUInt8));
  }
  // The module whose parameters, buffers and submodules are dumped (may be none).
  void Module(std::shared_ptr<torch::nn::Module> m) {
    m->eval();
    Randomise(*m);
    module_ = std::move(m);
  }
  // Registers an input; a floating one becomes a leaf that requires grad.
  torch::Tensor Input(const std::string& name, const torch::Tensor& t) {
    auto leaf = t.detach().clone();
    if (leaf.is_floating_point()) leaf.requires_grad_(true);
    inputs_.emplace_back(name, leaf);
    return leaf;
  }
  void Output(const std::string& name, const torch::Tensor& t) {
    if (!t.defined()) {
      std::cerr << "note: output " << name << " is undefined; not written\n";
      return;
    }
    outputs_.emplace_back(name, t);
  }
  // Traces keep their names: output.trace.<name> (a repeated name gets "#2", ...).
  void Traces(const am::AttentionTraces& traces) {
    for (const auto& t : traces) {
      std::string name = "trace." + t.name;
      for (int i = 2; HasOutput(name); ++i) name = "trace." + t.name + "#" + std::to_string(i);
      if (name != "trace." + t.name) std::cerr << "note: repeated trace name " << t.name << "\n";
      Output(name, t.weights);
    }
  }

  void Write(const std::string& path) {
    // Cotangents and the backward pass: loss = Σ (output · cotangent).sum().
    torch::Tensor loss;
    for (const auto& [name, out] : outputs_) {
      Put("output." + name, out.detach().clone());
      if (!out.is_floating_point()) continue;
      auto cot = torch::randn_like(out.detach()) * kCotScale;
      Put("cot." + name, cot);
      if (!out.requires_grad()) {
        std::cerr << "note: output " << name << " does not require grad; left out of the loss\n";
        Config("detached." + name, 1);
        continue;
      }
      auto term = (out * cot).sum();
      loss = loss.defined() ? loss + term : term;
    }
    if (loss.defined()) loss.backward();

    for (const auto& [name, in] : inputs_) {
      Put("input." + name, in.detach().clone());
      if (in.requires_grad()) {
        auto g = in.grad();
        if (!g.defined()) {
          std::cerr << "note: input " << name << " got no grad; zeros written\n";
          g = torch::zeros_like(in);
        }
        Put("grad.input." + name, g.detach().clone());
      }
    }
    if (module_) {
      for (const auto& p : module_->named_parameters()) {
        Put("param." + p.key(), p.value().detach().clone());
        auto g = p.value().grad();
        if (!g.defined()) {
          std::cerr << "note: parameter " << p.key() << " has no grad; zeros written\n";
          Config("nograd." + p.key(), 1);
          g = torch::zeros_like(p.value());
        }
        Put("grad.param." + p.key(), g.detach().clone());
      }
      for (const auto& b : module_->named_buffers()) Put("buffer." + b.key(), b.value().detach().clone());
    }

    auto bytes = torch::pickle_save(c10::IValue(dict_));
    std::ofstream f(path, std::ios::binary);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!f) throw std::runtime_error("cannot write " + path);
  }

 private:
  bool Has(const std::string& key) const { return dict_.contains(key); }
  bool HasOutput(const std::string& name) const {
    for (const auto& o : outputs_)
      if (o.first == name) return true;
    return false;
  }
  void Put(const std::string& key, const torch::Tensor& t) {
    if (Has(key)) throw std::runtime_error("duplicate key " + key);
    dict_.insert(key, t);
  }

  c10::Dict<std::string, torch::Tensor> dict_;
  std::vector<std::pair<std::string, torch::Tensor>> inputs_, outputs_;
  std::shared_ptr<torch::nn::Module> module_;
};

void Outputs(Dump& d, const am::Attended& a) {
  d.Output("output", a.output);
  d.Output("weights", a.weights);
}

void Outputs(Dump& d, const am::SequenceEncoding& e) {
  d.Output("vector", e.vector);
  d.Output("tokens", e.tokens);
  d.Output("pad", e.pad);
  d.Traces(e.traces);
}

// The model variant a case "model" or "model_<variant>" names, or nullptr.
const am_bench::ModelVariant* ModelCase(const std::string& c) {
  if (c == "model") return am_bench::FindModelVariant("model");
  if (c.rfind("model_", 0) != 0 || c == "model_model") return nullptr;
  return am_bench::FindModelVariant(c.substr(6));
}

// Returns false for an unknown case.
bool RunCase(const std::string& c, Dump& d) {
  d.Config("d_model", kD);
  d.Config("heads", kHeads);
  d.Config("batch", kB);

  if (c == "sdpa") {
    auto q = d.Input("q", torch::randn({kB, 3, 4, 8}));
    auto k = d.Input("k", torch::randn({kB, 3, 5, 8}));
    auto v = d.Input("v", torch::randn({kB, 3, 5, 6}));
    auto mask = d.Input("mask", RandomMask({kB, 1, 4, 5}));  // broadcast over heads
    auto bias = d.Input("bias", torch::randn({3, 4, 5}) * 0.5);  // broadcast over batch
    d.ConfigF("scale", 0);
    Outputs(d, am::ScaledDotProductAttention(q, k, v, mask, bias, 0));
  } else if (c == "masked_softmax") {
    const int64_t dim = 1;
    auto logits = d.Input("logits", torch::randn({kB, 4, 5}));
    auto mask = RandomMask({kB, 5, 4}).transpose(1, 2).contiguous();  // no slice along dim 1 fully masked...
    mask.index_put_({1, torch::indexing::Slice(), 3}, true);         // ...except this one, on purpose
    mask = d.Input("mask", mask);
    d.Config("dim", dim);
    d.Output("output", am::MaskedSoftmax(logits, mask, dim));
  } else if (c == "mha_self" || c == "mha_cross") {
    const bool cross = c == "mha_cross";
    am::MultiHeadOptions o;
    o.d_model = kD;
    o.heads = kHeads;
    o.kv_dim = cross ? 12 : 0;
    d.Config("kv_dim", cross ? 12 : kD);
    am::MultiHeadAttention m(o);
    d.Module(m.ptr());
    if (cross) {
      auto query = d.Input("query", torch::randn({kB, 4, kD}));
      auto kv = d.Input("kv", torch::randn({kB, 6, 12}));
      auto pad = d.Input("pad", Pad(6, {6, 4}));
      Outputs(d, m->forward(query, kv, kv, pad));
    } else {
      auto x = d.Input("x", torch::randn({kB, 5, kD}));
      auto pad = d.Input("pad", Pad(5, {5, 3}));
      Outputs(d, m->forward(x, x, x, pad));
    }
  } else if (c == "coattention") {
    am::CoAttention m(kD, kHeads, 0);
    d.Module(m.ptr());
    auto a = d.Input("a", torch::randn({kB, 4, kD}));
    auto b = d.Input("b", torch::randn({kB, 5, kD}));
    auto pad_a = d.Input("pad_a", Pad(4, {4, 3}));
    auto pad_b = d.Input("pad_b", Pad(5, {3, 5}));
    auto r = m->forward(a, b, pad_a, pad_b);
    d.Output("fused", r.fused);
    d.Output("a", r.a);
    d.Output("b", r.b);
    d.Output("weights_ab", r.weights_ab);
    d.Output("weights_ba", r.weights_ba);
  } else if (c == "linear_attention" || c == "linear_attention_keymaps") {
    const bool need_weights = c == "linear_attention";
    am::MultiHeadOptions o;
    o.d_model = kD;
    o.heads = kHeads;
    am::LinearAttention m(o);
    d.Module(m.ptr());
    d.Config("need_weights", need_weights ? 1 : 0);
    auto x = d.Input("x", torch::randn({kB, 6, kD}));
    auto pad = d.Input("pad", Pad(6, {6, 4}));
    Outputs(d, m->forward(x, pad, need_weights));
  } else if (c == "window_attention" || c == "window_attention_shifted") {
    const int64_t window = 4, shift = c == "window_attention" ? 0 : 2, grid = 8;
    d.Config("window", window);
    d.Config("shift", shift);
    am::WindowAttention m(kD, kHeads, window, shift);
    d.Module(m.ptr());
    auto x = d.Input("x", torch::randn({kB, grid, grid, kD}));
    Outputs(d, m->forward(x));
  } else if (c == "axial_attention") {
    am::AxialAttention m(kD, kHeads);
    d.Module(m.ptr());
    auto x = d.Input("x", torch::randn({kB, 4, 6, kD}));
    auto r = m->forward(x);
    d.Output("output", r.output);
    d.Output("row_weights", r.row_weights);
    d.Output("col_weights", r.col_weights);
  } else if (c == "transformer_block" || c == "transformer_block_linear") {
    const bool linear = c == "transformer_block_linear";
    am::TransformerOptions o;
    o.d_model = kD;
    o.heads = kHeads;
    o.ff_mult = 2;
    o.attention = linear ? am::AttentionKind::kLinear : am::AttentionKind::kSoftmax;
    d.Config("ff_mult", o.ff_mult);
    d.Config("linear", linear ? 1 : 0);
    d.Config("need_weights", linear ? 1 : 0);
    am::TransformerBlock m(o);
    d.Module(m.ptr());
    auto x = d.Input("x", torch::randn({kB, 5, kD}));
    auto pad = d.Input("pad", Pad(5, {5, 3}));
    Outputs(d, m->forward(x, pad, /*need_weights=*/linear));
  } else if (c == "squeeze_excitation") {
    d.Config("reduction", 4);
    am::SqueezeExcitation m(8, 4);
    d.Module(m.ptr());
    auto x = d.Input("x", torch::randn({kB, 8, 5, 5}));
    Outputs(d, m->forward(x));
  } else if (c == "cbam") {
    d.Config("reduction", 4);
    d.Config("kernel", 7);
    am::Cbam m(8, 4, 7);
    d.Module(m.ptr());
    auto x = d.Input("x", torch::randn({kB, 8, 6, 6}));
    auto r = m->forward(x);
    d.Output("output", r.output);
    d.Output("channel_weights", r.channel_weights);
    d.Output("spatial_weights", r.spatial_weights);
  } else if (c == "hybrid_cnn") {
    am::HybridCnnOptions o;
    o.in_channels = 1;
    o.image_size = 8;
    o.channels = 8;
    o.d_model = kD;
    o.heads = kHeads;
    o.layers = 1;
    d.Config("in_channels", o.in_channels);
    d.Config("image_size", o.image_size);
    d.Config("channels", o.channels);
    d.Config("layers", o.layers);
    am::HybridCnn m(o);
    d.Module(m.ptr());
    auto images = d.Input("images", torch::randn({kB, 1, 8, 8}));
    auto r = m->forward(images);
    d.Output("vector", r.vector);
    d.Output("tokens", r.tokens);
    d.Traces(r.traces);
  } else if (c == "time_encoding") {
    am::TimeEncoding m(kD);
    d.Module(m.ptr());
    auto hours = d.Input("hours", torch::rand({kB, 5}) * 4);
    d.Output("output", m->forward(hours));
  } else if (c == "feature_tokenizer") {
    d.Config("features", 5);
    am::FeatureTokenizer m(5, kD);
    d.Module(m.ptr());
    auto x = d.Input("x", torch::randn({kB, 5}));
    d.Output("output", m->forward(x));
  } else if (c == "sequence_encoder") {
    am::SequenceOptions o;
    o.d_model = kD;
    o.heads = kHeads;
    o.layers = 2;
    d.Config("layers", o.layers);
    am::SequenceEncoder m(o, "seq");
    d.Module(m.ptr());
    auto tokens = d.Input("tokens", torch::randn({kB, 5, kD}));
    auto pad = d.Input("pad", Pad(5, {5, 2}));
    Outputs(d, m->forward(tokens, pad));
  } else if (c == "event_encoder") {
    am::SequenceOptions o;
    o.d_model = kD;
    o.heads = kHeads;
    o.layers = 2;
    d.Config("layers", o.layers);
    d.Config("buckets", 20);
    am::EventEncoder m(20, o);
    d.Module(m.ptr());
    auto bucket = d.Input("bucket", torch::randint(20, {kB, 6}, torch::kInt64));
    auto value = d.Input("value", torch::randn({kB, 6}));
    auto hours = d.Input("hours", torch::rand({kB, 6}) * 4);
    auto pad = d.Input("pad", Pad(6, {6, 3}));
    Outputs(d, m->forward(bucket, value, hours, pad));
  } else if (c == "patch_embedding") {
    d.Config("in_channels", 1);
    d.Config("image_size", 8);
    d.Config("patch", 4);
    am::PatchEmbedding m(1, 8, 4, kD);
    d.Module(m.ptr());
    d.Config("grid", m->grid());
    auto images = d.Input("images", torch::randn({kB, 1, 8, 8}));
    d.Output("output", m->forward(images));
  } else if (c == "gated_mil") {
    d.Config("hidden", 8);
    am::GatedAttentionMil m(kD, 8);
    d.Module(m.ptr());
    auto h = d.Input("h", torch::randn({kB, 6, kD}));
    auto pad = d.Input("pad", Pad(6, {6, 4}));
    Outputs(d, m->forward(h, pad));
  } else if (c == "attention_pool") {
    am::AttentionPool m(kD);
    d.Module(m.ptr());
    auto x = d.Input("x", torch::randn({kB, 5, kD}));
    auto mask = d.Input("mask", Pad(5, {5, 3}));
    Outputs(d, m->forward(x, mask));
  } else if (c == "hierarchical_fusion") {
    const std::vector<std::string> names = {"ehr", "imaging", "genomics"};
    const std::vector<int64_t> lengths = {4, 3, 5};
    // Patient 1 has no imaging: present false and every imaging token padded.
    const std::vector<std::vector<int64_t>> kept = {{4, 2}, {2, 0}, {5, 3}};
    am::HierarchicalFusion m(kD, names);
    d.Module(m.ptr());
    std::vector<am::ModalityTokens> inputs;
    for (size_t i = 0; i < names.size(); ++i) {
      am::ModalityTokens t;
      t.tokens = d.Input("tokens." + names[i], torch::randn({kB, lengths[i], kD}));
      t.pad = d.Input("pad." + names[i], Pad(lengths[i], kept[i]));
      inputs.push_back(t);
    }
    auto present = torch::ones({kB, 3}, torch::kBool);
    present.index_put_({1, 1}, false);
    present = d.Input("present", present);
    auto r = m->forward(inputs, present);
    d.Output("vector", r.vector);
    d.Output("beta", r.beta);
    d.Output("aux_loss", r.aux_loss);  // expected undefined
    d.Traces(r.traces);
  } else if (c == "persam") {
    am::PersAmOptions o;
    o.d_model = kD;
    o.heads = kHeads;
    o.layers = 1;
    o.classes = 2;
    o.mil_weight = 0.5;  // not 1, so that λ is seen to be applied
    d.Config("layers", o.layers);
    d.Config("classes", o.classes);
    d.ConfigF("mil_weight", o.mil_weight);
    d.Config("instance_modalities", 2);
    am::PersAm m(o, 2);
    d.Module(m.ptr());
    const std::vector<int64_t> lengths = {3, 4};
    const std::vector<std::vector<int64_t>> kept = {{3, 2}, {2, 4}};
    std::vector<am::ModalityTokens> instances;
    for (size_t i = 0; i < lengths.size(); ++i) {
      const std::string n = "instance" + std::to_string(i);
      am::ModalityTokens t;
      t.tokens = d.Input(n + ".tokens", torch::randn({kB, lengths[i], kD}));
      t.pad = d.Input(n + ".pad", Pad(lengths[i], kept[i]));
      instances.push_back(t);
    }
    am::ModalityTokens clinical;
    clinical.tokens = d.Input("clinical.tokens", torch::randn({kB, 3, kD}));
    clinical.pad = d.Input("clinical.pad", Pad(3, {2, 0}));  // patient 1: no clinical record
    auto labels = d.Input("labels", torch::tensor({1, 0}, torch::kInt64));
    auto r = m->forward(instances, clinical, labels);
    d.Output("logits", r.logits);
    d.Output("vector", r.vector);
    d.Output("aux_loss", r.aux_loss);
    d.Output("beta", r.beta);
    d.Traces(r.traces);
  } else if (const am_bench::ModelVariant* v = ModelCase(c)) {
    // The study model (worker/model.h), small, in one of the benchmarked
    // configurations (bench/model_variants.h; "model" is the quickstart's:
    // static, events, patch-feature imaging, genomics, hierarchical fusion);
    // patient 1 has no imaging.
    attune::ModelConfig m = attune::worker::testing::SmallModel(kHeads);
    v->apply(m);
    d.ConfigText("model", m.ToJson());
    attune::worker::MultimodalAttentionNet net(m);
    d.Module(net.ptr());
    attune::worker::Batch x = attune::bench::RandomBatch(
        m, kB, {.pad_events = true, .no_imaging_patient = m.has_imaging() ? 1 : -1});
    auto input = [&](const char* name, torch::Tensor* t) {
      if (t->defined()) *t = d.Input(name, *t);
    };
    input("static_x", &x.static_x);
    input("event_bucket", &x.event_bucket);
    input("event_value", &x.event_value);
    input("event_time", &x.event_time);
    input("event_pad", &x.event_pad);
    input("imaging", &x.imaging);
    input("genomics", &x.genomics);
    input("present", &x.present);
    input("label", &x.label);
    auto r = net->forward(x);
    d.Output("logits", r.logits);
    d.Output("beta", r.beta);
    d.Output("aux_loss", r.aux_loss);  // PersAM's MIL term; undefined (not written) otherwise
  } else {
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: attune-parity-dump CASE OUT.pt\n";
    return 2;
  }
  const std::string which = argv[1], path = argv[2];
  try {
    torch::manual_seed(kSeed);
    Dump dump;
    if (!RunCase(which, dump)) {
      std::cerr << "attune-parity-dump: unknown case '" << which << "'\n";
      return 2;
    }
    dump.Write(path);
  } catch (const std::exception& e) {
    std::cerr << "attune-parity-dump " << which << ": " << e.what() << "\n";
    return 1;
  }
  return 0;
}
