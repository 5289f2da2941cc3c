// Runs the INT8 Fashion-MNIST classifier that export_model.py exported (an AOTInductor package
// whose int8 layers call torch.ops.int8.*) on the test images saved beside it, and prints the test
// accuracy in the line export_model.py wrote to expected.txt.
//   fashion_mnist_int8 DIR    (DIR holds model.pt2 and test_set.pt)
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace {

// Images per forward call: export_model.py's EVAL_BATCH, so that both sides run the same batches.
constexpr int64_t kBatch = 1000;

struct TestSet {
  torch::Tensor images;  // float32 [N, 1, 28, 28], normalized as in Python
  torch::Tensor labels;  // int64 [N]
};

// test_set.pt: the dict {"images", "labels"} that export_model.py wrote with torch.save.
TestSet load_test_set(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  TORCH_CHECK(file, "cannot open ", path);
  const std::vector<char> bytes{std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
  const c10::Dict<c10::IValue, c10::IValue> dict = torch::pickle_load(bytes).toGenericDict();
  return {dict.at("images").toTensor(), dict.at("labels").toTensor()};
}

int64_t count_correct(torch::inductor::AOTIModelPackageLoader& model, const TestSet& test) {
  int64_t correct = 0;
  for (int64_t i = 0; i < test.labels.size(0); i += kBatch) {
    const int64_t end = std::min(i + kBatch, test.labels.size(0));
    const torch::Tensor logits = model.run({test.images.slice(0, i, end)})[0];
    correct += (logits.argmax(1) == test.labels.slice(0, i, end)).sum().item<int64_t>();
  }
  return correct;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR  (DIR: model.pt2 and test_set.pt from export_model.py)\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  torch::InferenceMode inference;
  torch::inductor::AOTIModelPackageLoader model(dir + "/model.pt2");
  const TestSet test = load_test_set(dir + "/test_set.pt");
  const int64_t correct = count_correct(model, test), total = test.labels.size(0);
  std::printf("test accuracy %lld/%lld = %.4f\n", static_cast<long long>(correct), static_cast<long long>(total),
              static_cast<double>(correct) / static_cast<double>(total));
  return 0;
}
